//! `kiln serve`'s webhook server, end to end over HTTP on 127.0.0.1: real
//! config files, the real router and scheduler, and a test dispatcher that
//! records each job and holds it until the test lets it finish.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use kiln::config::{Config, HostFacts};
use kiln::github::webhook::sign;
use kiln::scheduler::{Dispatch, QueuedJob, Snapshot};
use kiln::secret::Secret;
use kiln::serve::{BodyLimits, HttpLimits, Server, ServerLimits};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};

const SECRET: &str = "test-webhook-secret";
const INSTALLATION: u64 = 4242;

/// Host: 4 vCPUs. `small` (2 vCPUs) fits twice, `big` (4) once.
const POOLS: &str = r#"
[host]
vcpus = 4
memory_mib = 16384

[[pool]]
name = "small"
labels = ["self-hosted", "linux", "kiln-small"]
vcpus = 2
memory_mib = 2048

[[pool]]
name = "big"
labels = ["self-hosted", "linux", "kiln-big"]
vcpus = 4
memory_mib = 4096
"#;

/// Sends each job it gets to the test, then holds it until a permit is added.
struct Recorder {
    jobs: mpsc::UnboundedSender<QueuedJob>,
    permits: Arc<Semaphore>,
}

impl Dispatch for Recorder {
    async fn dispatch(&self, job: QueuedJob) {
        let _ = self.jobs.send(job);
        if let Ok(p) = self.permits.acquire().await {
            p.forget();
        }
    }
}

struct Kiln {
    addr: SocketAddr,
    server: Arc<Server<Recorder>>,
    jobs: mpsc::UnboundedReceiver<QueuedJob>,
    permits: Arc<Semaphore>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

fn write_secret(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Starts the server with `extra` top-level keys and [`POOLS`] (or `pools`).
async fn start_with(extra: &str, pools: &str) -> Kiln {
    start_limited(extra, pools, ServerLimits::default()).await
}

async fn start_limited(extra: &str, pools: &str, limits: ServerLimits) -> Kiln {
    let dir = tempfile::tempdir().expect("tempdir");
    write_secret(&dir.path().join("webhook-secret"), &format!("{SECRET}\n"));
    write_secret(&dir.path().join("key.pem"), "not parsed by the server\n");
    let text = format!(
        "{extra}\nlisten = \"127.0.0.1:0\"\nwebhook_secret_file = \"webhook-secret\"\n\
         [github]\napp_id = 1\nprivate_key_file = \"key.pem\"\norg = \"acme\"\n{pools}"
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let facts = HostFacts {
        cpus: 64,
        memory_mib: 1 << 20,
    };
    let config = Config::load_with_host(&path, &facts).expect("valid config");

    let (tx, jobs) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let recorder = Recorder {
        jobs: tx,
        permits: Arc::clone(&permits),
    };
    let server = Arc::new(Server::with_limits(&config, recorder, limits));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = Arc::clone(&server);
    let served = tokio::spawn(async move {
        serving
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    Kiln {
        addr,
        server,
        jobs,
        permits,
        stop: Some(stop),
        served,
        _dir: dir,
    }
}

async fn start() -> Kiln {
    start_with("", POOLS).await
}

fn workflow_job(action: &str, id: u64, labels: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "workflow_job": {
            "id": id, "run_id": id * 10, "run_attempt": 1, "labels": labels,
            "status": action, "runner_name": null, "steps": [],
        },
        "repository": {"full_name": "acme/widgets", "private": true},
        "organization": {"login": "acme"},
        "installation": {"id": INSTALLATION},
        "sender": {"login": "octocat"},
    }))
    .expect("json")
}

struct Delivery<'a> {
    event: Option<&'a str>,
    id: String,
    /// `None`: no signature header; `Some(s)`: this header value.
    signature: Option<String>,
    body: Vec<u8>,
}

impl<'a> Delivery<'a> {
    fn signed(event: &'a str, id: &str, body: Vec<u8>) -> Self {
        Self {
            event: Some(event),
            id: id.into(),
            signature: Some(sign(&Secret::new(SECRET), &body)),
            body,
        }
    }

