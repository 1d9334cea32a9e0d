//! One uid (and the gid of the same number) per running VM, so that a VMM
//! escaping its VM (a jailed Firecracker, or a confined QEMU) cannot touch
//! another VM's files or processes.
//!
//! The uids are leased across every Kiln process on the host like guest
//! CIDs ([`crate::lease::LeaseDir`]: a lock file per uid, by default in
//! `<runtime>/uids`), so two `kiln` processes never run two VMs as one
//! uid. A lease dies with the process holding it, while the Firecracker it
//! started may live on (an orphan of a crashed `kiln`): a uid that any
//! process on the host still runs as (real, effective or saved uid, read
//! from `/proc/<pid>/status`) is skipped too.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::lease::{Lease, LeaseDir, LeaseError};

/// Why no uid could be leased.
#[derive(Debug, thiserror::Error)]
pub enum UidError {
    #[error("no free VM uid in {start}..={end} ({in_use} held by this process's VMs, the rest by other Kiln processes (lock files in {dir}) or by running processes): widen the uid range or run fewer VMs")]
    Exhausted {
        start: u32,
        end: u32,
        in_use: usize,
        dir: PathBuf,
    },
    #[error("leasing a VM uid: {0}")]
    Lease(#[source] LeaseError),
}

/// The uids free for VMs. Cloning shares the count of held uids.
#[derive(Debug, Clone)]
pub struct UidPool {
    leases: LeaseDir,
    range: RangeInclusive<u32>,
    /// Uids this process holds (for tests and teardown checks).
    held: Arc<AtomicUsize>,
}

/// A uid held by one VM; it returns to the pool when dropped.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    held: Arc<AtomicUsize>,
    _lease: Lease,
}

impl UidPool {
    /// Uids from `range`, leased through lock files in `dir`.
    pub fn new(dir: impl Into<PathBuf>, range: RangeInclusive<u32>) -> Self {
        let wide = u64::from(*range.start())..=u64::from(*range.end());
        Self {
            leases: LeaseDir::new("VM uid", dir, wide),
            range,
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Where the lock files are.
    pub fn dir(&self) -> &Path {
        self.leases.dir()
    }

    /// Leases a uid no other Kiln process holds and no process runs as.
    pub fn acquire(&self) -> Result<UidLease, UidError> {
        let running = uids_of_processes();
        let lease = self
            .leases
            .lease_if(|n| u32::try_from(n).is_ok_and(|uid| !running.contains(&uid)))
            .map_err(|e| self.error(e))?;
        // The range is u32, so every number in it is.
        let uid = u32::try_from(lease.number()).unwrap_or(u32::MAX);
        self.held.fetch_add(1, Ordering::Relaxed);
        Ok(UidLease {
            uid,
            held: Arc::clone(&self.held),
            _lease: lease,
        })
    }

    /// How many uids this process holds right now.
    pub fn in_use(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn error(&self, e: LeaseError) -> UidError {
        match e {
            LeaseError::Exhausted { dir, .. } => UidError::Exhausted {
                start: *self.range.start(),
                end: *self.range.end(),
                in_use: self.in_use(),
                dir,
            },
            other => UidError::Lease(other),
        }
    }
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// VMs run with the gid of the same number as their uid.
    pub fn gid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every uid a live process has as its real, effective, saved or
/// filesystem uid. Processes that vanish while being read are skipped.
fn uids_of_processes() -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .flat_map(|status| status_uids(&status))
        .collect()
}

/// The four numbers of the `Uid:` line of `/proc/<pid>/status`.
fn status_uids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn leases_are_unique_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let pool = UidPool::new(dir.path(), 100_100..=100_102);
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert_ne!(a.uid(), b.uid());
        assert!((100_100..=100_102).contains(&a.uid()));
        assert_eq!(a.gid(), a.uid());
        assert_eq!(pool.in_use(), 2);
        drop(a);
        assert_eq!(pool.in_use(), 1);
    }

    #[test]
    fn exhaustion_is_an_error_and_release_fixes_it() {
        let dir = tempfile::tempdir().unwrap();
        let pool = UidPool::new(dir.path(), 100_007..=100_007);
        let a = pool.acquire().unwrap();
        // A second pool is what another process has: the lock file decides.
        let other = UidPool::new(dir.path(), 100_007..=100_007);
        let err = other.acquire().unwrap_err();
        assert!(
            matches!(
                err,
                UidError::Exhausted {
                    start: 100_007,
                    end: 100_007,
                    in_use: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("widen"), "{err}");
        drop(a);
        assert_eq!(other.acquire().unwrap().uid(), 100_007);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_uid_a_process_runs_as_is_skipped() {
        // This test runs as some uid: a range holding only it has nothing free.
        let me = nix::unistd::getuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let pool = UidPool::new(dir.path(), me..=me);
        assert!(matches!(pool.acquire(), Err(UidError::Exhausted { .. })));
        assert_eq!(status_uids("Name:\tx\nUid:\t1\t2\t3\t4\n"), [1, 2, 3, 4]);
    }

    /// Set in the child process of [`two_processes_never_share_a_uid`]:
    /// the lease directory it leases from.
    const CHILD_DIR: &str = "KILN_UID_POOL_TEST_CHILD_DIR";
    const SHARED: RangeInclusive<u32> = 100_200..=100_209;

    /// In the child: leases four uids, prints them, holds them until its
    /// stdin closes. A no-op in an ordinary test run.
    #[test]
    fn child_holds_leases() {
        use std::io::{Read, Write};
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let pool = UidPool::new(dir, SHARED);
        let held: Vec<UidLease> = (0..4).map(|_| pool.acquire().unwrap()).collect();
        let mut out = std::io::stdout().lock();
        for l in &held {
            writeln!(out, "UID {}", l.uid()).unwrap();
        }
        writeln!(out, "READY").unwrap();
        out.flush().unwrap();
        drop(out);
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
    }

    #[test]
    fn two_processes_never_share_a_uid() {
        use std::io::{BufRead, BufReader};

        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "vmm::uid_pool::tests::child_holds_leases"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut theirs = Vec::new();
        let mut from_child = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while from_child.read_line(&mut line).unwrap() > 0 {
            // libtest may print its own words on the same line first.
            if let Some(at) = line.find("UID ") {
                theirs.push(line[at + 4..].trim().parse::<u32>().unwrap());
            }
            if line.contains("READY") {
                break;
            }
            line.clear();
        }
        assert_eq!(theirs.len(), 4, "the child leased {theirs:?}");
        // This process takes everything that is left, and nothing more.
        let pool = UidPool::new(dir.path(), SHARED);
        let mine: Vec<UidLease> = (0..6).map(|_| pool.acquire().unwrap()).collect();
        assert!(matches!(pool.acquire(), Err(UidError::Exhausted { .. })));
        let mut all: Vec<u32> = theirs
            .iter()
            .copied()
            .chain(mine.iter().map(UidLease::uid))
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            SHARED.collect::<Vec<_>>(),
            "a uid was handed out twice"
        );
        // The child's uids come back when it exits.
        drop(child.stdin.take());
        std::io::copy(&mut from_child, &mut std::io::sink()).unwrap();
        assert!(child.wait().unwrap().success());
        let again = pool.acquire().unwrap();
        assert!(theirs.contains(&again.uid()));
    }
}
