//! What the tests that run `kiln serve` as a process share: a directory
//! with its config, secrets and a stand-in image, signed deliveries,
//! reaping it, reading its JSON log lines from stderr as they come, the
//! port it listens on, and telling whether it closed a connection.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln::github::webhook::sign;
use kiln::logs::read::{self, LogLine};
use kiln::secret::Secret;

/// The webhook secret in every [`config_dir`].
pub const WEBHOOK_SECRET: &str = "s3cret";

/// A directory with `config.toml` (`config`), the webhook secret and a
/// throw-away App key (both mode `secret_mode`), and an image directory
/// with the files `kiln::vm::Image::open` checks at start-up (no VM boots
/// in these tests).
pub fn config_dir(secret_mode: u32, config: &str) -> tempfile::TempDir {
    use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("image");
    std::fs::create_dir(&image).expect("mkdir image");
    for (name, content) in [
        ("rootfs.ext4", "x"),
        ("vmlinuz", "x"),
        ("initrd", "x"),
        ("manifest.json", r#"{"format":1}"#),
    ] {
        std::fs::write(image.join(name), content).expect("write image file");
    }
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA keygen");
    let pem = key.to_pkcs1_pem(LineEnding::LF).expect("pem").to_string();
    let secret = format!("{WEBHOOK_SECRET}\n");
    for (name, content) in [
        ("webhook-secret", secret.as_str()),
        ("key.pem", pem.as_str()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(secret_mode))
            .expect("chmod");
    }
    std::fs::write(dir.path().join("config.toml"), config).expect("write config");
    dir
}

/// A `POST /webhook` request for `host` with `body`, signed with
/// [`WEBHOOK_SECRET`].
pub fn signed(host: &str, event: &str, delivery: &str, body: &str) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-GitHub-Event: {event}\r\n\
         X-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {}\r\nContent-Length: {}\r\n\r\n{body}",
        sign(&Secret::new(WEBHOOK_SECRET), body.as_bytes()),
        body.len()
    )
}

/// The body of a `queued` delivery of job `id` for the `small` pool.
pub fn queued_body(id: u64) -> String {
    serde_json::json!({
        "action": "queued",
        "workflow_job": {"id": id, "run_id": id + 1, "labels": ["self-hosted", "kiln-small"], "status": "queued"},
        "repository": {"full_name": "acme/widgets"},
        "installation": {"id": 42},
    })
    .to_string()
}

/// Kills and reaps the child when dropped, however the test ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's stderr lines as they come, from a thread.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first event `name` within `within`; every line before it must be
/// a JSON log line.
pub fn wait_for_event(rx: &mpsc::Receiver<String>, name: &str, within: Duration) -> LogLine {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let parsed = parse(&line);
        if parsed.is(name) {
            return parsed;
        }
        seen.push(line);
    }
    panic!("no {name} event on stderr; got:\n{}", seen.join("\n"));
}

/// One line of stderr, which must be a JSON object.
pub fn parse(line: &str) -> LogLine {
    match read::lines(&format!("{line}\n")) {
        Ok(mut one) if one.len() == 1 => one.remove(0),
        _ => panic!("not a JSON log line: {line:?}"),
    }
}

/// The port of a `serve_listening` event's `listen` address.
pub fn port_of(listening: &LogLine) -> u16 {
    listening
        .str("listen")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no listen address in {:?}", listening.fields()))
        .port()
}

/// True if the peer closed `s` (EOF or reset) before `deadline`.
pub fn closed_by(mut s: &TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
