//! `manifest.json`: what an image directory holds and how it was made. It is
//! written last, so an image directory without it is incomplete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::accounts::Accounts;

pub const FILE_NAME: &str = "manifest.json";
/// Bumped when the manifest's meaning changes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The cache key: hash of the recipe, the options and every input.
    pub recipe_hash: String,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    pub suite: String,
    pub arch: String,
    pub mirrors: Vec<String>,
    /// File name in the image directory -> size and sha256.
    pub artifacts: BTreeMap<String, Artifact>,
    pub rootfs: RootfsInfo,
    pub kiln_init: Component,
    /// `None` for a `--no-runner` test image.
    pub runner: Option<Component>,
    pub kernel: Option<KernelInfo>,
    pub accounts: Accounts,
    /// `"group"`: sudo only when the Job adds the sudo group; `"always"`:
    /// built with `--sudo`.
    pub sudo: String,
    /// Installed Debian packages and their versions.
    pub packages: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsInfo {
    /// Bytes the root's files occupy (4 KiB blocks).
    pub content_bytes: u64,
    pub files: u64,
    pub image_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// `uname -r` of the guest kernel.
    pub release: String,
    /// What to pass as `kiln.modules=` (empty for a kernel with all built in).
    pub modules: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes atomically (temporary name, then rename).
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: path.to_owned(),
            source,
        };
        let mut text = serde_json::to_vec_pretty(self).map_err(|source| ManifestError::Parse {
            path: path.to_owned(),
            source,
        })?;
        text.push(b'\n');
        let tmp = path.with_extension("json.partial");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// Installed packages from a root's `var/lib/dpkg/status` (read directly,
/// no chroot): name (with `:arch` for foreign ones) -> version.
pub fn installed_packages(status: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in status.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        let mut arch = None;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            let key = match arch {
                Some(a) if a != "all" && out.contains_key(n) => format!("{n}:{a}"),
                _ => n.to_owned(),
            };
            out.insert(key, v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_installed_packages_only() {
        let status = "Package: podman\nStatus: install ok installed\nArchitecture: amd64\nVersion: 4.3.1+ds1-8+b1\nDescription: x\n multi\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2025b-0+deb12u1\n";
        let p = installed_packages(status);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p["podman"], "4.3.1+ds1-8+b1");
        assert_eq!(p["tzdata"], "2025b-0+deb12u1");
    }

    #[test]
    fn round_trips() {
        let m = Manifest {
            format: FORMAT,
            recipe_hash: "ab".into(),
            built_at: 1,
            suite: "bookworm".into(),
            arch: "amd64".into(),
            mirrors: vec!["http://m.example/debian".into()],
            artifacts: BTreeMap::from([(
                "rootfs.ext4".into(),
                Artifact {
                    size: 3,
                    sha256: "cd".into(),
                },
            )]),
            rootfs: RootfsInfo {
                content_bytes: 1,
                files: 2,
                image_bytes: 3,
            },
            kiln_init: Component {
                version: "0.1.0".into(),
                sha256: "ef".into(),
            },
            runner: None,
            kernel: None,
            accounts: Accounts::default(),
            sudo: "group".into(),
            packages: BTreeMap::new(),
        };
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join(FILE_NAME);
        m.write(&p).expect("write");
        assert_eq!(Manifest::read(&p).expect("read"), m);
        std::fs::write(&p, "{").expect("w");
        assert!(Manifest::read(&p).is_err());
    }
}
