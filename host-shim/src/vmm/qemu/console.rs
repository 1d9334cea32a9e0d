//! The guest's serial console, kept in a log file of bounded size.
//!
//! QEMU writes the console to a pipe (its stdout); a task copies it into the
//! log until the limit, then keeps draining and only counts. Draining matters:
//! a full pipe would stall the guest's UART, and with it the guest. The guest
//! controls what it prints, so the file must never grow past the limit.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Appended once when output is cut, so a reader knows the log is incomplete.
/// It is the only thing written past the limit.
const TRUNCATED_NOTE: &[u8] = b"\n[kiln: console log truncated here]\n";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Bytes of guest output in the log.
    pub kept: u64,
    /// Bytes of guest output read and thrown away after the limit.
    pub dropped: u64,
}

/// Copies the console into `path` (created or truncated) in the background.
pub fn spawn<R>(
    source: R,
    path: PathBuf,
    limit: u64,
) -> std::io::Result<JoinHandle<std::io::Result<ConsoleStats>>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    // Created up front so that a failure is the caller's error, not the task's.
    let file = std::fs::File::create(&path)?;
    Ok(tokio::spawn(copy_bounded(
        source,
        tokio::fs::File::from_std(file),
        path,
        limit,
    )))
}

async fn copy_bounded<R, W>(
    mut source: R,
    mut sink: W,
    path: PathBuf,
    limit: u64,
) -> std::io::Result<ConsoleStats>
where
    R: AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut stats = ConsoleStats::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = limit.saturating_sub(stats.kept);
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(n);
        if keep > 0 {
            sink.write_all(&buf[..keep]).await?;
            stats.kept += keep as u64;
        }
        if keep < n {
            if stats.dropped == 0 {
                sink.write_all(TRUNCATED_NOTE).await?;
                sink.flush().await?;
                tracing::warn!(path = %path.display(), limit, "guest console output over the limit; dropping the rest");
            }
            stats.dropped += (n - keep) as u64;
        }
    }
    sink.flush().await?;
    Ok(stats)
}

/// Reads a console log for a human: lossy UTF-8, at most `max` bytes from its end.
pub fn read_tail(path: &Path, max: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_up_to_the_limit_and_drains_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let (mut tx, rx) = tokio::io::duplex(64);
        let task = spawn(rx, path.clone(), 1000).expect("spawn");
        // Far more than the pipe holds: the writer only finishes if the
        // reader keeps draining past the limit.
        let chunk = vec![b'x'; 333];
        for _ in 0..30 {
            tx.write_all(&chunk).await.expect("write");
        }
        drop(tx);
        let stats = task.await.expect("join").expect("copy");
        assert_eq!(stats.kept, 1000);
        assert_eq!(stats.dropped, 30 * 333 - 1000);
        let log = std::fs::read(&path).expect("read");
        assert_eq!(log.len(), 1000 + TRUNCATED_NOTE.len());
        assert!(log.ends_with(TRUNCATED_NOTE));
    }

    #[tokio::test]
    async fn short_output_is_kept_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let (mut tx, rx) = tokio::io::duplex(64);
        let task = spawn(rx, path.clone(), 1000).expect("spawn");
        tx.write_all(b"Linux version 6.1\n").await.expect("write");
        drop(tx);
        let stats = task.await.expect("join").expect("copy");
        assert_eq!(
            stats,
            ConsoleStats {
                kept: 18,
                dropped: 0
            }
        );
        assert_eq!(read_tail(&path, 8), "ion 6.1\n");
    }
}
