//! The `kiln serve` binary: starts from a config file, answers on its
//! port, and stops cleanly on SIGTERM; a bad config stops it at once with
//! a message that says what to fix. It logs JSON here (`log_format =
//! "json"`): the tests read its events ([`kiln::logs::events`]), not its
//! human text.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::logs::events;
use kiln::logs::read;

mod common;
use common::{
    closed_by, config_dir, port_of, queued_body, signed, stderr_lines, wait_for_event, Reaped,
};
use nix::sys::resource::{setrlimit, Resource};

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
webhook_secret_file = "webhook-secret"
# No VM boots here; QEMU needs nothing at start, Firecracker would.
backend = "qemu"
log_format = "json"

# The metrics listener is not needed here (and 9464 may be taken).
[admin]
listen = "off"

[github]
app_id = 1
private_key_file = "key.pem"
org = "acme"

[host]
vcpus = 2
memory_mib = 4096

[[pool]]
name = "small"
labels = ["self-hosted", "kiln-small"]
vcpus = 2
memory_mib = 2048
image = "image"
# The machine's own namespace: its nftables and forwarding are not a test's.
network = "none"
"#;

/// `kiln serve` checks the App key and opens each pool's image at
/// start-up: a throw-away key, and an image directory with the files
/// `kiln::vm::Image::open` checks (no VM boots in these tests).
fn dir_with_config(secret_mode: u32) -> tempfile::TempDir {
    dir_with(secret_mode, CONFIG)
}

/// [`dir_with_config`] with another config text.
fn dir_with(secret_mode: u32, config: &str) -> tempfile::TempDir {
    config_dir(secret_mode, config)
}

fn kiln_serve(config: &Path) -> Child {
    serve_command(config).spawn().expect("spawn kiln serve")
}

fn serve_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("KILN_LOG", "info")
        .env("KILN_STATE_DIR", config.with_file_name("state"))
        .env("KILN_RUNTIME_DIR", config.with_file_name("run"))
        .env("KILN_DISK_DIR", config.with_file_name("disks"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// `kiln serve` started with this open-files limit (soft, hard).
fn kiln_serve_with_fd_limit(config: &Path, soft: u64, hard: u64) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = serve_command(config);
    // SAFETY: between fork and exec the child only calls setrlimit(2), which
    // is async-signal-safe, and builds its io::Error from an errno without
    // allocating.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from)
        });
    }
    cmd.spawn().expect("spawn kiln serve")
}

/// Kills a `kiln serve` a failed test left running.
fn signed_ping(id: &str) -> String {
    signed("k", "ping", id, "{}")
}

