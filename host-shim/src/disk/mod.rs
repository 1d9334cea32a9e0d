//! A VM's writable scratch disk: a sparse file with an empty ext4 on it.
//!
//! Its cost does not grow with its size: the file is sparse, and mkfs.ext4
//! writes only the superblocks, bitmaps and root directory (about 30 ms and
//! 5 MiB for 100 GiB). On a regular file mkfs first discards (punches
//! holes), which it knows reads back as zeros, so it marks the inode tables
//! as already zeroed and the guest kernel never starts its lazy-init thread
//! writing them either.
//!
//! Every disk file is created mode 0600: it holds what a job wrote.
//!
//! - [`budget`] — room on the host for the disks in use, and a reserve.
//! - [`template`] — later disks copied from the first one made.
//! - [`clone`] — sparse copies (reflink, or the data ranges only).
//! - [`ident`] — how the guest finds each disk (its ext4 UUID).

pub mod budget;
mod clone;
mod ident;
mod template;

pub use clone::Cloned;
pub use ident::{ext4_uuid, guest_refs};
pub use template::{Made, Templates};

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mode of every scratch disk and template: the owner's only.
pub const DISK_MODE: u32 = 0o600;

/// Smallest scratch disk accepted: room for the overlay's upper layer and a
/// home directory, and above ext4's own minimum.
pub const MIN_SIZE: u64 = 64 << 20;

/// The label kiln-init and humans recognise a scratch disk by.
pub const LABEL: &str = "kiln-scratch";

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("scratch disk {path}: {size} bytes is below the minimum {min}")]
    TooSmall { path: PathBuf, size: u64, min: u64 },
    #[error("scratch disk {path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("scratch disk {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 is not installed (needed for scratch disks): apt-get install e2fsprogs")]
    MkfsMissing,
    #[error(
        "scratch skeleton {dir} is not a directory: rebuild the image with `cargo xtask image`"
    )]
    Skeleton { dir: PathBuf },
    #[error("mkfs.ext4 failed on scratch disk {path}: {detail}")]
    Mkfs { path: PathBuf, detail: String },
}

/// Creates `path` (which must not exist) as a sparse `size_bytes` file
/// holding an empty ext4 labelled [`LABEL`]. On failure nothing is left
/// at `path`.
pub fn create_scratch(path: &Path, size_bytes: u64) -> Result<(), ScratchError> {
    create_scratch_from(path, size_bytes, None)
}

