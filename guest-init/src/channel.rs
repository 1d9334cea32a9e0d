//! The vsock connection to the host: dial with backoff, then frames both
//! ways. Writes are bounded by a send timeout so a host that stops reading
//! cannot hang PID 1.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::sleep;
use std::time::{Duration, Instant};

use kiln_protocol::frame::{self, FrameError, HEADER_LEN};
use kiln_protocol::{blocking, GuestMessage, HostMessage, HOST_CID, MAX_FRAME_LEN, VSOCK_PORT};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    connect, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    VsockAddr,
};
use nix::sys::time::TimeVal;

/// How long the host has to start listening.
pub const CONNECT_BUDGET: Duration = Duration::from_secs(60);
/// How long one write may block on a host that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the last message waits for the host's close (see `send_last`).
pub const LAST_MESSAGE_LINGER: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("connect to vsock CID {cid} port {port}: {errno} (gave up after {tries} tries in {secs:.1} s)")]
    Connect {
        cid: u32,
        port: u32,
        errno: Errno,
        tries: u32,
        secs: f64,
    },
    #[error("the kernel has no vsock support ({0}): build it in, or load vsock and vmw_vsock_virtio_transport with kiln.modules=")]
    NoVsock(Errno),
}

pub struct Channel {
    sock: File,
}

impl Channel {
    /// Dials the host, retrying while its side is not up yet.
    pub fn connect(budget: Duration) -> Result<Channel, ChannelError> {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        let mut tries = 0;
        loop {
            tries += 1;
            let err = match dial() {
                Ok(fd) => {
                    return Ok(Channel {
                        sock: File::from(fd),
                    })
                }
                Err(e @ Errno::EAFNOSUPPORT) => return Err(ChannelError::NoVsock(e)),
                Err(e) => e,
            };
            // Wall time, not the sum of the sleeps: each connect() may
            // itself wait for the transport's connect timeout.
            let remaining = budget.saturating_sub(start.elapsed());
            let wait = if retryable(err) {
                backoff.next_wait(remaining)
            } else {
                None
            };
            match wait {
                Some(d) => sleep(d),
                None => {
                    return Err(ChannelError::Connect {
                        cid: HOST_CID,
                        port: VSOCK_PORT,
                        errno: err,
                        tries,
                        secs: start.elapsed().as_secs_f64(),
                    })
                }
            }
        }
    }

    pub fn send(&mut self, msg: &GuestMessage) -> Result<(), FrameError> {
        blocking::write_message(&mut self.sock, msg)
    }

    /// Sends the conversation's last message (`RunnerExited` or `Error`),
    /// then waits up to `linger` for the host to close its end. A write only
    /// reaches the guest kernel's socket buffer: powering off right after it
    /// can lose the frame in the VMM's vsock device (seen with
    /// vhost-device-vsock under load), and the host closes as soon as it has
    /// read the last message, so waiting for that close is the delivery
    /// receipt. Anything the host still sends meanwhile is discarded.
    pub fn send_last(&mut self, msg: &GuestMessage, linger: Duration) -> Result<(), FrameError> {
        self.send(msg)?;
        let deadline = Instant::now() + linger;
        let mut scratch = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if ms == 0 {
                return Ok(());
            }
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => return Ok(()),
                Ok(_) => match recv(self.sock.as_raw_fd(), &mut scratch, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => return Ok(()),
                    Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                    Err(_) => return Ok(()),
                },
                Err(Errno::EINTR) => {}
                Err(_) => return Ok(()),
            }
        }
    }

    /// The host's first message, version-checked.
    pub fn read_opening(&mut self) -> Result<HostMessage, FrameError> {
        blocking::read_opening(&mut self.sock)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn dial() -> Result<OwnedFd, Errno> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let t = TimeVal::new(i64::try_from(SEND_TIMEOUT.as_secs()).unwrap_or(60) as _, 0);
    setsockopt(&fd, sockopt::SendTimeout, &t)?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, VSOCK_PORT),
    )?;
    Ok(fd)
}

