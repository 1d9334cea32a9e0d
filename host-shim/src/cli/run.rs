//! `kiln run [OPTIONS] -- CMD [ARGS...]`: the main job without GitHub, and
//! the debugging tool.
//!
//! Boots a fresh microVM from the image directory (the base rootfs shared
//! read-only, a fresh sparse scratch disk, the image's kernel and
//! initramfs), runs CMD as the image's runner user, streams its stdout and
//! stderr live to kiln's, prints a one-line timing summary on stderr, and
//! exits with CMD's exit code (128 + the signal when a signal ended it).
//!
//! Other exit codes: 125 when kiln could not run CMD at all (no image, the
//! VM failed to boot, the guest could not start CMD); 128 + the signal when
//! kiln itself was interrupted (SIGINT 130, SIGTERM 143, SIGHUP 129): the
//! first such signal cancels the job with its grace period, a second kills
//! the VM at once, and the VM is torn down either way.
//!
//! `--console` attaches the guest's serial console (kernel and kiln-init
//! messages, and the job's output through `kiln.debug`) for debugging;
//! there is no SSH. With QEMU the console is kiln's terminal: raw, with
//! Ctrl-C going to the guest and Ctrl-A x quitting QEMU (which ends the
//! run). With Firecracker the jailed VMM never gets the terminal: kiln
//! prints the console log as it grows, read-only. The job's output then
//! reaches the terminal through the console only, once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kiln_protocol::{CommandSpec, ExitStatus, Job, UserSpec, WallClock, PROTOCOL_VERSION};

use super::signals;
use crate::duration::parse_duration;
use crate::net::{NetConfig, NetRequest, Network};
use crate::vm::{
    select_backend, stop_channel, BackendChoice, BackendOptions, ConsoleMode, DiscardSink, Image,
    ImageUser, JobEnd, Launcher, RunError, RuntimeDirs, StdioSink, StopLevel, Timeouts, VmReport,
    VmRequest,
};

/// kiln could not run the command at all (Docker's convention).
pub const EXIT_KILN_FAILED: u8 = 125;

/// Where an image is looked for when `--image` is not given.
pub const IMAGE_ENV: &str = "KILN_IMAGE";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The image directory `cargo xtask image` wrote [default: $KILN_IMAGE,
    /// else ./target/kiln-image, else the kiln-image directory beside the
    /// kiln binary's target directory]
    #[arg(long, value_name = "DIR")]
    pub image: Option<PathBuf>,
    /// Virtual CPUs: 1 or an even number up to 32.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub cpus: u32,
    /// Guest memory.
    #[arg(long, value_name = "MiB", default_value_t = 2048)]
    pub memory: u32,
    /// The VM's fresh scratch disk (the root's writable layer and /home).
    /// Sparse: it costs only what the job writes.
    #[arg(long, value_name = "GiB", default_value_t = 20)]
    pub disk: u64,
    /// How long CMD may run; then the guest stops it (SIGTERM, --grace, SIGKILL).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,
    /// SIGTERM to SIGKILL, at the timeout and when kiln is interrupted.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How long the VM may take to boot until kiln-init says Hello.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub boot_timeout: Duration,
    /// firecracker, qemu, or auto: Firecracker when it, its jailer and a
    /// KVM that can run guests are present, QEMU otherwise.
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendChoice,
    /// Attach the guest's serial console for debugging (see `kiln run --help`).
    #[arg(long)]
    pub console: bool,
    /// The VM's network: `egress` (the public internet and the DNS
    /// resolvers, nothing private, not the host, not other VMs; what
    /// `kiln serve`'s jobs get) or `none` (only `lo`).
    #[arg(long, value_name = "MODE", default_value = "egress", value_parser = ["egress", "none"])]
    pub network: String,
    /// Also allow CIDR (a private registry, a cache), on PORT only when
    /// given (TCP and UDP): `10.1.2.3:5000`, `10.1.0.0/16`, `[fd00::1]:443`.
    /// Repeatable.
    #[arg(long, value_name = "CIDR[:PORT]", value_parser = parse_allow)]
    pub allow: Vec<crate::net::Allow>,
    /// A DNS resolver for the VM (only these get port 53) [default: the
    /// host's upstream resolvers]. Repeatable.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<std::net::IpAddr>,
    /// The address pool VMs' /30 links come from.
    #[arg(long, value_name = "CIDR", default_value = crate::net::DEFAULT_POOL4)]
    pub net_pool: ipnet::Ipv4Net,
    /// A routed IPv6 prefix (a /64 or larger) the VMs' addresses come from;
    /// none: no IPv6 in the VM.
    #[arg(long, value_name = "CIDR")]
    pub net_pool6: Option<ipnet::Ipv6Net>,
    /// The link VM traffic leaves by [default: the default route's]. Repeatable.
    #[arg(long, value_name = "IF")]
    pub uplink: Vec<String>,
    /// Stop the job (exit 125) once it has written more than this much
    /// output (stdout and stderr together) [default: no cap].
    #[arg(long, value_name = "MiB")]
    pub max_output: Option<u64>,
    /// The command and its arguments, after `--`. A bare name is looked up
    /// in the guest's PATH.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_allow(s: &str) -> Result<crate::net::Allow, String> {
    s.parse()
        .map_err(|e: crate::net::policy::AllowParseError| e.to_string())
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    s.parse()
        .map_err(|e: crate::vm::BackendError| e.to_string())
}

