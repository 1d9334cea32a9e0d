//! `kiln serve`'s durable journal: what the daemon has made on this host
//! and which jobs it owes GitHub, kept across a restart or a crash.
//!
//! # What is recorded, and when
//!
//! - Every VM ([`VmRecord`]): recorded with what is known before its first
//!   resource is made, then written again (an upsert) as each phase makes
//!   something: the VMM's pid together with its start time (field 22 of
//!   `/proc/<pid>/stat`, so that a pid reused by another process is never
//!   killed), the guest CID, the jail uid, the network namespace and its
//!   host-side links, the scratch disk, the jail and the cgroup. Removed
//!   after the last of them is gone.
//! - Every runner registration ([`RunnerRecord`]): recorded before the
//!   registration is asked for, removed after it is deleted at GitHub.
//! - Every job ([`JobRecord`]): its delivery, repository, pool, state,
//!   attempts and the runner that took it, plus why its VM ended when the
//!   reason was not the job's own (an infrastructure failure).
//! - The ids of completed jobs, so that a webhook redelivered after a
//!   restart is still recognised; only the most recent are kept.
//! - Scale-set queue messages whose jobs were recorded (in the same
//!   transaction as the jobs, before the message is deleted at GitHub), so
//!   that a redelivered message starts nothing twice; and each scale set's
//!   open session, closed by the next start.
//!
//! "Before the action that creates it" is the rule: after a crash the
//! journal may name something that was never made (harmless, cleanup finds
//! nothing) but never lacks something that was.
//!
//! # Durability
//!
//! The SQLite backend ([`sqlite::SqliteJournal`]) runs in WAL mode with
//! `synchronous=NORMAL`: a commit is in the WAL file when the call returns,
//! so a crash or kill of the daemon loses nothing, which is the case that
//! matters. After a power loss or kernel crash the last few commits may be
//! lost (the WAL is not fsynced on every commit); the on-host scan of VM
//! directories, namespaces, links and cgroups at start covers exactly that,
//! as it covers a journal that had to be moved aside as unreadable.
//!
//! # The interface
//!
//! Callers hold an `Arc<dyn Journal>` and see only [`Journal`], the plain
//! records and [`StoreError`], so that a backend for a fleet of hosts (e.g.
//! PostgreSQL) can follow without touching them. Every method is one short
//! transaction and may be called directly from async code.

pub mod sqlite;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub use sqlite::{JournalHealth, MovedAside, OpenOutcome, SqliteJournal};

/// One VM and every host resource made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    /// Kiln's id of the VM (its directory's name).
    pub id: String,
    /// The pool it was started for.
    pub pool: String,
    /// The job it runs, once one is assigned.
    pub job_id: Option<u64>,
    /// The VM's directory.
    pub dir: PathBuf,
    /// The VMM process (Firecracker, its jailer, or QEMU).
    pub vmm_pid: Option<u32>,
    /// The VMM's start time in clock ticks after boot, field 22 of
    /// `/proc/<pid>/stat`: a process with this pid but another start time is
    /// not ours.
    pub vmm_start_ticks: Option<u64>,
    /// The guest's vsock CID.
    pub cid: Option<u32>,
    /// The uid the jailed VMM runs as.
    pub uid: Option<u32>,
    /// The VM's network namespace.
    pub netns: Option<String>,
    /// Host-side network links (veth ends, taps) made for the VM.
    pub links: Vec<String>,
    /// The VM's scratch disk.
    pub scratch: Option<PathBuf>,
    /// The jailer's chroot.
    pub jail: Option<PathBuf>,
    /// The VM's cgroup.
    pub cgroup: Option<PathBuf>,
    /// When the VM was first recorded, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// One just-in-time runner registration at GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerRecord {
    /// GitHub's id of the runner, once the registration returned it.
    pub runner_id: Option<u64>,
    /// The runner's name, unique per host; the record's key.
    pub name: String,
    /// Where it is registered: `repo:owner/name` or `org:acme`.
    pub scope: String,
    /// The job it was registered for.
    pub job_id: u64,
    /// The VM it runs in, once there is one.
    pub vm_id: Option<String>,
    /// When it was recorded, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// Where a job is in Kiln's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Accepted from a webhook, waiting for capacity.
    Queued,
    /// A VM was started for it.
    Running,
    /// Kiln is done with it (completed, cancelled or given up).
    Finished,
}

impl JobState {
    /// Every state, in order.
    pub const ALL: [JobState; 3] = [JobState::Queued, JobState::Running, JobState::Finished];

    /// The name stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Finished => "finished",
        }
    }

    /// The state stored under `name`, if it is one.
    pub fn from_name(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `workflow_job` Kiln accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    /// GitHub's id of the job; the record's key.
    pub job_id: u64,
    /// The webhook delivery that brought it (`X-GitHub-Delivery`).
    pub delivery: Option<String>,
    pub owner: String,
    pub repo: String,
    /// The pool that serves it.
    pub pool: String,
    /// The job's `runs-on` labels.
    pub labels: Vec<String>,
    pub state: JobState,
    /// VMs started for it so far.
    pub attempts: u32,
    /// The runner that took it.
    pub runner_name: Option<String>,
    /// Why its VM ended, when the reason was not the job's own.
    pub infra_failure: Option<String>,
    /// Reruns Kiln asked GitHub for after infrastructure failures.
    pub reruns: u32,
    /// When the record last changed, seconds since the Unix epoch.
    pub updated_unix: u64,
    /// Its workflow run.
    pub run_id: u64,
    /// The App installation that may act on it.
    pub installation_id: u64,
}

