//! What GitHub reports about a job after queueing it, and what Kiln does
//! about it: `in_progress` names the runner that took the job (a JIT
//! runner takes any job its labels fit), recorded so that a VM that dies
//! marks the right job; `completed` with a failure, for a job whose VM
//! ended for a reason not its own (an infrastructure failure), asks GitHub
//! to re-run it, at most `max_retries` times per workflow run. A job that
//! failed by itself is never re-run.

use std::sync::Arc;

use super::Shared;
use crate::github::reconcile::{rerun_if_due, CompletedJob, RerunDecision, RerunPolicy};
use crate::github::JobConclusion;
use crate::scheduler::dispatch::{JobNews, News};
use crate::store::{JobRecord, JobState};

impl Shared {
    /// Records and acts on `news`; the GitHub call runs in a task.
    pub(super) fn news(self: &Arc<Self>, news: JobNews) {
        match &news.what {
            News::Taken { runner } => {
                if runner.starts_with(crate::github::reconcile::RUNNER_PREFIX) {
                    self.took(&news, runner);
                }
            }
            News::Completed { conclusion } => {
                let rec = self.ledger.completed(news.job_id);
                if let Some(rec) = rec.filter(|r| r.infra_failure.is_some()) {
                    let me = Arc::clone(self);
                    let conclusion = *conclusion;
                    tokio::spawn(async move { me.rerun(rec, conclusion).await });
                }
            }
        }
    }

    fn took(&self, news: &JobNews, runner: &str) {
        let Some(pool) = self.config_pools.iter().find(|p| p.accepts(&news.labels)) else {
            return;
        };
        let (owner, repo) = news
            .repository
            .split_once('/')
            .unwrap_or((news.repository.as_str(), ""));
        self.ledger.took(
            &JobRecord {
                job_id: news.job_id,
                delivery: Some(news.delivery.to_string()),
                owner: owner.to_owned(),
                repo: repo.to_owned(),
                pool: pool.name.clone(),
                labels: news.labels.clone(),
                state: JobState::Running,
                attempts: 1,
                runner_name: Some(runner.to_owned()),
                infra_failure: None,
                reruns: 0,
                updated_unix: crate::store::unix_now(),
                run_id: news.run_id,
                installation_id: news.installation_id.unwrap_or_default(),
            },
            runner,
        );
    }

    /// Asks GitHub to re-run `rec`'s job when the policy says so.
    async fn rerun(&self, rec: JobRecord, conclusion: Option<JobConclusion>) {
        let reruns = self.ledger.reruns_in_run(rec.run_id);
        let job = CompletedJob {
            owner: &rec.owner,
            repo: &rec.repo,
            job_id: rec.job_id,
            conclusion,
            infra_failure: rec.infra_failure.is_some(),
            reruns,
        };
        // The pool's own setting, else the daemon's.
        let max_retries = self
            .config_pools
            .iter()
            .find(|p| p.name == rec.pool)
            .and_then(|p| p.max_retries)
            .unwrap_or(self.max_retries);
        let policy = RerunPolicy { max_retries };
        let why = rec.infra_failure.as_deref().unwrap_or_default();
        match rerun_if_due(&self.github, rec.installation_id, &job, policy).await {
            Ok(RerunDecision::Rerun) => {
                tracing::warn!(job_id = rec.job_id, run_id = rec.run_id, repository = %format!("{}/{}", rec.owner, rec.repo), why, "re-running the job: it failed after its VM ended for a reason not its own");
                self.ledger.reran(&rec);
                self.metrics.job_rerun(&rec.pool);
            }
            Ok(decision) => {
                tracing::info!(job_id = rec.job_id, ?decision, why, "the job is not re-run");
            }
            Err(e) => {
                tracing::error!(job_id = rec.job_id, error = %e, "cannot re-run the job");
            }
        }
    }
}
