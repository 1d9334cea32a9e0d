//! [`QueuedJob`]: one `workflow_job` that asked for a pool's runner.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Pool;

/// A job waiting for (or holding) its pool's capacity. GitHub may give the
/// runner made for it a different queued job with the same labels: this
/// stands for demand, not for a particular job.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    /// The `X-GitHub-Delivery` that queued it, for logs.
    pub delivery: Arc<str>,
    pub job_id: u64,
    pub run_id: u64,
    pub installation_id: u64,
    /// `owner/name`.
    pub repository: String,
    /// What the job's `runs-on` asked for.
    pub labels: Vec<String>,
    pub pool: Arc<Pool>,
    /// When the webhook arrived: queue latency is measured from here.
    pub received: Instant,
}
