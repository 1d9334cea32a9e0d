//! Bounded copies of Firecracker's output streams into log files.
//!
//! The guest controls the serial console and can write without end, so the
//! copy keeps the first `limit` bytes and then only drains the stream:
//! Firecracker must never block on a full pipe, and the host's disk must
//! never fill.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Mutex};

const CHUNK: usize = 16 * 1024;
/// After a stop request, how long a read may wait for data still in flight.
const DRAIN_WAIT: Duration = Duration::from_millis(50);

/// A log file that keeps at most `limit` bytes.
#[derive(Debug)]
pub(crate) struct BoundedLog {
    file: tokio::fs::File,
    path: PathBuf,
    limit: u64,
    kept: u64,
    dropped: u64,
    write_failed: bool,
}

pub(crate) type SharedLog = Arc<Mutex<BoundedLog>>;

impl BoundedLog {
    pub(crate) async fn create(path: &Path, limit: u64) -> io::Result<SharedLog> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(path)
            .await?;
        Ok(Arc::new(Mutex::new(Self {
            file,
            path: path.to_owned(),
            limit,
            kept: 0,
            dropped: 0,
            write_failed: false,
        })))
    }

    async fn write(&mut self, data: &[u8]) {
        let room = usize::try_from(self.limit.saturating_sub(self.kept)).unwrap_or(usize::MAX);
        let keep = &data[..data.len().min(room)];
        let over = data.len() - keep.len();
        if !keep.is_empty() && !self.write_failed {
            match self.file.write_all(keep).await {
                Ok(()) => self.kept += keep.len() as u64,
                Err(e) => {
                    // Keep draining the stream all the same.
                    self.write_failed = true;
                    tracing::warn!(path = %self.path.display(), error = %e, "log write failed; dropping the rest");
                }
            }
        }
        if over > 0 {
            if self.dropped == 0 && !self.write_failed {
                let note = format!("\n[kiln: output beyond {} bytes dropped]\n", self.limit);
                if let Err(e) = self.file.write_all(note.as_bytes()).await {
                    self.write_failed = true;
                    tracing::warn!(path = %self.path.display(), error = %e, "log write failed");
                }
            }
            self.dropped += over as u64;
        }
    }

    async fn finish(&mut self) {
        if let Err(e) = self.file.flush().await {
            tracing::warn!(path = %self.path.display(), error = %e, "log flush failed");
        }
        if self.dropped > 0 {
            tracing::info!(path = %self.path.display(), kept = self.kept, dropped = self.dropped, "log truncated");
        }
    }
}

/// Copies `reader` into `log` until end of file (the writer exited).
pub(crate) async fn copy_to_end<R: AsyncRead + Unpin>(mut reader: R, log: SharedLog) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => log.lock().await.write(&buf[..n]).await,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading a Firecracker stream failed");
                break;
            }
        }
    }
    log.lock().await.finish().await;
}

/// Copies `reader` into `log` until `stop` fires, then takes what is still
/// buffered. For a FIFO that Kiln holds open for writing too (so that it
/// never reports end of file while Firecracker opens and closes it).
pub(crate) async fn copy_until_stopped<R: AsyncRead + Unpin>(
    mut reader: R,
    log: SharedLog,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            _ = &mut stop => break,
            read = reader.read(&mut buf) => match read {
                Ok(0) => { log.lock().await.finish().await; return; }
                Ok(n) => log.lock().await.write(&buf[..n]).await,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading Firecracker's log failed");
                    log.lock().await.finish().await;
                    return;
                }
            }
        }
    }
    while let Ok(Ok(n)) = tokio::time::timeout(DRAIN_WAIT, reader.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        log.lock().await.write(&buf[..n]).await;
    }
    log.lock().await.finish().await;
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test]
    async fn keeps_the_limit_then_drains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let log = BoundedLog::create(&path, 1000).await.unwrap();
        let (mut tx, rx) = tokio::io::duplex(64);
        let copier = tokio::spawn(copy_to_end(rx, Arc::clone(&log)));
        // Far more than the pipe holds: the writer only finishes if the
        // reader keeps draining after the limit.
        let data: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        copier.await.unwrap();
        let kept = std::fs::read(&path).unwrap();
        assert_eq!(&kept[..1000], &data[..1000]);
        let note = String::from_utf8_lossy(&kept[1000..]);
        assert_eq!(note, "\n[kiln: output beyond 1000 bytes dropped]\n");
        assert_eq!(log.lock().await.dropped, 199_000);
    }

    #[tokio::test]
    async fn stop_takes_what_is_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        let log = BoundedLog::create(&path, 1 << 20).await.unwrap();
        let (mut tx, rx) = tokio::io::duplex(1024);
        let (stop_tx, stop_rx) = oneshot::channel();
        tx.write_all(b"first\n").await.unwrap();
        let copier = tokio::spawn(copy_until_stopped(rx, Arc::clone(&log), stop_rx));
        tx.write_all(b"second\n").await.unwrap();
        stop_tx.send(()).unwrap();
        // The writer stays open: the copy must still end.
        tokio::time::timeout(Duration::from_secs(5), copier)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");
        drop(tx);
    }
}
