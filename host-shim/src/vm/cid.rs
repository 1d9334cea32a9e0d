//! Guest CIDs, unique on the host across processes.
//!
//! A CID is held by an exclusive `flock` on `<cids>/<cid>`. The lock dies
//! with its holder, so a crashed shim never strands a CID. Releasing
//! unlinks the file while still holding the lock; a process that opened the
//! old file just before may then get the lock on an unlinked inode, so every
//! lock is checked to still be the file at that path before it counts.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::dirs::make_private_dir_all;

/// CIDs handed out by default: above the reserved ones (0-2) and anything
/// a person picks by hand for experiments.
pub const DEFAULT_RANGE: RangeInclusive<u32> = 1000..=0x7fff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum CidError {
    #[error(transparent)]
    Dir(#[from] super::dirs::DirsError),
    #[error("CID range {start}..={end} is unusable: CIDs 0 to 2 are reserved")]
    BadRange { start: u32, end: u32 },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free guest CID after {tries} tries in {start}..={end} ({dir})")]
    Exhausted {
        dir: PathBuf,
        start: u32,
        end: u32,
        tries: u32,
    },
}

/// Hands out CIDs from a range, coordinating through lock files in `dir`.
#[derive(Debug, Clone)]
pub struct CidAllocator {
    dir: PathBuf,
    range: RangeInclusive<u32>,
}

/// A CID held until dropped.
#[derive(Debug)]
pub struct CidLease {
    cid: u32,
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl CidAllocator {
    pub fn new(dir: impl Into<PathBuf>, range: RangeInclusive<u32>) -> Result<Self, CidError> {
        if *range.start() < 3 || range.is_empty() {
            return Err(CidError::BadRange {
                start: *range.start(),
                end: *range.end(),
            });
        }
        Ok(CidAllocator {
            dir: dir.into(),
            range,
        })
    }

    /// Leases a free CID. Starts at a random point of the range, so that
    /// concurrent shims rarely contend for the same file.
    pub fn lease(&self) -> Result<CidLease, CidError> {
        make_private_dir_all(&self.dir)?;
        let (start, end) = (*self.range.start(), *self.range.end());
        let span = u64::from(end - start) + 1;
        let mut seed = [0u8; 8];
        super::random::fill(&mut seed);
        let offset = u64::from_le_bytes(seed) % span;
        let tries = span.min(4096) as u32;
        for i in 0..u64::from(tries) {
            let cid = start + ((offset + i) % span) as u32;
            if let Some(lease) = self.try_cid(cid)? {
                return Ok(lease);
            }
        }
        Err(CidError::Exhausted {
            dir: self.dir.clone(),
            start,
            end,
            tries,
        })
    }

    fn try_cid(&self, cid: u32) -> Result<Option<CidLease>, CidError> {
        let path = self.dir.join(cid.to_string());
        let io_err = |action, source| CidError::Io {
            action,
            path: path.clone(),
            source,
        };
        // A releaser may unlink between our open and our lock: retry the
        // same CID a few times before moving on.
        for _ in 0..3 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| io_err("opening", e))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(io_err("locking", io::Error::from(e))),
            };
            let held = lock.metadata().map_err(|e| io_err("inspecting", e))?;
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                    tracing::debug!(cid, "guest CID leased");
                    return Ok(Some(CidLease {
                        cid,
                        path,
                        lock: Some(lock),
                    }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("inspecting", e)),
            }
        }
        Ok(None)
    }
}

impl CidLease {
    pub fn cid(&self) -> u32 {
        self.cid
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CidLease {
    fn drop(&mut self) {
        // Unlinked while locked, then unlocked by closing: see the module docs.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove a CID lease");
            }
        }
        drop(self.lock.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_unique_and_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alloc = CidAllocator::new(dir.path().join("cids"), 3..=10).expect("alloc");
        let leases: Vec<CidLease> = (0..8).map(|_| alloc.lease().expect("lease")).collect();
        let mut cids: Vec<u32> = leases.iter().map(CidLease::cid).collect();
        cids.sort_unstable();
        assert_eq!(cids, (3..=10).collect::<Vec<_>>());
        match alloc.lease() {
            Err(CidError::Exhausted {
                start: 3, end: 10, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        drop(leases);
        assert_eq!(
            std::fs::read_dir(dir.path().join("cids"))
                .expect("dir")
                .count(),
            0,
            "lease files must be removed"
        );
        assert!(alloc.lease().is_ok());
    }

    #[test]
    fn a_lock_held_by_another_open_file_is_respected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alloc = CidAllocator::new(dir.path(), 5..=5).expect("alloc");
        // Another process's lock looks the same to flock: a separate open file.
        let other = File::create(dir.path().join("5")).expect("create");
        let held = Flock::lock(other, FlockArg::LockExclusiveNonblock).expect("lock");
        assert!(matches!(alloc.lease(), Err(CidError::Exhausted { .. })));
        drop(held);
        assert_eq!(alloc.lease().expect("free now").cid(), 5);
    }

    #[test]
    fn reserved_cids_are_refused() {
        assert!(matches!(
            CidAllocator::new("/tmp", 2..=9),
            Err(CidError::BadRange { .. })
        ));
    }
}
