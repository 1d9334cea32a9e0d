//! The load generator: HTTP/1.1 keep-alive connections (hyper's client)
//! sending pre-signed deliveries to one server over loopback, either
//! closed-loop (throughput: every connection sends its next request as
//! soon as the last is answered) or open-loop (latency: requests leave on
//! a fixed schedule whatever the server does, and each one's latency runs
//! from its scheduled time, so a stall shows in every request it delays
//! instead of hiding them: no coordinated omission).
//!
//! It runs as its own process (`kiln-bench-http load`, built in release
//! like both servers) so that a debug-built client does not set the pace.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::payload::{self, Delivery};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Closed loop: `requests` over `connections`, as fast as answered.
    Throughput,
    /// Open loop: `requests` at `rate` per second.
    Rate,
}

/// One load run, as `kiln-bench-http load` takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct Spec {
    /// The server, e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub addr: SocketAddr,
    /// The webhook secret (a file: secrets stay out of argv).
    #[arg(long)]
    pub secret_file: PathBuf,
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long)]
    pub requests: usize,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Requests per second (rate mode).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// The first job id; requests use the following ones.
    #[arg(long)]
    pub first_job_id: u64,
    /// Tells this run's delivery ids from other runs'.
    #[arg(long)]
    pub nonce: u64,
    /// The answer body that counts as success (any body when absent).
    #[arg(long)]
    pub expect_body: Option<String>,
}

/// What one load run found: printed as JSON on stdout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub sent: usize,
    /// Answered 202 with the expected body.
    pub ok: usize,
    /// Every other answer, "STATUS BODY" -> count.
    pub unexpected: BTreeMap<String, usize>,
    /// Requests that got no answer (connection errors), with the first error.
    pub failed: usize,
    pub first_error: Option<String>,
    /// First scheduled send (or first send) to the last answer.
    pub seconds: f64,
    /// Latency of each answered request, ms: from its scheduled time in
    /// rate mode, from its send in throughput mode.
    pub latency: Percentiles,
    /// Rate mode: how late the client's scheduler put requests on their
    /// connections (the client's own share of the latency above), ms.
    pub send_lateness: Option<Percentiles>,
    pub body_bytes_mean: f64,
    /// This process's CPU time while the clock ran, seconds.
    pub client_cpu_seconds: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile `p` (0 < p <= 100) of sorted samples.
pub fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Percentiles {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Percentiles> {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Percentiles {
            p50: nearest_rank(&s, 50.0)?,
            p90: nearest_rank(&s, 90.0)?,
            p99: nearest_rank(&s, 99.0)?,
            max: *s.last()?,
        })
    }
}

/// utime + stime of `/proc/<pid>/stat` (`self` for this process), in
/// seconds: the kernel reports them in USER_HZ, 100 on Linux.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

pub(in crate::bench) fn request(
    addr: SocketAddr,
    d: Delivery,
) -> anyhow::Result<Request<Full<Bytes>>> {
    Request::post("/webhook")
        .header("host", addr.to_string())
        .header("user-agent", "GitHub-Hookshot/8e5b1fd")
        .header("accept", "*/*")
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", d.id)
        .header("x-github-hook-id", "480011223")
        .header("x-github-hook-installation-target-type", "integration")
        .header("x-github-hook-installation-target-id", "1001")
        .header("x-hub-signature-256", d.signature)
        .body(Full::new(d.body))
        .context("building a request")
}

pub(in crate::bench) async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    Ok(send)
}

/// What one answer was: `Ok(None)` as expected, `Ok(Some(key))` another
/// answer, `Err` no answer.
pub(in crate::bench) async fn send(
    conn: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    expect: Option<&str>,
) -> anyhow::Result<Option<String>> {
    conn.ready().await.context("connection")?;
    let resp = conn.send_request(req).await.context("request")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("answer body")?
        .to_bytes();
    let matches = expect.is_none_or(|e| body.as_ref() == e.as_bytes());
    if status == hyper::StatusCode::ACCEPTED && matches {
        Ok(None)
    } else {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(60).collect();
        Ok(Some(format!("{} {text}", status.as_u16())))
    }
}