    fn job(id: &str, action: &str, job_id: u64, labels: &[&str]) -> Self {
        Self::signed("workflow_job", id, workflow_job(action, job_id, labels))
    }
}

const SMALL: &[&str] = &["self-hosted", "linux", "kiln-small"];

impl Kiln {
    async fn request(&self, req: Request<Full<Bytes>>) -> (StatusCode, String) {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let resp = send.send_request(req).await.expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn send(&self, d: Delivery<'_>) -> (StatusCode, String) {
        let mut req = Request::post("/webhook")
            .header("host", "kiln.test")
            .header("content-type", "application/json")
            .header("x-github-delivery", &d.id);
        if let Some(event) = d.event {
            req = req.header("x-github-event", event);
        }
        if let Some(sig) = &d.signature {
            req = req.header("x-hub-signature-256", sig);
        }
        self.request(req.body(Full::new(Bytes::from(d.body))).expect("request"))
            .await
    }

    /// Writes `head` and then `body` (from a task: the server may answer
    /// before it has read everything) and returns the answer's status line.
    async fn raw(&self, head: String, body: Vec<u8>) -> String {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&body).await;
            // Keep the connection open (a stalled upload) until the answer.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            assert!(n > 0, "connection closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
        writer.abort();
        let text = String::from_utf8_lossy(&got).into_owned();
        text.lines().next().unwrap_or_default().to_string()
    }

    fn snapshot(&self) -> Snapshot {
        self.server.scheduler().snapshot()
    }

    async fn next_job(&mut self) -> QueuedJob {
        tokio::time::timeout(Duration::from_secs(5), self.jobs.recv())
            .await
            .expect("a job is dispatched within 5 s")
            .expect("recorder alive")
    }

    async fn no_job(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(200), self.jobs.recv()).await;
        assert!(
            r.is_err(),
            "nothing may be dispatched, got {:?}",
            r.ok().flatten().map(|j| j.job_id)
        );
    }

    async fn until(&self, what: &str, f: impl Fn(&Snapshot) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.snapshot();
            if f(&s) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.served)
            .await
            .expect("server stops within 5 s")
            .expect("server task")
            .expect("server ran cleanly");
    }
}

#[tokio::test]
async fn a_signed_queued_job_is_accepted_and_dispatched_to_its_pool() {
    let mut k = start().await;
    let (status, text) = k.send(Delivery::job("d-1", "queued", 7, SMALL)).await;
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, "queued"));
    let job = k.next_job().await;
    assert_eq!(job.pool.name, "small");
    assert_eq!(
        (job.job_id, job.run_id, job.installation_id),
        (7, 70, INSTALLATION)
    );
    assert_eq!(job.repository, "acme/widgets");
    assert_eq!(&*job.delivery, "d-1");
    assert_eq!(job.labels, SMALL);

    let (status, _) = k
        .send(Delivery::job(
            "d-2",
            "queued",
            8,
            &["Self-Hosted", "kiln-BIG"],
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    k.permits.add_permits(1);
    let job = k.next_job().await;
    assert_eq!((job.job_id, job.pool.name.as_str()), (8, "big"));
    k.stop().await;
}

#[tokio::test]
async fn forged_or_missing_signatures_are_refused_and_queue_nothing() {
    let mut k = start().await;
    let mut forged = Delivery::job("d-1", "queued", 7, SMALL);
    forged.signature = Some(sign(&Secret::new("not-the-secret"), &forged.body));
    assert_eq!(k.send(forged).await.0, StatusCode::UNAUTHORIZED);

    let mut tampered = Delivery::job("d-2", "queued", 7, SMALL);
    tampered.body = workflow_job("queued", 9, SMALL);
    assert_eq!(k.send(tampered).await.0, StatusCode::UNAUTHORIZED);

    let mut missing = Delivery::job("d-3", "queued", 7, SMALL);
    missing.signature = None;
    let (status, text) = k.send(missing).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!text.contains(SECRET));

    let mut garbage = Delivery::job("d-4", "queued", 7, SMALL);
    garbage.signature = Some("sha256=nothex".into());
    assert_eq!(k.send(garbage).await.0, StatusCode::UNAUTHORIZED);

    k.no_job().await;
    let s = k.snapshot();
    assert_eq!((s.queued, s.running, s.started), (0, 0, 0));

    // The refused delivery ids were not recorded: the genuine one goes through.
    let (status, text) = k.send(Delivery::job("d-1", "queued", 7, SMALL)).await;
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, "queued"));
    assert_eq!(k.next_job().await.job_id, 7);
    k.stop().await;
}

