//! The dispatcher `kiln serve` runs jobs with. [`Unwired`] stands in until
//! the real one (JIT config, VM launch, runner clean-up) is wired here.

use crate::scheduler::{Dispatch, QueuedJob};

/// Fails every job: the JIT config and VM launch are not wired into
/// `kiln serve` yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unwired;

impl Dispatch for Unwired {
    async fn dispatch(&self, job: QueuedJob) {
        tracing::error!(
            delivery = %job.delivery,
            job_id = job.job_id,
            pool = %job.pool.name,
            "dispatch not wired yet: the job does not run"
        );
    }
}
