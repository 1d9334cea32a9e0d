//! `table inet kiln` is one per host (per network namespace), but several
//! Kiln processes may use it at once: `kiln serve` and a `kiln run` by
//! hand, or two `kiln run`s. Each holds a shared `flock` on a lock file
//! named for its network namespace while it runs VMs. The process that
//! finds nobody else there (its exclusive lock succeeds) installs the table
//! afresh, which also clears what a crashed process left; the others keep
//! the table as it is and only add their VMs. At stop, the process that
//! can take the lock exclusively is the last one and deletes the table.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Whether this process is the table's only user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Nobody else uses the table: install it afresh.
    Alone,
    /// Others do: keep their table and their VMs' elements.
    Joined,
}

/// This process's use of the table, until [`TableUse::leave`].
#[derive(Debug)]
pub struct TableUse {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> super::NetError + 'a {
    move |source| super::NetError::Lock {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The lock file for the calling process's network namespace, in `dir`.
pub fn lock_path(dir: &Path) -> Result<PathBuf, super::NetError> {
    // The calling thread's: it may have joined another namespace than the
    // process's main thread (tests and the bench do).
    let ns = Path::new("/proc/thread-self/ns/net");
    let ino = std::fs::metadata(ns)
        .map_err(io_err("inspecting", ns))?
        .ino();
    Ok(dir.join(format!("table-{ino}.lock")))
}

impl TableUse {
    /// Joins the table's users; `install` runs while this process holds
    /// the lock exclusively (so no other process starts or stops meanwhile).
    pub fn join(
        path: &Path,
        install: impl FnOnce(Role) -> Result<(), super::NetError>,
    ) -> Result<TableUse, super::NetError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(io_err("opening", path))
        };
        let (lock, role) = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(l) => (l, Role::Alone),
            // Others hold it shared: wait for any exclusive holder (a
            // process installing or removing the table), then share.
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                let l = Flock::lock(file, FlockArg::LockShared)
                    .map_err(|(_, e)| io_err("locking", path)(e.into()))?;
                (l, Role::Joined)
            }
            Err((_, e)) => return Err(io_err("locking", path)(e.into())),
        };
        install(role)?;
        // Alone installed under the exclusive lock; shared from now on.
        let lock = match role {
            Role::Alone => downgrade(lock, path)?,
            Role::Joined => lock,
        };
        Ok(TableUse {
            path: path.to_owned(),
            lock: Some(lock),
        })
    }

    /// Leaves; returns whether this process was the last user, which then
    /// holds the lock exclusively while `remove` runs.
    pub fn leave(
        mut self,
        remove: impl FnOnce() -> Result<(), super::NetError>,
    ) -> Result<bool, super::NetError> {
        let Some(lock) = self.lock.take() else {
            return Ok(false);
        };
        let file = lock
            .unlock()
            .map_err(|(_, e)| io_err("unlocking", &self.path)(e.into()))?;
        // A conversion drops the old lock first: two last users leaving at
        // once may both miss, so each tries twice.
        let mut file = file;
        for attempt in 0..2 {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(excl) => {
                    remove()?;
                    drop(excl);
                    return Ok(true);
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if attempt == 0 => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    file = f;
                }
                Err(_) => return Ok(false),
            }
        }
        Ok(false)
    }
}

fn downgrade(lock: Flock<File>, path: &Path) -> Result<Flock<File>, super::NetError> {
    let file = lock
        .unlock()
        .map_err(|(_, e)| io_err("unlocking", path)(e.into()))?;
    Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| io_err("locking", path)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_installs_the_last_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("table.lock");
        let a = TableUse::join(&path, |r| {
            assert_eq!(r, Role::Alone);
            Ok(())
        })
        .expect("a");
        let b = TableUse::join(&path, |r| {
            assert_eq!(r, Role::Joined);
            Ok(())
        })
        .expect("b");
        let mut removed = 0;
        assert!(!a
            .leave(|| {
                removed += 1;
                Ok(())
            })
            .expect("a leaves"));
        assert!(b
            .leave(|| {
                removed += 1;
                Ok(())
            })
            .expect("b leaves"));
        assert_eq!(removed, 1);
        let c = TableUse::join(&path, |r| {
            assert_eq!(r, Role::Alone, "everyone left");
            Ok(())
        })
        .expect("c");
        drop(c);
    }
}
