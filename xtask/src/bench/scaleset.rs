//! Benchmark 7, job sources: a job handed over to `kiln serve` until its
//! runner execs in the VM, through the runner scale-set queue beside the
//! webhook path, alternating run by run in the same invocation.
//!
//! Two release `kiln serve` processes run side by side against one fake
//! GitHub (`tests/src/bin/fake-github --broker`, its own process on
//! 127.0.0.1, with the fake scale-set broker), each with one pool of room
//! for one VM of the same image (the bench image with the stand-in runner
//! of the memory benchmark, [`super::memory::serve::stand_in_image`]):
//!
//! - webhook: the pool takes its jobs from webhooks; a signed
//!   `workflow_job` `queued` delivery ([`super::webhook::payload`]) is sent
//!   on a connection opened before the clock starts. Kiln verifies and
//!   parses it, queues the job, asks GitHub whether it is still queued and
//!   for a JIT config (REST), then starts the VM.
//! - scale set: the pool takes its jobs from the scale set's queue; the
//!   bench waits until the daemon's long poll is held open with room for a
//!   job (the fake's `state`), then queues a job at the broker (`queue` on
//!   the fake's stdin): the held poll is answered with the assignment at
//!   once. Kiln records the job in its journal, deletes the message, queues
//!   the job, mints a JIT config from the scale set, then starts the VM.
//!
//! What is timed comes from the daemons themselves, never from a poll of
//! the bench's: the wall-clock `timestamp` (µs) of `kiln serve`'s JSON log
//! events ([`kiln::logs::events`]: `job_queued`, `vm_starting`, and on the
//! scale-set path `scale_set_message`, `scale_set_acked`) against the
//! bench's wall clock when it handed the job over, and the board's boot
//! milestones (`prepared`, which `vm_starting` marks, to `runner_started`:
//! the guest reported the runner spawned), read over the admin socket
//! (`kiln ps`'s data). Both paths boot the same VM, so the figures before
//! `vm_starting` are where the two differ; the boot is reported too.
//!
//! Each run is checked: the job ended `job_done`, its stand-in reported a
//! JIT config in its environment, and (scale set) the broker saw it run
//! once; nothing is left once the daemons stop.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln::logs::events;
use kiln::logs::read::LogLine;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::memory::serve::{
    entries_below, kill_tree, processes_mentioning, signal, stand_in_image, stand_in_ready,
    Binaries,
};
use super::results::{Figure, ScaleSetCheck, ScaleSetResults, SourcePath, SourceRatio};
use super::stats::Series;
use super::vmkit::Kit;
use super::webhook::{self, load, payload};

/// The scale set's name at the fake broker.
pub const SCALE_SET: &str = "kiln-bench-scale-set";
/// The repository the jobs are queued for (the payloads' too).
pub const REPOSITORY: &str = "kiln-bench/widgets";
/// How long each stand-in runner holds its VM: the job only has to start.
pub const HOLD: Duration = Duration::from_secs(1);
/// vCPUs of each VM (one VM runs at a time, as in `kiln serve`'s memory
/// figures).
pub const VCPUS: u32 = 1;
/// Until a job ended (a boot under TCG takes seconds; the host is shared).
const JOB_WITHIN: Duration = Duration::from_secs(300);
/// Until the scale-set daemon's session is open, or its poll is held.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The two job sources measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    ScaleSet,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::ScaleSet => "scale set",
        }
    }

    /// The directory of its daemon under the benchmark's.
    fn dir(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::ScaleSet => "scale-set",
        }
    }
}

/// The fake GitHub's first line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FakeHello {
    pub url: String,
    pub app_id: u64,
    pub broker_url: String,
}

/// `kiln serve`'s config for `source`: the same pool, VM and GitHub on
/// both paths; only where jobs come from differs (and the webhook path
/// has its secret: the scale-set daemon opens no webhook port).
pub fn config_toml(
    source: Source,
    port: u16,
    fake: &FakeHello,
    image: &Path,
    memory_mib: u32,
) -> String {
    let labels: Vec<String> = payload::LABELS.iter().map(|l| format!("{l:?}")).collect();
    let (secret, pool_source) = match source {
        Source::Webhook => (
            "webhook_secret_file = \"webhook-secret\"",
            "source = \"webhook\"".to_owned(),
        ),
        Source::ScaleSet => (
            "# No webhook secret: every pool has a scale set, no webhook port opens.",
            format!("source = \"scale-set\"\nscale_set = \"{SCALE_SET}\""),
        ),
    };
    format!(
        r#"# Written by `cargo xtask bench` (job sources: {name} path).
listen = "127.0.0.1:{port}"
{secret}
# The bench's VMs run under QEMU (TCG where KVM cannot run guests).
backend = "qemu"
# The bench reads its events (kiln::logs::events).
log_format = "json"

# No metrics listener; the admin socket (in KILN_RUNTIME_DIR) stays.
[admin]
listen = "off"

[github]
# The fake GitHub API and scale-set broker (tests/src/bin/fake-github).
api_url = "{url}"
app_id = {app_id}
private_key_file = "app-key.pem"
org = "kiln-bench"
runner_group_id = 1

[host]
vcpus = {VCPUS}
memory_mib = {memory_mib}

[[pool]]
name = "bench"
labels = [{labels}]
vcpus = {VCPUS}
memory_mib = {memory_mib}
image = {image:?}
max_vms = 1
job_timeout = "2m"
network = "none"
{pool_source}
"#,
        name = source.name(),
        url = fake.url,
        app_id = fake.app_id,
        labels = labels.join(", "),
        image = image.display().to_string(),
    )
}

