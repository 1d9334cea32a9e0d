//! Keeps the last few KiB a child process prints on a pipe, for error
//! messages. Everything before is read and dropped, so the child never
//! blocks on a full pipe and memory stays bounded.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

pub fn spawn<R>(mut source: R, max: usize) -> JoinHandle<String>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut kept: Vec<u8> = Vec::with_capacity(max.min(4096));
        let mut buf = [0u8; 4096];
        loop {
            match source.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > max {
                        kept.drain(..kept.len() - max);
                    }
                }
            }
        }
        String::from_utf8_lossy(&kept).trim().to_owned()
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn keeps_only_the_end() {
        let (mut tx, rx) = tokio::io::duplex(16);
        let task = super::spawn(rx, 10);
        tx.write_all(b"0123456789abcdefghij").await.expect("write");
        drop(tx);
        assert_eq!(task.await.expect("join"), "abcdefghij");
    }
}
