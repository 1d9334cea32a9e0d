//! Virtual machine monitors. Each backend starts one VM from a [`VmSpec`],
//! and the rest of the shim cannot tell them apart.
//!
//! - `qemu`: development, CI, hosts without Firecracker.
//! - `firecracker`: production, always through the jailer.
//! - [`uid_pool`]: the unprivileged uid each VM's VMM runs as.
//! - [`cgroup`]: a confined QEMU's own cgroup with the VM's limits.
//! - [`arch`]: the host's and a guest's CPU architecture.

pub mod arch;
pub mod cgroup;
pub mod firecracker;
pub mod kvm;
pub mod qemu;
pub mod spec;
pub mod uid_pool;

/// The `PATH` a VMM and its helpers get, and nothing else of kiln's
/// environment (which may name the App key, hold tokens or proxies).
pub const VMM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts `command` with an empty environment but for [`VMM_PATH`].
pub(crate) fn bare_environment(command: &mut tokio::process::Command) {
    command.env_clear().env("PATH", VMM_PATH);
}

pub use arch::Arch;
pub use spec::{NetAttach, VmSpec, VmSpecError};
pub use uid_pool::{UidError, UidLease, UidPool};
