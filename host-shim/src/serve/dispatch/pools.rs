//! Each pool's image, opened once at start-up so a missing or broken image
//! stops `kiln serve` at once instead of failing every job.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::SetupError;
use crate::config::Pool;
use crate::vm::image::MANIFEST;
use crate::vm::Image;

/// A manifest is a few KiB (see [`crate::vm::image`]).
const MANIFEST_MAX: u64 = 16 << 20;

/// What a pool's VMs boot, checked.
#[derive(Debug, Clone)]
pub struct PoolImage {
    pub image: Image,
    /// The gid that grants sudo in the guest (`kiln-sudo`), added to the
    /// runner's groups when the pool has `sudo = true`.
    pub sudo_gid: Option<u32>,
    /// The pool's memory in the VM layer's unit.
    pub memory_mib: u32,
}

/// The parts of `manifest.json` the VM layer does not read.
#[derive(Deserialize, Default)]
struct Extras {
    #[serde(default)]
    accounts: Option<Accounts>,
    /// `"group"` (sudo through the group) or `"always"` (`--sudo` image).
    #[serde(default)]
    sudo: Option<String>,
    /// `null` for a `--no-runner` image.
    #[serde(default)]
    runner: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Accounts {
    #[serde(default)]
    sudo_gid: Option<u32>,
}

impl PoolImage {
    /// Opens `pool`'s image; `config` is the config file, for messages.
    pub fn open(pool: &Pool, config: &Path) -> Result<Self, SetupError> {
        let image = Image::open(&pool.image).map_err(|source| SetupError::Image {
            pool: pool.name.clone(),
            config: config.to_owned(),
            source,
        })?;
        let manifest = image.dir.join(MANIFEST);
        let extras = read_extras(&manifest).map_err(|problem| SetupError::Manifest {
            pool: pool.name.clone(),
            path: manifest.clone(),
            problem,
        })?;
        let sudo_gid = extras.accounts.and_then(|a| a.sudo_gid);
        if pool.sudo && sudo_gid.is_none() {
            return Err(SetupError::NoSudoGroup {
                pool: pool.name.clone(),
                manifest,
            });
        }
        if !pool.sudo && extras.sudo.as_deref() == Some("always") {
            tracing::warn!(
                pool = %pool.name,
                image = %image.dir.display(),
                "the pool has sudo = false, but its image was built with --sudo: its jobs get sudo anyway"
            );
        }
        if extras
            .runner
            .as_ref()
            .is_some_and(serde_json::Value::is_null)
        {
            tracing::warn!(
                pool = %pool.name,
                image = %image.dir.display(),
                "the pool's image was built without the actions runner (--no-runner): its jobs will fail"
            );
        }
        let memory_mib = u32::try_from(pool.memory_mib).map_err(|_| SetupError::Memory {
            pool: pool.name.clone(),
            memory_mib: pool.memory_mib,
        })?;
        Ok(PoolImage {
            image,
            sudo_gid: if pool.sudo { sudo_gid } else { None },
            memory_mib,
        })
    }
}

fn read_extras(path: &PathBuf) -> Result<Extras, String> {
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MANIFEST_MAX).read_to_end(&mut text))
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(image: &Path, sudo: bool) -> Pool {
        Pool {
            name: "small".into(),
            labels: vec!["self-hosted".into()],
            vcpus: 2,
            memory_mib: 2048,
            scratch_gib: 20,
            image: image.to_owned(),
            sudo,
            max_vms: None,
            job_timeout: Duration::from_secs(60),
        }
    }

    fn image_dir(dir: &Path, manifest: &str) -> PathBuf {
        let img = dir.join("image");
        std::fs::create_dir_all(&img).expect("mkdir");
        for f in ["rootfs.ext4", "vmlinuz", "initrd"] {
            std::fs::write(img.join(f), b"x").expect("write");
        }
        std::fs::write(img.join(MANIFEST), manifest).expect("write");
        img
    }

    #[test]
    fn a_missing_image_names_the_pool_the_dir_and_the_fix() {
        let d = tempfile::tempdir().expect("tempdir");
        let gone = d.path().join("nope");
        let err = PoolImage::open(&pool(&gone, false), Path::new("/etc/kiln/config.toml"))
            .expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("pool \"small\""), "{msg}");
        assert!(msg.contains(&gone.display().to_string()), "{msg}");
        assert!(msg.contains("cargo xtask image"), "{msg}");
        assert!(msg.contains("/etc/kiln/config.toml"), "{msg}");
    }

    #[test]
    fn sudo_takes_the_manifests_group_and_needs_one() {
        let d = tempfile::tempdir().expect("tempdir");
        let with = image_dir(
            d.path(),
            r#"{"format":1,"accounts":{"user":"runner","uid":1001,"gid":1001,"home":"/home/runner","sudo_group":"kiln-sudo","sudo_gid":1100}}"#,
        );
        let cfg = Path::new("c.toml");
        let p = PoolImage::open(&pool(&with, true), cfg).expect("open");
        assert_eq!(p.sudo_gid, Some(1100));
        assert_eq!(p.memory_mib, 2048);
        let p = PoolImage::open(&pool(&with, false), cfg).expect("open");
        assert_eq!(p.sudo_gid, None);

        let d2 = tempfile::tempdir().expect("tempdir");
        let without = image_dir(d2.path(), r#"{"format":1}"#);
        assert!(PoolImage::open(&pool(&without, false), cfg).is_ok());
        let err = PoolImage::open(&pool(&without, true), cfg).expect_err("no sudo gid");
        assert!(err.to_string().contains("sudo_gid"), "{err}");
    }
}
