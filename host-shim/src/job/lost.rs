//! Jobs no webhook brought: every `github.reconcile_interval` (a minute by
//! default) the reconciler ([`crate::github::reconcile::Reconciler`]) asks
//! GitHub for the installation's queued jobs, within its hourly API
//! budget, and the ones a pool serves that Kiln does not know are queued
//! as if their webhook had arrived. A lost or late delivery, a delivery
//! refused while the journal's disk was full, a job whose VM could not
//! start: each runs within two intervals. Jobs of scale-set pools are
//! left to their scale set's queue, which loses nothing.

use std::sync::Arc;

use super::Shared;
use crate::github::reconcile::{LostJob, Reconciler, Settings};
use crate::scheduler::QueuedJob;

/// Where found jobs go: true when queued.
pub type Enqueue = Arc<dyn Fn(QueuedJob) -> bool + Send + Sync>;

impl Shared {
    /// Runs the reconciler until the process ends.
    pub(super) async fn find_lost(self: Arc<Self>, enqueue: Enqueue) {
        if self
            .config_pools
            .iter()
            .all(|p| p.source.scale_set().is_some())
        {
            return;
        }
        let settings = Settings {
            interval: self.reconcile_interval,
            ..Settings::default()
        };
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconciler: Option<Reconciler> = None;
        loop {
            tick.tick().await;
            let r = match reconciler.as_mut() {
                Some(r) => r,
                None => match self.github.installation_of(&self.scope).await {
                    Ok(id) => reconciler.insert(Reconciler::new(
                        Arc::clone(&self.github),
                        id,
                        self.scope.clone(),
                        settings.clone(),
                    )),
                    Err(e) => {
                        tracing::error!(error = %e, scope = %self.scope, "the reconciler cannot find the App's installation; it tries again next interval");
                        continue;
                    }
                },
            };
            let installation = r.installation_id();
            let pass = r
                .pass(
                    |labels| self.webhook_pool_for(labels).is_some(),
                    |job_id| self.ledger.knows(job_id),
                )
                .await;
            self.metrics
                .reconcile_pass(pass.as_ref().ok().map(|r| r.found.len()));
            match pass {
                Ok(report) => {
                    for lost in report.found {
                        self.queue_lost(lost, installation, &enqueue);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconciler pass failed"),
            }
        }
    }

    /// The pool a job's labels go to, when it takes its jobs from webhooks.
    fn webhook_pool_for(&self, labels: &[String]) -> Option<&Arc<crate::config::Pool>> {
        self.config_pools
            .iter()
            .find(|p| p.accepts(labels))
            .filter(|p| p.source.scale_set().is_none())
    }

    fn queue_lost(&self, lost: LostJob, installation_id: u64, enqueue: &Enqueue) {
        let Some(pool) = self.webhook_pool_for(&lost.labels) else {
            return;
        };
        let job = QueuedJob {
            delivery: "reconciler".into(),
            job_id: lost.job_id,
            run_id: lost.run_id,
            installation_id,
            repository: lost.repository(),
            labels: lost.labels,
            pool: Arc::clone(pool),
            received: std::time::Instant::now(),
        };
        tracing::warn!(job_id = job.job_id, repository = %job.repository, pool = %pool.name, "queued job without a webhook found: queued now");
        if self.ledger.queued(&job).is_ok() && !enqueue(job.clone()) {
            self.ledger.finished(job.job_id);
        }
    }
}
