use super::*;
use crate::scheduler::test_support::{job, pool};

fn host(vcpus: u32, memory_mib: u64) -> HostCapacity {
    HostCapacity { vcpus, memory_mib }
}

fn started(q: &mut Queue) -> Vec<(u64, Claim)> {
    std::iter::from_fn(|| q.start_next())
        .map(|(j, c)| (j.job_id, c))
        .collect()
}

#[test]
fn starts_in_arrival_order_until_the_host_is_full() {
    let small = pool("small", 2, 1000, None);
    let mut q = Queue::new(host(4, 10_000), &[Arc::clone(&small)], 100);
    for id in 1..=3 {
        q.enqueue(job(id, &small)).expect("enqueue");
    }
    let run = started(&mut q);
    assert_eq!(run.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    let s = q.snapshot();
    assert_eq!(
        (s.queued, s.running, s.vcpus_used, s.memory_mib_used),
        (1, 2, 4, 2000)
    );
    q.release(run[0].1);
    assert_eq!(started(&mut q).iter().map(|r| r.0).collect::<Vec<_>>(), [3]);
    assert_eq!(q.snapshot().finished, 1);
}

#[test]
fn memory_limits_too() {
    let fat = pool("fat", 1, 6000, None);
    let mut q = Queue::new(host(32, 10_000), &[Arc::clone(&fat)], 100);
    q.enqueue(job(1, &fat)).expect("enqueue");
    q.enqueue(job(2, &fat)).expect("enqueue");
    assert_eq!(started(&mut q).len(), 1);
}

#[test]
fn max_vms_holds_only_its_own_pool() {
    let capped = pool("capped", 1, 100, Some(1));
    let free = pool("free", 1, 100, None);
    let mut q = Queue::new(
        host(8, 10_000),
        &[Arc::clone(&capped), Arc::clone(&free)],
        100,
    );
    q.enqueue(job(1, &capped)).expect("enqueue");
    q.enqueue(job(2, &capped)).expect("enqueue");
    q.enqueue(job(3, &free)).expect("enqueue");
    let run = started(&mut q);
    assert_eq!(run.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 3]);
    let s = q.snapshot();
    assert_eq!(
        s.pool("capped").map(|p| (p.queued, p.running)),
        Some((1, 1))
    );
    assert_eq!(s.pool("free").map(|p| (p.queued, p.running)), Some((0, 1)));
    q.release(run[0].1);
    assert_eq!(started(&mut q).iter().map(|r| r.0).collect::<Vec<_>>(), [2]);
}

#[test]
fn zero_max_vms_queues_forever() {
    let none = pool("none", 1, 100, Some(0));
    let mut q = Queue::new(host(8, 10_000), &[Arc::clone(&none)], 100);
    q.enqueue(job(1, &none)).expect("enqueue");
    assert!(q.start_next().is_none());
    assert_eq!(q.snapshot().queued, 1);
}

#[test]
fn a_big_job_waiting_for_the_host_holds_up_later_small_ones() {
    let big = pool("big", 4, 100, None);
    let small = pool("small", 1, 100, None);
    let mut q = Queue::new(
        host(4, 10_000),
        &[Arc::clone(&big), Arc::clone(&small)],
        100,
    );
    q.enqueue(job(1, &small)).expect("enqueue");
    q.enqueue(job(2, &big)).expect("enqueue");
    q.enqueue(job(3, &small)).expect("enqueue");
    let run = started(&mut q);
    assert_eq!(
        run.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1],
        "3 must not overtake 2"
    );
    q.release(run[0].1);
    let run = started(&mut q);
    assert_eq!(run.iter().map(|r| r.0).collect::<Vec<_>>(), [2]);
    q.release(run[0].1);
    assert_eq!(started(&mut q).iter().map(|r| r.0).collect::<Vec<_>>(), [3]);
}

#[test]
fn cancel_removes_only_queued_jobs() {
    let small = pool("small", 2, 100, None);
    let mut q = Queue::new(host(2, 10_000), &[Arc::clone(&small)], 100);
    q.enqueue(job(1, &small)).expect("enqueue");
    q.enqueue(job(2, &small)).expect("enqueue");
    q.enqueue(job(3, &small)).expect("enqueue");
    let run = started(&mut q);
    assert_eq!(run.len(), 1);
    assert!(q.cancel(1).is_none(), "job 1 runs already");
    assert_eq!(q.cancel(2).map(|j| j.job_id), Some(2));
    assert!(q.cancel(2).is_none());
    assert_eq!(q.snapshot().cancelled, 1);
    q.release(run[0].1);
    assert_eq!(started(&mut q).iter().map(|r| r.0).collect::<Vec<_>>(), [3]);
}

#[test]
fn refuses_beyond_the_bound_duplicates_and_strangers() {
    let small = pool("small", 1, 100, Some(0));
    let mut q = Queue::new(host(2, 10_000), &[Arc::clone(&small)], 2);
    q.enqueue(job(1, &small)).expect("enqueue");
    assert_eq!(
        q.enqueue(job(1, &small)),
        Err(EnqueueError::AlreadyQueued { job_id: 1 })
    );
    q.enqueue(job(2, &small)).expect("enqueue");
    assert_eq!(
        q.enqueue(job(3, &small)),
        Err(EnqueueError::QueueFull { limit: 2 })
    );
    let stranger = pool("stranger", 1, 100, None);
    assert!(matches!(
        q.enqueue(job(4, &stranger)),
        Err(EnqueueError::UnknownPool { .. })
    ));
    assert_eq!(q.cancel(1).map(|j| j.job_id), Some(1));
    q.enqueue(job(3, &small)).expect("room again");
    assert_eq!(
        q.drain().iter().map(|j| j.job_id).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(q.snapshot().queued, 0);
}

#[test]
fn a_pool_bigger_than_the_host_is_refused() {
    let huge = pool("huge", 8, 100, None);
    let mut q = Queue::new(host(4, 10_000), &[Arc::clone(&huge)], 10);
    assert!(matches!(
        q.enqueue(job(1, &huge)),
        Err(EnqueueError::NeverFits { .. })
    ));
}

#[test]
fn room_counts_what_a_pool_holds_and_what_still_fits() {
    let small = pool("small", 2, 1000, Some(3));
    let big = pool("big", 4, 4000, None);
    let mut q = Queue::new(
        host(8, 10_000),
        &[Arc::clone(&small), Arc::clone(&big)],
        100,
    );
    assert_eq!(
        q.room("small"),
        Some(Room { held: 0, more: 3 }),
        "max_vms bounds it"
    );
    assert_eq!(q.room("big"), Some(Room { held: 0, more: 2 }));
    q.enqueue(job(1, &small)).expect("enqueue");
    assert_eq!(started(&mut q).len(), 1);
    q.enqueue(job(2, &big)).expect("enqueue");
    q.enqueue(job(3, &big)).expect("enqueue");
    // 2 vCPUs run, 4 start with job 2, job 3 waits for the last 2 + 2 more:
    // nothing is left for anyone, and job 3 counts against the host.
    let _ = started(&mut q);
    assert_eq!(q.room("small"), Some(Room { held: 1, more: 0 }));
    assert_eq!(q.room("big"), Some(Room { held: 2, more: 0 }));
    assert_eq!(q.room("nope"), None);
}
