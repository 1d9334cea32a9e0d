//! The scale-set job source: for each `source = "scale-set"` pool, a
//! listener that keeps the pool's runner scale set registered, holds its
//! message session and long-polls the queue over outbound HTTPS — no
//! public endpoint. Jobs GitHub assigns are recorded in the journal, then
//! the message is deleted at GitHub, then the jobs go to the same
//! [`Scheduler`] webhooks feed: a restart neither loses nor doubles one.
//!
//! - [`listener`] — one scale set's loop: register, session, poll, recover.
//! - [`backoff`] — waits between failed attempts.
//!
//! Several hosts: each registers its own scale set (by default
//! `kiln-<pool>-<host name>`) with the same labels in the same runner
//! group; GitHub spreads jobs between them, and each host's capacity
//! header keeps it from taking more than it can start.

mod backoff;
pub mod listener;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::job::Jobs;
use crate::scheduler::Scheduler;

/// The running listeners; [`Listeners::stop`] closes their sessions.
pub struct Listeners {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    /// One listener per scale-set pool of `jobs`.
    pub fn start(config: &Config, jobs: &Jobs, scheduler: &Scheduler<Jobs>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let owner = listener::owner_name();
        let tasks = jobs
            .scale_sets()
            .into_iter()
            .map(|set| {
                let l = listener::Listener::new(
                    Arc::clone(&set),
                    jobs.clone(),
                    scheduler.clone(),
                    listener::Settings {
                        runner_group_id: config.github.runner_group_id,
                        owner: owner.clone(),
                    },
                    stopped.clone(),
                );
                tokio::spawn(l.run())
            })
            .collect();
        Self { stop, tasks }
    }

    /// How many scale sets are listened to.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops polling and closes every session (GitHub then assigns these
    /// scale sets nothing more); waits for that, at most `within`.
    pub async fn stop(self, within: std::time::Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("scale-set listeners did not close their sessions in time");
        }
    }
}
