//! The board: the jobs this daemon runs now and the last ones it ran, as
//! `kiln ps`, `kiln logs` and `kiln cancel` see them (through
//! [`crate::admin`]). Each job's task writes its row as it goes (stage,
//! VM, boot milestones, log file); the row of a finished job moves to a
//! short history so its log can still be found by job or VM id.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::vm::{Progress, StopHandle, StopLevel};

/// Finished jobs remembered for `kiln ps --all` and `kiln logs`.
const HISTORY: usize = 200;

/// A VM milestone: `prepared`, `vmm_started`, `guest_hello`, `job_sent`,
/// `runner_started` or `job_ended`, and when, in ms since the job's task
/// started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    pub name: String,
    pub ms: u64,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Asking GitHub whether the job is still queued.
    Checking,
    /// Getting the runner's JIT config.
    Registering,
    /// The VM is being made and boots.
    Booting,
    /// The VM cannot start yet: `Row::waiting_for` says what it lacks.
    Waiting,
    /// The runner runs in the guest.
    Running,
    /// The job ended; the VM is going and the runner is deleted.
    TearingDown,
    /// Over: `Row::outcome` says how.
    Done,
}

/// One job, as `kiln ps` shows it (and the admin socket sends it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub job_id: u64,
    pub run_id: u64,
    pub repository: String,
    pub pool: String,
    pub runner: String,
    pub stage: Stage,
    /// Unix seconds at which the job's task started.
    pub started_unix: u64,
    /// Seconds since then (to the end, for a finished job).
    pub age_secs: f64,
    pub vm: Option<String>,
    /// Boot milestones reached, in order.
    pub milestones: Vec<Milestone>,
    /// The job's log file.
    pub log: Option<PathBuf>,
    /// How it ended, once it has.
    pub outcome: Option<String>,
    /// Set when an operator asked to cancel it.
    pub cancelled: bool,
    /// What a waiting job's VM lacks: `address` or `disk space`.
    #[serde(default)]
    pub waiting_for: Option<String>,
}

/// What a job's task says about itself; [`Board::add`] makes one.
struct Entry {
    row: Row,
    since: Instant,
    ended: Option<Instant>,
    stop: StopHandle,
}

/// The jobs running now and the last [`HISTORY`] finished.
#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: BTreeMap<u64, Entry>,
    done: VecDeque<Entry>,
}

/// The identity of a job's row.
pub struct NewRow<'a> {
    pub job_id: u64,
    pub run_id: u64,
    pub repository: &'a str,
    pub pool: &'a str,
    pub runner: &'a str,
}

/// What [`Board::cancel`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// Its VM is being stopped (the runner gets SIGTERM and the grace);
    /// the job's pool.
    Stopping { pool: String },
    /// It had finished already.
    AlreadyOver,
    /// No such job here.
    Unknown,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is a few field writes: consistent after a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A job's task started; `stop` cancels it.
    pub fn add(&self, new: &NewRow<'_>, stop: StopHandle) {
        let row = Row {
            job_id: new.job_id,
            run_id: new.run_id,
            repository: new.repository.to_owned(),
            pool: new.pool.to_owned(),
            runner: new.runner.to_owned(),
            stage: Stage::Checking,
            started_unix: unix_now(),
            age_secs: 0.0,
            vm: None,
            milestones: Vec::new(),
            log: None,
            outcome: None,
            cancelled: false,
            waiting_for: None,
        };
        let entry = Entry {
            row,
            since: Instant::now(),
            ended: None,
            stop,
        };
        self.lock().running.insert(new.job_id, entry);
    }

    pub fn stage(&self, job_id: u64, stage: Stage) {
        self.with(job_id, |e| e.row.stage = stage);
    }

    /// The job's VM cannot start for want of `lacking`; it tries again.
    pub fn waiting(&self, job_id: u64, lacking: &str) {
        self.with(job_id, |e| {
            e.row.stage = Stage::Waiting;
            e.row.waiting_for = Some(lacking.to_owned());
        });
    }

    pub fn log(&self, job_id: u64, path: PathBuf) {
        self.with(job_id, |e| e.row.log = Some(path));
    }

    /// A milestone of the job's VM.
    pub fn progress(&self, job_id: u64, p: &Progress) {
        self.with(job_id, |e| {
            let (name, stage) = match p {
                Progress::Prepared { id, .. } => {
                    e.row.vm = Some(id.clone());
                    ("prepared", Stage::Booting)
                }
                Progress::VmmStarted { .. } => ("vmm_started", Stage::Booting),
                Progress::Hello => ("guest_hello", Stage::Booting),
                Progress::JobSent => ("job_sent", Stage::Booting),
                Progress::RunnerStarted { .. } => ("runner_started", Stage::Running),
                Progress::JobEnded => ("job_ended", Stage::TearingDown),
            };
            e.row.stage = stage;
            e.row.waiting_for = None;
            e.row.milestones.push(Milestone {
                name: name.to_owned(),
                ms: ms(e.since.elapsed()),
            });
        });
    }

    /// The job is over; its row goes to the history.
    pub fn done(&self, job_id: u64, outcome: String) {
        let mut inner = self.lock();
        let Some(mut e) = inner.running.remove(&job_id) else {
            return;
        };
        e.row.stage = Stage::Done;
        e.row.outcome = Some(outcome);
        e.ended = Some(Instant::now());
        if inner.done.len() >= HISTORY {
            inner.done.pop_front();
        }
        inner.done.push_back(e);
    }

    /// Asks job `job_id`'s VM to stop as on cancellation: the runner gets
    /// SIGTERM, then SIGKILL after the grace, and the job ends as usual
    /// (its runner deleted; not re-run, as it was no infrastructure failure).
    pub fn cancel(&self, job_id: u64) -> Cancelled {
        let mut inner = self.lock();
        if let Some(e) = inner.running.get_mut(&job_id) {
            e.row.cancelled = true;
            e.stop.raise(StopLevel::Cancel);
            return Cancelled::Stopping {
                pool: e.row.pool.clone(),
            };
        }
        if inner.done.iter().any(|e| e.row.job_id == job_id) {
            Cancelled::AlreadyOver
        } else {
            Cancelled::Unknown
        }
    }

    /// The running jobs (and, with `all`, the remembered finished ones,
    /// newest first after them).
    pub fn rows(&self, all: bool) -> Vec<Row> {
        let inner = self.lock();
        let mut rows: Vec<Row> = inner.running.values().map(Entry::snapshot).collect();
        if all {
            rows.extend(inner.done.iter().rev().map(Entry::snapshot));
        }
        rows
    }

    /// The row of the job whose id or VM id is `id`: a running one first,
    /// then the newest finished one.
    pub fn find(&self, id: &str) -> Option<Row> {
        let inner = self.lock();
        let job_id = id.parse::<u64>().ok();
        let matches = |e: &&Entry| Some(e.row.job_id) == job_id || e.row.vm.as_deref() == Some(id);
        inner
            .running
            .values()
            .find(matches)
            .or_else(|| inner.done.iter().rev().find(matches))
            .map(Entry::snapshot)
    }

    /// Whether job `job_id` is still running.
    pub fn is_running(&self, job_id: u64) -> bool {
        self.lock().running.contains_key(&job_id)
    }

    fn with(&self, job_id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().running.get_mut(&job_id) {
            f(e);
        }
    }
}

