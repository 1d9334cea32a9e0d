//! The job queue: jobs wait here until the host has room for their pool's
//! VM, then each runs in its own task through a [`Dispatch`].
//!
//! - [`job`] — [`QueuedJob`]: what a webhook hands over.
//! - [`dispatch`] — [`Dispatch`]: runs one job's VM (`kiln serve`'s is [`crate::job::Jobs`]).
//! - [`queue`] — the bookkeeping: FIFO order, host and pool capacity, [`Snapshot`].
//! - [`running`] — [`Scheduler`]: the queue behind a lock, one task per running job,
//!   capacity released when the task ends however it ends.
//!
//! Order: jobs start in arrival order. A job waiting for its pool's
//! `max_vms` does not hold up other pools' jobs; a job waiting for host
//! vCPUs or memory does (otherwise a stream of small VMs would starve a big one).

pub mod dispatch;
pub mod job;
pub mod queue;
pub mod running;
#[cfg(test)]
mod test_support;

pub use dispatch::Dispatch;
pub use job::QueuedJob;
pub use queue::{EnqueueError, PoolSnapshot, Room, Snapshot};
pub use running::Scheduler;
