//! Runners that never get a job. A JIT runner waits for a job that may
//! never come to it (another runner took it, it was cancelled, the
//! delivery was a replay): without this its VM would live until the
//! pool's `job_timeout`. The pool's `idle_timeout` counts from the
//! runner's start; by then the runner must have taken a job, which shows
//! in two ways:
//!
//! - its stdout: the actions runner prints `Running job: <name>` when it
//!   takes one ([`Spotting`] watches the output for it on its way to the
//!   job log);
//! - GitHub: the runner's `busy` field (asked once the time is up, so a
//!   changed line in a new runner version does not kill running jobs).
//!
//! When neither says so, the VM is asked to stop (the runner gets SIGTERM,
//! then the grace period) and [`super::Jobs`] deletes the registration as
//! always. When GitHub cannot be asked, the watch asks again after
//! [`RECHECK`] rather than risk stopping a job.

use std::future::Future;
use std::io;
use std::time::Duration;

use kiln_protocol::Stream;
use tokio::sync::{mpsc, watch};

use crate::github::{GithubError, RunnerState};
use crate::logs::events;
use crate::vm::{OutputSink, Progress, StopHandle};

/// What the actions runner prints on stdout when it takes a job
/// (`2024-01-01 10:00:00Z: Running job: build`).
pub const JOB_TAKEN_MARKER: &[u8] = b"Running job: ";

/// After GitHub could not say whether the runner is busy, ask again this
/// much later.
pub const RECHECK: Duration = Duration::from_secs(60);

/// How the watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleVerdict {
    /// The runner printed that it took a job.
    TookJob,
    /// The line was not seen, but GitHub says the runner is busy.
    BusyOnGithub,
    /// No job within the idle timeout: the VM was asked to stop.
    Stopped,
    /// The VM ended (or never ran its runner) first.
    VmEnded,
}

/// Scans a runner's stdout for [`JOB_TAKEN_MARKER`], across chunk
/// boundaries, until it has been seen.
#[derive(Debug)]
pub struct JobSpotter {
    /// The end of the stdout seen so far, shorter than the marker.
    carry: Vec<u8>,
    taken: watch::Sender<bool>,
}

impl JobSpotter {
    /// The spotter, and what [`watch_idle`] waits on.
    pub fn new() -> (Self, watch::Receiver<bool>) {
        let (taken, rx) = watch::channel(false);
        let spotter = JobSpotter {
            carry: Vec::with_capacity(JOB_TAKEN_MARKER.len()),
            taken,
        };
        (spotter, rx)
    }

    pub fn seen(&self) -> bool {
        *self.taken.borrow()
    }

    pub fn scan(&mut self, stream: Stream, data: &[u8]) {
        if stream != Stream::Stdout || self.seen() || data.is_empty() {
            return;
        }
        let keep = JOB_TAKEN_MARKER.len() - 1;
        // The carry plus the start of `data` covers a marker cut in two.
        let head = &data[..data.len().min(keep)];
        let mut joined = Vec::with_capacity(self.carry.len() + head.len());
        joined.extend_from_slice(&self.carry);
        joined.extend_from_slice(head);
        if contains(&joined, JOB_TAKEN_MARKER) || contains(data, JOB_TAKEN_MARKER) {
            self.carry.clear();
            let _ = self.taken.send(true);
            return;
        }
        // The last `keep` bytes of the stream so far.
        let carry = if data.len() >= keep {
            &data[data.len() - keep..]
        } else {
            &joined[joined.len().saturating_sub(keep)..]
        };
        self.carry = carry.to_vec();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An output sink that hands everything on to `inner` and shows it to a
/// [`JobSpotter`] on the way.
pub struct Spotting<'a, S> {
    pub inner: &'a mut S,
    pub spotter: JobSpotter,
}

impl<S: OutputSink> OutputSink for Spotting<'_, S> {
    async fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        self.spotter.scan(stream, data);
        self.inner.write(stream, data).await
    }
}

/// Watches one runner: from [`Progress::RunnerStarted`] on, it has `idle`
/// to take a job (`taken`, or `ask` — GitHub's `busy` — once the time is
/// up); otherwise `stop` is raised to `Cancel`. Ends when the VM does
/// (`progress` closed or [`Progress::JobEnded`]).
pub async fn watch_idle<F, Fut>(
    idle: Duration,
    mut progress: mpsc::UnboundedReceiver<Progress>,
    mut taken: watch::Receiver<bool>,
    mut ask: F,
    stop: StopHandle,
) -> IdleVerdict
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<RunnerState, GithubError>>,
{
    loop {
        match progress.recv().await {
            Some(Progress::RunnerStarted { .. }) => break,
            Some(Progress::JobEnded) | None => return IdleVerdict::VmEnded,
            Some(_) => {}
        }
    }
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        tokio::select! {
            () = job_taken(&mut taken) => return IdleVerdict::TookJob,
            p = progress.recv() => match p {
                Some(Progress::JobEnded) | None => return IdleVerdict::VmEnded,
                Some(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                match ask().await {
                    Ok(RunnerState::Registered { busy: true }) => return IdleVerdict::BusyOnGithub,
                    Ok(state) => {
                        if *taken.borrow() {
                            return IdleVerdict::TookJob;
                        }
                        tracing::warn!(
                            event = %events::JOB_IDLE_STOPPED,
                            idle_timeout = ?idle,
                            github = ?state,
                            "the runner took no job within the pool's idle_timeout: stopping its VM"
                        );
                        stop.cancel();
                        return IdleVerdict::Stopped;
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            recheck = ?RECHECK,
                            "the runner took no job within idle_timeout, but GitHub cannot say whether it is busy: asking again later"
                        );
                        deadline = tokio::time::Instant::now() + RECHECK;
                    }
                }
            }
        }
    }
}

