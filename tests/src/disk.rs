//! ext4 images for the scratch-disk test, built with `mkfs.ext4 -d` and
//! read back with `debugfs`: no loop mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use xtask::initramfs::{self, Initramfs};

use crate::assets::{self, Assets};
use crate::prereq;

/// A base root filesystem: busybox, the accounts, the usual mount points.
/// kiln-init mounts it read-only as the overlay's lower layer.
pub fn base_image(dir: &Path, assets: &Assets) -> anyhow::Result<PathBuf> {
    base_image_with(dir, assets, &[])
}

/// [`base_image`] plus `files` (path, mode, content; parents 0755).
pub fn base_image_with(
    dir: &Path,
    assets: &Assets,
    files: &[(&str, u32, &str)],
) -> anyhow::Result<PathBuf> {
    let mut fs = Initramfs::new();
    for (d, perm) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("var", 0o755),
        ("etc", 0o755),
    ] {
        fs.dir(d, perm)?;
    }
    initramfs::add_busybox(&mut fs, &assets.busybox)?;
    assets::add_accounts(&mut fs)?;
    fs.file("etc/kiln-base", 0o644, "the base image\n")?;
    for (path, mode, content) in files {
        fs.file(path, *mode, *content)?;
    }
    let staging = dir.join("base-root");
    fs.unpack_to(&staging)?;
    let image = dir.join("base.ext4");
    mkfs(&image, "64M", Some(&staging))?;
    std::fs::remove_dir_all(&staging).with_context(|| staging.display().to_string())?;
    Ok(image)
}

/// An empty ext4 scratch disk.
pub fn scratch_disk(dir: &Path) -> anyhow::Result<PathBuf> {
    let image = dir.join("scratch.ext4");
    mkfs(&image, "256M", None)?;
    Ok(image)
}

fn mkfs(image: &Path, size: &str, from: Option<&Path>) -> anyhow::Result<()> {
    let mkfs = prereq::require(&prereq::MKFS_EXT4)?;
    let mut cmd = Command::new(mkfs);
    cmd.args(["-q", "-F", "-t", "ext4"]);
    if let Some(d) = from {
        cmd.arg("-d").arg(d);
    }
    let out = cmd.arg(image).arg(size).output()?;
    if !out.status.success() {
        bail!(
            "mkfs.ext4 {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn debugfs(image: &Path, request: &str) -> anyhow::Result<Vec<u8>> {
    let debugfs = prereq::require(&prereq::DEBUGFS)?;
    let out = Command::new(debugfs)
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()?;
    if !out.status.success() {
        bail!(
            "debugfs -R {request:?} {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Paths of every regular file named `name` on the ext4 `image`.
pub fn find_files(image: &Path, name: &str) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![String::from("/")];
    let mut visited = 0;
    while let Some(dir) = pending.pop() {
        visited += 1;
        if visited > 10_000 {
            bail!("{} has too many directories to search", image.display());
        }
        let listing =
            String::from_utf8_lossy(&debugfs(image, &format!("ls -p {dir}"))?).into_owned();
        // `ls -p` prints `/inode/mode/uid/gid/name/size/` per entry.
        for line in listing.lines() {
            let fields: Vec<&str> = line.split('/').collect();
            if fields.len() < 7 {
                continue;
            }
            let (mode, entry) = (fields[2], fields[5]);
            if entry == "." || entry == ".." || entry.is_empty() {
                continue;
            }
            let path = if dir == "/" {
                format!("/{entry}")
            } else {
                format!("{dir}/{entry}")
            };
            if mode.starts_with("04") {
                pending.push(path);
            } else if mode.starts_with("10") && entry == name {
                found.push(path);
            }
        }
    }
    Ok(found)
}

pub fn read_file(image: &Path, path: &str) -> anyhow::Result<Vec<u8>> {
    debugfs(image, &format!("cat {path}"))
}

pub fn sha256(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
