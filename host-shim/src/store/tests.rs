//! Tests of the journal: round trips of every record, reopening, schema
//! migrations, and the failures of the disk under it (a truncated or
//! garbage file, a read-only state directory, a full filesystem). The
//! filesystem tests mount small tmpfs instances and so need root; without
//! it they print why they are skipped.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::sqlite::{FILE_NAME, SCHEMA_VERSION};
use super::*;

fn open(dir: &Path) -> SqliteJournal {
    let outcome = SqliteJournal::open(dir).expect("the journal opens");
    assert_eq!(outcome.moved_aside, None, "nothing is moved aside");
    outcome.journal
}

fn full_vm(id: &str) -> VmRecord {
    VmRecord {
        id: id.to_owned(),
        pool: "linux-x64".to_owned(),
        job_id: Some(9_876_543_210),
        dir: PathBuf::from(format!("/var/lib/kiln/vms/{id}")),
        vmm_pid: Some(4242),
        vmm_start_ticks: Some(123_456_789_012),
        cid: Some(1000),
        uid: Some(70_001),
        netns: Some(format!("kiln-{id}")),
        links: vec![format!("kv-{id}"), format!("kt-{id}")],
        scratch: Some(PathBuf::from(format!("/var/lib/kiln/scratch/{id}.ext4"))),
        jail: Some(PathBuf::from(format!("/srv/jailer/firecracker/{id}/root"))),
        cgroup: Some(PathBuf::from(format!("/sys/fs/cgroup/kiln/{id}"))),
        created_unix: 1_700_000_000,
    }
}

fn bare_vm(id: &str) -> VmRecord {
    VmRecord {
        id: id.to_owned(),
        pool: "small".to_owned(),
        job_id: None,
        dir: PathBuf::from(format!("/var/lib/kiln/vms/{id}")),
        vmm_pid: None,
        vmm_start_ticks: None,
        cid: None,
        uid: None,
        netns: None,
        links: Vec::new(),
        scratch: None,
        jail: None,
        cgroup: None,
        created_unix: 1_700_000_001,
    }
}

fn runner(name: &str) -> RunnerRecord {
    RunnerRecord {
        runner_id: Some(77),
        name: name.to_owned(),
        scope: "repo:octo/hello".to_owned(),
        job_id: 9_876_543_210,
        vm_id: Some("vm-1".to_owned()),
        created_unix: 1_700_000_002,
    }
}

fn job(job_id: u64) -> JobRecord {
    JobRecord {
        job_id,
        delivery: Some(format!("delivery-{job_id}")),
        owner: "octo".to_owned(),
        repo: "hello".to_owned(),
        pool: "linux-x64".to_owned(),
        labels: vec!["self-hosted".to_owned(), "kiln".to_owned()],
        state: JobState::Queued,
        attempts: 0,
        runner_name: None,
        infra_failure: None,
        reruns: 0,
        updated_unix: 1_700_000_003,
        run_id: 77,
        installation_id: 88,
    }
}

#[test]
fn vms_round_trip_and_upsert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal: Arc<dyn Journal> = Arc::new(open(dir.path()));
    let (a, b) = (full_vm("vm-a"), bare_vm("vm-b"));
    journal.put_vm(&a).expect("put a");
    journal.put_vm(&b).expect("put b");
    assert_eq!(journal.vms().expect("vms"), vec![a.clone(), b.clone()]);

    let mut b2 = b.clone();
    b2.vmm_pid = Some(99);
    b2.links = vec!["kv-b".to_owned()];
    journal.put_vm(&b2).expect("update b");
    assert_eq!(journal.vms().expect("vms"), vec![a.clone(), b2]);

    journal.remove_vm("vm-b").expect("remove b");
    journal
        .remove_vm("vm-none")
        .expect("removing a missing VM is fine");
    assert_eq!(journal.vms().expect("vms"), vec![a]);
}

#[test]
fn paths_that_are_not_utf8_come_back_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    let mut vm = full_vm("vm-raw");
    vm.dir = PathBuf::from(OsString::from_vec(b"/var/lib/kiln/\xff\xfe".to_vec()));
    journal.put_vm(&vm).expect("put");
    assert_eq!(journal.vms().expect("vms"), vec![vm]);
}