/// The `serve_failed` event of a `kiln serve` that stopped: its error.
fn failure(stderr: &str) -> String {
    let lines = read::lines(stderr).unwrap_or_else(|e| panic!("{e}\n{stderr}"));
    let failed = read::find(&lines, events::SERVE_FAILED, &[]);
    assert_eq!(failed.len(), 1, "{stderr}");
    failed[0].str("error").unwrap_or_default().to_owned()
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn serves_and_stops_on_sigterm() {
    let dir = dir_with_config(0o600);
    let mut child = kiln_serve(&dir.path().join("config.toml"));
    let rx = stderr_lines(&mut child);
    let listening = wait_for_event(&rx, events::SERVE_LISTENING, Duration::from_secs(20));
    // Not under journald: kiln stamps its lines itself.
    assert!(listening.str("timestamp").is_some(), "{listening:?}");
    let port = port_of(&listening);

    let health = http(
        port,
        "GET /healthz HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let ping = http(port, &signed_ping("d-1"));
    assert!(
        ping.starts_with("HTTP/1.1 200") && ping.ends_with("pong"),
        "{ping}"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    wait_for_event(&rx, events::SERVE_STOPPED, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kiln serve did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// Under systemd (stderr is the `JOURNAL_STREAM`), no JSON line has a
/// timestamp of kiln's own: journald stamps them.
#[test]
fn under_journald_its_json_lines_have_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = dir_with_config(0o600);
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).expect("create stderr file");
    let meta = file.metadata().expect("stat");
    let mut cmd = serve_command(&dir.path().join("config.toml"));
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file);
    let mut child = Reaped(cmd.spawn().expect("spawn kiln serve"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let text = std::fs::read_to_string(&log).expect("read stderr");
        let lines = read::lines(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        if !read::find(&lines, events::SERVE_LISTENING, &[]).is_empty() {
            break lines;
        }
        assert!(
            child.0.try_wait().expect("wait").is_none() && Instant::now() < deadline,
            "no serve_listening event:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in &lines {
        assert!(line.get("timestamp").is_none(), "{line:?}");
        assert!(line.str("level").is_some(), "{line:?}");
    }
}

/// `log_format = "text"` (the default): lines for people, as before, with
/// the event names as a field.
#[test]
fn in_the_text_format_it_logs_for_people() {
    let dir = dir_with(
        0o600,
        &CONFIG.replace("log_format = \"json\"", "log_format = \"text\""),
    );
    let mut child = Reaped(kiln_serve(&dir.path().join("config.toml")));
    let rx = stderr_lines(&mut child.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        assert!(
            !line.starts_with('{'),
            "a JSON line in the text format: {line}"
        );
        if line.contains("kiln serve: listening for webhooks on POST /webhook") {
            assert!(line.contains(" INFO "), "{line}");
            assert!(
                line.contains("event=serve_listening listen=127.0.0.1:"),
                "{line}"
            );
            return;
        }
        seen.push(line);
    }
    panic!("no listening line:\n{}", seen.join("\n"));
}

/// A bad config is refused on stderr in plain words, before any log line
/// (its log format is not known yet).
#[test]
fn a_bad_log_format_stops_it_saying_what_to_write() {
    let dir = dir_with(
        0o600,
        &CONFIG.replace("log_format = \"json\"", "log_format = \"xml\""),
    );
    let out = serve_command(&dir.path().join("config.toml"))
        .output()
        .expect("run kiln serve");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("kiln serve: ")
            && stderr.contains(
                "config.toml:6:14: log_format: \"xml\" is not a log format: use \"text\" (the default) or \"json\""
            ),
        "{stderr}"
    );
}

#[test]
fn a_world_readable_secret_stops_it_with_chmod_600() {
    let dir = dir_with_config(0o644);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(dir.path().join("config.toml"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run kiln serve");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let secret = dir.path().join("webhook-secret");
    assert!(
        stderr.contains(&format!("run `chmod 600 {}`", secret.display())),
        "{stderr}"
    );
    assert!(stderr.contains("config.toml"), "{stderr}");
}

#[test]
fn a_missing_image_stops_it_naming_the_pool_and_the_directory() {
    let dir = dir_with_config(0o600);
    let image = dir.path().join("image");
    std::fs::remove_dir_all(&image).expect("remove image");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(dir.path().join("config.toml"))
        .env("NO_COLOR", "1")
        .env("KILN_STATE_DIR", dir.path().join("state"))
        .env("KILN_RUNTIME_DIR", dir.path().join("run"))
        .output()
        .expect("run kiln serve");
    assert_eq!(out.status.code(), Some(1));
    let error = failure(&String::from_utf8_lossy(&out.stderr));
    assert!(error.contains("pool \"small\""), "{error}");
    assert!(error.contains(&image.display().to_string()), "{error}");
    assert!(error.contains("cargo xtask image"), "{error}");
}

/// Issue 13, item 2: under a small file limit, 300 connections that send
/// half a request line neither keep GitHub's ping out nor stay open (past
/// the cap the oldest are closed, the rest at the header timeout, 10 s).
/// Before: accept failed with EMFILE, nothing ever closed them, and the
/// ping waited in the backlog for ever.
#[test]
fn under_a_small_fd_limit_half_requests_neither_keep_a_ping_out_nor_stay_open() {
    let dir = dir_with_config(0o600);
    let mut child = Reaped(kiln_serve_with_fd_limit(
        &dir.path().join("config.toml"),
        200,
        200,
    ));
    let rx = stderr_lines(&mut child.0);
    let limits = wait_for_event(&rx, events::SERVE_LIMITS, Duration::from_secs(20));
    assert_eq!(limits.u64("max_connections"), Some(100), "{limits:?}");
    let port = port_of(&wait_for_event(
        &rx,
        events::SERVE_LISTENING,
        Duration::from_secs(20),
    ));

    let opened = Instant::now();
    let crowd: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(b"POST /webh").expect("half a request line");
            s
        })
        .collect();
    let sent = Instant::now();
    let ping = http(port, &signed_ping("d-1"));
    let took = sent.elapsed();
    assert!(
        ping.starts_with("HTTP/1.1 200") && ping.ends_with("pong"),
        "{ping}"
    );
    assert!(took < Duration::from_secs(5), "the ping took {took:?}");

    let deadline = opened + Duration::from_secs(15);
    let still_open = crowd
        .into_iter()
        .filter(|s| !closed_by(s, deadline))
        .count();
    assert_eq!(still_open, 0, "half-sent connections still open 15 s on");
}

#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
    let dir = dir_with_config(0o600);
    let mut child = Reaped(kiln_serve_with_fd_limit(
        &dir.path().join("config.toml"),
        256,
        4096,
    ));
    let rx = stderr_lines(&mut child.0);
    wait_for_event(&rx, events::SERVE_LISTENING, Duration::from_secs(20));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.0.id()))
        .expect("read /proc/<pid>/limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    assert_eq!(open_files[3..5], ["4096", "4096"], "{limits}");
}

/// A tmpfs mounted at `dir` for one test (root only), lazily unmounted
/// when dropped, also when the test fails.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).expect("mkdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -o {options} {}", dir.display());
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A signed `queued` delivery of job `id` for the `small` pool.
fn signed_queued(delivery: &str, id: u64) -> String {
    signed("k", "workflow_job", delivery, &queued_body(id))
}

#[test]
fn a_read_only_state_directory_stops_it_naming_the_directory() {
    let dir = dir_with_config(0o600);
    let state = dir.path().join("state");
    let Some(_mount) = Tmpfs::mount(&state, "ro,mode=0700,size=1m") else {
        return;
    };
    let out = serve_command(&dir.path().join("config.toml"))
        .output()
        .expect("run kiln serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let error = failure(&stderr);
    assert!(
        error.contains(&state.display().to_string()) && error.contains("not writable"),
        "{error}"
    );
}

/// The journal's filesystem full: a new job is refused (503, GitHub keeps
/// it queued) rather than taken and lost at a restart; once there is room
/// again, jobs are taken.
#[test]
fn a_full_state_filesystem_refuses_new_jobs_until_there_is_room() {
    let dir = dir_with_config(0o600);
    let state = dir.path().join("state");
    let Some(_mount) = Tmpfs::mount(&state, "mode=0700,size=2m") else {
        return;
    };
    let mut child = kiln_serve(&dir.path().join("config.toml"));
    let rx = stderr_lines(&mut child);
    let port = port_of(&wait_for_event(
        &rx,
        events::SERVE_LISTENING,
        Duration::from_secs(20),
    ));
    let fill = state.join("fill");
    let mut f = std::fs::File::create(&fill).expect("fill file");
    while f.write_all(&[0u8; 64 * 1024]).is_ok() {}
    drop(f);

    let refused = http(port, &signed_queued("full-1", 501));
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.ends_with("cannot record the job"),
        "{refused}"
    );
    wait_for_event(&rx, events::JOURNAL_FULL, Duration::from_secs(20));

    std::fs::remove_file(&fill).expect("make room");
    let taken = http(port, &signed_queued("full-2", 502));
    assert!(taken.starts_with("HTTP/1.1 202"), "{taken}");

    let _ = child.kill();
    let _ = child.wait();
}
