//! The journal in one SQLite file, `<state dir>/journal.db` (mode 0600).
//!
//! - WAL mode with `synchronous=NORMAL` (see the module above for what that
//!   keeps), a busy timeout for a second process (e.g. an operator's
//!   `sqlite3`) reading it, and foreign keys on. No table references another
//!   yet: each record is written when its resource is about to exist, in
//!   whatever order the phases run; the pragma is on so that references a
//!   later migration adds are enforced.
//! - The schema's version is `PRAGMA user_version`; [`MIGRATIONS`] are
//!   applied in order, each in one transaction together with the version
//!   it reaches. A journal newer than this build is refused, never
//!   downgraded.
//! - A journal that cannot be read (not a database, truncated, failing
//!   `PRAGMA quick_check`, or with a schema that does not match its
//!   version) is moved aside to `journal.db.corrupt-<unix time>`, with its
//!   `-wal` and `-shm` where they are left, and an empty one started;
//!   [`OpenOutcome`] says so, and recovery then relies on the on-host scan
//!   alone. (SQLite, trying to read it, may already have folded a WAL into
//!   the file or removed an empty one: what is moved aside is what SQLite
//!   left.)
//! - A full filesystem is [`StoreError::Full`]; reads keep working. A
//!   read-only state directory is [`StoreError::ReadOnly`].
//! - The connection sits behind a `std::sync::Mutex`: every call is one
//!   small transaction, short enough to make directly from async code.
//! - Paths are stored as BLOBs of their bytes, so that a path that is not
//!   UTF-8 comes back exactly; lists are JSON text. Tables are `STRICT`.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::unistd::{access, AccessFlags};
use rusqlite::types::Type;
use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};

use super::{unix_now, JobRecord, JobState, Journal, RunnerRecord, StoreError, VmRecord};
use crate::logs::events;

/// The journal's file name in the state directory.
pub const FILE_NAME: &str = "journal.db";

/// Completed job ids kept for webhook dedupe.
pub const COMPLETED_KEPT: u64 = 100_000;

/// How long a call waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Below this much free space an I/O error counts as a full filesystem
/// (SQLite writes at most a 64 KiB page at a time).
const FULL_BELOW_BYTES: u64 = 64 * 1024;

/// The schema, one migration per version: `MIGRATIONS[n]` takes a journal
/// from version `n` to `n + 1`. Append only; never edit a shipped one.
pub const MIGRATIONS: &[&str] = &[
    // 1: VMs, runners, jobs, completed job ids.
    "CREATE TABLE vms (
        id TEXT PRIMARY KEY NOT NULL,
        pool TEXT NOT NULL,
        job_id INTEGER,
        dir BLOB NOT NULL,
        vmm_pid INTEGER,
        vmm_start_ticks INTEGER,
        cid INTEGER,
        uid INTEGER,
        netns TEXT,
        links TEXT NOT NULL,
        scratch BLOB,
        jail BLOB,
        cgroup BLOB,
        created_unix INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE runners (
        name TEXT PRIMARY KEY NOT NULL,
        runner_id INTEGER,
        scope TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        vm_id TEXT,
        created_unix INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE jobs (
        job_id INTEGER PRIMARY KEY NOT NULL,
        delivery TEXT,
        owner TEXT NOT NULL,
        repo TEXT NOT NULL,
        pool TEXT NOT NULL,
        labels TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'finished')),
        attempts INTEGER NOT NULL,
        runner_name TEXT,
        infra_failure TEXT,
        reruns INTEGER NOT NULL,
        updated_unix INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        installation_id INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX jobs_by_state ON jobs (state);
    CREATE TABLE completed (
        seq INTEGER PRIMARY KEY NOT NULL,
        job_id INTEGER NOT NULL UNIQUE,
        completed_unix INTEGER NOT NULL
    ) STRICT;",
    // 2: scale sets: the queue messages whose jobs are recorded (a
    // redelivered one is recognised), and each scale set's open session.
    "CREATE TABLE scale_set_messages (
        scale_set_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        recorded_unix INTEGER NOT NULL,
        PRIMARY KEY (scale_set_id, message_id)
    ) STRICT;
    CREATE TABLE scale_set_sessions (
        scale_set TEXT PRIMARY KEY NOT NULL,
        scale_set_id INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        created_unix INTEGER NOT NULL
    ) STRICT;",
];

