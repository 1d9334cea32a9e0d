//! Runner registrations: deleting the ones that never took a job.

use hyper::{Method, StatusCode};

use super::app::GithubApp;
use super::error::GithubError;
use super::scope::RunnerScope;

impl GithubApp {
    /// Deletes runner `runner_id` from `scope` (`DELETE {scope}/actions/runners/{id}`).
    /// 204 and 404 (already gone: it took its job and deregistered) are both Ok.
    pub async fn delete_runner(
        &self,
        installation_id: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<(), GithubError> {
        let path = format!("{}/{runner_id}", scope.runners_path());
        let answer = self
            .send_as_installation(installation_id, Method::DELETE, &path, None)
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT => {
                tracing::info!(installation_id, %scope, runner_id, "deleted runner registration");
                Ok(())
            }
            StatusCode::NOT_FOUND => {
                tracing::debug!(installation_id, %scope, runner_id, "runner registration already gone");
                Ok(())
            }
            _ => Err(answer.into_error(&Method::DELETE, &path)),
        }
    }
}
