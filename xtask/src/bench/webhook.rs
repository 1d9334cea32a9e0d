//! Benchmark 3, webhook ingestion: signed `workflow_job` deliveries
//! against the real `kiln serve` (release build, one pool with
//! `max_vms = 0`, so every job is queued and none starts a VM), beside the
//! ceiling (a minimal axum server that only answers 202), over loopback.
//! Both servers and the load generator are release builds
//! (`kiln-bench-http`, xtask/src/bin/), each its own process.
//!
//! - [`payload`] — the deliveries: body, ids, signature.
//! - [`load`] — the load generator (closed loop and open loop).
//! - [`ceiling`] — the ceiling server.
//!
//! Every delivery sent to `kiln serve` must come back 202 `queued`, and its
//! log and shutdown summary must count the same jobs: the figures are of
//! real enqueues, not of refusals.

pub mod ceiling;
pub mod load;
pub mod payload;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::memory::rss_kib;
use super::results::{ServeMemory, Target, WebhookCheck, WebhookResults, WebhookSide};
use super::stats::Stat;
use load::{Mode, Report};

/// The answer body of a delivery `kiln serve` queued.
pub const QUEUED: &str = "queued";
/// The issue's targets.
pub const TARGET_RATIO: f64 = 2.0;
pub const TARGET_P99_MS: f64 = 5.0;

/// How much load, per run and side.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub runs: usize,
    /// Closed-loop requests per run.
    pub requests: usize,
    pub connections: usize,
    /// Open-loop rate and duration.
    pub rate: u32,
    pub rate_seconds: u32,
    /// Closed-loop requests per side before the measured runs.
    pub warmup: usize,
}

/// The release binaries: `kiln` and `kiln-bench-http`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub kiln: PathBuf,
    pub http: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Kiln,
    Ceiling,
}

/// A server process the bench started (`kiln serve`, the ceiling).
pub(super) struct Server {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) addr: SocketAddr,
    pub(super) log: PathBuf,
}

/// A port nothing listens on now (the kernel's pick; it stays free for
/// the moment until the server binds it).
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

pub(super) fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