/// Recorded queue messages are remembered this long: a message is deleted
/// at GitHub right after its jobs are recorded, so only a daemon killed in
/// between sees it again, at its next session.
const MESSAGES_KEPT_SECS: u64 = 7 * 24 * 3600;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Every column the code reads, per table: a journal at the current
/// version without them has a schema this build cannot read.
const SCHEMA_CHECK: &[&str] = &[
    "SELECT id, pool, job_id, dir, vmm_pid, vmm_start_ticks, cid, uid, netns, links, scratch, jail, cgroup, created_unix FROM vms LIMIT 0",
    "SELECT name, runner_id, scope, job_id, vm_id, created_unix FROM runners LIMIT 0",
    "SELECT job_id, delivery, owner, repo, pool, labels, state, attempts, runner_name, infra_failure, reruns, updated_unix, run_id, installation_id FROM jobs LIMIT 0",
    "SELECT seq, job_id, completed_unix FROM completed LIMIT 0",
    "SELECT scale_set_id, message_id, recorded_unix FROM scale_set_messages LIMIT 0",
    "SELECT scale_set, scale_set_id, session_id, created_unix FROM scale_set_sessions LIMIT 0",
];

const VM_COLUMNS: &str = "id, pool, job_id, dir, vmm_pid, vmm_start_ticks, cid, uid, netns, links, scratch, jail, cgroup, created_unix";
const RUNNER_COLUMNS: &str = "name, runner_id, scope, job_id, vm_id, created_unix";
const JOB_COLUMNS: &str = "job_id, delivery, owner, repo, pool, labels, state, attempts, runner_name, infra_failure, reruns, updated_unix, run_id, installation_id";
/// One placeholder per [`JOB_COLUMNS`] column.
const JOB_VALUES: &str = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14";

/// The journal in `<state dir>/journal.db`.
#[derive(Debug)]
pub struct SqliteJournal {
    path: PathBuf,
    dir: PathBuf,
    conn: Mutex<Connection>,
    completed_cap: u64,
}

/// What [`SqliteJournal::open`] found.
#[derive(Debug)]
pub struct OpenOutcome {
    pub journal: SqliteJournal,
    /// Set when the journal was unreadable and moved aside: the new one is
    /// empty, and reconciliation relies on the on-host scan alone.
    pub moved_aside: Option<MovedAside>,
}

/// An unreadable journal, moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// Where the journal was (and the new, empty one is).
    pub from: PathBuf,
    /// Where it is now; its `-wal` and `-shm`, if any, are beside it.
    pub to: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

impl fmt::Display for MovedAside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "journal {} is unreadable ({}); moved it aside to {} and started an empty journal: \
             what ran before this start is found by the on-host scan alone",
            self.from.display(),
            self.reason,
            self.to.display()
        )
    }
}

/// What [`SqliteJournal::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalHealth {
    /// No journal yet: `kiln serve`'s first start makes it.
    Missing { path: PathBuf },
    /// Readable at schema `version` (an older one is migrated at the next start).
    Readable { path: PathBuf, version: i64 },
    /// The next start moves it aside and starts an empty one.
    Unreadable { path: PathBuf, reason: String },
}

/// Why one attempt to open the journal failed.
pub(super) enum OpenFailure {
    /// The file's content cannot be read: move it aside.
    Unreadable(String),
    /// Anything else: report it, leave the file alone.
    Fatal(StoreError),
}

impl SqliteJournal {
    /// Opens (or creates) `<state_dir>/journal.db`; `state_dir` must exist.
    /// An unreadable journal is moved aside and an empty one started, which
    /// the outcome reports.
    pub fn open(state_dir: &Path) -> Result<OpenOutcome, StoreError> {
        check_state_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let (conn, moved_aside) = match open_conn(&path) {
            Ok(conn) => (conn, None),
            Err(OpenFailure::Fatal(e)) => return Err(e),
            Err(OpenFailure::Unreadable(reason)) => {
                let moved = move_aside(&path, reason)?;
                tracing::error!(
                    event = %events::JOURNAL_MOVED_ASIDE,
                    from = %moved.from.display(),
                    to = %moved.to.display(),
                    reason = %moved.reason,
                    "{moved}"
                );
                (
                    open_conn(&path).map_err(|f| f.into_error(&path))?,
                    Some(moved),
                )
            }
        };
        let journal = SqliteJournal {
            path,
            dir: state_dir.to_path_buf(),
            conn: Mutex::new(conn),
            completed_cap: COMPLETED_KEPT,
        };
        Ok(OpenOutcome {
            journal,
            moved_aside,
        })
    }

