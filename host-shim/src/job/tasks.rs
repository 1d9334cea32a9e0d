//! The jobs' own tasks, counted so that `kiln serve` can wait for their
//! clean-up (VM teardown, runner deletion) before the runtime goes away.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// How many job tasks are alive. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct JobTasks {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    alive: Mutex<usize>,
    gone: Notify,
}

/// Held by a job task; dropping it counts the task as gone.
#[derive(Debug)]
pub struct TaskToken {
    inner: Arc<Inner>,
}

impl JobTasks {
    pub fn token(&self) -> TaskToken {
        *self.lock() += 1;
        TaskToken {
            inner: Arc::clone(&self.inner),
        }
    }

    pub fn alive(&self) -> usize {
        *self.lock()
    }

    /// Waits until no job task is alive, at most `within`. Returns how many
    /// still are.
    pub async fn wait(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let gone = self.inner.gone.notified();
            tokio::pin!(gone);
            // Registered before the check: a wake-up in between is not lost.
            gone.as_mut().enable();
            let alive = self.alive();
            if alive == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                return self.alive();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // A counter cannot be left inconsistent.
        self.inner
            .alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        let mut alive = self
            .inner
            .alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *alive = alive.saturating_sub(1);
        drop(alive);
        self.inner.gone.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_tokens_and_gives_up_after_the_bound() {
        let tasks = JobTasks::default();
        assert_eq!(tasks.wait(Duration::from_millis(1)).await, 0);
        let a = tasks.token();
        let b = tasks.token();
        assert_eq!(tasks.wait(Duration::from_millis(20)).await, 2);
        drop(a);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(b);
        });
        assert_eq!(tasks.wait(Duration::from_secs(5)).await, 0);
    }
}
