//! Firecracker, always through its jailer (production backend).
//!
//! Each VM gets its own uid/gid from a configured range (leased across
//! Kiln processes: [`crate::vmm::uid_pool`]), a chroot under
//! the chroot base, a cgroup v2 with its cpu and memory limits, and
//! optionally its own network namespace. Kernel and base image are
//! hard-linked into the jail, the scratch disk is owned by the jail's uid,
//! and the vsock sockets live inside the jail. Firecracker is configured
//! over its API socket; its serial console and its own log are copied,
//! bounded, into the VM's directory.
//!
//! - [`settings`]: host-wide settings.
//! - [`jailer`]: the jailer's argv, the jail layout, cgroup limits.
//! - [`config`]: the API requests derived from a [`VmSpec`].
//! - [`models`]: the request bodies, mirroring Firecracker's API spec.
//! - [`api`]: HTTP/1.1 over the API socket.
//! - `resources`: files and sockets placed into the jail.
//! - `vm`: one VM's life, from jail to teardown.

pub mod api;
pub mod config;
mod console;
mod error;
pub mod jailer;
pub mod models;
mod resources;
pub mod settings;
mod vm;

use std::sync::Arc;

pub use crate::vmm::uid_pool::{UidLease, UidPool};
pub use error::FirecrackerError;
pub use settings::FirecrackerSettings;
pub use vm::{FirecrackerVm, StartTimings, CONSOLE_LOG, VMM_LOG};

use super::VmSpec;

/// The Firecracker backend: builds jails and starts VMs in them.
#[derive(Debug, Clone)]
pub struct Firecracker {
    settings: Arc<FirecrackerSettings>,
    /// The file name of the Firecracker binary, which names jail directories.
    exec_name: String,
    uids: UidPool,
}

impl Firecracker {
    /// Checks the settings (binaries present, paths absolute, a usable uid
    /// range).
    pub fn new(settings: FirecrackerSettings) -> Result<Self, FirecrackerError> {
        let exec_name = settings.check()?;
        let uids = UidPool::new(&settings.uid_lease_dir, settings.uid_range.clone());
        Ok(Self {
            settings: Arc::new(settings),
            exec_name,
            uids,
        })
    }

    /// Fails unless `paths` (images, the disk directory) are on the chroot
    /// base's filesystem, where the jails hard-link them from.
    pub fn check_same_filesystem(
        &self,
        paths: &[&std::path::Path],
    ) -> Result<(), FirecrackerError> {
        resources::check_same_filesystem(&self.settings.chroot_base, paths)
    }

    pub fn settings(&self) -> &FirecrackerSettings {
        &self.settings
    }

    /// The jails' directory name below the chroot base: the canonical
    /// file name of the Firecracker binary.
    pub fn exec_name(&self) -> &str {
        &self.exec_name
    }

    /// Where the jail of VM `id` is (or would be).
    pub fn jail_layout(&self, id: &str) -> jailer::JailLayout {
        jailer::JailLayout::new(&self.settings.chroot_base, &self.exec_name, id)
    }

    /// How many uids this process's running VMs hold.
    pub fn uids_in_use(&self) -> usize {
        self.uids.in_use()
    }

    /// Builds the jail, starts the jailer, configures Firecracker and sends
    /// `InstanceStart`. The guest-to-host vsock listener is bound before the
    /// guest starts. On error nothing is left behind.
    pub async fn start(&self, spec: &VmSpec) -> Result<FirecrackerVm, FirecrackerError> {
        vm::start(&self.settings, &self.exec_name, &self.uids, spec).await
    }
}
