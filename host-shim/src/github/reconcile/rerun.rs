//! Jobs Kiln's infrastructure failed: when GitHub reports a job `completed`
//! with conclusion `failure` and Kiln recorded an infrastructure failure for
//! it (the VM did not boot, the host lost it, the runner never connected),
//! Kiln asks GitHub to re-run it (`POST /repos/{o}/{r}/actions/jobs/{id}/rerun`),
//! at most [`RerunPolicy::max_retries`] times (default 1).
//!
//! Only `failure` is re-run. When Kiln's side breaks, GitHub concludes the
//! job `failure` (the runner lost communication or never picked it up);
//! `cancelled` is a person's or a concurrency group's decision, and
//! `timed_out` the workflow's own limit: re-running either would override
//! the user. A job that failed by itself (no infrastructure failure recorded)
//! is never re-run: its failure is the answer the user asked for.

use crate::github::error::GithubError;
use crate::github::jobs::JobConclusion;
use crate::github::GithubApp;

/// How often a job is re-run for Kiln's own failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RerunPolicy {
    /// Re-runs per job at most (config `max_retries`).
    pub max_retries: u32,
}

impl Default for RerunPolicy {
    fn default() -> Self {
        Self { max_retries: 1 }
    }
}

/// Whether to re-run a completed job, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerunDecision {
    Rerun,
    /// The conclusion is not `failure` (success, cancelled, still running, ...).
    NotFailed,
    /// Kiln recorded no infrastructure failure: the job failed by itself.
    NotInfrastructure,
    /// Re-run `reruns` times already; the policy allows no more.
    RetriesSpent {
        reruns: u32,
    },
}

/// The policy: `conclusion` from GitHub (None while the job runs),
/// `infra_failure` from Kiln's journal, `reruns` made so far for this job.
pub fn decide(
    policy: RerunPolicy,
    conclusion: Option<JobConclusion>,
    infra_failure: bool,
    reruns: u32,
) -> RerunDecision {
    if conclusion != Some(JobConclusion::Failure) {
        return RerunDecision::NotFailed;
    }
    if !infra_failure {
        return RerunDecision::NotInfrastructure;
    }
    if reruns >= policy.max_retries {
        return RerunDecision::RetriesSpent { reruns };
    }
    RerunDecision::Rerun
}

/// A completed job as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedJob<'a> {
    pub owner: &'a str,
    pub repo: &'a str,
    pub job_id: u64,
    pub conclusion: Option<JobConclusion>,
    /// Kiln recorded an infrastructure failure for this job.
    pub infra_failure: bool,
    /// Re-runs Kiln already asked for.
    pub reruns: u32,
}

/// Applies [`decide`] and, on [`RerunDecision::Rerun`], asks GitHub to
/// re-run the job; the daemon then records one more re-run.
pub async fn rerun_if_due(
    app: &GithubApp,
    installation_id: u64,
    job: &CompletedJob<'_>,
    policy: RerunPolicy,
) -> Result<RerunDecision, GithubError> {
    let decision = decide(policy, job.conclusion, job.infra_failure, job.reruns);
    if decision == RerunDecision::Rerun {
        app.rerun_job(installation_id, job.owner, job.repo, job.job_id)
            .await?;
    } else {
        tracing::debug!(job_id = job.job_id, ?decision, "not re-running the job");
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_infrastructure_failures_are_rerun_and_only_max_retries_times() {
        let p = RerunPolicy::default();
        let failure = Some(JobConclusion::Failure);
        assert_eq!(decide(p, failure, true, 0), RerunDecision::Rerun);
        assert_eq!(
            decide(p, failure, true, 1),
            RerunDecision::RetriesSpent { reruns: 1 }
        );
        assert_eq!(
            decide(p, failure, false, 0),
            RerunDecision::NotInfrastructure
        );
        for other in [
            None,
            Some(JobConclusion::Success),
            Some(JobConclusion::Cancelled),
            Some(JobConclusion::TimedOut),
        ] {
            assert_eq!(decide(p, other, true, 0), RerunDecision::NotFailed);
        }
        let three = RerunPolicy { max_retries: 3 };
        assert_eq!(decide(three, failure, true, 2), RerunDecision::Rerun);
        let none = RerunPolicy { max_retries: 0 };
        assert_eq!(
            decide(none, failure, true, 0),
            RerunDecision::RetriesSpent { reruns: 0 }
        );
    }
}
