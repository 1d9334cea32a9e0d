//! The QEMU backend: development, CI, and hosts without Firecracker.
//!
//! One VM is one `qemu-system-x86_64` process plus one `vhost-device-vsock`
//! daemon that gives it a vsock device with Firecracker's hybrid-vsock Unix
//! socket on the host side, so [`crate::vsock`] serves both backends.
//!
//! An aarch64 guest (an image baked with `--arch arm64`) runs in
//! `qemu-system-aarch64 -M virt`: under KVM on an arm64 host that can, and
//! under TCG (`-cpu max`, logged as emulated) on an x86 host. Its vsock is
//! the same vhost-user device on PCI: it works under TCG too (the guest's
//! memory is a shared memfd either way), where the kernel's
//! `vhost-vsock-pci` would need `/dev/vhost-vsock` on the host and speaks
//! no hybrid-vsock, so the shim's vsock code would differ per backend.
//!
//! Start order: the caller binds the vsock listener at
//! `<Layout::vsock_uds>_<port>` first; then [`QemuVm::start`] picks the
//! accelerator ([`accel`]), starts vhost-device-vsock and waits for its
//! socket, then starts QEMU with the console on a pipe that [`console`]
//! copies into a bounded log. QEMU runs with `-no-reboot`, so the guest's
//! `reboot(RB_AUTOBOOT)` (or a panic, with `panic=1`) ends the process.
//! Both processes are killed when the [`QemuVm`] is dropped. Neither
//! inherits kiln's environment: they get only a `PATH`
//! ([`crate::vmm::VMM_PATH`]).

pub mod accel;
pub mod args;
pub mod confine;
pub mod console;
mod tail;
pub mod tools;
pub mod vhost;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub use accel::{Accel, AccelChoice, AccelDecision};
pub use args::{DiskOrder, Layout, Machine};
pub use confine::Confinement;
pub use console::ConsoleStats;

use super::cgroup::CgroupError;
use super::{UidError, VmSpec, VmSpecError};
use crate::vsock::MAX_UDS_PATH;
use confine::Confined;
use vhost::VhostVsock;

