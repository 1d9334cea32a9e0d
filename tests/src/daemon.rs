//! `kiln serve`, the binary, as the tests that drive it from outside run
//! it (recovery, operating it): its config with a stand-in runner in the
//! image, its start with every directory under one root, its log, free
//! ports, and signed `workflow_job` deliveries as GitHub sends them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln::github::webhook::sign;
use kiln::secret::Secret;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_github::{test_key, APP_ID};
use crate::layer;

/// The webhook secret of every config [`write_config`] writes.
pub const SECRET: &str = "daemon-test-webhook-secret";
/// The installation id in every delivery.
pub const INSTALLATION: u64 = 7;
/// The one pool's labels.
pub const LABELS: &[&str] = &["self-hosted", "kiln-tiny"];

/// What differs between the tests' configs.
pub struct Setup<'a> {
    /// The fake GitHub's URL.
    pub api_url: &'a str,
    /// The webhook port.
    pub port: u16,
    /// `[admin] listen`: `"off"` or an address.
    pub admin_listen: &'a str,
    /// More `[github]` keys, one per line.
    pub github: &'a str,
    /// The image's `/opt/actions-runner/run.sh`.
    pub stand_in: &'a str,
    /// False: no `webhook_secret_file` (every pool has a scale set).
    pub webhook: bool,
    /// More keys of the pool, one per line (`source = "scale-set"`, ...).
    pub pool: &'a str,
}

/// Writes the secrets (0600), a stand-in image and `config.toml` (QEMU,
/// JSON logs, one pool `tiny` of 1 vCPU and 512 MiB without network)
/// under `root`; returns the config's path.
pub fn write_config(root: &Path, s: &Setup<'_>) -> anyhow::Result<PathBuf> {
    for (name, content) in [
        ("webhook-secret", SECRET.to_owned()),
        ("app-key.pem", test_key().private_pkcs1.clone()),
    ] {
        let path = root.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let image = layer::minimal_image_dir_with(
        &root.join("image-src"),
        &[("opt/actions-runner/run.sh", 0o755, s.stand_in)],
    )?;
    let config = format!(
        r#"
listen = "127.0.0.1:{port}"
{webhook}
backend = "qemu"
log_format = "json"

[admin]
listen = "{admin}"

[github]
api_url = "{api_url}"
app_id = {APP_ID}
private_key_file = "app-key.pem"
org = "acme"
runner_group_id = 1
{github}

[host]
vcpus = 2
memory_mib = 4096

[[pool]]
name = "tiny"
labels = {labels}
vcpus = 1
memory_mib = 512
scratch_gib = 1
image = "{image}"
job_timeout = "5m"
network = "none"
{pool}
"#,
        port = s.port,
        admin = s.admin_listen,
        api_url = s.api_url,
        github = s.github,
        labels = serde_json::to_string(LABELS)?,
        webhook = if s.webhook {
            "webhook_secret_file = \"webhook-secret\""
        } else {
            ""
        },
        pool = s.pool,
        image = image.display(),
    );
    let path = root.join("config.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Starts `kiln serve --config CONFIG` with its state, runtime and disk
/// directories under `root` and its output appended to `root/kiln.log`;
/// returns once it listens on `port`.
pub async fn start(root: &Path, config: &Path, port: u16) -> anyhow::Result<Child> {
    let mut child = spawn(root, config)?;
    let until = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > until || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("kiln serve never listened:\n{}", logs(root));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(child)
}

/// Starts `kiln serve` as [`start`] does, but returns once its log has
/// event `event` (for a daemon without a webhook port).
pub async fn start_until(root: &Path, config: &Path, event: &str) -> anyhow::Result<Child> {
    let mut child = spawn(root, config)?;
    let until = Instant::now() + Duration::from_secs(60);
    while !crate::events::has(&logs(root), event, &[]) {
        if Instant::now() > until || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("kiln serve never logged {event}:\n{}", logs(root));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(child)
}

/// `kiln serve --config CONFIG` with its directories under `root` and
/// its output appended to `root/kiln.log`.
fn spawn(root: &Path, config: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("kiln.log"))?;
    Command::new(layer::kiln_binary()?)
        .args(["serve", "--config"])
        .arg(config)
        .env("KILN_LOG", "info")
        .env("NO_COLOR", "1")
        .env("KILN_STATE_DIR", root.join("state"))
        .env("KILN_RUNTIME_DIR", root.join("run"))
        .env("KILN_DISK_DIR", root.join("disks"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting kiln serve")
}

/// Stops `kiln serve` as an operator does: SIGTERM, then waits for the
/// clean stop at most `within`, then SIGKILL.
pub fn stop(child: &mut Child, within: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What `kiln serve` wrote so far.
pub fn logs(root: &Path) -> String {
    std::fs::read_to_string(root.join("kiln.log")).unwrap_or_default()
}

/// A TCP port of 127.0.0.1 free when asked (the tests use it at once).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `workflow_job` delivery.
pub struct Delivery<'a> {
    /// `queued`, `in_progress` or `completed`.
    pub action: &'a str,
    pub job_id: u64,
    pub conclusion: Option<&'a str>,
    pub runner: Option<&'a str>,
}

impl<'a> Delivery<'a> {
    /// A `queued` delivery of job `job_id`.
    pub fn queued(job_id: u64) -> Self {
        Self {
            action: "queued",
            job_id,
            conclusion: None,
            runner: None,
        }
    }
}

/// Sends `d`, signed with [`SECRET`], to `kiln serve` on `port` as GitHub
/// would (repository `acme/widgets`, run `job_id + 1`); returns the whole
/// answer.
pub async fn deliver(port: u16, d: &Delivery<'_>) -> anyhow::Result<String> {
    let status = match d.action {
        "completed" => "completed",
        "in_progress" => "in_progress",
        _ => "queued",
    };
    let body = serde_json::to_vec(&json!({
        "action": d.action,
        "workflow_job": {
            "id": d.job_id, "run_id": d.job_id + 1, "run_attempt": 1, "labels": LABELS,
            "status": status, "conclusion": d.conclusion, "runner_name": d.runner, "steps": [],
        },
        "repository": {"full_name": "acme/widgets", "private": true},
        "organization": {"login": "acme"},
        "installation": {"id": INSTALLATION},
        "sender": {"login": "octocat"},
    }))?;
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: kiln.test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-GitHub-Event: workflow_job\r\n\
         X-GitHub-Delivery: {}-{}\r\nX-Hub-Signature-256: {}\r\n\
         Content-Length: {}\r\n\r\n",
        d.action,
        d.job_id,
        sign(&Secret::new(SECRET), &body),
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    Ok(answer)
}