/// [`create_scratch`], with the ext4 holding a copy of `skeleton` (owners
/// and modes kept): the image's scratch skeleton, laid out as kiln-init
/// would otherwise build it in the guest (`upper/`, `work/`, `home/`,
/// `containers/`). mkfs writes those few files on the host in a fraction
/// of what the guest's first reads of the base image and first writes to
/// a fresh ext4 cost at boot.
pub fn create_scratch_from(
    path: &Path,
    size_bytes: u64,
    skeleton: Option<&Path>,
) -> Result<(), ScratchError> {
    check_request(path, size_bytes, skeleton)?;
    let io = |source| ScratchError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DISK_MODE)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ScratchError::Exists {
                path: path.to_owned(),
            },
            _ => io(e),
        })?;
    let result = file.set_len(size_bytes).map_err(io).and_then(|()| {
        drop(file);
        mkfs(path, skeleton)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// What every way of making a scratch disk checks first: the size, and
/// that the skeleton (if any) is a directory.
fn check_request(
    path: &Path,
    size_bytes: u64,
    skeleton: Option<&Path>,
) -> Result<(), ScratchError> {
    if size_bytes < MIN_SIZE {
        return Err(ScratchError::TooSmall {
            path: path.to_owned(),
            size: size_bytes,
            min: MIN_SIZE,
        });
    }
    match skeleton {
        Some(dir) if !dir.is_dir() => Err(ScratchError::Skeleton {
            dir: dir.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// mkfs.ext4 lives in /sbin, which a non-login root shell's PATH may lack.
fn mkfs_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

fn mkfs(path: &Path, skeleton: Option<&Path>) -> Result<(), ScratchError> {
    let binary = mkfs_binary().ok_or(ScratchError::MkfsMissing)?;
    let mut cmd = Command::new(binary);
    if let Some(dir) = skeleton {
        cmd.arg("-d").arg(dir);
    }
    let out = cmd
        .args(["-F", "-q", "-m", "0", "-L", LABEL])
        // The disk lives for one job and is thrown away after: a journal
        // would protect nothing and cost writes.
        .args(["-O", "^has_journal"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(path)
        .output()
        .map_err(|source| ScratchError::Io {
            path: path.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ScratchError::Mkfs {
            path: path.to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// What `debugfs -R REQUEST disk` prints (the disk is not mounted).
    pub(super) fn debugfs(disk: &Path, request: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", request])
            .arg(disk)
            .output()
            .expect("debugfs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn large_disk_is_sparse_and_cheap() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("scratch.ext4");
        let size = 40u64 << 30;
        let t = std::time::Instant::now();
        create_scratch(&p, size).expect("create");
        let took = t.elapsed();
        let m = std::fs::metadata(&p).expect("meta");
        assert_eq!(m.len(), size);
        assert_eq!(m.mode() & 0o777, DISK_MODE, "{:o}", m.mode());
        let allocated = m.blocks() * 512;
        // Metadata only: a few MiB for 40 GiB, not the inode tables.
        assert!(allocated < 64 << 20, "allocated {allocated} bytes");
        assert!(took.as_secs() < 20, "took {took:?}");
        let fs = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&p)
            .output()
            .expect("dumpe2fs");
        let text = String::from_utf8_lossy(&fs.stdout);
        assert!(text.contains(LABEL), "{text}");
        assert!(!text.contains("has_journal"), "{text}");
        // Every group's inode table counts as zeroed: the guest kernel has
        // nothing to initialise lazily (which would write ~640 MiB here).
        let full = Command::new("dumpe2fs").arg(&p).output().expect("dumpe2fs");
        let groups = String::from_utf8_lossy(&full.stdout);
        let lines: Vec<&str> = groups
            .lines()
            .filter(|l| {
                l.strip_prefix("Group ")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        assert!(lines.len() > 100, "{}", lines.len());
        let lazy: Vec<&&str> = lines
            .iter()
            .filter(|l| !l.contains("ITABLE_ZEROED"))
            .collect();
        assert!(lazy.is_empty(), "{lazy:?}");
    }

    #[test]
    fn skeleton_is_laid_onto_the_disk_with_owners_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let skel = d.path().join("skel");
        std::fs::create_dir_all(skel.join("home/runner")).expect("mkdir");
        std::fs::create_dir_all(skel.join("upper")).expect("mkdir");
        std::fs::write(skel.join("home/runner/.bashrc"), "export A=1\n").expect("write");
        let runner = skel.join("home/runner");
        std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        // As root (CI and this host), the owner must survive too.
        let as_root = nix::unistd::geteuid().is_root();
        if as_root {
            nix::unistd::chown(&runner, Some(1001.into()), Some(1001.into())).expect("chown");
        }
        let p = d.path().join("scratch.ext4");
        create_scratch_from(&p, 1 << 30, Some(&skel)).expect("create");
        let debugfs = |req: &str| debugfs(&p, req);
        assert_eq!(debugfs("cat /home/runner/.bashrc"), "export A=1\n");
        let stat = debugfs("stat /home/runner");
        assert!(stat.contains("Mode:  0750"), "{stat}");
        if as_root {
            assert!(stat.contains("User:  1001"), "{stat}");
        }
        assert!(debugfs("ls -l /").contains("upper"));

        let q = d.path().join("other.ext4");
        let err = create_scratch_from(&q, 1 << 30, Some(&d.path().join("gone")))
            .expect_err("a missing skeleton fails");
        assert!(err.to_string().contains("cargo xtask image"), "{err}");
        assert!(!q.exists(), "a failed disk is removed");
    }

    #[test]
    fn refuses_existing_and_tiny() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("s");
        std::fs::write(&p, b"keep").expect("w");
        assert!(matches!(
            create_scratch(&p, 1 << 30),
            Err(ScratchError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&p).expect("r"), b"keep");
        let q = d.path().join("tiny");
        assert!(matches!(
            create_scratch(&q, 1 << 20),
            Err(ScratchError::TooSmall { .. })
        ));
        assert!(!q.exists());
    }
}