    /// What the journal in `state_dir` is like, read-only and changing
    /// nothing (for `kiln doctor`, also while `kiln serve` runs): missing,
    /// readable, or unreadable (the next [`SqliteJournal::open`] moves it
    /// aside). A journal newer than this build is [`StoreError::TooNew`].
    pub fn inspect(state_dir: &Path) -> Result<JournalHealth, StoreError> {
        check_state_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        if !path.exists() {
            return Ok(JournalHealth::Missing { path });
        }
        let unreadable = |reason| JournalHealth::Unreadable {
            path: path.clone(),
            reason,
        };
        match inspect_conn(&path) {
            Ok(version) => Ok(JournalHealth::Readable {
                path: path.clone(),
                version,
            }),
            Err(OpenFailure::Unreadable(reason)) => Ok(unreadable(reason)),
            Err(OpenFailure::Fatal(e)) => Err(e),
        }
    }

    /// Keeps only the `cap` most recent completed job ids (default
    /// [`COMPLETED_KEPT`]).
    pub fn with_completed_cap(mut self, cap: u64) -> Self {
        self.completed_cap = cap;
        self
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection. A panic while it was held cannot leave a transaction
    /// half done (dropping one rolls it back), so a poisoned lock is taken
    /// over.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The error for a failed `op`.
    fn err(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        classify(&self.path, &self.dir, op, e)
    }

    /// Runs one write statement; the number of rows it changed.
    fn write(
        &self,
        op: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<usize, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(op, e))?;
        stmt.execute(params).map_err(|e| self.err(op, e))
    }

    /// Runs one query; every row through `map`.
    fn read<T>(
        &self,
        op: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(op, e))?;
        let rows = stmt.query_map(params, map).map_err(|e| self.err(op, e))?;
        rows.collect::<rusqlite::Result<Vec<T>>>()
            .map_err(|e| self.err(op, e))
    }
}

impl Journal for SqliteJournal {
    fn put_vm(&self, rec: &VmRecord) -> Result<(), StoreError> {
        let links = to_json(&rec.links);
        let sql = format!(
            "INSERT OR REPLACE INTO vms ({VM_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        );
        self.write(
            "recording a VM",
            &sql,
            params![
                rec.id,
                rec.pool,
                rec.job_id,
                path_bytes(&rec.dir),
                rec.vmm_pid,
                rec.vmm_start_ticks,
                rec.cid,
                rec.uid,
                rec.netns,
                links,
                rec.scratch.as_deref().map(path_bytes),
                rec.jail.as_deref().map(path_bytes),
                rec.cgroup.as_deref().map(path_bytes),
                rec.created_unix,
            ],
        )
        .map(drop)
    }

    fn remove_vm(&self, id: &str) -> Result<(), StoreError> {
        self.write("removing a VM", "DELETE FROM vms WHERE id = ?1", [id])
            .map(drop)
    }

    fn vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let sql = format!("SELECT {VM_COLUMNS} FROM vms ORDER BY created_unix, id");
        self.read("listing VMs", &sql, [], vm_from_row)
    }

    fn put_runner(&self, rec: &RunnerRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT OR REPLACE INTO runners ({RUNNER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        );
        self.write(
            "recording a runner",
            &sql,
            params![
                rec.name,
                rec.runner_id,
                rec.scope,
                rec.job_id,
                rec.vm_id,
                rec.created_unix
            ],
        )
        .map(drop)
    }

    fn remove_runner(&self, name: &str) -> Result<(), StoreError> {
        let sql = "DELETE FROM runners WHERE name = ?1";
        self.write("removing a runner", sql, [name]).map(drop)
    }

    fn runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let sql = format!("SELECT {RUNNER_COLUMNS} FROM runners ORDER BY created_unix, name");
        self.read("listing runners", &sql, [], runner_from_row)
    }

    fn put_job(&self, rec: &JobRecord) -> Result<(), StoreError> {
        let sql = format!("INSERT OR REPLACE INTO jobs ({JOB_COLUMNS}) VALUES ({JOB_VALUES})");
        with_job_params(rec, |p| self.write("recording a job", &sql, p)).map(drop)
    }

