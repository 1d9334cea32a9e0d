//! Benchmark 1, boot to runner: from the VMM's start to the runner's exec,
//! phase by phase, for kiln-init and for the same image booted with
//! systemd as PID 1, alternating run by run so both see the same host.
//!
//! Both paths boot the same kernel, VMM, kernel command line, base image
//! and fresh scratch disk, load the same modules and build the same overlay
//! root; their "runner" is the same probe, whose first act is to read
//! `CLOCK_BOOTTIME` (see `probe/kiln_probe.rs`). The guest clock starts
//! with the kernel; the host's time from the VMM's start to the guest's
//! vsock connection, minus the guest's clock at that moment, is the time
//! before the kernel (QEMU's own start, loading and decompressing the
//! kernel), estimated the same way on both paths.
//!
//! Each run boots both paths on each [`BootKernel`]: Debian's cloud kernel
//! (modular: both paths load the same modules) and, when it is built, Kiln's
//! production kernel (`cargo xtask kernel`, everything built in), which
//! kiln-init's path boots as Firecracker does, without an initramfs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use kiln::net::NetRequest;
use kiln::vm::cid::{CidAllocator, DEFAULT_RANGE};
use kiln::vm::{
    Backend, BootImage, CollectSink, ConsoleMode, JobEnd, Launcher, ModuleSet, RunningVm,
    StopSignal, VmRequest,
};
use kiln::vmm::VmSpec;
use kiln_protocol::{BootPhase, ExitStatus, PhaseStamp};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::images::{STAMP_INIT, STAMP_MODULES, STAMP_MOUNTED, STAMP_ROOT};
use super::probe::{self, Report};
use super::results::{BootComparison, BootPath, BootResults, Figure, Ratio, Target};
use super::stats::{Series, Stat};
use super::vmkit::{with_retries, Kit, SCRATCH_BYTES};

/// Phases of the kiln-init path, in order, with what each covers.
pub const KILN_PHASES: &[(&str, &str)] = &[
    ("VMM start", "host: vhost-device-vsock up, QEMU spawned"),
    (
        "pre-kernel",
        "QEMU set-up, kernel load and decompression (estimated)",
    ),
    (
        "kernel",
        "kernel start to kiln-init's first instruction (includes unpacking the initramfs, or mounting the base image as / where there is none)",
    ),
    (
        "kiln-init: mounts",
        "/proc /sys /dev /run, console (the other mounts are made on the cgroup thread)",
    ),
    (
        "kiln-init: root's modules",
        "the wait for the loads that bring the root's disks and overlayfs (virtio, virtio_blk, overlay); the others go on loading",
    ),
    (
        "kiln-init: root",
        "mount base (ro) and scratch, overlay, binds, switch root",
    ),
    (
        "kiln-init: other modules",
        "the wait for the loads still running once the root is up (vsock, tun); 0 when they ended first",
    ),
    (
        "kiln-init: modules (beside)",
        "every load of the Debian kernel's virtio/blk/overlay/vsock/tun modules, on threads of their own from mounts on (not in the sum)",
    ),
    (
        "kiln-init: cgroups (beside)",
        "/dev/pts /dev/shm /dev/mqueue cgroup2 /tmp, cgroup v2 delegation, sysctls, lo up, on a thread of its own from mounts on (not in the sum)",
    ),
    ("kiln-init: connect", "vsock connect to the host"),
    (
        "host handshake",
        "Hello to Job received (the wait for the host)",
    ),
    (
        "kiln-init: configure",
        "clock, entropy, hostname, DNS from the Job",
    ),
    (
        "runner exec",
        "cgroup for the runner, spawn as `runner`, exec, to the probe's first instruction",
    ),
];

/// Phases of the systemd path, in order.
pub const SYSTEMD_PHASES: &[(&str, &str)] = &[
    ("VMM start", "host: vhost-device-vsock up, QEMU spawned"),
    ("pre-kernel", "QEMU set-up, kernel load and decompression (estimated)"),
    ("kernel", "kernel start to the initramfs script's first stamp (includes unpacking the initramfs, busybox sh start)"),
    ("initramfs: mounts", "/proc /sys /dev"),
    ("initramfs: modules", "insmod of the same modules, dependencies first"),
    ("initramfs: root", "the same overlay root on the same disks"),
    ("systemd to runner exec", "switch_root, systemd as PID 1 to multi-user's runner unit, its exec as `runner`, to the probe's first instruction"),
];

