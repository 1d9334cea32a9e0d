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
//! The lock is a [`LockFile`], as leases are: dropping a [`VmOwner`]
//! unlinks the file while still holding the lock, then unlocks, and a lock
//! counts only if the file at the path is still the one locked.

use std::io;
use std::path::{Path, PathBuf};

use crate::lease::{LockFile, LockFileError};
use crate::vm::dirs::{
    is_vm_id, make_private_dir_all as make_private_vms_dir, new_id, DirsError, RuntimeDirs,
};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockFileError),
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
    lock: LockFile,
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
        let lock = LockFile::try_lock(&owners_dir.join(id))?;
        Ok(lock.map(|lock| VmOwner {
            id: id.to_owned(),
            lock,
        }))
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
        self.lock.path()
    }
}

/// Whether a live process holds VM `id`'s lock. A lock that cannot be
/// checked (the directory unreadable) counts as held: the clean-up then
/// leaves the VM alone rather than risk a live one.
pub fn is_owned(owners_dir: &Path, id: &str) -> bool {
    LockFile::is_held(&owners_dir.join(id))
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