    fn job(&self, job_id: u64) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1");
        let conn = self.conn();
        let op = "reading a job";
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(op, e))?;
        stmt.query_row([job_id], job_from_row)
            .optional()
            .map_err(|e| self.err(op, e))
    }

    fn set_job_state(&self, job_id: u64, state: JobState) -> Result<bool, StoreError> {
        let sql = "UPDATE jobs SET state = ?2, updated_unix = ?3 WHERE job_id = ?1";
        self.write(
            "setting a job's state",
            sql,
            params![job_id, state.as_str(), unix_now()],
        )
        .map(|n| n > 0)
    }

    fn mark_infra_failure(&self, job_id: u64, why: &str) -> Result<bool, StoreError> {
        let sql = "UPDATE jobs SET infra_failure = ?2, updated_unix = ?3 WHERE job_id = ?1";
        self.write(
            "recording a job's infrastructure failure",
            sql,
            params![job_id, why, unix_now()],
        )
        .map(|n| n > 0)
    }

    fn jobs_in(&self, states: &[JobState]) -> Result<Vec<JobRecord>, StoreError> {
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs \
             WHERE state IN (SELECT value FROM json_each(?1)) ORDER BY job_id"
        );
        self.read("listing jobs", &sql, [to_json(&names)], job_from_row)
    }

    fn remove_job(&self, job_id: u64) -> Result<(), StoreError> {
        let sql = "DELETE FROM jobs WHERE job_id = ?1";
        self.write("removing a job", sql, [job_id]).map(drop)
    }

    fn remember_completed(&self, job_id: u64) -> Result<(), StoreError> {
        let op = "remembering a completed job";
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(op, e))?;
        tx.execute(
            "INSERT INTO completed (job_id, completed_unix) VALUES (?1, ?2) \
             ON CONFLICT (job_id) DO NOTHING",
            params![job_id, unix_now()],
        )
        .map_err(|e| self.err(op, e))?;
        // `seq` only grows and the newest row is never deleted, so the rows
        // more than `cap` behind the newest are the ones to forget.
        tx.execute(
            "DELETE FROM completed WHERE seq <= (SELECT MAX(seq) FROM completed) - ?1",
            [self.completed_cap],
        )
        .map_err(|e| self.err(op, e))?;
        tx.commit().map_err(|e| self.err(op, e))
    }

    fn record_message(
        &self,
        scale_set_id: u64,
        message_id: i64,
        jobs: &[JobRecord],
    ) -> Result<Option<Vec<u64>>, StoreError> {
        let op = "recording a scale-set message";
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(op, e))?;
        let now = unix_now();
        let fresh = tx
            .execute(
                "INSERT INTO scale_set_messages (scale_set_id, message_id, recorded_unix) \
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![scale_set_id, message_id, now],
            )
            .map_err(|e| self.err(op, e))?;
        if fresh == 0 {
            return Ok(None);
        }
        let mut new = Vec::new();
        {
            let sql = format!(
                "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({JOB_VALUES}) \
                 ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, \
                 delivery = excluded.delivery, updated_unix = excluded.updated_unix \
                 WHERE jobs.state = 'finished'"
            );
            let mut stmt = tx.prepare_cached(&sql).map_err(|e| self.err(op, e))?;
            for rec in jobs {
                let added =
                    with_job_params(rec, |p| stmt.execute(p)).map_err(|e| self.err(op, e))?;
                if added > 0 {
                    new.push(rec.job_id);
                }
            }
        }
        tx.execute(
            "DELETE FROM scale_set_messages WHERE recorded_unix < ?1",
            [now.saturating_sub(MESSAGES_KEPT_SECS)],
        )
        .map_err(|e| self.err(op, e))?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(Some(new))
    }

    fn put_session(
        &self,
        scale_set: &str,
        scale_set_id: u64,
        session_id: &str,
    ) -> Result<(), StoreError> {
        let sql = "INSERT OR REPLACE INTO scale_set_sessions \
                   (scale_set, scale_set_id, session_id, created_unix) VALUES (?1, ?2, ?3, ?4)";
        self.write(
            "recording a scale-set session",
            sql,
            params![scale_set, scale_set_id, session_id, unix_now()],
        )
        .map(drop)
    }

    fn remove_session(&self, scale_set: &str) -> Result<(), StoreError> {
        let sql = "DELETE FROM scale_set_sessions WHERE scale_set = ?1";
        self.write("forgetting a scale-set session", sql, [scale_set])
            .map(drop)
    }

    fn session(&self, scale_set: &str) -> Result<Option<(u64, String)>, StoreError> {
        let sql = "SELECT scale_set_id, session_id FROM scale_set_sessions WHERE scale_set = ?1";
        let found = self.read("reading a scale-set session", sql, [scale_set], |row| {
            Ok((row.get::<_, u64>(0)?, row.get::<_, String>(1)?))
        })?;
        Ok(found.into_iter().next())
    }

    fn is_completed(&self, job_id: u64) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM completed WHERE job_id = ?1";
        let found = self.read("looking up a completed job", sql, [job_id], |_| Ok(()))?;
        Ok(!found.is_empty())
    }
}

