//! `kiln run` as a binary, end to end, with real VMs (QEMU): exit codes,
//! the runner user, live output, the timing line, SIGINT mid-job
//! (cancel, then kill on a second one), and output beyond `kiln serve`'s
//! cap (none unless `--max-output`), each leaving nothing behind.
//!
//! The image is `cargo xtask image`'s when there is a complete one
//! (`KILN_TEST_IMAGE`, or the workspace's `target/kiln-image`), else a
//! minimal one the test builds (busybox root, runner uid 1001). The `kiln`
//! binary is built (or found up to date) in this test's own target
//! directory, see [`layer::kiln_binary`].
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use kiln_vm_tests::layer;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// The image directory, made once per test process.
fn image() -> &'static Path {
    static IMAGE: OnceLock<(Option<TempDir>, PathBuf)> = OnceLock::new();
    let (_, dir) = IMAGE.get_or_init(|| match layer::baked_image_dir() {
        Some(dir) => {
            eprintln!("kiln run tests: using the baked image {}", dir.display());
            (None, dir)
        }
        None => {
            let tmp = tempfile::tempdir().unwrap();
            let dir = layer::minimal_image_dir(tmp.path())
                .unwrap_or_else(|e| panic!("building a test image: {e:#}"));
            eprintln!(
                "kiln run tests: no baked image; built a minimal one in {}",
                dir.display()
            );
            (Some(tmp), dir)
        }
    });
    dir
}

fn kiln() -> &'static Path {
    static KILN: OnceLock<PathBuf> = OnceLock::new();
    KILN.get_or_init(|| layer::kiln_binary().unwrap_or_else(|e| panic!("{e:#}")))
}

/// `kiln run` with its own runtime and disk directories.
struct Kiln {
    root: TempDir,
}

