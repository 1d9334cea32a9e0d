//! The webhook server's open connections, and which one goes when room is
//! needed.
//!
//! Every connection is registered from its accept to its close. When a new
//! one would pass the cap, or a body needs room in the budget, one is told
//! to close: the *oldest untrusted* one, and only when there is none, the
//! least recently trusted. A connection is trusted once a delivery on it
//! was signed with the webhook secret, which only GitHub has. So a crowd
//! of connections without it (idle, half a request line, a trickling
//! body) only ages, and makes room for GitHub's next connection, the
//! newest, instead of keeping it out; GitHub's own keep-alive connection
//! is never closed for them. Refusing new connections at the cap would do
//! the opposite: whoever holds the slots would keep them, while the header
//! and body timeouts only bound how long each one is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The register of open connections.
pub(crate) struct Connections {
    cap: usize,
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Conn>>>,
}

/// What the server knows about one connection.
pub(crate) struct Conn {
    id: u64,
    epoch: Instant,
    /// A delivery on it was signed with the webhook secret.
    trusted: AtomicBool,
    /// Milliseconds from the epoch to the accept, or once trusted, to the
    /// last signed delivery.
    since: AtomicU64,
    /// Milliseconds from the epoch to the last byte moved either way.
    moved_at: AtomicU64,
    /// Unverified body bytes its current request holds from the budget.
    held: AtomicUsize,
    evicted: Notify,
}

impl Connections {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Connections registered (and not told to close).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Registers a new connection. If that makes more than the cap, another
    /// one is told to close (see the module's notes).
    pub fn admit(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Relaxed);
        let now = millis(self.epoch);
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            trusted: AtomicBool::new(false),
            since: AtomicU64::new(now),
            moved_at: AtomicU64::new(now),
            held: AtomicUsize::new(0),
            evicted: Notify::new(),
        });
        let over = {
            let mut live = self.lock();
            live.insert(id, Arc::clone(&conn));
            live.len() > self.cap
        };
        if over && self.evict(|c| c.id != id) {
            tracing::debug!(
                cap = self.cap,
                "connection cap reached: closed the oldest untrusted connection"
            );
        }
        Registration {
            conns: Arc::clone(self),
            conn,
        }
    }

    /// Tells one connection to close, to free a file descriptor. False if
    /// there is none.
    pub fn evict_any(&self) -> bool {
        self.evict(|_| true)
    }

    /// Tells a connection other than `except` that holds unverified body
    /// bytes to close. False if there is none.
    pub fn evict_holder(&self, except: u64) -> bool {
        self.evict(|c| c.id != except && c.held.load(Relaxed) > 0)
    }

    fn evict(&self, candidate: impl Fn(&Conn) -> bool) -> bool {
        let victim = {
            let mut live = self.lock();
            let id = live
                .values()
                .filter(|c| candidate(c))
                .min_by_key(|c| c.rank())
                .map(|c| c.id);
            id.and_then(|id| live.remove(&id))
        };
        match victim {
            Some(c) => {
                // Stored if the task is not waiting yet: it sees it next.
                c.evicted.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // Insertions and removals cannot leave the map inconsistent.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Conn {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A delivery on this connection was signed with the webhook secret.
    pub fn trust(&self) {
        self.since.store(millis(self.epoch), Relaxed);
        self.trusted.store(true, Relaxed);
    }

    /// Lowest goes first: untrusted before trusted, then the oldest.
    fn rank(&self) -> (bool, u64, u64) {
        (
            self.trusted.load(Relaxed),
            self.since.load(Relaxed),
            self.id,
        )
    }

    /// Bytes moved on the connection.
    pub fn moved(&self) {
        self.moved_at.store(millis(self.epoch), Relaxed);
    }

    /// When bytes last moved on the connection.
    pub fn last_moved(&self) -> Instant {
        self.epoch + Duration::from_millis(self.moved_at.load(Relaxed))
    }

    /// Its request holds `bytes` more of the body budget.
    pub fn hold(&self, bytes: usize) {
        self.held.fetch_add(bytes, Relaxed);
    }

    /// Its request gave `bytes` of the body budget back.
    pub fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Relaxed);
    }

    /// Resolves once the connection was told to close.
    pub fn evicted(&self) -> Notified<'_> {
        self.evicted.notified()
    }
}

/// A connection's place in the register, given up when dropped (when the
/// connection's task ends).
pub(crate) struct Registration {
    conns: Arc<Connections>,
    conn: Arc<Conn>,
}

impl Registration {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.conn.id);
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn told_to_close(conn: &Conn) -> bool {
        tokio::time::timeout(Duration::from_millis(50), conn.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn past_the_cap_the_oldest_untrusted_goes_not_a_trusted_one() {
        let conns = Connections::new(2);
        let a = conns.admit();
        a.conn().trust();
        // Accepted after a's signed delivery, and still it goes first.
        std::thread::sleep(Duration::from_millis(2));
        let b = conns.admit();
        let c = conns.admit();
        assert_eq!(conns.len(), 2);
        assert!(told_to_close(b.conn()).await);
        assert!(!told_to_close(a.conn()).await);
        assert!(!told_to_close(c.conn()).await, "never the new one");
        drop(b);
        assert_eq!(conns.len(), 2, "b was out of the register already");
        drop(a);
        assert_eq!(conns.len(), 1);
    }

    #[tokio::test]
    async fn among_equals_the_oldest_goes() {
        let conns = Connections::new(3);
        let regs: Vec<_> = (0..4).map(|_| conns.admit()).collect();
        assert!(told_to_close(regs[0].conn()).await);
        for r in &regs[1..] {
            assert!(!told_to_close(r.conn()).await);
        }
    }

    #[tokio::test]
    async fn among_trusted_ones_the_least_recently_trusted_goes() {
        let conns = Connections::new(2);
        let a = conns.admit();
        let b = conns.admit();
        b.conn().trust();
        std::thread::sleep(Duration::from_millis(2));
        a.conn().trust();
        assert!(conns.evict_any());
        assert!(told_to_close(b.conn()).await);
        assert!(!told_to_close(a.conn()).await);
    }

    #[tokio::test]
    async fn only_other_holders_make_room_in_the_budget() {
        let conns = Connections::new(10);
        let idle = conns.admit();
        let me = conns.admit();
        me.conn().hold(100);
        assert!(
            !conns.evict_holder(me.conn().id()),
            "nobody else holds bytes"
        );
        let holder = conns.admit();
        holder.conn().hold(10);
        holder.conn().release(10);
        assert!(!conns.evict_holder(me.conn().id()), "it gave them back");
        holder.conn().hold(10);
        assert!(conns.evict_holder(me.conn().id()));
        assert!(told_to_close(holder.conn()).await);
        assert!(!told_to_close(idle.conn()).await);
        assert!(!told_to_close(me.conn()).await);
    }
}
