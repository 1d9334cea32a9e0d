//! [`TestVm::boot`]: one VM running one job, start to finish, through the
//! host-shim's own QEMU backend, vsock listener and guest conversation.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use kiln::conversation::{self, Conversation, Event, Limits, Summary};
use kiln::vmm::qemu::{AccelDecision, DiskOrder, Layout, Machine, QemuConfig, QemuVm, VmExit};
use kiln::vmm::VmSpec;
use kiln::vsock::HybridListener;
use kiln_protocol::{GuestError, Hello, Job, RunnerExited, Stream, VSOCK_PORT};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use crate::{assets, disk};

/// What the host sends after the guest's `Hello`.
#[derive(Debug, Clone)]
pub enum Opening {
    /// The job, as production does.
    Job,
    /// These bytes instead of a job: for the guest's error handling.
    Raw(Vec<u8>),
}

/// When to send `Cancel`.
#[derive(Debug, Clone)]
pub enum CancelWhen {
    /// Once the job's stdout contains `marker`.
    StdoutContains { marker: String, grace: Duration },
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub opening: Opening,
    pub cancel: Option<CancelWhen>,
    /// Attach a base image (read-only) and an empty ext4 scratch disk.
    pub scratch: bool,
    pub machine: Machine,
    pub memory_mib: u32,
    /// From QEMU's start to the guest's connection.
    pub boot_timeout: Duration,
    /// From the conversation's end to QEMU's exit.
    pub exit_timeout: Duration,
    /// Boot this baked image instead of the test assets (implies a scratch
    /// disk; `scratch` is then ignored).
    pub image: Option<BakedImage>,
    /// In which order QEMU attaches the base image and the scratch disk.
    pub disk_order: DiskOrder,
    /// Files added to the test base image (with `scratch`): path, mode,
    /// content.
    pub base_files: Vec<(String, u32, String)>,
    /// The guest's architecture: another one than the host's needs a baked
    /// `image` of it, and runs emulated (`virt` under TCG).
    pub arch: kiln::vmm::Arch,
}

/// A baked image (`cargo xtask image`): its kernel and initramfs, its root
/// filesystem attached read-only and shared, never copied, and a fresh
/// sparse scratch disk per VM.
#[derive(Debug, Clone)]
pub struct BakedImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub scratch_bytes: u64,
    /// Loaded on top of what the machine needs (e.g. `tun` for rootless
    /// podman's network): the image's root has no `/lib/modules`.
    pub extra_modules: Vec<String>,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            opening: Opening::Job,
            cancel: None,
            scratch: false,
            machine: std::env::var("KILN_TEST_MACHINE")
                .ok()
                .and_then(|m| m.parse().ok())
                .unwrap_or(Machine::Microvm),
            memory_mib: 512,
            boot_timeout: Duration::from_secs(120),
            exit_timeout: Duration::from_secs(60),
            image: None,
            disk_order: DiskOrder::BaseFirst,
            base_files: Vec::new(),
            arch: kiln::vmm::Arch::host(),
        }
    }
}

/// Everything one VM produced.
pub struct Outcome {
    pub hello: Option<Hello>,
    pub summary: Option<Summary>,
    /// Each event with the host's wall clock when it arrived.
    pub events: Vec<(SystemTime, Event)>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Why the conversation ended early, if it did.
    pub conversation_error: Option<String>,
    pub vm_exit: VmExit,
    pub console: String,
    pub accel: AccelDecision,
    /// From QEMU's start to its exit.
    pub wall: Duration,
    pub base_image: Option<PathBuf>,
    pub base_sha256_before: Option<String>,
    pub scratch_disk: Option<PathBuf>,
    /// The VM's directory; removed when the outcome is dropped.
    pub dir: TempDir,
}

impl Outcome {
    pub fn exit(&self) -> Option<&RunnerExited> {
        self.summary.as_ref().and_then(|s| s.exit.as_ref())
    }

