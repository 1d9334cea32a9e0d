//! What a backend needs to boot one VM. Only non-secret settings live here:
//! secrets travel to the guest over vsock, never through a VMM's argv, API
//! or the kernel command line.

use std::path::PathBuf;

/// One VM, as every backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique per host: letters, digits and hyphens, at most 64 characters
    /// (the jailer's `--id` rules).
    pub id: String,
    /// The VM's own directory on the host: sockets, console log, scratch disk.
    /// Removed at teardown.
    pub dir: PathBuf,
    /// The guest kernel (bzImage or vmlinux on x86_64, Image on aarch64).
    pub kernel: PathBuf,
    /// The guest's architecture: the host's, or another one QEMU emulates.
    pub arch: super::Arch,
    /// An initramfs, for kernels that need modules before the root mounts.
    pub initrd: Option<PathBuf>,
    /// The shared base root filesystem, attached read-only.
    pub base_image: Option<PathBuf>,
    /// This VM's writable scratch disk (ext4), attached read-write.
    pub scratch_disk: Option<PathBuf>,
    /// Extra kernel arguments (never secrets). The backend adds the console
    /// and `reboot=k panic=1` itself.
    pub kernel_args: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The guest's vsock context id, at least 3.
    pub guest_cid: u32,
    /// eth0: a tap inside the VM's network namespace; `None`: no network
    /// device at all.
    pub net: Option<NetAttach>,
    /// The most bytes of serial console output kept; the rest is dropped.
    pub console_limit_bytes: u64,
}

/// Where a VM's network device attaches: tap `tap` in the network
/// namespace at `netns` (see [`crate::net`]). The VMM runs in that
/// namespace (Firecracker through the jailer's `--netns`, QEMU by joining
/// it before exec) and attaches to the tap by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetAttach {
    pub netns: PathBuf,
    pub tap: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmSpecError {
    #[error("VM id {id:?} must be 1 to 64 letters, digits or hyphens")]
    BadId { id: String },
    #[error("guest CID {cid} is reserved; use 3 or more")]
    BadCid { cid: u32 },
    #[error("vcpu count {vcpus} must be 1 or an even number up to 32")]
    BadVcpus { vcpus: u32 },
    #[error("memory {mib} MiB is below the 128 MiB a guest needs")]
    TooLittleMemory { mib: u32 },
    #[error("kernel argument {arg:?} contains whitespace or a control character")]
    BadKernelArg { arg: String },
}

impl VmSpec {
    pub fn validate(&self) -> Result<(), VmSpecError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !id_ok {
            return Err(VmSpecError::BadId {
                id: self.id.clone(),
            });
        }
        if self.guest_cid < 3 {
            return Err(VmSpecError::BadCid {
                cid: self.guest_cid,
            });
        }
        if !(self.vcpus == 1 || (self.vcpus.is_multiple_of(2) && (2..=32).contains(&self.vcpus))) {
            return Err(VmSpecError::BadVcpus { vcpus: self.vcpus });
        }
        if self.memory_mib < 128 {
            return Err(VmSpecError::TooLittleMemory {
                mib: self.memory_mib,
            });
        }
        if let Some(arg) = self
            .kernel_args
            .iter()
            .find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(VmSpecError::BadKernelArg { arg: arg.clone() });
        }
        Ok(())
    }
}
