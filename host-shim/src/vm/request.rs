//! What to boot and what to run in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_protocol::Job;

use super::backend::ConsoleMode;

/// Which kernel modules the guest kernel can load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ModuleSet {
    /// Not known: ask for every module the backend's devices need.
    #[default]
    Unknown,
    /// Exactly these are available (an empty list: everything is built in).
    Listed(Vec<String>),
}

impl ModuleSet {
    /// Of the modules `needed` (in load order), those to ask kiln-init for.
    pub fn select<'a>(&self, needed: &[&'a str]) -> Vec<&'a str> {
        match self {
            ModuleSet::Unknown => needed.to_vec(),
            ModuleSet::Listed(have) => needed
                .iter()
                .copied()
                .filter(|n| have.iter().any(|h| h == n))
                .collect(),
        }
    }
}

/// The kernel, initramfs and base root filesystem to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    pub kernel: PathBuf,
    /// The guest's architecture (from the image's manifest).
    pub arch: crate::vmm::Arch,
    pub initrd: Option<PathBuf>,
    /// Shared read-only by every VM; kiln-init's lower layer.
    pub base_image: Option<PathBuf>,
    pub modules: ModuleSet,
    /// Laid onto each VM's fresh scratch disk (see
    /// [`crate::disk::create_scratch_from`]); `None`: kiln-init builds the
    /// layout itself.
    pub scratch_skeleton: Option<PathBuf>,
}

/// Bounds on each wait of a VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the VMM's start until the guest connects (the whole boot).
    pub boot: Duration,
    /// From the guest's connection to its `Hello`.
    pub hello: Duration,
    /// For writing one message to the guest.
    pub write: Duration,
    /// Past the job's deadline and grace period, for the guest to report
    /// its end (then the VM is killed).
    pub end_slack: Duration,
    /// Past the grace period of a `Cancel`, for the guest to report the
    /// job's end (then the VM is killed).
    pub cancel_slack: Duration,
    /// From the job's end until the VMM exits by itself (then it is killed).
    pub exit: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            boot: Duration::from_secs(120),
            hello: Duration::from_secs(10),
            write: Duration::from_secs(10),
            end_slack: Duration::from_secs(30),
            cancel_slack: Duration::from_secs(10),
            exit: Duration::from_secs(30),
        }
    }
}

