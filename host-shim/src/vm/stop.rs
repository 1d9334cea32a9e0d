//! Asking a running VM to stop: first by cancelling its job gracefully,
//! then by killing it. Levels only go up.

use std::sync::Arc;

use tokio::sync::watch;

/// How hard a VM is being asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum StopLevel {
    /// Not asked to stop.
    #[default]
    Run,
    /// Send the guest `Cancel` (SIGTERM, the grace period, SIGKILL), wait
    /// for it to report the job's end, then tear down as usual.
    Cancel,
    /// Kill the VM now and tear down.
    Kill,
}

/// The sending side; cheap to clone (e.g. into a signal handler).
#[derive(Debug, Clone)]
pub struct StopHandle {
    tx: Arc<watch::Sender<StopLevel>>,
}

/// The receiving side, handed to [`super::Launcher::run`].
#[derive(Debug, Clone)]
pub struct StopSignal {
    rx: watch::Receiver<StopLevel>,
    /// Keeps [`StopSignal::never`]'s channel open.
    _keep: Option<Arc<watch::Sender<StopLevel>>>,
}

pub fn stop_channel() -> (StopHandle, StopSignal) {
    let (tx, rx) = watch::channel(StopLevel::Run);
    (
        StopHandle { tx: Arc::new(tx) },
        StopSignal { rx, _keep: None },
    )
}

impl StopHandle {
    /// Raises the level to at least `level`.
    pub fn raise(&self, level: StopLevel) {
        self.tx.send_if_modified(|cur| {
            if level > *cur {
                *cur = level;
                true
            } else {
                false
            }
        });
    }

    pub fn cancel(&self) {
        self.raise(StopLevel::Cancel);
    }

    pub fn kill(&self) {
        self.raise(StopLevel::Kill);
    }

    /// One step up (Run to Cancel, Cancel to Kill); returns the new level.
    /// What a signal handler does: the first signal cancels, the next kills.
    pub fn escalate(&self) -> StopLevel {
        let mut now = StopLevel::Run;
        self.tx.send_modify(|cur| {
            *cur = match *cur {
                StopLevel::Run => StopLevel::Cancel,
                _ => StopLevel::Kill,
            };
            now = *cur;
        });
        now
    }

    pub fn level(&self) -> StopLevel {
        *self.tx.borrow()
    }
}

impl StopSignal {
    /// A signal that is never raised.
    pub fn never() -> StopSignal {
        let (tx, rx) = watch::channel(StopLevel::Run);
        StopSignal {
            rx,
            _keep: Some(Arc::new(tx)),
        }
    }

    pub fn level(&self) -> StopLevel {
        *self.rx.borrow()
    }

    /// Waits until the level is above `than` and returns it. Pends forever
    /// once every handle is gone. Cancel-safe.
    pub async fn above(&mut self, than: StopLevel) -> StopLevel {
        // The borrow must end before any await: it holds a lock.
        let reached = self.rx.wait_for(|l| *l > than).await.map(|l| *l);
        match reached {
            Ok(l) => l,
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn levels_only_go_up() {
        let (h, mut s) = stop_channel();
        assert_eq!(s.level(), StopLevel::Run);
        assert_eq!(h.escalate(), StopLevel::Cancel);
        assert_eq!(s.above(StopLevel::Run).await, StopLevel::Cancel);
        h.raise(StopLevel::Run);
        assert_eq!(s.level(), StopLevel::Cancel);
        assert_eq!(h.escalate(), StopLevel::Kill);
        assert_eq!(h.escalate(), StopLevel::Kill);
        assert_eq!(s.above(StopLevel::Cancel).await, StopLevel::Kill);
    }

    #[tokio::test]
    async fn never_and_dropped_handles_pend() {
        let mut never = StopSignal::never();
        let r = tokio::time::timeout(Duration::from_millis(20), never.above(StopLevel::Run)).await;
        assert!(r.is_err());
        let (h, mut s) = stop_channel();
        drop(h);
        let r = tokio::time::timeout(Duration::from_millis(20), s.above(StopLevel::Run)).await;
        assert!(r.is_err());
    }
}
