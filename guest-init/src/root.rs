//! The job's root filesystem: the base image read-only below, the scratch
//! disk (or RAM) as the writable layer on top, and `/home` and
//! `/var/lib/containers` straight on the scratch ext4 (rootless podman's
//! storage must not sit on overlayfs). The disks are found by what is on
//! them ([`crate::disks`]), whatever names the kernel gave them.

use std::os::unix::fs::{lchown, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, chroot, pivot_root};

use crate::cmdline::BootConfig;
use crate::disks::{self, DiskError, DiskRef};
use crate::error::{OrSys, SysError};
use crate::mounts::{mkdir_p, CARRIED};

/// Staging area on the tmpfs at `/run` of the first root; the new root has
/// its own `/run`.
const STAGE: &str = "/run/kiln";

/// Directories of the scratch disk bound onto the new root. The image's
/// scratch skeleton (xtask/src/image/skeleton.rs, `COPIED`) lays out the
/// same ones on the host; the guest is a separate crate, so the list is
/// kept twice.
const SCRATCH_BINDS: &[(&str, &str)] = &[("home", "home"), ("containers", "var/lib/containers")];

/// Whether a root switch happened, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    /// No `kiln.root` and no `kiln.scratch`: the first root stays.
    No,
    /// pivot_root from a kernel-mounted root.
    Pivot,
    /// MS_MOVE + chroot from the initramfs (rootfs cannot be pivoted).
    MoveChroot,
}

/// Why the root could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// The overlay root, mounted and ready to switch into.
#[derive(Debug)]
pub struct Built {
    new_root: std::path::PathBuf,
}

/// Whether what [`build`] mounts is there: the disks named by `kiln.root`
/// and `kiln.scratch`, and overlayfs. Drivers loading as modules bring
/// them; a kernel with them built in has them from the start. A disk named
/// ambiguously counts as there: waiting would not help, and [`build`]
/// says what is wrong.
pub fn sources_present(cfg: &BootConfig) -> bool {
    if cfg.root.is_none() && cfg.scratch.is_none() {
        return true;
    }
    let seen = disks::scan();
    let disks = [&cfg.root, &cfg.scratch]
        .into_iter()
        .flatten()
        .all(|wanted| !matches!(disks::find(wanted, &seen), Ok(None)));
    disks
        && std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| has_filesystem(&t, "overlay"))
}

/// The device nodes `kiln.root` and `kiln.scratch` name, as found now.
fn resolve(cfg: &BootConfig) -> Result<(Option<PathBuf>, Option<PathBuf>), DiskError> {
    let seen = disks::scan();
    let find = |wanted: &Option<DiskRef>| {
        wanted
            .as_ref()
            .map(|w| disks::require(w, &seen))
            .transpose()
    };
    let (root, scratch) = (find(&cfg.root)?, find(&cfg.scratch)?);
    if let (Some(r), Some(s)) = (&root, &scratch) {
        if r == s {
            return Err(DiskError::Ambiguous {
                wanted: "kiln.root and kiln.scratch".to_owned(),
                devices: r.display().to_string(),
            });
        }
    }
    Ok((root, scratch))
}

