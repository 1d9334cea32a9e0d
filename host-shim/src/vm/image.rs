//! The image directory `cargo xtask image` writes: `rootfs.ext4` (the
//! shared, read-only base), `vmlinuz`, `initrd`, and `manifest.json`
//! (written last, so a directory without it is incomplete). Only what the
//! host needs is read from the manifest: the guest kernel's module list,
//! the runner account, and the architecture (`amd64` or `arm64`; an older
//! manifest without one is the host's).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::request::{BootImage, ModuleSet};

pub const ROOTFS: &str = "rootfs.ext4";
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd";
pub const MANIFEST: &str = "manifest.json";
/// Optional: the scratch disk's starting layout (`cargo xtask image`
/// writes it; see [`crate::disk::create_scratch_from`]).
pub const SCRATCH_SKELETON: &str = "scratch-skel";
/// The manifest format this shim understands.
pub const MANIFEST_FORMAT: u32 = 1;
/// A manifest is a few KiB; anything far larger is not one.
const MANIFEST_MAX: u64 = 16 << 20;

const BUILD_HINT: &str = "build it with `cargo xtask image` (or pass --image DIR)";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image directory {dir} does not exist: {BUILD_HINT}")]
    Missing { dir: PathBuf },
    #[error("image directory {dir} lacks {missing}: {BUILD_HINT}")]
    Incomplete { dir: PathBuf, missing: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid image manifest ({source}): rebuild it with `cargo xtask image`"
    )]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}: rebuild the image with `cargo xtask image --arch amd64|arm64`")]
    Arch {
        path: PathBuf,
        #[source]
        source: crate::vmm::arch::ArchError,
    },
    #[error("{path} has manifest format {found}; this kiln reads format {MANIFEST_FORMAT}: rebuild the image with this checkout's `cargo xtask image`")]
    Format { path: PathBuf, found: u32 },
}

/// The account jobs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl Default for ImageUser {
    /// The account `cargo xtask image` creates.
    fn default() -> Self {
        ImageUser {
            name: "runner".into(),
            uid: 1001,
            gid: 1001,
            home: "/home/runner".into(),
        }
    }
}

/// A checked image directory.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub boot: BootImage,
    pub user: ImageUser,
    /// `uname -r` of the guest kernel, when the manifest says.
    pub kernel_release: Option<String>,
    /// The gid that grants sudo in the guest (`kiln-sudo`), when the
    /// manifest names one.
    pub sudo_gid: Option<u32>,
    /// Built with `--sudo`: every job gets sudo, whatever its pool says.
    pub sudo_always: bool,
    /// Built with `--no-runner` (the manifest's `runner` is `null`): the
    /// actions runner is not in it.
    pub without_runner: bool,
}

#[derive(Deserialize)]
struct ManifestView {
    format: u32,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    kernel: Option<KernelView>,
    #[serde(default)]
    accounts: Option<AccountsView>,
    /// `"group"` (sudo through the group) or `"always"`.
    #[serde(default)]
    sudo: Option<String>,
    /// Absent (an older manifest), `null` (no runner), or the runner.
    #[serde(default, deserialize_with = "present")]
    runner: Option<Option<serde::de::IgnoredAny>>,
}

/// Tells a field set to `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct KernelView {
    release: String,
    #[serde(default)]
    modules: Vec<String>,
}

#[derive(Deserialize)]
struct AccountsView {
    user: String,
    uid: u32,
    gid: u32,
    home: String,
    #[serde(default)]
    sudo_gid: Option<u32>,
}

