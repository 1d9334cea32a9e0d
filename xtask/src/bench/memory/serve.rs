//! `kiln serve`'s resident memory with VMs running: the real daemon
//! (release build) with one pool for the bench image and room for
//! [`VMS`] VMs, against the fake GitHub API (`tests/src/bin/fake-github`,
//! its own process on 127.0.0.1: GitHub cannot be reached here, and the
//! bench cannot link the test crate), fed signed `workflow_job` webhooks.
//!
//! The bench image has no actions runner (`--no-runner`), and `kiln serve`
//! always starts `/opt/actions-runner/run.sh`. So the pool's image is the
//! bench image's rootfs, kernel, initramfs and manifest (symlinks) with a
//! scratch skeleton that also holds a stand-in `run.sh` in the overlay's
//! upper layer: every VM sees it at the runner's path, and the 500 MB base
//! image is neither copied nor rebuilt. The stand-in prints a ready line
//! (saying whether its JIT config arrived, never the config) and holds the
//! VM for [`HOLD`].
//!
//! Each run samples `kiln serve`'s `VmRSS` before any job, once the first
//! VM's stand-in is ready, once all [`VMS`] are, and after every job
//! ended; and checks that the run was real: the stand-ins got JIT configs,
//! every job ended `job done`, the fake saw one JIT request and one runner
//! deletion per job, and no VM process or file is left once `kiln serve`
//! stops.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::super::churn::descendants;
use super::super::results::{ServeVmCheck, ServeVmMemory};
use super::super::stats::Stat;
use super::super::vmkit::{with_retries, Kit};
use super::super::webhook::{self, load, payload};
use super::{rss_kib, vmm_rss};

/// VMs running at once in the measurement (the host has 2 cores; each VM
/// gets one vCPU).
pub const VMS: usize = 2;
/// vCPUs per VM: [`VMS`] of them fit the 2-core host exactly.
pub const VCPUS: u32 = 1;
/// How long each stand-in holds its VM. Long enough that the first VM is
/// still running when the last has booted (a boot takes 4 to 10 s under
/// TCG here); checked at every sample.
pub const HOLD: Duration = Duration::from_secs(20);
/// The stand-in's ready line.
pub const READY: &str = "kiln-bench-ready";
/// Until every VM of a run is ready (boots under TCG, one after another).
const READY_WITHIN: Duration = Duration::from_secs(240);
/// Let the output path and allocator settle before a sample.
const SETTLE: Duration = Duration::from_secs(1);

/// The programs the measurement starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kiln`, release build.
    pub kiln: PathBuf,
    /// The fake GitHub API (`cargo build -p kiln-vm-tests --bin fake-github`).
    pub fake_github: PathBuf,
}

