//! [`Dispatch`]: what the scheduler calls for each job it starts.

use std::future::Future;

use super::QueuedJob;

pub trait Dispatch: Send + Sync + 'static {
    /// Runs one job's VM, from JIT config to teardown. The scheduler holds
    /// the pool's capacity (its vCPUs, memory and one of its `max_vms`)
    /// until the future completes, panics, or is dropped.
    ///
    /// The future may be dropped before it completes (a second SIGTERM
    /// cancels running jobs): dropping it must tear its VM down.
    fn dispatch(&self, job: QueuedJob) -> impl Future<Output = ()> + Send;
}
