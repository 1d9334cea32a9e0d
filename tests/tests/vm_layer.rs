//! The VM layer (`kiln::vm`): one VM's whole life through its public API,
//! with real VMs (QEMU, TCG where KVM cannot run the guest), and a leak
//! test: VMs that succeed and VMs made to fail at every step leave no
//! process, fd, file, socket or mount behind. Plus the Firecracker path of
//! the same layer against the fake jailer.
//!
//! Tests share this process's fds and children, so the leak tests take an
//! exclusive lock and the others a shared one, and all run on one async
//! runtime (a runtime per test would open fds whenever a test starts).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln::vm::{
    stop_channel, CollectSink, JobEnd, Launcher, OutputSink, Progress, RunError, StopHandle,
    StopSignal, VmReport, VmRequest,
};
use kiln_protocol::{BootPhase, ExitStatus, StopCause, Stream};
use kiln_vm_tests::job::RUNNER_UID;
use kiln_vm_tests::{assets, layer, shell_job};
use std::sync::{OnceLock, RwLock};

use tokio::sync::mpsc;
use tokio::time::Instant;

static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Runs a test beside the other shared ones.
fn shared<F: std::future::Future>(test: F) -> F::Output {
    let _g = EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(test)
}

/// Runs a test alone: nothing else in this process makes fds or children.
fn exclusive<F: std::future::Future>(test: F) -> F::Output {
    let _g = EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(test)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kiln=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn request(script: &str) -> VmRequest {
    let assets = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    VmRequest::new(layer::boot_image(assets), shell_job(script))
}

fn describe(r: &VmReport) -> String {
    format!(
        "vm {:?} ({} {}): {:?}\nteardown: {:?}\ntiming: {}\nconsole (end):\n{}",
        r.id,
        r.backend,
        r.detail,
        r.result,
        r.teardown,
        r.timing.render(),
        r.console_tail
    )
}

/// Records when each chunk arrived.
#[derive(Default)]
struct TimedSink {
    inner: CollectSink,
    arrivals: Vec<(Stream, Instant)>,
}

impl OutputSink for TimedSink {
    async fn write(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        self.arrivals.push((stream, Instant::now()));
        self.inner.write(stream, data).await
    }
}

// (a) One VM's life.

#[test]
fn a_job_runs_output_streams_and_every_phase_is_timed() {
    init_tracing();
    shared(job_runs_output_streams_and_every_phase_is_timed());
}

async fn job_runs_output_streams_and_every_phase_is_timed() {
    let root = tempfile::tempdir().unwrap();
    let (launcher, dirs) = layer::launcher(root.path()).unwrap();
    let mut req = request("echo first; echo err >&2; sleep 1; echo \"second $(id -u)\"");
    req.scratch_bytes = Some(1 << 30);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sink = TimedSink::default();
    let r = launcher
        .run(req, &mut sink, StopSignal::never(), Some(tx))
        .await;
    let d = describe(&r);
    let Ok(JobEnd::Exited(exit)) = &r.result else {
        panic!("{d}")
    };
    assert_eq!(exit.status, ExitStatus::Code(0), "{d}");
    assert_eq!(exit.stopped_by, None);
    assert!(r.teardown.is_ok(), "{d}");
    assert_eq!(
        String::from_utf8_lossy(&sink.inner.stdout),
        format!("first\nsecond {RUNNER_UID}\n")
    );
    assert_eq!(sink.inner.stderr, b"err\n");

    // Streamed: "first" reached the host while the job still ran.
    let s = r.summary.as_ref().unwrap();
    let ended = s.host.ended.unwrap();
    let first = sink.arrivals.first().unwrap().1;
    assert!(
        ended.duration_since(first) >= Duration::from_millis(800),
        "the first chunk arrived only {:?} before the job's end",
        ended.duration_since(first)
    );

    // Milestones in order.
    let mut seen = Vec::new();
    while let Ok(p) = rx.try_recv() {
        seen.push(p);
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|p| match p {
            Progress::Prepared { .. } => "prepared",
            Progress::VmmStarted { .. } => "vmm",
            Progress::Hello => "hello",
            Progress::JobSent => "job",
            Progress::RunnerStarted { .. } => "runner",
            Progress::JobEnded => "ended",
        })
        .collect();
    assert_eq!(
        kinds,
        ["prepared", "vmm", "hello", "job", "runner", "ended"]
    );

    // The guest's boot stamps, each once, in time order. The module loads
    // and the cgroup set-up run on threads of their own from Mounted on:
    // the cgroups are done before the root switch, the loads before the
    // channel opens.
    let phases: Vec<BootPhase> = s.phases().iter().map(|p| p.phase).collect();
    let main_thread = [
        BootPhase::InitStart,
        BootPhase::Mounted,
        BootPhase::RootDevicesReady,
        BootPhase::RootReady,
        BootPhase::ChannelOpen,
        BootPhase::JobReceived,
        BootPhase::JobConfigured,
        BootPhase::RunnerSpawned,
    ];
    let beside = [BootPhase::CgroupsReady, BootPhase::ModulesLoaded];
    let on_main_thread: Vec<BootPhase> = phases
        .iter()
        .copied()
        .filter(|p| !beside.contains(p))
        .collect();
    assert_eq!(on_main_thread, main_thread, "{d}");
    let at = |want| phases.iter().position(|p| *p == want);
    let cg = at(BootPhase::CgroupsReady).expect("CgroupsReady stamped");
    assert!(
        at(BootPhase::Mounted) < Some(cg) && Some(cg) < at(BootPhase::RootReady),
        "{phases:?}"
    );
    let loaded = at(BootPhase::ModulesLoaded).expect("ModulesLoaded stamped");
    assert!(
        at(BootPhase::Mounted) < Some(loaded) && Some(loaded) < at(BootPhase::ChannelOpen),
        "{phases:?}"
    );
    assert!(s.phases().windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    let h = s.host;
    let host = [h.accepted, h.hello, h.job_sent, h.runner_started, h.ended];
    assert!(host.iter().all(Option::is_some), "{h:?}");
    assert!(host.windows(2).all(|w| w[0] <= w[1]), "{h:?}");

    // Every phase present; together they make up the total.
    let t = r.timing;
    for (name, d) in t.phases() {
        assert!(d.is_some(), "phase {name} missing: {}", t.render());
    }
    assert!(t.job.unwrap() >= Duration::from_secs(1), "{}", t.render());
    assert!(t.kernel.unwrap() > Duration::ZERO);
    let sum: Duration = t.phases().iter().filter_map(|(_, d)| *d).sum();
    let total = t.total.as_secs_f64();
    assert!(
        (sum.as_secs_f64() - total).abs() <= 0.15 * total + 0.3,
        "phases add up to {:.2} s of {total:.2} s: {}",
        sum.as_secs_f64(),
        t.render()
    );
    let line = t.render();
    for part in ["VMM start", "kernel", "kiln-init", "job"] {
        assert!(line.contains(part), "{line}");
    }
    eprintln!("timing: {line}");

    // Nothing left: directory, scratch disk, CID lease.
    assert!(
        layer::entries_below(&dirs.runtime)
            .iter()
            .all(|p| p.is_dir()),
        "{:?}",
        layer::entries_below(&dirs.runtime)
    );
    assert!(layer::scratch_disks_left(&dirs.disks).is_empty());
}

#[test]
fn a_exit_codes_and_signals_reach_the_caller() {
    init_tracing();
    shared(exit_codes_and_signals_reach_the_caller());
}

async fn exit_codes_and_signals_reach_the_caller() {
    let root = tempfile::tempdir().unwrap();
    let (launcher, _) = layer::launcher(root.path()).unwrap();
    let run = |script: &'static str| {
        let launcher = launcher.clone();
        async move {
            let mut sink = CollectSink::default();
            let r = launcher
                .run(request(script), &mut sink, StopSignal::never(), None)
                .await;
            (r, sink)
        }
    };
    let ((seven, out7), (killed, out_k)) = tokio::join!(
        run("echo partial; exit 7"),
        run("echo before; kill -KILL $$; echo after"),
    );
    assert_eq!(
        seven.exit_status(),
        Some(ExitStatus::Code(7)),
        "{}",
        describe(&seven)
    );
    assert_eq!(out7.stdout, b"partial\n");
    assert_eq!(
        killed.exit_status(),
        Some(ExitStatus::Signal(9)),
        "{}",
        describe(&killed)
    );
    assert_eq!(killed.exit_status().unwrap().shell_code(), 128 + 9);
    assert_eq!(out_k.stdout, b"before\n");
    assert!(seven.teardown.is_ok() && killed.teardown.is_ok());
}

#[test]
fn a_missing_kernel_fails_before_anything_is_made() {
    shared(missing_kernel_fails_before_anything_is_made());
}

async fn missing_kernel_fails_before_anything_is_made() {
    let root = tempfile::tempdir().unwrap();
    let (launcher, dirs) = layer::launcher(root.path()).unwrap();
    let mut req = request("true");
    req.boot.kernel = root.path().join("no-such-vmlinuz");
    let r = launcher
        .run(req, &mut CollectSink::default(), StopSignal::never(), None)
        .await;
    let err = r.result.as_ref().expect_err("must fail").to_string();
    assert!(err.contains("no-such-vmlinuz"), "{err}");
    assert_eq!(r.id, None);
    assert!(layer::entries_below(&dirs.runtime).is_empty());
}

/// `NAME=` of each variable in `/proc/<pid>/environ`.
fn environ_names(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v.split(|&b| b == b'=').next().unwrap()).into_owned())
        .collect()
}