/// A journal operation that failed. Each message names the file or
/// directory and says what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The filesystem holding the journal is full: refuse new jobs; reads,
    /// and the running jobs, keep working.
    #[error(
        "journal {path}: the filesystem is full; new jobs are refused until space is freed there"
    )]
    Full { path: PathBuf },
    #[error("state directory {dir} is not writable ({cause}); kiln keeps its journal there: mount it read-write, give kiln's user write access to it, or point KILN_STATE_DIR at a writable directory")]
    ReadOnly { dir: PathBuf, cause: String },
    #[error("state directory {dir} does not exist; create it (owned by kiln's user, mode 0700) or point KILN_STATE_DIR at one that does")]
    NoStateDir { dir: PathBuf },
    #[error("state directory {dir}: {cause}")]
    StateDir { dir: PathBuf, cause: std::io::Error },
    /// Written by a newer kiln: never downgraded.
    #[error("journal {path} has schema version {found}, newer than the {known} this kiln knows; run the kiln that wrote it, or move the file aside to start an empty journal")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("journal {path}: {op}: {cause}")]
    Io {
        path: PathBuf,
        op: &'static str,
        cause: std::io::Error,
    },
    #[error("journal {path}: {op}: {cause}")]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        cause: rusqlite::Error,
    },
}

impl StoreError {
    /// Whether the filesystem is full: the caller refuses new jobs.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. })
    }
}

/// The journal's interface; callers hold an `Arc<dyn Journal>`.
///
/// Every call is one short transaction: durable (see the module's
/// documentation) when it returns `Ok`.
pub trait Journal: Send + Sync {
    /// Records `rec`, replacing the VM with the same id.
    fn put_vm(&self, rec: &VmRecord) -> Result<(), StoreError>;
    /// Forgets the VM `id`; nothing happens when there is none.
    fn remove_vm(&self, id: &str) -> Result<(), StoreError>;
    /// Every recorded VM, oldest first.
    fn vms(&self) -> Result<Vec<VmRecord>, StoreError>;

    /// Records `rec`, replacing the runner with the same name.
    fn put_runner(&self, rec: &RunnerRecord) -> Result<(), StoreError>;
    /// Forgets the runner `name`; nothing happens when there is none.
    fn remove_runner(&self, name: &str) -> Result<(), StoreError>;
    /// Every recorded runner, oldest first.
    fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError>;

    /// Records `rec`, replacing the job with the same id.
    fn put_job(&self, rec: &JobRecord) -> Result<(), StoreError>;
    /// The job `job_id`, if recorded.
    fn job(&self, job_id: u64) -> Result<Option<JobRecord>, StoreError>;
    /// Sets a job's state (and its `updated_unix` to now); `false` when no
    /// such job is recorded.
    fn set_job_state(&self, job_id: u64, state: JobState) -> Result<bool, StoreError>;
    /// Records why a job's VM ended for a reason not the job's own (and
    /// sets `updated_unix` to now); `false` when no such job is recorded.
    fn mark_infra_failure(&self, job_id: u64, why: &str) -> Result<bool, StoreError>;
    /// The jobs in any of `states`, by job id.
    fn jobs_in(&self, states: &[JobState]) -> Result<Vec<JobRecord>, StoreError>;
    /// Forgets the job `job_id`; nothing happens when there is none.
    fn remove_job(&self, job_id: u64) -> Result<(), StoreError>;

    /// Remembers that `job_id` completed (for webhook dedupe across
    /// restarts). Only the most recent ids are kept.
    fn remember_completed(&self, job_id: u64) -> Result<(), StoreError>;
    /// Whether `job_id` is remembered as completed.
    fn is_completed(&self, job_id: u64) -> Result<bool, StoreError>;

    /// Records that message `message_id` of scale set `scale_set_id` was
    /// read, and its `jobs`, in one transaction: `None` when the message
    /// was recorded before (a redelivery: nothing is written), else the ids
    /// of the jobs that were not held already (new, or finished before and
    /// now queued again: GitHub gave a job back and assigned it anew). Only after this returns
    /// may the message be deleted at GitHub.
    fn record_message(
        &self,
        scale_set_id: u64,
        message_id: i64,
        jobs: &[JobRecord],
    ) -> Result<Option<Vec<u64>>, StoreError>;
    /// Records scale set `scale_set`'s open session, so that a restart
    /// closes it rather than waiting for GitHub to expire it.
    fn put_session(
        &self,
        scale_set: &str,
        scale_set_id: u64,
        session_id: &str,
    ) -> Result<(), StoreError>;
    /// Forgets scale set `scale_set`'s session.
    fn remove_session(&self, scale_set: &str) -> Result<(), StoreError>;
    /// Scale set `scale_set`'s recorded session: its id and the scale set's.
    fn session(&self, scale_set: &str) -> Result<Option<(u64, String)>, StoreError>;
}

/// Now, in seconds since the Unix epoch (0 on a clock before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
