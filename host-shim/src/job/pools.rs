//! Each pool's image, opened once at start-up so a missing or broken image
//! stops `kiln serve` at once instead of failing every job. A pool's `sudo`
//! must be one its image can keep: `sudo = true` needs the image's sudo
//! group, and `sudo = false` refuses an image built with `--sudo` (where
//! every job has sudo, whatever the pool says). An image of another
//! architecture than the host's runs only emulated: the pool must say
//! `emulate = true`, and then its VMs are logged as emulated.

use std::path::Path;

use super::error::SetupError;
use crate::config::Pool;
use crate::vm::image::MANIFEST;
use crate::vm::Image;

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

impl PoolImage {
    /// Opens `pool`'s image; `config` is the config file, for messages.
    pub fn open(pool: &Pool, config: &Path) -> Result<Self, SetupError> {
        let image = Image::open(&pool.image).map_err(|source| SetupError::Image {
            pool: pool.name.clone(),
            config: config.to_owned(),
            source,
        })?;
        check_arch(pool, &image)?;
        if pool.sudo && image.sudo_gid.is_none() {
            return Err(SetupError::NoSudoGroup {
                pool: pool.name.clone(),
                manifest: image.dir.join(MANIFEST),
            });
        }
        if !pool.sudo && image.sudo_always {
            return Err(SetupError::SudoAlways {
                pool: pool.name.clone(),
                image: image.dir.clone(),
                manifest: image.dir.join(MANIFEST),
            });
        }
        if image.without_runner {
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
            sudo_gid: if pool.sudo { image.sudo_gid } else { None },
            image,
            memory_mib,
        })
    }
}

/// Under Firecracker, which runs only the host's architecture: every
/// pool's image is of the host's (checked at start-up, not at each job).
pub fn only_native(pools: &std::collections::HashMap<String, PoolImage>) -> Result<(), SetupError> {
    let mut names: Vec<&String> = pools.keys().collect();
    names.sort();
    for name in names {
        let arch = pools[name].image.boot.arch;
        if !arch.is_native() {
            return Err(SetupError::EmulatedOnFirecracker {
                pool: name.clone(),
                image_arch: arch,
            });
        }
    }
    Ok(())
}

/// A foreign image only with `emulate = true`, and then with a warning.
fn check_arch(pool: &Pool, image: &Image) -> Result<(), SetupError> {
    let arch = image.boot.arch;
    if arch.is_native() {
        return Ok(());
    }
    if !pool.emulate {
        return Err(SetupError::ForeignArch {
            pool: pool.name.clone(),
            image: image.dir.clone(),
            image_arch: arch,
            host_arch: crate::vmm::Arch::host(),
        });
    }
    tracing::warn!(
        pool = %pool.name,
        image_arch = arch.name(),
        host_arch = crate::vmm::Arch::host().name(),
        "the pool's VMs are emulated (emulate = true): many times slower than native"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
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
            idle_timeout: Duration::from_secs(60),
            max_retries: None,
            emulate: false,
            network: Default::default(),
            allow: Vec::new(),
            proxy: None,
            source: Default::default(),
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

    #[test]
    fn a_foreign_image_needs_emulate_and_the_error_names_both_arches() {
        let d = tempfile::tempdir().expect("tempdir");
        let host = crate::vmm::Arch::host();
        let other = match host {
            crate::vmm::Arch::X86_64 => crate::vmm::Arch::Aarch64,
            crate::vmm::Arch::Aarch64 => crate::vmm::Arch::X86_64,
        };
        let img = image_dir(
            d.path(),
            &format!(r#"{{"format":1,"arch":"{}"}}"#, other.debian()),
        );
        let cfg = Path::new("c.toml");
        let err = PoolImage::open(&pool(&img, false), cfg).expect_err("foreign");
        let msg = err.to_string();
        assert!(msg.contains("pool \"small\""), "{msg}");
        assert!(
            msg.contains(other.name()) && msg.contains(host.name()),
            "{msg}"
        );
        assert!(msg.contains("emulate = true"), "{msg}");
        let emulated = Pool {
            emulate: true,
            ..pool(&img, false)
        };
        let p = PoolImage::open(&emulated, cfg).expect("emulate = true");
        assert_eq!(p.image.boot.arch, other);
        // Firecracker runs none of it.
        let pools = std::collections::HashMap::from([("small".to_owned(), p)]);
        let err = only_native(&pools).expect_err("firecracker");
        let msg = err.to_string();
        assert!(
            msg.contains("pool \"small\"") && msg.contains("backend = \"qemu\""),
            "{msg}"
        );
        // The host's own arch needs nothing.
        let native = image_dir(
            d.path(),
            &format!(r#"{{"format":1,"arch":"{}"}}"#, host.debian()),
        );
        assert!(PoolImage::open(&pool(&native, false), cfg).is_ok());
    }

    #[test]
    fn sudo_false_refuses_an_image_built_with_sudo() {
        let d = tempfile::tempdir().expect("tempdir");
        let always = image_dir(d.path(), r#"{"format":1,"sudo":"always"}"#);
        let cfg = Path::new("c.toml");
        let err = PoolImage::open(&pool(&always, false), cfg).expect_err("sudo = false");
        assert!(
            matches!(&err, SetupError::SudoAlways { pool, image, .. } if pool == "small" && *image == always),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("--sudo"), "{msg}");
        assert!(msg.contains("sudo = true"), "{msg}");
        // The pool that asks for sudo may have it.
        let with_group = image_dir(
            d.path(),
            r#"{"format":1,"sudo":"always","accounts":{"user":"runner","uid":1001,"gid":1001,"home":"/home/runner","sudo_group":"kiln-sudo","sudo_gid":1100}}"#,
        );
        assert!(PoolImage::open(&pool(&with_group, true), cfg).is_ok());
    }
}
