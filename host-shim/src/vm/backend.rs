//! One face for both VMMs: the rest of the VM layer starts, awaits, kills
//! and tears down a [`RunningVm`] without knowing which backend runs it.
//!
//! The rule for the guest's vsock listener: the layer asks the backend for
//! it, and [`Backend::start`] always returns it bound. QEMU's is bound in
//! the VM directory before QEMU starts; Firecracker's backend binds its own
//! inside the jail, owned by the jail's uid.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::str::FromStr;
use std::time::Duration;

use kiln_protocol::VSOCK_PORT;

use crate::vmm::firecracker::{Firecracker, FirecrackerError, FirecrackerVm};
use crate::vmm::qemu::{self, Machine, QemuConfig, QemuError, QemuVm, SerialConsole};
use crate::vmm::VmSpec;
use crate::vsock::{HybridListener, ListenerError};

/// Which VMM the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Firecracker when it, its jailer and a KVM that runs guests are
    /// present; QEMU otherwise.
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

impl FromStr for BackendChoice {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "firecracker" => Ok(BackendChoice::Firecracker),
            "qemu" => Ok(BackendChoice::Qemu),
            _ => Err(BackendError::BadChoice {
                value: s.to_owned(),
            }),
        }
    }
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleMode {
    /// A bounded log file, read back for error messages.
    #[default]
    Log,
    /// The user's terminal, for debugging (`kiln run --console`). QEMU wires
    /// the console to the terminal (stdin and stdout); Firecracker keeps
    /// its bounded log, which the layer copies to stdout as it grows (the
    /// jailed VMM never gets the terminal).
    Attach,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {value:?} is not one of auto, firecracker, qemu")]
    BadChoice { value: String },
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Firecracker(#[from] FirecrackerError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("the Firecracker backend bound no guest listener")]
    NoListener,
    #[error("the image is {guest} and this host {host}: Firecracker runs only the host's architecture; use backend = \"qemu\" (kiln run --backend qemu) to emulate it")]
    ForeignArch {
        guest: crate::vmm::Arch,
        host: crate::vmm::Arch,
    },
}

/// A configured VMM, shared by every VM it starts.
#[derive(Debug, Clone)]
pub enum Backend {
    Qemu(QemuConfig),
    Firecracker(Firecracker),
}

/// A started VM and the listener its guest dials.
pub struct Started {
    pub vm: RunningVm,
    pub listener: HybridListener,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Qemu(_) => "qemu",
            Backend::Firecracker(_) => "firecracker",
        }
    }

    /// Modules a modular guest kernel must load for the devices this
    /// backend attaches for `spec`, dependencies first.
    pub fn guest_modules(&self, spec: &VmSpec) -> Vec<&'static str> {
        match self {
            Backend::Qemu(cfg) => Machine::for_arch(cfg.machine, spec.arch).guest_modules(spec),
            // Firecracker's devices are virtio-mmio, like QEMU's microvm.
            Backend::Firecracker(_) => Machine::Microvm.guest_modules(spec),
        }
    }

    /// Starts the VM described by `spec` (whose directory exists) with its
    /// guest listener bound. On error nothing the backend made is left.
    pub async fn start(
        &self,
        spec: &VmSpec,
        console: ConsoleMode,
    ) -> Result<Started, BackendError> {
        match self {
            Backend::Qemu(cfg) => {
                let layout = qemu::Layout::of(&spec.dir);
                // Bound first: the guest may dial as soon as QEMU runs, and
                // dropped (socket removed) if QEMU fails to start.
                let listener = HybridListener::bind(&layout.vsock_uds, VSOCK_PORT)?;
                let cfg = QemuConfig {
                    serial: match console {
                        ConsoleMode::Log => SerialConsole::Log,
                        ConsoleMode::Attach => SerialConsole::Terminal,
                    },
                    ..cfg.clone()
                };
                let vm = QemuVm::start(spec, &cfg).await?;
                Ok(Started {
                    vm: RunningVm::Qemu {
                        vm: Box::new(vm),
                        console_log: layout.console_log,
                    },
                    listener,
                })
            }
            Backend::Firecracker(_) if !spec.arch.is_native() => Err(BackendError::ForeignArch {
                guest: spec.arch,
                host: crate::vmm::Arch::host(),
            }),
            Backend::Firecracker(fc) => {
                let mut vm = fc.start(spec).await?;
                match vm.take_guest_listener() {
                    Some(listener) => Ok(Started {
                        vm: RunningVm::Firecracker(Box::new(vm)),
                        listener,
                    }),
                    None => {
                        if let Err(e) = vm.teardown().await {
                            tracing::error!(error = %e, "teardown of a VM without a listener");
                        }
                        Err(BackendError::NoListener)
                    }
                }
            }
        }
    }
}