/// What each path includes, for BENCHMARKS.md.
pub(super) fn kiln_includes(modular: bool) -> Vec<String> {
    let first = if modular {
        "the bench image's own initramfs: kiln-init as /init plus the modules; kiln-init mounts, starts loading the modules on threads of their own, builds the overlay root on the scratch disk (laid out on the host from the image's scratch skeleton, as on the systemd path) as soon as its disks and overlayfs are in, while a thread of its own sets up cgroups, sysctls and lo; then switches into the root and waits for the last loads (vsock, tun)"
    } else {
        "no initramfs, as Firecracker boots it: the kernel mounts the base image read-only as / and runs kiln-init from it as /sbin/init; kiln-init mounts, builds the overlay root on the scratch disk (laid out on the host from the image's scratch skeleton, as on the systemd path), while a thread of its own sets up cgroups, sysctls and lo; then pivots into the root"
    };
    vec![
        first.into(),
        "it dials the host, which answers with the Job through the real conversation code (kiln::vm::Launcher, as `kiln run`)".into(),
        "the Job runs the probe as user `runner` in its own cgroup".into(),
    ]
}

fn systemd_includes(version: &str, modular: bool) -> Vec<String> {
    let first = if modular {
        "a generated busybox initramfs (busybox, the probe, the same modules): mounts /proc /sys /dev, insmods the modules, builds the same overlay root, `switch_root` to /lib/systemd/systemd"
    } else {
        "a generated busybox initramfs (busybox and the probe; nothing to load): mounts /proc /sys /dev, builds the same overlay root, `switch_root` to /lib/systemd/systemd"
    };
    vec![
        first.into(),
        format!("systemd {version} from Debian bookworm (systemd + systemd-sysv, no Recommends: no dbus, no udev) with an empty /etc/machine-id, as the image builder leaves it: every VM is a first boot"),
        "the image's other units start as on any boot of it (on the console: journald, tmpfiles, podman's socket and services, apt and e2scrub timers, gettys)".into(),
        "the runner unit from rootfs/bench-systemd (After=network.target, User=runner, enabled for multi-user.target) starting the probe, which reports to the host over vsock".into(),
        "no host handshake: the runner's configuration would be baked into the image or fetched by the runner itself".into(),
    ]
}

/// A kernel both paths boot, and how each boots it.
pub struct BootKernel {
    /// What the report calls it.
    pub name: String,
    /// Whether the paths load modules on it.
    pub modular: bool,
    /// What kiln-init's path boots (as `kiln run` would).
    pub kiln: BootImage,
    pub systemd: SystemdPath,
}

impl BootKernel {
    /// Debian's cloud kernel, as the bench image carries it: its initramfs
    /// and modules for kiln-init; `systemd_initrd` for the systemd path.
    pub fn debian(kit: &Kit, release: &str, systemd_initrd: PathBuf) -> anyhow::Result<BootKernel> {
        let backend = Backend::Qemu(kit.qemu.clone());
        let modules = modules_for(kit, &backend);
        Ok(BootKernel {
            name: format!("Debian's cloud kernel {release} (modular)"),
            modular: true,
            kiln: kit.image.boot.clone(),
            systemd: SystemdPath::new(
                kit,
                kit.image.boot.kernel.clone(),
                systemd_initrd,
                &modules,
                "debian",
            )?,
        })
    }

    /// Kiln's production kernel (`vmlinux`, everything built in): no
    /// initramfs and nothing to load on kiln-init's path; `systemd_initrd`
    /// (without modules) for the systemd path.
    pub fn built_in(
        kit: &Kit,
        vmlinux: PathBuf,
        systemd_initrd: PathBuf,
    ) -> anyhow::Result<BootKernel> {
        Ok(BootKernel {
            name: "Kiln's production kernel (`cargo xtask kernel`, everything built in)".into(),
            modular: false,
            kiln: BootImage {
                kernel: vmlinux.clone(),
                arch: kiln::vmm::Arch::host(),
                initrd: None,
                modules: ModuleSet::Listed(Vec::new()),
                ..kit.image.boot.clone()
            },
            systemd: SystemdPath::new(kit, vmlinux, systemd_initrd, &[], "built-in")?,
        })
    }
}

