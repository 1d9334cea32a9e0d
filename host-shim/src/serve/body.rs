//! Reading a delivery's body before its signature can be checked.
//!
//! Nothing about an unverified body can be trusted, not even that it will
//! ever arrive. So no body holds a scarce slot while it trickles in: bytes
//! are charged to one budget shared by every unverified delivery as they
//! arrive (a slow sender holds only what it sent), each body is read
//! within [`BodyLimits::read_timeout`], and when a body needs room the
//! budget has not got, the oldest other unverified upload is closed
//! ([`Connections::evict_holder`]). A genuine delivery (a few KiB that
//! arrive at once) therefore never waits behind uploads it does not know;
//! to keep it out, a sender would have to refill the budget faster than
//! GitHub's bytes arrive.

use std::sync::Arc;

use axum::body::Body;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{Duration, Instant};

use super::conns::{Conn, Connections};
use super::limits::BodyLimits;

/// After closing an upload to make room, how long to wait for its bytes
/// to come back before closing the next one.
const EVICTION_SETTLE: Duration = Duration::from_millis(100);

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("body larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("body not received within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("no room to read the body within {wait:?}: too many deliveries being read at once")]
    Busy { wait: Duration },
    #[error("cannot read the body: {0}")]
    Broken(String),
}

/// The bytes all unverified bodies may hold together.
pub(super) struct Budget {
    room: Arc<Semaphore>,
    limits: BodyLimits,
}

/// A body read under the budget; its bytes go back when this is dropped.
pub(super) struct Unverified {
    pub bytes: Vec<u8>,
    _held: Held,
}

impl Budget {
    /// A budget below one whole body would refuse that body for ever: it
    /// is raised to [`BodyLimits::max_bytes`].
    pub fn new(limits: BodyLimits) -> Self {
        let total = limits
            .budget_bytes
            .max(limits.max_bytes)
            .min(Semaphore::MAX_PERMITS);
        Self {
            room: Arc::new(Semaphore::new(total)),
            limits,
        }
    }

    /// Reads `body` within the read timeout, charging what it buffers; a
    /// `declared_len` (Content-Length) over the limit is refused at once.
    /// `conn` is the connection it comes on (`None`: it can make room but
    /// not be closed for room); `conns` is who can be closed.
    pub async fn read(
        &self,
        body: Body,
        declared_len: Option<u64>,
        conn: Option<&Arc<Conn>>,
        conns: &Connections,
    ) -> Result<Unverified, BodyError> {
        let max = self.limits.max_bytes;
        if declared_len.is_some_and(|len| len > max as u64) {
            return Err(BodyError::TooLarge { max });
        }
        let timeout = self.limits.read_timeout;
        tokio::time::timeout(timeout, self.collect(body, conn, conns))
            .await
            .map_err(|_| BodyError::Timeout { timeout })?
    }