impl OpenFailure {
    /// The error to report when the journal cannot be used at all.
    fn into_error(self, path: &Path) -> StoreError {
        match self {
            OpenFailure::Fatal(e) => e,
            OpenFailure::Unreadable(reason) => StoreError::Io {
                path: path.to_path_buf(),
                op: "opening the fresh journal after moving the old one aside",
                cause: io::Error::other(reason),
            },
        }
    }
}

/// The state directory exists, is a directory, and can be written.
fn check_state_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NoStateDir {
                dir: dir.to_path_buf(),
            })
        }
        Err(cause) => {
            return Err(StoreError::StateDir {
                dir: dir.to_path_buf(),
                cause,
            })
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(StoreError::StateDir {
                dir: dir.to_path_buf(),
                cause: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            })
        }
        Ok(_) => {}
    }
    // access(2) reports EROFS for a read-only mount even to root, for whom
    // mode bits would not.
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|errno| StoreError::ReadOnly {
        dir: dir.to_path_buf(),
        cause: io::Error::from(errno).to_string(),
    })
}

/// One attempt to open, check and migrate the journal at `path`.
fn open_conn(path: &Path) -> Result<Connection, OpenFailure> {
    create_private(path).map_err(OpenFailure::Fatal)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let fatal = |op| move |e| OpenFailure::Fatal(classify(path, dir, op, e));
    let mut conn = Connection::open(path).map_err(fatal("opening"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(fatal("setting the busy timeout"))?;
    let version = known_version(&conn, path, dir)?;
    if version < 0 {
        return Err(OpenFailure::Unreadable(format!(
            "schema version {version} is negative"
        )));
    }
    configure(&conn, path, dir)?;
    quick_check(&conn, path, dir)?;
    migrate(&mut conn, version, path, dir)?;
    check_schema(&conn, path, dir)?;
    Ok(conn)
}

/// The journal's schema version, refused when this build does not know it.
fn known_version(conn: &Connection, path: &Path, dir: &Path) -> Result<i64, OpenFailure> {
    let version = user_version(conn, path, dir)?;
    if version > SCHEMA_VERSION {
        return Err(OpenFailure::Fatal(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            known: SCHEMA_VERSION,
        }));
    }
    Ok(version)
}

/// [`open_conn`]'s checks on a read-only connection: the schema version.
fn inspect_conn(path: &Path) -> Result<i64, OpenFailure> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fatal = |op| move |e| OpenFailure::Fatal(classify(path, dir, op, e));
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(fatal("opening read-only"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(fatal("setting the busy timeout"))?;
    let version = known_version(&conn, path, dir)?;
    quick_check(&conn, path, dir)?;
    if version == SCHEMA_VERSION {
        check_schema(&conn, path, dir)?;
    }
    Ok(version)
}

/// Creates the journal file with mode 0600 if it is missing (SQLite would
/// make it 0644), and narrows an existing one to 0600. The `-wal` and
/// `-shm` files SQLite makes take the journal's mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let io_err = |op| {
        move |cause: io::Error| {
            let dir = path.parent().unwrap_or(Path::new("."));
            classify_io(path, dir, op, cause)
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("creating"))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err("setting mode 0600 on"))
}

/// `PRAGMA user_version`: the schema version.
fn user_version(conn: &Connection, path: &Path, dir: &Path) -> Result<i64, OpenFailure> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| open_failure(path, dir, "reading the schema version", e))
}

