//! [`Scheduler`]'s tests: order, capacity, cancellation, shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use super::*;
use crate::scheduler::test_support::{job, pool};

const HOST: HostCapacity = HostCapacity {
    vcpus: 4,
    memory_mib: 100_000,
};

/// Reports each job it starts, then holds it until a permit is added;
/// job ids in `panic_on` panic instead of waiting.
struct Gate {
    started: mpsc::UnboundedSender<u64>,
    permits: Arc<Semaphore>,
    panic_on: Vec<u64>,
    dropped: Arc<AtomicUsize>,
}

struct CountDrop(Arc<AtomicUsize>);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Dispatch for Gate {
    async fn dispatch(&self, job: QueuedJob) {
        let _count = CountDrop(Arc::clone(&self.dropped));
        let _ = self.started.send(job.job_id);
        if self.panic_on.contains(&job.job_id) {
            panic!("test dispatcher panics for job {}", job.job_id);
        }
        if let Ok(p) = self.permits.acquire().await {
            p.forget();
        }
    }
}

struct Harness {
    scheduler: Scheduler<Gate>,
    started: mpsc::UnboundedReceiver<u64>,
    permits: Arc<Semaphore>,
    dropped: Arc<AtomicUsize>,
}

fn harness(pools: &[Arc<Pool>], panic_on: Vec<u64>) -> Harness {
    let (tx, started) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let gate = Gate {
        started: tx,
        permits: Arc::clone(&permits),
        panic_on,
        dropped: Arc::clone(&dropped),
    };
    Harness {
        scheduler: Scheduler::new(HOST, pools, 100, gate),
        started,
        permits,
        dropped,
    }
}

impl Harness {
    async fn next_started(&mut self) -> u64 {
        tokio::time::timeout(Duration::from_secs(5), self.started.recv())
            .await
            .expect("a job starts within 5 s")
            .expect("dispatcher alive")
    }

    async fn none_started(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(100), self.started.recv()).await;
        assert!(r.is_err(), "no job may start now, got {r:?}");
    }

    async fn until(&self, what: &str, f: impl Fn(&Snapshot) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.scheduler.snapshot();
            if f(&s) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn holds_capacity_while_dispatch_runs_and_starts_the_next_when_it_returns() {
    let p = pool("p", 2, 512, None);
    let mut h = harness(&[Arc::clone(&p)], vec![]);
    for id in 1..=3 {
        h.scheduler.enqueue(job(id, &p)).expect("enqueue");
    }
    assert_eq!(h.next_started().await, 1);
    assert_eq!(h.next_started().await, 2);
    h.none_started().await;
    let s = h.scheduler.snapshot();
    assert_eq!((s.queued, s.running, s.vcpus_used), (1, 2, 4));

    h.permits.add_permits(1);
    assert_eq!(h.next_started().await, 3);
    h.until("one finished", |s| s.finished == 1 && s.running == 2)
        .await;

    h.permits.add_permits(2);
    h.until("all finished", |s| {
        s.finished == 3 && s.running == 0 && s.vcpus_used == 0
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), h.scheduler.wait_idle())
        .await
        .expect("idle");
}

#[tokio::test]
async fn a_panicking_dispatch_releases_its_capacity() {
    let p = pool("p", 4, 512, None);
    let mut h = harness(&[Arc::clone(&p)], vec![1]);
    h.scheduler.enqueue(job(1, &p)).expect("enqueue");
    h.scheduler.enqueue(job(2, &p)).expect("enqueue");
    assert_eq!(h.next_started().await, 1);
    assert_eq!(h.next_started().await, 2, "job 1's panic freed the host");
    h.until("job 1 released", |s| s.finished == 1 && s.running == 1)
        .await;
}

#[tokio::test]
async fn cancelled_queued_jobs_never_start() {
    let p = pool("p", 4, 512, None);
    let mut h = harness(&[Arc::clone(&p)], vec![]);
    h.scheduler.enqueue(job(1, &p)).expect("enqueue");
    h.scheduler.enqueue(job(2, &p)).expect("enqueue");
    h.scheduler.enqueue(job(3, &p)).expect("enqueue");
    assert_eq!(h.next_started().await, 1);
    assert!(
        h.scheduler.cancel_queued(1).is_none(),
        "running, not queued"
    );
    assert_eq!(h.scheduler.cancel_queued(2).map(|j| j.job_id), Some(2));
    h.permits.add_permits(1);
    assert_eq!(h.next_started().await, 3);
    assert_eq!(h.scheduler.snapshot().cancelled, 1);
}

#[tokio::test]
async fn close_drops_the_queue_and_abort_cancels_running_jobs() {
    let p = pool("p", 2, 512, None);
    let mut h = harness(&[Arc::clone(&p)], vec![]);
    for id in 1..=3 {
        h.scheduler.enqueue(job(id, &p)).expect("enqueue");
    }
    h.next_started().await;
    h.next_started().await;
    let dropped = h.scheduler.close();
    assert_eq!(dropped.iter().map(|j| j.job_id).collect::<Vec<_>>(), [3]);
    assert_eq!(h.scheduler.enqueue(job(4, &p)), Err(EnqueueError::Closed));
    let idle = tokio::time::timeout(Duration::from_millis(100), h.scheduler.wait_idle()).await;
    assert!(idle.is_err(), "two jobs still run");

    assert_eq!(h.scheduler.abort_running(), 2);
    tokio::time::timeout(Duration::from_secs(5), h.scheduler.wait_idle())
        .await
        .expect("idle after abort");
    assert_eq!(
        h.dropped.load(Ordering::SeqCst),
        2,
        "both dispatch futures dropped"
    );
    let s = h.scheduler.snapshot();
    assert_eq!((s.running, s.vcpus_used, s.queued), (0, 0, 0));
    h.none_started().await;
}