#[test]
fn runners_round_trip_and_upsert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    let mut r = runner("kiln-1");
    r.runner_id = None;
    r.vm_id = None;
    journal.put_runner(&r).expect("put");
    assert_eq!(journal.runners().expect("runners"), vec![r.clone()]);

    let mut other = runner("kiln-2");
    other.scope = "org:acme".to_owned();
    journal.put_runner(&other).expect("put other");
    r.runner_id = Some(5);
    r.vm_id = Some("vm-9".to_owned());
    journal.put_runner(&r).expect("update");
    assert_eq!(journal.runners().expect("runners"), vec![r, other.clone()]);

    journal.remove_runner("kiln-1").expect("remove");
    assert_eq!(journal.runners().expect("runners"), vec![other]);
}

#[test]
fn jobs_round_trip_states_and_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    let (j1, mut j2, j3) = (job(1), job(2), job(3));
    for j in [&j1, &j2, &j3] {
        journal.put_job(j).expect("put");
    }
    assert_eq!(journal.job(2).expect("get"), Some(j2.clone()));
    assert_eq!(journal.job(4).expect("get missing"), None);

    j2.attempts = 1;
    j2.runner_name = Some("kiln-2".to_owned());
    j2.delivery = None;
    journal.put_job(&j2).expect("update");
    assert_eq!(journal.job(2).expect("get"), Some(j2.clone()));

    assert!(journal.set_job_state(2, JobState::Running).expect("state"));
    assert!(journal.set_job_state(3, JobState::Finished).expect("state"));
    assert!(!journal.set_job_state(4, JobState::Running).expect("state"));
    let running = journal.jobs_in(&[JobState::Running]).expect("running");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].job_id, 2);
    assert_eq!(running[0].state, JobState::Running);
    assert!(
        running[0].updated_unix > j2.updated_unix,
        "state sets updated_unix"
    );

    let ids = |states: &[JobState]| -> Vec<u64> {
        let jobs = journal.jobs_in(states).expect("list");
        jobs.iter().map(|j| j.job_id).collect()
    };
    assert_eq!(ids(&[JobState::Queued, JobState::Finished]), vec![1, 3]);
    assert_eq!(ids(&JobState::ALL), vec![1, 2, 3]);
    assert_eq!(ids(&[]), Vec::<u64>::new());

    assert!(journal
        .mark_infra_failure(2, "VMM exited: signal 9")
        .expect("mark"));
    assert!(!journal.mark_infra_failure(9, "none").expect("mark missing"));
    let failed = journal.job(2).expect("get").expect("job 2");
    assert_eq!(
        failed.infra_failure.as_deref(),
        Some("VMM exited: signal 9")
    );

    journal.remove_job(1).expect("remove");
    assert_eq!(journal.job(1).expect("get"), None);
    assert_eq!(ids(&JobState::ALL), vec![2, 3]);
}

#[test]
fn job_ids_beyond_i64_are_refused_not_wrapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    assert!(journal.put_job(&job(u64::MAX)).is_err());
    assert_eq!(journal.jobs_in(&JobState::ALL).expect("list"), Vec::new());
}

#[test]
fn completed_jobs_are_remembered_and_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path()).with_completed_cap(3);
    assert!(!journal.is_completed(1).expect("lookup"));
    for id in 1..=5 {
        journal.remember_completed(id).expect("remember");
    }
    journal
        .remember_completed(5)
        .expect("remembering twice is fine");
    let kept: Vec<u64> = (1..=5)
        .filter(|&id| journal.is_completed(id).expect("lookup"))
        .collect();
    assert_eq!(kept, vec![3, 4, 5], "only the 3 most recent are kept");
}