/// How a VMM ended.
#[derive(Debug, Clone)]
pub struct VmmExit {
    /// `None` when the process could not be waited for.
    pub status: Option<ExitStatus>,
    /// The host killed it rather than the guest ending it.
    pub killed: bool,
    /// The end of the VMM's own error output, when the backend keeps it.
    pub stderr: String,
}

/// One running VM, of either backend. Dropping it kills its processes
/// (best effort); [`RunningVm::shutdown`] and [`RunningVm::kill`] also wait
/// for them and remove what the backend made.
pub enum RunningVm {
    Qemu {
        vm: Box<QemuVm>,
        console_log: PathBuf,
    },
    Firecracker(Box<FirecrackerVm>),
}

impl RunningVm {
    /// The VMM's pid on the host while it runs.
    pub fn pid(&self) -> Option<u32> {
        match self {
            RunningVm::Qemu { vm, .. } => vm.pid(),
            RunningVm::Firecracker(vm) => vm.pid(),
        }
    }

    /// The accelerator and why, for the timing line (QEMU only).
    pub fn detail(&self) -> String {
        match self {
            RunningVm::Qemu { vm, .. } => match vm.uid() {
                Some(uid) => format!("{} uid {uid}", vm.accel().accel.as_str()),
                None => vm.accel().accel.as_str().to_owned(),
            },
            RunningVm::Firecracker(vm) => format!("uid {}", vm.uid().unwrap_or(0)),
        }
    }

    /// The guest's serial console log (absent with QEMU in
    /// [`ConsoleMode::Attach`]).
    pub fn console_log(&self) -> &Path {
        match self {
            RunningVm::Qemu { console_log, .. } => console_log,
            RunningVm::Firecracker(vm) => vm.console_log_path(),
        }
    }

    /// Waits until the VMM exits. Cancel-safe, for `select!`.
    pub async fn exited(&mut self) -> Result<ExitStatus, BackendError> {
        match self {
            RunningVm::Qemu { vm, .. } => Ok(vm.exited().await?),
            RunningVm::Firecracker(vm) => Ok(vm.wait().await?),
        }
    }

    /// Gives the VMM `wait` to exit by itself (the guest powers off after
    /// the job), kills it if it has not, and removes what the backend made.
    pub async fn shutdown(self, wait: Duration) -> Result<VmmExit, BackendError> {
        match self {
            RunningVm::Qemu { vm, .. } => {
                let exit = vm.finish(wait).await?;
                Ok(VmmExit {
                    status: Some(exit.status),
                    killed: exit.killed,
                    stderr: exit.qemu_stderr,
                })
            }
            RunningVm::Firecracker(mut vm) => {
                let waited = tokio::time::timeout(wait, vm.wait()).await;
                let killed = !matches!(waited, Ok(Ok(_)));
                if killed {
                    tracing::warn!(vm = %vm.id(), ?wait, "Firecracker did not exit in time; killing it");
                }
                finish_firecracker(*vm, killed).await
            }
        }
    }

    /// Kills the VMM now and removes what the backend made.
    pub async fn kill(self) -> Result<VmmExit, BackendError> {
        match self {
            RunningVm::Qemu { vm, .. } => {
                let exit = vm.kill().await?;
                Ok(VmmExit {
                    status: Some(exit.status),
                    killed: exit.killed,
                    stderr: exit.qemu_stderr,
                })
            }
            RunningVm::Firecracker(vm) => {
                let killed = vm.exit_status().is_none();
                finish_firecracker(*vm, killed).await
            }
        }
    }
}

/// Firecracker's teardown kills it if it still runs, then removes the jail
/// and the cgroup.
async fn finish_firecracker(mut vm: FirecrackerVm, killed: bool) -> Result<VmmExit, BackendError> {
    if killed {
        // Killed here rather than in teardown, to learn its status.
        if let Err(e) = vm.kill().await {
            tracing::warn!(vm = %vm.id(), error = %e, "killing Firecracker");
        }
    }
    let status = vm.exit_status();
    vm.teardown().await?;
    Ok(VmmExit {
        status,
        killed,
        stderr: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_bad_ones_are_named() {
        assert_eq!(
            "auto".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Auto)
        );
        assert_eq!(
            "qemu".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Qemu)
        );
        assert_eq!(
            "firecracker".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Firecracker)
        );
        let err = "kvm".parse::<BackendChoice>().expect_err("bad");
        assert!(err.to_string().contains("\"kvm\""), "{err}");
    }
}