#[derive(Default)]
struct Tally {
    ok: usize,
    unexpected: BTreeMap<String, usize>,
    failed: usize,
    first_error: Option<String>,
    latency_ms: Vec<f64>,
    lateness_ms: Vec<f64>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn record(&mut self, r: anyhow::Result<Option<String>>, from: Instant) {
        let now = Instant::now();
        match r {
            Ok(None) => self.ok += 1,
            Ok(Some(k)) => *self.unexpected.entry(k).or_default() += 1,
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
                return;
            }
        }
        self.latency_ms
            .push(now.duration_since(from).as_secs_f64() * 1000.0);
        self.last_answer = Some(self.last_answer.map_or(now, |l| l.max(now)));
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `spec`. Call on a current-thread runtime: the client then uses
/// one core at most, and the server keeps the rest.
pub async fn run(spec: &Spec) -> anyhow::Result<Report> {
    if spec.requests == 0 || spec.connections == 0 {
        bail!("--requests and --connections must be at least 1");
    }
    let secret = std::fs::read_to_string(&spec.secret_file)
        .with_context(|| format!("reading {}", spec.secret_file.display()))?;
    let secret = kiln::secret::Secret::new(secret.trim_end_matches('\n'));
    let list = payload::deliveries(&secret, spec.nonce, 0, spec.first_job_id, spec.requests);
    let body_bytes_mean =
        list.iter().map(|d| d.body.len()).sum::<usize>() as f64 / list.len() as f64;
    let requests = list
        .into_iter()
        .map(|d| request(spec.addr, d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut conns = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        conns.push(connect(spec.addr).await?);
    }
    let tally: Shared<Tally> = Arc::default();
    let cpu0 = cpu_seconds("self").unwrap_or(0.0);
    let start = Instant::now();
    match spec.mode {
        Mode::Throughput => closed_loop(spec, requests, conns, &tally).await,
        Mode::Rate => open_loop(spec, requests, conns, &tally, start).await?,
    }
    let cpu = cpu_seconds("self").unwrap_or(0.0) - cpu0;
    let t = std::mem::take(&mut *lock(&tally));
    let end = t.last_answer.unwrap_or_else(Instant::now);
    Ok(Report {
        sent: spec.requests,
        ok: t.ok,
        unexpected: t.unexpected,
        failed: t.failed,
        first_error: t.first_error,
        seconds: end.duration_since(start).as_secs_f64(),
        latency: Percentiles::of(&t.latency_ms).unwrap_or_default(),
        send_lateness: Percentiles::of(&t.lateness_ms),
        body_bytes_mean,
        client_cpu_seconds: cpu,
    })
}

async fn closed_loop(
    spec: &Spec,
    requests: Vec<Request<Full<Bytes>>>,
    conns: Vec<SendRequest<Full<Bytes>>>,
    tally: &Shared<Tally>,
) {
    let queue: Shared<VecDeque<_>> = Arc::new(Mutex::new(requests.into()));
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (queue, tally, expect) = (queue.clone(), tally.clone(), spec.expect_body.clone());
        let addr = spec.addr;
        tasks.spawn(async move {
            loop {
                let Some(req) = lock(&queue).pop_front() else {
                    return;
                };
                let sent = Instant::now();
                let r = send(&mut conn, req, expect.as_deref()).await;
                let broken = r.is_err();
                lock(&tally).record(r, sent);
                if broken {
                    match connect(addr).await {
                        Ok(c) => conn = c,
                        Err(_) => return,
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Requests left when every connection gave up got no answer.
    let left = lock(&queue).len();
    lock(tally).failed += left;
}

async fn open_loop(
    spec: &Spec,
    requests: Vec<Request<Full<Bytes>>>,
    conns: Vec<SendRequest<Full<Bytes>>>,
    tally: &Shared<Tally>,
    start: Instant,
) -> anyhow::Result<()> {
    if spec.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let period = Duration::from_secs(1) / spec.rate;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Request<Full<Bytes>>)>();
    // The schedule is kept by a thread of its own: Tokio's timers tick in
    // whole milliseconds, which at 1000 requests/s would add up to a
    // millisecond to every request; a thread's sleep wakes within tens of
    // microseconds.
    let pacer = std::thread::spawn(move || {
        for (i, req) in requests.into_iter().enumerate() {
            let at = start + period * i as u32;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((at, req)).is_err() {
                return;
            }
        }
    });
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (rx, tally, expect) = (rx.clone(), tally.clone(), spec.expect_body.clone());
        let addr = spec.addr;
        tasks.spawn(async move {
            loop {
                let Some((at, req)) = rx.lock().await.recv().await else {
                    return;
                };
                let late = Instant::now().saturating_duration_since(at);
                lock(&tally).lateness_ms.push(late.as_secs_f64() * 1000.0);
                let r = send(&mut conn, req, expect.as_deref()).await;
                let broken = r.is_err();
                lock(&tally).record(r, at);
                if broken {
                    match connect(addr).await {
                        Ok(c) => conn = c,
                        Err(_) => return,
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    // Whatever the connections never took got no answer.
    let mut left = 0;
    while rx.lock().await.try_recv().is_ok() {
        left += 1;
    }
    lock(tally).failed += left;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&s, 50.0), Some(50.0));
        assert_eq!(nearest_rank(&s, 99.0), Some(99.0));
        assert_eq!(nearest_rank(&s, 100.0), Some(100.0));
        assert_eq!(nearest_rank(&s, 0.1), Some(1.0));
        assert_eq!(nearest_rank(&[], 50.0), None);
        assert_eq!(nearest_rank(&s, 0.0), None);
        assert_eq!(nearest_rank(&s, 101.0), None);
        // Ten samples: p99 is the largest, p90 the ninth.
        let t: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&t, 90.0), Some(9.0));
        assert_eq!(nearest_rank(&t, 99.0), Some(10.0));
    }

    #[test]
    fn percentiles_sort_their_samples() {
        let p = Percentiles::of(&[5.0, 0.2, 9.0, 0.3, 0.1]).expect("samples");
        assert_eq!((p.p50, p.p90, p.p99, p.max), (0.3, 9.0, 9.0, 9.0));
        assert!(Percentiles::of(&[]).is_none());
    }

    #[test]
    fn own_cpu_time_reads() {
        let s = cpu_seconds("self").expect("/proc/self/stat");
        assert!(s >= 0.0);
        assert!(cpu_seconds("999999999").is_none());
    }

    #[test]
    fn tally_counts_answers_and_failures_apart() {
        let mut t = Tally::default();
        let at = Instant::now();
        t.record(Ok(None), at);
        t.record(Ok(Some("503 queue full".into())), at);
        t.record(Ok(Some("503 queue full".into())), at);
        t.record(Err(anyhow::anyhow!("reset")), at);
        assert_eq!(t.ok, 1);
        assert_eq!(t.unexpected.get("503 queue full"), Some(&2));
        assert_eq!(t.failed, 1);
        assert_eq!(t.first_error.as_deref(), Some("reset"));
        // Failures have no latency.
        assert_eq!(t.latency_ms.len(), 3);
    }
}