/// WAL, `synchronous=NORMAL`, foreign keys.
fn configure(conn: &Connection, path: &Path, dir: &Path) -> Result<(), OpenFailure> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| open_failure(path, dir, "switching to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenFailure::Fatal(StoreError::Io {
            path: path.to_path_buf(),
            op: "switching to WAL mode",
            cause: io::Error::other(format!("the journal mode stayed {mode}")),
        }));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| open_failure(path, dir, "setting synchronous=NORMAL", e))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| open_failure(path, dir, "turning foreign keys on", e))
}

/// `PRAGMA quick_check`: anything but "ok" makes the journal unreadable.
fn quick_check(conn: &Connection, path: &Path, dir: &Path) -> Result<(), OpenFailure> {
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        problems.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .map_err(|e| open_failure(path, dir, "checking the journal", e))?;
    match problems.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(OpenFailure::Unreadable(format!(
            "quick_check: {}",
            problems.join("; ")
        ))),
    }
}

/// Applies the migrations after `from`, each with the version it reaches
/// in one transaction. The version is read again under the write lock, so
/// that two processes opening one journal do not both migrate it. A
/// migration that fails on SQL (e.g. a table that already exists in
/// another shape) means a schema this build cannot read.
pub(super) fn migrate(
    conn: &mut Connection,
    from: i64,
    path: &Path,
    dir: &Path,
) -> Result<(), OpenFailure> {
    let op = "migrating the schema";
    for (to, sql) in (1i64..).zip(MIGRATIONS).skip_while(|(to, _)| *to <= from) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| open_failure(path, dir, op, e))?;
        let now: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| open_failure(path, dir, op, e))?;
        if now >= to {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| schema_failure(path, dir, op, e))?;
        tx.pragma_update(None, "user_version", to)
            .map_err(|e| open_failure(path, dir, op, e))?;
        tx.commit().map_err(|e| open_failure(path, dir, op, e))?;
    }
    Ok(())
}

/// Every column the code reads is there.
fn check_schema(conn: &Connection, path: &Path, dir: &Path) -> Result<(), OpenFailure> {
    for sql in SCHEMA_CHECK {
        if let Err(e) = conn.prepare(sql) {
            return Err(schema_failure(path, dir, "checking the schema", e));
        }
    }
    Ok(())
}

/// A failure while opening: unreadable content, or the error to report.
fn open_failure(path: &Path, dir: &Path, op: &'static str, e: rusqlite::Error) -> OpenFailure {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            OpenFailure::Unreadable(format!("{op}: {e}"))
        }
        _ => OpenFailure::Fatal(classify(path, dir, op, e)),
    }
}

/// Like [`open_failure`], and a plain SQL error (no such table or column,
/// a table in another shape) is a schema this build cannot read.
fn schema_failure(path: &Path, dir: &Path, op: &'static str, e: rusqlite::Error) -> OpenFailure {
    let sql_error = matches!(e.sqlite_error_code(), Some(ErrorCode::Unknown))
        || matches!(e, rusqlite::Error::SqlInputError { .. });
    if sql_error {
        return OpenFailure::Unreadable(format!("{op}: {e}"));
    }
    open_failure(path, dir, op, e)
}

/// The [`StoreError`] for SQLite's `e`: full and read-only filesystems get
/// their own variants.
fn classify(path: &Path, dir: &Path, op: &'static str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full {
            path: path.to_path_buf(),
        },
        // SQLite reports ENOSPC from some writes (the WAL index, a sync) as
        // a plain I/O error; the free space tells them apart.
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) if filesystem_full(dir) => {
            StoreError::Full {
                path: path.to_path_buf(),
            }
        }
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
            dir: dir.to_path_buf(),
            cause: e.to_string(),
        },
        Some(ErrorCode::CannotOpen) if access(dir, AccessFlags::W_OK).is_err() => {
            StoreError::ReadOnly {
                dir: dir.to_path_buf(),
                cause: e.to_string(),
            }
        }
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            op,
            cause: e,
        },
    }
}

/// The [`StoreError`] for an I/O error on the journal's files.
fn classify_io(path: &Path, dir: &Path, op: &'static str, cause: io::Error) -> StoreError {
    match cause.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => StoreError::Full {
            path: path.to_path_buf(),
        },
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => StoreError::ReadOnly {
            dir: dir.to_path_buf(),
            cause: cause.to_string(),
        },
        _ => StoreError::Io {
            path: path.to_path_buf(),
            op,
            cause,
        },
    }
}

