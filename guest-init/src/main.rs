//! kiln-init: PID 1 of every Kiln microVM. It prepares the VM, fetches the
//! job from the host over vsock, runs it, reports, and powers off.

// Tests may unwrap; the init itself may not.

mod cgroup;
mod channel;
mod cmdline;
mod configure;
mod console;
mod disks;
mod error;
mod kmod;
mod mounts;
mod netlink;
mod rcu;
mod reaper;
mod root;
mod runner;
mod runner_config;
mod shutdown;
mod supervise;
mod sysctl;
mod timing;

use std::io::Write;
use std::time::Instant;

use kiln_protocol::{BootPhase, GuestMessage, Hello, HostMessage, RunnerStarted, PROTOCOL_VERSION};

use crate::channel::Channel;
use crate::console::say;
use crate::error::{Fatal, Step};
use crate::timing::Timeline;

fn main() {
    let mut timeline = Timeline::new();
    timeline.mark(BootPhase::InitStart);
    if std::process::id() != 1 {
        let _ = writeln!(
            std::io::stderr(),
            "kiln-init is the init (PID 1) of a Kiln VM; it refuses to run as pid {}.",
            std::process::id()
        );
        std::process::exit(2);
    }
    shutdown::install_panic_hook();
    let mut channel = None;
    match boot_and_run(&mut timeline, &mut channel) {
        Ok(()) => shutdown::power_off(),
        Err(e) => shutdown::fatal(&e, channel.as_mut()),
    }
}

fn boot_and_run(t: &mut Timeline, channel: &mut Option<Channel>) -> Result<(), Fatal> {
    supervise::block_signals().step("block signals")?;
    shutdown::disable_ctrl_alt_del();

    mounts::mount_early().step("mount filesystems")?;
    console::attach();
    rcu::expedite(true);
    t.mark(BootPhase::Mounted);

    let cfg = cmdline::read().step("read the kernel command line")?;
    let release = kernel_release();
    // Three paths at once. The modules load in the background from here
    // on (their files are open already: the root switch does not take them
    // away). A second thread does what needs no module — the other mounts,
    // the cgroup tree, sysctls, lo — which mostly waits on the kernel. This
    // thread builds the overlay root as soon as its disks and overlayfs are
    // there (the vsock chain and tun go on loading meanwhile), and meets
    // the cgroup thread before the root switch moves /sys and /proc away
    // under it.
    let mut modules = kmod::Loading::start(&cfg.modules, &release);
    let switched = std::thread::scope(|s| {
        let early = s.spawn(|| {
            let result = without_modules();
            (result, timing::boottime_ns())
        });
        if !modules.wait_until(|| root::sources_present(&cfg)) {
            // Every load has ended and something is still missing: a
            // failed load says why; if none failed, the mount below names
            // what is missing.
            modules.finish().step("load kernel modules")?;
        }
        t.mark(BootPhase::RootDevicesReady);
        let built = root::build(&cfg).step("build the root filesystem")?;
        let (result, done_at) = early
            .join()
            .map_err(|_| Fatal::new("set up cgroups", "the thread panicked"))?;
        result?;
        t.mark_at(BootPhase::CgroupsReady, done_at);
        root::switch(built).step("switch to the new root")
    })?;
    if switched != root::Switched::No {
        say!("switched to the overlay root ({switched:?})");
    }
    mounts::mount_all().step("mount filesystems in the new root")?;
    mounts::make_root_shared().step("share the root's mounts")?;
    t.mark(BootPhase::RootReady);

    // The channel needs vsock, and the job may need any of the rest (tun
    // for rootless podman's network): all loads end here, before the
    // device nodes they made are opened up.
    let loaded_at = modules.finish().step("load kernel modules")?;
    t.mark_at(BootPhase::ModulesLoaded, loaded_at);
    mounts::open_up_devices().step("open up device nodes")?;

    let chan =
        channel.insert(Channel::connect(channel::CONNECT_BUDGET).step("connect to the host")?);
    t.mark(BootPhase::ChannelOpen);
    say!(
        "connected to the host {:.3} s after the kernel started",
        secs(t)
    );
    chan.send(&GuestMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        init_version: env!("CARGO_PKG_VERSION").into(),
        kernel_release: release,
        boot: t.all(),
    }))
    .step("send Hello")?;

    let job = match chan.read_opening().step("read the job")? {
        HostMessage::Job(job) => job,
        HostMessage::Cancel(_) => return Err(Fatal::new("read the job", "got Cancel instead")),
    };
    let received = Instant::now();
    t.mark(BootPhase::JobReceived);
    job.validate().step("check the job")?;
    runner::prefetch(&job);

    configure::apply(&job).step("configure the VM")?;
    t.mark(BootPhase::JobConfigured);

    let cgroup =
        cgroup::delegate(job.user.uid, job.user.gid).step("delegate the runner's cgroup")?;
    say!(
        "starting {} as {} (uid {})",
        job.command.program,
        job.user.name,
        job.user.uid
    );
    let runner = runner::spawn(&job, &cgroup).step("start the job")?;
    // The runner has exec'd (spawn waits for that): the job gets the
    // kernel's normal grace periods.
    rcu::expedite(false);
    t.mark(BootPhase::RunnerSpawned);
    let pid = u32::try_from(runner.pid.as_raw()).unwrap_or(0);
    chan.send(&GuestMessage::RunnerStarted(RunnerStarted {
        pid,
        phases: t.from(BootPhase::JobReceived),
    }))
    .step("send RunnerStarted")?;

    let exited =
        supervise::run(chan, runner, &job, received, cfg.debug).step("supervise the job")?;
    say!(
        "job ended: {:?} after {} ms",
        exited.status,
        exited.duration_ms
    );
    if let Err(e) = chan.send_last(
        &GuestMessage::RunnerExited(exited),
        channel::LAST_MESSAGE_LINGER,
    ) {
        say!("could not send RunnerExited: {e}");
    }
    shutdown::end_processes(shutdown::LEFTOVER_GRACE);
    Ok(())
}

/// The boot steps that need no kernel module: the other mounts (below
/// /dev, they move along with it into the new root; cgroup2), cgroup
/// delegation (the hierarchy is the same wherever it is mounted, so the
/// root switch does not undo it), kernel parameters, and the loopback
/// interface.
fn without_modules() -> Result<(), Fatal> {
    mounts::mount_all().step("mount filesystems")?;
    cgroup::setup_root().step("set up cgroups")?;
    sysctl::apply().step("set kernel parameters")?;
    configure::loopback().step("bring up the loopback interface")
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn secs(t: &Timeline) -> f64 {
    t.all().last().map_or(0.0, |s| s.at_ns as f64 / 1e9)
}
