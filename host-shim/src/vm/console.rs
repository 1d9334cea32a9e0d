//! Following a console log as it grows, for `--console` with a backend
//! whose console cannot be handed the terminal (Firecracker: the jailed VMM
//! never gets the user's terminal; its console stays a bounded log).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const POLL: Duration = Duration::from_millis(50);
/// How long the last copy may take once the VM is gone.
const FINISH: Duration = Duration::from_secs(2);

/// Copies a growing file to a writer until finished.
pub(super) struct ConsoleFollower {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Follows `path` (which may not exist yet) into `out`.
pub(super) fn follow<W>(path: PathBuf, out: W) -> ConsoleFollower
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    ConsoleFollower {
        stop: Some(tx),
        task: Some(tokio::spawn(copy_growing(path, out, rx))),
    }
}

impl ConsoleFollower {
    /// Copies what is left and stops.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(FINISH, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for ConsoleFollower {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn copy_growing<W>(path: PathBuf, mut out: W, mut stop: oneshot::Receiver<()>)
where
    W: AsyncWrite + Unpin,
{
    let mut offset = 0u64;
    loop {
        let stopping = !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        match copy_new(&path, offset, &mut out).await {
            Ok(n) => offset += n,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "console follow");
            }
        }
        if stopping {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Copies `path` from `offset` to its current end; returns the bytes copied.
async fn copy_new<W>(path: &Path, offset: u64, out: &mut W) -> std::io::Result<u64>
where
    W: AsyncWrite + Unpin,
{
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut copied = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
        copied += n as u64;
    }
    out.flush().await?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_what_is_appended_and_the_rest_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let (tx, mut rx) = tokio::io::duplex(1 << 16);
        let f = follow(path.clone(), tx);
        tokio::time::sleep(Duration::from_millis(80)).await;
        std::fs::write(&path, b"Linux version 6.1\n").expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut more = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut more, b"kiln-init: hello\n").expect("append");
        f.finish().await;
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"Linux version 6.1\nkiln-init: hello\n");
    }
}
