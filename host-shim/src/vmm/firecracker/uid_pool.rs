//! One uid (and the gid of the same number) per running VM, so that a
//! Firecracker escaping its VM cannot touch another VM's files or processes.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};

use super::FirecrackerError;

/// The uids free for jails. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct UidPool {
    inner: Arc<Mutex<PoolState>>,
}

#[derive(Debug)]
struct PoolState {
    range: RangeInclusive<u32>,
    in_use: BTreeSet<u32>,
    /// Where the next search starts: rotating through the range keeps a uid
    /// that was just released out of use for as long as possible, in case
    /// anything it owned outlived its VM.
    next: u32,
}

/// A uid held by one VM; it returns to the pool when dropped.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    pool: Arc<Mutex<PoolState>>,
}

impl UidPool {
    pub fn new(range: RangeInclusive<u32>) -> Self {
        let next = *range.start();
        Self {
            inner: Arc::new(Mutex::new(PoolState {
                range,
                in_use: BTreeSet::new(),
                next,
            })),
        }
    }

    pub fn acquire(&self) -> Result<UidLease, FirecrackerError> {
        let mut state = lock(&self.inner);
        let (start, end) = (*state.range.start(), *state.range.end());
        let from_next = state.next..=end;
        let wrapped = start..state.next;
        let found = from_next
            .chain(wrapped)
            .find(|uid| !state.in_use.contains(uid));
        let Some(uid) = found else {
            return Err(FirecrackerError::UidsExhausted {
                start,
                end,
                in_use: state.in_use.len(),
            });
        };
        state.in_use.insert(uid);
        state.next = if uid == end { start } else { uid + 1 };
        Ok(UidLease {
            uid,
            pool: Arc::clone(&self.inner),
        })
    }

    /// How many uids are held right now.
    pub fn in_use(&self) -> usize {
        lock(&self.inner).in_use.len()
    }
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Jails use the gid with the same number as their uid.
    pub fn gid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        lock(&self.pool).in_use.remove(&self.uid);
    }
}

/// The state stays consistent even if a holder panicked (every update is a
/// single insert or remove), so a poisoned lock is still usable.
fn lock(m: &Mutex<PoolState>) -> MutexGuard<'_, PoolState> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn leases_are_unique_and_rotate() {
        let pool = UidPool::new(100..=102);
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        assert_eq!((a.uid(), b.uid()), (100, 101));
        assert_eq!(a.gid(), a.uid());
        drop(a);
        // 100 is free again, but the search continues after the last grant.
        let c = pool.acquire().unwrap();
        assert_eq!(c.uid(), 102);
        let d = pool.acquire().unwrap();
        assert_eq!(d.uid(), 100);
        assert_eq!(pool.in_use(), 3);
    }

    #[test]
    fn exhaustion_is_an_error_and_release_fixes_it() {
        let pool = UidPool::new(7..=7);
        let a = pool.acquire().unwrap();
        let err = pool.acquire().unwrap_err();
        assert!(
            matches!(
                err,
                FirecrackerError::UidsExhausted {
                    start: 7,
                    end: 7,
                    in_use: 1
                }
            ),
            "{err}"
        );
        drop(a);
        assert_eq!(pool.acquire().unwrap().uid(), 7);
        assert_eq!(pool.in_use(), 0);
    }
}
