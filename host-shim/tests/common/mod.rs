//! What the tests that run `kiln serve` as a process share: reaping it,
//! reading its JSON log lines from stderr as they come, the port it
//! listens on, and telling whether it closed a connection.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln::logs::read::{self, LogLine};

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