#[test]
fn a_scale_set_message_is_recorded_once_with_its_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    let queued = |id| JobRecord {
        state: JobState::Queued,
        ..job(id)
    };
    let first = journal
        .record_message(3, 10, &[queued(1), queued(2)])
        .expect("records");
    assert_eq!(first, Some(vec![1, 2]));
    assert_eq!(
        journal.job(1).expect("job").map(|j| j.state),
        Some(JobState::Queued)
    );
    // The same message again (a redelivery to a new session): nothing.
    assert_eq!(
        journal
            .record_message(3, 10, &[queued(1), queued(9)])
            .expect("replay"),
        None
    );
    assert_eq!(
        journal.job(9).expect("job"),
        None,
        "a replay writes nothing"
    );
    // Another scale set's message 10 is another message.
    assert_eq!(
        journal.record_message(4, 10, &[]).expect("other"),
        Some(vec![])
    );
    // A job held already is not new; a finished one assigned anew is.
    journal.set_job_state(2, JobState::Finished).expect("state");
    assert_eq!(
        journal
            .record_message(3, 11, &[queued(1), queued(2)])
            .expect("records"),
        Some(vec![2])
    );
    assert_eq!(
        journal.job(2).expect("job").map(|j| j.state),
        Some(JobState::Queued)
    );
    // Sessions: recorded, read back, forgotten.
    journal.put_session("kiln-a", 3, "s-1").expect("session");
    assert_eq!(
        journal.session("kiln-a").expect("read"),
        Some((3, "s-1".to_owned()))
    );
    journal.remove_session("kiln-a").expect("forget");
    assert_eq!(journal.session("kiln-a").expect("read"), None);
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let journal = open(dir.path());
        journal.put_vm(&full_vm("vm-a")).expect("vm");
        journal.put_runner(&runner("kiln-1")).expect("runner");
        journal.put_job(&job(7)).expect("job");
        journal.remember_completed(6).expect("completed");
    }
    let journal = open(dir.path());
    assert_eq!(journal.vms().expect("vms"), vec![full_vm("vm-a")]);
    assert_eq!(journal.runners().expect("runners"), vec![runner("kiln-1")]);
    assert_eq!(journal.job(7).expect("job"), Some(job(7)));
    assert!(journal.is_completed(6).expect("completed"));
}

#[test]
fn journal_is_private_and_in_wal_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    journal.put_job(&job(1)).expect("job");
    let path = dir.path().join(FILE_NAME);
    assert_eq!(journal.path(), path);
    for file in [path.clone(), dir.path().join("journal.db-wal")] {
        let mode = fs::metadata(&file)
            .expect("journal file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{} is 0600", file.display());
    }
    let conn = rusqlite::Connection::open(&path).expect("second connection");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
}

#[test]
fn a_database_at_version_0_without_tables_is_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE t (a); DROP TABLE t;")
            .expect("a database with no tables");
    }
    assert!(fs::metadata(&path).expect("file").len() > 0);
    let journal = open(dir.path());
    journal
        .put_job(&job(1))
        .expect("the migrated schema takes a job");
    drop(journal);
    let conn = rusqlite::Connection::open(&path).expect("reopen");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn a_migration_another_process_already_made_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = open(dir.path());
    journal.put_job(&job(1)).expect("job");
    drop(journal);
    let path = dir.path().join(FILE_NAME);
    // As a second process would, having read version 0 before the first
    // one migrated.
    let mut conn = rusqlite::Connection::open(&path).expect("open");
    let migrated = super::sqlite::migrate(&mut conn, 0, &path, dir.path());
    assert!(
        migrated.is_ok(),
        "a journal already migrated is not migrated again"
    );
    drop(conn);
    let journal = open(dir.path());
    assert_eq!(journal.job(1).expect("job"), Some(job(1)));
}

#[test]
fn a_newer_journal_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE future (a); PRAGMA user_version = 999;")
            .expect("a journal from the future");
    }
    let before = fs::read(&path).expect("read");
    let err = SqliteJournal::open(dir.path()).expect_err("refused");
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::TooNew { found: 999, .. }),
        "{msg}"
    );
    assert!(msg.contains("999"), "{msg}");
    assert!(
        msg.contains(&format!("the {SCHEMA_VERSION} this kiln knows")),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(fs::read(&path).expect("read"), before, "never downgraded");
    assert_eq!(aside_files(dir.path()), Vec::<PathBuf>::new());
}

/// Files moved aside in `dir`.
fn aside_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    found.sort();
    found
}