    pub fn guest_error(&self) -> Option<&GuestError> {
        self.summary.as_ref().and_then(|s| s.guest_error.as_ref())
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// How the job ended; panics (with the whole outcome) when it was not reported.
    pub fn status(&self) -> kiln_protocol::ExitStatus {
        self.exit()
            .unwrap_or_else(|| panic!("no exit\n{self}"))
            .status
    }

    /// The value of `key=` on its own line of the job's stdout; panics when absent.
    pub fn field(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key}= in stdout\n{self}"))
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The job ran to a reported end, and QEMU then exited by itself.
    pub fn assert_clean(&self) {
        assert!(self.conversation_error.is_none(), "{self}");
        assert!(self.exit().is_some(), "no RunnerExited\n{self}");
        self.assert_powered_off();
    }

    /// QEMU exited by itself (the guest rebooted or powered off).
    pub fn assert_powered_off(&self) {
        assert!(
            self.vm_exit.by_itself(),
            "QEMU did not exit by itself\n{self}"
        );
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = |s: &str, n: usize| {
            let start = s.len().saturating_sub(n);
            let start = (start..=s.len())
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(s.len());
            s[start..].to_owned()
        };
        writeln!(
            f,
            "--- VM outcome ({:.1} s, {:?}: {})",
            self.wall.as_secs_f64(),
            self.accel.accel,
            self.accel.reason
        )?;
        writeln!(f, "exit: {:?}", self.exit())?;
        writeln!(f, "guest error: {:?}", self.guest_error())?;
        writeln!(f, "conversation error: {:?}", self.conversation_error)?;
        writeln!(
            f,
            "QEMU: {} (killed: {}), stderr: {}",
            self.vm_exit.status, self.vm_exit.killed, self.vm_exit.qemu_stderr
        )?;
        writeln!(f, "stdout:\n{}", tail(&self.stdout_str(), 4000))?;
        writeln!(f, "stderr:\n{}", tail(&self.stderr_str(), 4000))?;
        writeln!(f, "console (end):\n{}", tail(&self.console, 6000))
    }
}

/// Boots test VMs.
pub struct TestVm;

static NEXT_VM: AtomicU32 = AtomicU32::new(0);

impl TestVm {
    /// Boots a VM, runs `job` (or `opts.opening`), waits for QEMU to exit by
    /// itself (killing it after `opts.exit_timeout`), and returns all of it.
    /// Errors are for a VM that could not start at all; how the job and the
    /// VM ended is in the [`Outcome`].
    /// [`TestVm::boot`] for tests: a VM that could not start fails the test.
    pub async fn run(job: Job, opts: BootOptions) -> Outcome {
        match TestVm::boot(job, opts).await {
            Ok(o) => o,
            Err(e) => panic!("the VM could not run: {e:#}"),
        }
    }

