//! The one encode/decode core. The blocking and tokio codecs only move bytes
//! in and out of these functions.

use serde::{de::DeserializeOwned, Serialize};

use crate::message::Opening;

/// The largest frame body either side accepts. A `Job` with a generous
/// environment fits many times over; anything larger is an attack or a bug.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Length of the big-endian length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame length is zero")]
    Empty,
    #[error("peer closed the connection")]
    Closed,
    #[error("peer closed the connection in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("malformed {what} frame: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("{extra} trailing bytes after a {what} message")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error(
        "protocol version mismatch: peer speaks version {theirs}, this side speaks version {ours}"
    )]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("expected {expected} as the first message")]
    NotOpening { expected: &'static str },
    #[error("could not encode message: {0}")]
    Encode(#[source] postcard::Error),
    #[error("i/o error on the channel: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the peer simply went away at a frame boundary.
    pub fn is_closed(&self) -> bool {
        matches!(self, FrameError::Closed)
    }
}

/// Encodes `msg` as one frame: length prefix and body.
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out)).map_err(FrameError::Encode)?;
    let body_len = out.len() - HEADER_LEN;
    if body_len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body_len,
            max: MAX_FRAME_LEN,
        });
    }
    // body_len <= MAX_FRAME_LEN < u32::MAX, checked just above.
    let len = u32::try_from(body_len).map_err(|_| FrameError::TooLarge {
        len: body_len,
        max: MAX_FRAME_LEN,
    })?;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads a length prefix and checks it before any body is allocated.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes one frame body. Trailing bytes are an error: a frame holds
/// exactly one message.
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, FrameError> {
    let what = short_type_name::<M>();
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|source| FrameError::Malformed { what, source })?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(msg)
}

/// Decodes the body of a conversation's first frame. The protocol version
/// (variant index 0, then the version, both varints) is checked before the
/// rest, so a peer of another version gets a version error, not a parse error.
pub fn decode_first<M: DeserializeOwned + Opening>(body: &[u8]) -> Result<M, FrameError> {
    if let Ok(((variant, theirs), _)) = postcard::take_from_bytes::<(u32, u32)>(body) {
        if variant == 0 && theirs != crate::PROTOCOL_VERSION {
            return Err(FrameError::VersionMismatch {
                ours: crate::PROTOCOL_VERSION,
                theirs,
            });
        }
    }
    let msg: M = decode_body(body)?;
    match msg.opening_version() {
        Some(_) => Ok(msg),
        None => Err(FrameError::NotOpening { expected: M::NAME }),
    }
}

/// Decodes a whole frame from the front of `buf`, if it holds one.
/// Returns the message and how many bytes it used.
pub fn decode_from_slice<M: DeserializeOwned>(
    buf: &[u8],
) -> Result<Option<(M, usize)>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(header);
    let len = body_len(h)?;
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cancel, GuestMessage, HostMessage, Output, Stream};

    #[test]
    fn header_is_big_endian_length() {
        let f = encode(&HostMessage::Cancel(Cancel { grace_ms: 1 })).expect("encode");
        let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        assert_eq!(len, f.len() - HEADER_LEN);
    }

    #[test]
    fn oversized_header_rejected_before_allocation() {
        let err = body_len(u32::MAX.to_be_bytes()).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
        assert!(matches!(body_len([0; 4]), Err(FrameError::Empty)));
    }

    #[test]
    fn encode_refuses_oversized_message() {
        let m = GuestMessage::Output(Output {
            stream: Stream::Stdout,
            data: vec![0; MAX_FRAME_LEN + 1],
        });
        assert!(matches!(encode(&m), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut f = encode(&HostMessage::Cancel(Cancel { grace_ms: 1 })).expect("encode");
        f.push(0);
        let err = decode_body::<HostMessage>(&f[HEADER_LEN..]).expect_err("trailing");
        assert!(
            matches!(err, FrameError::TrailingBytes { extra: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn first_message_must_be_opening() {
        let f = encode(&HostMessage::Cancel(Cancel { grace_ms: 1 })).expect("encode");
        let err = decode_first::<HostMessage>(&f[HEADER_LEN..]).expect_err("not opening");
        assert_eq!(err.to_string(), "expected Job as the first message");
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        // Variant 0 (Hello), version 7, then garbage the current layout cannot parse.
        let body = [0u8, 7, 0xff, 0xff, 0xff];
        let err = decode_first::<GuestMessage>(&body).expect_err("mismatch");
        assert!(matches!(
            err,
            FrameError::VersionMismatch {
                ours: crate::PROTOCOL_VERSION,
                theirs: 7
            }
        ));
        let s = err.to_string();
        let ours = format!("version {}", crate::PROTOCOL_VERSION);
        assert!(s.contains("version 7") && s.contains(&ours), "{s}");
    }

    #[test]
    fn partial_buffers_wait_for_more() {
        let f = encode(&HostMessage::Cancel(Cancel { grace_ms: 9 })).expect("encode");
        for cut in 0..f.len() {
            assert!(decode_from_slice::<HostMessage>(&f[..cut])
                .expect("partial")
                .is_none());
        }
        let (m, used) = decode_from_slice::<HostMessage>(&f)
            .expect("ok")
            .expect("whole");
        assert_eq!(used, f.len());
        assert_eq!(m, HostMessage::Cancel(Cancel { grace_ms: 9 }));
    }
}