/// One kiln-init run's figures, in milliseconds.
pub(super) struct KilnRun {
    pub phases: Vec<(&'static str, f64)>,
    pub total: f64,
    pub init_share: f64,
    pub modules: f64,
    pub prepare: f64,
    /// The VMM's exit to the VM's last file and link removed.
    pub teardown: f64,
    pub report: Report,
}

/// One systemd run's figures, in milliseconds.
struct SystemdRun {
    phases: Vec<(&'static str, f64)>,
    total: f64,
    init_share: f64,
    modules: f64,
    prepare: f64,
    report: Report,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ns_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A later guest stamp minus an earlier one, in ms (negative if the guest
/// reported them out of order, which the figures then show).
fn span(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

fn stamp(phases: &[PhaseStamp], p: BootPhase) -> anyhow::Result<u64> {
    phases
        .iter()
        .find(|s| s.phase == p)
        .map(|s| s.at_ns)
        .with_context(|| format!("kiln-init did not report its {p:?} stamp"))
}

async fn kiln_once(
    kit: &Kit,
    launcher: &Launcher,
    boot: &BootImage,
    tag: &str,
) -> anyhow::Result<KilnRun> {
    kiln_once_with(kit, launcher, boot, tag, None).await
}

/// [`kiln_once`], the VM with a network when `network` is given (the
/// launcher must have one: `Launcher::with_network`).
pub(super) async fn kiln_once_with(
    kit: &Kit,
    launcher: &Launcher,
    boot: &BootImage,
    tag: &str,
    network: Option<NetRequest>,
) -> anyhow::Result<KilnRun> {
    let job = kit.job(&[probe::GUEST_PATH])?;
    let mut sink = CollectSink::default();
    let req = VmRequest {
        network,
        ..kit.request_with(boot.clone(), job)
    };
    let report = launcher
        .run(req, &mut sink, StopSignal::never(), None)
        .await;
    let _ = std::fs::write(
        kit.console_dir.join(format!("console-kiln-{tag}.log")),
        &report.console_tail,
    );
    let tail = || report.console_tail.clone();
    match &report.result {
        Ok(JobEnd::Exited(e)) if e.status == ExitStatus::Code(0) => {}
        other => bail!(
            "the kiln-init boot failed: {other:?}\nstderr: {}\nconsole tail:\n{}",
            String::from_utf8_lossy(&sink.stderr),
            tail()
        ),
    }
    if let Err(e) = &report.teardown {
        bail!("teardown: {e}");
    }
    let summary = report.summary.as_ref().context("no conversation summary")?;
    let probe = probe::parse_report(&String::from_utf8_lossy(&sink.stdout))
        .with_context(|| format!("no probe line in the job's output: {:?}", sink.stdout))?;
    let p = summary.phases();
    let init = stamp(&p, BootPhase::InitStart)?;
    let mounted = stamp(&p, BootPhase::Mounted)?;
    let root_devices = stamp(&p, BootPhase::RootDevicesReady)?;
    let modules = stamp(&p, BootPhase::ModulesLoaded)?;
    let root = stamp(&p, BootPhase::RootReady)?;
    let cgroups = stamp(&p, BootPhase::CgroupsReady)?;
    let channel = stamp(&p, BootPhase::ChannelOpen)?;
    let received = stamp(&p, BootPhase::JobReceived)?;
    let configured = stamp(&p, BootPhase::JobConfigured)?;
    // PID 1 waits for the last loads after the root only if they are
    // still running then.
    let modules_joined = root.max(modules);
    let t = &report.timing;
    let vmm_start = t.vmm_start.context("no VMM start time")?;
    let pre_kernel = t.pre_kernel.context("no pre-kernel estimate")?;
    let handshake = span(channel, received);
    let phases = vec![
        ("VMM start", ms(vmm_start)),
        ("pre-kernel", ms(pre_kernel)),
        ("kernel", ns_ms(init)),
        ("kiln-init: mounts", span(init, mounted)),
        ("kiln-init: root's modules", span(mounted, root_devices)),
        ("kiln-init: root", span(root_devices, root)),
        ("kiln-init: other modules", span(root, modules_joined)),
        ("kiln-init: modules (beside)", span(mounted, modules)),
        ("kiln-init: cgroups (beside)", span(mounted, cgroups)),
        ("kiln-init: connect", span(modules_joined, channel)),
        ("host handshake", handshake),
        ("kiln-init: configure", span(received, configured)),
        ("runner exec", span(configured, probe.at_ns)),
    ];
    Ok(KilnRun {
        phases,
        total: ms(vmm_start) + ms(pre_kernel) + ns_ms(probe.at_ns),
        init_share: span(init, probe.at_ns) - handshake,
        // What a kernel with the modules built in would not wait for: PID
        // 1's waits for the loads (the loads themselves run beside).
        modules: span(mounted, root_devices) + span(root, modules_joined),
        prepare: t.prepare.map_or(0.0, ms),
        teardown: t.teardown.map_or(0.0, ms),
        report: probe,
    })
}

/// What the systemd path needs besides the kit.
pub struct SystemdPath {
    pub backend: Backend,
    pub cids: CidAllocator,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `kiln.modules=...`, exactly as the VM layer passes it to kiln-init,
    /// then the kit's own arguments: the same command line as kiln-init's.
    pub kernel_args: Vec<String>,
    /// Names the kernel in console log file names.
    pub tag: &'static str,
    /// The last boot's console log is copied here, for diagnosis.
    pub console_copy: PathBuf,
}

impl SystemdPath {
    pub fn new(
        kit: &Kit,
        kernel: PathBuf,
        initrd: PathBuf,
        modules: &[String],
        tag: &'static str,
    ) -> anyhow::Result<SystemdPath> {
        Ok(SystemdPath {
            cids: CidAllocator::new(kit.dirs.cids(), DEFAULT_RANGE)?,
            kernel,
            kernel_args: (!modules.is_empty())
                .then(|| format!("kiln.modules={}", modules.join(",")))
                .into_iter()
                .chain(kit.kernel_args.iter().cloned())
                .collect(),
            backend: Backend::Qemu(kit.qemu.clone()),
            initrd,
            tag,
            console_copy: kit.console_dir.join(format!("console-systemd-{tag}.log")),
        })
    }
}

/// The modules the VM layer asks kiln-init to load for a VM with a base
/// image and a scratch disk (see `kiln::vm::run`).
pub fn modules_for(kit: &Kit, backend: &Backend) -> Vec<String> {
    let spec = spec_shape(
        kit,
        &kit.image.boot.kernel,
        Path::new("/"),
        "x",
        3,
        None,
        Vec::new(),
    );
    kit.image
        .boot
        .modules
        .select(&backend.guest_modules(&spec))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn spec_shape(
    kit: &Kit,
    kernel: &Path,
    dir: &Path,
    id: &str,
    cid: u32,
    initrd: Option<PathBuf>,
    kernel_args: Vec<String>,
) -> VmSpec {
    VmSpec {
        id: id.to_owned(),
        dir: dir.to_owned(),
        kernel: kernel.to_owned(),
        arch: kiln::vmm::Arch::host(),
        initrd,
        base_image: kit.image.boot.base_image.clone(),
        scratch_disk: Some(dir.join("scratch")),
        kernel_args,
        vcpus: kit.vcpus,
        memory_mib: kit.memory_mib,
        guest_cid: cid,
        net: None,
        console_limit_bytes: 1 << 20,
    }
}

async fn systemd_once(kit: &Kit, sp: &SystemdPath) -> anyhow::Result<SystemdRun> {
    let start = Instant::now();
    // Claimed first and dropped last, as the VM layer does: a `kiln serve`
    // starting meanwhile leaves this VM alone.
    let (owner, dir) = kiln::vm::owner::VmOwner::claim_new(&kit.dirs)?;
    let id = owner.id().to_owned();
    let scratch = kit.dirs.scratch_path(&id)?;
    // Declared before the VM, so dropped after it (the VMM is killed on
    // drop) also when this future is dropped half way (Ctrl-C).
    let _files = RemoveOnDrop(vec![scratch.clone(), dir.clone()]);
    let lease = sp.cids.lease()?;
    let mut vm: Option<RunningVm> = None;
    let result = async {
        let s = scratch.clone();
        // The same scratch disk as kiln-init's path: the image's skeleton
        // laid onto it (the initramfs script then copies nothing either).
        let skeleton = kit.image.boot.scratch_skeleton.clone();
        tokio::task::spawn_blocking(move || {
            kiln::disk::create_scratch_from(&s, SCRATCH_BYTES, skeleton.as_deref())
        })
        .await??;
        let mut spec = spec_shape(
            kit,
            &sp.kernel,
            &dir,
            &id,
            lease.cid(),
            Some(sp.initrd.clone()),
            sp.kernel_args.clone(),
        );
        spec.scratch_disk = Some(scratch.clone());
        let prepared = Instant::now();
        let started = sp.backend.start(&spec, ConsoleMode::Log).await?;
        let vmm_started = Instant::now();
        let running = vm.insert(started.vm);
        let console = running.console_log().to_owned();
        let accepted = tokio::select! {
            r = started.listener.accept(2 * super::vmkit::BOOT_TIMEOUT) => r?,
            s = running.exited() => bail!(
                "the VMM exited ({s:?}) before the probe reported; console:\n{}",
                console_tail(&console)
            ),
        };
        let accepted_at = Instant::now();
        let mut line = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            accepted.take(4096).read_to_end(&mut line),
        )
        .await
        .context("the probe did not finish its report within 30 s")??;
        let report = probe::parse_report(&String::from_utf8_lossy(&line))
            .with_context(|| format!("not a probe report: {:?}", String::from_utf8_lossy(&line)))?;
        // The unit reboots the guest once the probe exits; QEMU then ends.
        if let Some(v) = vm.take() {
            let exit = v.shutdown(Duration::from_secs(60)).await?;
            if exit.killed {
                eprintln!("boot: the systemd guest did not power off in 60 s; killed");
            }
        }
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let _ = std::fs::write(&sp.console_copy, &text);
        let stamps = probe::parse_stamps(&text);
        let at = |name: &str| {
            stamps
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, ns)| *ns)
                .with_context(|| {
                    format!(
                        "no {name} stamp on the console:\n{}",
                        console_tail(&console)
                    )
                })
        };
        let (init, mounted, modules, root) = (
            at(STAMP_INIT)?,
            at(STAMP_MOUNTED)?,
            at(STAMP_MODULES)?,
            at(STAMP_ROOT)?,
        );
        let vmm_start = vmm_started - prepared;
        let pre_kernel =
            (accepted_at - vmm_started).saturating_sub(Duration::from_nanos(report.at_ns));
        let phases = vec![
            ("VMM start", ms(vmm_start)),
            ("pre-kernel", ms(pre_kernel)),
            ("kernel", ns_ms(init)),
            ("initramfs: mounts", span(init, mounted)),
            ("initramfs: modules", span(mounted, modules)),
            ("initramfs: root", span(modules, root)),
            ("systemd to runner exec", span(root, report.at_ns)),
        ];
        Ok(SystemdRun {
            phases,
            total: ms(vmm_start) + ms(pre_kernel) + ns_ms(report.at_ns),
            init_share: span(init, report.at_ns),
            modules: span(mounted, modules),
            prepare: ms(prepared - start),
            report,
        })
    }
    .await;
    if let Some(v) = vm.take() {
        let _ = v.kill().await;
    }
    drop(lease);
    result
}

/// Removes files and directories when dropped.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

fn console_tail(path: &Path) -> String {
    kiln::vmm::qemu::console::read_tail(path, 4096)
}

/// Accumulates one path's runs.
#[derive(Default)]
pub(super) struct Acc {
    phases: Series,
    total: Vec<f64>,
    share: Vec<f64>,
    share_wo_modules: Vec<f64>,
    prepare: Vec<f64>,
    rss: Vec<f64>,
    hwm: Vec<f64>,
    pid1: String,
}

impl Acc {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &mut self,
        phases: &[(&str, f64)],
        total: f64,
        share: f64,
        modules: f64,
        prepare: f64,
        r: &Report,
    ) {
        for (n, v) in phases {
            self.phases.push(n, *v);
        }
        self.total.push(total);
        self.share.push(share);
        self.share_wo_modules.push(share - modules);
        self.prepare.push(prepare);
        self.rss.push(r.pid1_rss_kib as f64);
        self.hwm.push(r.pid1_hwm_kib as f64);
        self.pid1 = r.pid1.clone();
    }

    pub(super) fn finish(
        self,
        name: &str,
        described: &[(&str, &str)],
        includes: Vec<String>,
    ) -> anyhow::Result<BootPath> {
        let stat =
            |v: &[f64], what: &str| Stat::of(v).with_context(|| format!("no {what} figures"));
        let phases = described
            .iter()
            .filter_map(|(n, what)| {
                self.phases.get(n).map(|stat| Figure {
                    name: (*n).to_owned(),
                    what: (*what).to_owned(),
                    stat,
                })
            })
            .collect();
        Ok(BootPath {
            name: name.to_owned(),
            includes,
            phases,
            total: stat(&self.total, "total")?,
            init_share: stat(&self.share, "init share")?,
            init_share_without_modules: stat(&self.share_wo_modules, "init share")?,
            prepare: stat(&self.prepare, "prepare")?,
            pid1_rss_kib: stat(&self.rss, "RSS")?,
            pid1_hwm_kib: stat(&self.hwm, "RSS")?,
            pid1: self.pid1,
        })
    }
}

/// Both paths' runs on one kernel.
#[derive(Default)]
struct Pair {
    kiln: Acc,
    systemd: Acc,
}

/// Runs both paths on every kernel `runs` times each, alternating, after
/// one discarded warm-up boot of each (page cache, the KVM probe's cache).
/// The first kernel is the one the summary and the targets lead with.
pub async fn run(
    kit: &Kit,
    kernels: &[BootKernel],
    runs: usize,
    label: &str,
) -> anyhow::Result<BootResults> {
    let launcher = kit.launcher()?;
    let mut incidents = Vec::new();
    eprintln!("boot: warm-up (one boot of each path, not counted)");
    for k in kernels {
        with_retries(
            &format!("kiln-init warm-up boot ({})", k.systemd.tag),
            &mut incidents,
            || kiln_once(kit, &launcher, &k.kiln, k.systemd.tag),
        )
        .await?;
        with_retries(
            &format!("systemd warm-up boot ({})", k.systemd.tag),
            &mut incidents,
            || systemd_once(kit, &k.systemd),
        )
        .await?;
    }
    let mut pairs: Vec<Pair> = kernels.iter().map(|_| Pair::default()).collect();
    for i in 1..=runs {
        for (k, pair) in kernels.iter().zip(&mut pairs) {
            let tag = k.systemd.tag;
            let kr = with_retries(
                &format!("kiln-init boot {i} ({tag})"),
                &mut incidents,
                || kiln_once(kit, &launcher, &k.kiln, k.systemd.tag),
            )
            .await?;
            pair.kiln.add(
                &kr.phases,
                kr.total,
                kr.init_share,
                kr.modules,
                kr.prepare,
                &kr.report,
            );
            let sr = with_retries(&format!("systemd boot {i} ({tag})"), &mut incidents, || {
                systemd_once(kit, &k.systemd)
            })
            .await?;
            pair.systemd.add(
                &sr.phases,
                sr.total,
                sr.init_share,
                sr.modules,
                sr.prepare,
                &sr.report,
            );
            eprintln!(
                "boot {i}/{runs} ({tag}): kiln-init {:.0} ms to runner (PID 1 share {:.1} ms), systemd {:.0} ms (PID 1 share {:.0} ms) [{label}]",
                kr.total, kr.init_share, sr.total, sr.init_share
            );
        }
    }
    let version =
        package_version(&kit.image.dir, "systemd").unwrap_or_else(|| "(version unknown)".into());
    let mut compared = Vec::new();
    for (k, pair) in kernels.iter().zip(pairs) {
        let kiln = pair
            .kiln
            .finish("kiln-init", KILN_PHASES, kiln_includes(k.modular))?;
        let systemd = pair.systemd.finish(
            "systemd",
            SYSTEMD_PHASES,
            systemd_includes(&version, k.modular),
        )?;
        compared.push(BootComparison {
            kernel: k.name.clone(),
            modular: k.modular,
            ratios: ratios(&kiln, &systemd, k.modular),
            kiln,
            systemd,
        });
    }
    let mut compared = compared.into_iter();
    let first = compared.next().context("no kernel to boot")?;
    let built_in = compared.next();
    let targets = targets(&first, built_in.as_ref(), label);
    Ok(BootResults {
        kernel: first.kernel,
        kiln: first.kiln,
        systemd: first.systemd,
        ratios: first.ratios,
        targets,
        incidents,
        built_in,
    })
}

/// A package's version from the image manifest's `packages` map.
fn package_version(image: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(image.join("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&text).ok()?;
    m.get("packages")?.get(name)?.as_str().map(str::to_owned)
}

fn ratio(what: &str, kiln: f64, systemd: f64) -> Ratio {
    Ratio {
        what: what.to_owned(),
        kiln_ms: kiln,
        systemd_ms: systemd,
        ratio: if kiln > 0.0 { systemd / kiln } else { f64::NAN },
    }
}

fn phase_median(p: &BootPath, name: &str) -> f64 {
    p.phases
        .iter()
        .find(|f| f.name == name)
        .map_or(f64::NAN, |f| f.stat.median)
}

pub fn ratios(kiln: &BootPath, systemd: &BootPath, modular: bool) -> Vec<Ratio> {
    let mut r = vec![
        ratio(
            "VMM start to runner exec (kiln-init's includes the host handshake)",
            kiln.total.median,
            systemd.total.median,
        ),
        ratio(
            "PID 1's share: first userspace instruction to runner exec, without the wait for the host",
            kiln.init_share.median,
            systemd.init_share.median,
        ),
    ];
    if modular {
        r.push(ratio(
            "PID 1's share without loading modules (PID 1's waits for loads taken out of kiln-init's, the insmods of the initramfs's)",
            kiln.init_share_without_modules.median,
            systemd.init_share_without_modules.median,
        ));
    }
    r.push(ratio(
        "kiln-init vs systemd alone (switch_root to runner exec: no initramfs at all)",
        kiln.init_share_without_modules.median,
        phase_median(systemd, "systemd to runner exec"),
    ));
    r.push(ratio(
        "kernel (same kernel: a sanity check, ~1; kiln-init's path has no initramfs to unpack on the built-in kernel)",
        phase_median(kiln, "kernel"),
        phase_median(systemd, "kernel"),
    ));
    r
}

pub fn targets(
    first: &BootComparison,
    built_in: Option<&BootComparison>,
    label: &str,
) -> Vec<Target> {
    let verdict = |ok: bool| if ok { "met" } else { "not met" }.to_owned();
    let share = |c: &BootComparison| c.kiln.init_share.median;
    let ratio = |c: &BootComparison| c.systemd.init_share.median / c.kiln.init_share.median;
    let lowest = built_in.map_or(share(first), |b| share(b).min(share(first)));
    let mut t = vec![Target {
        what: "kiln-init's own share (first instruction to runner exec, no host wait)".into(),
        goal: "under 5 ms on KVM".into(),
        measured: format!(
            "{lowest:.1} ms median under {label}{}",
            if built_in.is_some() {
                " (production kernel)"
            } else {
                ""
            }
        ),
        verdict: "not measurable here".into(),
        note: format!(
            "no KVM that runs guests on this host; {label} emulates every instruction, so this \
             is an upper bound, not a KVM figure"
        ),
    }];
    if let Some(b) = built_in {
        let r = ratio(b);
        t.push(Target {
            what: "kiln-init's share vs systemd's path (same VMM), Kiln's production kernel".into(),
            goal: "at least 20x below".into(),
            measured: format!(
                "{r:.1}x ({label}, medians; {} ms vs {} ms)",
                super::render::ms(share(b)),
                super::render::ms(b.systemd.init_share.median)
            ),
            verdict: verdict(r >= 20.0),
            note: "the kernel Kiln ships, everything built in: nothing to load on either path; \
                   systemd's path: the initramfs's first instruction to the runner unit's exec"
                .into(),
        });
    }
    let r = ratio(first);
    t.push(Target {
        what: format!("the same on {}", first.kernel),
        goal: "at least 20x below".into(),
        measured: format!(
            "{r:.1}x ({label}, medians; {} ms vs {} ms, both loading the same modules)",
            super::render::ms(share(first)),
            super::render::ms(first.systemd.init_share.median)
        ),
        verdict: verdict(r >= 20.0),
        note: "the development and CI kernel: module loading (the kernel's relocation and \
               device probing) is in both shares"
            .into(),
    });
    t
}

/// kiln-init's RSS and high-water mark (KiB) as the runner starts, over
/// `runs` boots, for when the boot benchmark itself is not run.
pub async fn kiln_pid1_memory(kit: &Kit, runs: usize) -> anyhow::Result<(Stat, Stat)> {
    let launcher = kit.launcher()?;
    let (mut rss, mut hwm) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let k = kiln_once(kit, &launcher, &kit.image.boot, "debian")
            .await
            .with_context(|| format!("kiln-init boot {i} for memory"))?;
        rss.push(k.report.pid1_rss_kib as f64);
        hwm.push(k.report.pid1_hwm_kib as f64);
    }
    Ok((
        Stat::of(&rss).context("no RSS figures")?,
        Stat::of(&hwm).context("no RSS figures")?,
    ))
}