pub fn main(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiln run: starting the async runtime: {e}");
            return ExitCode::from(EXIT_KILN_FAILED);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln run: {e:#}");
            ExitCode::from(EXIT_KILN_FAILED)
        }
    }
}

/// The image directory to use: `--image`, `$KILN_IMAGE`, or the first
/// default that exists (the first one when none does, for the error).
pub fn image_dir(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os(IMAGE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let mut candidates = vec![PathBuf::from("target/kiln-image")];
    // <target>/<profile>/kiln -> <target>/kiln-image
    if let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
    {
        candidates.push(target.join("kiln-image"));
    }
    candidates
        .iter()
        .find(|c| c.join(crate::vm::image::MANIFEST).is_file())
        .unwrap_or(&candidates[0])
        .clone()
}

/// The job `kiln run` sends: CMD as the image's user, in its home.
pub fn job_for(
    command: &[String],
    user: &ImageUser,
    timeout: Duration,
    grace: Duration,
) -> anyhow::Result<Job> {
    let (program, args) = command
        .split_first()
        .context("no command given: kiln run [OPTIONS] -- CMD [ARGS...]")?;
    let mut entropy = vec![0u8; 64];
    crate::vm::random::try_fill(&mut entropy).context("reading random bytes for the guest")?;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Ok(Job {
        protocol_version: PROTOCOL_VERSION,
        command: CommandSpec {
            program: program.clone(),
            args: args.to_vec(),
        },
        env: Vec::new(),
        user: UserSpec {
            name: user.name.clone(),
            uid: user.uid,
            gid: user.gid,
            groups: Vec::new(),
            home: user.home.clone(),
        },
        workdir: user.home.clone(),
        hostname: "kiln".into(),
        dns: Vec::new(),
        network: None,
        clock: WallClock::now(),
        entropy,
        rlimits: Vec::new(),
        deadline_ms: ms(timeout),
        grace_ms: ms(grace),
    })
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let image = Image::open(&image_dir(args.image.as_deref()))?;
    let dirs = RuntimeDirs::from_env()?;
    dirs.ensure()?;
    let mut opts = BackendOptions::from_env(args.backend, image.boot.kernel.clone())?;
    opts.qemu.accel_cache = Some(dirs.runtime.join("accel-probe"));
    opts.firecracker.uid_lease_dir = dirs.uids();
    opts.arch = image.boot.arch;
    let selected = select_backend(&opts).await?;
    tracing::info!(backend = selected.backend.name(), why = %selected.reason, "backend chosen");
    let network = match args.network.as_str() {
        "none" => None,
        _ => {
            let mut cfg = NetConfig::defaults(&dirs.runtime);
            cfg.pool4 = args.net_pool;
            cfg.pool6 = args.net_pool6;
            cfg.uplinks = args.uplink.clone();
            let net = Network::start(&cfg)
                .await
                .context("setting up the VM's network (--network none runs without one)")?;
            Some(Arc::new(net))
        }
    };
    let mut launcher = Launcher::new(selected.backend, dirs)?;
    if let Some(n) = &network {
        launcher = launcher.with_network(n.clone());
    }

    let job = job_for(&args.command, &image.user, args.timeout, args.grace)?;
    let console = if args.console {
        ConsoleMode::Attach
    } else {
        ConsoleMode::Log
    };
    let req = VmRequest {
        vcpus: args.cpus,
        memory_mib: args.memory,
        scratch_bytes: Some(args.disk.saturating_mul(1 << 30)),
        console,
        cancel_grace: args.grace,
        max_output_bytes: args.max_output.map(|mib| mib.saturating_mul(1 << 20)),
        timeouts: Timeouts {
            boot: args.boot_timeout,
            ..Timeouts::default()
        },
        network: network.as_ref().map(|_| NetRequest {
            allow: args.allow.clone(),
            dns: (!args.dns.is_empty()).then(|| args.dns.clone()),
            tap_owner: None,
        }),
        ..VmRequest::new(image.boot.clone(), job)
    };

    let (stop, signal) = stop_channel();
    let (watcher, first_signal) = signals::watch(stop).context("installing signal handlers")?;
    let report = if args.console {
        eprintln!(
            "kiln: console attached{}",
            match launcher.backend().name() {
                "qemu" => "; Ctrl-C goes to the guest, Ctrl-A x quits QEMU",
                _ => " (read-only: Firecracker's console log as it grows)",
            }
        );
        let saved = terminal::save();
        let report = launcher.run(req, &mut DiscardSink, signal, None).await;
        terminal::restore(saved);
        report
    } else {
        launcher
            .run(req, &mut StdioSink::default(), signal, None)
            .await
    };
    watcher.abort();
    if let Some(n) = &network {
        if let Err(e) = n.stop().await {
            eprintln!("kiln run: removing the egress policy: {e}");
        }
    }
    Ok(finish(&report, first_signal.get()))
}

/// Prints the summary (and what went wrong) and picks the exit code.
fn finish(report: &VmReport, signal: Option<i32>) -> ExitCode {
    let vm = report.id.as_deref().unwrap_or("-");
    let what = match &report.result {
        Ok(JobEnd::Exited(e)) => match e.status {
            ExitStatus::Code(c) => format!("exit {c}"),
            ExitStatus::Signal(s) => format!("killed by signal {s}"),
        },
        Ok(JobEnd::GuestError(_)) => "guest error".into(),
        Err(RunError::Killed) => "VM killed".into(),
        Err(RunError::StoppedBeforeJob) => "stopped before the job".into(),
        Err(_) => "failed".into(),
    };
    let backend = if report.detail.is_empty() {
        report.backend.to_owned()
    } else {
        format!("{} {}", report.backend, report.detail)
    };
    // No VM, no timing worth a line: the error says it all.
    if report.id.is_some() {
        eprintln!("kiln: {vm}: {what}; {} [{backend}]", report.timing.render());
    }
    if let Err(e) = &report.teardown {
        eprintln!("kiln run: {e}");
    }
    let interrupted = report.stop > StopLevel::Run;
    let code = match &report.result {
        Ok(JobEnd::Exited(e)) => shell_code(e.status),
        Ok(JobEnd::GuestError(e)) => {
            eprintln!(
                "kiln run: the guest could not run the job ({}): {}",
                printable(&e.what),
                printable(&e.detail)
            );
            EXIT_KILN_FAILED
        }
        Err(RunError::Killed | RunError::StoppedBeforeJob) if interrupted => EXIT_KILN_FAILED,
        Err(e) => {
            eprintln!("kiln run: {e}");
            if shows_console(e) && !report.console_tail.is_empty() {
                eprintln!(
                    "kiln run: the end of the guest's console:\n{}",
                    last_lines(&report.console_tail, 25)
                );
            }
            EXIT_KILN_FAILED
        }
    };
    match (interrupted, signal) {
        (true, Some(sig)) => ExitCode::from(128u8.saturating_add(sig as u8)),
        _ => ExitCode::from(code),
    }
}

/// The shell's convention: the code itself (mod 256), or 128 + the signal.
fn shell_code(status: ExitStatus) -> u8 {
    match status {
        ExitStatus::Code(c) => c.rem_euclid(256) as u8,
        ExitStatus::Signal(s) => 128u8.saturating_add(s.clamp(0, 127) as u8),
    }
}

/// Errors about the boot, where the console says why.
fn shows_console(e: &RunError) -> bool {
    matches!(
        e,
        RunError::VmmExitedBeforeHello { .. }
            | RunError::VmmExitedDuringJob { .. }
            | RunError::Conversation(_)
            | RunError::Backend(_)
    )
}

/// Guest-supplied text without control characters (it reaches a terminal).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    printable(&lines[lines.len().saturating_sub(n)..].join("\n"))
}

