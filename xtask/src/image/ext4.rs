//! The root directory as an ext4 image, built by `mkfs.ext4 -d` (no loop
//! mounts, no root-only mounts), written to a temporary name and renamed
//! into place only when complete.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// Bytes and inodes a directory tree needs, counted the way ext4 allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error(
        "the image is too small: {size_mib} MiB cannot hold the root's {content_mib} MiB \
         ({inodes} files); raise --size-mib or leave it out to size from the content"
    )]
    TooSmall {
        size_mib: u64,
        content_mib: u64,
        inodes: u64,
    },
    #[error("mkfs.ext4 is not installed (apt-get install e2fsprogs): {0}")]
    Missing(std::io::Error),
    #[error("mkfs.ext4 failed for {path}: {detail}")]
    Mkfs { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Walks `root` without crossing into other filesystems, counting 4 KiB
/// blocks for files (hard links once) and directories.
pub fn usage(root: &Path) -> Result<Usage, Ext4Error> {
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage {
        bytes: 0,
        inodes: 0,
    };
    walk(root, &mut seen, &mut u)?;
    Ok(u)
}

fn walk(
    path: &Path,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    u: &mut Usage,
) -> Result<(), Ext4Error> {
    let io = |source| Ext4Error::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    u.inodes += 1;
    u.bytes += meta.len().div_ceil(4096) * 4096;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            walk(&entry.map_err(io)?.path(), seen, u)?;
        }
    }
    Ok(())
}

/// Size for an image holding `u`: the content, 10 % for metadata (extent
/// trees, directories' growth, xattrs) and 32 MiB, in whole MiB. The base
/// image is mounted read-only, so it needs no room to grow.
pub fn auto_size_mib(u: Usage) -> u64 {
    let inode_tables = inode_count(u) * 256;
    (u.bytes + u.bytes / 10 + inode_tables + 32 * MIB).div_ceil(MIB)
}

fn inode_count(u: Usage) -> u64 {
    u.inodes + u.inodes / 5 + 1024
}

/// Options for [`make_image`].
#[derive(Debug, Clone)]
pub struct Ext4Options {
    pub size_mib: u64,
    pub label: String,
    /// Fixed UUID (and directory hash seed) so an unchanged root gives the
    /// same image metadata.
    pub uuid: String,
}

/// Builds `dest` from `root`. Until it succeeds, `dest` is untouched: the
/// image is made under a temporary name beside it, removed on any failure.
pub fn make_image(
    root: &Path,
    dest: &Path,
    usage: Usage,
    opts: &Ext4Options,
) -> Result<(), Ext4Error> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".rootfs.ext4.")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|source| Ext4Error::Io {
            path: dir.to_owned(),
            source,
        })?;
    let too_small = || Ext4Error::TooSmall {
        size_mib: opts.size_mib,
        content_mib: usage.bytes.div_ceil(MIB),
        inodes: usage.inodes,
    };
    tmp.as_file()
        .set_len(opts.size_mib * MIB)
        .map_err(|source| Ext4Error::Io {
            path: tmp.path().to_owned(),
            source,
        })?;
    let out = Command::new("mkfs.ext4")
        .args(["-F", "-q", "-b", "4096", "-m", "0"])
        // Mounted read-only as the overlay's lower layer: a journal would
        // only cost space.
        .args(["-O", "^has_journal"])
        .arg("-N")
        .arg(inode_count(usage).to_string())
        .arg("-L")
        .arg(&opts.label)
        .arg("-U")
        .arg(&opts.uuid)
        .arg("-E")
        .arg(format!("hash_seed={}", opts.uuid))
        .arg("-d")
        .arg(root)
        .arg(tmp.path())
        .output()
        .map_err(Ext4Error::Missing)?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        // `tmp` is deleted when dropped here.
        return Err(if is_space_error(&detail) {
            too_small()
        } else {
            Ext4Error::Mkfs {
                path: dest.to_owned(),
                detail,
            }
        });
    }
    // Read-only for everyone: VMs (and jailed VMMs) only read the base.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(
        |source| Ext4Error::Io {
            path: tmp.path().to_owned(),
            source,
        },
    )?;
    tmp.persist(dest).map_err(|e| Ext4Error::Io {
        path: dest.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// mkfs.ext4's ways of saying the content does not fit.
pub fn is_space_error(stderr: &str) -> bool {
    [
        "Could not allocate block",
        "Could not allocate inode",
        "No space left on device",
        "Cannot create filesystem with requested number of inodes",
        "too big for a filesystem with",
        "Filesystem too small",
    ]
    .iter()
    .any(|s| stderr.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: usize, size: usize) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        for i in 0..files {
            // Incompressible-ish content so nothing can be deduplicated.
            let data: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
            std::fs::write(d.path().join(format!("sub/f{i}")), data).expect("w");
        }
        d
    }

    fn opts(size_mib: u64) -> Ext4Options {
        Ext4Options {
            size_mib,
            label: "kiln-test".into(),
            uuid: "6e1c5b56-4a3b-4f59-8d59-5d3f0b7a1c11".into(),
        }
    }

    #[test]
    fn usage_counts_blocks_and_hard_links_once() {
        let d = tree(3, 5000);
        std::fs::hard_link(d.path().join("sub/f0"), d.path().join("link")).expect("link");
        let u = usage(d.path()).expect("usage");
        assert_eq!(u.inodes, 5); // root, sub, three files
        assert!(u.bytes >= 3 * 8192 + 2 * 4096, "{u:?}");
    }

    #[test]
    fn builds_an_image_sized_from_content() {
        let src = tree(20, 100_000);
        let out = tempfile::tempdir().expect("tempdir");
        let dest = out.path().join("rootfs.ext4");
        let u = usage(src.path()).expect("usage");
        make_image(src.path(), &dest, u, &opts(auto_size_mib(u))).expect("mkfs");
        assert_eq!(
            std::fs::metadata(&dest).expect("image").len(),
            auto_size_mib(u) * MIB
        );
        // Nothing else left beside it.
        assert_eq!(std::fs::read_dir(out.path()).expect("ls").count(), 1);
    }

    #[test]
    fn too_small_names_the_size_and_leaves_nothing() {
        let src = tree(12, 1_000_000);
        let out = tempfile::tempdir().expect("tempdir");
        let dest = out.path().join("rootfs.ext4");
        let u = usage(src.path()).expect("usage");
        let err = make_image(src.path(), &dest, u, &opts(8)).expect_err("12 MB into 8 MiB");
        let msg = err.to_string();
        assert!(
            matches!(err, Ext4Error::TooSmall { size_mib: 8, .. }),
            "{msg}"
        );
        assert!(msg.contains("8 MiB") && msg.contains("--size-mib"), "{msg}");
        assert_eq!(
            std::fs::read_dir(out.path()).expect("ls").count(),
            0,
            "partial image left behind"
        );
    }

    #[test]
    fn a_failed_build_keeps_the_previous_image() {
        let src = tree(12, 1_000_000);
        let out = tempfile::tempdir().expect("tempdir");
        let dest = out.path().join("rootfs.ext4");
        std::fs::write(&dest, b"previous good image").expect("w");
        let u = usage(src.path()).expect("usage");
        make_image(src.path(), &dest, u, &opts(8)).expect_err("too small");
        assert_eq!(std::fs::read(&dest).expect("r"), b"previous good image");
    }
}
