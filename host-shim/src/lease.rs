//! Leases on numbered host resources (guest CIDs, VM address slots,
//! Firecracker jail uids), unique across every Kiln process on the host.
//!
//! A lease is an exclusive `flock` on `<dir>/<n>`. The lock dies with its
//! holder, so a crashed process never strands a number. Releasing unlinks
//! the file while still holding the lock; a process that opened the old
//! file just before may then get the lock on an unlinked inode, so every
//! lock is checked to still be the file at that path before it counts.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Numbers tried before a range counts as exhausted.
const MAX_TRIES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("creating the lease directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockFileError),
    #[error("no free {what} after {tries} tries in {start}..={end} ({dir})")]
    Exhausted {
        what: &'static str,
        dir: PathBuf,
        start: u64,
        end: u64,
        tries: u64,
    },
}

/// Hands out numbers from a range, coordinating through lock files.
#[derive(Debug, Clone)]
pub struct LeaseDir {
    /// What the numbers are, for messages ("guest CID").
    what: &'static str,
    dir: PathBuf,
    range: RangeInclusive<u64>,
}

/// A number held until dropped.
#[derive(Debug)]
pub struct Lease {
    n: u64,
    lock: LockFile,
}

/// An exclusive `flock` on the file at a path, which counts only while
/// that file is still the one at the path (see the module docs). Dropping
/// it unlinks the file while still locked, then unlocks. Leases and the
/// VM owner locks ([`crate::vm::owner`]) are such files.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

/// Why a lock file could not be locked or checked.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct LockFileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Tries of open-lock-check before a path counts as contended: a releaser
/// may unlink between our open and our lock.
const LOCK_TRIES: u32 = 3;

impl LockFile {
    /// Locks `path` (created 0600 if missing); `None` when another open
    /// file holds it, or the file kept being replaced under us.
    pub fn try_lock(path: &Path) -> Result<Option<LockFile>, LockFileError> {
        let io_err = |action, source| LockFileError {
            action,
            path: path.to_owned(),
            source,
        };
        for _ in 0..LOCK_TRIES {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| io_err("opening", e))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(io_err("locking", io::Error::from(e))),
            };
            let held = lock.metadata().map_err(|e| io_err("inspecting", e))?;
            match std::fs::metadata(path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                    return Ok(Some(LockFile {
                        path: path.to_owned(),
                        lock: Some(lock),
                    }))
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspecting", e)),
            }
        }
        Ok(None)
    }

    /// Whether a live process holds `path`'s lock. A file that cannot be
    /// opened for a reason but its absence counts as held: callers then
    /// leave its resource alone rather than risk a live one.
    pub fn is_held(path: &Path) -> bool {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(_) => return true,
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_unlocked_on_drop) => false,
            Err(_) => true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Unlinked while locked, then unlocked by closing: see the module docs.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove a lock file");
            }
        }
        drop(self.lock.take());
    }
}

impl LeaseDir {
    pub fn new(what: &'static str, dir: impl Into<PathBuf>, range: RangeInclusive<u64>) -> Self {
        LeaseDir {
            what,
            dir: dir.into(),
            range,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leases a free number. Starts at a random point of the range, so that
    /// concurrent processes rarely contend for one file, and a number just
    /// given back is rarely the next one handed out.
    pub fn lease(&self) -> Result<Lease, LeaseError> {
        self.lease_if(|_| true)
    }

    /// Like [`LeaseDir::lease`], but a number `usable` refuses is given
    /// back at once and the search goes on: for numbers something outside
    /// the leases may hold (a uid a stray process still runs as).
    pub fn lease_if(&self, mut usable: impl FnMut(u64) -> bool) -> Result<Lease, LeaseError> {
        make_private_dir_all(&self.dir)?;
        let (start, end) = (*self.range.start(), *self.range.end());
        let span = end.saturating_sub(start).saturating_add(1);
        let mut seed = [0u8; 8];
        crate::random::fill(&mut seed);
        let offset = u64::from_le_bytes(seed) % span;
        let tries = span.min(MAX_TRIES);
        for i in 0..tries {
            let n = start + (offset + i) % span;
            match self.try_take(n)? {
                Some(lease) if usable(n) => return Ok(lease),
                _ => continue,
            }
        }
        Err(LeaseError::Exhausted {
            what: self.what,
            dir: self.dir.clone(),
            start,
            end,
            tries,
        })
    }

    /// Takes `n` if nobody holds it.
    pub fn try_take(&self, n: u64) -> Result<Option<Lease>, LeaseError> {
        make_private_dir_all(&self.dir)?;
        let lock = LockFile::try_lock(&self.dir.join(n.to_string()))?;
        if lock.is_some() {
            tracing::debug!(what = self.what, n, "leased");
        }
        Ok(lock.map(|lock| Lease { n, lock }))
    }
}

impl Lease {
    pub fn number(&self) -> u64 {
        self.n
    }

    pub fn path(&self) -> &Path {
        self.lock.path()
    }
}

/// The lease directory, readable by its owner only.
fn make_private_dir_all(dir: &Path) -> Result<(), LeaseError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| LeaseError::Dir {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_unique_and_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases_dir = LeaseDir::new("slot", dir.path().join("l"), 3..=10);
        let leases: Vec<Lease> = (0..8).map(|_| leases_dir.lease().expect("lease")).collect();
        let mut ns: Vec<u64> = leases.iter().map(Lease::number).collect();
        ns.sort_unstable();
        assert_eq!(ns, (3..=10).collect::<Vec<_>>());
        match leases_dir.lease() {
            Err(LeaseError::Exhausted {
                what: "slot",
                start: 3,
                end: 10,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        drop(leases);
        assert_eq!(
            std::fs::read_dir(dir.path().join("l"))
                .expect("dir")
                .count(),
            0,
            "lease files must be removed"
        );
        assert!(leases_dir.lease().is_ok());
    }

    #[test]
    fn numbers_the_filter_refuses_are_skipped_and_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases_dir = LeaseDir::new("slot", dir.path(), 1..=4);
        let odd: Vec<Lease> = (0..2)
            .map(|_| leases_dir.lease_if(|n| n % 2 == 1).expect("lease"))
            .collect();
        let mut ns: Vec<u64> = odd.iter().map(Lease::number).collect();
        ns.sort_unstable();
        assert_eq!(ns, [1, 3]);
        assert!(matches!(
            leases_dir.lease_if(|n| n % 2 == 1),
            Err(LeaseError::Exhausted { .. })
        ));
        // The refused even numbers were given back, not held.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2);
        assert_eq!(leases_dir.lease().expect("even").number() % 2, 0);
    }

    #[test]
    fn a_lock_held_by_another_open_file_is_respected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases_dir = LeaseDir::new("slot", dir.path(), 5..=5);
        // Another process's lock looks the same to flock: a separate open file.
        let other = File::create(dir.path().join("5")).expect("create");
        let held = Flock::lock(other, FlockArg::LockExclusiveNonblock).expect("lock");
        assert!(matches!(
            leases_dir.lease(),
            Err(LeaseError::Exhausted { .. })
        ));
        assert!(leases_dir.try_take(5).expect("try").is_none());
        drop(held);
        assert_eq!(leases_dir.lease().expect("free now").number(), 5);
    }
}