impl Entry {
    fn snapshot(&self) -> Row {
        let end = self.ended.unwrap_or_else(Instant::now);
        Row {
            age_secs: end.saturating_duration_since(self.since).as_secs_f64(),
            ..self.row.clone()
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::stop_channel;

    fn new_row(job_id: u64) -> NewRow<'static> {
        NewRow {
            job_id,
            run_id: 7,
            repository: "acme/widgets",
            pool: "small",
            runner: "kiln-small-1-abc",
        }
    }

    #[test]
    fn a_job_goes_through_its_stages_and_is_found_by_job_or_vm_id() {
        let board = Board::default();
        let (stop, _signal) = stop_channel();
        board.add(&new_row(41), stop);
        board.stage(41, Stage::Registering);
        board.waiting(41, "disk space");
        let row = board.find("41").expect("running");
        assert_eq!(row.stage, Stage::Waiting);
        assert_eq!(row.waiting_for.as_deref(), Some("disk space"));
        board.progress(
            41,
            &Progress::Prepared {
                id: "kiln-abc".into(),
                dir: "/x".into(),
                cid: 3,
            },
        );
        board.progress(41, &Progress::RunnerStarted { pid: 9 });
        let row = board.find("kiln-abc").expect("found by VM id");
        assert_eq!((row.job_id, row.stage), (41, Stage::Running));
        assert_eq!(row.waiting_for, None, "a VM that starts waits no more");
        let names: Vec<_> = row.milestones.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["prepared", "runner_started"]);
        assert_eq!(board.rows(false).len(), 1);
        board.done(41, "exit 0".into());
        assert!(board.rows(false).is_empty());
        let row = board.find("41").expect("found in the history");
        assert_eq!(row.stage, Stage::Done);
        assert_eq!(row.outcome.as_deref(), Some("exit 0"));
        assert_eq!(board.rows(true).len(), 1);
    }

    #[test]
    fn cancel_raises_the_stop_level_of_a_running_job_only() {
        let board = Board::default();
        let (stop, signal) = stop_channel();
        board.add(&new_row(5), stop);
        assert_eq!(board.cancel(6), Cancelled::Unknown);
        assert_eq!(signal.level(), StopLevel::Run);
        assert_eq!(
            board.cancel(5),
            Cancelled::Stopping {
                pool: "small".into()
            }
        );
        assert_eq!(signal.level(), StopLevel::Cancel);
        assert!(board.find("5").is_some_and(|r| r.cancelled));
        board.done(5, "cancelled".into());
        assert_eq!(board.cancel(5), Cancelled::AlreadyOver);
    }

    #[test]
    fn the_history_is_bounded() {
        let board = Board::default();
        for id in 0..(HISTORY as u64 + 10) {
            let (stop, _) = stop_channel();
            board.add(&new_row(id), stop);
            board.done(id, "exit 0".into());
        }
        assert_eq!(board.rows(true).len(), HISTORY);
        assert!(board.find("0").is_none(), "the oldest went first");
    }
}