/// One VM, one job.
#[derive(Debug, Clone)]
pub struct VmRequest {
    pub boot: BootImage,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// A fresh scratch disk of this many bytes (kiln-init's overlay upper
    /// layer and `/home`); `None` for none.
    pub scratch_bytes: Option<u64>,
    /// Extra kernel arguments, never secrets; after the layer's own.
    pub kernel_args: Vec<String>,
    /// The job; its `network` and `dns` are filled in from the VM's
    /// network when `network` is set.
    pub job: Job,
    /// The VM's network (see [`crate::net`]); `None`: no network device.
    pub network: Option<crate::net::NetRequest>,
    pub console: ConsoleMode,
    /// The most console output kept in the log.
    pub console_limit_bytes: u64,
    /// The most job output (stdout and stderr) accepted from the guest;
    /// `None`: no cap (`kiln run`, whose user owns both ends).
    pub max_output_bytes: Option<u64>,
    /// `Cancel`'s grace period: SIGTERM to SIGKILL in the guest.
    pub cancel_grace: Duration,
    pub timeouts: Timeouts,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{what} {path} does not exist")]
    FileMissing { what: &'static str, path: PathBuf },
    #[error("the job is invalid: {0}")]
    Job(#[from] kiln_protocol::JobError),
    #[error(transparent)]
    Spec(#[from] crate::vmm::VmSpecError),
    #[error("a scratch disk of {bytes} bytes is below the minimum of {} MiB", crate::disk::MIN_SIZE >> 20)]
    ScratchTooSmall { bytes: u64 },
}

impl VmRequest {
    /// One vCPU, 512 MiB, no scratch disk, the default bounds.
    pub fn new(boot: BootImage, job: Job) -> Self {
        VmRequest {
            boot,
            vcpus: 1,
            memory_mib: 512,
            scratch_bytes: None,
            kernel_args: Vec::new(),
            job,
            network: None,
            console: ConsoleMode::Log,
            console_limit_bytes: 1 << 20,
            max_output_bytes: Some(256 << 20),
            cancel_grace: Duration::from_secs(10),
            timeouts: Timeouts::default(),
        }
    }

    /// Checks what can be checked before anything is made.
    pub fn check(&self) -> Result<(), RequestError> {
        let need = |what, p: &Path| {
            if p.is_file() {
                Ok(())
            } else {
                Err(RequestError::FileMissing {
                    what,
                    path: p.to_owned(),
                })
            }
        };
        // The VM's own rules (vCPUs, memory, kernel arguments), checked on a
        // stand-in spec so a bad value fails before anything is made.
        crate::vmm::VmSpec {
            id: "check".into(),
            dir: PathBuf::new(),
            kernel: self.boot.kernel.clone(),
            arch: self.boot.arch,
            initrd: None,
            base_image: None,
            scratch_disk: None,
            kernel_args: self.kernel_args.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            guest_cid: 3,
            net: None,
            console_limit_bytes: self.console_limit_bytes,
        }
        .validate()?;
        if let Some(bytes) = self.scratch_bytes {
            if bytes < crate::disk::MIN_SIZE {
                return Err(RequestError::ScratchTooSmall { bytes });
            }
        }
        need("guest kernel", &self.boot.kernel)?;
        if let Some(p) = &self.boot.initrd {
            need("initrd", p)?;
        }
        if let Some(p) = &self.boot.base_image {
            need("base image", p)?;
        }
        self.job.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_fail_the_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"k").expect("kernel");
        let boot = BootImage {
            kernel,
            arch: crate::vmm::Arch::host(),
            initrd: None,
            base_image: None,
            modules: ModuleSet::Unknown,
            scratch_skeleton: None,
        };
        let job = kiln_protocol::Job {
            protocol_version: kiln_protocol::PROTOCOL_VERSION,
            command: kiln_protocol::CommandSpec {
                program: "true".into(),
                args: vec![],
            },
            env: vec![],
            user: kiln_protocol::UserSpec {
                name: "runner".into(),
                uid: 1001,
                gid: 1001,
                groups: vec![],
                home: "/home/runner".into(),
            },
            workdir: "/home/runner".into(),
            hostname: "kiln".into(),
            dns: vec![],
            network: None,
            clock: kiln_protocol::WallClock::now(),
            entropy: vec![7; 32],
            rlimits: vec![],
            deadline_ms: 1000,
            grace_ms: 1000,
        };
        let ok = VmRequest::new(boot, job);
        assert!(ok.check().is_ok());
        let mut r = ok.clone();
        r.vcpus = 3;
        assert!(r
            .check()
            .expect_err("3 vcpus")
            .to_string()
            .contains("vcpu count 3"));
        let mut r = ok.clone();
        r.memory_mib = 64;
        assert!(r.check().is_err());
        let mut r = ok.clone();
        r.scratch_bytes = Some(0);
        let err = r.check().expect_err("tiny disk").to_string();
        assert!(err.contains("0 bytes") && err.contains("64 MiB"), "{err}");
        let mut r = ok;
        r.kernel_args = vec!["a b".into()];
        assert!(r.check().is_err());
    }

    #[test]
    fn module_selection() {
        let needed = ["virtio", "virtio_mmio", "vsock"];
        assert_eq!(ModuleSet::Unknown.select(&needed), needed);
        assert!(ModuleSet::Listed(vec![]).select(&needed).is_empty());
        assert_eq!(
            ModuleSet::Listed(vec!["vsock".into(), "virtio".into(), "tun".into()]).select(&needed),
            ["virtio", "vsock"]
        );
    }
}