/// Whether the filesystem holding `dir` has (next to) no space left.
fn filesystem_full(dir: &Path) -> bool {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => {
            let free = st.blocks_available().saturating_mul(st.fragment_size());
            free < FULL_BELOW_BYTES
        }
        Err(_) => false,
    }
}

/// Moves the journal at `path` and its `-wal` and `-shm` aside to
/// `<path>.corrupt-<unix time>` (`.1`, `.2`, … appended if taken).
fn move_aside(path: &Path, reason: String) -> Result<MovedAside, StoreError> {
    let to = aside_name(path);
    rename(path, &to)?;
    for suffix in ["-wal", "-shm"] {
        let from = with_suffix(path, suffix);
        if from.exists() {
            rename(&from, &with_suffix(&to, suffix))?;
        }
    }
    Ok(MovedAside {
        from: path.to_path_buf(),
        to,
        reason,
    })
}

/// A free name for the moved-aside journal.
fn aside_name(path: &Path) -> PathBuf {
    let base = with_suffix(path, &format!(".corrupt-{}", unix_now()));
    let mut name = base.clone();
    let mut n = 0u32;
    while name.exists() || with_suffix(&name, "-wal").exists() {
        n += 1;
        name = with_suffix(&base, &format!(".{n}"));
    }
    name
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|cause| {
        let dir = from.parent().unwrap_or(Path::new("."));
        classify_io(from, dir, "moving the unreadable journal aside", cause)
    })
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn path_bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// A list as JSON text. Serialising strings cannot fail; "[]" if it did.
/// Calls `f` with `rec` as the parameters of an insert into `jobs`
/// ([`JOB_COLUMNS`], in order).
fn with_job_params<T>(rec: &JobRecord, f: impl FnOnce(&[&dyn rusqlite::ToSql]) -> T) -> T {
    let labels = to_json(&rec.labels);
    f(params![
        rec.job_id,
        rec.delivery,
        rec.owner,
        rec.repo,
        rec.pool,
        labels,
        rec.state.as_str(),
        rec.attempts,
        rec.runner_name,
        rec.infra_failure,
        rec.reruns,
        rec.updated_unix,
        rec.run_id,
        rec.installation_id,
    ])
}

fn to_json<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

/// The JSON list in column `idx`.
fn json_list(row: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

fn vm_from_row(row: &Row<'_>) -> rusqlite::Result<VmRecord> {
    Ok(VmRecord {
        id: row.get(0)?,
        pool: row.get(1)?,
        job_id: row.get(2)?,
        dir: path_from_bytes(row.get(3)?),
        vmm_pid: row.get(4)?,
        vmm_start_ticks: row.get(5)?,
        cid: row.get(6)?,
        uid: row.get(7)?,
        netns: row.get(8)?,
        links: json_list(row, 9)?,
        scratch: row.get::<_, Option<Vec<u8>>>(10)?.map(path_from_bytes),
        jail: row.get::<_, Option<Vec<u8>>>(11)?.map(path_from_bytes),
        cgroup: row.get::<_, Option<Vec<u8>>>(12)?.map(path_from_bytes),
        created_unix: row.get(13)?,
    })
}

fn runner_from_row(row: &Row<'_>) -> rusqlite::Result<RunnerRecord> {
    Ok(RunnerRecord {
        name: row.get(0)?,
        runner_id: row.get(1)?,
        scope: row.get(2)?,
        job_id: row.get(3)?,
        vm_id: row.get(4)?,
        created_unix: row.get(5)?,
    })
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let state: String = row.get(6)?;
    let state = JobState::from_name(&state).ok_or_else(|| {
        let why = format!("unknown job state {state:?}");
        rusqlite::Error::FromSqlConversionFailure(6, Type::Text, why.into())
    })?;
    Ok(JobRecord {
        job_id: row.get(0)?,
        delivery: row.get(1)?,
        owner: row.get(2)?,
        repo: row.get(3)?,
        pool: row.get(4)?,
        labels: json_list(row, 5)?,
        state,
        attempts: row.get(7)?,
        runner_name: row.get(8)?,
        infra_failure: row.get(9)?,
        reruns: row.get(10)?,
        updated_unix: row.get(11)?,
        run_id: row.get(12)?,
        installation_id: row.get(13)?,
    })
}
