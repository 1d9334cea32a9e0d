//! VM owner locks: which VMs a live Kiln process still runs.
//!
//! The process that runs VM `<id>` (`kiln serve`, or a `kiln run` sharing
//! the runtime directory) holds an exclusive `flock` on
//! `<runtime>/owners/<id>` ([`crate::vm::dirs::RuntimeDirs::owners`]) for
//! as long as anything of the VM exists. The lock dies with its holder,
//! however it dies, so "the lock can be taken" means "no live process runs
//! this VM": the clean-up at start ([`crate::recover::reconcile_host`]) leaves a VM
//! alone while its lock is held, and holds the lock itself while it
//! removes a dead one's leftovers, so that no process can start using the
//! id meanwhile.
//!
//! # The rule for the VM's life
//!
//! [`VmOwner::claim`] must be called **before any other resource of the VM
//! is made** (its directory, scratch disk, cgroup, namespace, jail, VMM),
//! and the [`VmOwner`] dropped **after the last of them is removed**.
//! [`VmOwner::claim_new`] picks the id, claims it and then makes the VM
//! directory: the start of a VM's prepare phase.
//! Otherwise a clean-up running in another process may see a resource of a
//! live VM without a held lock and remove it.
//!
//! Dropping a [`VmOwner`] unlinks the file while still holding the lock,
//! then unlocks. A process that opened the file just before the unlink may
//! then lock an unlinked inode; so a lock counts only if the file at the
//! path is still the one locked (as in [`crate::lease`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::vm::dirs::{
    is_vm_id, make_private_dir_all as make_private_vms_dir, new_id, DirsError, RuntimeDirs,
};

/// Tries of open-lock-check before the path counts as contended.
const TRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("VM {id:?} is owned by another live process ({path} is locked)")]
    Held { id: String, path: PathBuf },
    #[error("{id:?} is not a Kiln VM id (kiln- and 12 lowercase hex digits)")]
    BadId { id: String },
    #[error(transparent)]
    Dirs(#[from] DirsError),
    #[error("no unused VM id after {tries} tries in {dir}")]
    NoFreeId { dir: PathBuf, tries: u32 },
}

/// The lock on one VM, held until dropped.
#[derive(Debug)]
pub struct VmOwner {
    id: String,
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl VmOwner {
    /// Locks `<owners_dir>/<id>` for this process, creating the directory
    /// (private) and the file. Fails with [`OwnerError::Held`] if another
    /// process holds it.
    pub fn claim(owners_dir: &Path, id: &str) -> Result<VmOwner, OwnerError> {
        Self::try_claim(owners_dir, id)?.ok_or_else(|| OwnerError::Held {
            id: id.to_owned(),
            path: owners_dir.join(id),
        })
    }

    /// Like [`VmOwner::claim`], but `None` when another process holds it.
    pub fn try_claim(owners_dir: &Path, id: &str) -> Result<Option<VmOwner>, OwnerError> {
        if !is_vm_id(id) {
            return Err(OwnerError::BadId { id: id.to_owned() });
        }
        make_private_dir_all(owners_dir)?;
        let path = owners_dir.join(id);
        for _ in 0..TRIES {
            match lock_path(&path)? {
                Locked::Busy => return Ok(None),
                Locked::Stale => continue,
                Locked::Ours(lock) => {
                    return Ok(Some(VmOwner {
                        id: id.to_owned(),
                        path,
                        lock: Some(lock),
                    }))
                }
            }
        }
        // The file kept being replaced under us: someone is using it.
        Ok(None)
    }

    /// A new VM: a fresh id, claimed, then its directory
    /// `<runtime>/vms/<id>/` (private) made, in that order: the start of
    /// every VM's life (no directory exists before its claim).
    pub fn claim_new(dirs: &RuntimeDirs) -> Result<(VmOwner, PathBuf), OwnerError> {
        use std::os::unix::fs::DirBuilderExt;
        const MAX_TRIES: u32 = 32;
        let vms = dirs.vms();
        make_private_vms_dir(&vms)?;
        for _ in 0..MAX_TRIES {
            let Some(owner) = Self::try_claim(&dirs.owners(), &new_id())? else {
                continue;
            };
            let dir = vms.join(owner.id());
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok((owner, dir)),
                // Left by a dead process: the clean-up's, not ours.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(OwnerError::Io {
                        action: "creating the VM directory",
                        path: dir,
                        source,
                    })
                }
            }
        }
        Err(OwnerError::NoFreeId {
            dir: vms,
            tries: MAX_TRIES,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for VmOwner {
    fn drop(&mut self) {
        // Unlinked while locked, then unlocked by closing: see the module docs.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(vm = %self.id, path = %self.path.display(), error = %e, "could not remove a VM owner lock file");
            }
        }
        drop(self.lock.take());
    }
}

