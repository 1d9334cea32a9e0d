//! The filesystems a job expects, which nobody else mounts in a VM without
//! systemd or udev.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::error::{OrSys, SysError};

struct Fs {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
    /// Needed by the boot itself, before anything else runs: the rest is
    /// mounted on a thread beside the module loads (see [`mount_early`]).
    early: bool,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In mount order: each target's parent comes before it.
const FILESYSTEMS: &[Fs] = &[
    Fs {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        early: true,
        data: "",
    },
    Fs {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        early: true,
        data: "",
    },
    Fs {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        early: true,
        data: "mode=0755",
    },
    Fs {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        early: false,
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Fs {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        early: false,
        data: "mode=1777",
    },
    Fs {
        target: "/dev/mqueue",
        fstype: "mqueue",
        flags: NOSUID_NODEV_NOEXEC,
        early: false,
        data: "",
    },
    Fs {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        early: false,
        data: "nsdelegate",
    },
    Fs {
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        early: true,
        data: "mode=0755",
    },
    Fs {
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        early: false,
        data: "mode=1777",
    },
];

/// The mounts that move along when the root changes; `/run` and `/tmp`
/// are mounted afresh in the new root.
pub const CARRIED: &[&str] = &["/proc", "/sys", "/dev"];

/// Mounts what the boot needs first: `/proc`, `/sys`, `/dev` and `/run`
/// (the root's staging area). [`mount_all`] does the rest.
pub fn mount_early() -> Result<(), SysError> {
    mount_missing(|fs| fs.early)
}

/// Mounts whatever of [`FILESYSTEMS`] is not mounted yet, and the links in
/// `/dev`. Run again after a root switch, it fills in what the new root
/// lacks (`/dev` and what is below it moves along).
pub fn mount_all() -> Result<(), SysError> {
    mount_missing(|_| true)?;
    links()
}

fn mount_missing(wanted: impl Fn(&Fs) -> bool) -> Result<(), SysError> {
    // Empty until /proc is up; read again once it is.
    let mut present = mounted();
    for fs in FILESYSTEMS {
        if !wanted(fs) || present.contains(fs.target) {
            continue;
        }
        mkdir_p(Path::new(fs.target))?;
        let data = (!fs.data.is_empty()).then_some(fs.data);
        mount(Some(fs.fstype), fs.target, Some(fs.fstype), fs.flags, data)
            .or_sys(|| format!("mount {} on {}", fs.fstype, fs.target))?;
        if fs.target == "/proc" {
            present = mounted();
        }
    }
    Ok(())
}

/// The mount points in this process's view, from `/proc/self/mounts`
/// (empty before /proc is mounted).
pub fn mounted() -> HashSet<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| parse_mount_points(&t))
        .unwrap_or_default()
}

pub fn parse_mount_points(table: &str) -> HashSet<String> {
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(unescape)
        .collect()
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as `\ooo`.
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn links() -> Result<(), SysError> {
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if std::fs::symlink_metadata(link).is_err() {
            std::os::unix::fs::symlink(target, link).or_sys(|| format!("symlink {link}"))?;
        }
    }
    // devtmpfs makes /dev/ptmx a device node of the kernel's internal devpts;
    // the link makes ptys come from the /dev/pts mounted above (ptmxmode=0666).
    let is_link = std::fs::symlink_metadata("/dev/ptmx")
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    if !is_link {
        match std::fs::remove_file("/dev/ptmx") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).or_sys(|| "remove /dev/ptmx".into()),
        }
        std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx")
            .or_sys(|| "symlink /dev/ptmx".into())?;
    }
    Ok(())
}

/// devtmpfs creates these 0600 (udev would open them up): rootless podman's
/// network (pasta, slirp4netns) and fuse-overlayfs need them.
pub fn open_up_devices() -> Result<(), SysError> {
    for dev in ["/dev/net/tun", "/dev/fuse"] {
        match std::fs::set_permissions(dev, std::fs::Permissions::from_mode(0o666)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).or_sys(|| format!("chmod 0666 {dev}")),
        }
    }
    Ok(())
}

/// Mounts below `/` propagate to mount namespaces made from it (podman
/// warns otherwise).
pub fn make_root_shared() -> Result<(), SysError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None::<&str>,
    )
    .or_sys(|| "make / rshared".into())
}

pub fn mkdir_p(path: &Path) -> Result<(), SysError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .or_sys(|| format!("create directory {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_points_are_unescaped() {
        let t = "proc /proc proc rw 0 0\n/dev/vdb /home/my\\040dir ext4 rw 0 0\nbad\n";
        let m = parse_mount_points(t);
        assert!(m.contains("/proc"));
        assert!(m.contains("/home/my dir"));
        assert_eq!(m.len(), 2);
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn early_mounts_are_what_the_boot_needs_and_their_parents() {
        let early: Vec<&str> = FILESYSTEMS
            .iter()
            .filter(|f| f.early)
            .map(|f| f.target)
            .collect();
        assert_eq!(early, ["/proc", "/sys", "/dev", "/run"]);
        // A later mount's parent is early or mounted before it on the
        // same thread; an early mount never sits below a later one.
        for fs in FILESYSTEMS.iter().filter(|f| f.early) {
            assert!(
                !FILESYSTEMS
                    .iter()
                    .any(|o| !o.early && fs.target.starts_with(&format!("{}/", o.target))),
                "{} sits below a later mount",
                fs.target
            );
        }
    }

    #[test]
    fn parents_are_mounted_before_children() {
        for (i, fs) in FILESYSTEMS.iter().enumerate() {
            for later in &FILESYSTEMS[i + 1..] {
                assert!(
                    !fs.target.starts_with(&format!("{}/", later.target)),
                    "{} is listed before its parent {}",
                    fs.target,
                    later.target
                );
            }
        }
    }
}
