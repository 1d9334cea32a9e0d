//! [`Scheduler`]: the [`Queue`] behind a lock, and one task per started job.
//! A started job's capacity comes back when its task ends: the dispatch
//! returned, panicked, or was cancelled (a guard's `Drop` does it, in a
//! task that watches the dispatch's task).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::queue::{Claim, EnqueueError, Queue, Snapshot};
use super::{Dispatch, QueuedJob};
use crate::config::{HostCapacity, Pool};
use crate::logs::events;

/// The job queue and the running jobs. Cheap to clone (shared).
pub struct Scheduler<D: Dispatch> {
    inner: Arc<Inner<D>>,
}

impl<D: Dispatch> Clone for Scheduler<D> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<D> {
    dispatcher: Arc<D>,
    state: Mutex<State>,
    /// Woken when the last running job ends.
    idle: Notify,
}

struct State {
    queue: Queue,
    closed: bool,
    /// Running jobs' tasks, to cancel them at shutdown.
    tasks: HashMap<u64, AbortHandle>,
    next_task: u64,
}

impl<D: Dispatch> Scheduler<D> {
    /// The dispatcher jobs are handed to.
    pub fn dispatcher(&self) -> &D {
        &self.inner.dispatcher
    }

    /// `pools` are the only pools jobs may name; `max_queued` bounds the
    /// queue (jobs beyond it are refused, not dropped silently).
    pub fn new(
        capacity: HostCapacity,
        pools: &[Arc<Pool>],
        max_queued: usize,
        dispatcher: D,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                dispatcher: Arc::new(dispatcher),
                state: Mutex::new(State {
                    queue: Queue::new(capacity, pools, max_queued),
                    closed: false,
                    tasks: HashMap::new(),
                    next_task: 0,
                }),
                idle: Notify::new(),
            }),
        }
    }

    /// Queues `job` and starts whatever fits now. Call it from within a
    /// Tokio runtime: started jobs are spawned on it.
    pub fn enqueue(&self, job: QueuedJob) -> Result<(), EnqueueError> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(EnqueueError::Closed);
        }
        let (delivery, job_id, pool) =
            (Arc::clone(&job.delivery), job.job_id, Arc::clone(&job.pool));
        state.queue.enqueue(job)?;
        if let Some(m) = self.inner.dispatcher.metrics() {
            m.job_received(&pool.name);
        }
        let queued = state.queue.queued();
        start_ready(&self.inner, &mut state);
        // Logged outside the lock: every webhook and every job's end takes it.
        drop(state);
        tracing::info!(event = %events::JOB_QUEUED, %delivery, job_id, pool = %pool.name, queued, "job queued");
        Ok(())
    }

    /// Removes job `job_id` if it is still queued (GitHub says it completed
    /// before it ran: cancelled, or another runner took it). Returns it.
    pub fn cancel_queued(&self, job_id: u64) -> Option<QueuedJob> {
        self.inner.lock().queue.cancel(job_id)
    }

    /// The jobs waiting now, oldest first.
    pub fn waiting(&self) -> Vec<QueuedJob> {
        self.inner.lock().queue.waiting()
    }

    /// Pool `pool`'s share of the host now (see [`super::queue::Room`]);
    /// none once closed.
    pub fn room(&self, pool: &str) -> super::queue::Room {
        let state = self.inner.lock();
        let room = state
            .queue
            .room(pool)
            .unwrap_or(super::queue::Room { held: 0, more: 0 });
        if state.closed {
            return super::queue::Room { more: 0, ..room };
        }
        room
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().queue.snapshot()
    }

    /// Stops starting jobs and empties the queue (shutdown). Returns the
    /// jobs that never started; running ones go on.
    pub fn close(&self) -> Vec<QueuedJob> {
        let mut state = self.inner.lock();
        state.closed = true;
        state.queue.drain()
    }

    /// Cancels every running job: drops its dispatch future (which tears
    /// its VM down) and so frees its capacity. Returns how many.
    pub fn abort_running(&self) -> usize {
        let handles: Vec<AbortHandle> = self.inner.lock().tasks.values().cloned().collect();
        // Outside the lock: a task ending now takes it in its guard's Drop.
        for h in &handles {
            h.abort();
        }
        handles.len()
    }

    /// Waits until no job runs.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up in between is not lost.
            notified.as_mut().enable();
            if self.inner.lock().queue.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl<D> Inner<D> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: every
        // mutation is a few infallible field updates.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts every job that may start now, each in its own task.
fn start_ready<D: Dispatch>(inner: &Arc<Inner<D>>, state: &mut State) {
    if state.closed {
        return;
    }
    // The guard of a task dropped while the runtime shuts down lands here
    // without a runtime: then nothing more starts.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    while let Some((job, claim)) = state.queue.start_next() {
        let task = state.next_task;
        state.next_task += 1;
        let guard = Running {
            inner: Arc::clone(inner),
            claim,
            task,
            job_id: job.job_id,
            pool: job.pool.name.clone(),
            end: End::Dropped,
        };
        tracing::info!(
            delivery = %job.delivery,
            job_id = job.job_id,
            pool = %job.pool.name,
            waited_ms = u64::try_from(job.received.elapsed().as_millis()).unwrap_or(u64::MAX),
            "job started"
        );
        if let Some(m) = inner.dispatcher.metrics() {
            m.job_started(&job.pool.name);
        }
        let dispatcher = Arc::clone(&inner.dispatcher);
        let dispatch = runtime.spawn(async move { dispatcher.dispatch(job).await });
        state.tasks.insert(task, dispatch.abort_handle());
        // A second task waits for the first, so that the claim comes back
        // and the log says how the job ended: returned, panicked, cancelled.
        runtime.spawn(async move {
            let mut guard = guard;
            guard.end = match dispatch.await {
                Ok(()) => End::Returned,
                Err(e) if e.is_panic() => End::Panicked,
                Err(_) => End::Cancelled,
            };
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Returned,
    Panicked,
    Cancelled,
    /// The watching task itself was dropped: the runtime is shutting down.
    Dropped,
}

/// Held by a started job's task; its `Drop` gives the capacity back and
/// starts what now fits, however the task ends.
struct Running<D: Dispatch> {
    inner: Arc<Inner<D>>,
    claim: Claim,
    task: u64,
    job_id: u64,
    pool: String,
    end: End,
}

impl<D: Dispatch> Drop for Running<D> {
    fn drop(&mut self) {
        let (job_id, pool) = (self.job_id, &self.pool);
        match self.end {
            End::Returned => tracing::debug!(job_id, %pool, "job finished"),
            End::Panicked => {
                tracing::error!(job_id, %pool, "dispatch panicked; its capacity is released")
            }
            End::Cancelled => tracing::warn!(job_id, %pool, "dispatch cancelled"),
            End::Dropped => {
                tracing::warn!(job_id, %pool, "dispatch abandoned: the runtime is shutting down")
            }
        }
        let mut state = self.inner.lock();
        state.queue.release(self.claim);
        state.tasks.remove(&self.task);
        start_ready(&self.inner, &mut state);
        if state.queue.running() == 0 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
#[path = "running_tests.rs"]
mod tests;