/// Unix time in µs of an RFC 3339 UTC timestamp as `kiln serve`'s JSON
/// log writes it (`2026-12-03T16:31:04.123456Z`); `None` for anything else.
pub fn unix_us(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    if !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let micros = if frac.is_empty() {
        0.0
    } else {
        frac.parse::<f64>().ok()? / 10f64.powi(frac.len() as i32) * 1e6
    };
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some(secs as f64 * 1e6 + micros)
}

/// The bench's wall clock, Unix µs.
fn now_us() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Which job to look for in a daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    /// The webhook's job id.
    Webhook(u64),
    /// The broker's job key (its `queue` answer).
    ScaleSet(String),
}

/// What one job's lines in `kiln serve`'s log say, once it ended: wall
/// clock instants (Unix µs) and the end line's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvents {
    /// Kiln's job id.
    pub job_id: u64,
    /// `job_queued`.
    pub queued_us: f64,
    /// `vm_starting`: the VM is prepared, its VMM starts.
    pub vm_starting_us: f64,
    /// The end line's `jit_ms`: from the job's task start to the JIT config
    /// (the still-queued check included on the webhook path).
    pub jit_ms: f64,
    /// The end's event (`job_done`, ...).
    pub end: String,
    /// Scale set: `scale_set_message` (the job recorded in the journal)
    /// and `scale_set_acked` (its message deleted at GitHub).
    pub message_us: Option<f64>,
    pub acked_us: Option<f64>,
}

fn at(line: &LogLine) -> anyhow::Result<f64> {
    let ts = line
        .str("timestamp")
        .context("a log line without a timestamp")?;
    unix_us(ts).with_context(|| format!("unreadable log timestamp {ts:?}"))
}

/// The message id in a scale-set job's `delivery` field
/// (`scale set NAME message ID job KEY`), and whether it names `key`.
fn scale_set_delivery(delivery: &str, key: &str) -> Option<i64> {
    let rest = delivery.strip_suffix(&format!(" job {key}"))?;
    let (_, id) = rest.rsplit_once(" message ")?;
    id.parse().ok()
}

/// The lines of one event whose `message_id` is `id`.
fn message_line<'a>(lines: &'a [LogLine], event: &str, id: i64) -> Option<&'a LogLine> {
    lines
        .iter()
        .find(|l| l.is(event) && l.get("message_id").and_then(|v| v.as_i64()) == Some(id))
}

/// The job's events in `lines`; `None` until its end line is there.
pub fn job_events(lines: &[LogLine], job: &JobRef) -> anyhow::Result<Option<JobEvents>> {
    let queued = lines.iter().find(|l| {
        l.is(events::JOB_QUEUED)
            && match job {
                JobRef::Webhook(id) => l.u64("job_id") == Some(*id),
                JobRef::ScaleSet(key) => l
                    .str("delivery")
                    .and_then(|d| scale_set_delivery(d, key))
                    .is_some(),
            }
    });
    let Some(queued) = queued else {
        return Ok(None);
    };
    let job_id = queued.u64("job_id").context("job_queued without job_id")?;
    let ends = [
        events::JOB_DONE,
        events::JOB_RUNNER_FAILED,
        events::JOB_FAILED,
        events::JOB_WITHOUT_VM,
    ];
    let of_job = |l: &&LogLine| l.u64("job_id") == Some(job_id);
    let Some(end) = lines
        .iter()
        .filter(of_job)
        .find(|l| ends.iter().any(|e| l.is(e)))
    else {
        return Ok(None);
    };
    let end_name = end.event().unwrap_or_default().to_owned();
    let vm = lines
        .iter()
        .filter(of_job)
        .find(|l| l.is(events::VM_STARTING));
    let Some(vm) = vm else {
        bail!("job {job_id} ended ({end_name}) without starting a VM");
    };
    let (mut message_us, mut acked_us) = (None, None);
    if let JobRef::ScaleSet(key) = job {
        let id = queued
            .str("delivery")
            .and_then(|d| scale_set_delivery(d, key))
            .context("no message id")?;
        let msg = message_line(lines, events::SCALE_SET_MESSAGE, id)
            .with_context(|| format!("no scale_set_message line for message {id}"))?;
        message_us = Some(at(msg)?);
        acked_us = match message_line(lines, events::SCALE_SET_ACKED, id) {
            Some(l) => Some(at(l)?),
            None => bail!("message {id} was never acknowledged"),
        };
    }
    Ok(Some(JobEvents {
        job_id,
        queued_us: at(queued)?,
        vm_starting_us: at(vm)?,
        jit_ms: end
            .u64("jit_ms")
            .context("the job's end line has no jit_ms")? as f64,
        end: end_name,
        message_us,
        acked_us,
    }))
}

/// The board's `prepared` to `runner_started`, ms: the VM from its
/// `vm_starting` line to the runner's exec reported by the guest.
pub fn boot_ms(milestones: &[kiln::job::board::Milestone]) -> Option<f64> {
    let find = |n: &str| milestones.iter().find(|m| m.name == n).map(|m| m.ms);
    let (p, r) = (find("prepared")?, find("runner_started")?);
    r.checked_sub(p).map(|d| d as f64)
}

