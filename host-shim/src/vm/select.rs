//! Choosing the backend: Firecracker when it, its jailer and a KVM that can
//! run guests are present; QEMU otherwise (or as asked).
//!
//! "A KVM that can run guests" is more than `/dev/kvm` opening: on a nested,
//! paravirtualised host a guest kernel aborts the VMM. Where QEMU is
//! installed its probe boot answers that (cached per host boot, see
//! [`crate::vmm::qemu::accel`]); without QEMU, `/dev/kvm` answering the KVM
//! API is taken as enough.
//!
//! An image of another architecture than the host's runs only under QEMU's
//! emulation: `auto` then picks QEMU and says why, and Firecracker, asked
//! for by name, is refused.

use std::path::{Path, PathBuf};

use super::backend::{Backend, BackendChoice, BackendError};
use crate::vmm::firecracker::{Firecracker, FirecrackerSettings};
use crate::vmm::qemu::{accel, Accel, AccelChoice, Machine, QemuConfig};
use crate::vmm::Arch;

/// What the choice is made from.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub choice: BackendChoice,
    pub qemu: QemuConfig,
    /// Its binaries may be missing; `auto` then picks QEMU.
    pub firecracker: FirecrackerSettings,
    /// The guest kernel, for QEMU's KVM probe.
    pub kernel: PathBuf,
    /// The guest's architecture (the image's); the host's by default.
    pub arch: Arch,
}

impl BackendOptions {
    /// Defaults: QEMU from `KILN_ACCEL`, Firecracker and its jailer from
    /// `PATH` (or `/usr/local/bin`), jails under `/srv/jailer`.
    pub fn from_env(choice: BackendChoice, kernel: PathBuf) -> Result<Self, BackendError> {
        let find = |name: &str| find_program(name).unwrap_or_else(|| PathBuf::from(name));
        Ok(BackendOptions {
            choice,
            qemu: QemuConfig::from_env()?,
            firecracker: FirecrackerSettings::new(find("jailer"), find("firecracker")),
            kernel,
            arch: Arch::host(),
        })
    }
}

/// The backend and why it was chosen.
#[derive(Debug, Clone)]
pub struct Selected {
    pub backend: Backend,
    pub reason: String,
}

pub async fn select_backend(opts: &BackendOptions) -> Result<Selected, BackendError> {
    if !opts.arch.is_native() {
        return foreign(opts);
    }
    match opts.choice {
        BackendChoice::Qemu => Ok(Selected {
            backend: Backend::Qemu(opts.qemu.clone()),
            reason: "asked for".into(),
        }),
        BackendChoice::Firecracker => Ok(Selected {
            backend: Backend::Firecracker(Firecracker::new(opts.firecracker.clone())?),
            reason: "asked for".into(),
        }),
        BackendChoice::Auto => {
            let qemu = |why: String| Selected {
                backend: Backend::Qemu(opts.qemu.clone()),
                reason: why,
            };
            let fc = match Firecracker::new(opts.firecracker.clone()) {
                Ok(fc) => fc,
                Err(e) => return Ok(qemu(format!("Firecracker unusable: {e}"))),
            };
            match kvm_runs_guests(opts).await {
                Ok(why) => Ok(Selected {
                    backend: Backend::Firecracker(fc),
                    reason: why,
                }),
                Err(why) => Ok(qemu(format!("Firecracker present, but {why}"))),
            }
        }
    }
}

/// An image of another architecture: QEMU emulates it; Firecracker cannot.
fn foreign(opts: &BackendOptions) -> Result<Selected, BackendError> {
    let why = format!(
        "the image is {}, this host {}: only QEMU emulates another architecture",
        opts.arch,
        Arch::host()
    );
    match opts.choice {
        BackendChoice::Firecracker => Err(BackendError::ForeignArch {
            guest: opts.arch,
            host: Arch::host(),
        }),
        BackendChoice::Qemu | BackendChoice::Auto => Ok(Selected {
            backend: Backend::Qemu(opts.qemu.clone()),
            reason: why,
        }),
    }
}

async fn kvm_runs_guests(opts: &BackendOptions) -> Result<String, String> {
    let (program, tool) = opts.qemu.program(Arch::host());
    match crate::vmm::qemu::tools::find(tool, program, &[]) {
        Ok(qemu) => {
            let d = accel::decide(
                AccelChoice::Auto,
                &accel::Probe {
                    qemu,
                    kernel: opts.kernel.clone(),
                    machine: Machine::for_arch(opts.qemu.machine, Arch::host()),
                    kvm_device: opts.qemu.kvm_device.clone(),
                    timeout: opts.qemu.probe_timeout,
                    cache_file: opts.qemu.accel_cache.clone(),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            match d.accel {
                Accel::Kvm => Ok(format!("KVM runs guests ({})", d.reason)),
                Accel::Tcg => Err(d.reason),
            }
        }
        Err(_) => crate::vmm::kvm::check(&opts.qemu.kvm_device)
            .map(|d| d.to_string())
            .map_err(|e| e.to_string()),
    }
}

/// A program in `PATH` or `/usr/local/bin`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn auto_without_firecracker_is_qemu_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = BackendOptions {
            choice: BackendChoice::Auto,
            qemu: QemuConfig::default(),
            firecracker: FirecrackerSettings::new(
                dir.path().join("jailer"),
                dir.path().join("firecracker"),
            ),
            kernel: dir.path().join("vmlinuz"),
            arch: Arch::host(),
        };
        let s = select_backend(&opts).await.expect("select");
        assert_eq!(s.backend.name(), "qemu");
        assert!(s.reason.contains("jailer"), "{}", s.reason);
        let explicit = BackendOptions {
            choice: BackendChoice::Firecracker,
            ..opts
        };
        let err = select_backend(&explicit).await.expect_err("no firecracker");
        assert!(err.to_string().contains("jailer"), "{err}");
    }

    #[tokio::test]
    async fn a_foreign_image_is_qemu_or_refused_by_firecracker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = match Arch::host() {
            Arch::X86_64 => Arch::Aarch64,
            Arch::Aarch64 => Arch::X86_64,
        };
        let opts = BackendOptions {
            choice: BackendChoice::Auto,
            qemu: QemuConfig::default(),
            firecracker: FirecrackerSettings::new(
                dir.path().join("jailer"),
                dir.path().join("firecracker"),
            ),
            kernel: dir.path().join("vmlinuz"),
            arch: other,
        };
        let s = select_backend(&opts).await.expect("auto");
        assert_eq!(s.backend.name(), "qemu");
        assert!(s.reason.contains(other.name()), "{}", s.reason);
        let fc = BackendOptions {
            choice: BackendChoice::Firecracker,
            ..opts
        };
        let err = select_backend(&fc).await.expect_err("firecracker");
        let msg = err.to_string();
        assert!(
            msg.contains(other.name()) && msg.contains("backend = \"qemu\""),
            "{msg}"
        );
    }
}