#[test]
fn a_the_vmm_and_its_vsock_daemon_get_none_of_kilns_environment() {
    init_tracing();
    shared(vmm_environment());
}

async fn vmm_environment() {
    // What a leak would show: cargo sets it for every test process.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let root = tempfile::tempdir().unwrap();
    let (launcher, _dirs) = layer::launcher(root.path()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let seen = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            if let Progress::VmmStarted { pid: Some(pid) } = p {
                let vhost: Vec<u32> = layer::children()
                    .into_iter()
                    .filter(|(_, comm)| comm.starts_with("vhost-device"))
                    .map(|(pid, _)| pid)
                    .collect();
                let vhost_envs: Vec<Vec<String>> =
                    vhost.iter().map(|p| environ_names(*p)).collect();
                return Some((environ_names(pid), vhost_envs));
            }
        }
        None
    });
    let r = launcher
        .run(
            request("sleep 1"),
            &mut CollectSink::default(),
            StopSignal::never(),
            Some(tx),
        )
        .await;
    let d = describe(&r);
    assert!(matches!(&r.result, Ok(JobEnd::Exited(_))), "{d}");
    let (qemu, vhost) = seen.await.unwrap().expect("no VmmStarted with a pid");
    assert_eq!(qemu, ["PATH"], "QEMU's environment");
    assert!(
        !vhost.is_empty(),
        "no vhost-device-vsock among this process's children"
    );
    for env in vhost {
        assert_eq!(env, ["PATH"], "vhost-device-vsock's environment");
    }
}