    async fn collect(
        &self,
        mut body: Body,
        conn: Option<&Arc<Conn>>,
        conns: &Connections,
    ) -> Result<Unverified, BodyError> {
        let max = self.limits.max_bytes;
        let mut held = Held {
            permit: None,
            bytes: 0,
            conn: conn.cloned(),
        };
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            // Trailers carry nothing the signature covers.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let needed = bytes.len() + data.len();
            if needed > max {
                return Err(BodyError::TooLarge { max });
            }
            if needed > bytes.capacity() {
                // Charged before it is allocated, and never beyond `max`.
                let target = needed.max(bytes.capacity() * 2).min(max);
                self.reserve(&mut held, target - bytes.capacity(), conns)
                    .await?;
                bytes.reserve_exact(target - bytes.len());
            }
            bytes.extend_from_slice(&data);
        }
        Ok(Unverified { bytes, _held: held })
    }

    /// Takes `n` bytes of room, closing the oldest other unverified upload
    /// while there is not enough; [`BodyError::Busy`] after the wait.
    async fn reserve(
        &self,
        held: &mut Held,
        n: usize,
        conns: &Connections,
    ) -> Result<(), BodyError> {
        let wait = self.limits.wait;
        let busy = BodyError::Busy { wait };
        let permits = u32::try_from(n).map_err(|_| BodyError::TooLarge {
            max: self.limits.max_bytes,
        })?;
        let me = held.conn.as_ref().map_or(u64::MAX, |c| c.id());
        let deadline = Instant::now() + wait;
        let permit = loop {
            match Arc::clone(&self.room).try_acquire_many_owned(permits) {
                Ok(p) => break p,
                Err(TryAcquireError::Closed) => return Err(busy),
                Err(TryAcquireError::NoPermits) => {}
            }
            let until = if conns.evict_holder(me) {
                deadline.min(Instant::now() + EVICTION_SETTLE)
            } else {
                deadline
            };
            let acquire = Arc::clone(&self.room).acquire_many_owned(permits);
            match tokio::time::timeout_at(until, acquire).await {
                Ok(Ok(p)) => break p,
                Ok(Err(_closed)) => return Err(busy),
                Err(_) if Instant::now() >= deadline => return Err(busy),
                Err(_) => {}
            }
        };
        held.add(permit, n);
        Ok(())
    }
}

/// Room taken from the budget by one body, and the mark on its connection
/// that says so.
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    conn: Option<Arc<Conn>>,
}

impl Held {
    fn add(&mut self, permit: OwnedSemaphorePermit, n: usize) {
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        self.bytes += n;
        if let Some(c) = &self.conn {
            c.hold(n);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // The permit gives the room back to the budget by itself.
        if let Some(c) = &self.conn {
            c.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, budget: usize) -> BodyLimits {
        BodyLimits {
            max_bytes: max,
            budget_bytes: budget,
            wait: Duration::from_millis(200),
            read_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn reads_a_body_and_gives_its_room_back() {
        let budget = Budget::new(limits(100, 100));
        let conns = Connections::new(4);
        let got = budget
            .read(Body::from("hello"), None, None, &conns)
            .await
            .expect("read");
        assert_eq!(got.bytes, b"hello");
        assert_eq!(budget.room.available_permits(), 95);
        drop(got);
        assert_eq!(budget.room.available_permits(), 100);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let budget = Budget::new(limits(4, 100));
        let conns = Connections::new(4);
        for declared in [None, Some(5)] {
            let err = budget
                .read(Body::from("hello"), declared, None, &conns)
                .await
                .err()
                .expect("too large");
            assert!(matches!(err, BodyError::TooLarge { max: 4 }), "{err}");
        }
        assert_eq!(budget.room.available_permits(), 100);
    }

    #[tokio::test]
    async fn a_full_budget_with_nobody_to_close_is_busy_after_the_wait() {
        let budget = Budget::new(limits(10, 10));
        let conns = Connections::new(4);
        let first = budget
            .read(Body::from("0123456789"), None, None, &conns)
            .await
            .expect("first");
        let err = budget
            .read(Body::from("x"), None, None, &conns)
            .await
            .err()
            .expect("busy");
        assert!(matches!(err, BodyError::Busy { .. }), "{err}");
        drop(first);
        budget
            .read(Body::from("x"), None, None, &conns)
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn a_full_budget_closes_the_oldest_other_holder() {
        let budget = Budget::new(limits(10, 10));
        let conns = Connections::new(4);
        let old = conns.admit();
        let me = conns.admit();
        let holding = budget
            .read(Body::from("0123456789"), None, Some(old.conn()), &conns)
            .await
            .expect("old one reads");
        let closing = {
            let conn = Arc::clone(old.conn());
            tokio::spawn(async move {
                conn.evicted().await;
                // Its task ends: the connection and its request go.
                drop(holding);
            })
        };
        let got = budget
            .read(Body::from("mine"), None, Some(me.conn()), &conns)
            .await
            .expect("room was made");
        assert_eq!(got.bytes, b"mine");
        closing.await.expect("the old one was told to close");
    }
}
