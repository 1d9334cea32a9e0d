//! Operating `kiln serve` as a service: the binary, over QEMU, against a
//! fake GitHub on 127.0.0.1, with its metrics listener on. While a job's
//! runner holds, `kiln ps` shows it with its VM and boot milestones,
//! `kiln logs -f` follows its log, the metrics pass `promtool check
//! metrics` and count it; `kiln cancel` stops it, the follower ends with
//! the job's last line, and the metrics move again.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_vm_tests::daemon::{self, Delivery, Setup};
use kiln_vm_tests::fake_github::FakeGithub;
use kiln_vm_tests::{assets, layer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JOB: u64 = 4_242;

/// The stand-in runner: says it holds, then holds until stopped.
const STAND_IN: &str = "#!/bin/sh\necho holding\nexec sleep 600\n";

/// Kills `kiln serve` when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        daemon::stop(&mut self.0, Duration::from_secs(60));
    }
}

#[test]
fn ps_logs_cancel_and_metrics_follow_a_job() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: kiln serve needs root for its VMs' uids and cgroups");
        return;
    }
    let _ = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is missing: apt-get install prometheus (.ci/prereqs does)"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fake = FakeGithub::start().await;
        let root = tempfile::Builder::new()
            .prefix("kiln-op-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = root.path();
        let (port, metrics_port) = (daemon::free_port().unwrap(), daemon::free_port().unwrap());
        let metrics_at = format!("127.0.0.1:{metrics_port}");
        let setup = Setup {
            api_url: &fake.url,
            port,
            admin_listen: &metrics_at,
            github: "",
            stand_in: STAND_IN,
            webhook: true,
            pool: "",
        };
        let config = daemon::write_config(root, &setup).unwrap();
        let daemon = start(root, &config, port).await;
        let socket = root.join("run/admin.sock");
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the admin socket is root's only");

        let before = scrape(metrics_port).await;
        // Every pool's series is there from the start, at 0.
        assert_eq!(
            value(&before, "kiln_jobs_started_total{pool=\"tiny\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(
                &before,
                "kiln_jobs_finished_total{pool=\"tiny\",result=\"failed\"}"
            ),
            Some(0.0)
        );

        let answer = daemon::deliver(port, &Delivery::queued(JOB)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        // kiln ps: the job runs, in a VM, its runner started.
        let row = wait_for(root, "the job's runner to start", || {
            let ps = kiln_json(root, &socket, &["ps", "--json"]);
            let row = ps["jobs"].as_array()?.first()?.clone();
            (row["stage"] == "running").then_some(row)
        });
        assert_eq!(row["job_id"], json!(JOB));
        assert_eq!(row["pool"], "tiny");
        assert_eq!(row["repository"], "acme/widgets");
        let vm = row["vm"].as_str().unwrap().to_owned();
        assert!(vm.starts_with("kiln-"), "{row}");
        let milestones: Vec<&str> = row["milestones"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            milestones,
            [
                "prepared",
                "vmm_started",
                "guest_hello",
                "job_sent",
                "runner_started"
            ],
            "{row}"
        );
        let table = kiln(root, &socket, &["ps"]);
        assert!(table.status.success());
        let table = String::from_utf8_lossy(&table.stdout);
        assert!(table.contains(&vm) && table.contains("running"), "{table}");

        // kiln logs -f by VM id, until the job is over.
        let follower = Command::new(layer::kiln_binary().unwrap())
            .args(["logs", "-f", &vm, "--socket"])
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(root, "the stand-in to hold", || {
            let out = kiln(root, &socket, &["logs", &JOB.to_string()]);
            String::from_utf8_lossy(&out.stdout)
                .contains("holding")
                .then_some(())
        });

        // The metrics while it runs: valid for promtool, and counting it.
        let running = scrape(metrics_port).await;
        promtool(&running);
        assert_eq!(
            value(&running, "kiln_jobs_received_total{pool=\"tiny\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&running, "kiln_jobs_started_total{pool=\"tiny\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&running, "kiln_vms_running{pool=\"tiny\"}"),
            Some(1.0)
        );
        assert_eq!(value(&running, "kiln_capacity_vcpus_in_use"), Some(1.0));
        assert_eq!(
            value(
                &running,
                "kiln_webhook_to_runner_seconds_count{pool=\"tiny\"}"
            ),
            Some(1.0),
            "{running}"
        );
        assert_eq!(
            value(&running, "kiln_webhooks_total{status=\"202\"}"),
            Some(1.0)
        );
        assert!(
            value(
                &running,
                "kiln_github_requests_total{method=\"POST\",status=\"201\"}"
            )
            .is_some_and(|n| n >= 2.0),
            "a token and a JIT config at least:\n{running}"
        );

        // kiln cancel: the runner is stopped, the job ends.
        let cancelled = kiln(root, &socket, &["cancel", &JOB.to_string()]);
        assert!(cancelled.status.success(), "{cancelled:?}");
        assert!(
            String::from_utf8_lossy(&cancelled.stdout).contains("being stopped"),
            "{cancelled:?}"
        );
        let followed = wait_output(follower, Duration::from_secs(120));
        assert!(followed.status.success(), "{followed:?}");
        let followed = String::from_utf8_lossy(&followed.stdout);
        assert!(followed.contains("holding\n"), "{followed}");
        assert!(
            followed
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("[kiln] ")),
            "the follower ends with the job's last line:\n{followed}"
        );
        let done = wait_for(root, "the job to end", || {
            let ps = kiln_json(root, &socket, &["ps", "--all", "--json"]);
            let row = ps["jobs"].as_array()?.first()?.clone();
            (row["stage"] == "done").then_some(row)
        });
        assert_eq!(done["cancelled"], json!(true), "{done}");

        let after = scrape(metrics_port).await;
        promtool(&after);
        assert_eq!(value(&after, "kiln_vms_running{pool=\"tiny\"}"), Some(0.0));
        assert_eq!(
            value(
                &after,
                "kiln_jobs_cancelled_total{by=\"operator\",pool=\"tiny\"}"
            )
            .or_else(|| value(
                &after,
                "kiln_jobs_cancelled_total{pool=\"tiny\",by=\"operator\"}"
            )),
            Some(1.0),
            "{after}"
        );
        assert_eq!(
            value(
                &after,
                "kiln_jobs_finished_total{pool=\"tiny\",result=\"failed\"}"
            ),
            Some(1.0),
            "the runner stopped by SIGTERM failed:\n{after}"
        );
        for phase in ["prepare", "vmm_start", "kernel", "init", "handshake"] {
            assert_eq!(
                value(
                    &after,
                    &format!("kiln_boot_phase_seconds_count{{phase=\"{phase}\"}}")
                ),
                Some(1.0),
                "{phase}:\n{after}"
            );
        }
        assert_eq!(value(&after, "kiln_teardown_seconds_count"), Some(1.0));

        // Bad requests get what to do.
        let unknown = kiln(root, &socket, &["cancel", "77"]);
        assert!(!unknown.status.success());
        let unknown = String::from_utf8_lossy(&unknown.stderr);
        assert!(unknown.contains("kiln cancel:"), "{unknown}");
        let no_log = kiln(root, &socket, &["logs", "kiln-nothing"]);
        assert!(!no_log.status.success());
        assert!(
            String::from_utf8_lossy(&no_log.stderr).contains("kiln ps --all"),
            "{no_log:?}"
        );
        drop(daemon);
        assert!(!socket.exists(), "the admin socket goes with kiln serve");
        layer::assert_no_vm_left(root);
    });
}

