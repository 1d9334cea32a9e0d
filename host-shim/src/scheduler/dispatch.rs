//! [`Dispatch`]: what the scheduler calls for each job it starts.

use std::future::Future;
use std::sync::Arc;

use super::QueuedJob;
use crate::github::JobConclusion;
use crate::metrics::Metrics;

/// What GitHub reported about a job besides queueing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNews {
    pub delivery: Arc<str>,
    pub job_id: u64,
    pub run_id: u64,
    pub installation_id: Option<u64>,
    /// `owner/name`.
    pub repository: String,
    pub labels: Vec<String>,
    pub what: News,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// `in_progress`: runner `runner` took it.
    Taken { runner: String },
    /// `completed`, with GitHub's conclusion.
    Completed { conclusion: Option<JobConclusion> },
}

pub trait Dispatch: Send + Sync + 'static {
    /// Runs one job's VM, from JIT config to teardown. The scheduler holds
    /// the pool's capacity (its vCPUs, memory and one of its `max_vms`)
    /// until the future completes, panics, or is dropped.
    ///
    /// The future may be dropped before it completes (a second SIGTERM
    /// cancels running jobs): dropping it must tear its VM down.
    fn dispatch(&self, job: QueuedJob) -> impl Future<Output = ()> + Send;

    /// A job is about to be queued: false refuses it (it could not be
    /// recorded, and a job that would be lost by a restart is not taken).
    fn queued(&self, _job: &QueuedJob) -> bool {
        true
    }

    /// What GitHub reported about a job since it was queued (recorded,
    /// acted on: a re-run after an infrastructure failure). Must not block.
    fn news(&self, _news: JobNews) {}

    /// Jobs a previous run had queued, to queue again at start.
    fn recovered(&self) -> Vec<QueuedJob> {
        Vec::new()
    }

    /// Where the scheduler and the webhook handler count what they do
    /// (jobs received, started, cancelled; webhooks), if anywhere.
    fn metrics(&self) -> Option<&Metrics> {
        None
    }

    /// Starts looking for jobs GitHub has queued that no webhook brought,
    /// handing each to `enqueue` (true: queued).
    fn find_lost(&self, _enqueue: Arc<dyn Fn(QueuedJob) -> bool + Send + Sync>) {}
}
