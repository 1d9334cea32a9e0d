//! Where VMs live on the host, and their ids.
//!
//! - `<runtime>/vms/<id>/`: one VM's sockets and logs. Small; the runtime
//!   directory is meant for a tmpfs (`/run/kiln`).
//! - `<runtime>/cids/<cid>`: guest CID leases ([`super::cid`]).
//! - `<runtime>/uids/<uid>`: Firecracker jail uid leases.
//! - `/run/kiln/owners/<id>` (root) or `<runtime>/owners/<id>`: VM owner locks ([`crate::vm::owner`]).
//! - `<disks>/<id>.ext4`: scratch disks. They grow with what the job
//!   writes, so they belong on a real disk, never on a tmpfs.
//! - `<disks>/templates/`: the scratch disks later ones are copied from
//!   ([`crate::disk::Templates`]); only what an image's skeleton holds.
//!
//! Everything a VM adds here is removed at its teardown; the templates
//! stay for the next VMs.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Runtime directory, when set: `KILN_RUNTIME_DIR`.
pub const RUNTIME_DIR_ENV: &str = "KILN_RUNTIME_DIR";
/// Scratch disk directory, when set: `KILN_DISK_DIR`.
pub const DISK_DIR_ENV: &str = "KILN_DISK_DIR";
/// The templates' directory below the disks' ([`RuntimeDirs::templates`]).
pub const TEMPLATES_DIR: &str = "templates";

#[derive(Debug, thiserror::Error)]
pub enum DirsError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{var}={value:?} must be an absolute path")]
    NotAbsolute { var: &'static str, value: PathBuf },
    #[error("{} is owned by uid {owner}, not by kiln's uid {me}, so that user could change what kiln keeps there: run `chown {me} {}` (or remove it and let kiln make it)", path.display(), path.display())]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    #[error("{} is writable by group or others (mode {mode:o}), so other users could change what kiln keeps there: run `chmod go-w {}`", path.display(), path.display())]
    Writable { path: PathBuf, mode: u32 },
}

/// The host directories VMs are made in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDirs {
    pub runtime: PathBuf,
    pub disks: PathBuf,
}

impl RuntimeDirs {
    pub fn new(runtime: impl Into<PathBuf>, disks: impl Into<PathBuf>) -> Self {
        RuntimeDirs {
            runtime: runtime.into(),
            disks: disks.into(),
        }
    }

    /// `KILN_RUNTIME_DIR` and `KILN_DISK_DIR`, or the defaults: for root
    /// `/run/kiln` and `/var/lib/kiln/scratch`; for others
    /// `$XDG_RUNTIME_DIR/kiln` (or `/tmp/kiln-<uid>`) and
    /// `~/.local/state/kiln/scratch`.
    pub fn from_env() -> Result<Self, DirsError> {
        let root = nix::unistd::geteuid().is_root();
        let uid = nix::unistd::geteuid().as_raw();
        let runtime = match env_path(RUNTIME_DIR_ENV)? {
            Some(p) => p,
            None if root => PathBuf::from("/run/kiln"),
            None => match std::env::var_os("XDG_RUNTIME_DIR") {
                Some(d) if !d.is_empty() => PathBuf::from(d).join("kiln"),
                _ => PathBuf::from(format!("/tmp/kiln-{uid}")),
            },
        };
        let disks = match env_path(DISK_DIR_ENV)? {
            Some(p) => p,
            None if root => PathBuf::from("/var/lib/kiln/scratch"),
            None => match std::env::var_os("HOME") {
                Some(h) if !h.is_empty() => PathBuf::from(h).join(".local/state/kiln/scratch"),
                _ => runtime.join("disks"),
            },
        };
        Ok(RuntimeDirs { runtime, disks })
    }

    /// Creates the runtime and disk directories (private to this user),
    /// or checks that existing ones are ours and writable by us alone.
    pub fn ensure(&self) -> Result<(), DirsError> {
        make_private_dir_all(&self.runtime)?;
        make_private_dir_all(&self.disks)
    }

    pub fn vms(&self) -> PathBuf {
        self.runtime.join("vms")
    }

    pub fn cids(&self) -> PathBuf {
        self.runtime.join("cids")
    }

    /// Firecracker jail uid leases.
    pub fn uids(&self) -> PathBuf {
        self.runtime.join("uids")
    }