// (b) Leaks.

/// How each VM of the leak test is made to end.
#[derive(Debug, Clone, Copy)]
enum Case {
    Ok { scratch: bool },
    ExitSeven,
    MissingKernel,
    VmmKilledAtStart,
    NoHello,
    BootTimeoutMidKernel,
    DeadlineSigterm,
    DeadlineIgnoringSigterm,
    Cancel,
    Kill,
    Panic,
    GuestError,
}

/// Panics at the first output: a bug in a caller's sink.
struct PanickingSink;

impl OutputSink for PanickingSink {
    async fn write(&mut self, _stream: Stream, _data: &[u8]) -> std::io::Result<()> {
        panic!("a sink that panics (on purpose)");
    }
}

/// Acts on milestones: kills the VMM as soon as it runs, or stops the job
/// once it runs.
fn watch(case: Case, stop: StopHandle) -> mpsc::UnboundedSender<Progress> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            match (case, p) {
                (Case::VmmKilledAtStart, Progress::VmmStarted { pid: Some(pid) }) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                (Case::Cancel, Progress::RunnerStarted { .. }) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    stop.cancel();
                }
                (Case::Kill, Progress::RunnerStarted { .. }) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    stop.kill();
                }
                _ => {}
            }
        }
    });
    tx
}

/// Runs one case; `Err` says how it ended differently than intended.
async fn run_case(launcher: Launcher, root: &Path, case: Case) -> Result<(), String> {
    let mut req = request(match case {
        Case::Ok { .. } => "echo ok",
        Case::ExitSeven => "exit 7",
        Case::DeadlineSigterm | Case::Cancel | Case::Kill | Case::Panic => "echo running; sleep 30",
        Case::DeadlineIgnoringSigterm => "trap '' TERM; echo running; sleep 30",
        _ => "echo unreachable",
    });
    match case {
        Case::Ok { scratch: true } => req.scratch_bytes = Some(2 << 30),
        Case::MissingKernel => req.boot.kernel = root.join("missing-vmlinuz"),
        Case::NoHello => {
            // busybox sleep as PID 1: the kernel boots, nothing dials.
            req.kernel_args = vec!["rdinit=/bin/sleep".into(), "--".into(), "600".into()];
            req.timeouts.boot = Duration::from_secs(4);
        }
        Case::BootTimeoutMidKernel => req.timeouts.boot = Duration::from_millis(300),
        Case::DeadlineSigterm | Case::DeadlineIgnoringSigterm => {
            req.job.deadline_ms = 1500;
            req.job.grace_ms = 1000;
        }
        Case::GuestError => req.job.command.program = "/nonexistent/program".into(),
        _ => {}
    }
    let (stop, signal) = stop_channel();
    let progress = watch(case, stop);
    if let Case::Panic = case {
        let task = tokio::spawn(async move {
            launcher
                .run(req, &mut PanickingSink, signal, Some(progress))
                .await
        });
        return match task.await {
            Err(e) if e.is_panic() => Ok(()),
            other => Err(format!(
                "expected a panic, got {:?}",
                other.map(|r| r.result)
            )),
        };
    }
    let r = launcher
        .run(req, &mut CollectSink::default(), signal, Some(progress))
        .await;
    let d = describe(&r);
    if let Err(e) = &r.teardown {
        return Err(format!("teardown: {e}\n{d}"));
    }
    let ok = match (case, &r.result) {
        (Case::Ok { .. }, Ok(JobEnd::Exited(e))) => e.status == ExitStatus::Code(0),
        (Case::ExitSeven, Ok(JobEnd::Exited(e))) => e.status == ExitStatus::Code(7),
        (Case::MissingKernel, Err(RunError::Request(_))) => r.id.is_none(),
        (Case::VmmKilledAtStart, Err(RunError::VmmExitedBeforeHello { .. })) => true,
        (Case::NoHello | Case::BootTimeoutMidKernel, Err(RunError::Conversation(e))) => {
            e.to_string().contains("no guest connected")
        }
        (Case::DeadlineSigterm, Ok(JobEnd::Exited(e))) => {
            e.stopped_by == Some(StopCause::Deadline) && e.status == ExitStatus::Signal(15)
        }
        (Case::DeadlineIgnoringSigterm, Ok(JobEnd::Exited(e))) => {
            e.stopped_by == Some(StopCause::Deadline) && e.status == ExitStatus::Signal(9)
        }
        (Case::Cancel, Ok(JobEnd::Exited(e))) => e.stopped_by == Some(StopCause::Cancelled),
        (Case::Kill, Err(RunError::Killed)) => true,
        (Case::GuestError, Ok(JobEnd::GuestError(e))) => e.detail.contains("nonexistent"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(d)
    }
}

#[test]
fn b_twenty_vms_some_failing_leave_nothing_behind() {
    init_tracing();
    exclusive(twenty_vms_some_failing_leave_nothing_behind());
}

async fn twenty_vms_some_failing_leave_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let (launcher, dirs) = layer::launcher(root.path()).unwrap();

    // One VM first: the runtime's lazily made fds (signal pipe, blocking
    // pool) then count in the baseline.
    run_case(launcher.clone(), root.path(), Case::Ok { scratch: false })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_before = layer::open_fds();
    assert!(layer::children().is_empty(), "{:?}", layer::children());

    let cases = [
        Case::Panic,
        Case::VmmKilledAtStart,
        Case::Ok { scratch: true },
        Case::MissingKernel,
        Case::NoHello,
        Case::Cancel,
        Case::ExitSeven,
        Case::BootTimeoutMidKernel,
        Case::Kill,
        Case::DeadlineSigterm,
        Case::Ok { scratch: false },
        Case::GuestError,
        Case::DeadlineIgnoringSigterm,
        Case::Ok { scratch: true },
        Case::VmmKilledAtStart,
        Case::NoHello,
        Case::Cancel,
        Case::Ok { scratch: false },
        Case::Kill,
        Case::MissingKernel,
    ];
    assert_eq!(cases.len(), 20);
    let started = Instant::now();
    // Four at a time: enough to overlap, little enough for two TCG cores.
    let gate = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        let launcher = launcher.clone();
        let gate = gate.clone();
        let root = root.path().to_owned();
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire().await.unwrap();
            (i, case, run_case(launcher, &root, case).await)
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        let (i, case, r) = t.await.unwrap();
        if let Err(e) = r {
            failures.push(format!("VM {i} ({case:?}): {e}"));
        }
    }
    eprintln!("20 VMs in {:.1} s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The panicked VM's processes were SIGKILLed on drop; the runtime
    // reaps such orphans in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kids = layer::children();
        let fds = layer::open_fds();
        if kids.is_empty() && fds <= fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: children {kids:?}, fds {fds} (before: {fds_before}): {:?}",
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .map(|e| std::fs::read_link(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = layer::entries_below(&dirs.runtime)
        .into_iter()
        .filter(|p| !p.is_dir())
        .chain(layer::entries_below(&dirs.vms()))
        .chain(layer::entries_below(&dirs.cids()))
        .chain(layer::scratch_disks_left(&dirs.disks))
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    assert!(
        layer::unix_sockets_below(root.path()).is_empty(),
        "{:?}",
        layer::unix_sockets_below(root.path())
    );
    assert!(layer::mounts_below(root.path()).is_empty());
}

// The Firecracker backend through the same layer, against the fake jailer
// (`src/bin/fake-jailer`): its "guest" dials the listener the layer got
// from the backend and sends a line of text instead of a Hello frame. The
// layer must end that VM and leave no jail, cgroup, uid, scratch disk,
// socket, process or fd behind.

async fn firecracker_case(on_start: &str) {
    use kiln::vmm::firecracker::{Firecracker, FirecrackerSettings};
    use std::os::unix::fs::PermissionsExt;

    init_tracing();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the jailer (and its stand-in) needs root");
        return;
    }
    let root = tempfile::Builder::new()
        .prefix("kiln-fc-")
        .tempdir_in("/tmp")
        .unwrap();
    let d = root.path();
    for sub in ["bin", "jails", "cgroup", "images"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let jailer = d.join("bin/jailer");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fake-jailer"), &jailer).unwrap();
    let conf = serde_json::json!({
        "spec": Path::new(env!("CARGO_MANIFEST_DIR")).join("data/firecracker-api.yaml"),
        "record": d.join("record.jsonl"),
        "cgroup_root": d.join("cgroup"),
        "console_bytes": 2000,
        "on_start": on_start,
    });
    std::fs::write(d.join("bin/jailer.json"), conf.to_string()).unwrap();
    let firecracker = d.join("bin/firecracker");
    std::fs::write(&firecracker, b"not really firecracker").unwrap();
    std::fs::set_permissions(&firecracker, std::fs::Permissions::from_mode(0o755)).unwrap();
    for name in ["vmlinux", "rootfs.ext4"] {
        let p = d.join("images").join(name);
        std::fs::write(&p, name.as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut settings = FirecrackerSettings::new(&jailer, &firecracker);
    settings.chroot_base = d.join("jails");
    settings.cgroup_root = d.join("cgroup");
    settings.uid_range = 920_000..=920_009;
    settings.uid_lease_dir = d.join("run/uids");
    let backend = Firecracker::new(settings).unwrap();
    let dirs = kiln::vm::RuntimeDirs::new(d.join("run"), d.join("disks"));
    let launcher = Launcher::new(
        kiln::vm::Backend::Firecracker(backend.clone()),
        dirs.clone(),
    )
    .unwrap();

    let boot = kiln::vm::BootImage {
        kernel: d.join("images/vmlinux"),
        arch: kiln::vmm::Arch::host(),
        initrd: None,
        base_image: Some(d.join("images/rootfs.ext4")),
        modules: kiln::vm::ModuleSet::Listed(Vec::new()),
        scratch_skeleton: None,
    };
    layer::warm_up_runtime().await;
    let fds_before = layer::open_fds();
    let mut req = VmRequest::new(boot, shell_job("true"));
    req.scratch_bytes = Some(1 << 30);
    req.timeouts.boot = Duration::from_secs(10);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let r = launcher
        .run(
            req,
            &mut CollectSink::default(),
            StopSignal::never(),
            Some(tx),
        )
        .await;
    let d_ = describe(&r);
    assert_eq!(r.backend, "firecracker");
    assert!(r.teardown.is_ok(), "{d_}");
    // Ended by the bad frame (or, when the fake exits at once, by the VMM's exit).
    match &r.result {
        Err(RunError::Conversation(e)) => assert!(e.to_string().contains("Hello"), "{d_}"),
        Err(RunError::VmmExitedBeforeHello { .. }) if on_start == "exit" => {}
        other => panic!("unexpected end {other:?}\n{d_}"),
    }
    assert!(
        r.console_tail.len() >= 1000,
        "the console log was read back\n{d_}"
    );
    let mut pid = None;
    while let Ok(p) = rx.try_recv() {
        if let Progress::VmmStarted { pid: p } = p {
            pid = p;
        }
    }
    let pid = pid.expect("the layer reported Firecracker's pid");
    let id = r.id.clone().unwrap();
    assert!(
        !d.join("jails/firecracker").join(&id).exists(),
        "jail left behind"
    );
    assert!(
        !d.join("cgroup/kiln").join(&id).exists(),
        "cgroup left behind"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "Firecracker left running"
    );
    assert_eq!(backend.uids_in_use(), 0);
    let left: Vec<_> = [dirs.vms(), dirs.cids(), dirs.uids()]
        .iter()
        .flat_map(|p| layer::entries_below(p))
        .chain(layer::scratch_disks_left(&dirs.disks))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        layer::unix_sockets_below(d).is_empty(),
        "{:?}",
        layer::unix_sockets_below(d)
    );
    assert!(layer::children().is_empty(), "{:?}", layer::children());
    assert_eq!(layer::open_fds(), fds_before);
}

#[test]
fn firecracker_a_bad_hello_ends_the_vm_and_nothing_is_left() {
    exclusive(firecracker_case("hang"));
}

#[test]
fn firecracker_a_vmm_that_exits_at_once_leaves_nothing() {
    exclusive(firecracker_case("exit"));
}