    pub async fn boot(job: Job, opts: BootOptions) -> anyhow::Result<Outcome> {
        init_tracing();
        if opts.image.is_none() && opts.arch != kiln::vmm::Arch::host() {
            anyhow::bail!(
                "the test assets are {}: an {} VM needs a baked image of its own (BootOptions::image)",
                kiln::vmm::Arch::host(),
                opts.arch
            );
        }
        let assets = assets::get()?;
        let n = NEXT_VM.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Short, in /tmp: Unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("kiln-vm-")
            .tempdir_in("/tmp")
            .context("creating the VM directory")?;
        let (base_image, scratch_disk) = if let Some(img) = &opts.image {
            let scratch = dir.path().join("scratch.ext4");
            xtask::image::scratch::create_scratch(&scratch, img.scratch_bytes)?;
            (Some(img.rootfs.clone()), Some(scratch))
        } else if opts.scratch {
            let files: Vec<(&str, u32, &str)> = opts
                .base_files
                .iter()
                .map(|(p, m, c)| (p.as_str(), *m, c.as_str()))
                .collect();
            (
                Some(disk::base_image_with(dir.path(), assets, &files)?),
                Some(disk::scratch_disk(dir.path())?),
            )
        } else {
            (None, None)
        };
        // A baked image is hundreds of MiB and shared: its test hashes it.
        let base_sha256_before = match opts.image {
            Some(_) => None,
            None => base_image.as_deref().map(disk::sha256).transpose()?,
        };
        let (kernel, initrd) = match &opts.image {
            Some(img) => (img.kernel.clone(), img.initrd.clone()),
            None => (assets.kernel.vmlinuz.clone(), assets.initrd.clone()),
        };
        let mut spec = VmSpec {
            id: format!("t{pid}-{n}"),
            dir: dir.path().to_owned(),
            kernel,
            arch: opts.arch,
            initrd: Some(initrd),
            base_image: base_image.clone(),
            scratch_disk: scratch_disk.clone(),
            kernel_args: Vec::new(),
            vcpus: 1,
            memory_mib: opts.memory_mib,
            // Each VM has its own vhost-device-vsock, so CIDs need not be
            // unique; they are anyway, which keeps logs unambiguous.
            guest_cid: 3 + (pid % 100_000) * 1000 + n % 1000,
            net: None,
            console_limit_bytes: 1 << 20,
        };
        let machine = Machine::for_arch(opts.machine, opts.arch);
        let mut modules = assets::modules_arg(machine, &spec);
        for m in opts.image.iter().flat_map(|i| &i.extra_modules) {
            modules.push(',');
            modules.push_str(m);
        }
        spec.kernel_args.push(modules);
        if std::env::var_os("KILN_TEST_DEBUG").is_some() {
            spec.kernel_args.push("kiln.debug".into());
        }
        let layout = Layout::of(dir.path());
        let listener = HybridListener::bind(&layout.vsock_uds, VSOCK_PORT)?;
        let cfg = QemuConfig {
            machine: opts.machine,
            accel_cache: Some(assets.cache.join("accel-probe")),
            disk_order: opts.disk_order,
            ..QemuConfig::from_env()?
        };
        let mut vm = QemuVm::start(&spec, &cfg).await?;
        let accel = vm.accel().clone();
        let started = Instant::now();

        let limits = Limits {
            accept_timeout: opts.boot_timeout,
            ..Limits::default()
        };
        let mut rec = Recorder::default();
        let mut qemu_first = false;
        let result = {
            let talk = converse(&listener, &job, &opts, &limits, &mut rec);
            tokio::pin!(talk);
            let outcome = tokio::select! {
                r = &mut talk => Some(r),
                _ = vm.exited() => None,
            };
            match outcome {
                Some(r) => r,
                None => {
                    qemu_first = true;
                    // What the guest sent before it went down may still be
                    // in flight; give it a moment.
                    tokio::time::timeout(Duration::from_secs(3), &mut talk)
                        .await
                        .unwrap_or_else(|_| {
                            Err(anyhow::anyhow!(
                                "QEMU exited before the guest finished the conversation"
                            ))
                        })
                }
            }
        };
        if let Err(e) = result {
            rec.error = Some(format!("{e:#}"));
        }
        let ended = started.elapsed();
        let vm_exit = vm.finish(opts.exit_timeout).await?;
        let wall = started.elapsed();
        let console = kiln::vmm::qemu::console::read_tail(&layout.console_log, 2 << 20);
        eprintln!(
            "{}: {} ({}); conversation over after {:.2} s{}; QEMU {} after {:.2} s",
            spec.id,
            accel.accel.as_str(),
            accel.reason,
            ended.as_secs_f64(),
            if qemu_first {
                " (QEMU exited first)"
            } else {
                ""
            },
            if vm_exit.by_itself() {
                "exited by itself"
            } else {
                "was killed or failed"
            },
            wall.as_secs_f64()
        );
        let outcome = Outcome {
            hello: rec.hello,
            summary: rec.summary,
            events: rec.events,
            stdout: rec.stdout,
            stderr: rec.stderr,
            conversation_error: rec.error,
            vm_exit,
            console,
            accel,
            wall,
            base_image,
            base_sha256_before,
            scratch_disk,
            dir,
        };
        if std::env::var_os("KILN_TEST_SHOW").is_some() {
            eprintln!("{outcome}");
        }
        Ok(outcome)
    }
}

#[derive(Default)]
struct Recorder {
    hello: Option<Hello>,
    summary: Option<Summary>,
    events: Vec<(SystemTime, Event)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Option<String>,
}

async fn converse(
    listener: &HybridListener,
    job: &Job,
    opts: &BootOptions,
    limits: &Limits,
    rec: &mut Recorder,
) -> anyhow::Result<()> {
    let greeting = conversation::greet(listener, limits).await?;
    rec.hello = Some(greeting.hello().clone());
    let mut conv = match &opts.opening {
        Opening::Job => greeting.send_job(job, limits.clone()).await?,
        Opening::Raw(bytes) => {
            let mut parts = greeting.into_parts();
            parts
                .stream
                .write_all(bytes)
                .await
                .context("writing the raw opening")?;
            Conversation::start(parts, Duration::from_secs(60), limits.clone())
        }
    };
    let canceller = conv.canceller();
    let mut cancel = opts.cancel.clone();
    loop {
        let event = match conv.next_event().await {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                rec.summary = Some(conv.summary().clone());
                return Err(e.into());
            }
        };
        if let Event::Output(o) = &event {
            match o.stream {
                Stream::Stdout => rec.stdout.extend_from_slice(&o.data),
                Stream::Stderr => rec.stderr.extend_from_slice(&o.data),
            }
        }
        rec.events.push((SystemTime::now(), event));
        if let Some(CancelWhen::StdoutContains { marker, grace }) = &cancel {
            if String::from_utf8_lossy(&rec.stdout).contains(marker.as_str()) {
                canceller.cancel(*grace).await?;
                cancel = None;
            }
        }
    }
    rec.summary = Some(conv.into_summary());
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kiln=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