/// The phases of one run, in ms, named as the tables show them.
pub fn phases(handed_us: f64, ev: &JobEvents, boot: f64) -> Vec<(&'static str, f64)> {
    let ms = |from: f64, to: f64| (to - from) / 1e3;
    let mut out = Vec::new();
    if let (Some(msg), Some(ack)) = (ev.message_us, ev.acked_us) {
        out.push(("handed over → recorded", ms(handed_us, msg)));
        out.push(("recorded → acknowledged", ms(msg, ack)));
        out.push(("acknowledged → queued", ms(ack, ev.queued_us)));
    } else {
        out.push(("handed over → queued", ms(handed_us, ev.queued_us)));
    }
    out.push(("queued → VM starting", ms(ev.queued_us, ev.vm_starting_us)));
    out.push(("VM starting → runner exec", boot));
    out.push((JIT, ev.jit_ms));
    out.push((BEFORE_VM, ms(handed_us, ev.vm_starting_us)));
    out.push((TOTAL, ms(handed_us, ev.vm_starting_us) + boot));
    out
}

/// The end line's `jit_ms`, beside the phases (part of one of them).
pub const JIT: &str = "jit_ms (beside)";
/// Handed over → `vm_starting`: Kiln's handling before the VM.
pub const BEFORE_VM: &str = "handed over → VM starting";
/// Handed over → runner exec.
pub const TOTAL: &str = "handed over → runner exec";

/// What each phase covers, per path.
fn covers(source: Source, name: &str) -> String {
    let s = match (source, name) {
        (Source::Webhook, "handed over → queued") => {
            "the delivery sent (connection open) to its `job_queued` line: HTTP, HMAC-SHA256, JSON parse, de-duplication, enqueue"
        }
        (Source::ScaleSet, "handed over → recorded") => {
            "`queue` written to the fake to its `scale_set_message` line: the held poll answered with the assignment, message parsed, job recorded in the journal"
        }
        (Source::ScaleSet, "recorded → acknowledged") => {
            "the message deleted at the broker (one HTTP round trip), `scale_set_acked`"
        }
        (Source::ScaleSet, "acknowledged → queued") => "the job handed to the scheduler, `job_queued`",
        (Source::Webhook, "queued → VM starting") => {
            "picked up, still-queued check (REST), JIT config (REST `generate-jitconfig`), VM directory, CID, scratch disk, to `vm_starting`"
        }
        (Source::ScaleSet, "queued → VM starting") => {
            "picked up, JIT config minted from the scale set, VM directory, CID, scratch disk, to `vm_starting`"
        }
        (_, "VM starting → runner exec") => {
            "the board's `prepared` to `runner_started` milestones: VMM start, boot, kiln-init, the runner spawned"
        }
        (Source::Webhook, "jit_ms (beside)") => {
            "the end line's `jit_ms`: task start to the JIT config, still-queued check included (part of queued → VM starting)"
        }
        (Source::ScaleSet, "jit_ms (beside)") => {
            "the end line's `jit_ms`: task start to the scale set's JIT config (part of queued → VM starting)"
        }
        (_, BEFORE_VM) => "Kiln's share before the VM: the sum of the phases up to `vm_starting`",
        (_, TOTAL) => "the job handed over to the runner's exec in the guest",
        _ => "",
    };
    s.to_owned()
}

/// A process the benchmark started: `kiln serve` or the fake.
struct Proc {
    child: Child,
    pid: u32,
}

/// The fake GitHub with its broker.
struct Fake {
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    hello: FakeHello,
}

/// The fake's `state`, the part read here.
#[derive(Debug, Deserialize)]
struct FakeState {
    #[serde(default)]
    broker: Vec<BrokerJob>,
    #[serde(default)]
    scale_sets: Vec<BrokerScaleSet>,
}

#[derive(Debug, Deserialize)]
struct BrokerJob {
    job: String,
    runs: u32,
}

#[derive(Debug, Deserialize)]
struct BrokerScaleSet {
    name: String,
    capacity: u32,
    polls_held: u32,
}

impl Fake {
    async fn start(bin: &Path, key_file: &Path, log: &Path) -> anyhow::Result<Fake> {
        let stderr =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(bin)
            .arg("--key-file")
            .arg(key_file)
            .arg("--broker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the fake GitHub exited at once")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the fake's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the fake GitHub did not start within 120 s")?
            .context("reading the fake GitHub's stdout")?;
        let Some(first) = first else {
            bail!("the fake GitHub exited at once: {}", webhook::log_tail(log));
        };
        let hello: FakeHello = serde_json::from_str(&first)
            .with_context(|| format!("parsing the fake GitHub's first line {first:?}"))?;
        Ok(Fake {
            proc: Proc { child, pid },
            stdin,
            lines,
            hello,
        })
    }

    /// One command, one answer line.
    async fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        let stdin = self.stdin.as_mut().context("the fake GitHub is closed")?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("writing to the fake GitHub")?;
        stdin.flush().await.context("writing to the fake GitHub")?;
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .context("the fake GitHub did not answer within 10 s")?
            .context("reading the fake GitHub's answer")?
            .context("the fake GitHub exited")
    }

    async fn state(&mut self) -> anyhow::Result<FakeState> {
        let line = self.ask("state").await?;
        serde_json::from_str(&line).context("parsing the fake GitHub's state")
    }

    /// Until the scale set's session holds a poll with room for a job: a
    /// job queued then is assigned at once.
    async fn wait_polling(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let st = self.state().await?;
            let set = st.scale_sets.iter().find(|s| s.name == SCALE_SET);
            if set.is_some_and(|s| s.polls_held > 0 && s.capacity > 0) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the scale set's poll was not held with room within {READY_WITHIN:?}: {set:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Queues a job for the bench's labels; the broker's job key.
    async fn queue(&mut self) -> anyhow::Result<String> {
        #[derive(Deserialize)]
        struct Queued {
            job: String,
        }
        let line = self
            .ask(&format!("queue {REPOSITORY} {}", payload::LABELS.join(",")))
            .await?;
        let q: Queued = serde_json::from_str(&line)
            .with_context(|| format!("parsing the fake's answer to `queue`: {line:?}"))?;
        Ok(q.job)
    }

    async fn close(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.proc.child.wait())
            .await
            .is_err()
        {
            kill_tree(self.proc.pid);
            let _ = self.proc.child.wait().await;
        }
    }
}

