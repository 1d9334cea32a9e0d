//! The scratch disk's starting layout, cut from the finished root: the
//! overlay's `upper/` and `work/`, and copies of `/home` and
//! `/var/lib/containers` (kiln-init binds those from the scratch ext4 so
//! rootless podman's storage is not on overlayfs). The shim lays it onto
//! every VM's fresh scratch disk with `mkfs.ext4 -d`; without it kiln-init
//! builds the same layout in the guest, reading the base image at boot.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Command;

pub use kiln::vm::image::SCRATCH_SKELETON as DIR;

/// Directories of the root copied into the skeleton, and their names there
/// (kiln-init's `SCRATCH_BINDS`).
const COPIED: &[(&str, &str)] = &[("home", "home"), ("var/lib/containers", "containers")];

#[derive(Debug, thiserror::Error)]
pub enum SkeletonError {
    #[error("create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("copy {from} to {to}: {detail}")]
    Copy {
        from: String,
        to: String,
        detail: String,
    },
}

/// Writes the skeleton for `root` to `out` (which must not exist).
pub fn build(root: &Path, out: &Path) -> Result<(), SkeletonError> {
    for dir in [out, &out.join("upper"), &out.join("work")] {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(|source| SkeletonError::Create {
                path: dir.display().to_string(),
                source,
            })?;
    }
    for (from, name) in COPIED {
        let src = root.join(from);
        let dst = out.join(name);
        if !src.is_dir() {
            // kiln-init makes an empty one, as it would.
            continue;
        }
        // cp -a keeps owners, modes, links and timestamps, as mkfs -d then does.
        let result = Command::new("cp")
            .arg("-a")
            .arg("--no-target-directory")
            .arg(&src)
            .arg(&dst)
            .output();
        let failure = match result {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(detail) = failure {
            return Err(SkeletonError::Copy {
                from: src.display().to_string(),
                to: dst.display().to_string(),
                detail,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn lays_out_the_overlay_dirs_and_copies_home() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("home/runner")).unwrap();
        std::fs::write(root.join("home/runner/.bashrc"), "x").unwrap();
        std::fs::set_permissions(
            root.join("home/runner"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let out = d.path().join("skel");
        build(&root, &out).unwrap();
        for dir in ["upper", "work", "home/runner"] {
            assert!(out.join(dir).is_dir(), "{dir}");
        }
        assert_eq!(
            std::fs::read_to_string(out.join("home/runner/.bashrc")).unwrap(),
            "x"
        );
        let mode = std::fs::metadata(out.join("home/runner")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        // No /var/lib/containers in the root: none in the skeleton either.
        assert!(!out.join("containers").exists());
        // An existing output is refused, not merged into.
        let err = build(&root, &out).unwrap_err();
        assert!(err.to_string().contains("skel"), "{err}");
    }
}