impl Kiln {
    fn new() -> Kiln {
        Kiln {
            root: tempfile::Builder::new()
                .prefix("kiln-run-")
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }

    fn command(&self, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(kiln());
        c.arg("run")
            .arg("--image")
            .arg(image())
            .args([
                "--backend",
                "qemu",
                "--cpus",
                "1",
                "--memory",
                "512",
                "--disk",
                "1",
            ])
            .args(extra)
            .arg("--")
            .args(cmd)
            .env("KILN_RUNTIME_DIR", self.root.path().join("run"))
            .env("KILN_DISK_DIR", self.root.path().join("disks"))
            .env_remove("KILN_IMAGE")
            .kill_on_drop(true);
        c
    }

    async fn output(&self, cmd: &[&str]) -> std::process::Output {
        let out = tokio::time::timeout(Duration::from_secs(300), self.command(&[], cmd).output())
            .await
            .expect("kiln run took over 5 minutes")
            .unwrap();
        eprintln!(
            "kiln run -- {cmd:?}: {}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Nothing of any VM is left: files, sockets, processes.
    fn assert_clean(&self) {
        layer::assert_no_vm_left(self.root.path());
    }
}

fn timing_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .find(|l| l.starts_with("kiln: kiln-") && l.contains("total"))
        .unwrap_or_else(|| panic!("no timing line in:\n{}", String::from_utf8_lossy(stderr)))
        .to_owned()
}

#[tokio::test]
async fn c_exit_code_is_the_jobs() {
    let k = Kiln::new();
    let out = k
        .output(&["sh", "-c", "echo out; echo err >&2; exit 7"])
        .await;
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(out.stdout, b"out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("err\n"), "{stderr}");
    let line = timing_line(&out.stderr);
    for part in ["exit 7", "VMM start", "kernel", "kiln-init", "job", "[qemu"] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    k.assert_clean();
}

#[tokio::test]
async fn c_runs_as_runner() {
    let k = Kiln::new();
    let out = k.output(&["id", "-u"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1001\n");
    k.assert_clean();
}

#[tokio::test]
async fn c_a_missing_image_says_how_to_build_one() {
    let k = Kiln::new();
    let out = Command::new(kiln())
        .args(["run", "--image"])
        .arg(k.root.path().join("no-image"))
        .args(["--", "true"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-image") && stderr.contains("cargo xtask image"),
        "{stderr}"
    );
}

/// Starts a job that prints `started` and then runs until stopped; returns
/// once `started` arrived (so the job runs), with the rest of stdout still
/// to read.
async fn start_long_job(k: &Kiln, script: &str, extra: &[&str], own_group: bool) -> Child {
    let mut cmd = k.command(extra, &["sh", "-c", script]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if own_group {
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
        .await
        .expect("the job did not start within 3 minutes")
        .unwrap();
    assert_eq!(first.as_deref(), Some("started"));
    child
}

async fn finish(mut child: Child, within: Duration) -> (std::process::ExitStatus, String, String) {
    let mut out = String::new();
    let mut err = String::new();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let status = tokio::time::timeout(within, async {
        let (a, b, s) = tokio::join!(
            so.read_to_string(&mut out),
            se.read_to_string(&mut err),
            child.wait()
        );
        a.unwrap();
        b.unwrap();
        s.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("kiln did not exit within {within:?}"));
    eprintln!("kiln: {status}\nstdout:\n{out}\nstderr:\n{err}");
    (status, out, err)
}

#[tokio::test]
async fn d_sigint_cancels_the_job_and_tears_down() {
    let k = Kiln::new();
    let script = "trap 'echo got TERM; exit 3' TERM; echo started; while :; do sleep 0.2; done";
    // Ctrl-C at a terminal: SIGINT to kiln's whole process group. QEMU and
    // vhost-device-vsock must not get it (kiln cancels and tears down).
    let child = start_long_job(&k, script, &["--grace", "20s"], true).await;
    let pgid = Pid::from_raw(child.id().unwrap() as i32);
    killpg(pgid, Signal::SIGINT).unwrap();
    let (status, out, err) = finish(child, Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(out.contains("got TERM"), "the job was not cancelled: {out}");
    assert!(err.contains("SIGINT: cancelling the job"), "{err}");
    let line = timing_line(err.as_bytes());
    assert!(line.contains("exit 3"), "{line}");
    k.assert_clean();
}

#[tokio::test]
async fn d_a_second_sigint_kills_the_vm_at_once() {
    let k = Kiln::new();
    // The job ignores SIGTERM and the grace period is long: only the
    // second signal ends it.
    let script = "trap '' TERM; echo started; while :; do sleep 0.2; done";
    let child = start_long_job(&k, script, &["--grace", "10m"], false).await;
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill(pid, Signal::SIGINT).unwrap();
    let (status, _, err) = finish(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("killing the VM"), "{err}");
    k.assert_clean();
}

/// Reads `child`'s stdout to its end, counting the bytes and whether any
/// was not a zero, without keeping them.
async fn count_zeros(child: &mut Child) -> (u64, bool) {
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let (mut total, mut only_zeros) = (0u64, true);
    loop {
        let n = stdout.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, only_zeros);
        }
        total += n as u64;
        only_zeros &= buf[..n].iter().all(|&b| b == 0);
    }
}

/// Over the 256 MiB `kiln serve` would take: `kiln run` has no cap.
#[tokio::test]
async fn e_300_mb_of_output_arrive_whole() {
    let k = Kiln::new();
    let mut cmd = k.command(&[], &["head", "-c", "300000000", "/dev/zero"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut err = String::new();
    let ((bytes, only_zeros), _) = tokio::time::timeout(Duration::from_secs(600), async {
        tokio::join!(count_zeros(&mut child), stderr.read_to_string(&mut err))
    })
    .await
    .expect("300 MB took over 10 minutes");
    let status = child.wait().await.unwrap();
    eprintln!("kiln: {status}\nstderr:\n{err}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(bytes, 300_000_000);
    assert!(only_zeros, "the output was changed on the way");
    k.assert_clean();
}

/// `--max-output` still caps it: the job is stopped, kiln says why.
#[tokio::test]
async fn e_max_output_caps_the_job() {
    let k = Kiln::new();
    let mut cmd = k.command(
        &["--max-output", "1"],
        &["head", "-c", "3000000", "/dev/zero"],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut err = String::new();
    let ((bytes, _), _) = tokio::time::timeout(Duration::from_secs(300), async {
        tokio::join!(count_zeros(&mut child), stderr.read_to_string(&mut err))
    })
    .await
    .expect("kiln run took over 5 minutes");
    let status = child.wait().await.unwrap();
    eprintln!("kiln: {status}\nstderr:\n{err}");
    assert_eq!(status.code(), Some(125), "{err}");
    assert!(bytes <= 1 << 20, "{bytes} bytes passed a 1 MiB cap");
    assert!(err.contains("bytes of job output"), "{err}");
    k.assert_clean();
}
