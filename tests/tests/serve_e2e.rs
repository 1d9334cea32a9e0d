//! `kiln serve` end to end, in-process: the real [`Server`] with the
//! production job lifecycle (`kiln::job::Jobs`) over QEMU (the test assets), against a fake GitHub
//! on 127.0.0.1, fed a signed `workflow_job` webhook over real HTTP.
//!
//! The image is a minimal one whose `/opt/actions-runner/run.sh` (the path
//! the job lifecycle starts, as in `cargo xtask image`'s images) is a
//! stand-in: it prints a hash of the JIT config it got in
//! `ACTIONS_RUNNER_INPUT_JITCONFIG`, who it runs as, and whether the config
//! is in its argv or the kernel command line. For job id 999 it then
//! holds, for the cancellation test; for 5001 it never takes a job and for
//! 5002 it prints the actions runner's `Running job:` line, for the idle
//! test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kiln::config::{Config, HostFacts};
use kiln::github::webhook::sign;
use kiln::github::ClientPolicy;
use kiln::job::{Jobs, Settings};
use kiln::logs::{LogFormat, LogSettings};
use kiln::secret::Secret;
use kiln::serve::Server;
use kiln::vm::{Backend, RuntimeDirs, Timeouts};
use kiln_vm_tests::events::{self, names};
use kiln_vm_tests::fake_github::{test_key, Failure, FakeGithub, APP_ID};
use kiln_vm_tests::{assets, layer};
use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::util::SubscriberInitExt;

const WEBHOOK_SECRET: &str = "serve-e2e-webhook-secret";
const INSTALLATION: u64 = 77;
const RUNNER_GROUP: u64 = 7;
const LABELS: &[&str] = &["self-hosted", "linux", "kiln-tiny"];
/// The image manifest's `kiln-sudo` gid (see `layer::minimal_image_dir`).
const SUDO_GID: u32 = 1100;

/// The stand-in runner. `printf %s` so the hash is of the value alone.
const STAND_IN: &str = r#"#!/bin/sh
cfg="$ACTIONS_RUNNER_INPUT_JITCONFIG"
echo "stand-in runner started"
echo "jit-sha256=$(printf %s "$cfg" | sha256sum | cut -d' ' -f1)"
echo "jit-len=${#cfg}"
echo "uid=$(id -u)"
echo "groups=$(id -G)"
echo "argc=$#"
if [ -n "$cfg" ] && tr '\0' ' ' < /proc/$$/cmdline | grep -qF -- "$cfg"; then
  echo "argv-has-config=yes"
else
  echo "argv-has-config=no"
fi
if [ -n "$cfg" ] && grep -qF -- "$cfg" /proc/cmdline; then
  echo "kernel-cmdline-has-config=yes"
else
  echo "kernel-cmdline-has-config=no"
fi
echo "to stderr" >&2
# The cancellation test's job (id 999) holds until it is killed; the idle
# test's 5001 waits for a job that never comes, 5002 takes one at once.
case "$(hostname)" in
  *-999-*) echo holding; sleep 600;;
  *-5001-*) echo "Listening for Jobs"; sleep 600;;
  *-5002-*) echo "2026-01-01 10:00:00Z: Running job: build"; sleep 15; echo "job done";;
esac
"#;

/// Every tracing line of this process, as `kiln serve` with `log_format =
/// "json"` writes them, to check what was logged (by [`events`]) and that
/// no JIT config was.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let settings = LogSettings {
            format: LogFormat::Json,
            timestamps: true,
            ansi: false,
        };
        let filter = tracing_subscriber::EnvFilter::new("info");
        let _ =
            kiln::logs::subscriber(settings, filter, move || Capture(Arc::clone(&sink))).try_init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        std::io::stderr().write_all(data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_text() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap()).into_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A minimal image (see [`layer::minimal_image_dir`]) whose base rootfs
/// also holds the stand-in runner at `/opt/actions-runner/run.sh`.
fn stand_in_image(dir: &Path) -> anyhow::Result<PathBuf> {
    layer::minimal_image_dir_with(dir, &[("opt/actions-runner/run.sh", 0o755, STAND_IN)])
}