/// Whether a live process holds VM `id`'s lock. A lock that cannot be
/// checked (the directory unreadable) counts as held: the clean-up then
/// leaves the VM alone rather than risk a live one.
pub fn is_owned(owners_dir: &Path, id: &str) -> bool {
    let path = owners_dir.join(id);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
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

/// What one attempt to lock a path found.
enum Locked {
    Ours(Flock<File>),
    Busy,
    /// We locked a file that is no longer the one at the path.
    Stale,
}

fn lock_path(path: &Path) -> Result<Locked, OwnerError> {
    let io_err = |action, source| OwnerError::Io {
        action,
        path: path.to_owned(),
        source,
    };
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
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(Locked::Busy),
        Err((_, e)) => return Err(io_err("locking", io::Error::from(e))),
    };
    let held = lock.metadata().map_err(|e| io_err("inspecting", e))?;
    match std::fs::metadata(path) {
        Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => Ok(Locked::Ours(lock)),
        Ok(_) => Ok(Locked::Stale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Locked::Stale),
        Err(e) => Err(io_err("inspecting", e)),
    }
}

fn make_private_dir_all(dir: &Path) -> Result<(), OwnerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| OwnerError::Io {
            action: "creating",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "kiln-0123456789ab";

    #[test]
    fn a_claim_is_exclusive_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let owners = dir.path().join("owners");
        assert!(!is_owned(&owners, ID));
        let owner = VmOwner::claim(&owners, ID).expect("claim");
        assert_eq!(owner.id(), ID);
        assert!(owner.path().exists());
        assert!(is_owned(&owners, ID));
        let again = VmOwner::claim(&owners, ID);
        assert!(matches!(again, Err(OwnerError::Held { .. })), "{again:?}");
        assert!(VmOwner::try_claim(&owners, ID).expect("try").is_none());
        drop(owner);
        assert!(!owners.join(ID).exists());
        assert!(!is_owned(&owners, ID));
    }

    #[test]
    fn a_file_left_by_a_dead_owner_is_not_owned_and_can_be_claimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(ID), "").expect("write");
        assert!(!is_owned(dir.path(), ID));
        let owner = VmOwner::claim(dir.path(), ID).expect("claim");
        drop(owner);
        assert!(!dir.path().join(ID).exists());
    }

    #[test]
    fn a_new_vm_is_claimed_before_its_directory_is_made() {
        let root = tempfile::tempdir().expect("tempdir");
        let dirs = RuntimeDirs::new(root.path().join("run"), root.path().join("disks"));
        let (owner, dir) = VmOwner::claim_new(&dirs).expect("claim new");
        assert!(is_vm_id(owner.id()), "{}", owner.id());
        assert_eq!(dir, dirs.vms().join(owner.id()));
        assert!(dir.is_dir());
        assert!(is_owned(&dirs.owners(), owner.id()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn only_vm_ids_are_claimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["x", "../kiln-0123456789ab", "kiln-0123456789AB"] {
            let err = VmOwner::claim(dir.path(), bad).expect_err(bad);
            assert!(matches!(err, OwnerError::BadId { .. }), "{bad}: {err}");
        }
    }
}
