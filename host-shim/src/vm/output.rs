//! Where a job's stdout and stderr go as they arrive from the guest.

use std::future::Future;
use std::io;

use kiln_protocol::Stream;
use tokio::io::AsyncWriteExt;

/// Receives the job's output, chunk by chunk, in the order the guest sent it.
/// An error stops further writes to the sink (the job keeps running).
pub trait OutputSink: Send {
    fn write(&mut self, stream: Stream, data: &[u8])
        -> impl Future<Output = io::Result<()>> + Send;
}

/// The shim's own stdout and stderr, flushed per chunk so output is live.
pub struct StdioSink {
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
}

impl Default for StdioSink {
    fn default() -> Self {
        StdioSink {
            stdout: tokio::io::stdout(),
            stderr: tokio::io::stderr(),
        }
    }
}

impl OutputSink for StdioSink {
    async fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        match stream {
            Stream::Stdout => {
                self.stdout.write_all(data).await?;
                self.stdout.flush().await
            }
            Stream::Stderr => {
                self.stderr.write_all(data).await?;
                self.stderr.flush().await
            }
        }
    }
}

/// Keeps everything in memory, each stream apart and both interleaved.
#[derive(Debug, Default, Clone)]
pub struct CollectSink {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Every chunk in arrival order.
    pub chunks: Vec<(Stream, Vec<u8>)>,
}

impl OutputSink for CollectSink {
    async fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(data),
            Stream::Stderr => self.stderr.extend_from_slice(data),
        }
        self.chunks.push((stream, data.to_vec()));
        Ok(())
    }
}

/// Drops the output (it is still counted in the report).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardSink;

impl OutputSink for DiscardSink {
    async fn write(&mut self, _stream: Stream, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
}
