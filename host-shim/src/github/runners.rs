//! Runner registrations: whether one is busy with a job, and deleting the
//! ones that never took a job.

use hyper::{Method, StatusCode};

use super::app::GithubApp;
use super::error::GithubError;
use super::scope::RunnerScope;

/// What GitHub says about a runner registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Registered; `busy`: running a job now.
    Registered { busy: bool },
    /// 404: not registered (any more): a JIT runner deregisters after its job.
    Gone,
}

impl GithubApp {
    /// Runner `runner_id` of `scope` (`GET {scope}/actions/runners/{id}`).
    pub async fn runner_state(
        &self,
        installation_id: u64,
        scope: &RunnerScope,
        runner_id: u64,
    ) -> Result<RunnerState, GithubError> {
        #[derive(serde::Deserialize)]
        struct Runner {
            busy: bool,
        }
        let path = format!("{}/{runner_id}", scope.runners_path());
        let answer = self
            .send_as_installation(installation_id, Method::GET, &path, None)
            .await?;
        match answer.status {
            StatusCode::OK => {
                let runner: Runner = answer.json(&Method::GET, &path)?;
                Ok(RunnerState::Registered { busy: runner.busy })
            }
            StatusCode::NOT_FOUND => Ok(RunnerState::Gone),
            _ => Err(answer.into_error(&Method::GET, &path)),
        }
    }

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