/// The stand-in runner: reports ready and holds the VM. The JIT config is
/// only tested for presence: it must never reach the job log.
pub fn stand_in_script(hold: Duration) -> String {
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask bench` (memory): stands in for the actions runner
# while kiln serve's memory is measured.
if [ -n "$ACTIONS_RUNNER_INPUT_JITCONFIG" ]; then jit=yes; else jit=no; fi
echo "{READY} jit=$jit"
exec sleep {}
"#,
        hold.as_secs()
    )
}

/// What a job log says about its stand-in: `Some(true)` when it reported
/// ready with a JIT config in its environment, `Some(false)` ready without
/// one, `None` not (yet) ready.
pub fn stand_in_ready(log: &str) -> Option<bool> {
    log.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(READY)?.trim();
        Some(rest == "jit=yes")
    })
}

/// How the jobs in `kiln serve`'s JSON log ended: `job_done` events (the
/// runner exited 0), and every other end (`job_runner_failed`,
/// `job_failed`, `job_without_vm`; see `kiln::logs::events`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobEnds {
    pub done: usize,
    pub other: usize,
}

pub fn job_ends(serve_log: &str) -> anyhow::Result<JobEnds> {
    use kiln::logs::events;
    let mut ends = JobEnds::default();
    for l in kiln::logs::read::lines(serve_log)? {
        match l.event() {
            Some(events::JOB_DONE) => ends.done += 1,
            Some(events::JOB_RUNNER_FAILED | events::JOB_FAILED | events::JOB_WITHOUT_VM) => {
                ends.other += 1;
            }
            _ => {}
        }
    }
    Ok(ends)
}

/// The fake's `state` answer (tests/src/bin/fake-github).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FakeState {
    pub jit_requests: usize,
    pub delete_requests: usize,
    pub token_requests: u32,
    pub registered: Vec<u64>,
    pub deleted: Vec<u64>,
    pub live: Vec<u64>,
}

impl FakeState {
    /// One JIT runner per job, each deleted once, none left registered.
    pub fn clean_for(&self, jobs: usize) -> bool {
        let mut registered = self.registered.clone();
        let mut deleted = self.deleted.clone();
        registered.sort_unstable();
        deleted.sort_unstable();
        self.jit_requests == jobs
            && registered.len() == jobs
            && registered == deleted
            && self.live.is_empty()
    }
}

/// The fake's first line: where it listens and the App id it checks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FakeHello {
    pub url: String,
    pub app_id: u64,
}

/// `kiln serve`'s config: one pool for the bench's labels with the bench
/// image (with the stand-in), room for exactly `vms` VMs of `memory_mib`,
/// and the fake as GitHub.
pub fn config_toml(
    port: u16,
    fake: &FakeHello,
    image: &Path,
    vms: usize,
    memory_mib: u32,
) -> String {
    let labels: Vec<String> = payload::LABELS.iter().map(|l| format!("{l:?}")).collect();
    let vms = vms as u64;
    format!(
        r#"# Written by `cargo xtask bench` (memory: kiln serve with VMs running).
listen = "127.0.0.1:{port}"
webhook_secret_file = "webhook-secret"
# The bench's VMs run under QEMU (TCG where KVM cannot run guests).
backend = "qemu"
# The bench reads its events (kiln::logs::events).
log_format = "json"

# The metrics listener is not needed here (and 9464 may be taken).
[admin]
listen = "off"

[github]
# The fake GitHub API (tests/src/bin/fake-github).
api_url = "{url}"
app_id = {app_id}
private_key_file = "app-key.pem"
org = "kiln-bench"

[host]
vcpus = {host_vcpus}
memory_mib = {host_memory}

[[pool]]
name = "bench"
labels = [{labels}]
vcpus = {VCPUS}
memory_mib = {memory_mib}
image = {image:?}
max_vms = {vms}
job_timeout = "2m"
# Memory is measured here, not networks (benchmark 6): none, and the
# machine's own namespace is left alone.
network = "none"
"#,
        url = fake.url,
        app_id = fake.app_id,
        host_vcpus = u64::from(VCPUS) * vms,
        host_memory = u64::from(memory_mib) * vms,
        labels = labels.join(", "),
        image = image.display().to_string(),
    )
}

/// The pool's image in `out`: the bench image's files as symlinks, and its
/// scratch skeleton copied with the stand-in added at the runner's path in
/// the overlay's upper layer.
pub fn stand_in_image(bench: &Path, out: &Path, hold: Duration) -> anyhow::Result<PathBuf> {
    use kiln::vm::image::{INITRD, KERNEL, MANIFEST, ROOTFS, SCRATCH_SKELETON};
    let skel = bench.join(SCRATCH_SKELETON);
    if !skel.is_dir() {
        bail!(
            "{} has no scratch skeleton: rebuild the bench image (`cargo xtask bench --prepare --force-image`)",
            bench.display()
        );
    }
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bench = bench
        .canonicalize()
        .with_context(|| format!("resolving {}", bench.display()))?;
    for f in [ROOTFS, KERNEL, INITRD, MANIFEST] {
        std::os::unix::fs::symlink(bench.join(f), out.join(f))
            .with_context(|| format!("linking {f} into {}", out.display()))?;
    }
    // cp -a keeps owners and modes, as the image builder's skeleton does.
    let dst = out.join(SCRATCH_SKELETON);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--no-target-directory")
        .arg(bench.join(SCRATCH_SKELETON))
        .arg(&dst)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("copying {} failed ({status})", skel.display());
    }
    let runner_dir = dst
        .join("upper")
        .join(kiln::job::runner::RUNNER_COMMAND.trim_start_matches('/'));
    let runner_dir = runner_dir
        .parent()
        .context("the runner command has no directory")?
        .to_owned();
    // /opt and /opt/actions-runner as the base has /opt: root's, 0755.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&runner_dir)
        .with_context(|| format!("creating {}", runner_dir.display()))?;
    let script = dst
        .join("upper")
        .join(kiln::job::runner::RUNNER_COMMAND.trim_start_matches('/'));
    std::fs::write(&script, stand_in_script(hold))
        .with_context(|| format!("writing {}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", script.display()))?;
    Ok(out.to_owned())
}

/// The fake GitHub API's process.
struct Fake {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    hello: FakeHello,
}

impl Fake {
    /// Starts the fake, which writes the App key it accepts to `key_file`
    /// (0600), and waits for its address.
    async fn start(bin: &Path, key_file: &Path, log: &Path) -> anyhow::Result<Fake> {
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(bin)
            .arg("--key-file")
            .arg(key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the fake's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // It makes a 2048-bit RSA key first (a debug build: seconds).
        let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the fake GitHub did not start within 120 s")?
            .context("reading the fake GitHub's stdout")?;
        let Some(first) = first else {
            bail!("the fake GitHub exited at once: {}", webhook::log_tail(log));
        };
        let hello: FakeHello =
            serde_json::from_str(&first).context("parsing the fake GitHub's first line")?;
        Ok(Fake {
            child,
            stdin,
            lines,
            hello,
        })
    }

    async fn state(&mut self) -> anyhow::Result<FakeState> {
        let stdin = self.stdin.as_mut().context("the fake GitHub is closed")?;
        stdin
            .write_all(b"state\n")
            .await
            .context("asking the fake GitHub")?;
        stdin.flush().await.context("asking the fake GitHub")?;
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .context("the fake GitHub did not answer within 10 s")?
            .context("reading the fake GitHub's answer")?
            .context("the fake GitHub exited")?;
        serde_json::from_str(&line).context("parsing the fake GitHub's state")
    }

    /// Closes its stdin, which ends it; kills it if it lingers.
    async fn close(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

pub(in crate::bench) fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL for `pid` and everything below it, children first, so no VMM
/// outlives a `kiln serve` that could not tear its VMs down.
pub(in crate::bench) fn kill_tree(pid: u32) {
    for d in descendants(pid) {
        signal(d, "KILL");
    }
    signal(pid, "KILL");
}

/// What one run started. Dropped without [`Procs::shutdown`] (an error, or
/// the bench interrupted): everything is killed and the VMs' directories
/// removed.
struct Procs {
    fake: Option<Fake>,
    serve: Option<webhook::Server>,
    /// The runtime and disk directories `kiln serve` made VMs in.
    vm_dirs: Vec<PathBuf>,
}

impl Procs {
    /// Stops `kiln serve` (one SIGTERM: it waits for the running jobs;
    /// with `cancel`, a second one cancels them, tearing their VMs down and
    /// deleting their runners), then the fake. Falls back to killing.
    async fn shutdown(&mut self, cancel: bool) -> anyhow::Result<()> {
        let mut result = Ok(());
        if let Some(mut serve) = self.serve.take() {
            result = if cancel {
                signal(serve.pid, "TERM");
                tokio::time::sleep(Duration::from_secs(1)).await;
                signal(serve.pid, "TERM");
                // kiln serve gives cancelled jobs 60 s to clean up.
                match tokio::time::timeout(Duration::from_secs(90), serve.child.wait()).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(anyhow::anyhow!(
                        "kiln serve did not stop within 90 s of two SIGTERMs"
                    )),
                }
            } else {
                webhook::stop(&mut serve, "kiln serve").await
            };
            if result.is_err() {
                kill_tree(serve.pid);
                let _ = serve.child.wait().await;
            }
        }
        if let Some(fake) = self.fake.take() {
            fake.close().await;
        }
        result
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if let Some(serve) = &mut self.serve {
            if matches!(serve.child.try_wait(), Ok(None)) {
                kill_tree(serve.pid);
                for d in &self.vm_dirs {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
        }
    }
}

/// Processes whose command line mentions `path` (a VM's QEMU and
/// vhost-device-vsock name its directory): pid and command line.
pub(in crate::bench) fn processes_mentioning(path: &Path) -> Vec<(u32, String)> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            out.push((pid, cmdline.trim_end().to_owned()));
        }
    }
    out
}

/// Everything below `dir` (not `dir` itself); a missing `dir` has nothing.
pub(in crate::bench) fn entries_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// What is left of any VM once `kiln serve` stopped: VMM processes, VM
/// directories, CID leases, scratch disks. Then removes it, so a finding
/// (or a failed run) leaves nothing on the host either.
fn left_behind(runtime: &Path, disks: &Path) -> Vec<String> {
    let procs: Vec<(u32, String)> = processes_mentioning(runtime)
        .into_iter()
        .chain(processes_mentioning(disks))
        .collect();
    let mut left: Vec<String> = procs.iter().map(|(_, c)| format!("process: {c}")).collect();
    // Scratch disk templates stay for the next VMs: not a VM's.
    let templates = disks.join(kiln::vm::TEMPLATES_DIR);
    for d in [runtime.join("vms"), runtime.join("cids"), disks.to_owned()] {
        left.extend(
            entries_below(&d)
                .into_iter()
                .filter(|p| !p.starts_with(&templates))
                .map(|p| format!("file: {}", p.display())),
        );
    }
    if !left.is_empty() {
        for (pid, _) in &procs {
            signal(*pid, "KILL");
        }
        for d in [runtime, disks] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    left
}

/// Job logs in `dir` and what their stand-ins said: (ready with a JIT
/// config, ready without one).
fn ready_counts(dir: &Path) -> (usize, usize) {
    let (mut with, mut without) = (0, 0);
    for p in entries_below(dir) {
        if p.extension().is_some_and(|e| e == "log") {
            match std::fs::read_to_string(&p)
                .ok()
                .as_deref()
                .and_then(stand_in_ready)
            {
                Some(true) => with += 1,
                Some(false) => without += 1,
                None => {}
            }
        }
    }
    (with, without)
}

/// One run's figures (KiB) and checks.
struct Sample {
    idle: u64,
    one: u64,
    busy: u64,
    after: u64,
    qemu: u64,
    vhost: u64,
    ready: usize,
    ends: JobEnds,
    fake: FakeState,
    left: Vec<String>,
}

struct Run<'a> {
    kit: &'a Kit,
    bins: &'a Binaries,
    image: &'a Path,
    /// This run's directory (config, secrets, logs, scratch disks).
    dir: PathBuf,
    runtime: PathBuf,
    accel: String,
    first_job_id: u64,
}

impl Run<'_> {
    fn serve_log(&self) -> PathBuf {
        self.dir.join("kiln-serve.log")
    }

    fn job_logs(&self) -> PathBuf {
        self.dir.join("state/logs")
    }

    fn disks(&self) -> PathBuf {
        self.dir.join("disks")
    }

    fn ends(&self) -> anyhow::Result<JobEnds> {
        let log = self.serve_log();
        job_ends(&std::fs::read_to_string(&log).unwrap_or_default())
            .with_context(|| format!("reading kiln serve's log {}", log.display()))
    }

    /// Sends job `job_id`'s signed `queued` delivery; it must be queued.
    async fn deliver(
        &self,
        addr: std::net::SocketAddr,
        secret: &kiln::secret::Secret,
        nonce: u64,
        job_id: u64,
    ) -> anyhow::Result<()> {
        let mut d = payload::deliveries(secret, nonce, job_id, job_id, 1);
        let d = d.pop().context("no delivery")?;
        let mut conn = load::connect(addr).await?;
        let req = load::request(addr, d)?;
        match load::send(&mut conn, req, Some(webhook::QUEUED)).await? {
            None => Ok(()),
            Some(other) => bail!("kiln serve answered job {job_id}'s delivery with {other}"),
        }
    }

    /// Until `n` stand-ins reported ready with their JIT config and the
    /// fake handed out at least `n` configs.
    async fn wait_running(&self, procs: &mut Procs, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let (with, without) = ready_counts(&self.job_logs());
            if without > 0 {
                bail!("a stand-in runner got no JIT config in its environment");
            }
            let ends = self.ends()?;
            if ends.done + ends.other > 0 {
                bail!(
                    "{} job(s) ended before {n} VMs ran at once ({} `job done`): the stand-ins' \
                     hold ({HOLD:?}) is too short for this host; kiln serve's log: {}",
                    ends.done + ends.other,
                    ends.done,
                    webhook::log_tail(&self.serve_log())
                );
            }
            if with >= n {
                let fake = procs.fake.as_mut().context("no fake GitHub")?;
                let st = fake.state().await?;
                if st.jit_requests >= n {
                    return Ok(());
                }
            }
            if let Some(serve) = procs.serve.as_mut() {
                if let Some(status) = serve.child.try_wait()? {
                    bail!(
                        "kiln serve exited with {status}: {}",
                        webhook::log_tail(&self.serve_log())
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{with} of {n} VMs running after {READY_WITHIN:?}; kiln serve's log: {}",
                    webhook::log_tail(&self.serve_log())
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Start-up, the samples, and the jobs' ends; `procs` holds what it
    /// started, for the caller to stop.
    async fn measure(&self, procs: &mut Procs) -> anyhow::Result<Sample> {
        let secret = webhook::random_hex(32)?;
        webhook::write_private(&self.dir.join("webhook-secret"), secret.as_bytes())?;
        let secret = kiln::secret::Secret::new(secret);
        procs.fake = Some(
            Fake::start(
                &self.bins.fake_github,
                &self.dir.join("app-key.pem"),
                &self.dir.join("fake-github.log"),
            )
            .await?,
        );
        let hello = procs
            .fake
            .as_ref()
            .map(|f| f.hello.clone())
            .context("no fake GitHub")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], webhook::free_port()?));
        let config = self.dir.join("config.toml");
        std::fs::write(
            &config,
            config_toml(addr.port(), &hello, self.image, VMS, self.kit.memory_mib),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = Command::new(&self.bins.kiln);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("KILN_LOG")
            .env("KILN_RUNTIME_DIR", &self.runtime)
            .env("KILN_DISK_DIR", self.disks())
            .env("KILN_STATE_DIR", self.dir.join("state"))
            // The bench's accelerator, decided once: no probe boot in kiln serve.
            .env("KILN_ACCEL", &self.accel);
        procs.serve =
            Some(webhook::start(cmd, addr, self.serve_log(), "kiln serve (with VMs)").await?);
        let pid = procs
            .serve
            .as_ref()
            .map(|s| s.pid)
            .context("no kiln serve")?;
        let rss = || rss_kib(pid).context("reading kiln serve's RSS");
        tokio::time::sleep(SETTLE).await;
        let idle = rss()?;

        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            << 20;
        self.deliver(addr, &secret, nonce, self.first_job_id)
            .await?;
        self.wait_running(procs, 1).await?;
        tokio::time::sleep(SETTLE).await;
        let one = rss()?;
        let (_, _, n) = vmm_rss(pid);
        if n != 1 {
            bail!("{n} QEMU processes under kiln serve at the 1-VM sample");
        }
        for i in 1..VMS as u64 {
            self.deliver(addr, &secret, nonce, self.first_job_id + i)
                .await?;
        }
        self.wait_running(procs, VMS).await?;
        tokio::time::sleep(SETTLE).await;
        let busy = rss()?;
        let (qemu, vhost, n) = vmm_rss(pid);
        let ends = self.ends()?;
        if n != VMS || ends.done + ends.other > 0 {
            bail!(
                "{n} QEMU processes under kiln serve at the {VMS}-VM sample, {} jobs already ended: \
                 the stand-ins' hold ({HOLD:?}) is too short for this host",
                ends.done + ends.other
            );
        }

        let deadline = Instant::now() + HOLD + Duration::from_secs(120);
        let ends = loop {
            let ends = self.ends()?;
            if ends.done + ends.other >= VMS {
                break ends;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {VMS} jobs ended within {:?} of the sample: {}",
                    ends.done + ends.other,
                    HOLD + Duration::from_secs(120),
                    webhook::log_tail(&self.serve_log())
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The runner's deletion precedes the job's log line, but the
        // fake's bookkeeping and kiln serve's memory deserve a moment.
        tokio::time::sleep(SETTLE).await;
        let after = rss()?;
        let fake = procs
            .fake
            .as_mut()
            .context("no fake GitHub")?
            .state()
            .await?;
        let (ready, _) = ready_counts(&self.job_logs());
        Ok(Sample {
            idle,
            one,
            busy,
            after,
            qemu,
            vhost,
            ready,
            ends,
            fake,
            left: Vec::new(),
        })
    }
}

/// Adds one run of `jobs` jobs to `check`; whether that run was clean:
/// every stand-in ready with its JIT config, every job `job done`, one JIT
/// runner per job, each deleted, and nothing left behind.
fn record(check: &mut ServeVmCheck, jobs: usize, s: Sample) -> bool {
    let clean = s.ready == jobs
        && s.ends
            == JobEnds {
                done: jobs,
                other: 0,
            }
        && s.fake.clean_for(jobs)
        && s.left.is_empty();
    check.jobs += jobs;
    check.ready_with_jit += s.ready;
    check.jobs_done += s.ends.done;
    check.jobs_not_done += s.ends.other;
    check.jit_requests += s.fake.jit_requests;
    check.runners_deleted += s.fake.deleted.len();
    check.runners_left += s.fake.live.len();
    check.left_behind.extend(s.left);
    clean
}

/// One run: a fresh directory, fake and `kiln serve`; everything stopped
/// and the secrets removed on every path.
async fn once(
    kit: &Kit,
    bins: &Binaries,
    image: &Path,
    work: &Path,
    accel: &str,
    first_job_id: u64,
) -> anyhow::Result<Sample> {
    let dir = work.join("run");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let run = Run {
        kit,
        bins,
        image,
        runtime: kit.runtime_root().join("serve"),
        dir,
        accel: accel.to_owned(),
        first_job_id,
    };
    let mut procs = Procs {
        fake: None,
        serve: None,
        vm_dirs: vec![run.runtime.clone(), run.disks()],
    };
    let measured = run.measure(&mut procs).await;
    let stopped = procs.shutdown(measured.is_err()).await;
    let left = left_behind(&run.runtime, &run.disks());
    // The log and config stay for reading; the secrets go.
    for f in ["webhook-secret", "app-key.pem"] {
        let p = run.dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let mut e = match (measured, stopped) {
        (Ok(mut sample), Ok(())) => {
            sample.left = left;
            return Ok(sample);
        }
        (Err(e), Err(stop)) => e.context(format!("stopping kiln serve failed too ({stop:#})")),
        (Err(e), Ok(())) | (Ok(_), Err(e)) => e,
    };
    if !left.is_empty() {
        e = e.context(format!("left behind (now removed): {}", left.join("; ")));
    }
    Err(e)
}

/// [`VMS`] VMs through `kiln serve`, `runs` times.
pub async fn run(
    kit: &Kit,
    bins: &Binaries,
    work: &Path,
    runs: usize,
    incidents: &mut Vec<String>,
) -> anyhow::Result<ServeVmMemory> {
    let work = work.join("serve-memory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&work)
        .with_context(|| format!("creating {}", work.display()))?;
    let image = stand_in_image(&kit.image.dir, &work.join("image"), HOLD)?;
    let (accel, _) = kit.accel().await?;
    let accel = accel.as_str().to_owned();
    let mut f: [Vec<f64>; 7] = Default::default();
    let mut check = ServeVmCheck::default();
    let mut all_clean = true;
    for i in 1..=runs {
        let first_job_id = 7_000_000 + 1000 * i as u64;
        let s = with_retries(&format!("kiln serve memory run {i}"), incidents, || {
            once(kit, bins, &image, &work, &accel, first_job_id)
        })
        .await?;
        let per_vm = (s.busy as f64 - s.idle as f64) / VMS as f64;
        eprintln!(
            "memory {i}/{runs}: kiln serve idle {} KiB, 1 VM {} KiB, {VMS} VMs {} KiB ({per_vm:.0} KiB per VM), after {} KiB; its QEMUs {} KiB, vhost-device-vsock {} KiB",
            s.idle, s.one, s.busy, s.after, s.qemu, s.vhost
        );
        for (v, x) in f.iter_mut().zip([
            s.idle as f64,
            s.one as f64,
            s.busy as f64,
            per_vm,
            s.after as f64,
            s.qemu as f64,
            s.vhost as f64,
        ]) {
            v.push(x);
        }
        all_clean &= record(&mut check, VMS, s);
    }
    check.verified = all_clean && check.jobs > 0;
    eprintln!(
        "memory: kiln serve ran {} jobs: {} stand-ins ready with a JIT config, {} `job done`, {} JIT requests, {} runners deleted, {} left registered, {} leftovers: {}",
        check.jobs,
        check.ready_with_jit,
        check.jobs_done,
        check.jit_requests,
        check.runners_deleted,
        check.runners_left,
        check.left_behind.len(),
        if check.verified { "verified" } else { "NOT VERIFIED" }
    );
    let stat = |v: &[f64]| Stat::of(v).context("no kiln serve memory figures");
    Ok(ServeVmMemory {
        vms: VMS,
        vcpus: VCPUS,
        memory_mib: kit.memory_mib,
        hold_s: HOLD.as_secs(),
        idle_rss_kib: stat(&f[0])?,
        one_vm_rss_kib: stat(&f[1])?,
        vms_rss_kib: stat(&f[2])?,
        per_vm_kib: stat(&f[3])?,
        after_rss_kib: stat(&f[4])?,
        qemu_rss_kib: stat(&f[5])?,
        vhost_rss_kib: stat(&f[6])?,
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stand_in_reports_ready_and_holds_without_printing_the_config() {
        let s = stand_in_script(Duration::from_secs(20));
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(s.contains("echo \"kiln-bench-ready jit=$jit\""), "{s}");
        assert!(s.trim_end().ends_with("exec sleep 20"), "{s}");
        // The variable is only tested, never echoed.
        let uses: Vec<&str> = s
            .lines()
            .filter(|l| l.contains("ACTIONS_RUNNER_INPUT_JITCONFIG"))
            .collect();
        assert_eq!(
            uses,
            [r#"if [ -n "$ACTIONS_RUNNER_INPUT_JITCONFIG" ]; then jit=yes; else jit=no; fi"#]
        );
    }

    #[test]
    fn job_logs_tell_ready_stand_ins() {
        let log = "[kiln] job 7001001 of kiln-bench/widgets (run 1, delivery d), pool bench, runner kiln-bench-7001001-abcdef (id 101)\n\
                   kiln-bench-ready jit=yes\n";
        assert_eq!(stand_in_ready(log), Some(true));
        assert_eq!(stand_in_ready("kiln-bench-ready jit=no\n"), Some(false));
        assert_eq!(stand_in_ready("[kiln] job 1 ...\n"), None);
        assert_eq!(stand_in_ready(""), None);
    }

    #[test]
    fn serve_log_job_ends_are_told_apart() {
        let log = r#"{"level":"INFO","target":"kiln::scheduler::running","event":"job_queued","job_id":1,"message":"job queued"}
{"level":"INFO","target":"kiln::job","event":"job_done","job_id":1,"message":"job done","vm":"kiln-1"}
{"level":"WARN","target":"kiln::job","event":"job_runner_failed","job_id":2,"message":"job done: the runner failed"}
{"level":"ERROR","target":"kiln::job","event":"job_failed","job_id":3,"message":"job failed"}
{"level":"WARN","target":"kiln::job","event":"job_without_vm","job_id":4,"message":"job ended without a VM"}
{"level":"ERROR","target":"kiln::job","job_id":5,"message":"the job's task failed"}
"#;
        assert_eq!(job_ends(log).unwrap(), JobEnds { done: 1, other: 3 });
        assert_eq!(job_ends("").unwrap(), JobEnds::default());
        let text = " INFO job{job_id=1}: kiln::job: job done runner_id=1\n";
        assert!(
            job_ends(text).is_err(),
            "a text line is refused, not skipped"
        );
    }

    #[test]
    fn fake_state_parses_and_checks_one_runner_per_job() {
        let line = r#"{"jit_requests":2,"delete_requests":2,"token_requests":1,"registered":[101,102],"deleted":[102,101],"live":[]}"#;
        let s: FakeState = serde_json::from_str(line).expect("parses");
        assert_eq!(s.registered, [101, 102]);
        assert!(s.clean_for(2));
        assert!(!s.clean_for(3));
        let left = FakeState {
            deleted: vec![101],
            live: vec![102],
            ..s.clone()
        };
        assert!(!left.clean_for(2));
        let retried = FakeState {
            jit_requests: 3,
            ..s
        };
        assert!(
            !retried.clean_for(2),
            "a failed JIT request is not a clean run"
        );
        let hello: FakeHello =
            serde_json::from_str(r#"{"app_id":4242,"url":"http://127.0.0.1:40001"}"#)
                .expect("parses");
        assert_eq!(hello.app_id, 4242);
    }

    fn sample(fake: FakeState, left: Vec<String>) -> Sample {
        Sample {
            idle: 10_000,
            one: 10_500,
            busy: 10_700,
            after: 10_600,
            qemu: 300_000,
            vhost: 8000,
            ready: 2,
            ends: JobEnds { done: 2, other: 0 },
            fake,
            left,
        }
    }

    #[test]
    fn a_run_is_clean_only_with_one_runner_per_job_and_nothing_left() {
        let fake = FakeState {
            jit_requests: 2,
            delete_requests: 2,
            token_requests: 1,
            registered: vec![101, 102],
            deleted: vec![101, 102],
            live: vec![],
        };
        let mut check = ServeVmCheck::default();
        assert!(record(&mut check, 2, sample(fake.clone(), vec![])));
        let left = vec!["file: /tmp/x/disks/a.ext4".to_owned()];
        assert!(!record(&mut check, 2, sample(fake.clone(), left)));
        let mut not_done = sample(fake, vec![]);
        not_done.ends = JobEnds { done: 1, other: 1 };
        assert!(!record(&mut check, 2, not_done));
        assert_eq!(
            (
                check.jobs,
                check.ready_with_jit,
                check.jobs_done,
                check.jobs_not_done
            ),
            (6, 6, 5, 1)
        );
        assert_eq!(
            (
                check.jit_requests,
                check.runners_deleted,
                check.runners_left
            ),
            (6, 6, 0)
        );
        assert_eq!(check.left_behind.len(), 1);
    }

    #[test]
    fn kiln_serve_accepts_the_config_with_room_for_exactly_the_vms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hello = FakeHello {
            url: "http://127.0.0.1:40001".into(),
            app_id: 4242,
        };
        let image = dir.path().join("image");
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, config_toml(4243, &hello, &image, 2, 1024)).expect("config");
        webhook::write_private(&dir.path().join("webhook-secret"), b"s3cret").expect("secret");
        webhook::write_private(&dir.path().join("app-key.pem"), b"not checked here").expect("key");
        let facts = kiln::config::HostFacts {
            cpus: 2,
            memory_mib: 24_000,
        };
        let c = kiln::config::Config::load_with_host(&cfg, &facts).expect("valid config");
        let labels: Vec<String> = payload::LABELS.iter().map(|s| s.to_string()).collect();
        let pool = c.pool_for(&labels).expect("a pool serves the payloads");
        assert_eq!(pool.max_vms, Some(2));
        assert_eq!(pool.image, image);
        assert_eq!((pool.vcpus, pool.memory_mib), (VCPUS, 1024));
        assert_eq!(
            (c.host.vcpus, c.host.memory_mib),
            (2 * VCPUS, 2 * 1024),
            "the host has room for exactly 2 such VMs"
        );
        assert_eq!(c.github.api_url, "http://127.0.0.1:40001");
        assert_eq!(c.github.app_id, 4242);
        assert_eq!(c.listen.port(), 4243);
    }

    #[test]
    fn the_stand_in_image_shares_the_bench_images_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let bench = d.path().join("bench");
        std::fs::create_dir_all(bench.join("scratch-skel/upper")).expect("mkdir");
        std::fs::create_dir_all(bench.join("scratch-skel/home/runner")).expect("mkdir");
        for f in ["rootfs.ext4", "vmlinuz", "initrd"] {
            std::fs::write(bench.join(f), b"x").expect("write");
        }
        std::fs::write(bench.join("manifest.json"), r#"{"format":1,"runner":null}"#)
            .expect("write");
        let out =
            stand_in_image(&bench, &d.path().join("serve"), Duration::from_secs(5)).expect("image");
        let img = kiln::vm::Image::open(&out).expect("kiln opens it");
        assert!(img.without_runner, "the manifest is the bench image's");
        assert_eq!(
            std::fs::read_link(out.join("rootfs.ext4")).expect("link"),
            bench.canonicalize().expect("canon").join("rootfs.ext4")
        );
        let script = out.join("scratch-skel/upper/opt/actions-runner/run.sh");
        let mode = std::fs::metadata(&script)
            .expect("run.sh")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(&script).expect("read"),
            stand_in_script(Duration::from_secs(5))
        );
        assert!(out.join("scratch-skel/home/runner").is_dir());
        assert_eq!(
            img.boot.scratch_skeleton.as_deref(),
            Some(out.join("scratch-skel").as_path())
        );
        // Again: replaced, not failed.
        stand_in_image(&bench, &d.path().join("serve"), Duration::from_secs(5)).expect("again");
        // No skeleton: say how to get one.
        std::fs::remove_dir_all(bench.join("scratch-skel")).expect("rm");
        let err = stand_in_image(&bench, &d.path().join("serve"), Duration::from_secs(5))
            .expect_err("no skeleton");
        assert!(err.to_string().contains("--force-image"), "{err}");
    }
}
