//! Host-to-guest connections over hybrid vsock: connect to the VMM's Unix
//! socket, send `CONNECT <port>\n`, read the `OK <n>` line one byte at a
//! time. Nothing else may be written before that line: Firecracker's parser
//! reads at least 10 bytes and would swallow payload sent early.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::MAX_UDS_PATH;

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Everything, retries included, ends within this.
    pub total_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest reply line accepted, newline included. `OK ` and a
    /// 32-bit number need 14 bytes.
    pub max_line: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            total_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
            max_line: 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("vsock socket path {path} is {len} bytes; Unix sockets allow at most {MAX_UDS_PATH}")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("guest port {port} behind {path} did not accept within {timeout:?} ({attempts} attempts; last: {last})")]
    Timeout {
        path: PathBuf,
        port: u32,
        timeout: Duration,
        attempts: u32,
        last: String,
    },
    #[error("the VMM behind {path} refused CONNECT {port}: it answered {reply:?}")]
    Rejected {
        path: PathBuf,
        port: u32,
        reply: String,
    },
    #[error("the VMM behind {path} answered CONNECT {port} with a line longer than {max} bytes")]
    LineTooLong {
        path: PathBuf,
        port: u32,
        max: usize,
    },
    #[error("connecting to guest port {port} through {path} failed: {source}")]
    Io {
        path: PathBuf,
        port: u32,
        #[source]
        source: std::io::Error,
    },
}

/// How one attempt ended when it did not connect.
enum Attempt {
    /// Nothing listens yet (VMM not up, or no listener in the guest): try again.
    Retry(String),
    Fail(ConnectError),
}

/// Connects to `port` in the guest behind the VMM's hybrid-vsock socket
/// `uds_path`. Returns the stream, positioned right after the `OK` line.
pub async fn connect(
    uds_path: &Path,
    port: u32,
    opts: &ConnectOptions,
) -> Result<UnixStream, ConnectError> {
    let len = uds_path.as_os_str().len();
    if len > MAX_UDS_PATH {
        return Err(ConnectError::PathTooLong {
            path: uds_path.to_owned(),
            len,
        });
    }
    let deadline = Instant::now() + opts.total_timeout;
    let mut backoff = opts.initial_backoff;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match tokio::time::timeout_at(deadline, attempt(uds_path, port, opts.max_line))
            .await
        {
            Ok(Ok((stream, reply))) => {
                tracing::debug!(path = %uds_path.display(), port, reply, attempts, "vsock connected");
                return Ok(stream);
            }
            Ok(Err(Attempt::Fail(e))) => return Err(e),
            Ok(Err(Attempt::Retry(why))) => why,
            Err(_) => "the attempt itself timed out".to_owned(),
        };
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(ConnectError::Timeout {
                path: uds_path.to_owned(),
                port,
                timeout: opts.total_timeout,
                attempts,
                last,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

async fn attempt(path: &Path, port: u32, max_line: usize) -> Result<(UnixStream, String), Attempt> {
    let io_fail = |source: std::io::Error| {
        if retriable(&source) {
            Attempt::Retry(source.to_string())
        } else {
            Attempt::Fail(ConnectError::Io {
                path: path.to_owned(),
                port,
                source,
            })
        }
    };
    let mut stream = UnixStream::connect(path).await.map_err(io_fail)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io_fail)?;
    let mut line = Vec::with_capacity(max_line);
    loop {
        let mut b = [0u8; 1];
        let n = stream.read(&mut b).await.map_err(io_fail)?;
        if n == 0 {
            return Err(Attempt::Retry("closed before answering".into()));
        }
        if b[0] == b'\n' {
            break;
        }
        if line.len() + 1 >= max_line {
            return Err(Attempt::Fail(ConnectError::LineTooLong {
                path: path.to_owned(),
                port,
                max: max_line,
            }));
        }
        line.push(b[0]);
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    if reply.starts_with("OK ") {
        Ok((stream, reply))
    } else {
        Err(Attempt::Fail(ConnectError::Rejected {
            path: path.to_owned(),
            port,
            reply,
        }))
    }
}

/// Errors that mean "not listening yet" rather than "broken".
fn retriable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound
            | ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tokio::net::UnixListener;

    fn quick() -> ConnectOptions {
        ConnectOptions {
            total_timeout: Duration::from_secs(3),
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            max_line: 32,
        }
    }

    async fn read_line(s: &mut UnixStream) -> String {
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.expect("read") == 0 {
                break;
            }
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        String::from_utf8(line).expect("utf8")
    }

    #[tokio::test]
    async fn retries_until_ok_and_sends_no_payload_early() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let refused = Arc::new(AtomicU32::new(0));
        let peer = tokio::spawn({
            let refused = refused.clone();
            async move {
                // The guest is not listening yet twice: the VMM closes at once.
                for _ in 0..2 {
                    let (s, _) = listener.accept().await.expect("accept");
                    drop(s);
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                let (mut s, _) = listener.accept().await.expect("accept");
                assert_eq!(read_line(&mut s).await, "CONNECT 52\n");
                // Anything written before OK would be readable now.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut b = [0u8; 1];
                assert!(
                    matches!(s.try_read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock),
                    "client wrote before OK"
                );
                s.write_all(b"OK 1073741824\n").await.expect("ok");
                let mut payload = [0u8; 4];
                s.read_exact(&mut payload).await.expect("payload");
                payload
            }
        });
        let mut s = connect(&path, 52, &quick()).await.expect("connect");
        s.write_all(b"ping").await.expect("write");
        assert_eq!(&peer.await.expect("peer"), b"ping");
        assert_eq!(refused.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn waits_for_the_socket_to_appear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.sock");
        let p = path.clone();
        let peer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let listener = UnixListener::bind(&p).expect("bind");
            let (mut s, _) = listener.accept().await.expect("accept");
            read_line(&mut s).await;
            s.write_all(b"OK 9\n").await.expect("ok");
            s
        });
        connect(&path, 9, &quick()).await.expect("connect");
        drop(peer.await.expect("peer"));
    }

    #[tokio::test]
    async fn rejects_a_reply_that_is_not_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            read_line(&mut s).await;
            s.write_all(b"NOPE\n").await.expect("write");
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let err = connect(&path, 1, &quick()).await.expect_err("rejected");
        assert!(
            matches!(&err, ConnectError::Rejected { reply, .. } if reply == "NOPE"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bounds_the_reply_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            read_line(&mut s).await;
            // An endless line: the client must give up, not buffer it.
            let junk = [b'O'; 4096];
            while s.write_all(&junk).await.is_ok() {}
        });
        let err = connect(&path, 1, &quick()).await.expect_err("too long");
        assert!(
            matches!(err, ConnectError::LineTooLong { max: 32, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        // Accepts and then says nothing, forever.
        let _peer = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = listener.accept().await.expect("accept");
                held.push(s);
            }
        });
        let opts = ConnectOptions {
            total_timeout: Duration::from_millis(300),
            ..quick()
        };
        let started = std::time::Instant::now();
        let err = connect(&path, 1, &opts).await.expect_err("silent peer");
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn missing_socket_times_out_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.sock");
        let opts = ConnectOptions {
            total_timeout: Duration::from_millis(200),
            ..quick()
        };
        let err = connect(&path, 1, &opts).await.expect_err("absent");
        assert!(err.to_string().contains("absent.sock"), "{err}");
        assert!(matches!(err, ConnectError::Timeout { attempts, .. } if attempts > 1));
    }
}
