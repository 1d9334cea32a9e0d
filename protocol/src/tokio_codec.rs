//! The tokio codec, for the host. Same frames as [`crate::blocking`].

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{self, FrameError, HEADER_LEN};
use crate::message::Opening;

/// Writes one frame and flushes.
pub async fn write_message<W, M>(w: &mut W, msg: &M) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
{
    let bytes = frame::encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame. A clean EOF before the header is [`FrameError::Closed`].
pub async fn read_message<R, M>(r: &mut R) -> Result<M, FrameError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    let body = read_body(r).await?;
    frame::decode_body(&body)
}

/// Reads a conversation's first frame and checks its protocol version.
pub async fn read_opening<R, M>(r: &mut R) -> Result<M, FrameError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned + Opening,
{
    let body = read_body(r).await?;
    frame::decode_first(&body)
}

async fn read_body<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header).await?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            got,
            expected: HEADER_LEN,
        });
    }
    let len = frame::body_len(header)?;
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body).await?;
    if got < len {
        return Err(FrameError::Truncated { got, expected: len });
    }
    Ok(body)
}

async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