/// A writer that keeps what the log wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.0.lock().expect("log buffer");
        out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the journal in `dir` expecting the old one to be moved aside;
/// checks the log line and the files, and that the new journal works.
fn open_expecting_move(dir: &Path) -> MovedAside {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let outcome = tracing::subscriber::with_default(subscriber, || SqliteJournal::open(dir))
        .expect("a fresh journal opens");
    let moved = outcome.moved_aside.expect("the old journal is moved aside");
    let path = dir.join(FILE_NAME);
    assert_eq!(moved.from, path);
    assert!(moved.to.exists(), "{} exists", moved.to.display());
    assert_eq!(aside_files(dir).first(), Some(&moved.to));
    let msg = moved.to_string();
    assert!(msg.contains(&moved.to.display().to_string()), "{msg}");

    let logged = String::from_utf8(log.0.lock().expect("log").clone()).expect("utf-8 log");
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(logged.contains(&path.display().to_string()), "{logged}");
    assert!(logged.contains(&moved.to.display().to_string()), "{logged}");
    assert!(logged.contains("on-host scan"), "{logged}");

    let journal = outcome.journal;
    assert_eq!(
        journal.vms().expect("vms"),
        Vec::new(),
        "the new journal is empty"
    );
    journal
        .put_vm(&bare_vm("vm-new"))
        .expect("the new journal takes writes");
    moved
}

/// A journal with some records, closed (so its WAL is checkpointed).
fn write_journal(dir: &Path) -> PathBuf {
    let journal = open(dir);
    for i in 0..20 {
        journal.put_vm(&full_vm(&format!("vm-{i}"))).expect("vm");
        journal.put_job(&job(i)).expect("job");
    }
    drop(journal);
    let path = dir.join(FILE_NAME);
    assert!(fs::metadata(&path).expect("journal").len() > 4096);
    path
}

#[test]
fn a_truncated_journal_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_journal(dir.path());
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.set_len(1000).expect("truncate");
    drop(file);
    let moved = open_expecting_move(dir.path());
    assert_eq!(
        fs::metadata(&moved.to).expect("moved").len(),
        1000,
        "kept as it was"
    );
}

#[test]
fn a_journal_with_a_broken_header_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_journal(dir.path());
    let mut bytes = fs::read(&path).expect("read");
    bytes[..16].copy_from_slice(b"not a database!\0");
    fs::write(&path, bytes).expect("write");
    let moved = open_expecting_move(dir.path());
    assert!(moved.reason.contains("not a database"), "{}", moved.reason);
}

#[test]
fn a_journal_with_a_damaged_page_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_journal(dir.path());
    let mut bytes = fs::read(&path).expect("read");
    // Page 2 onwards: B-tree pages whose headers are now nonsense.
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    fs::write(&path, bytes).expect("write");
    open_expecting_move(dir.path());
}

#[test]
fn a_file_of_garbage_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 13) as u8).collect();
    fs::write(&path, &garbage).expect("write");
    // A WAL that is not one: SQLite removes it when it finds it empty; it
    // must not survive into the fresh journal either way.
    let wal = dir.path().join("journal.db-wal");
    fs::write(&wal, b"stale wal").expect("write wal");
    let moved = open_expecting_move(dir.path());
    assert_eq!(
        fs::read(&moved.to).expect("moved"),
        garbage,
        "kept as it was"
    );
    let fresh = SqliteJournal::open(dir.path()).expect("reopen").journal;
    assert_eq!(fresh.vms().expect("vms"), vec![bare_vm("vm-new")]);
}

#[test]
fn a_schema_that_does_not_match_its_version_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        let sql = format!("CREATE TABLE vms (id TEXT); PRAGMA user_version = {SCHEMA_VERSION};");
        conn.execute_batch(&sql).expect("a schema from elsewhere");
    }
    let moved = open_expecting_move(dir.path());
    assert!(moved.reason.contains("schema"), "{}", moved.reason);
}

#[test]
fn a_foreign_database_at_version_0_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE jobs (x INTEGER);")
            .expect("someone else's table");
    }
    let moved = open_expecting_move(dir.path());
    assert!(moved.reason.contains("migrating"), "{}", moved.reason);
}

