//! Just-in-time runner configs: `POST {scope}/actions/runners/generate-jitconfig`.

use hyper::body::Bytes;
use hyper::{Method, StatusCode};

use super::app::GithubApp;
use super::error::GithubError;
use super::scope::RunnerScope;
use crate::secret::Secret;

/// GitHub's bounds for `labels` in a JIT request.
const MAX_LABELS: usize = 100;

/// What to register: the body of `generate-jitconfig`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JitRequest {
    /// Unique among the scope's runners.
    pub name: String,
    pub runner_group_id: u64,
    /// 1 to 100 labels; jobs whose `runs-on` they satisfy may take this runner.
    pub labels: Vec<String>,
    /// The runner's work directory, relative to its install directory (e.g. `_work`).
    pub work_folder: String,
}

/// A registered JIT runner. `encoded` goes to the guest in
/// `ACTIONS_RUNNER_INPUT_JITCONFIG` and nowhere else.
#[derive(Debug, Clone)]
pub struct JitConfig {
    pub runner_id: u64,
    pub runner_name: String,
    pub encoded: Secret,
}

impl JitRequest {
    fn validate(&self) -> Result<(), GithubError> {
        let bad = |problem: String| GithubError::InvalidRequest {
            what: "JIT runner request",
            problem,
        };
        if self.name.trim().is_empty() {
            return Err(bad("the runner name is empty".into()));
        }
        if self.labels.is_empty() || self.labels.len() > MAX_LABELS {
            return Err(bad(format!(
                "{} labels for runner {:?}; GitHub takes 1 to {MAX_LABELS}",
                self.labels.len(),
                self.name
            )));
        }
        if let Some(i) = self.labels.iter().position(|l| l.trim().is_empty()) {
            return Err(bad(format!("label {i} of runner {:?} is empty", self.name)));
        }
        Ok(())
    }
}

impl GithubApp {
    /// Registers a JIT runner in `scope` as installation `installation_id`.
    /// Answers other than 201 are errors naming the status and GitHub's message.
    pub async fn jit_config(
        &self,
        installation_id: u64,
        scope: &RunnerScope,
        req: &JitRequest,
    ) -> Result<JitConfig, GithubError> {
        #[derive(serde::Deserialize)]
        struct Runner {
            id: u64,
            name: String,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            runner: Runner,
            encoded_jit_config: String,
        }
        req.validate()?;
        let path = format!("{}/generate-jitconfig", scope.runners_path());
        let body = serde_json::to_vec(req).map_err(|e| GithubError::InvalidRequest {
            what: "JIT runner request",
            problem: e.to_string(),
        })?;
        let answer = self
            .send_as_installation(
                installation_id,
                Method::POST,
                &path,
                Some(Bytes::from(body)),
            )
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(answer.into_error(&Method::POST, &path));
        }
        let Answer {
            runner,
            encoded_jit_config,
        } = answer.json(&Method::POST, &path)?;
        tracing::info!(installation_id, %scope, runner_id = runner.id, runner_name = %runner.name, "registered JIT runner");
        Ok(JitConfig {
            runner_id: runner.id,
            runner_name: runner.name,
            encoded: Secret::new(encoded_jit_config),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(labels: usize) -> JitRequest {
        JitRequest {
            name: "kiln-1".into(),
            runner_group_id: 1,
            labels: (0..labels).map(|i| format!("l{i}")).collect(),
            work_folder: "_work".into(),
        }
    }

    #[test]
    fn label_count_is_checked_before_sending() {
        assert!(request(1).validate().is_ok());
        assert!(request(100).validate().is_ok());
        for n in [0, 101] {
            let err = request(n)
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("GitHub takes 1 to 100"), "{n}: {err}");
        }
        let mut empty_name = request(1);
        empty_name.name = " ".into();
        assert!(empty_name.validate().is_err());
    }

    #[test]
    fn body_is_the_documented_json() {
        let body = serde_json::to_value(request(2)).ok();
        assert_eq!(
            body,
            Some(serde_json::json!({
                "name": "kiln-1", "runner_group_id": 1, "labels": ["l0", "l1"], "work_folder": "_work"
            }))
        );
    }
}