    /// VM owner locks ([`crate::vm::owner`]), `<dir>/<id>`, held by the
    /// process that runs VM `<id>`: [`HOST_OWNERS_DIR`] for root,
    /// `<runtime>/owners` for other users (whose VMs have nothing
    /// host-wide).
    pub fn owners(&self) -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            PathBuf::from(HOST_OWNERS_DIR)
        } else {
            self.runtime.join("owners")
        }
    }

    /// Where scratch disk templates are kept, below the disks (the same
    /// filesystem, so a copy can share blocks).
    pub fn templates(&self) -> PathBuf {
        self.disks.join(TEMPLATES_DIR)
    }

    /// Where VM `id`'s scratch disk goes; creates the disk directory.
    pub fn scratch_path(&self, id: &str) -> Result<PathBuf, DirsError> {
        make_private_dir_all(&self.disks)?;
        Ok(self.disks.join(format!("{id}.ext4")))
    }
}

fn env_path(var: &'static str) -> Result<Option<PathBuf>, DirsError> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                Ok(Some(p))
            } else {
                Err(DirsError::NotAbsolute { var, value: p })
            }
        }
        _ => Ok(None),
    }
}

/// Creates `dir` and its missing parents, the new ones private to this
/// user (VM directories hold the sockets that reach the guests). An
/// existing `dir` must be ours and not writable by group or others
/// ([`check_owned_dir`]).
pub(crate) fn make_private_dir_all(dir: &Path) -> Result<(), DirsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DirsError::Io {
            action: "creating",
            path: dir.to_owned(),
            source,
        })?;
    check_owned_dir(dir)
}

/// Refuses a directory another user owns or could write to: whoever can
/// write there can swap a VM's disk or socket for their own.
pub fn check_owned_dir(dir: &Path) -> Result<(), DirsError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).map_err(|source| DirsError::Io {
        action: "inspecting",
        path: dir.to_owned(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(DirsError::NotOwned {
            path: dir.to_owned(),
            owner: m.uid(),
            me,
        });
    }
    if m.mode() & 0o022 != 0 {
        return Err(DirsError::Writable {
            path: dir.to_owned(),
            mode: m.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Root's VM owner locks ([`crate::vm::owner`]), one directory for the
/// whole host whatever the runtime directory: what they guard (network
/// namespaces, cgroups, links) is host-wide, so the start-up clean-up of
/// one `kiln serve` must see the VMs of every other Kiln process, also
/// those with runtime directories of their own.
pub const HOST_OWNERS_DIR: &str = "/run/kiln/owners";

/// The length of the hex part of a VM id.
const ID_HEX_LEN: usize = 12;

/// Whether `s` is a Kiln VM id: `kiln-` and 12 lowercase hex digits.
pub fn is_vm_id(s: &str) -> bool {
    s.strip_prefix("kiln-").is_some_and(|hex| {
        hex.len() == ID_HEX_LEN
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `kiln-` and 12 random hex digits: short (socket paths are limited to
/// 107 bytes), within the jailer's id rules, and unguessable enough that
/// ids never repeat in practice; the exclusive mkdir decides.
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 6];
    super::random::fill(&mut bytes);
    format!("kiln-{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_dirs_are_unique_private_and_valid_ids() {
        let root = tempfile::tempdir().expect("tempdir");
        let dirs = RuntimeDirs::new(root.path().join("run"), root.path().join("disks"));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let (owner, dir) = super::super::owner::VmOwner::claim_new(&dirs).expect("vm dir");
            let id = owner.id().to_owned();
            assert!(dir.is_dir());
            assert_eq!(dir.parent(), Some(dirs.vms().as_path()));
            assert!(seen.insert(id.clone()), "{id} repeated");
            let spec_ok =
                id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            assert!(spec_ok, "{id}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dirs.vms())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let scratch = dirs.scratch_path("kiln-x").expect("scratch");
        assert_eq!(scratch, root.path().join("disks/kiln-x.ext4"));
        assert!(root.path().join("disks").is_dir());
    }

    #[test]
    fn a_dir_others_can_write_or_do_own_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let run = root.path().join("run");
        std::fs::create_dir(&run).expect("mkdir");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let dirs = RuntimeDirs::new(&run, root.path().join("disks"));
        let err = dirs.ensure().expect_err("world-writable");
        assert!(
            matches!(&err, DirsError::Writable { path, mode: 0o777 } if *path == run),
            "{err}"
        );
        assert!(err.to_string().contains("chmod go-w"), "{err}");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dirs.ensure().expect("ours, not writable by others");
        assert!(root.path().join("disks").is_dir());

        // Another owner (needs root to make one).
        if nix::unistd::geteuid().is_root() {
            let disks = root.path().join("disks");
            std::os::unix::fs::chown(&disks, Some(4242), None).expect("chown");
            let err = dirs.ensure().expect_err("not ours");
            assert!(
                matches!(&err, DirsError::NotOwned { owner: 4242, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("chown 0"), "{err}");
            let err = dirs.scratch_path("kiln-x").expect_err("not ours");
            assert!(matches!(err, DirsError::NotOwned { .. }), "{err}");
        }
    }
}