#[tokio::test]
async fn duplicates_are_dispatched_once() {
    let mut k = start().await;
    k.permits.add_permits(100);
    assert_eq!(
        k.send(Delivery::job("d-1", "queued", 7, SMALL)).await.1,
        "queued"
    );
    let (status, text) = k.send(Delivery::job("d-1", "queued", 7, SMALL)).await;
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, "duplicate"));
    // Another delivery of the same job and action.
    let (status, text) = k.send(Delivery::job("d-2", "queued", 7, SMALL)).await;
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, "duplicate"));
    assert_eq!(k.next_job().await.job_id, 7);
    k.no_job().await;
    assert_eq!(k.snapshot().started, 1);
    k.stop().await;
}

#[tokio::test]
async fn unmatched_labels_are_ignored() {
    let mut k = start().await;
    for (job_id, labels) in [
        (1, &["ubuntu-latest"][..]),
        (2, &["self-hosted", "linux", "gpu"][..]),
        (3, &[][..]),
    ] {
        let d = Delivery::job(&format!("d-{job_id}"), "queued", job_id, labels);
        let (status, text) = k.send(d).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{labels:?}");
        assert!(text.contains("no pool"), "{text}");
    }
    k.no_job().await;
    assert_eq!(k.snapshot().queued, 0);
    k.stop().await;
}

#[tokio::test]
async fn a_full_host_queues_and_dispatches_when_a_job_finishes() {
    let mut k = start().await;
    for id in 1..=3 {
        let d = Delivery::job(&format!("d-{id}"), "queued", id, SMALL);
        assert_eq!(k.send(d).await.1, "queued");
    }
    assert_eq!(k.next_job().await.job_id, 1);
    assert_eq!(k.next_job().await.job_id, 2);
    k.no_job().await;
    let s = k.snapshot();
    assert_eq!((s.queued, s.running, s.vcpus_used), (1, 2, 4));
    assert_eq!(s.pool("small").map(|p| (p.queued, p.running)), Some((1, 2)));

    k.permits.add_permits(1);
    assert_eq!(k.next_job().await.job_id, 3);
    k.until("job 1 finished, 3 runs", |s| {
        s.finished == 1 && s.running == 2 && s.queued == 0
    })
    .await;
    k.stop().await;
}

#[tokio::test]
async fn completed_before_it_ran_removes_the_job_from_the_queue() {
    let mut k = start().await;
    for id in 1..=3 {
        let d = Delivery::job(&format!("d-{id}"), "queued", id, SMALL);
        assert_eq!(k.send(d).await.1, "queued");
    }
    k.next_job().await;
    k.next_job().await;
    let (status, text) = k.send(Delivery::job("d-4", "completed", 3, SMALL)).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::ACCEPTED, "removed from the queue")
    );
    // A completed for a running job changes nothing here.
    let (status, text) = k.send(Delivery::job("d-5", "completed", 1, SMALL)).await;
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, "completed"));
    let s = k.snapshot();
    assert_eq!((s.queued, s.running, s.cancelled), (0, 2, 1));

    k.permits.add_permits(2);
    k.until("both finished", |s| s.finished == 2 && s.running == 0)
        .await;
    k.no_job().await;
    k.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let k = start().await;
    let body = vec![b' '; BodyLimits::default().max_bytes + 1];
    let (status, _) = k.send(Delivery::signed("workflow_job", "d-1", body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(k.snapshot().queued, 0);
    k.stop().await;
}

#[tokio::test]
async fn an_oversized_chunked_body_is_413_too() {
    let k = start().await;
    let head = "POST /webhook HTTP/1.1\r\nHost: k\r\nX-GitHub-Event: workflow_job\r\n\
                X-GitHub-Delivery: d-1\r\nX-Hub-Signature-256: sha256=00\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let chunk = vec![b' '; BodyLimits::default().max_bytes];
    let mut body = Vec::new();
    for _ in 0..2 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let status = k.raw(head.to_string(), body).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    k.stop().await;
}

/// Headers of a delivery with a bogus signature that promises `len` bytes.
fn bogus_head(id: &str, len: usize) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nHost: k\r\nX-GitHub-Event: workflow_job\r\n\
         X-GitHub-Delivery: {id}\r\nX-Hub-Signature-256: sha256=00\r\n\
         Content-Length: {len}\r\n\r\n"
    )
}

/// Opens a connection, writes `bytes` and leaves it open.
async fn stalled(addr: SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    s
}