#[test]
fn a_missing_state_dir_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let err = SqliteJournal::open(&missing).expect_err("no state dir");
    assert!(matches!(err, StoreError::NoStateDir { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!missing.exists(), "not created");
}

/// A tmpfs mounted for a test, unmounted when dropped (also when the test
/// fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` on `dir`; `None`, with the reason
    /// printed, where this process may not mount.
    fn mount(dir: &Path, flags: MsFlags, options: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        match mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some(options)) {
            Ok(()) => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Err(e) => {
                eprintln!("skipped: mounting a tmpfs on {}: {e}", dir.display());
                None
            }
        }
    }

    /// Makes the mount read-only.
    fn remount_read_only(&self) {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, &self.dir, None::<&str>, flags, None::<&str>).expect("remount ro");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.dir.display());
        }
    }
}

fn assert_read_only(err: &StoreError, dir: &Path) {
    let msg = err.to_string();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{msg}");
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(msg.contains("Read-only file system"), "{msg}");
    assert!(msg.contains("mount it read-write"), "{msg}");
}

#[test]
fn a_read_only_state_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let Some(_mount) = Tmpfs::mount(dir.path(), flags, "size=1m,mode=0700") else {
        return;
    };
    let err = SqliteJournal::open(dir.path()).expect_err("read-only");
    assert_read_only(&err, dir.path());
    assert_eq!(
        fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "nothing made"
    );
}

#[test]
fn an_existing_journal_on_a_read_only_state_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let Some(mount) = Tmpfs::mount(dir.path(), flags, "size=1m,mode=0700") else {
        return;
    };
    let path = write_journal(dir.path());
    let before = fs::read(&path).expect("read");
    mount.remount_read_only();
    let err = SqliteJournal::open(dir.path()).expect_err("read-only");
    assert_read_only(&err, dir.path());
    assert_eq!(
        fs::read(&path).expect("read"),
        before,
        "not moved, not changed"
    );
}

/// Writes zeros to `<dir>/filler` until the filesystem is full.
fn fill(dir: &Path) {
    let mut file = fs::File::create(dir.join("filler")).expect("filler");
    let chunk = [0u8; 4096];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Whatever the page cache still holds must not fail later writes.
    let _ = file.sync_all();
}

#[test]
fn a_full_filesystem_refuses_writes_and_keeps_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let Some(_mount) = Tmpfs::mount(dir.path(), flags, "size=256k,mode=0700") else {
        return;
    };
    let journal = open(dir.path());
    journal.put_vm(&full_vm("vm-a")).expect("vm");
    journal.put_job(&job(1)).expect("job");
    fill(dir.path());

    let mut big = job(2);
    big.labels = (0..50).map(|i| format!("{i:0>200}")).collect();
    let err = (2..10_000u64)
        .find_map(|id| {
            big.job_id = id;
            journal.put_job(&big).err()
        })
        .expect("a full filesystem fails a write");
    assert!(err.is_full(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&journal.path().display().to_string()), "{msg}");
    assert!(msg.contains("full"), "{msg}");

    assert_eq!(
        journal.vms().expect("reads keep working"),
        vec![full_vm("vm-a")]
    );
    assert_eq!(journal.job(1).expect("reads keep working"), Some(job(1)));
    let err = journal.remember_completed(1).expect_err("still full");
    assert!(err.is_full(), "{err}");

    fs::remove_file(dir.path().join("filler")).expect("free space");
    journal
        .put_job(&job(3))
        .expect("writes work again once there is space");
    assert_eq!(journal.job(3).expect("read"), Some(job(3)));
}

#[test]
fn opening_on_a_full_filesystem_is_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let Some(_mount) = Tmpfs::mount(dir.path(), flags, "size=256k,mode=0700") else {
        return;
    };
    fill(dir.path());
    let err = SqliteJournal::open(dir.path()).expect_err("no room for a journal");
    assert!(err.is_full(), "{err}");
    assert_eq!(
        aside_files(dir.path()),
        Vec::<PathBuf>::new(),
        "nothing moved aside"
    );
}
