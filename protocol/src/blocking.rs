//! The `std::io` codec, for the guest.

use std::io::{ErrorKind, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use crate::frame::{self, FrameError, HEADER_LEN};
use crate::message::Opening;

/// Writes one frame and flushes.
pub fn write_message<W: Write, M: Serialize>(w: &mut W, msg: &M) -> Result<(), FrameError> {
    let bytes = frame::encode(msg)?;
    w.write_all(&bytes)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. A clean EOF before the header is [`FrameError::Closed`].
pub fn read_message<R: Read, M: DeserializeOwned>(r: &mut R) -> Result<M, FrameError> {
    let body = read_body(r)?;
    frame::decode_body(&body)
}

/// Reads a conversation's first frame and checks its protocol version.
pub fn read_opening<R: Read, M: DeserializeOwned + Opening>(r: &mut R) -> Result<M, FrameError> {
    let body = read_body(r)?;
    frame::decode_first(&body)
}

fn read_body<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
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
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated { got, expected: len });
    }
    Ok(body)
}

/// Fills `buf` unless EOF comes first; returns how much was read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}