/// Errors that mean "the host (or the transport) is not ready yet".
pub fn retryable(e: Errno) -> bool {
    matches!(
        e,
        Errno::ECONNRESET
            | Errno::ECONNREFUSED
            | Errno::ETIMEDOUT
            | Errno::ENODEV
            | Errno::ENETUNREACH
            | Errno::EHOSTUNREACH
            | Errno::EAGAIN
            | Errno::EINTR
            | Errno::ENOBUFS
    )
}

/// 10 ms doubling to 1 s, never past what is left of the budget.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(10),
        }
    }
}

impl Backoff {
    /// The next wait, or `None` when nothing is left.
    pub fn next_wait(&mut self, remaining: Duration) -> Option<Duration> {
        if remaining.is_zero() {
            return None;
        }
        let d = self.next.min(remaining);
        self.next = (self.next * 2).min(Duration::from_secs(1));
        Some(d)
    }
}

/// Host messages after the `Job`, read without blocking: a host that sends
/// half a frame must not stall the supervisor.
#[derive(Default)]
pub struct Inbox {
    buf: Vec<u8>,
}

pub enum Fill {
    /// Bytes arrived (maybe not a whole frame yet).
    Data,
    /// The host closed its side.
    Eof,
}

impl Inbox {
    pub fn fill(&mut self, fd: BorrowedFd<'_>) -> Result<Fill, Errno> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match recv(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &mut chunk,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(Fill::Data);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(Fill::Data),
                Err(e) => return Err(e),
            }
        }
    }

    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived. A bad header is an error
    /// as soon as its 4 bytes are in, before the body is waited for.
    pub fn next_message(&mut self) -> Result<Option<HostMessage>, FrameError> {
        match frame::decode_from_slice::<HostMessage>(&self.buf)? {
            Some((msg, used)) => {
                self.buf.drain(..used);
                Ok(Some(msg))
            }
            None => {
                debug_assert!(self.buf.len() < HEADER_LEN + MAX_FRAME_LEN);
                Ok(None)
            }
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::Cancel;

    #[test]
    fn backoff_grows_and_respects_the_budget() {
        let mut b = Backoff::default();
        let mut left = Duration::from_secs(3);
        let mut waits = Vec::new();
        while let Some(d) = b.next_wait(left) {
            waits.push(d);
            left -= d;
        }
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert!(waits.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(waits.iter().sum::<Duration>(), Duration::from_secs(3));
        assert_eq!(b.next_wait(Duration::ZERO), None);
    }

    #[test]
    fn retry_only_on_not_ready_errors() {
        assert!(retryable(Errno::ECONNRESET));
        assert!(retryable(Errno::ETIMEDOUT));
        assert!(retryable(Errno::ENODEV));
        assert!(!retryable(Errno::EACCES));
        assert!(!retryable(Errno::EINVAL));
    }

    #[test]
    fn inbox_reassembles_split_frames() {
        let a = frame::encode(&HostMessage::Cancel(Cancel { grace_ms: 7 })).unwrap();
        let b = frame::encode(&HostMessage::Cancel(Cancel { grace_ms: 9 })).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut inbox = Inbox::default();
        inbox.push(&all[..3]);
        assert!(inbox.next_message().unwrap().is_none());
        inbox.push(&all[3..a.len() + 2]);
        assert_eq!(
            inbox.next_message().unwrap(),
            Some(HostMessage::Cancel(Cancel { grace_ms: 7 }))
        );
        assert!(inbox.next_message().unwrap().is_none());
        inbox.push(&all[a.len() + 2..]);
        assert_eq!(
            inbox.next_message().unwrap(),
            Some(HostMessage::Cancel(Cancel { grace_ms: 9 }))
        );
        assert_eq!(inbox.pending(), 0);
    }

    #[test]
    fn inbox_rejects_garbage_early() {
        let mut inbox = Inbox::default();
        inbox.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            inbox.next_message(),
            Err(FrameError::TooLarge { .. })
        ));
        let mut inbox = Inbox::default();
        inbox.push(&[0, 0, 0, 2, 0xee, 0xee]);
        assert!(matches!(
            inbox.next_message(),
            Err(FrameError::Malformed { .. })
        ));
    }
}