/// `kiln ARGS --socket SOCKET`.
fn kiln(root: &Path, socket: &Path, args: &[&str]) -> Output {
    let out = Command::new(layer::kiln_binary().unwrap())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    if out.status.code().is_none() {
        panic!("kiln {args:?} died: {out:?}\n{}", logs(root));
    }
    out
}

fn kiln_json(root: &Path, socket: &Path, args: &[&str]) -> Value {
    let out = kiln(root, socket, args);
    assert!(
        out.status.success(),
        "kiln {args:?}: {out:?}\n{}",
        logs(root)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `f` every 200 ms for up to four minutes (boots under TCG are slow).
fn wait_for<T>(root: &Path, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < until, "waited for {what}:\n{}", logs(root));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_output(mut child: Child, within: Duration) -> Output {
    let until = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!(
                "kiln logs -f did not end with the job: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// The sample `series` of Prometheus text, if there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

/// `promtool check metrics` passes `text` (lint problems fail too).
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all_sync(text.as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

trait WriteAllSync {
    fn write_all_sync(self, bytes: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self, bytes).unwrap();
    }
}

/// `GET /metrics` as Prometheus (text format) asks for it.
async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(
        b"GET /metrics HTTP/1.1\r\nHost: kiln\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    dechunk(body, head)
}

/// The body of an answer that may be chunked.
fn dechunk(body: &str, head: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

async fn start(root: &Path, config: &Path, port: u16) -> Daemon {
    Daemon(
        daemon::start(root, config, port)
            .await
            .unwrap_or_else(|e| panic!("{e:#}")),
    )
}

fn logs(root: &Path) -> String {
    daemon::logs(root)
}
