//! Everything one VM holds on the host, and its removal.
//!
//! [`VmGuard::teardown`] is the orderly path, taken after success and
//! after every error: stop the VMM (waiting for the guest to power off, or
//! killing it), reap its processes, remove the backend's jail and cgroup,
//! the listener's socket, the VM's network (namespace, veth, tap, policy
//! elements, address), the scratch disk and the VM directory, and give
//! the CID back. If the guard is dropped instead (a panic, or the caller
//! dropped the future), `Drop` does what can be done without waiting:
//! SIGKILL to the VMM's processes, and the same removals.

use super::owner::VmOwner;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::backend::{RunningVm, VmmExit};
use super::cid::CidLease;
use super::console::ConsoleFollower;
use crate::net::{Network, VmNet};
use crate::vsock::HybridListener;

/// How much of the end of the console log a report keeps.
pub(super) const CONSOLE_TAIL: usize = 16 * 1024;

/// The started VM and the listener its guest dials.
pub(super) struct Live {
    pub vm: RunningVm,
    pub listener: HybridListener,
}

pub(super) struct VmGuard {
    pub id: String,
    pub dir: PathBuf,
    pub scratch: Option<PathBuf>,
    /// Room held for the scratch disk, given back once it is removed.
    pub scratch_room: Option<crate::disk::budget::Held>,
    pub cid: Option<CidLease>,
    pub live: Option<Live>,
    pub follower: Option<ConsoleFollower>,
    /// The VM's network, removed after its VMM is gone.
    pub net: Option<(Arc<Network>, VmNet)>,
    /// This process runs the VM: released last, after everything else.
    owner: Option<VmOwner>,
    finished: bool,
}

/// What teardown found and did.
pub(super) struct TornDown {
    pub vmm_exit: Option<VmmExit>,
    pub vmm_exited: Option<Instant>,
    pub console_tail: String,
    pub problems: Vec<String>,
}

/// Teardown could not remove everything.
#[derive(Debug, Clone, thiserror::Error)]
#[error("teardown of VM {id} left something behind: {}", .problems.join("; "))]
pub struct TeardownError {
    pub id: String,
    pub problems: Vec<String>,
}

impl VmGuard {
    pub fn new(owner: VmOwner, dir: PathBuf) -> Self {
        VmGuard {
            id: owner.id().to_owned(),
            dir,
            owner: Some(owner),
            scratch: None,
            scratch_room: None,
            cid: None,
            live: None,
            follower: None,
            net: None,
            finished: false,
        }
    }

    /// Removes everything. `wait`: how long the VMM may take to exit by
    /// itself (the guest powers off after its job); `None` kills it now.
    pub async fn teardown(mut self, wait: Option<Duration>) -> TornDown {
        let mut problems = Vec::new();
        let mut vmm_exit = None;
        let mut vmm_exited = None;
        let mut console_log = None;
        if let Some(Live { vm, listener }) = self.live.take() {
            console_log = Some(vm.console_log().to_owned());
            let ended = match wait {
                Some(w) => vm.shutdown(w).await,
                None => vm.kill().await,
            };
            vmm_exited = Some(Instant::now());
            match ended {
                Ok(exit) => vmm_exit = Some(exit),
                Err(e) => problems.push(format!("stopping the VMM: {e}")),
            }
            drop(listener);
        }
        if let Some(f) = self.follower.take() {
            f.finish().await;
        }
        let console_tail = console_log
            .map(|p| crate::vmm::qemu::console::read_tail(&p, CONSOLE_TAIL))
            .unwrap_or_default();
        if let Some((network, net)) = self.net.take() {
            problems.extend(network.detach(net).await);
        }
        if let Some(p) = self.scratch.take() {
            if let Err(e) = remove_file(&p) {
                problems.push(e);
            }
        }
        if let Err(e) = remove_dir(&self.dir) {
            problems.push(e);
        }
        drop(self.scratch_room.take());
        drop(self.cid.take());
        drop(self.owner.take());
        self.finished = true;
        if problems.is_empty() {
            tracing::debug!(vm = %self.id, "VM torn down");
        } else {
            tracing::error!(vm = %self.id, problems = %problems.join("; "), "VM teardown left something behind");
        }
        TornDown {
            vmm_exit,
            vmm_exited,
            console_tail,
            problems,
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        tracing::warn!(vm = %self.id, "VM dropped without teardown (panic or cancelled future); cleaning up what can be cleaned now");
        // QEMU's and vhost-device-vsock's children are killed on drop;
        // Firecracker's Drop kills it and removes its jail.
        drop(self.live.take());
        drop(self.follower.take());
        // VmNet's own Drop removes its namespace and policy elements.
        drop(self.net.take());
        if let Some(p) = self.scratch.take() {
            if let Err(e) = remove_file(&p) {
                tracing::warn!(vm = %self.id, error = %e, "scratch disk left behind");
            }
        }
        if let Err(e) = remove_dir(&self.dir) {
            tracing::warn!(vm = %self.id, error = %e, "VM directory left behind");
        }
        drop(self.cid.take());
        drop(self.owner.take());
    }
}

fn remove_file(p: &Path) -> Result<(), String> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", p.display())),
    }
}

fn remove_dir(p: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", p.display())),
    }
}