/// Resolves once the runner was seen taking a job; pends forever if the
/// spotter is gone without having seen it.
async fn job_taken(taken: &mut watch::Receiver<bool>) {
    if taken.wait_for(|t| *t).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{stop_channel, StopLevel};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const IDLE: Duration = Duration::from_secs(600);

    fn scanned(chunks: &[&[u8]]) -> bool {
        let (mut s, rx) = JobSpotter::new();
        for c in chunks {
            s.scan(Stream::Stdout, c);
        }
        let seen = *rx.borrow();
        seen
    }

    #[test]
    fn the_marker_is_found_whole_or_cut_across_chunks() {
        assert!(scanned(&[b"2024-01-01 10:00:00Z: Running job: build\n"]));
        assert!(scanned(&[b"...Runn", b"ing job: build"]));
        assert!(scanned(&[b"R", b"u", b"nning", b" ", b"job: x"]));
        assert!(scanned(&[
            b"lots of text before it ",
            b"Running jo",
            b"b: "
        ]));
        assert!(!scanned(&[b"Listening for Jobs\n", b"Running jo"]));
        assert!(!scanned(&[b"Running job"]), "without the colon and space");
        let (mut s, rx) = JobSpotter::new();
        s.scan(Stream::Stderr, b"Running job: on stderr");
        assert!(!*rx.borrow(), "only stdout counts");
    }

    struct Asked(Arc<AtomicU32>);

    impl Asked {
        fn answer(
            &self,
            answers: Vec<Result<RunnerState, GithubError>>,
        ) -> impl FnMut() -> std::future::Ready<Result<RunnerState, GithubError>> {
            let count = Arc::clone(&self.0);
            let mut answers = answers.into_iter();
            move || {
                count.fetch_add(1, Ordering::SeqCst);
                std::future::ready(answers.next().unwrap_or(Ok(RunnerState::Gone)))
            }
        }
        fn times(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn unreachable_github() -> GithubError {
        GithubError::Timeout {
            method: "GET",
            path: "/orgs/acme/actions/runners/1".into(),
            timeout: Duration::from_secs(30),
            attempts: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_without_a_job_is_stopped_after_the_idle_timeout() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (spotter, taken) = JobSpotter::new();
        let (handle, signal) = stop_channel();
        let asked = Asked(Arc::default());
        tx.send(Progress::Hello).ok();
        tx.send(Progress::RunnerStarted { pid: 1 }).ok();
        let started = tokio::time::Instant::now();
        let watch = watch_idle(
            IDLE,
            rx,
            taken,
            asked.answer(vec![Ok(RunnerState::Registered { busy: false })]),
            handle,
        );
        assert_eq!(watch.await, IdleVerdict::Stopped);
        assert_eq!(started.elapsed(), IDLE);
        assert_eq!(signal.level(), StopLevel::Cancel);
        assert_eq!(asked.times(), 1);
        drop((tx, spotter));
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_that_prints_its_job_is_left_alone() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (mut spotter, taken) = JobSpotter::new();
        let (handle, signal) = stop_channel();
        let asked = Asked(Arc::default());
        tx.send(Progress::RunnerStarted { pid: 1 }).ok();
        let watch = tokio::spawn(watch_idle(IDLE, rx, taken, asked.answer(vec![]), handle));
        tokio::time::sleep(IDLE / 2).await;
        spotter.scan(
            Stream::Stdout,
            b"2024-01-01 10:00:00Z: Running job: build\n",
        );
        assert_eq!(watch.await.ok(), Some(IdleVerdict::TookJob));
        assert_eq!(signal.level(), StopLevel::Run);
        assert_eq!(asked.times(), 0);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn github_saying_busy_keeps_the_vm_and_errors_ask_again() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (_spotter, taken) = JobSpotter::new();
        let (handle, signal) = stop_channel();
        let asked = Asked(Arc::default());
        tx.send(Progress::RunnerStarted { pid: 1 }).ok();
        let started = tokio::time::Instant::now();
        let answers = vec![
            Err(unreachable_github()),
            Ok(RunnerState::Registered { busy: true }),
        ];
        let verdict = watch_idle(IDLE, rx, taken, asked.answer(answers), handle).await;
        assert_eq!(verdict, IdleVerdict::BusyOnGithub);
        assert_eq!(started.elapsed(), IDLE + RECHECK);
        assert_eq!(asked.times(), 2);
        assert_eq!(signal.level(), StopLevel::Run);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_ends_with_the_vm_and_counts_from_the_runners_start() {
        // The VM ends before its runner starts: nothing to watch.
        let (tx, rx) = mpsc::unbounded_channel();
        let (_spotter, taken) = JobSpotter::new();
        let (handle, signal) = stop_channel();
        let asked = Asked(Arc::default());
        drop(tx);
        let verdict = watch_idle(IDLE, rx, taken, asked.answer(vec![]), handle).await;
        assert_eq!(verdict, IdleVerdict::VmEnded);

        // A slow boot does not count: the clock starts with the runner.
        let (tx, rx) = mpsc::unbounded_channel();
        let (_spotter, taken) = JobSpotter::new();
        let (handle, _) = stop_channel();
        let watch = tokio::spawn(watch_idle(IDLE, rx, taken, asked.answer(vec![]), handle));
        tokio::time::sleep(IDLE * 2).await;
        tx.send(Progress::RunnerStarted { pid: 1 }).ok();
        tokio::time::sleep(IDLE / 2).await;
        tx.send(Progress::JobEnded).ok();
        assert_eq!(watch.await.ok(), Some(IdleVerdict::VmEnded));
        assert_eq!(asked.times(), 0);
        assert_eq!(signal.level(), StopLevel::Run);
    }
}
