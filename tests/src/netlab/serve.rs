//! The lab's servers: one thread per batch of services, which joins a
//! network namespace, binds its sockets there (they stay in that namespace
//! for good), then polls them until the lab's stop flag is set. Every
//! request, query or connection is logged as a [`Hit`] *before* it is
//! answered, so a client holding the answer finds its hit in the log.
//!
//! Threads are named [`THREAD_PREFIX`] and the site. Connections are handled one at a time, with short I/O timeouts: the
//! clients are test jobs making one request each.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};

use super::dns::Zone;
use super::Site;

/// Server threads are named this and their site (`kl-serve-inet`).
pub const THREAD_PREFIX: &str = "kl-serve-";
/// How long a stop request waits for a server to notice it, at most.
const POLL_INTERVAL_MS: u16 = 50;
/// How long a connection may take to send its request or to close.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an HTTP request head that is read.
const MAX_HEAD: usize = 8192;

/// What a lab server saw: one HTTP request, DNS query or TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The namespace the server is in.
    pub site: Site,
    pub service: Service,
    /// The address the server is bound to (the one the client reached).
    pub local: SocketAddr,
    /// The client as the server saw it: the host's uplink address when the
    /// host masqueraded the connection, the VM's own when it did not.
    pub peer: SocketAddr,
    /// HTTP: the request line (`GET / HTTP/1.0`, empty if none came);
    /// DNS: the question (`example.test AAAA`, or `malformed`);
    /// name listener: the line it sent, without the newline.
    pub detail: String,
}

/// The kinds of lab server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// HTTP/1.0 on TCP: every request gets `200 OK` and a fixed body.
    Http,
    /// DNS on UDP: one [`Zone`].
    Dns,
    /// TCP: every connection gets one line naming the listener, then EOF.
    Name,
}

/// Every hit of a lab, in order.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Hit>>>);

impl Log {
    pub fn push(&self, hit: Hit) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hit);
    }

    /// The hits `keep` selects, in the order they happened.
    pub fn select(&self, keep: impl Fn(&Hit) -> bool) -> Vec<Hit> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|h| keep(h))
            .cloned()
            .collect()
    }
}

/// One service to run: where, and what it answers.
#[derive(Debug, Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub answer: Answer,
}

/// What a service answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// HTTP with this body.
    Http(String),
    /// DNS from this zone.
    Dns(Zone),
    /// This line (a newline is added).
    Name(String),
}

impl Answer {
    fn service(&self) -> Service {
        match self {
            Answer::Http(_) => Service::Http,
            Answer::Dns(_) => Service::Dns,
            Answer::Name(_) => Service::Name,
        }
    }
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(l) => l.as_fd(),
            Socket::Udp(u) => u.as_fd(),
        }
    }
}

/// A bound service.
struct Bound {
    spec: Spec,
    socket: Socket,
}

/// Where a server logs, and what stops it.
#[derive(Clone)]
pub struct Ctl {
    pub site: Site,
    pub log: Log,
    pub stop: Arc<AtomicBool>,
}

/// Starts a thread that joins the network namespace at `netns`, binds
/// `specs` there and serves them until `ctl.stop` is set. Returns once
/// every socket is bound, or with the reason one could not be.
pub fn spawn(netns: PathBuf, specs: Vec<Spec>, ctl: Ctl) -> anyhow::Result<JoinHandle<()>> {
    let ns = File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("{THREAD_PREFIX}{}", ctl.site.suffix()))
        .spawn(move || {
            let bound = setns(&ns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("joining {}", netns.display()))
                .and_then(|()| bind_all(specs));
            drop(ns);
            match bound {
                Ok(bound) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&bound, &ctl);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .context("starting a lab server thread")?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            anyhow::bail!("a lab server thread ended before binding its sockets")
        }
    }
}

fn bind_all(specs: Vec<Spec>) -> anyhow::Result<Vec<Bound>> {
    specs.into_iter().map(bind).collect()
}

