//! The lists the reconciler reads, one page per call so the caller can
//! check its API budget before every request, plus re-running a job:
//!
//! - `GET /installation/repositories` — the installation's repositories;
//! - `GET /repos/{o}/{r}/actions/runs?status=queued` — a repository's queued
//!   (or in-progress) runs;
//! - `GET /repos/{o}/{r}/actions/runs/{run_id}/jobs` — a run's jobs;
//! - `GET {scope}/actions/runners` — the scope's runners (all pages);
//! - `POST /repos/{o}/{r}/actions/jobs/{job_id}/rerun`.
//!
//! The three reconciler lists are conditional (see [`super::conditional`]).
//! Models hold only the fields Kiln reads.
//!
//! Why these sit on Kiln's own client rather than octocrab: octocrab's
//! typed models and pagination are its draw, but it would bring a second
//! HTTP/TLS stack (its own hyper client, connector and root store) and its
//! own App authentication beside [`GithubApp`], which already does the JWT,
//! cached installation tokens with refresh and a 401 retry, GHES `/api/v3`
//! prefixes, retries with backoff, rate-limit waits, and errors that never
//! carry a token. octocrab's conditional requests (`etag::Etagged`) cover
//! its event lists, not these, so the `If-None-Match` handling the budget
//! rests on would be hand-made either way; and its
//! models require fields Kiln does not read (a schema change there breaks
//! decoding). Five GETs and a POST with small serde models and a page loop
//! cost less than a second client.

use hyper::{Method, StatusCode};

use super::app::GithubApp;
use super::conditional::{Cost, EtagCache};
use super::error::GithubError;
use super::jobs::{JobConclusion, JobStatus};
use super::scope::{encode_segment, RunnerScope};

/// GitHub's largest page.
pub const PER_PAGE: u32 = 100;
/// Pages read at most from one list (10 000 items), against a runaway loop.
pub const MAX_PAGES: u32 = 100;

/// One page of a list, and what reading it cost.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// GitHub's `total_count` for the whole list.
    pub total_count: u64,
    pub cost: Cost,
}

impl<T> Page<T> {
    /// Whether page `page` (1-based) is followed by another.
    pub fn has_next(&self, page: u32) -> bool {
        let seen = u64::from(page) * u64::from(PER_PAGE);
        self.items.len() == PER_PAGE as usize && seen < self.total_count && page < MAX_PAGES
    }
}

/// A repository the installation can see.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Repository {
    pub id: u64,
    /// `owner/name`.
    pub full_name: String,
    pub name: String,
    pub owner: Account,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Account {
    pub login: String,
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct WorkflowRun {
    pub id: u64,
    /// `queued`, `in_progress`, `completed`, ...; GitHub allows null.
    pub status: Option<String>,
}

/// Which runs to list: GitHub's `status` filter, the two values Kiln asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunFilter {
    Queued,
    InProgress,
}

impl RunFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
        }
    }
}

/// A job of a workflow run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct WorkflowJob {
    pub id: u64,
    pub run_id: u64,
    pub name: String,
    pub status: JobStatus,
    pub conclusion: Option<JobConclusion>,
    /// The job's `runs-on` labels.
    pub labels: Vec<String>,
    pub html_url: Option<String>,
}

/// A self-hosted runner registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    pub busy: bool,
}

impl GithubApp {
    /// Page `page` (1-based, [`PER_PAGE`] items) of the repositories
    /// installation `installation_id` can see, conditional on `cache`.
    pub async fn installation_repositories_page(
        &self,
        installation_id: u64,
        page: u32,
        cache: &mut EtagCache,
    ) -> Result<Page<Repository>, GithubError> {
        #[derive(serde::Deserialize)]
        struct List {
            total_count: u64,
            repositories: Vec<Repository>,
        }
        let path = format!("/installation/repositories?per_page={PER_PAGE}&page={page}");
        let (list, cost): (List, Cost) = self.get_list(installation_id, &path, cache).await?;
        Ok(Page {
            items: list.repositories,
            total_count: list.total_count,
            cost,
        })
    }

    /// Page `page` of the queued workflow runs of `owner/repo`, conditional.
    pub async fn queued_runs_page(
        &self,
        installation_id: u64,
        owner: &str,
        repo: &str,
        page: u32,
        cache: &mut EtagCache,
    ) -> Result<Page<WorkflowRun>, GithubError> {
        self.runs_page(installation_id, owner, repo, RunFilter::Queued, page, cache)
            .await
    }

    /// Page `page` of the workflow runs of `owner/repo` with status
    /// `filter`, conditional.
    pub async fn runs_page(
        &self,
        installation_id: u64,
        owner: &str,
        repo: &str,
        filter: RunFilter,
        page: u32,
        cache: &mut EtagCache,
    ) -> Result<Page<WorkflowRun>, GithubError> {
        #[derive(serde::Deserialize)]
        struct List {
            total_count: u64,
            workflow_runs: Vec<WorkflowRun>,
        }
        let path = format!(
            "{}/actions/runs?status={}&per_page={PER_PAGE}&page={page}",
            repo_path(owner, repo)?,
            filter.as_str()
        );
        let (list, cost): (List, Cost) = self.get_list(installation_id, &path, cache).await?;
        Ok(Page {
            items: list.workflow_runs,
            total_count: list.total_count,
            cost,
        })
    }