impl Image {
    /// Checks that `dir` holds a complete image and reads its manifest.
    pub fn open(dir: &Path) -> Result<Image, ImageError> {
        if !dir.is_dir() {
            return Err(ImageError::Missing {
                dir: dir.to_owned(),
            });
        }
        let missing: Vec<&str> = [ROOTFS, KERNEL, INITRD, MANIFEST]
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(ImageError::Incomplete {
                dir: dir.to_owned(),
                missing: missing.join(", "),
            });
        }
        let path = dir.join(MANIFEST);
        let io = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let mut text = Vec::new();
        std::fs::File::open(&path)
            .map_err(io)?
            .take(MANIFEST_MAX)
            .read_to_end(&mut text)
            .map_err(io)?;
        let m: ManifestView =
            serde_json::from_slice(&text).map_err(|source| ImageError::Manifest {
                path: path.clone(),
                source,
            })?;
        if m.format != MANIFEST_FORMAT {
            return Err(ImageError::Format {
                path,
                found: m.format,
            });
        }
        let arch = match &m.arch {
            Some(a) => a.parse().map_err(|source| ImageError::Arch {
                path: path.clone(),
                source,
            })?,
            None => crate::vmm::Arch::host(),
        };
        let sudo_gid = m.accounts.as_ref().and_then(|a| a.sudo_gid);
        let user = m
            .accounts
            .map(|a| ImageUser {
                name: a.user,
                uid: a.uid,
                gid: a.gid,
                home: a.home,
            })
            .unwrap_or_default();
        let (modules, kernel_release) = match m.kernel {
            Some(k) => (ModuleSet::Listed(k.modules), Some(k.release)),
            None => (ModuleSet::Unknown, None),
        };
        Ok(Image {
            dir: dir.to_owned(),
            boot: BootImage {
                kernel: dir.join(KERNEL),
                arch,
                initrd: Some(dir.join(INITRD)),
                base_image: Some(dir.join(ROOTFS)),
                modules,
                // Images from before the skeleton existed still boot:
                // kiln-init lays the scratch disk out itself.
                scratch_skeleton: Some(dir.join(SCRATCH_SKELETON)).filter(|d| d.is_dir()),
            },
            user,
            kernel_release,
            sudo_gid,
            sudo_always: m.sudo.as_deref() == Some("always"),
            without_runner: matches!(m.runner, Some(None)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_all(dir: &Path, manifest: &str) {
        for f in [ROOTFS, KERNEL, INITRD] {
            std::fs::write(dir.join(f), b"x").expect("write");
        }
        std::fs::write(dir.join(MANIFEST), manifest).expect("write");
    }

    #[test]
    fn missing_and_incomplete_directories_name_the_fix() {
        let d = tempfile::tempdir().expect("tempdir");
        let gone = d.path().join("nope");
        let err = Image::open(&gone).expect_err("missing");
        assert!(err.to_string().contains("cargo xtask image"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        std::fs::write(d.path().join(KERNEL), b"k").expect("write");
        let err = Image::open(d.path()).expect_err("incomplete");
        let msg = err.to_string();
        assert!(
            msg.contains("lacks rootfs.ext4, initrd, manifest.json")
                && msg.contains("cargo xtask image"),
            "{msg}"
        );
    }

    #[test]
    fn reads_modules_and_account() {
        let d = tempfile::tempdir().expect("tempdir");
        write_all(
            d.path(),
            r#"{"format":1,"suite":"bookworm","kernel":{"release":"6.1.0-56-cloud-amd64","modules":["virtio","vsock"]},
               "accounts":{"user":"builder","uid":2000,"gid":2001,"home":"/home/builder","sudo_group":"s","sudo_gid":1}}"#,
        );
        let img = Image::open(d.path()).expect("open");
        assert_eq!(
            img.boot.modules,
            ModuleSet::Listed(vec!["virtio".into(), "vsock".into()])
        );
        assert_eq!(img.user.uid, 2000);
        assert_eq!(img.user.gid, 2001);
        assert_eq!(img.user.name, "builder");
        assert_eq!(img.boot.base_image, Some(d.path().join(ROOTFS)));
        assert_eq!(img.kernel_release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(img.sudo_gid, Some(1));
        assert!(!img.sudo_always);
        assert!(!img.without_runner, "no runner key: an older manifest");
    }

    #[test]
    fn sudo_mode_and_a_missing_runner_are_read() {
        let d = tempfile::tempdir().expect("tempdir");
        write_all(d.path(), r#"{"format":1,"sudo":"always","runner":null}"#);
        let img = Image::open(d.path()).expect("open");
        assert!(img.sudo_always);
        assert!(img.without_runner);
        assert_eq!(img.sudo_gid, None);
        write_all(
            d.path(),
            r#"{"format":1,"sudo":"group","runner":{"version":"2.321.0","sha256":"ab"}}"#,
        );
        let img = Image::open(d.path()).expect("open");
        assert!(!img.sudo_always);
        assert!(!img.without_runner);
    }

    #[test]
    fn defaults_and_bad_manifests() {
        let d = tempfile::tempdir().expect("tempdir");
        write_all(d.path(), r#"{"format":1}"#);
        let img = Image::open(d.path()).expect("open");
        assert_eq!(img.user, ImageUser::default());
        assert_eq!(img.boot.arch, crate::vmm::Arch::host());
        assert_eq!(img.boot.modules, ModuleSet::Unknown);
        write_all(d.path(), r#"{"format":7}"#);
        assert!(matches!(
            Image::open(d.path()),
            Err(ImageError::Format { found: 7, .. })
        ));
        write_all(d.path(), r#"{"format":1,"arch":"arm64"}"#);
        let img = Image::open(d.path()).expect("open");
        assert_eq!(img.boot.arch, crate::vmm::Arch::Aarch64);
        write_all(d.path(), r#"{"format":1,"arch":"mips"}"#);
        let err = Image::open(d.path()).expect_err("unknown arch");
        assert!(err.to_string().contains("\"mips\""), "{err}");
        write_all(d.path(), "not json");
        let err = Image::open(d.path()).expect_err("bad");
        assert!(err.to_string().contains("manifest.json"), "{err}");
    }
}
