//! The actions runner's config files in RAM. At `run.sh` start the runner
//! decodes its JIT config into `.runner`, `.credentials` and
//! `.credentials_rsaparams` in its root directory (`/opt/actions-runner`),
//! which is on the overlay, so on the host's scratch file. Before the job
//! starts, each of those paths gets a file of a small tmpfs of its own
//! bind-mounted over it, owned by the job's user: the runner writes them
//! with `File.WriteAllBytes` (open, truncate, write in place; actions/runner
//! `Runner.Listener/Runner.cs`), so the bytes land in RAM and the scratch
//! disk holds only the empty mount points.
//!
//! What remains: the job's steps run as the same user as the runner, so
//! they can read these files and the runner's environment (the JIT config
//! in `ACTIONS_RUNNER_INPUT_JITCONFIG`) for as long as the VM lives; that
//! is GitHub's design, and the credential is good for this one job only.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::unistd::{chown, Gid, Uid};

use crate::error::{OrSys, SysError};
use crate::mounts::mkdir_p;

/// Where the image installs the runner (xtask/src/image/runner.rs,
/// `INSTALL_DIR`).
pub const RUNNER_ROOT: &str = "/opt/actions-runner";

/// The files the runner writes its credentials to.
pub const FILES: &[&str] = &[".runner", ".credentials", ".credentials_rsaparams"];

/// The tmpfs the files live on: root's only, the runner reaches its files
/// through the binds.
const STORE: &str = "/run/kiln-runner-config";

/// Room for the three files (a few KiB each) with a wide margin.
const STORE_OPTIONS: &str = "mode=0700,size=1m,nr_inodes=64";

/// Puts the runner's config files on a tmpfs, if the root has a runner.
/// Returns whether it did.
pub fn protect(uid: u32, gid: u32) -> Result<bool, SysError> {
    protect_in(Path::new(RUNNER_ROOT), Path::new(STORE), uid, gid)
}

fn protect_in(runner_root: &Path, store: &Path, uid: u32, gid: u32) -> Result<bool, SysError> {
    if !runner_root.is_dir() {
        return Ok(false);
    }
    mkdir_p(store)?;
    mount(
        Some("tmpfs"),
        store,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(STORE_OPTIONS),
    )
    .or_sys(|| format!("mount tmpfs on {}", store.display()))?;
    for name in FILES {
        let in_ram = store.join(name);
        create_owned(&in_ram, uid, gid)?;
        let target = runner_root.join(name);
        create_owned(&target, uid, gid)?;
        mount(
            Some(&in_ram),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .or_sys(|| format!("bind {} on {}", in_ram.display(), target.display()))?;
    }
    Ok(true)
}

/// An empty 0600 file owned by uid:gid (an existing one is emptied: it
/// is hidden by the bind anyway, and must not keep an old credential).
fn create_owned(path: &Path, uid: u32, gid: u32) -> Result<(), SysError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .or_sys(|| format!("create {}", path.display()))?;
    chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .or_sys(|| format!("chown {uid}:{gid} {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .or_sys(|| format!("chmod 0600 {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn no_runner_no_mounts() {
        let tmp = std::env::temp_dir().join(format!("kiln-init-rc-{}", std::process::id()));
        let did = protect_in(&tmp.join("absent"), &tmp.join("store"), 1001, 1001).unwrap();
        assert!(!did);
        assert!(!tmp.join("store").exists());
    }

    #[test]
    fn files_are_created_empty_private_and_owned() {
        let tmp = std::env::temp_dir().join(format!("kiln-init-rc-f-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let p = tmp.join(".credentials");
        std::fs::write(&p, "old secret").unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        create_owned(&p, me.0, me.1).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 0);
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!((m.uid(), m.gid()), me);
        std::os::unix::fs::symlink(&p, tmp.join("link")).unwrap();
        assert!(create_owned(&tmp.join("link"), me.0, me.1).is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
