//! A workflow job as GitHub sees it now:
//! `GET /repos/{owner}/{repo}/actions/jobs/{job_id}`. The job lifecycle
//! ([`crate::job`]) asks before it registers a runner, so a job that already ran, was
//! cancelled, or is a replayed delivery gets no VM.

use hyper::{Method, StatusCode};

use super::app::GithubApp;
use super::error::GithubError;
use super::scope::encode_segment;

/// GitHub's `status` of a job (the `job` schema's enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
    Waiting,
    Requested,
    Pending,
    /// A status GitHub added after this code was written.
    #[serde(other)]
    Other,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Waiting => "waiting",
            Self::Requested => "requested",
            Self::Pending => "pending",
            Self::Other => "other",
        }
    }
}

/// GitHub's `conclusion` of a completed job (the `job` schema's enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobConclusion {
    Success,
    Failure,
    Neutral,
    Cancelled,
    Skipped,
    TimedOut,
    ActionRequired,
    /// A conclusion GitHub added after this code was written.
    #[serde(other)]
    Other,
}

/// What GitHub says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// GitHub knows the job: its status now.
    Known(JobStatus),
    /// 404: no such job in that repository (or the App cannot see it).
    NotFound,
}

impl GithubApp {
    /// Job `job_id` of `repository` (`owner/name`), as installation
    /// `installation_id` sees it. The App needs the repository permission
    /// "Actions: read" (which its `workflow_job` webhooks need too).
    pub async fn job_state(
        &self,
        installation_id: u64,
        repository: &str,
        job_id: u64,
    ) -> Result<JobState, GithubError> {
        #[derive(serde::Deserialize)]
        struct Job {
            status: JobStatus,
        }
        let path = job_path(repository, job_id)?;
        let answer = self
            .send_as_installation(installation_id, Method::GET, &path, None)
            .await?;
        match answer.status {
            StatusCode::OK => {
                let job: Job = answer.json(&Method::GET, &path)?;
                Ok(JobState::Known(job.status))
            }
            StatusCode::NOT_FOUND => Ok(JobState::NotFound),
            _ => Err(answer.into_error(&Method::GET, &path)),
        }
    }
}

/// `/repos/{owner}/{repo}/actions/jobs/{job_id}`, each name percent-encoded.
fn job_path(repository: &str, job_id: u64) -> Result<String, GithubError> {
    match repository.split_once('/') {
        Some((owner, repo)) if !owner.is_empty() && !repo.is_empty() => Ok(format!(
            "/repos/{}/{}/actions/jobs/{job_id}",
            encode_segment(owner),
            encode_segment(repo)
        )),
        _ => Err(GithubError::InvalidRequest {
            what: "job lookup",
            problem: format!("repository {repository:?} is not `owner/name`"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_paths_are_encoded_and_need_owner_and_name() {
        assert_eq!(
            job_path("acme/widgets", 7).ok().as_deref(),
            Some("/repos/acme/widgets/actions/jobs/7")
        );
        assert_eq!(
            job_path("acme/wid/gets", 7).ok().as_deref(),
            Some("/repos/acme/wid%2Fgets/actions/jobs/7")
        );
        for bad in ["acme", "/widgets", "acme/", ""] {
            let err = job_path(bad, 7).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("owner/name")),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn statuses_parse_and_unknown_ones_are_other() {
        let parse = |s: &str| serde_json::from_str::<JobStatus>(&format!("{s:?}")).ok();
        assert_eq!(parse("queued"), Some(JobStatus::Queued));
        assert_eq!(parse("in_progress"), Some(JobStatus::InProgress));
        assert_eq!(parse("completed"), Some(JobStatus::Completed));
        assert_eq!(parse("teleported"), Some(JobStatus::Other));
    }
}