/// How long a killed QEMU may take to go away.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{tool} not found (looked in {searched}); install it with `{install}`")]
    ToolMissing {
        tool: &'static str,
        searched: String,
        install: &'static str,
    },
    #[error("{what} {path} does not exist")]
    FileMissing { what: &'static str, path: PathBuf },
    #[error(transparent)]
    Spec(#[from] VmSpecError),
    #[error("KILN_ACCEL={value:?} is not one of auto, kvm, tcg")]
    BadAccel { value: String },
    #[error("machine type {value:?} is not one of microvm, q35")]
    BadMachine { value: String },
    #[error("KVM was asked for (KILN_ACCEL=kvm) but {reason}")]
    KvmUnavailable { reason: String },
    #[error("KVM was asked for (KILN_ACCEL=kvm) but the image is {guest} and this host {host}: KVM runs only the host's architecture (unset KILN_ACCEL to emulate it)")]
    KvmForeign {
        guest: crate::vmm::Arch,
        host: crate::vmm::Arch,
    },
    #[error("tap device name {name:?} must be 1 to 15 letters, digits, '-' or '_'")]
    BadTap { name: String },
    #[error("{path}: {why}")]
    UnusablePath { path: PathBuf, why: &'static str },
    #[error("opening the VM's network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket path {path} is {len} bytes, over the {MAX_UDS_PATH}-byte limit of Unix sockets; use a shorter VM directory")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("could not start {what} ({binary}): {source}")]
    Spawn {
        what: &'static str,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-device-vsock exited ({status}) before creating {socket}: {stderr}")]
    VhostExited {
        socket: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("vhost-device-vsock did not create {socket} within {timeout:?}")]
    VhostTimeout { socket: PathBuf, timeout: Duration },
    #[error("could not create the console log {path}: {source}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU (pid {pid}) was still running {waited:?} after SIGKILL (stuck in the kernel?)")]
    Unkillable { pid: u32, waited: Duration },
    #[error("{tool} at {path} cannot be run by a confined VM's uid: {blocker} is not executable by others; install it where every user can run it (`{install}`)")]
    NotForEveryone {
        tool: &'static str,
        path: PathBuf,
        blocker: PathBuf,
        install: &'static str,
    },
    #[error(transparent)]
    Uid(#[from] UidError),
    #[error("the VM's cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("{what} {path} is not readable by others, and a confined QEMU runs as a uid of its own: make it world-readable (chmod o+r)")]
    NotReadable { what: &'static str, path: PathBuf },
    #[error("a confined QEMU runs as a uid of its own and cannot open {device} (mode {mode:o}): let the kvm group open it (`chgrp kvm {device} && chmod 660 {device}`, as Debian's udev rules do)", device = device.display())]
    KvmNotShared { device: PathBuf, mode: u32 },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for {what} failed: {source}")]
    Wait {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// `tsc_early_khz=` for TCG guests. Under TCG on `microvm` (no HPET, no ACPI
/// PM timer, no kvmclock) the kernel calibrates the TSC against the PIT,
/// which fails on a loaded host and hangs the boot after "Marking TSC
/// unstable" (seen here with Debian's 6.1 cloud kernel). TCG's TSC is the
/// host's, so the host's frequency is the right answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TscHint {
    /// The host's TSC frequency, on `microvm` under TCG only.
    #[default]
    Auto,
    Off,
    Khz(u64),
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// A name searched in `PATH`, or a path.
    pub qemu: PathBuf,
    /// The same for aarch64 guests.
    pub qemu_aarch64: PathBuf,
    /// A name searched in `PATH` and cargo's bin directories, or a path.
    pub vhost_vsock: PathBuf,
    pub machine: Machine,
    pub accel: AccelChoice,
    /// Remembers the KVM probe's answer until the host reboots.
    pub accel_cache: Option<PathBuf>,
    pub kvm_device: PathBuf,
    pub probe_timeout: Duration,
    pub tsc: TscHint,
    /// How long vhost-device-vsock may take to create its socket.
    pub vhost_timeout: Duration,
    /// Where the guest's serial console goes.
    pub serial: SerialConsole,
    /// In which order the disks are attached; kiln-init does not care.
    pub disk_order: DiskOrder,
    /// Run each VM's QEMU as its own uid, sandboxed, in its own cgroup
    /// (`kiln serve`); `None`: as the caller (`kiln run`, tests).
    pub confine: Option<Confinement>,
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SerialConsole {
    /// A bounded log file in the VM's directory.
    #[default]
    Log,
    /// The shim's own terminal, stdin and stdout (`kiln run --console`).
    /// Ctrl-C goes to the guest; Ctrl-A x quits QEMU. Nothing is logged.
    Terminal,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            qemu: tools::QEMU.name.into(),
            qemu_aarch64: tools::QEMU_AARCH64.name.into(),
            vhost_vsock: tools::VHOST_VSOCK.name.into(),
            machine: Machine::Microvm,
            accel: AccelChoice::Auto,
            accel_cache: None,
            kvm_device: "/dev/kvm".into(),
            probe_timeout: Duration::from_secs(10),
            tsc: TscHint::Auto,
            vhost_timeout: Duration::from_secs(10),
            serial: SerialConsole::Log,
            disk_order: DiskOrder::BaseFirst,
            confine: None,
        }
    }
}

impl QemuConfig {
    /// The defaults, with the accelerator from `KILN_ACCEL`.
    pub fn from_env() -> Result<Self, QemuError> {
        Ok(QemuConfig {
            accel: AccelChoice::from_env()?,
            ..QemuConfig::default()
        })
    }

    fn tsc_khz(&self, accel: Accel, machine: Machine) -> Option<u64> {
        match (self.tsc, accel, machine) {
            (TscHint::Off, _, _) | (_, Accel::Kvm, _) | (_, _, Machine::Virt) => None,
            (TscHint::Khz(k), Accel::Tcg, _) => Some(k),
            (TscHint::Auto, Accel::Tcg, Machine::Microvm) => host_tsc_khz(),
            (TscHint::Auto, Accel::Tcg, Machine::Q35) => None,
        }
    }

    /// The QEMU program for a guest of `arch`, and how to install it.
    pub fn program(&self, arch: crate::vmm::Arch) -> (&Path, tools::Tool) {
        match arch {
            crate::vmm::Arch::X86_64 => (&self.qemu, tools::QEMU),
            crate::vmm::Arch::Aarch64 => (&self.qemu_aarch64, tools::QEMU_AARCH64),
        }
    }
}

/// The host's TSC frequency as the kernel reports it in `/proc/cpuinfo`.
/// On the hosts where this matters (TCG, usually a cloud VM) "cpu MHz" is
/// the TSC frequency.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_khz(&info)
}

fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// QEMU runs in the VM's network namespace, where its tap is (as the
/// jailer puts Firecracker there); vhost-device-vsock stays in the host's:
/// it only serves Unix sockets.
fn join_netns_before_exec(command: &mut Command, netns: &Path) -> Result<(), QemuError> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let ns: OwnedFd = std::fs::File::open(netns)
        .map_err(|source| QemuError::Netns {
            path: netns.to_owned(),
            source,
        })?
        .into();
    let fd = ns.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes one raw `setns`
    // system call on an fd the parent keeps open (`ns` moves into the
    // closure, which the Command holds until it is dropped after spawn).
    unsafe {
        command.pre_exec(move || {
            let _keep = &ns;
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// How a VM ended.
#[derive(Debug)]
pub struct VmExit {
    pub status: ExitStatus,
    /// True when the host killed QEMU rather than the guest ending it.
    pub killed: bool,
    pub console: ConsoleStats,
    /// The end of QEMU's own error output.
    pub qemu_stderr: String,
    pub vhost_stderr: String,
    /// From QEMU's start to its exit.
    pub ran_for: Duration,
}

impl VmExit {
    /// The guest powered off (or rebooted, or panicked) and QEMU exited 0.
    pub fn by_itself(&self) -> bool {
        !self.killed && self.status.success()
    }
}

/// One running VM.
pub struct QemuVm {
    id: String,
    layout: Layout,
    accel: AccelDecision,
    qemu: Child,
    vhost: VhostVsock,
    console: Option<JoinHandle<std::io::Result<ConsoleStats>>>,
    stderr: Option<JoinHandle<String>>,
    started: Instant,
    status: Option<ExitStatus>,
    /// Dropped last: removing the cgroup kills whatever is left in it.
    confined: Option<Confined>,
}

/// QEMU's stderr kept for error messages.
const QEMU_STDERR_TAIL: usize = 8 * 1024;

impl QemuVm {
    /// Starts the VM. The caller has bound its vsock listener at
    /// `<layout.vsock_uds>_<port>` already (see [`Layout::of`]).
    pub async fn start(spec: &VmSpec, cfg: &QemuConfig) -> Result<QemuVm, QemuError> {
        spec.validate()?;
        require_file("VM directory", &spec.dir)?;
        require_file("guest kernel", &spec.kernel)?;
        if let Some(p) = &spec.initrd {
            require_file("initrd", p)?;
        }
        if let Some(p) = &spec.base_image {
            require_file("base image", p)?;
        }
        if let Some(p) = &spec.scratch_disk {
            require_file("scratch disk", p)?;
        }
        let layout = Layout::of(&spec.dir);
        for p in [&layout.vhost_socket, &layout.vsock_uds] {
            // The listener adds "_<port>": leave room for a 10-digit port.
            let len = p.as_os_str().len() + 11;
            if len > MAX_UDS_PATH {
                return Err(QemuError::PathTooLong {
                    path: p.clone(),
                    len,
                });
            }
        }
        // A confined VM's processes run as its uid, so only a binary every
        // user may run will do.
        let find = match cfg.confine {
            Some(_) => tools::find_for_everyone,
            None => tools::find,
        };
        let machine = Machine::for_arch(cfg.machine, spec.arch);
        let (program, tool) = cfg.program(spec.arch);
        let qemu_bin = find(tool, program, &[])?;
        let vhost_bin = find(
            tools::VHOST_VSOCK,
            &cfg.vhost_vsock,
            &tools::cargo_bin_dirs(),
        )?;

        let accel = choose_accel(spec, cfg, &qemu_bin, machine).await?;
        tracing::info!(
            vm = %spec.id,
            accel = accel.accel.as_str(),
            why = %accel.reason,
            machine = machine.name(),
            arch = spec.arch.name(),
            "QEMU accelerator chosen"
        );

        let (mut confined, seen) = match &cfg.confine {
            Some(how) => {
                let (c, seen) = Confined::prepare(how, spec, accel.accel, &cfg.kvm_device)?;
                (Some(c), seen)
            }
            None => (None, spec.clone()),
        };
        let mut vhost = VhostVsock::start(
            &vhost_bin,
            spec.guest_cid,
            &layout.vhost_socket,
            &layout.vsock_uds,
            cfg.vhost_timeout,
            confined.as_ref(),
        )
        .await?;

        let mut argv = args::qemu_args(
            &seen,
            machine,
            accel.accel,
            cfg.tsc_khz(accel.accel, machine),
            &Layout::of(&seen.dir),
            cfg.disk_order,
        )?;
        if let Some(c) = &confined {
            argv.extend(confine::SANDBOX.map(Into::into));
            if let Some(fd) = c.tap_fd() {
                args::tap_by_fd(&mut argv, fd);
            }
        }
        let mut command = Command::new(&qemu_bin);
        crate::vmm::bare_environment(&mut command);
        if let Some(net) = &spec.net {
            join_netns_before_exec(&mut command, &net.netns)?;
        }
        if let Some(c) = &confined {
            // After joining the namespace, which needs root.
            c.apply(&mut command, true);
        }
        match cfg.serial {
            SerialConsole::Log => {
                command.stdin(Stdio::null()).stdout(Stdio::piped());
                // Its own process group: a Ctrl-C at the shim's terminal is
                // the shim's to handle (cancel the job, then tear down).
                command.process_group(0);
            }
            SerialConsole::Terminal => {
                args::attach_terminal(&mut argv);
                // Stays in the terminal's foreground process group to read
                // it; the terminal generates no signals (signal=off).
                command.stdin(Stdio::inherit()).stdout(Stdio::inherit());
            }
        }
        tracing::debug!(vm = %spec.id, ?argv, "starting QEMU");
        let spawned = command
            .args(&argv)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut qemu = match spawned {
            Ok(c) => c,
            Err(source) => {
                vhost.stop().await;
                return Err(QemuError::Spawn {
                    what: "QEMU",
                    binary: qemu_bin,
                    source,
                });
            }
        };
        let started = Instant::now();
        if let Some(c) = &mut confined {
            c.close_files();
        }
        let stderr = qemu.stderr.take().map(|e| tail::spawn(e, QEMU_STDERR_TAIL));
        let console = match qemu.stdout.take() {
            Some(out) => {
                match console::spawn(out, layout.console_log.clone(), spec.console_limit_bytes) {
                    Ok(task) => Some(task),
                    Err(source) => {
                        let _ = qemu.start_kill();
                        let _ = qemu.wait().await;
                        vhost.stop().await;
                        return Err(QemuError::Console {
                            path: layout.console_log.clone(),
                            source,
                        });
                    }
                }
            }
            None => None,
        };
        tracing::info!(
            vm = %spec.id,
            pid = qemu.id(),
            cid = spec.guest_cid,
            uid = confined.as_ref().map(Confined::uid),
            "QEMU started"
        );
        Ok(QemuVm {
            id: spec.id.clone(),
            layout,
            accel,
            qemu,
            vhost,
            console,
            stderr,
            started,
            status: None,
            confined,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn accel(&self) -> &AccelDecision {
        &self.accel
    }

    /// QEMU's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.qemu.id()
    }

    /// The uid QEMU runs as when confined.
    pub fn uid(&self) -> Option<u32> {
        self.confined.as_ref().map(Confined::uid)
    }

    /// The VM's cgroup v2 directory when confined.
    pub fn cgroup_dir(&self) -> Option<&Path> {
        self.confined.as_ref().and_then(Confined::cgroup_dir)
    }

    /// Waits for QEMU to exit. Cancel-safe, so it can sit in a `select!`
    /// beside the guest conversation.
    pub async fn exited(&mut self) -> Result<ExitStatus, QemuError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.qemu.wait().await.map_err(|source| QemuError::Wait {
            what: "QEMU",
            source,
        })?;
        self.status = Some(s);
        Ok(s)
    }

    /// Waits at most `timeout` for QEMU to exit by itself, kills it if it
    /// has not, and tears the VM's processes down.
    pub async fn finish(mut self, timeout: Duration) -> Result<VmExit, QemuError> {
        let killed = match tokio::time::timeout(timeout, self.exited()).await {
            Ok(r) => {
                r?;
                false
            }
            Err(_) => {
                tracing::warn!(vm = %self.id, ?timeout, "QEMU did not exit in time; killing it");
                true
            }
        };
        self.teardown(killed).await
    }

    /// Kills QEMU now and tears the VM's processes down.
    pub async fn kill(self) -> Result<VmExit, QemuError> {
        self.teardown(true).await
    }

    async fn teardown(mut self, kill: bool) -> Result<VmExit, QemuError> {
        let mut killed = false;
        if kill && self.status.is_none() {
            if let Err(e) = self.qemu.start_kill() {
                tracing::debug!(vm = %self.id, error = %e, "QEMU already gone");
            }
            killed = true;
        }
        let status = if killed {
            // SIGKILL cannot be caught, but a process stuck in
            // uninterruptible sleep outlives it: never wait forever.
            let pid = self.pid().unwrap_or(0);
            tokio::time::timeout(KILL_WAIT, self.exited())
                .await
                .map_err(|_| QemuError::Unkillable {
                    pid,
                    waited: KILL_WAIT,
                })??
        } else {
            self.exited().await?
        };
        let ran_for = self.started.elapsed();
        let vhost_stderr = self.vhost.stop().await;
        if let Some(c) = self.confined.take() {
            c.remove();
        }
        let console = match self.console.take() {
            Some(t) => match t.await {
                Ok(Ok(stats)) => stats,
                Ok(Err(e)) => {
                    tracing::warn!(vm = %self.id, error = %e, "console log incomplete");
                    ConsoleStats::default()
                }
                Err(e) => {
                    tracing::warn!(vm = %self.id, error = %e, "console task failed");
                    ConsoleStats::default()
                }
            },
            None => ConsoleStats::default(),
        };
        let qemu_stderr = match self.stderr.take() {
            Some(t) => t.await.unwrap_or_default(),
            None => String::new(),
        };
        tracing::info!(vm = %self.id, %status, killed, ms = ran_for.as_millis() as u64, console_bytes = console.kept, "QEMU exited");
        Ok(VmExit {
            status,
            killed,
            console,
            qemu_stderr,
            vhost_stderr,
            ran_for,
        })
    }
}

/// KVM or TCG for the host's own architecture (probed); TCG, logged as
/// emulated, for another one's.
async fn choose_accel(
    spec: &VmSpec,
    cfg: &QemuConfig,
    qemu_bin: &Path,
    machine: Machine,
) -> Result<AccelDecision, QemuError> {
    if !spec.arch.is_native() {
        let d = accel::foreign(cfg.accel, spec.arch)?;
        tracing::warn!(vm = %spec.id, arch = spec.arch.name(), why = %d.reason, "VM emulated: slow");
        return Ok(d);
    }
    accel::decide(
        cfg.accel,
        &accel::Probe {
            qemu: qemu_bin.to_owned(),
            kernel: spec.kernel.clone(),
            machine,
            kvm_device: cfg.kvm_device.clone(),
            timeout: cfg.probe_timeout,
            cache_file: cfg.accel_cache.clone(),
        },
    )
    .await
}

fn require_file(what: &'static str, p: &Path) -> Result<(), QemuError> {
    if p.exists() {
        Ok(())
    } else {
        Err(QemuError::FileMissing {
            what,
            path: p.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_mhz_to_khz() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2596.128\ncache size\t: 1 KB\n";
        assert_eq!(parse_cpu_khz(info), Some(2_596_128));
        assert_eq!(parse_cpu_khz("processor: 0\n"), None);
    }

    #[test]
    fn tsc_hint_only_for_tcg() {
        let cfg = QemuConfig {
            tsc: TscHint::Khz(1000),
            ..QemuConfig::default()
        };
        assert_eq!(cfg.tsc_khz(Accel::Tcg, Machine::Microvm), Some(1000));
        assert_eq!(cfg.tsc_khz(Accel::Kvm, Machine::Microvm), None);
        assert_eq!(cfg.tsc_khz(Accel::Tcg, Machine::Virt), None);
        let q35 = QemuConfig::default();
        assert_eq!(q35.tsc_khz(Accel::Tcg, Machine::Q35), None);
    }

    /// A one-vCPU VM in `dir` booting `kernel`, nothing else attached.
    fn spec_in(dir: &Path, kernel: PathBuf) -> VmSpec {
        VmSpec {
            id: "k".into(),
            dir: dir.to_owned(),
            kernel,
            arch: crate::vmm::Arch::host(),
            initrd: None,
            base_image: None,
            scratch_disk: None,
            kernel_args: vec![],
            vcpus: 1,
            memory_mib: 256,
            guest_cid: 3,
            net: None,
            console_limit_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn missing_kernel_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec_in(dir.path(), dir.path().join("no-vmlinuz"));
        let err = QemuVm::start(&spec, &QemuConfig::default())
            .await
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("no-vmlinuz"), "{err}");
    }

    #[tokio::test]
    async fn missing_qemu_names_the_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"k").expect("kernel");
        let spec = spec_in(dir.path(), kernel);
        let cfg = QemuConfig {
            qemu: dir.path().join("qemu-system-x86_64"),
            ..QemuConfig::default()
        };
        let err = QemuVm::start(&spec, &cfg).await.err().expect("must fail");
        assert!(
            err.to_string().contains("apt-get install qemu-system-x86"),
            "{err}"
        );
        // An aarch64 guest needs the aarch64 QEMU, whatever the x86 one is.
        let arm = VmSpec {
            arch: crate::vmm::Arch::Aarch64,
            ..spec_in(dir.path(), dir.path().join("vmlinuz"))
        };
        let cfg = QemuConfig {
            qemu_aarch64: dir.path().join("qemu-system-aarch64"),
            ..QemuConfig::default()
        };
        let err = QemuVm::start(&arm, &cfg).await.err().expect("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("qemu-system-aarch64") && msg.contains("apt-get install qemu-system-arm"),
            "{msg}"
        );
    }
}
