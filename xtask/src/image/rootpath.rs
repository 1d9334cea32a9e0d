//! Paths inside the guest root, resolved the way the guest will see them.
//!
//! The root is a directory on the host full of symlinks (`sbin -> usr/sbin`,
//! perhaps absolute ones). Following them with the host's view could write
//! outside the root, so links are resolved against the root, as in a chroot.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootPathError {
    #[error("too many symlinks resolving {rel} in {root}")]
    Loop { root: PathBuf, rel: PathBuf },
    #[error("cannot inspect {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Host path of `rel` inside `root`, every symlink on the way followed as
/// the guest would. The last component is followed too.
pub fn resolve(root: &Path, rel: &Path) -> Result<PathBuf, RootPathError> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = components(rel).into();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        let host = root.join(&candidate);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(RootPathError::Loop {
                        root: root.to_owned(),
                        rel: rel.to_owned(),
                    });
                }
                let target = std::fs::read_link(&host)
                    .map_err(|source| RootPathError::Io { path: host, source })?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for t in components(&target).into_iter().rev() {
                    pending.push_front(t);
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Host path at which to create `rel`: its parent resolved (and created as
/// root-owned 0755 directories where missing), the last component not
/// followed, and a symlink already there removed so a write replaces it.
pub fn for_writing(root: &Path, rel: &Path) -> Result<PathBuf, RootPathError> {
    let name = rel.file_name().ok_or_else(|| RootPathError::Io {
        path: rel.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
    })?;
    let parent = mkdir_p(root, rel.parent().unwrap_or(Path::new("")))?;
    let path = parent.join(name);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&path).map_err(|source| RootPathError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(path)
}

/// Creates `rel` and its missing parents inside `root`; returns its host path.
pub fn mkdir_p(root: &Path, rel: &Path) -> Result<PathBuf, RootPathError> {
    let mut so_far = PathBuf::new();
    for c in components(rel) {
        so_far.push(c);
        let host = resolve(root, &so_far)?;
        if !host.exists() {
            std::fs::create_dir(&host).map_err(|source| RootPathError::Io {
                path: host.clone(),
                source,
            })?;
        }
    }
    resolve(root, rel)
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/sbin")).expect("mkdir");
        symlink("usr/sbin", root.join("sbin")).expect("link");
        // An absolute link must land inside the root, not on the host.
        symlink("/usr/sbin", root.join("abs")).expect("link");
        symlink("../../etc", root.join("usr/sbin/up")).expect("link");
        assert_eq!(
            resolve(root, Path::new("sbin/init")).expect("r"),
            root.join("usr/sbin/init")
        );
        assert_eq!(
            resolve(root, Path::new("abs/init")).expect("r"),
            root.join("usr/sbin/init")
        );
        assert_eq!(
            resolve(root, Path::new("sbin/up/x")).expect("r"),
            root.join("etc/x")
        );
        // `..` never climbs above the root.
        assert_eq!(
            resolve(root, Path::new("../../x")).expect("r"),
            root.join("x")
        );
    }

    #[test]
    fn loops_are_reported() {
        let d = tempfile::tempdir().expect("tempdir");
        symlink("b", d.path().join("a")).expect("link");
        symlink("a", d.path().join("b")).expect("link");
        assert!(matches!(
            resolve(d.path(), Path::new("a/x")),
            Err(RootPathError::Loop { .. })
        ));
    }

    #[test]
    fn writing_replaces_a_final_symlink_and_creates_parents() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        std::fs::create_dir(root.join("etc")).expect("mkdir");
        symlink("/run/resolv.conf", root.join("etc/resolv.conf")).expect("link");
        let p = for_writing(root, Path::new("etc/resolv.conf")).expect("w");
        assert_eq!(p, root.join("etc/resolv.conf"));
        assert!(!p.exists() && std::fs::symlink_metadata(&p).is_err());
        let p = for_writing(root, Path::new("etc/a/b/c")).expect("w");
        assert!(root.join("etc/a/b").is_dir());
        assert_eq!(p, root.join("etc/a/b/c"));
    }
}