/// True if the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_stalled_upload_is_408_after_the_read_timeout() {
    let limits = ServerLimits {
        body: BodyLimits {
            read_timeout: Duration::from_millis(500),
            ..BodyLimits::default()
        },
        ..ServerLimits::default()
    };
    let k = start_limited("", POOLS, limits).await;
    // Promises 100 bytes, sends 10, stalls.
    let status = k.raw(bogus_head("d-1", 100), vec![b'{'; 10]).await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    k.stop().await;
}

/// Issue 13, item 3: 32 senders with a bogus signature trickle their bodies;
/// GitHub's delivery does not wait for them.
#[tokio::test]
async fn slow_senders_with_a_bogus_signature_do_not_delay_a_genuine_delivery() {
    let mut k = start().await;
    let mut senders = Vec::new();
    for i in 0..32 {
        let mut bytes = bogus_head(&format!("bogus-{i}"), 10_000).into_bytes();
        bytes.extend_from_slice(&[b' '; 10]);
        senders.push(stalled(k.addr, &bytes).await);
    }
    // Their bodies are being read now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    let (status, text) = k.send(Delivery::job("d-1", "queued", 7, SMALL)).await;
    let took = sent.elapsed();
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, "queued"));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(k.next_job().await.job_id, 7);
    drop(senders);
    k.stop().await;
}

/// A sender that sent its bytes fast and stalled holds the whole body
/// budget; GitHub's delivery makes room by closing it.
#[tokio::test]
async fn a_full_body_budget_closes_the_oldest_unverified_upload() {
    let limits = ServerLimits {
        body: BodyLimits {
            max_bytes: 16 * 1024,
            budget_bytes: 16 * 1024,
            ..BodyLimits::default()
        },
        ..ServerLimits::default()
    };
    let k = start_limited("", POOLS, limits).await;
    let mut bytes = bogus_head("hog", 16 * 1024).into_bytes();
    bytes.extend_from_slice(&[b' '; 16 * 1024 - 1]);
    let mut hog = stalled(k.addr, &bytes).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, text) = k
        .send(Delivery::signed("ping", "d-1", b"{}".to_vec()))
        .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "pong"));
    assert!(
        closed_within(&mut hog, Duration::from_secs(1)).await,
        "the stalled upload was closed to make room"
    );
    k.stop().await;
}

/// Other events carry nothing Kiln uses: their bodies are not read, so
/// their size does not matter.
#[tokio::test]
async fn other_events_are_answered_without_reading_their_body() {
    let k = start().await;
    let head = "POST /webhook HTTP/1.1\r\nHost: k\r\nX-GitHub-Event: push\r\n\
                X-GitHub-Delivery: d-1\r\nX-Hub-Signature-256: sha256=00\r\n\
                Content-Length: 26000000\r\n\r\n";
    let status = k.raw(head.to_string(), vec![b'{'; 10]).await;
    assert_eq!(status, "HTTP/1.1 202 Accepted");
    k.stop().await;
}

fn http_limits(http: HttpLimits) -> ServerLimits {
    ServerLimits {
        http,
        ..ServerLimits::default()
    }
}

/// Issue 13, item 2, in process: half a request line does not hold a
/// connection past the header timeout.
#[tokio::test]
async fn half_a_request_line_is_closed_after_the_header_timeout() {
    let k = start_limited(
        "",
        POOLS,
        http_limits(HttpLimits {
            header_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        }),
    )
    .await;
    let mut slow = stalled(k.addr, b"POST /webh").await;
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
    k.stop().await;
}

/// After its answer, a keep-alive connection has the header timeout to
/// send its next request.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let k = start_limited(
        "",
        POOLS,
        http_limits(HttpLimits {
            header_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        }),
    )
    .await;
    let mut c = stalled(k.addr, b"GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n").await;
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.expect("answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(closed_within(&mut c, Duration::from_secs(3)).await);
    k.stop().await;
}

/// A connection on which nothing moves is closed after the idle timeout,
/// even when the header timeout is longer.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let k = start_limited(
        "",
        POOLS,
        http_limits(HttpLimits {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        }),
    )
    .await;
    let mut silent = stalled(k.addr, b"").await;
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    k.stop().await;
}