/// QEMU puts the terminal in raw mode and restores it when it exits, but
/// not when it is killed: kiln restores what it saw before.
mod terminal {
    use nix::sys::termios::{tcgetattr, tcsetattr, SetArg, Termios};

    pub fn save() -> Option<Termios> {
        tcgetattr(std::io::stdin()).ok()
    }

    pub fn restore(saved: Option<Termios>) {
        if let Some(t) = saved {
            if let Err(e) = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t) {
                tracing::debug!(error = %e, "restoring the terminal");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(shell_code(ExitStatus::Code(0)), 0);
        assert_eq!(shell_code(ExitStatus::Code(7)), 7);
        assert_eq!(shell_code(ExitStatus::Code(256 + 3)), 3);
        assert_eq!(shell_code(ExitStatus::Code(-1)), 255);
        assert_eq!(shell_code(ExitStatus::Signal(9)), 137);
        assert_eq!(shell_code(ExitStatus::Signal(15)), 143);
    }

    #[test]
    fn command_line() {
        let cli = crate::cli::Cli::try_parse_from([
            "kiln",
            "run",
            "--cpus",
            "1",
            "--memory",
            "512",
            "--timeout",
            "90s",
            "--backend",
            "qemu",
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .expect("parse");
        let crate::cli::Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.command, ["sh", "-c", "exit 7"]);
        assert_eq!(a.cpus, 1);
        assert_eq!(a.memory, 512);
        assert_eq!(a.timeout, Duration::from_secs(90));
        assert_eq!(a.backend, BackendChoice::Qemu);
        assert!(!a.console);
        assert_eq!(a.max_output, None, "no output cap unless asked");
        let capped =
            crate::cli::Cli::try_parse_from(["kiln", "run", "--max-output", "5", "--", "true"])
                .expect("parse");
        let crate::cli::Command::Run(a) = capped.command else {
            panic!("not run")
        };
        assert_eq!(a.max_output, Some(5));
        let err =
            crate::cli::Cli::try_parse_from(["kiln", "run", "--backend", "kvm", "--", "true"])
                .expect_err("bad backend");
        assert!(err.to_string().contains("kvm"), "{err}");
        assert!(crate::cli::Cli::try_parse_from(["kiln", "run"]).is_err());
    }

    #[test]
    fn job_runs_the_command_as_the_image_user() {
        let user = ImageUser::default();
        let job = job_for(
            &["id".into(), "-u".into()],
            &user,
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
        .expect("job");
        job.validate().expect("valid");
        assert_eq!(job.command.program, "id");
        assert_eq!(job.command.args, ["-u"]);
        assert_eq!((job.user.uid, job.user.gid), (1001, 1001));
        assert_eq!(job.workdir, "/home/runner");
        assert_eq!((job.deadline_ms, job.grace_ms), (60_000, 5_000));
        assert!(job_for(&[], &user, Duration::ZERO, Duration::ZERO).is_err());
    }
}