    /// Page `page` of the jobs of run `run_id` of `owner/repo` (its latest
    /// attempt), conditional.
    pub async fn run_jobs_page(
        &self,
        installation_id: u64,
        owner: &str,
        repo: &str,
        run_id: u64,
        page: u32,
        cache: &mut EtagCache,
    ) -> Result<Page<WorkflowJob>, GithubError> {
        #[derive(serde::Deserialize)]
        struct List {
            total_count: u64,
            jobs: Vec<WorkflowJob>,
        }
        let path = format!(
            "{}/actions/runs/{run_id}/jobs?per_page={PER_PAGE}&page={page}",
            repo_path(owner, repo)?
        );
        let (list, cost): (List, Cost) = self.get_list(installation_id, &path, cache).await?;
        Ok(Page {
            items: list.jobs,
            total_count: list.total_count,
            cost,
        })
    }

    /// Every runner registered in `scope` (all pages; not conditional).
    pub async fn runners(
        &self,
        installation_id: u64,
        scope: &RunnerScope,
    ) -> Result<Vec<Runner>, GithubError> {
        #[derive(serde::Deserialize)]
        struct List {
            total_count: u64,
            runners: Vec<Runner>,
        }
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!("{}?per_page={PER_PAGE}&page={page}", scope.runners_path());
            let answer = self
                .send_as_installation(installation_id, Method::GET, &path, None)
                .await?;
            if answer.status != StatusCode::OK {
                return Err(answer.into_error(&Method::GET, &path));
            }
            let list: List = answer.json(&Method::GET, &path)?;
            let this = Page {
                total_count: list.total_count,
                items: list.runners,
                cost: Cost::Counted,
            };
            let more = this.has_next(page);
            all.extend(this.items);
            if !more {
                break;
            }
        }
        Ok(all)
    }

    /// Re-runs job `job_id` of `owner/repo` (and the jobs that depend on
    /// it). GitHub answers 201; anything else is an error naming the status
    /// and GitHub's message (e.g. 403 while the run is still in progress).
    pub async fn rerun_job(
        &self,
        installation_id: u64,
        owner: &str,
        repo: &str,
        job_id: u64,
    ) -> Result<(), GithubError> {
        let path = format!("{}/actions/jobs/{job_id}/rerun", repo_path(owner, repo)?);
        let answer = self
            .send_as_installation(installation_id, Method::POST, &path, None)
            .await?;
        if answer.status != StatusCode::CREATED {
            return Err(answer.into_error(&Method::POST, &path));
        }
        tracing::info!(
            installation_id,
            owner,
            repo,
            job_id,
            "asked GitHub to re-run the job"
        );
        Ok(())
    }

    /// A conditional GET of a list, decoded; any status but 200 (or a 304
    /// standing in for it) is an error.
    async fn get_list<T: serde::de::DeserializeOwned>(
        &self,
        installation_id: u64,
        path: &str,
        cache: &mut EtagCache,
    ) -> Result<(T, Cost), GithubError> {
        let (answer, cost) = self.get_conditional(installation_id, path, cache).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.into_error(&Method::GET, path));
        }
        Ok((answer.json(&Method::GET, path)?, cost))
    }
}

/// `/repos/{owner}/{repo}`, each name percent-encoded; both must be non-empty.
pub(crate) fn repo_path(owner: &str, repo: &str) -> Result<String, GithubError> {
    if owner.is_empty() || repo.is_empty() {
        return Err(GithubError::InvalidRequest {
            what: "repository",
            problem: format!("{owner:?}/{repo:?} needs an owner and a name"),
        });
    }
    Ok(format!(
        "/repos/{}/{}",
        encode_segment(owner),
        encode_segment(repo)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: usize, total_count: u64) -> Page<u8> {
        Page {
            items: vec![0; items],
            total_count,
            cost: Cost::Counted,
        }
    }

    #[test]
    fn pages_follow_while_full_and_short_of_the_total() {
        assert!(page(100, 250).has_next(1));
        assert!(page(100, 250).has_next(2));
        assert!(!page(50, 250).has_next(3));
        assert!(!page(100, 100).has_next(1));
        assert!(!page(3, 3).has_next(1));
        assert!(!page(100, 1_000_000).has_next(MAX_PAGES));
    }

    #[test]
    fn repo_paths_are_encoded_and_need_both_names() {
        assert_eq!(
            repo_path("acme", "wid/gets").ok().as_deref(),
            Some("/repos/acme/wid%2Fgets")
        );
        assert!(repo_path("", "x").is_err());
        assert!(repo_path("acme", "").is_err());
    }

    #[test]
    fn jobs_decode_with_only_the_fields_kiln_reads() {
        let job: Result<WorkflowJob, _> = serde_json::from_str(
            r#"{"id":7,"run_id":8,"name":"build","status":"queued","conclusion":null,
                "labels":["self-hosted","kiln-small"],"html_url":null,"steps":[]}"#,
        );
        let job = job.map_err(|e| e.to_string());
        assert_eq!(
            job.map(|j| (j.id, j.status, j.labels.len())),
            Ok((7, JobStatus::Queued, 2))
        );
    }
}
