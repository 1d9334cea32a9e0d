//! Guest-to-host connections: the VMM turns a guest's `connect(CID 2, P)`
//! into a connection to the Unix socket `<uds>_P`, which must already be
//! listening (Firecracker resets the guest at once otherwise).
//!
//! One guest, one connection: the listener closes its socket as soon as it
//! has accepted one, so every later dial from the guest is refused by the
//! kernel at once instead of waiting in the backlog, with its buffers, until
//! the VM is torn down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use super::MAX_UDS_PATH;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("vsock listener path {path} is {len} bytes; Unix sockets allow at most {MAX_UDS_PATH}: use a shorter VM directory")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("could not listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no guest connected to {path} within {timeout:?}")]
    AcceptTimeout { path: PathBuf, timeout: Duration },
    #[error("accepting a guest connection on {path} failed: {source}")]
    Accept {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest's connection on {path} was accepted already, and a listener accepts one: bind a new listener for another VM")]
    AlreadyAccepted { path: PathBuf },
}

/// A listener on `<uds>_<port>` that accepts one connection. Its socket
/// file is removed when it is dropped.
#[derive(Debug)]
pub struct HybridListener {
    path: PathBuf,
    /// `None` once a connection was accepted: the socket is closed then.
    /// A lock rather than `&mut self`, so that [`Self::accept`] stays
    /// cancel-safe and callers can keep sharing the listener.
    listener: Mutex<Option<UnixListener>>,
}

/// The Unix socket a VMM connects to when its guest dials `port` on the host.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

impl HybridListener {
    /// Binds `<uds_path>_<port>`. Must run inside a tokio runtime, and before
    /// the VM starts. An existing file at that path is an error rather than
    /// something to delete: it may be another VM's live socket.
    pub fn bind(uds_path: &Path, port: u32) -> Result<Self, ListenerError> {
        let path = port_path(uds_path, port);
        let len = path.as_os_str().len();
        if len > MAX_UDS_PATH {
            return Err(ListenerError::PathTooLong { path, len });
        }
        let listener = UnixListener::bind(&path).map_err(|source| ListenerError::Bind {
            path: path.clone(),
            source,
        })?;
        tracing::debug!(path = %path.display(), "vsock listener bound");
        Ok(HybridListener {
            path,
            listener: Mutex::new(Some(listener)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits at most `timeout` for the guest's connection, then stops
    /// listening: later connections to the path are refused. Cancel-safe:
    /// if the wait is dropped or times out, the listener keeps listening.
    pub async fn accept(&self, timeout: Duration) -> Result<UnixStream, ListenerError> {
        match tokio::time::timeout(timeout, self.accept_once()).await {
            Err(_) => Err(ListenerError::AcceptTimeout {
                path: self.path.clone(),
                timeout,
            }),
            Ok(accepted) => accepted,
        }
    }

    async fn accept_once(&self) -> Result<UnixStream, ListenerError> {
        let mut slot = self.listener.lock().await;
        let Some(listener) = slot.as_ref() else {
            return Err(ListenerError::AlreadyAccepted {
                path: self.path.clone(),
            });
        };
        let (stream, _addr) = listener
            .accept()
            .await
            .map_err(|source| ListenerError::Accept {
                path: self.path.clone(),
                source,
            })?;
        // Closes the socket: what the guest dials from now on is refused.
        *slot = None;
        tracing::debug!(path = %self.path.display(), "guest connected; vsock listener closed");
        Ok(stream)
    }
}

impl Drop for HybridListener {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove vsock listener socket")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn binds_port_path_accepts_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let listener = HybridListener::bind(&uds, 1024).expect("bind");
        let expected = dir.path().join("v.sock_1024");
        assert_eq!(listener.path(), expected);
        assert!(expected.exists());

        let client = tokio::spawn({
            let p = expected.clone();
            async move {
                let mut s = UnixStream::connect(&p).await.expect("connect");
                s.write_all(b"hi").await.expect("write");
            }
        });
        let mut s = listener
            .accept(Duration::from_secs(5))
            .await
            .expect("accept");
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");
        client.await.expect("client");

        drop(listener);
        assert!(!expected.exists(), "socket file must be removed on drop");
    }

    #[tokio::test]
    async fn after_one_connection_later_dials_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = HybridListener::bind(&dir.path().join("v.sock"), 1024).expect("bind");
        let first = UnixStream::connect(listener.path()).await.expect("connect");
        let _accepted = listener
            .accept(Duration::from_secs(5))
            .await
            .expect("accept");
        let err = UnixStream::connect(listener.path())
            .await
            .expect_err("nobody listens any more");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        let err = listener
            .accept(Duration::from_millis(50))
            .await
            .expect_err("one connection only");
        assert!(
            matches!(err, ListenerError::AlreadyAccepted { .. }),
            "{err}"
        );
        drop(first);
    }

    #[tokio::test]
    async fn a_timed_out_accept_keeps_listening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = HybridListener::bind(&dir.path().join("v.sock"), 1024).expect("bind");
        listener
            .accept(Duration::from_millis(20))
            .await
            .expect_err("nobody dials yet");
        let _guest = UnixStream::connect(listener.path()).await.expect("connect");
        listener
            .accept(Duration::from_secs(5))
            .await
            .expect("the listener still listens after a timeout");
    }

    #[tokio::test]
    async fn accept_times_out_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = HybridListener::bind(&dir.path().join("v.sock"), 7).expect("bind");
        let err = listener
            .accept(Duration::from_millis(50))
            .await
            .expect_err("nobody connects");
        assert!(matches!(err, ListenerError::AcceptTimeout { .. }));
        assert!(err.to_string().contains("v.sock_7"), "{err}");
    }

    #[tokio::test]
    async fn refuses_existing_file_and_long_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("v.sock");
        let first = HybridListener::bind(&uds, 1024).expect("bind");
        let err = HybridListener::bind(&uds, 1024).expect_err("in use");
        assert!(matches!(err, ListenerError::Bind { .. }), "{err}");
        // The failed bind must not have removed the live socket.
        assert!(first.path().exists());

        let long = dir.path().join("x".repeat(120));
        let err = HybridListener::bind(&long, 1024).expect_err("too long");
        assert!(matches!(err, ListenerError::PathTooLong { .. }), "{err}");
    }
}