/// One `kiln serve` and its directories.
struct Daemon {
    source: Source,
    proc: Option<Proc>,
    /// Config, secrets, log, state, disks.
    dir: PathBuf,
    /// KILN_RUNTIME_DIR (short: VM sockets live below it).
    runtime: PathBuf,
    addr: std::net::SocketAddr,
}

impl Daemon {
    fn log(&self) -> PathBuf {
        self.dir.join("kiln-serve.log")
    }

    fn disks(&self) -> PathBuf {
        self.dir.join("disks")
    }

    fn lines(&self) -> anyhow::Result<Vec<LogLine>> {
        let log = self.log();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        kiln::logs::read::lines(&text)
            .with_context(|| format!("reading kiln serve's log {}", log.display()))
    }

    fn command(&self, bin: &Path, accel: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env_remove("KILN_LOG")
            .env("KILN_RUNTIME_DIR", &self.runtime)
            .env("KILN_DISK_DIR", self.disks())
            .env("KILN_STATE_DIR", self.dir.join("state"))
            // The bench's accelerator, decided once: no probe boot here.
            .env("KILN_ACCEL", accel);
        cmd
    }

    /// Starts it; returns once it takes jobs (the webhook port answers, or
    /// the scale set's session is open).
    async fn start(&mut self, bin: &Path, accel: &str) -> anyhow::Result<()> {
        let what = format!("kiln serve ({} path)", self.source.name());
        let cmd = self.command(bin, accel);
        if self.source == Source::Webhook {
            let s = webhook::start(cmd, self.addr, self.log(), &what).await?;
            self.proc = Some(Proc {
                child: s.child,
                pid: s.pid,
            });
            return Ok(());
        }
        let (child, pid) = webhook::spawn_logged(cmd, &self.log(), &what)?;
        self.proc = Some(Proc { child, pid });
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            self.alive()?;
            let lines = self.lines()?;
            if lines.iter().any(|l| l.is(events::SCALE_SET_READY)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} opened no scale-set session within {READY_WITHIN:?}: {}",
                    webhook::log_tail(&self.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.proc.as_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "kiln serve ({} path) exited with {status}: {}",
                    self.source.name(),
                    webhook::log_tail(&self.log())
                );
            }
        }
        Ok(())
    }

    /// Until the job's end line; its events.
    async fn wait_end(&mut self, job: &JobRef) -> anyhow::Result<JobEvents> {
        let deadline = Instant::now() + JOB_WITHIN;
        loop {
            if let Some(ev) = job_events(&self.lines()?, job)? {
                return Ok(ev);
            }
            self.alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{job:?} did not end within {JOB_WITHIN:?}: {}",
                    webhook::log_tail(&self.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The job's board row, over the admin socket.
    async fn row(&self, job_id: u64) -> anyhow::Result<kiln::job::board::Row> {
        let socket = kiln::admin::socket_path(&self.runtime);
        let ps = kiln::admin::client::AdminClient::new(&socket)
            .ps(true)
            .await
            .with_context(|| format!("asking kiln serve's admin socket {}", socket.display()))?;
        ps.jobs
            .into_iter()
            .find(|r| r.job_id == job_id)
            .with_context(|| format!("job {job_id} is not on kiln serve's board"))
    }

    /// SIGTERM (it waits for running jobs: there are none), then kill.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        signal(p.pid, "TERM");
        match tokio::time::timeout(Duration::from_secs(90), p.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                kill_tree(p.pid);
                let _ = p.child.wait().await;
                bail!(
                    "kiln serve ({} path) did not stop within 90 s of SIGTERM",
                    self.source.name()
                )
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(p) = &mut self.proc {
            if matches!(p.child.try_wait(), Ok(None)) {
                kill_tree(p.pid);
            }
        }
    }
}

/// What is left of any VM once the daemons stopped (VMM processes, VM
/// directories, CID leases, scratch disks but their templates); then
/// removes it.
fn left_behind(daemons: &[&Daemon]) -> Vec<String> {
    let mut left = Vec::new();
    for d in daemons {
        let procs = processes_mentioning(&d.runtime)
            .into_iter()
            .chain(processes_mentioning(&d.disks()));
        for (pid, cmdline) in procs {
            signal(pid, "KILL");
            left.push(format!("process: {cmdline}"));
        }
        let templates = d.disks().join(kiln::vm::TEMPLATES_DIR);
        for dir in [d.runtime.join("vms"), d.runtime.join("cids"), d.disks()] {
            for p in entries_below(&dir) {
                if !p.starts_with(&templates) {
                    left.push(format!("file: {}", p.display()));
                }
            }
        }
    }
    left
}

/// A run's secret files (the App key and its copies, the webhook
/// secret): removed when it goes, on every path, errors included.
struct Secrets(Vec<PathBuf>);

impl Drop for Secrets {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Both daemons, the fake, and what the runs found.
struct Bench<'a> {
    bins: &'a Binaries,
    fake: Fake,
    webhook: Daemon,
    scale_set: Daemon,
    secret: kiln::secret::Secret,
    nonce: u64,
    next_job_id: u64,
    series: [Series; 2],
    check: ScaleSetCheck,
    /// Broker job keys the measured and warm-up runs queued.
    keys: Vec<String>,
}

impl Bench<'_> {
    fn daemon(&mut self, source: Source) -> &mut Daemon {
        match source {
            Source::Webhook => &mut self.webhook,
            Source::ScaleSet => &mut self.scale_set,
        }
    }

    /// Hands one job over; when it was handed over (Unix µs) and how to
    /// find it.
    async fn hand_over(&mut self, source: Source) -> anyhow::Result<(f64, JobRef)> {
        match source {
            Source::Webhook => {
                let job_id = self.next_job_id;
                self.next_job_id += 1;
                let addr = self.webhook.addr;
                let d = payload::deliveries(&self.secret, self.nonce, job_id, job_id, 1)
                    .pop()
                    .context("no delivery")?;
                let mut conn = load::connect(addr).await?;
                let req = load::request(addr, d)?;
                let t0 = now_us();
                match load::send(&mut conn, req, Some(webhook::QUEUED)).await? {
                    None => Ok((t0, JobRef::Webhook(job_id))),
                    Some(other) => {
                        bail!("kiln serve answered job {job_id}'s delivery with {other}")
                    }
                }
            }
            Source::ScaleSet => {
                self.fake.wait_polling().await?;
                let t0 = now_us();
                let key = self.fake.queue().await?;
                self.keys.push(key.clone());
                Ok((t0, JobRef::ScaleSet(key)))
            }
        }
    }

    /// One job through `source`, to its end; its phases (ms).
    async fn one(&mut self, source: Source) -> anyhow::Result<Vec<(&'static str, f64)>> {
        let (t0, job) = self.hand_over(source).await?;
        let d = self.daemon(source);
        let ev = d.wait_end(&job).await?;
        let row = d.row(ev.job_id).await?;
        let boot = boot_ms(&row.milestones).with_context(|| {
            format!(
                "job {} has no prepared/runner_started milestones: {:?}",
                ev.job_id, row.milestones
            )
        })?;
        let jit = row
            .log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .as_deref()
            .and_then(stand_in_ready);
        self.check.jobs += 1;
        self.check.jobs_done += usize::from(ev.end == events::JOB_DONE);
        self.check.ready_with_jit += usize::from(jit == Some(true));
        if ev.end != events::JOB_DONE || jit != Some(true) {
            bail!(
                "{} job {}: ended {}, stand-in ready with a JIT config: {jit:?}",
                source.name(),
                ev.job_id,
                ev.end
            );
        }
        Ok(phases(t0, &ev, boot))
    }

    async fn measure(&mut self, runs: usize) -> anyhow::Result<()> {
        for source in [Source::Webhook, Source::ScaleSet] {
            eprintln!(
                "scale set: warm-up job through the {} path (not counted)",
                source.name()
            );
            self.one(source).await?;
        }
        for i in 1..=runs {
            // Which path goes first alternates too.
            let order = if i % 2 == 1 {
                [Source::Webhook, Source::ScaleSet]
            } else {
                [Source::ScaleSet, Source::Webhook]
            };
            for source in order {
                let p = self.one(source).await?;
                let get = |n: &str| p.iter().find(|(k, _)| *k == n).map_or(f64::NAN, |x| x.1);
                eprintln!(
                    "scale set {i}/{runs}: {} path: handed over → VM starting {:.1} ms, → runner exec {:.0} ms",
                    source.name(),
                    get(BEFORE_VM),
                    get(TOTAL)
                );
                let s = &mut self.series[source as usize];
                for (name, v) in p {
                    s.push(name, v);
                }
            }
        }
        Ok(())
    }

    /// The broker ran every queued job once.
    async fn broker_runs(&mut self) -> anyhow::Result<bool> {
        let st = self.fake.state().await?;
        Ok(self.keys.iter().all(|k| {
            st.broker
                .iter()
                .filter(|j| &j.job == k)
                .map(|j| j.runs)
                .eq([1])
        }))
    }
}

/// What each path does, one line each.
fn includes(source: Source) -> Vec<String> {
    let lines: &[&str] = match source {
        Source::Webhook => &[
            "`kiln serve` (release) with one webhook pool; a signed `workflow_job` `queued` delivery (6.4 KiB, the webhook benchmark's) POSTed on a keep-alive connection opened before the clock",
            "Kiln: signature, parse, de-duplication, enqueue, 202; then the still-queued check (GET the job) and `generate-jitconfig` against the fake GitHub's REST API",
        ],
        Source::ScaleSet => &[
            "`kiln serve` (release) with one scale-set pool and no webhook port; its long poll held open at the fake broker with room for one job when the job is queued there",
            "Kiln: the poll answered with the assignment, the job recorded in the journal (SQLite), the message deleted at the broker, enqueue; then the JIT config minted from the scale set (no still-queued check: GitHub assigned it)",
        ],
    };
    lines.iter().map(|s| (*s).to_owned()).collect()
}

fn path_results(source: Source, s: &Series) -> anyhow::Result<SourcePath> {
    let phases: Vec<Figure> = s
        .stats()
        .into_iter()
        .filter(|(n, _)| n != BEFORE_VM && n != TOTAL)
        .map(|(name, stat)| Figure {
            what: covers(source, &name),
            name,
            stat,
        })
        .collect();
    let need = |n: &str| {
        s.get(n)
            .with_context(|| format!("no {n} figures for the {} path", source.name()))
    };
    Ok(SourcePath {
        name: source.name().to_owned(),
        includes: includes(source),
        phases,
        before_vm: need(BEFORE_VM)?,
        boot: need("VM starting → runner exec")?,
        total: need(TOTAL)?,
    })
}

/// Scale set over webhook, medians.
pub fn ratios(webhook: &SourcePath, scale_set: &SourcePath) -> Vec<SourceRatio> {
    [
        (BEFORE_VM, &webhook.before_vm, &scale_set.before_vm),
        (
            "VM starting → runner exec (the same VM: ~1)",
            &webhook.boot,
            &scale_set.boot,
        ),
        (TOTAL, &webhook.total, &scale_set.total),
    ]
    .into_iter()
    .map(|(what, w, s)| SourceRatio {
        what: what.to_owned(),
        webhook_ms: w.median,
        scale_set_ms: s.median,
        ratio: s.median / w.median,
    })
    .collect()
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The benchmark: `runs` jobs through each path, after one warm-up each.
pub async fn run(
    kit: &Kit,
    bins: &Binaries,
    work: &Path,
    runs: usize,
) -> anyhow::Result<ScaleSetResults> {
    let work = work.join("scale-set");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    make_dir(&work)?;
    let image = stand_in_image(&kit.image.dir, &work.join("image"), HOLD)?;
    let (accel, _) = kit.accel().await?;
    let accel = accel.as_str().to_owned();
    let key = work.join("app-key.pem");
    let mut secrets = Secrets(vec![key.clone()]);
    let fake = Fake::start(&bins.fake_github, &key, &work.join("fake-github.log")).await?;
    let mut daemon = |source: Source| -> anyhow::Result<Daemon> {
        let dir = work.join(source.dir());
        make_dir(&dir)?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], webhook::free_port()?));
        let config = config_toml(source, addr.port(), &fake.hello, &image, kit.memory_mib);
        std::fs::write(dir.join("config.toml"), config)
            .with_context(|| format!("writing {}", dir.join("config.toml").display()))?;
        secrets.0.push(dir.join("app-key.pem"));
        std::fs::copy(&key, dir.join("app-key.pem")).context("copying the App key")?;
        Ok(Daemon {
            source,
            proc: None,
            runtime: kit.runtime_root().join(format!("ss-{}", source.dir())),
            dir,
            addr,
        })
    };
    let (webhook_d, scale_set_d) = (daemon(Source::Webhook)?, daemon(Source::ScaleSet)?);
    let secret = webhook::random_hex(32)?;
    secrets.0.push(webhook_d.dir.join("webhook-secret"));
    webhook::write_private(&webhook_d.dir.join("webhook-secret"), secret.as_bytes())?;
    let mut bench = Bench {
        bins,
        fake,
        webhook: webhook_d,
        scale_set: scale_set_d,
        secret: kiln::secret::Secret::new(secret),
        nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            << 20,
        next_job_id: 9_000_001,
        series: Default::default(),
        check: ScaleSetCheck::default(),
        keys: Vec::new(),
    };
    let measured = async {
        let kiln = bench.bins.kiln.clone();
        bench.webhook.start(&kiln, &accel).await?;
        bench.scale_set.start(&kiln, &accel).await?;
        bench.measure(runs).await?;
        bench.broker_runs().await
    }
    .await;
    let stopped = (bench.webhook.stop().await, bench.scale_set.stop().await);
    let left = left_behind(&[&bench.webhook, &bench.scale_set]);
    let Bench {
        fake,
        series,
        mut check,
        webhook: w,
        scale_set: s,
        ..
    } = bench;
    fake.close().await;
    // The logs and configs stay for reading; the secrets go.
    drop(secrets);
    for d in [&w.runtime, &s.runtime] {
        let _ = std::fs::remove_dir_all(d);
    }
    let ran_once = measured?;
    stopped.0?;
    stopped.1?;
    check.broker_ran_each_once = ran_once;
    check.verified = ran_once
        && left.is_empty()
        && check.jobs == check.jobs_done
        && check.jobs == check.ready_with_jit;
    check.left_behind = left;
    let webhook = path_results(Source::Webhook, &series[Source::Webhook as usize])?;
    let scale_set = path_results(Source::ScaleSet, &series[Source::ScaleSet as usize])?;
    eprintln!(
        "scale set: {} jobs, {} `job done` with a JIT config, broker ran each once: {}, leftovers: {}: {}",
        check.jobs,
        check.ready_with_jit,
        check.broker_ran_each_once,
        check.left_behind.len(),
        if check.verified { "verified" } else { "NOT VERIFIED" }
    );
    Ok(ScaleSetResults {
        ratios: ratios(&webhook, &scale_set),
        webhook,
        scale_set,
        runs,
        vcpus: VCPUS,
        memory_mib: kit.memory_mib,
        check,
        separate_run: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Stat;

    #[test]
    fn secret_files_go_with_their_guard() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b) = (
            d.path().join("app-key.pem"),
            d.path().join("webhook-secret"),
        );
        std::fs::write(&a, "key").expect("write");
        let guard = Secrets(vec![a.clone(), b.clone()]);
        std::fs::write(&b, "secret").expect("write");
        drop(guard);
        assert!(!a.exists() && !b.exists());
        // One never written is no error.
        drop(Secrets(vec![d.path().join("never")]));
    }

    #[test]
    fn log_timestamps_are_unix_microseconds() {
        assert_eq!(unix_us("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(unix_us("2000-02-29T23:59:59Z"), Some(951_868_799e6));
        let t = unix_us("2026-12-03T16:31:04.123456Z").expect("parses");
        assert!((t - 1_796_315_464_123_456.0).abs() < 1.0, "{t}");
        // Nanoseconds too; a short fraction is a fraction, not microseconds.
        let n = unix_us("2026-12-03T16:31:04.123456789Z").expect("ns");
        assert!((n - 1_796_315_464_123_456.8).abs() < 1.0, "{n}");
        let short = unix_us("2026-12-03T16:31:04.5Z").expect("short");
        assert!((short - 1_796_315_464_500_000.0).abs() < 1.0, "{short}");
        // Agrees with the report's own date rendering.
        let secs = 1_796_315_464u64;
        assert_eq!(super::super::render::utc(secs), "2026-12-03 16:31 UTC");
        for bad in [
            "",
            "2026-12-03 16:31:04Z",
            "2026-12-03T16:31:04+01:00",
            "2026-13-03T16:31:04Z",
            "2026-12-03T16:31:04.12a4Z",
            "yesterday",
        ] {
            assert_eq!(unix_us(bad), None, "{bad:?}");
        }
    }

    fn line(ts: &str, rest: &str) -> String {
        format!("{{\"timestamp\":\"2026-12-03T16:31:{ts}Z\",\"level\":\"INFO\",\"target\":\"kiln\",{rest}}}\n")
    }

    fn webhook_log(ended: bool) -> String {
        let mut log = line(
            "00.000000",
            r#""event":"serve_listening","listen":"127.0.0.1:1""#,
        ) + &line(
            "01.004000",
            r#""event":"job_queued","job_id":7,"delivery":"d-7","pool":"bench","queued":1"#,
        ) + &line(
            "01.001000",
            r#""event":"job_queued","job_id":6,"delivery":"d-6","pool":"bench","queued":1"#,
        ) + &line(
            "01.034500",
            r#""event":"vm_starting","job_id":7,"vm":"kiln-1","cid":3"#,
        );
        if ended {
            log += &line(
                "09.000000",
                r#""event":"job_done","job_id":7,"jit_ms":21,"queued_ms":0,"vm":"kiln-1""#,
            );
        }
        log
    }

    fn lines(text: &str) -> Vec<LogLine> {
        kiln::logs::read::lines(text).expect("JSON lines")
    }

    #[test]
    fn a_webhook_jobs_events_are_found_once_it_ended() {
        let job = JobRef::Webhook(7);
        assert_eq!(
            job_events(&lines(&webhook_log(false)), &job).expect("ok"),
            None
        );
        let ev = job_events(&lines(&webhook_log(true)), &job)
            .expect("ok")
            .expect("ended");
        let t = |s: &str| unix_us(&format!("2026-12-03T16:31:{s}Z")).expect("ts");
        assert_eq!(ev.job_id, 7);
        assert_eq!(ev.queued_us, t("01.004000"));
        assert_eq!(ev.vm_starting_us, t("01.034500"));
        assert_eq!((ev.jit_ms, ev.end.as_str()), (21.0, "job_done"));
        assert_eq!((ev.message_us, ev.acked_us), (None, None));
        assert_eq!(
            job_events(&lines(&webhook_log(true)), &JobRef::Webhook(8)).expect("ok"),
            None,
            "another job"
        );
    }

    #[test]
    fn a_scale_set_jobs_events_include_its_message() {
        let key = "4f1c-job";
        let delivery = format!("scale set {SCALE_SET} message 12 job {key}");
        let log = line(
            "00.500000",
            r#""event":"scale_set_message","message_id":11,"queued":1"#,
        ) + &line(
            "01.010000",
            r#""event":"scale_set_message","message_id":12,"queued":1"#,
        ) + &line("01.012000", r#""event":"scale_set_acked","message_id":12"#)
            + &line(
                "01.013000",
                &format!(
                    r#""event":"job_queued","job_id":99,"delivery":"{delivery}","pool":"bench""#
                ),
            )
            + &line(
                "01.040000",
                r#""event":"vm_starting","job_id":99,"vm":"kiln-2""#,
            )
            + &line("08.000000", r#""event":"job_done","job_id":99,"jit_ms":3"#);
        let ev = job_events(&lines(&log), &JobRef::ScaleSet(key.into()))
            .expect("ok")
            .expect("ended");
        let t = |s: &str| unix_us(&format!("2026-12-03T16:31:{s}Z")).expect("ts");
        assert_eq!(ev.job_id, 99);
        assert_eq!(ev.message_us, Some(t("01.010000")));
        assert_eq!(ev.acked_us, Some(t("01.012000")));
        // A key that only ends like it is another job.
        assert_eq!(
            job_events(&lines(&log), &JobRef::ScaleSet("c-job".into())).expect("ok"),
            None
        );
        // Never acknowledged: an error, not a figure.
        let unacked = log.replace(r#""event":"scale_set_acked""#, r#""event":"other""#);
        let err = job_events(&lines(&unacked), &JobRef::ScaleSet(key.into())).expect_err("no ack");
        assert!(err.to_string().contains("never acknowledged"), "{err}");
    }

    #[test]
    fn a_job_that_ended_without_a_vm_is_an_error() {
        let log = webhook_log(true).replace("vm_starting", "vm_something");
        let err = job_events(&lines(&log), &JobRef::Webhook(7)).expect_err("no VM");
        assert!(err.to_string().contains("without starting a VM"), "{err}");
    }

    #[test]
    fn boot_is_prepared_to_runner_started() {
        use kiln::job::board::Milestone;
        let m = |name: &str, ms: u64| Milestone {
            name: name.into(),
            ms,
        };
        let all = [
            m("prepared", 40),
            m("vmm_started", 52),
            m("guest_hello", 3000),
            m("runner_started", 4040),
        ];
        assert_eq!(boot_ms(&all), Some(4000.0));
        assert_eq!(boot_ms(&all[..3]), None, "no runner yet");
        assert_eq!(boot_ms(&[m("runner_started", 1), m("prepared", 5)]), None);
    }

    #[test]
    fn phases_add_up_to_the_totals() {
        let t = |s: &str| unix_us(&format!("2026-12-03T16:31:{s}Z")).expect("ts");
        let handed = t("01.000000");
        let ev = JobEvents {
            job_id: 1,
            queued_us: t("01.002000"),
            vm_starting_us: t("01.030000"),
            jit_ms: 20.0,
            end: "job_done".into(),
            message_us: Some(t("01.000500")),
            acked_us: Some(t("01.001500")),
        };
        let p = phases(handed, &ev, 4000.0);
        let get = |n: &str| p.iter().find(|(k, _)| *k == n).map(|x| x.1).expect(n);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        assert!(close(get("handed over → recorded"), 0.5));
        assert!(close(get("recorded → acknowledged"), 1.0));
        assert!(close(get("acknowledged → queued"), 0.5));
        assert!(close(get("queued → VM starting"), 28.0));
        assert!(close(get(BEFORE_VM), 30.0));
        assert!(close(get(TOTAL), 4030.0));
        assert!(close(get(JIT), 20.0));
        let before: f64 = p
            .iter()
            .take_while(|(k, _)| *k != "VM starting → runner exec")
            .map(|x| x.1)
            .sum();
        assert!(close(before, get(BEFORE_VM)), "{p:?}");
        let webhook = JobEvents {
            message_us: None,
            acked_us: None,
            ..ev
        };
        let p = phases(handed, &webhook, 4000.0);
        assert_eq!(p[0].0, "handed over → queued");
        assert!(close(p[0].1, 2.0));
        for (name, _) in &p {
            assert!(
                !covers(Source::Webhook, name).is_empty(),
                "{name} says what it covers"
            );
        }
    }

    #[test]
    fn ratios_are_scale_set_over_webhook() {
        let stat = |v: &[f64]| Stat::of(v).expect("stat");
        let path = |before: &[f64], boot: &[f64], total: &[f64]| SourcePath {
            name: "x".into(),
            includes: vec![],
            phases: vec![],
            before_vm: stat(before),
            boot: stat(boot),
            total: stat(total),
        };
        let w = path(&[30.0, 40.0, 50.0], &[4000.0], &[4040.0]);
        let s = path(&[10.0, 20.0, 90.0], &[4000.0], &[4020.0]);
        let r = ratios(&w, &s);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].what, BEFORE_VM);
        assert_eq!((r[0].webhook_ms, r[0].scale_set_ms), (40.0, 20.0));
        assert!((r[0].ratio - 0.5).abs() < 1e-9);
        assert!((r[1].ratio - 1.0).abs() < 1e-9);
    }

    #[test]
    fn kiln_serve_accepts_both_configs_with_the_same_pool() {
        use kiln::config::JobSource;
        let dir = tempfile::tempdir().expect("tempdir");
        let hello = FakeHello {
            url: "http://127.0.0.1:40001".into(),
            app_id: 4242,
            broker_url: "http://127.0.0.1:40002".into(),
        };
        let image = dir.path().join("image");
        webhook::write_private(&dir.path().join("webhook-secret"), b"s3cret").expect("secret");
        webhook::write_private(&dir.path().join("app-key.pem"), b"not checked here").expect("key");
        let facts = kiln::config::HostFacts {
            cpus: 2,
            memory_mib: 24_000,
        };
        let labels: Vec<String> = payload::LABELS.iter().map(|s| s.to_string()).collect();
        let mut pools = Vec::new();
        for source in [Source::Webhook, Source::ScaleSet] {
            let cfg = dir.path().join(format!("{}.toml", source.dir()));
            std::fs::write(&cfg, config_toml(source, 4243, &hello, &image, 1024)).expect("config");
            let c = kiln::config::Config::load_with_host(&cfg, &facts)
                .unwrap_or_else(|e| panic!("{} config: {e}", source.name()));
            assert_eq!(c.webhook_secret.is_some(), source == Source::Webhook);
            assert_eq!(c.github.api_url, "http://127.0.0.1:40001");
            let pool = c
                .pool_for(&labels)
                .expect("a pool for the bench's labels")
                .clone();
            let want = match source {
                Source::Webhook => JobSource::Webhook,
                Source::ScaleSet => JobSource::ScaleSet {
                    name: SCALE_SET.into(),
                },
            };
            assert_eq!(pool.source, want);
            pools.push(pool);
        }
        let same = |p: &kiln::config::Pool| (p.vcpus, p.memory_mib, p.max_vms, p.image.clone());
        assert_eq!(
            same(&pools[0]),
            same(&pools[1]),
            "the same VM on both paths"
        );
        assert_eq!(same(&pools[0]), (VCPUS, 1024, Some(1), image));
    }
}