pub(super) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut buf).context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The GitHub App key `kiln serve` wants at start-up: a fresh RSA key,
/// PKCS#1 PEM like GitHub's, made for this run only.
fn app_key(path: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(path)
        .arg("2048")
        .stdout(Stdio::null())
        .output()
        .context("running openssl genrsa (install openssl: apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl genrsa failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

/// `kiln serve`'s config: one pool for the bench's labels that may never
/// start a VM, and a queue long enough for every delivery of the run.
pub fn config_toml(port: u16, max_queued: usize) -> String {
    let labels: Vec<String> = payload::LABELS.iter().map(|l| format!("{l:?}")).collect();
    format!(
        r#"# Written by `cargo xtask bench` (webhook ingestion); deleted after.
listen = "127.0.0.1:{port}"
webhook_secret_file = "webhook-secret"
max_queued = {max_queued}
# No VM starts; QEMU needs nothing at start, Firecracker would.
backend = "qemu"
# The bench counts its events (kiln::logs::events).
log_format = "json"

# The metrics listener is not needed here (and 9464 may be taken).
[admin]
listen = "off"

[github]
# Never called: no job starts.
api_url = "http://127.0.0.1:9"
app_id = 1
private_key_file = "app-key.pem"
org = "kiln-bench"

[host]
vcpus = 2
memory_mib = 4096

[[pool]]
name = "bench"
labels = [{}]
vcpus = 2
memory_mib = 2048
max_vms = 0
"#,
        labels.join(", ")
    )
}

/// `GET /healthz` answers 200.
async fn healthy(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<bool, std::io::Error>(answer.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

pub(super) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Spawns `cmd` (a server: killed when its `Child` is dropped) with its
/// stderr in `log`; returns it and its pid.
pub(super) fn spawn_logged(
    mut cmd: Command,
    log: &Path,
    what: &str,
) -> anyhow::Result<(Child, u32)> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child
        .id()
        .with_context(|| format!("{what} exited at once"))?;
    Ok((child, pid))
}

pub(super) async fn start(
    cmd: Command,
    addr: SocketAddr,
    log: PathBuf,
    what: &str,
) -> anyhow::Result<Server> {
    let (mut child, pid) = spawn_logged(cmd, &log, what)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited with {status} before answering: {}",
                log_tail(&log)
            );
        }
        if healthy(addr).await {
            return Ok(Server {
                child,
                pid,
                addr,
                log,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not answer GET /healthz on {addr} within 30 s: {}",
                log_tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks `server` to stop with SIGTERM and waits for it (then kills it).
pub(super) async fn stop(server: &mut Server, what: &str) -> anyhow::Result<()> {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.pid.to_string()])
        .status();
    match tokio::time::timeout(Duration::from_secs(30), server.child.wait()).await {
        Ok(status) => {
            status.with_context(|| format!("waiting for {what}"))?;
            Ok(())
        }
        Err(_) => {
            let _ = server.child.kill().await;
            bail!("{what} did not stop within 30 s of SIGTERM")
        }
    }
}

/// The `job_queued` events and the shutdown summary's (`serve_draining`)
/// `dropped_from_queue` in `kiln serve`'s JSON log; a line that is not
/// JSON is an error.
pub fn parse_serve_log(text: &str) -> anyhow::Result<(usize, Option<usize>)> {
    use kiln::logs::events;
    let lines = kiln::logs::read::lines(text)?;
    let queued = lines.iter().filter(|l| l.is(events::JOB_QUEUED)).count();
    let dropped = lines
        .iter()
        .rev()
        .find(|l| l.is(events::SERVE_DRAINING))
        .and_then(|l| l.u64("dropped_from_queue"))
        .and_then(|n| usize::try_from(n).ok());
    Ok((queued, dropped))
}

struct Runner<'a> {
    http: &'a Path,
    secret_file: PathBuf,
    settings: Settings,
    next_job_id: u64,
    nonce: u64,
}

impl Runner<'_> {
    async fn load(
        &mut self,
        server: &Server,
        side: Side,
        mode: Mode,
        requests: usize,
    ) -> anyhow::Result<(Report, f64)> {
        let first = self.next_job_id;
        self.next_job_id += requests as u64;
        self.nonce += 1;
        let mut cmd = Command::new(self.http);
        cmd.arg("load")
            .arg("--addr")
            .arg(server.addr.to_string())
            .arg("--secret-file")
            .arg(&self.secret_file)
            .args([
                "--mode",
                match mode {
                    Mode::Throughput => "throughput",
                    Mode::Rate => "rate",
                },
            ])
            .args(["--requests", &requests.to_string()])
            .args(["--connections", &self.settings.connections.to_string()])
            .args(["--rate", &self.settings.rate.to_string()])
            .args(["--first-job-id", &first.to_string()])
            .args(["--nonce", &self.nonce.to_string()]);
        if side == Side::Kiln {
            cmd.args(["--expect-body", QUEUED]);
        }
        let pid = server.pid.to_string();
        let cpu0 = load::cpu_seconds(&pid).context("reading the server's CPU time")?;
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .context("running the load generator")?;
        let cpu = load::cpu_seconds(&pid).context("reading the server's CPU time")? - cpu0;
        if !out.status.success() {
            bail!(
                "the load generator failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let report: Report =
            serde_json::from_slice(&out.stdout).context("parsing the load generator's report")?;
        Ok((report, cpu))
    }
}

#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    client_pct: Vec<f64>,
    p50: Vec<f64>,
    p90: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    achieved: Vec<f64>,
    lateness: Vec<f64>,
}

impl Samples {
    fn side(&self, name: &str, includes: Vec<String>) -> anyhow::Result<WebhookSide> {
        let s = |v: &[f64]| Stat::of(v).context("no webhook figures");
        Ok(WebhookSide {
            name: name.into(),
            includes,
            throughput_rps: s(&self.rps)?,
            cpu_us_per_request: s(&self.cpu_us)?,
            client_cpu_pct: s(&self.client_pct)?,
            p50_ms: s(&self.p50)?,
            p90_ms: s(&self.p90)?,
            p99_ms: s(&self.p99)?,
            max_ms: s(&self.max)?,
            achieved_rps: s(&self.achieved)?,
            send_lateness_p99_ms: s(&self.lateness)?,
        })
    }
}

/// Totals of what `kiln serve` answered.
#[derive(Default)]
struct Answers {
    sent: usize,
    ok: usize,
    other: BTreeMap<String, usize>,
    failed: usize,
}

impl Answers {
    fn add(&mut self, r: &Report) {
        self.sent += r.sent;
        self.ok += r.ok;
        self.failed += r.failed;
        for (k, n) in &r.unexpected {
            *self.other.entry(k.clone()).or_default() += n;
        }
    }
}

fn incident(what: &str, r: &Report) -> Option<String> {
    if r.unexpected.is_empty() && r.failed == 0 {
        return None;
    }
    let other: Vec<String> = r
        .unexpected
        .iter()
        .map(|(k, n)| format!("{n}x {k}"))
        .collect();
    Some(format!(
        "{what}: {} of {} as expected; other answers: {}; no answer: {}{}",
        r.ok,
        r.sent,
        if other.is_empty() {
            "none".into()
        } else {
            other.join(", ")
        },
        r.failed,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    ))
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Kiln => "kiln serve",
        Side::Ceiling => "ceiling",
    }
}

pub async fn run(
    bins: &Binaries,
    work: &Path,
    settings: Settings,
) -> anyhow::Result<WebhookResults> {
    if settings.runs == 0
        || settings.requests == 0
        || settings.rate == 0
        || settings.rate_seconds == 0
    {
        bail!("webhook: runs, requests, rate and seconds must be at least 1");
    }
    let dir = work.join("webhook");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let secret_file = dir.join("webhook-secret");
    write_private(&secret_file, random_hex(32)?.as_bytes())?;
    app_key(&dir.join("app-key.pem"))?;
    let rate_requests = settings.rate as usize * settings.rate_seconds as usize;
    let kiln_total = settings.warmup + settings.runs * (settings.requests + rate_requests);
    let config = dir.join("config.toml");
    let kiln_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let ceiling_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // Room for every delivery and more: a 503 "queue full" would be a
    // refusal, not an enqueue.
    std::fs::write(
        &config,
        config_toml(kiln_addr.port(), 2 * kiln_total + 1000),
    )
    .with_context(|| format!("writing {}", config.display()))?;

    eprintln!("webhook: starting kiln serve on {kiln_addr} and the ceiling on {ceiling_addr}");
    let mut cmd = Command::new(&bins.kiln);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("KILN_LOG");
    let mut kiln = start(cmd, kiln_addr, dir.join("kiln-serve.log"), "kiln serve").await?;
    let mut cmd = Command::new(&bins.http);
    cmd.arg("ceiling")
        .arg("--listen")
        .arg(ceiling_addr.to_string());
    let mut ceiling = start(cmd, ceiling_addr, dir.join("ceiling.log"), "the ceiling").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(kiln.pid).context("reading kiln serve's RSS")? as f64;
    let ceiling_rss = rss_kib(ceiling.pid).context("reading the ceiling's RSS")? as f64;

    let mut runner = Runner {
        http: &bins.http,
        secret_file: secret_file.clone(),
        settings,
        next_job_id: 1_000_000,
        nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            << 20,
    };
    let mut answers = Answers::default();
    let mut incidents = Vec::new();
    let mut body_bytes = 0.0;
    if settings.warmup > 0 {
        for side in [Side::Kiln, Side::Ceiling] {
            let server = if side == Side::Kiln { &kiln } else { &ceiling };
            let (r, _) = runner
                .load(server, side, Mode::Throughput, settings.warmup)
                .await?;
            eprintln!(
                "webhook: warm-up {}: {:.0} req/s (not reported)",
                side_name(side),
                r.ok as f64 / r.seconds
            );
            if side == Side::Kiln {
                answers.add(&r);
            }
            incidents.extend(incident(&format!("warm-up, {}", side_name(side)), &r));
        }
    }
    let (mut k, mut c) = (Samples::default(), Samples::default());
    for run in 1..=settings.runs {
        // Alternate which side goes first, so neither always follows the other.
        let order = if run % 2 == 1 {
            [Side::Kiln, Side::Ceiling]
        } else {
            [Side::Ceiling, Side::Kiln]
        };
        for mode in [Mode::Throughput, Mode::Rate] {
            for side in order {
                let (server, samples) = match side {
                    Side::Kiln => (&kiln, &mut k),
                    Side::Ceiling => (&ceiling, &mut c),
                };
                let n = if mode == Mode::Throughput {
                    settings.requests
                } else {
                    rate_requests
                };
                let (r, cpu) = runner.load(server, side, mode, n).await?;
                if side == Side::Kiln {
                    answers.add(&r);
                }
                body_bytes = r.body_bytes_mean;
                let what = format!("run {run}, {mode:?}, {}", side_name(side));
                incidents.extend(incident(&what, &r));
                let per_s = r.ok as f64 / r.seconds;
                match mode {
                    Mode::Throughput => {
                        samples.rps.push(per_s);
                        samples.cpu_us.push(cpu * 1e6 / r.sent as f64);
                        samples
                            .client_pct
                            .push(100.0 * r.client_cpu_seconds / r.seconds);
                        eprintln!(
                            "webhook {run}/{}: {} {:.0} req/s ({} connections), server CPU {:.0} µs/request",
                            settings.runs, side_name(side), per_s, settings.connections, cpu * 1e6 / r.sent as f64
                        );
                    }
                    Mode::Rate => {
                        samples.p50.push(r.latency.p50);
                        samples.p90.push(r.latency.p90);
                        samples.p99.push(r.latency.p99);
                        samples.max.push(r.latency.max);
                        samples.achieved.push(per_s);
                        samples
                            .lateness
                            .push(r.send_lateness.map_or(0.0, |l| l.p99));
                        eprintln!(
                            "webhook {run}/{}: {} at {}/s: p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} ms",
                            settings.runs, side_name(side), settings.rate, r.latency.p50, r.latency.p90, r.latency.p99, r.latency.max
                        );
                    }
                }
            }
        }
    }
    let queued_rss = rss_kib(kiln.pid).context("reading kiln serve's RSS")? as f64;
    stop(&mut kiln, "kiln serve").await?;
    stop(&mut ceiling, "the ceiling").await?;
    let log = std::fs::read_to_string(&kiln.log)
        .with_context(|| format!("reading {}", kiln.log.display()))?;
    let (log_queued, dropped) =
        parse_serve_log(&log).with_context(|| format!("reading {}", kiln.log.display()))?;
    let verified = answers.ok == answers.sent
        && answers.failed == 0
        && answers.other.is_empty()
        && log_queued == answers.sent
        && dropped == Some(answers.sent);
    let check = WebhookCheck {
        sent: answers.sent,
        queued_answers: answers.ok,
        other_answers: answers.other,
        failed: answers.failed,
        log_job_queued: Some(log_queued),
        dropped_at_shutdown: dropped,
        verified,
    };
    eprintln!(
        "webhook: kiln serve got {} deliveries: {} answered `queued`, {} `job_queued` log events, {:?} dropped from its queue at shutdown: {}",
        check.sent, check.queued_answers, log_queued, dropped,
        if verified { "verified" } else { "NOT VERIFIED" }
    );
    // The log and config stay for reading; the secrets go.
    for f in [&secret_file, &dir.join("app-key.pem")] {
        std::fs::remove_file(f).with_context(|| format!("removing {}", f.display()))?;
    }

    let kiln_side = k.side("kiln serve", vec![
        "headers checked, body read (at most 32 at once), HMAC-SHA256 over the raw body, the JSON parsed for the fields the scheduler reads (sonic-rs)".into(),
        "de-duplication on the delivery id and (job id, action), the pool matched by labels".into(),
        "the job queued in the scheduler, answered 202 `queued`; one `job_queued` JSON log line (info, the default) to a file".into(),
    ])?;
    let ceiling_side = c.side(
        "ceiling",
        vec![
            "the same HTTP stack (axum 0.8, hyper, Tokio's multi-threaded runtime, `axum::serve`)"
                .into(),
            "reads the body, answers 202 with no body: no signature, no parsing, no queue, no log"
                .into(),
        ],
    )?;
    let ratio = ceiling_side.throughput_rps.median / kiln_side.throughput_rps.median;
    let p99 = &kiln_side.p99_ms;
    let targets = vec![
        Target {
            what: "kiln serve's throughput against the ceiling's".into(),
            goal: format!("within {TARGET_RATIO:.0}x"),
            measured: format!(
                "{:.2}x ({:.0} vs {:.0} requests/s, medians, {} connections)",
                ratio,
                kiln_side.throughput_rps.median,
                ceiling_side.throughput_rps.median,
                settings.connections
            ),
            verdict: if !verified {
                "not measurable here".into()
            } else if ratio <= TARGET_RATIO {
                "met".into()
            } else {
                "not met".into()
            },
            note: "loopback, host, no VM; the load generator shares the 2 CPUs with the server"
                .into(),
        },
        Target {
            what: format!("kiln serve's p99 at {} requests/s", settings.rate),
            goal: format!("under {TARGET_P99_MS:.0} ms"),
            measured: format!(
                "{:.2} ms median of {} runs (max {:.2} ms)",
                p99.median, p99.n, p99.max
            ),
            verdict: if !verified {
                "not measurable here".into()
            } else if p99.median < TARGET_P99_MS {
                "met".into()
            } else {
                "not met".into()
            },
            note: "judged on the median run; latency from each request's scheduled send time"
                .into(),
        },
    ];
    let queued = answers.ok;
    Ok(WebhookResults {
        kiln: kiln_side,
        ceiling: ceiling_side,
        connections: settings.connections,
        requests_per_run: settings.requests,
        warmup_requests: settings.warmup,
        rate_per_s: settings.rate,
        rate_requests,
        body_bytes,
        setup: vec![
            "`kiln serve --config` with one pool for the deliveries' labels and `max_vms = 0`: every job is queued, none starts a VM".into(),
            "the webhook secret and a fresh 2048-bit RSA App key (`openssl genrsa`) in 0600 files, deleted after".into(),
            format!("`max_queued = {}`: room for every delivery of the run", 2 * kiln_total + 1000),
            "logs at the default level (info) to a file".into(),
        ],
        targets,
        check,
        memory: ServeMemory {
            idle_rss_kib: idle_rss,
            queued_rss_kib: queued_rss,
            queued_jobs: queued,
            per_queued_job_bytes: if queued > 0 { (queued_rss - idle_rss) * 1024.0 / queued as f64 } else { 0.0 },
            ceiling_idle_rss_kib: ceiling_rss,
        },
        incidents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_log_counts_enqueues_and_the_shutdown_summary() {
        let log = r#"{"level":"INFO","event":"serve_listening","message":"kiln serve: listening"}
{"level":"INFO","event":"job_queued","delivery":"a","job_id":1,"queued":1,"message":"job queued"}
{"level":"INFO","event":"job_queued","delivery":"b","job_id":2,"queued":2,"message":"job queued"}
{"level":"INFO","message":"no pool serves these labels: job ignored","job_id":3}
{"level":"INFO","event":"serve_draining","dropped_from_queue":2,"running":0}
"#;
        assert_eq!(parse_serve_log(log).unwrap(), (2, Some(2)));
        assert_eq!(parse_serve_log("").unwrap(), (0, None));
        let text = "2026-11-22T05:00:01Z  INFO kiln::scheduler::running: job queued job_id=1\n";
        assert!(
            parse_serve_log(text).is_err(),
            "a text line is refused, not skipped"
        );
    }

    #[test]
    fn config_is_one_pool_that_never_starts_a_vm() {
        let t = config_toml(4242, 50_000);
        assert!(t.contains("listen = \"127.0.0.1:4242\""), "{t}");
        assert!(t.contains("max_queued = 50000"), "{t}");
        assert!(t.contains("max_vms = 0"), "{t}");
        assert!(
            t.contains(r#"labels = ["self-hosted", "linux", "x64", "kiln-bench"]"#),
            "{t}"
        );
    }

    #[test]
    fn kiln_serve_accepts_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, config_toml(4242, 10)).expect("config");
        write_private(&dir.path().join("webhook-secret"), b"s3cret").expect("secret");
        write_private(
            &dir.path().join("app-key.pem"),
            b"not checked by the config",
        )
        .expect("key");
        let facts = kiln::config::HostFacts {
            cpus: 2,
            memory_mib: 8192,
        };
        let c = kiln::config::Config::load_with_host(&cfg, &facts).expect("valid config");
        let labels: Vec<String> = payload::LABELS.iter().map(|s| s.to_string()).collect();
        let pool = c.pool_for(&labels).expect("a pool serves the payloads");
        assert_eq!(pool.max_vms, Some(0));
        assert_eq!(c.max_queued, 10);
        assert_eq!(c.listen.port(), 4242);
    }
}