fn bind(spec: Spec) -> anyhow::Result<Bound> {
    let socket = match spec.answer {
        Answer::Dns(_) => {
            let s =
                UdpSocket::bind(spec.addr).with_context(|| format!("binding udp {}", spec.addr))?;
            s.set_nonblocking(true)?;
            Socket::Udp(s)
        }
        Answer::Http(_) | Answer::Name(_) => {
            let l = TcpListener::bind(spec.addr)
                .with_context(|| format!("binding tcp {}", spec.addr))?;
            l.set_nonblocking(true)?;
            Socket::Tcp(l)
        }
    };
    Ok(Bound { spec, socket })
}

/// Polls `bound` and answers what arrives until `ctl.stop` is set.
fn serve(bound: &[Bound], ctl: &Ctl) {
    while !ctl.stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd<'_>> = bound
            .iter()
            .map(|b| PollFd::new(b.socket.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::from(POLL_INTERVAL_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("netlab: poll in {}: {e}", ctl.site.suffix());
                return;
            }
        }
        let ready: Vec<usize> = fds
            .iter()
            .enumerate()
            .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        for i in ready {
            if let Err(e) = answer_all(&bound[i], ctl) {
                eprintln!(
                    "netlab: {} {}: {e:#}",
                    ctl.site.suffix(),
                    bound[i].spec.addr
                );
            }
        }
    }
}

/// Answers everything waiting on `b`'s socket.
fn answer_all(b: &Bound, ctl: &Ctl) -> anyhow::Result<()> {
    loop {
        let done = match &b.socket {
            Socket::Tcp(l) => match l.accept() {
                Ok((stream, peer)) => {
                    answer_tcp(stream, peer, b, ctl)?;
                    false
                }
                Err(e) => is_drained(e)?,
            },
            Socket::Udp(u) => answer_udp(u, b, ctl).or_else(is_drained)?,
        };
        if done {
            return Ok(());
        }
    }
}

/// `Ok(true)` when `e` says nothing more is waiting.
fn is_drained(e: io::Error) -> io::Result<bool> {
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(true),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => Ok(false),
        _ => Err(e),
    }
}

fn hit(b: &Bound, ctl: &Ctl, peer: SocketAddr, detail: String) -> Hit {
    Hit {
        site: ctl.site,
        service: b.spec.answer.service(),
        local: b.spec.addr,
        peer,
        detail,
    }
}

fn answer_tcp(mut stream: TcpStream, peer: SocketAddr, b: &Bound, ctl: &Ctl) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    match &b.spec.answer {
        Answer::Http(body) => {
            let request_line = read_request_line(&mut stream);
            let head_only = request_line.starts_with("HEAD ");
            ctl.log.push(hit(b, ctl, peer, request_line));
            stream.write_all(http_response(body, head_only).as_bytes())?;
            let _ = stream.shutdown(Shutdown::Write);
        }
        Answer::Name(line) => {
            ctl.log.push(hit(b, ctl, peer, line.clone()));
            stream.write_all(format!("{line}\n").as_bytes())?;
            let _ = stream.shutdown(Shutdown::Write);
            // Closing with unread input would reset the connection, which
            // may cost the client the line: wait for its EOF.
            drain(&mut stream);
        }
        Answer::Dns(_) => anyhow::bail!("DNS is served on UDP only"),
    }
    Ok(())
}

/// The first line of an HTTP request head, read until the blank line
/// that ends it (or EOF, a timeout or [`MAX_HEAD`] bytes).
fn read_request_line(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD && !ends_head(&head) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    head.lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}

fn ends_head(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

fn http_response(body: &str, head_only: bool) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )
}

/// Reads and discards until EOF, an error or [`IO_TIMEOUT`].
fn drain(stream: &mut TcpStream) {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Answers one datagram; `WouldBlock` when none is waiting.
fn answer_udp(socket: &UdpSocket, b: &Bound, ctl: &Ctl) -> io::Result<bool> {
    let mut buf = [0u8; 1500];
    let (n, peer) = socket.recv_from(&mut buf)?;
    let Answer::Dns(zone) = &b.spec.answer else {
        return Ok(false);
    };
    let answer = zone.respond(&buf[..n]);
    let detail = match &answer {
        Some((_, Some(q))) => q.to_string(),
        _ => "malformed".to_owned(),
    };
    ctl.log.push(hit(b, ctl, peer, detail));
    if let Some((response, _)) = answer {
        socket.send_to(&response, peer)?;
    }
    Ok(false)
}