/// Whether `/proc/filesystems` (`nodev\toverlay` lines) lists `name`.
fn has_filesystem(table: &str, name: &str) -> bool {
    table
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

/// Builds the overlay root if the command line asks for one (`None`:
/// the first root stays). Only mounts below the staging area: `/proc`,
/// `/sys` and `/dev` stay where they are until [`switch`].
pub fn build(cfg: &BootConfig) -> Result<Option<Built>, RootError> {
    if cfg.root.is_none() && cfg.scratch.is_none() {
        return Ok(None);
    }
    let (root_dev, scratch_dev) = resolve(cfg)?;
    let stage = Path::new(STAGE);
    let base = stage.join("base");
    let scratch = stage.join("scratch");
    let new_root = stage.join("root");
    for d in [&base, &scratch, &new_root] {
        mkdir_p(d)?;
    }

    // The two mounts are independent, and each is mostly the kernel's own
    // work (reading and checking the superblock and group descriptors):
    // side by side they take one vCPU each.
    let (base_mounted, scratch_mounted) = std::thread::scope(|s| {
        let scratch_mount = s.spawn(|| mount_scratch(scratch_dev.as_deref(), &scratch));
        let base_mounted = mount_base(root_dev.as_deref(), &base);
        (base_mounted, scratch_mount.join())
    });
    base_mounted?;
    scratch_mounted.map_err(|_| SysError {
        action: format!("mount {}", scratch.display()),
        source: std::io::Error::other("the mounting thread panicked"),
    })??;
    build_overlay(cfg, &base, &scratch, &new_root)?;
    Ok(Some(Built { new_root }))
}

/// The overlay of `base` and `scratch` on `new_root`, and the scratch
/// disk's own directories bound into it.
fn build_overlay(
    cfg: &BootConfig,
    base: &Path,
    scratch: &Path,
    new_root: &Path,
) -> Result<(), SysError> {
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    mkdir_p(&upper)?;
    mkdir_p(&work)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        new_root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .or_sys(|| format!("mount overlay ({opts}) on {}", new_root.display()))?;

    if cfg.scratch.is_some() {
        for (dir, target) in SCRATCH_BINDS {
            let src = scratch.join(dir);
            let dst = new_root.join(target);
            let fresh = !src.exists();
            mkdir_p(&src)?;
            if fresh {
                // The image's skeleton (e.g. /home/runner and its dotfiles)
                // would be hidden by the bind: start from a copy of it.
                copy_tree(&base.join(target), &src)?;
            }
            mkdir_p(&dst)?;
            bind(&src, &dst)?;
        }
    }
    Ok(())
}

/// Switches into the built root, taking `/proc`, `/sys` and `/dev` along.
/// Paths under them are gone for a moment: nothing else may use them
/// meanwhile.
pub fn switch(built: Option<Built>) -> Result<Switched, SysError> {
    let Some(Built { new_root }) = built else {
        return Ok(Switched::No);
    };
    for m in CARRIED {
        let dst = new_root.join(m.trim_start_matches('/'));
        mkdir_p(&dst)?;
        mount(Some(*m), &dst, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .or_sys(|| format!("move {m} to {}", dst.display()))?;
    }
    switch_to(&new_root)
}

fn switch_to(new_root: &Path) -> Result<Switched, SysError> {
    chdir(new_root).or_sys(|| format!("chdir {}", new_root.display()))?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching
    // it leaves only the new root (pivot_root(2), NOTES).
    match pivot_root(".", ".") {
        Ok(()) => {
            umount2(".", MntFlags::MNT_DETACH).or_sys(|| "detach the old root".into())?;
            chdir("/").or_sys(|| "chdir /".into())?;
            Ok(Switched::Pivot)
        }
        // The initramfs (rootfs) cannot be pivoted: do what switch_root does.
        Err(Errno::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .or_sys(|| format!("move {} to /", new_root.display()))?;
            chroot(".").or_sys(|| "chroot into the new root".into())?;
            chdir("/").or_sys(|| "chdir /".into())?;
            Ok(Switched::MoveChroot)
        }
        Err(e) => Err(e).or_sys(|| format!("pivot_root into {}", new_root.display())),
    }
}

/// The overlay's lower layer: `kiln.root` read-only, or else the first
/// root itself.
fn mount_base(dev: Option<&Path>, base: &Path) -> Result<(), SysError> {
    match dev {
        Some(dev) => mount_ext4(dev, base, MsFlags::MS_RDONLY),
        None => {
            // Non-recursive bind: the lower layer is the root's own files,
            // without /proc, /dev and the rest mounted on it.
            bind(Path::new("/"), base)?;
            mount(
                None::<&str>,
                base,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .or_sys(|| format!("remount {} read-only", base.display()))
        }
    }
}

/// The overlay's upper layer: `kiln.scratch`, or else RAM.
fn mount_scratch(dev: Option<&Path>, scratch: &Path) -> Result<(), SysError> {
    match dev {
        Some(dev) => mount_ext4(dev, scratch, MsFlags::empty()),
        // A base image without a scratch disk still gets a writable root,
        // in RAM.
        None => mount(
            Some("tmpfs"),
            scratch,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .or_sys(|| format!("mount tmpfs on {}", scratch.display())),
    }
}

fn mount_ext4(dev: &Path, at: &Path, flags: MsFlags) -> Result<(), SysError> {
    mount(Some(dev), at, Some("ext4"), flags, None::<&str>).or_sys(|| {
        let ro = if flags.contains(MsFlags::MS_RDONLY) {
            " read-only"
        } else {
            ""
        };
        format!("mount {} (ext4) on {}{ro}", dev.display(), at.display())
    })
}

fn bind(src: &Path, dst: &Path) -> Result<(), SysError> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .or_sys(|| format!("bind {} on {}", src.display(), dst.display()))
}

/// Copies directories, files and symlinks with owners and modes; other
/// file types (sockets, devices) have no business in a skeleton and are
/// skipped. A missing `src` copies nothing.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), SysError> {
    let meta = match std::fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).or_sys(|| format!("stat {}", src.display())),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .or_sys(|| format!("create directory {}", dst.display()))?;
        let entries =
            std::fs::read_dir(src).or_sys(|| format!("read directory {}", src.display()))?;
        for entry in entries {
            let entry = entry.or_sys(|| format!("read directory {}", src.display()))?;
            let name = entry.file_name();
            copy_tree(&src.join(&name), &dst.join(&name))?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).or_sys(|| format!("read link {}", src.display()))?;
        std::os::unix::fs::symlink(&target, dst)
            .or_sys(|| format!("create symlink {}", dst.display()))?;
    } else if ft.is_file() {
        std::fs::copy(src, dst)
            .or_sys(|| format!("copy {} to {}", src.display(), dst.display()))?;
    } else {
        return Ok(());
    }
    lchown(dst, Some(meta.uid()), Some(meta.gid()))
        .or_sys(|| format!("chown {}", dst.display()))?;
    if !ft.is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .or_sys(|| format!("chmod {}", dst.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystems_table() {
        let t = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";
        assert!(has_filesystem(t, "overlay"));
        assert!(has_filesystem(t, "ext4"));
        assert!(!has_filesystem(t, "fuse"));
        assert!(!has_filesystem("nodev\toverlayfs\n", "overlay"));
    }

    #[test]
    fn nothing_to_wait_for_without_a_root() {
        assert!(sources_present(&BootConfig::default()));
        let missing = BootConfig {
            scratch: Some(DiskRef::Path("/dev/kiln-test-no-such-disk".into())),
            ..BootConfig::default()
        };
        assert!(!sources_present(&missing));
        let by_uuid = BootConfig {
            root: Some(DiskRef::Uuid([0x5a; 16])),
            ..BootConfig::default()
        };
        assert!(!sources_present(&by_uuid));
        let err = build(&by_uuid).expect_err("no such disk").to_string();
        assert!(
            err.contains("no block device holds UUID=5a5a5a5a-"),
            "{err}"
        );
    }

    #[test]
    fn copy_tree_keeps_files_links_and_modes() {
        let tmp = std::env::temp_dir().join(format!("kiln-init-copy-{}", std::process::id()));
        let src = tmp.join("src");
        let dst = tmp.join("dst");
        std::fs::create_dir_all(src.join("runner/.config")).unwrap();
        std::fs::write(src.join("runner/.bashrc"), "export A=1\n").unwrap();
        std::fs::set_permissions(
            src.join("runner/.bashrc"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::symlink(".bashrc", src.join("runner/.profile")).unwrap();
        std::fs::set_permissions(src.join("runner"), std::fs::Permissions::from_mode(0o750))
            .unwrap();

        copy_tree(&src, &dst).unwrap();

        assert_eq!(
            std::fs::read_to_string(dst.join("runner/.bashrc")).unwrap(),
            "export A=1\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dst.join("runner/.bashrc")), 0o640);
        assert_eq!(mode(&dst.join("runner")), 0o750);
        assert!(dst.join("runner/.config").is_dir());
        assert_eq!(
            std::fs::read_link(dst.join("runner/.profile")).unwrap(),
            Path::new(".bashrc")
        );
        copy_tree(&tmp.join("missing"), &tmp.join("nothing")).unwrap();
        assert!(!tmp.join("nothing").exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