/// At the cap, a new connection makes room by closing the oldest
/// connection that never sent a signed delivery; one that did is kept.
#[tokio::test]
async fn past_the_cap_the_oldest_untrusted_connection_makes_room() {
    let k = start_limited(
        "",
        POOLS,
        http_limits(HttpLimits {
            max_connections: 4,
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..HttpLimits::default()
        }),
    )
    .await;
    // GitHub's keep-alive connection, trusted by a signed ping.
    let stream = tokio::net::TcpStream::connect(k.addr)
        .await
        .expect("connect");
    let (mut github, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let ping = |id: &str| {
        Request::post("/webhook")
            .header("host", "kiln.test")
            .header("x-github-event", "ping")
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", sign(&Secret::new(SECRET), b"{}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request")
    };
    let resp = github.send_request(ping("d-1")).await.expect("first ping");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(stalled(k.addr, b"POST /webh").await);
    }
    // One more than the cap: the oldest idle one goes, not GitHub's.
    let mut newest = stalled(k.addr, b"POST /webh").await;
    assert!(closed_within(&mut idle[0], Duration::from_secs(2)).await);
    let resp = github.send_request(ping("d-2")).await.expect("second ping");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the trusted connection was kept"
    );
    assert!(!closed_within(&mut newest, Duration::from_millis(100)).await);
    assert!(k.server.connections() <= 4, "{}", k.server.connections());
    // A request still arriving is waited for at shutdown.
    drop((idle, newest));
    k.stop().await;
}

#[tokio::test]
async fn garbage_json_is_400_with_a_reason() {
    let k = start().await;
    let (status, text) = k
        .send(Delivery::signed(
            "workflow_job",
            "d-1",
            b"{not json".to_vec(),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.starts_with("invalid workflow_job payload"), "{text}");

    let (status, text) = k
        .send(Delivery::signed(
            "workflow_job",
            "d-2",
            br#"{"action": "queued"}"#.to_vec(),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("workflow_job"), "{text}");
    assert_eq!(k.snapshot().queued, 0);
    k.stop().await;
}

#[tokio::test]
async fn ping_other_events_headers_and_healthz() {
    let k = start().await;
    let (status, text) = k
        .send(Delivery::signed("ping", "d-1", b"{}".to_vec()))
        .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "pong"));

    let (status, text) = k
        .send(Delivery::signed("push", "d-2", b"{}".to_vec()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(text.starts_with("ignored"), "{text}");

    let mut no_event = Delivery::job("d-3", "queued", 7, SMALL);
    no_event.event = None;
    assert_eq!(k.send(no_event).await.0, StatusCode::BAD_REQUEST);

    let (status, text) = k.send(Delivery::job("d-4", "in_progress", 7, SMALL)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(text.starts_with("ignored"), "{text}");

    let mut no_installation: serde_json::Value =
        serde_json::from_slice(&workflow_job("queued", 7, SMALL)).expect("json");
    no_installation
        .as_object_mut()
        .expect("object")
        .remove("installation");
    let body = serde_json::to_vec(&no_installation).expect("json");
    let (status, text) = k.send(Delivery::signed("workflow_job", "d-5", body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("GitHub App"), "{text}");

    let health = Request::get("/healthz")
        .header("host", "kiln.test")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(k.request(health).await, (StatusCode::OK, "ok".to_string()));
    assert_eq!(k.snapshot().queued, 0);
    k.stop().await;
}

#[tokio::test]
async fn beyond_max_queued_is_503_and_a_redelivery_is_taken_once_there_is_room() {
    let pools = r#"
[[pool]]
name = "parked"
labels = ["kiln-parked"]
vcpus = 1
memory_mib = 512
max_vms = 0
"#;
    let mut k = start_with("max_queued = 2", pools).await;
    let parked = &["kiln-parked"][..];
    for id in 1..=2 {
        let d = Delivery::job(&format!("d-{id}"), "queued", id, parked);
        assert_eq!(k.send(d).await.1, "queued");
    }
    let (status, text) = k.send(Delivery::job("d-3", "queued", 3, parked)).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "queue full")
    );
    assert_eq!(k.snapshot().queued, 2);

    assert_eq!(
        k.send(Delivery::job("d-4", "completed", 1, parked)).await.1,
        "removed from the queue"
    );
    let (status, text) = k.send(Delivery::job("d-3", "queued", 3, parked)).await;
    assert_eq!((status, text.as_str()), (StatusCode::ACCEPTED, "queued"));
    let s = k.snapshot();
    assert_eq!(
        (s.queued, s.running),
        (2, 0),
        "max_vms = 0: queued, never run"
    );
    k.no_job().await;
    k.stop().await;
}
