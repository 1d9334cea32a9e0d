//! A small scheduler: jobs run on a few threads, each once the jobs it
//! waits for have succeeded.

use std::sync::{Condvar, Mutex};

/// Runs `job(i)` for every `i` once all of `waits[i]` have succeeded, on
/// up to `threads` threads. The first error stops new jobs from starting
/// and is returned once the running ones are done.
pub fn run_in_order<E: Send>(
    waits: &[Vec<usize>],
    threads: usize,
    job: impl Fn(usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    struct State<E> {
        started: Vec<bool>,
        done: Vec<bool>,
        running: usize,
        error: Option<E>,
    }
    let n = waits.len();
    let state = Mutex::new(State {
        started: vec![false; n],
        done: vec![false; n],
        running: 0,
        error: None,
    });
    let changed = Condvar::new();
    let worker = || loop {
        // A poisoned lock means a job panicked, and panic=abort already
        // ended PID 1 (and the VM): recovering the guard is fine here.
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let next = loop {
            if st.error.is_some() {
                break None;
            }
            let ready = (0..n).find(|&i| !st.started[i] && waits[i].iter().all(|&d| st.done[d]));
            if let Some(i) = ready {
                break Some(i);
            }
            if st.started.iter().all(|s| *s) || st.running == 0 {
                // All handed out, or nothing running could ever make the
                // rest ready (a dependency index that never completes).
                break None;
            }
            st = changed.wait(st).unwrap_or_else(|p| p.into_inner());
        };
        let Some(i) = next else {
            changed.notify_all();
            return;
        };
        st.started[i] = true;
        st.running += 1;
        drop(st);
        let result = job(i);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.running -= 1;
        match result {
            Ok(()) => st.done[i] = true,
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(e);
                }
            }
        }
        changed.notify_all();
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(n) {
            s.spawn(worker);
        }
        worker();
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    match st.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_after_their_dependencies_and_independent_ones_overlap() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        // 0 <- 1 <- 3, and 2 on its own; 2 and 0 must run at the same time.
        let waits = vec![vec![], vec![0], vec![], vec![1]];
        let done: Vec<AtomicBool> = (0..4).map(|_| AtomicBool::new(false)).collect();
        let running: Vec<AtomicBool> = (0..4).map(|_| AtomicBool::new(false)).collect();
        let overlapped = AtomicBool::new(false);
        run_in_order(&waits, 2, |i| -> Result<(), String> {
            running[i].store(true, Ordering::SeqCst);
            for &d in &waits[i] {
                assert!(done[d].load(Ordering::SeqCst), "{i} ran before {d}");
            }
            if i == 0 || i == 2 {
                let other = if i == 0 { 2 } else { 0 };
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until {
                    if running[other].load(Ordering::SeqCst) {
                        overlapped.store(true, Ordering::SeqCst);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            done[i].store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert!(done.iter().all(|d| d.load(Ordering::SeqCst)));
        assert!(
            overlapped.load(Ordering::SeqCst),
            "independent jobs ran one after the other"
        );
    }
    #[test]
    fn a_failure_stops_what_depends_on_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let waits = vec![vec![], vec![0], vec![1]];
        let ran = AtomicUsize::new(0);
        let err = run_in_order(&waits, 4, |i| {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 1 {
                Err(format!("job {i} failed"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err, "job 1 failed");
        assert_eq!(ran.load(Ordering::SeqCst), 2, "job 2 must not start");
        // One thread, nothing to do, and no dependencies at all.
        run_in_order(&[], 1, |_| Err("never")).unwrap();
        run_in_order(&[vec![], vec![]], 1, |_| Ok::<(), ()>(())).unwrap();
    }
}