/// An image directory with the files `Image::open` checks, for tests in
/// which no VM boots.
fn unbootable_image(dir: &Path) -> PathBuf {
    let image = dir.join("image");
    std::fs::create_dir_all(&image).unwrap();
    for f in ["rootfs.ext4", "vmlinuz", "initrd"] {
        std::fs::write(image.join(f), "x").unwrap();
    }
    std::fs::write(image.join("manifest.json"), r#"{"format":1}"#).unwrap();
    image
}

fn write_secret(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `kiln serve` in this process, listening on 127.0.0.1.
struct Kiln {
    root: TempDir,
    addr: std::net::SocketAddr,
    server: Arc<Server<Jobs>>,
    jobs: Jobs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Kiln {
    async fn start(fake: &FakeGithub, image: &Path, sudo: bool, backend: Backend) -> Kiln {
        // No network: these tests run in the machine's own namespace, whose
        // nftables and forwarding are not theirs to change (the network
        // test below runs in a lab of namespaces).
        Kiln::start_with(fake, image, sudo, backend, "", "network = \"none\"").await
    }

    /// `network`: a `[network]` section (or nothing); `pool_net`: the
    /// pool's network keys.
    async fn start_with(
        fake: &FakeGithub,
        image: &Path,
        sudo: bool,
        backend: Backend,
        network: &str,
        pool_net: &str,
    ) -> Kiln {
        Kiln::start_full(
            fake,
            image,
            sudo,
            backend,
            network,
            pool_net,
            "org = \"acme\"",
        )
        .await
    }

    /// `scope`: the `[github]` scope line (`org = ...`, `repo = ...`).
    async fn start_full(
        fake: &FakeGithub,
        image: &Path,
        sudo: bool,
        backend: Backend,
        network: &str,
        pool_net: &str,
        scope: &str,
    ) -> Kiln {
        // Short: VM sockets live below it (107-byte limit).
        let root = tempfile::Builder::new()
            .prefix("kiln-serve-")
            .tempdir_in("/tmp")
            .unwrap();
        write_secret(&root.path().join("webhook-secret"), WEBHOOK_SECRET);
        write_secret(&root.path().join("app-key.pem"), &test_key().private_pkcs1);
        let config = format!(
            r#"
listen = "127.0.0.1:0"
webhook_secret_file = "webhook-secret"
log_format = "json"

[github]
api_url = "{url}"
app_id = {APP_ID}
private_key_file = "app-key.pem"
{scope}
runner_group_id = {RUNNER_GROUP}

[host]
vcpus = 2
memory_mib = 4096

{network}

[[pool]]
name = "tiny"
labels = {labels}
vcpus = 1
memory_mib = 512
scratch_gib = 1
image = "{image}"
sudo = {sudo}
job_timeout = "2m"
{pool_net}
"#,
            url = fake.url,
            labels = serde_json::to_string(LABELS).unwrap(),
            image = image.display(),
        );
        let path = root.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let facts = HostFacts {
            cpus: 2,
            memory_mib: 8192,
        };
        let config = Config::load_with_host(&path, &facts).unwrap();
        assert_eq!(config.log_format, LogFormat::Json, "as captured() logs");
        let settings = Settings {
            backend: Some(backend),
            dirs: RuntimeDirs::new(root.path().join("run"), root.path().join("disks")),
            state_dir: root.path().join("state"),
            log_max_bytes: 1 << 20,
            log_keep: 10,
            github: ClientPolicy {
                request_timeout: Duration::from_secs(10),
                max_attempts: 2,
                first_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                ..ClientPolicy::default()
            },
            grace: Duration::from_secs(5),
            timeouts: Timeouts::default(),
            net_check_every: Duration::from_secs(1),
            metrics: Default::default(),
        };
        let jobs = Jobs::start_with(&config, settings).await.unwrap();
        let server = Arc::new(Server::new(&config, jobs.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&server);
        tokio::spawn(async move {
            serving
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
        });
        Kiln {
            root,
            addr,
            server,
            jobs,
            stop: Some(stop),
        }
    }

    /// Sends a signed `queued` webhook for job `job_id`; returns the status line.
    async fn queued(&self, job_id: u64) -> String {
        let answer = self
            .deliver(
                "queued",
                job_id,
                &format!("delivery-{job_id}"),
                "acme/widgets",
            )
            .await;
        answer.lines().next().unwrap_or_default().to_owned()
    }

    /// Sends a signed `workflow_job` delivery; returns the whole answer.
    async fn deliver(&self, action: &str, job_id: u64, delivery: &str, repository: &str) -> String {
        let body = workflow_job(action, job_id, repository);
        let head = format!(
            "POST /webhook HTTP/1.1\r\nHost: kiln.test\r\nConnection: close\r\n\
             Content-Type: application/json\r\nX-GitHub-Event: workflow_job\r\n\
             X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {}\r\n\
             Content-Length: {}\r\n\r\n",
            sign(&Secret::new(WEBHOOK_SECRET), &body),
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Waits until `n` jobs have finished and every job task is gone.
    async fn wait_finished(&self, n: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let snap = self.server.scheduler().snapshot();
            if snap.finished >= n && snap.running == 0 && self.jobs.running() == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs not finished within {within:?}: {snap:?}\nlogs:\n{}",
                logs_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn job_logs(&self) -> Vec<PathBuf> {
        layer::entries_below(&self.root.path().join("state/logs"))
    }

    /// Nothing of any VM is left: files, sockets, processes (this
    /// server's: their command lines name its directories).
    fn assert_no_vm_left(&self) {
        layer::assert_no_vm_left(self.root.path());
    }
}

/// A `workflow_job` body as GitHub sends it (the same bytes for the same
/// arguments, so a replay is byte for byte).
fn workflow_job(action: &str, job_id: u64, repository: &str) -> Vec<u8> {
    let status = if action == "completed" {
        "completed"
    } else {
        "queued"
    };
    serde_json::to_vec(&json!({
        "action": action,
        "workflow_job": {
            "id": job_id, "run_id": job_id + 1, "run_attempt": 1, "labels": LABELS,
            "status": status, "runner_name": null, "steps": [],
        },
        "repository": {"full_name": repository, "private": true},
        "organization": {"login": "acme"},
        "installation": {"id": INSTALLATION},
        "sender": {"login": "octocat"},
    }))
    .unwrap()
}

impl Drop for Kiln {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A fake GitHub and `kiln serve` over QEMU with the stand-in runner's
/// image (kept in the returned directory), its pool's sudo as given.
async fn with_stand_in(sudo: bool) -> (tempfile::TempDir, FakeGithub, Kiln) {
    let _ = captured();
    let image_dir = tempfile::tempdir().unwrap();
    let image = stand_in_image(image_dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    let fake = FakeGithub::start().await;
    let assets = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    let backend = Backend::Qemu(layer::qemu_config(assets).unwrap());
    let kiln = Kiln::start(&fake, &image, sudo, backend).await;
    layer::warm_up_runtime().await;
    (image_dir, fake, kiln)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_webhook_runs_the_runner_in_a_vm_and_deletes_it() {
    let (_image_dir, fake, kiln) = with_stand_in(true).await;

    let job_id = 31_415_926_535;
    let status = kiln.queued(job_id).await;
    assert!(status.contains("202"), "{status}");
    kiln.wait_finished(1, Duration::from_secs(240)).await;

    // GitHub was asked for a JIT runner with the pool's labels and group.
    let registered = fake.registered();
    assert_eq!(registered.len(), 1, "{registered:?}");
    let runner = &registered[0];
    assert_eq!(runner.scope, "orgs/acme");
    assert_eq!(runner.request["labels"], json!(LABELS));
    assert_eq!(runner.request["runner_group_id"], json!(RUNNER_GROUP));
    assert_eq!(runner.request["work_folder"], json!("_work"));
    let name = runner.request["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with(&format!("kiln-tiny-{job_id}-")) && name.len() <= 64,
        "{name}"
    );

    // The stand-in saw exactly that config, in its environment only, as
    // the runner user with the sudo group (the pool has sudo = true).
    let logs = kiln.job_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(
        logs[0].file_name().unwrap().to_string_lossy(),
        format!("{job_id}-{name}.log")
    );
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    eprintln!("job log:\n{log}");
    let want = sha256_hex(runner.encoded.as_bytes());
    assert!(log.contains(&format!("jit-sha256={want}\n")), "{log}");
    assert!(
        log.contains(&format!("jit-len={}\n", runner.encoded.len())),
        "{log}"
    );
    assert!(log.contains("uid=1001\n"), "{log}");
    let groups = log
        .lines()
        .find_map(|l| l.strip_prefix("groups="))
        .unwrap_or_default();
    assert!(
        groups.split(' ').any(|g| g == SUDO_GID.to_string()),
        "{groups}"
    );
    assert!(log.contains("argc=0\n"), "{log}");
    assert!(log.contains("argv-has-config=no\n"), "{log}");
    assert!(log.contains("kernel-cmdline-has-config=no\n"), "{log}");
    assert!(log.contains("to stderr\n"), "{log}");
    assert!(log.contains("[kiln] exit 0;"), "{log}");
    // The log holds the runner's output, never the config itself.
    assert!(!log.contains(&runner.encoded), "{log}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&logs[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // GitHub was asked, once, whether the job was still queued.
    let job_path = format!("/repos/acme/widgets/actions/jobs/{job_id}");
    assert_eq!(fake.count(axum::http::Method::GET, &job_path), 1);

    // The runner registration is gone, capacity is back, nothing is left.
    assert_eq!(fake.deleted(), [runner.id]);
    assert!(fake.live_runners().is_empty());
    let snap = kiln.server.scheduler().snapshot();
    assert_eq!(
        (snap.running, snap.vcpus_used, snap.memory_mib_used),
        (0, 0, 0)
    );
    assert_eq!(snap.finished, 1);
    kiln.assert_no_vm_left();

    let traced = logs_text();
    let done = events::one(&traced, names::JOB_DONE, &[("job_id", json!(job_id))]);
    assert!(
        done.has(&[
            ("exit", json!("exit 0")),
            ("pool", json!("tiny")),
            ("runner", json!(name)),
            ("runner_id", json!(runner.id)),
        ]),
        "{done:?}"
    );
    assert!(
        done.str("vm").is_some_and(kiln::recover::is_vm_id),
        "{done:?}"
    );
    // The VM's own lines are the job's too.
    let started = events::one(&traced, names::VM_STARTING, &[("job_id", json!(job_id))]);
    assert_eq!(started.str("vm"), done.str("vm"), "{started:?}");
    assert!(
        !traced.contains(&runner.encoded),
        "the JIT config reached a log line"
    );
    assert!(!traced.contains("jit-sha256"), "job output reached tracing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_failure_starts_no_vm_and_frees_the_capacity() {
    let _ = captured();
    let image_dir = tempfile::tempdir().unwrap();
    let image = unbootable_image(image_dir.path());
    let fake = FakeGithub::start().await;
    // No VM boots here: the backend is never used.
    let backend = Backend::Qemu(kiln::vmm::qemu::QemuConfig::default());
    let kiln = Kiln::start(&fake, &image, false, backend).await;

    // 422 is not retried; 500 is, until the policy's 2 attempts are spent.
    fake.fail_next_for(
        1,
        "/generate-jitconfig",
        Failure::status(422, "Validation Failed: no such runner group"),
    );
    let status = kiln.queued(27_182_818_001).await;
    assert!(status.contains("202"), "{status}");
    kiln.wait_finished(1, Duration::from_secs(30)).await;
    fake.fail_next_for(
        2,
        "/generate-jitconfig",
        Failure::status(500, "Server Error"),
    );
    let status = kiln.queued(27_182_818_002).await;
    assert!(status.contains("202"), "{status}");
    kiln.wait_finished(2, Duration::from_secs(30)).await;

    assert_eq!(
        fake.count(axum::http::Method::POST, "/generate-jitconfig"),
        3
    );
    assert!(fake.registered().is_empty());
    assert!(
        fake.deleted().is_empty(),
        "nothing registered, nothing to delete"
    );
    let snap = kiln.server.scheduler().snapshot();
    assert_eq!(
        (snap.running, snap.vcpus_used, snap.memory_mib_used),
        (0, 0, 0)
    );
    assert!(kiln.job_logs().is_empty(), "{:?}", kiln.job_logs());
    kiln.assert_no_vm_left();

    let traced = logs_text();
    let failed = |job: u64, what: &str| {
        events::find(&traced, names::JOB_NO_JIT_CONFIG, &[("job_id", json!(job))])
            .iter()
            .any(|l| l.str("error").is_some_and(|e| e.contains(what)))
    };
    assert!(failed(27_182_818_001, "HTTP 422"), "{traced}");
    assert!(failed(27_182_818_002, "HTTP 500"), "{traced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_still_kills_its_vm_and_deletes_its_runner() {
    let (_image_dir, fake, kiln) = with_stand_in(false).await;

    let status = kiln.queued(999).await;
    assert!(status.contains("202"), "{status}");
    // Until the stand-in runs and holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let holding = kiln
            .job_logs()
            .first()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|t| t.contains("holding"));
        if holding {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stand-in never held:\n{}",
            logs_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_qemu_is_confined(kiln.root.path());
    // What a second SIGTERM does: drop the running dispatch futures.
    assert_eq!(kiln.server.scheduler().abort_running(), 1);
    tokio::time::timeout(Duration::from_secs(10), kiln.server.scheduler().wait_idle())
        .await
        .expect("capacity comes back at once");
    // The job's own task goes on: kill, teardown, runner deletion.
    assert_eq!(kiln.jobs.finish(Duration::from_secs(60)).await, 0);

    let registered = fake.registered();
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(fake.deleted(), [registered[0].id]);
    kiln.assert_no_vm_left();
    let log = std::fs::read_to_string(&kiln.job_logs()[0]).unwrap();
    assert!(log.contains("[kiln] VM failed: killed on request"), "{log}");
    let traced = logs_text();
    let failed = events::one(&traced, names::JOB_FAILED, &[("job_id", json!(999))]);
    assert_eq!(
        failed.str("exit"),
        Some("VM failed: killed on request"),
        "{failed:?}"
    );
}

/// The running VM's QEMU and vhost-device-vsock (under `kiln serve`, with
/// `backend = "qemu"`) run as one unprivileged uid of their own, with
/// `no_new_privs`, in the VM's own cgroup, with nothing of kiln's
/// environment; QEMU under its seccomp filter.
fn assert_qemu_is_confined(root: &Path) {
    let procs = layer::processes_working_below(root);
    let qemu: Vec<_> = procs
        .iter()
        .filter(|p| p.name.starts_with("qemu-system"))
        .collect();
    assert_eq!(qemu.len(), 1, "{procs:#?}");
    assert!(
        procs.iter().any(|p| p.name.starts_with("vhost-device")),
        "{procs:#?}"
    );
    let uid = qemu[0].uids[0];
    assert!(uid >= 900_000, "QEMU runs as uid {uid}");
    for p in &procs {
        assert_eq!(p.uids, [uid; 4], "{p:#?}");
        assert_eq!(p.no_new_privs, Some(1), "{p:#?}");
        assert_eq!(
            p.environ,
            [format!("PATH={}", kiln::vmm::VMM_PATH)],
            "{p:#?}"
        );
        // Its own cgroup v2, named for the VM, under Kiln's.
        let v2 = p
            .cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_default();
        assert!(v2.starts_with("/kiln/kiln-"), "{p:#?}");
        let cgroup_of_qemu = qemu[0].cgroups.lines().find_map(|l| l.strip_prefix("0::"));
        assert_eq!(Some(v2), cgroup_of_qemu);
    }
    assert_eq!(qemu[0].seccomp, Some(2), "{:#?}", qemu[0]);
    assert_memory_limit(&qemu[0].cgroups);
}

/// The pool's 512 MiB plus QEMU's overhead (and under TCG its translation
/// cache), in whichever hierarchy carries the memory controller here.
fn assert_memory_limit(cgroups: &str) {
    use kiln::vmm::qemu::confine::{MEMORY_OVERHEAD_MIB, TCG_CACHE_MIB};
    let v1 = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p));
    let v2 = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default();
    let files = match v1 {
        Some(p) => vec![format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes")],
        None => ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(|root| format!("{root}{v2}/memory.max"))
            .collect(),
    };
    let Some(limit) = files.iter().find_map(|f| std::fs::read_to_string(f).ok()) else {
        eprintln!("no memory controller on this host: {files:?}");
        return;
    };
    let mib = limit.trim().parse::<u64>().unwrap() >> 20;
    let base = u64::from(512 + MEMORY_OVERHEAD_MIB);
    assert!(
        mib == base || mib == base + u64::from(TCG_CACHE_MIB),
        "memory limit {mib} MiB"
    );
}

/// A `kiln serve` whose pool's image cannot boot (no VM may start), with
/// `scope` as its `[github]` scope line.
async fn without_vms(fake: &FakeGithub, image_dir: &Path, scope: &str) -> Kiln {
    let _ = captured();
    let image = unbootable_image(image_dir);
    let backend = Backend::Qemu(kiln::vmm::qemu::QemuConfig::default());
    Kiln::start_full(
        fake,
        &image,
        false,
        backend,
        "",
        "network = \"none\"",
        scope,
    )
    .await
}

/// Jobs no runner of this Kiln could ever take get neither a runner nor a
/// VM: a `queued` after its `completed`, a repository outside the scope
/// (org and repo scope), and a replayed signed `queued` with a new
/// delivery id after a restart, which GitHub says is completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_can_never_run_get_no_runner() {
    let image_dir = tempfile::tempdir().unwrap();
    let fake = FakeGithub::start().await;
    let kiln = without_vms(&fake, image_dir.path(), "org = \"acme\"").await;

    // `completed` first, then its `queued`.
    let a = kiln
        .deliver("completed", 5101, "d-5101-c", "acme/widgets")
        .await;
    assert!(a.starts_with("HTTP/1.1 202"), "{a}");
    let a = kiln
        .deliver("queued", 5101, "d-5101-q", "acme/widgets")
        .await;
    assert!(a.starts_with("HTTP/1.1 202"), "{a}");
    assert!(a.ends_with("ignored: the job is completed"), "{a}");

    // Another organisation's repository (the App may be installed there too).
    let a = kiln.deliver("queued", 5102, "d-5102", "evil/widgets").await;
    assert!(
        a.ends_with("ignored: repository outside the runners' scope"),
        "{a}"
    );

    // Before the restart: job 5103 ran and completed; its `completed` is seen.
    fake.set_job(5103, "acme/widgets", "completed");
    let a = kiln
        .deliver("completed", 5103, "d-5103-c", "acme/widgets")
        .await;
    assert!(a.starts_with("HTTP/1.1 202"), "{a}");
    let snap = kiln.server.scheduler().snapshot();
    assert_eq!(
        (snap.queued, snap.running, snap.finished),
        (0, 0, 0),
        "{snap:?}"
    );
    drop(kiln);

    // After a restart the memory is gone: a replay of 5103's signed
    // `queued` with a new delivery id is queued, but GitHub says the job
    // is completed, so no runner is registered.
    let kiln = without_vms(&fake, image_dir.path(), "org = \"acme\"").await;
    let a = kiln
        .deliver("queued", 5103, "replayed-5103", "acme/widgets")
        .await;
    assert!(a.ends_with("queued"), "{a}");
    kiln.wait_finished(1, Duration::from_secs(30)).await;
    assert_eq!(
        fake.count(
            axum::http::Method::GET,
            "/repos/acme/widgets/actions/jobs/5103"
        ),
        1
    );
    drop(kiln);

    // Repository scope: only that repository's jobs.
    let kiln = without_vms(&fake, image_dir.path(), "repo = \"acme/widgets\"").await;
    let a = kiln.deliver("queued", 5104, "d-5104", "acme/gadgets").await;
    assert!(
        a.ends_with("ignored: repository outside the runners' scope"),
        "{a}"
    );
    let snap = kiln.server.scheduler().snapshot();
    assert_eq!(
        (snap.queued, snap.running, snap.finished),
        (0, 0, 0),
        "{snap:?}"
    );

    assert!(fake.registered().is_empty(), "{:?}", fake.registered());
    assert_eq!(
        fake.count(axum::http::Method::POST, "/generate-jitconfig"),
        0
    );
    for job in [5101, 5102, 5104] {
        let path = format!("/actions/jobs/{job}");
        assert_eq!(fake.count(axum::http::Method::GET, &path), 0, "{path}");
    }
    assert!(kiln.job_logs().is_empty(), "{:?}", kiln.job_logs());
    let traced = logs_text();
    assert!(
        events::has(
            &traced,
            names::JOB_NOT_QUEUED,
            &[
                ("job_id", json!(5103)),
                ("github_state", json!("completed"))
            ]
        ),
        "{traced}"
    );
}

/// A runner that never takes a job has its VM stopped after the pool's
/// `idle_timeout` and its registration deleted; one that printed the
/// runner's `Running job:` line runs on past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_never_takes_a_job_is_stopped_after_idle_timeout() {
    let _ = captured();
    let image_dir = tempfile::tempdir().unwrap();
    let image = stand_in_image(image_dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    let fake = FakeGithub::start().await;
    let assets = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    let backend = Backend::Qemu(layer::qemu_config(assets).unwrap());
    let pool = "network = \"none\"\nidle_timeout = \"5s\"\n";
    let kiln = Kiln::start_with(&fake, &image, false, backend, "", pool).await;
    layer::warm_up_runtime().await;

    for job in [5001, 5002] {
        let status = kiln.queued(job).await;
        assert!(status.contains("202"), "{status}");
    }
    // 5001 would hold for 600 s and the job timeout is 2 min.
    kiln.wait_finished(2, Duration::from_secs(100)).await;

    let log_of = |job: u64| {
        let path = kiln
            .job_logs()
            .into_iter()
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{job}-"))
            })
            .unwrap_or_else(|| panic!("no log for job {job}"));
        std::fs::read_to_string(path).unwrap()
    };
    let idle = log_of(5001);
    eprintln!("job 5001's log:\n{idle}");
    assert!(idle.contains("Listening for Jobs"), "{idle}");
    assert!(
        idle.contains("the runner took no job within the pool's idle_timeout (5s)"),
        "{idle}"
    );
    assert!(idle.contains("(stopped: Cancelled)"), "{idle}");
    let busy = log_of(5002);
    assert!(busy.contains("job done\n"), "{busy}");
    assert!(busy.contains("[kiln] exit 0;"), "{busy}");
    assert!(!busy.contains("idle_timeout"), "{busy}");

    // GitHub was asked whether 5001's runner was busy, never 5002's; both
    // registrations are gone.
    let registered = fake.registered();
    assert_eq!(registered.len(), 2, "{registered:?}");
    let runner_of = |job: u64| {
        registered
            .iter()
            .find(|r| {
                r.request["name"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("-{job}-"))
            })
            .unwrap()
            .id
    };
    let asked = |job: u64| {
        let path = format!("/orgs/acme/actions/runners/{}", runner_of(job));
        fake.count(axum::http::Method::GET, &path)
    };
    assert_eq!(asked(5001), 1);
    assert_eq!(asked(5002), 0);
    let mut deleted = fake.deleted();
    deleted.sort_unstable();
    let mut want = vec![runner_of(5001), runner_of(5002)];
    want.sort_unstable();
    assert_eq!(deleted, want);
    assert!(fake.live_runners().is_empty());
    kiln.assert_no_vm_left();
    let traced = logs_text();
    let stopped = events::one(&traced, names::JOB_IDLE_STOPPED, &[("job_id", json!(5001))]);
    assert_eq!(stopped.str("idle_timeout"), Some("5s"), "{stopped:?}");
    assert!(!events::has(
        &traced,
        names::JOB_IDLE_STOPPED,
        &[("job_id", json!(5002))]
    ));
}

/// The stand-in runner of the network test: what its VM's network lets
/// through, and the proxy it was given. Job 4242 then holds, for the
/// watchdog.
const NET_STAND_IN: &str = r#"#!/bin/sh
c() { n=$1; shift; if "$@" >/dev/null 2>&1; then echo "PASS $n"; else echo "FAIL $n"; fi; }
echo "addr=$(ip -o -4 addr show dev eth0 | sed 's/.* inet \([0-9./]*\).*/\1/')"
echo "proxy=$HTTP_PROXY https=$HTTPS_PROXY no=$NO_PROXY"
c internet sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 203.0.113.1 80 | grep -q 'hello from the internet'"
c proxy sh -c 'nc -w 3 10.99.0.5 8080 </dev/null | grep -q 8080'
c lan_other nc -w 2 10.99.0.5 8081
c metadata nc -w 2 169.254.169.254 80
case "$(hostname)" in
  *-4242-*) echo holding; sleep 600;;
esac
"#;

/// `kiln serve` with `network = "egress"` in a lab of namespaces: the
/// runner's VM reaches the internet and the pool's proxy, nothing private,
/// and gets the proxy in its environment; when the egress policy table is
/// deleted under a running VM, the watchdog kills the VM; nothing is left.
#[test]
fn serve_gives_the_pools_vms_the_egress_network_and_fails_closed() {
    use kiln_vm_tests::netlab::{self, Lab};
    if let Some(why) = netlab::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let lab = Lab::new().unwrap();
    let image_dir = tempfile::tempdir().unwrap();
    let image = layer::minimal_image_dir_with(
        image_dir.path(),
        &[("opt/actions-runner/run.sh", 0o755, NET_STAND_IN)],
    )
    .unwrap();
    let network = format!(
        // Two VMs' worth of addresses.
        "[network]\ndns = [\"{}\"]\npool = \"10.202.0.0/29\"\n",
        netlab::RESOLVER
    );
    let pool_net = "network = \"egress\"\nproxy = \"http://10.99.0.5:8080\"\n";
    lab.block_on_in_host(async {
        let _ = captured();
        let fake = FakeGithub::start().await;
        let assets = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
        let backend = Backend::Qemu(layer::qemu_config(assets).unwrap());
        let kiln = Kiln::start_with(&fake, &image, false, backend, &network, pool_net).await;
        layer::warm_up_runtime().await;

        // Every address taken (as another Kiln process would): the job
        // waits for one, then runs once they are given back.
        // Leases are named by the /30: its network address over 4.
        let first = u64::from(u32::from(std::net::Ipv4Addr::new(10, 202, 0, 0)) >> 2);
        let addrs = kiln::lease::LeaseDir::new(
            "slot",
            kiln.root.path().join("run/net/addrs"),
            first..=first + 1,
        );
        let held: Vec<_> = (first..=first + 1)
            .map(|n| addrs.try_take(n).unwrap().unwrap())
            .collect();
        let status = kiln.queued(1717).await;
        assert!(status.contains("202"), "{status}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let waits = [("job_id", json!(1717)), ("lacking", json!("address"))];
        while !events::has(&logs_text(), names::JOB_WAITS, &waits) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no wait for an address:\n{}",
                logs_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(kiln.server.scheduler().snapshot().finished, 0);
        drop(held);
        kiln.wait_finished(1, Duration::from_secs(240)).await;
        let logs = kiln.job_logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        let log = std::fs::read_to_string(&logs[0]).unwrap();
        for want in [
            "addr=10.202.0.",
            "proxy=http://10.99.0.5:8080 https=http://10.99.0.5:8080 no=localhost,127.0.0.1,::1",
            "PASS internet",
            "PASS proxy",
            "FAIL lan_other",
            "FAIL metadata",
        ] {
            assert!(log.contains(want), "{want:?} not in the job log:\n{log}");
        }

        // The table goes while job 4242's VM runs: the watchdog kills it.
        let status = kiln.queued(4242).await;
        assert!(status.contains("202"), "{status}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let held = kiln
                .job_logs()
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .any(|l| l.contains("holding"));
            if held {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job 4242 never held"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deleted = tokio::process::Command::new("nft")
            .args(["delete", "table", "inet", "kiln"])
            .status()
            .await
            .unwrap();
        assert!(deleted.success());
        kiln.wait_finished(2, Duration::from_secs(60)).await;
        assert!(
            events::has(&logs_text(), names::EGRESS_POLICY_LOST, &[]),
            "{}",
            logs_text()
        );
        kiln.jobs.stop_network().await;
        kiln.assert_no_vm_left();
        drop(kiln);
    })
    .unwrap();
    assert!(lab.lan_connections(8081).is_empty());
    assert!(lab.meta_requests().is_empty());
    // Links and tables (the namespaces under /run/netns are shared with
    // the tests beside this one; `assert_no_vm_left` covered this one's).
    let ours = || -> Vec<String> {
        lab.host_leftovers()
            .into_iter()
            .filter(|l| !l.contains("/run/netns/"))
            .collect()
    };
    let mut left = ours();
    for _ in 0..30 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = ours();
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}
