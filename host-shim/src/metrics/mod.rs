//! `kiln serve`'s Prometheus metrics: one [`Metrics`] per daemon, shared
//! by every layer that counts something, scraped on the admin listener
//! ([`crate::admin`]) as OpenMetrics text, or as Prometheus text for
//! clients that do not ask for OpenMetrics ([`to_prometheus_text`]).
//!
//! A leaf: it takes plain names and numbers, so the layers that feed it
//! (`github`, `scheduler`, `job`, `serve`) keep pointing down. What is a
//! state rather than an event (the queue, the VMs running, the capacity in
//! use, the egress policy's counters) is sampled at each scrape by
//! [`Metrics::sample_scheduler`] and [`Metrics::sample_egress`].
//!
//! Every metric, as scraped (`kiln_` prefix):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `webhooks_total` | counter | `status` |
//! | `jobs_received_total` | counter | `pool` |
//! | `jobs_started_total` | counter | `pool` |
//! | `jobs_finished_total` | counter | `pool`, `result` |
//! | `jobs_rerun_total` | counter | `pool` |
//! | `jobs_cancelled_total` | counter | `pool`, `by` |
//! | `jobs_queued` | gauge | `pool` |
//! | `vms_running` | gauge | `pool` |
//! | `capacity_vcpus`, `capacity_vcpus_in_use` | gauge | |
//! | `capacity_memory_bytes`, `capacity_memory_in_use_bytes` | gauge | |
//! | `webhook_to_runner_seconds` | histogram | `pool` |
//! | `boot_phase_seconds` | histogram | `phase` |
//! | `job_duration_seconds` | histogram | `pool` |
//! | `teardown_seconds` | histogram | |
//! | `egress_packets_total` | counter | `category` |
//! | `github_requests_total` | counter | `method`, `status` |
//! | `github_request_errors_total` | counter | `kind` |
//! | `github_rate_limit_remaining` | gauge | |
//! | `reconcile_passes_total` | counter | `result` |
//! | `reconcile_jobs_found_total` | counter | |
//! | `scale_set_messages_total` | counter | `scale_set`, `kind` (`new`, `replayed`) |
//! | `scale_set_jobs_total` | counter | `scale_set`, `event` (`assigned`, `available`, `started`, `completed`) |
//! | `scale_set_recoveries_total` | counter | `scale_set`, `problem` |
//! | `scale_set_capacity` | gauge | `scale_set` (the last `X-ScaleSetMaxCapacity` sent) |
//! | `scale_set_session` | gauge | `scale_set` (1 while a session is open) |

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

mod text;
pub use text::{to_prometheus_text, CONTENT_TYPE as PROMETHEUS_TEXT};

/// The content type of [`Metrics::encode`]'s text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolResult {
    pool: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolBy {
    pool: String,
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleSetLabel {
    scale_set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleSetKind {
    scale_set: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleSetEvent {
    scale_set: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleSetProblem {
    scale_set: String,
    problem: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    method: &'static str,
    status: u16,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a job that got as far as the scheduler ended, for
/// `jobs_finished_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobResult {
    /// The runner exited 0.
    Succeeded,
    /// The runner exited otherwise, or the guest could not run it.
    Failed,
    /// The VM failed (VMM died, guest went silent, could not start).
    VmFailed,
    /// GitHub had no job for the runner any more, or no JIT config: no VM.
    NoVm,
}

impl JobResult {
    fn label(self) -> &'static str {
        match self {
            JobResult::Succeeded => "succeeded",
            JobResult::Failed => "failed",
            JobResult::VmFailed => "vm_failed",
            JobResult::NoVm => "no_vm",
        }
    }
}

/// The daemon's metrics. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    webhooks: Family<StatusLabel, Counter>,
    received: Family<PoolLabel, Counter>,
    started: Family<PoolLabel, Counter>,
    finished: Family<PoolResult, Counter>,
    rerun: Family<PoolLabel, Counter>,
    cancelled: Family<PoolBy, Counter>,
    queued: Family<PoolLabel, Gauge>,
    vms: Family<PoolLabel, Gauge>,
    vcpus: Gauge,
    vcpus_used: Gauge,
    memory: Gauge,
    memory_used: Gauge,
    to_runner: Histograms<PoolLabel>,
    phases: Histograms<PhaseLabel>,
    job_duration: Histograms<PoolLabel>,
    teardown: Histogram,
    egress: Family<CategoryLabel, Counter>,
    /// nft's counts at the last sample: the counters advance by the difference.
    egress_seen: Mutex<Vec<(&'static str, u64)>>,
    github: Family<Request, Counter>,
    github_errors: Family<KindLabel, Counter>,
    rate_limit: Gauge,
    reconcile: Family<ResultLabel, Counter>,
    reconcile_found: Counter,
    ss_messages: Family<ScaleSetKind, Counter>,
    ss_jobs: Family<ScaleSetEvent, Counter>,
    ss_recoveries: Family<ScaleSetProblem, Counter>,
    ss_capacity: Family<ScaleSetLabel, Gauge>,
    ss_session: Family<ScaleSetLabel, Gauge>,
}

fn short_buckets() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn long_buckets() -> Histogram {
    // 0.1 s to ~7 h.
    Histogram::new(exponential_buckets(0.1, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("kiln"),
            webhooks: Family::default(),
            received: Family::default(),
            started: Family::default(),
            finished: Family::default(),
            rerun: Family::default(),
            cancelled: Family::default(),
            queued: Family::default(),
            vms: Family::default(),
            vcpus: Gauge::default(),
            vcpus_used: Gauge::default(),
            memory: Gauge::default(),
            memory_used: Gauge::default(),
            to_runner: Family::new_with_constructor(long_buckets),
            phases: Family::new_with_constructor(short_buckets),
            job_duration: Family::new_with_constructor(long_buckets),
            teardown: short_buckets(),
            egress: Family::default(),
            egress_seen: Mutex::new(Vec::new()),
            github: Family::default(),
            github_errors: Family::default(),
            rate_limit: Gauge::default(),
            reconcile: Family::default(),
            reconcile_found: Counter::default(),
            ss_messages: Family::default(),
            ss_jobs: Family::default(),
            ss_recoveries: Family::default(),
            ss_capacity: Family::default(),
            ss_session: Family::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "webhooks",
            "Webhook deliveries answered, by HTTP status (202 taken or ignored, 401 bad signature, 4xx refused, 503 no room)",
            self.webhooks.clone(),
        );
        r.register(
            "jobs_received",
            "Jobs queued for a pool (webhooks, the reconciler, recovery)",
            self.received.clone(),
        );
        r.register(
            "jobs_started",
            "Jobs the scheduler started",
            self.started.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs ended, by result (succeeded, failed, vm_failed, no_vm)",
            self.finished.clone(),
        );
        r.register(
            "jobs_rerun",
            "Workflow runs Kiln asked GitHub to re-run after an infrastructure failure",
            self.rerun.clone(),
        );
        r.register(
            "jobs_cancelled",
            "Jobs cancelled, by whom (github: a completed webhook while queued; operator: kiln cancel)",
            self.cancelled.clone(),
        );
        r.register(
            "jobs_queued",
            "Jobs waiting for capacity",
            self.queued.clone(),
        );
        r.register(
            "vms_running",
            "Jobs holding a VM's capacity",
            self.vms.clone(),
        );
        r.register(
            "capacity_vcpus",
            "vCPUs this host gives VMs",
            self.vcpus.clone(),
        );
        r.register(
            "capacity_vcpus_in_use",
            "vCPUs held by running VMs",
            self.vcpus_used.clone(),
        );
        r.register_with_unit(
            "capacity_memory",
            "Memory this host gives VMs",
            Unit::Bytes,
            self.memory.clone(),
        );
        r.register_with_unit(
            "capacity_memory_in_use",
            "Memory held by running VMs",
            Unit::Bytes,
            self.memory_used.clone(),
        );
        r.register_with_unit(
            "webhook_to_runner",
            "From the job's webhook to its runner's start in the guest",
            Unit::Seconds,
            self.to_runner.clone(),
        );
        r.register_with_unit(
            "boot_phase",
            "Each phase of a VM's life (prepare, vmm_start, pre_kernel, kernel, init, handshake, shutdown)",
            Unit::Seconds,
            self.phases.clone(),
        );
        r.register_with_unit(
            "job_duration",
            "The runner's run in the guest, spawn to exit",
            Unit::Seconds,
            self.job_duration.clone(),
        );
        r.register_with_unit(
            "teardown",
            "Removing a VM's every trace",
            Unit::Seconds,
            self.teardown.clone(),
        );
        r.register(
            "egress_packets",
            "Packets the egress policy counted, by category (drops by reason; dns_allowed and allowlisted accepted)",
            self.egress.clone(),
        );
        r.register(
            "github_requests",
            "GitHub API answers, by method and status",
            self.github.clone(),
        );
        r.register(
            "github_request_errors",
            "GitHub API requests with no answer (timeout, transport)",
            self.github_errors.clone(),
        );
        r.register(
            "github_rate_limit_remaining",
            "GitHub's x-ratelimit-remaining on the last answer that had it",
            self.rate_limit.clone(),
        );
        r.register(
            "reconcile_passes",
            "Reconciler passes looking for jobs no webhook brought, by result",
            self.reconcile.clone(),
        );
        r.register(
            "reconcile_jobs_found",
            "Queued jobs the reconciler found that no webhook brought",
            self.reconcile_found.clone(),
        );
        r.register(
            "scale_set_messages",
            "Scale-set queue messages read, by kind (new; replayed: recorded before, a redelivery)",
            self.ss_messages.clone(),
        );
        r.register(
            "scale_set_jobs",
            "Job messages from a scale set's queue, by event (assigned, available, started, completed)",
            self.ss_jobs.clone(),
        );
        r.register(
            "scale_set_recoveries",
            "Scale-set listener failures mended, by problem (session_gone, scale_set_gone, queue_token, error)",
            self.ss_recoveries.clone(),
        );
        r.register(
            "scale_set_capacity",
            "The jobs the scale set's last poll said this host can hold (X-ScaleSetMaxCapacity)",
            self.ss_capacity.clone(),
        );
        r.register(
            "scale_set_session",
            "1 while the scale set has an open message session here",
            self.ss_session.clone(),
        );
    }

    /// The OpenMetrics text of every metric ([`OPENMETRICS`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }

    /// Makes every per-pool series of `pools` exist from the start, at 0,
    /// so that a scrape shows them (and rates work) before the first job.
    pub fn know_pools<'a>(&self, pools: impl IntoIterator<Item = &'a str>) {
        for pool in pools {
            let label = pool_label(pool);
            self.received.get_or_create(&label).inc_by(0);
            self.started.get_or_create(&label).inc_by(0);
            self.rerun.get_or_create(&label).inc_by(0);
            self.queued.get_or_create(&label).inc_by(0);
            self.vms.get_or_create(&label).inc_by(0);
            for result in [
                JobResult::Succeeded,
                JobResult::Failed,
                JobResult::VmFailed,
                JobResult::NoVm,
            ] {
                self.finished
                    .get_or_create(&PoolResult {
                        pool: pool.to_owned(),
                        result: result.label(),
                    })
                    .inc_by(0);
            }
            for by in ["github", "operator"] {
                self.cancelled
                    .get_or_create(&PoolBy {
                        pool: pool.to_owned(),
                        by,
                    })
                    .inc_by(0);
            }
        }
    }

    /// A webhook delivery answered with `status` (202 taken or ignored,
    /// 401 bad signature, 4xx refused, 503 no room).
    pub fn webhook(&self, status: u16) {
        self.webhooks.get_or_create(&StatusLabel { status }).inc();
    }

    pub fn job_received(&self, pool: &str) {
        self.received.get_or_create(&pool_label(pool)).inc();
    }

    pub fn job_started(&self, pool: &str) {
        self.started.get_or_create(&pool_label(pool)).inc();
    }

    pub fn job_finished(&self, pool: &str, result: JobResult) {
        let labels = PoolResult {
            pool: pool.to_owned(),
            result: result.label(),
        };
        self.finished.get_or_create(&labels).inc();
    }

    pub fn job_rerun(&self, pool: &str) {
        self.rerun.get_or_create(&pool_label(pool)).inc();
    }

    /// `by`: `github` or `operator`.
    pub fn job_cancelled(&self, pool: &str, by: &'static str) {
        let labels = PoolBy {
            pool: pool.to_owned(),
            by,
        };
        self.cancelled.get_or_create(&labels).inc();
    }

    /// The runner started in the guest `since_webhook` after the webhook.
    pub fn runner_started(&self, pool: &str, since_webhook: Duration) {
        self.to_runner
            .get_or_create(&pool_label(pool))
            .observe(since_webhook.as_secs_f64());
    }

    /// One phase of a VM's life.
    pub fn boot_phase(&self, phase: &'static str, took: Duration) {
        self.phases
            .get_or_create(&PhaseLabel { phase })
            .observe(took.as_secs_f64());
    }

    pub fn job_duration(&self, pool: &str, took: Duration) {
        self.job_duration
            .get_or_create(&pool_label(pool))
            .observe(took.as_secs_f64());
    }

    pub fn teardown(&self, took: Duration) {
        self.teardown.observe(took.as_secs_f64());
    }

    /// GitHub answered `method` with `status`; `remaining` is its
    /// `x-ratelimit-remaining` when it sent one.
    pub fn github_answer(&self, method: &'static str, status: u16, remaining: Option<u64>) {
        self.github.get_or_create(&Request { method, status }).inc();
        if let Some(r) = remaining {
            self.rate_limit.set(i64::try_from(r).unwrap_or(i64::MAX));
        }
    }

    /// A GitHub request got no answer: `timeout` or `transport`.
    pub fn github_error(&self, kind: &'static str) {
        self.github_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// A message from scale set `scale_set`'s queue; `replayed`: recorded
    /// before. `events` counts its job messages by event.
    pub fn scale_set_message(
        &self,
        scale_set: &str,
        replayed: bool,
        events: &[(&'static str, usize)],
    ) {
        let kind = if replayed { "replayed" } else { "new" };
        self.ss_messages
            .get_or_create(&ScaleSetKind {
                scale_set: scale_set.to_owned(),
                kind,
            })
            .inc();
        for &(event, n) in events {
            self.ss_jobs
                .get_or_create(&ScaleSetEvent {
                    scale_set: scale_set.to_owned(),
                    event,
                })
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// The scale-set listener mends `problem`.
    pub fn scale_set_recovery(&self, scale_set: &str, problem: &'static str) {
        self.ss_recoveries
            .get_or_create(&ScaleSetProblem {
                scale_set: scale_set.to_owned(),
                problem,
            })
            .inc();
    }

    /// A poll of scale set `scale_set` announced `capacity`.
    pub fn scale_set_capacity(&self, scale_set: &str, capacity: u32) {
        self.ss_capacity
            .get_or_create(&ScaleSetLabel {
                scale_set: scale_set.to_owned(),
            })
            .set(i64::from(capacity));
    }

    /// Scale set `scale_set`'s session opened (`true`) or ended.
    pub fn scale_set_session(&self, scale_set: &str, open: bool) {
        self.ss_session
            .get_or_create(&ScaleSetLabel {
                scale_set: scale_set.to_owned(),
            })
            .set(i64::from(open));
    }

    /// A reconciler pass: `Some(found)` when it succeeded.
    pub fn reconcile_pass(&self, found: Option<usize>) {
        let result = if found.is_some() { "ok" } else { "failed" };
        self.reconcile.get_or_create(&ResultLabel { result }).inc();
        self.reconcile_found
            .inc_by(found.map_or(0, |n| u64::try_from(n).unwrap_or(u64::MAX)));
    }

    /// The scheduler's state now.
    pub fn sample_scheduler(&self, s: &SchedulerSample<'_>) {
        for (pool, queued, running) in s.pools {
            let label = pool_label(pool);
            self.queued
                .get_or_create(&label)
                .set(to_i64(u64::try_from(*queued).unwrap_or(u64::MAX)));
            self.vms
                .get_or_create(&label)
                .set(to_i64(u64::from(*running)));
        }
        self.vcpus.set(to_i64(u64::from(s.vcpus)));
        self.vcpus_used.set(to_i64(u64::from(s.vcpus_used)));
        self.memory
            .set(to_i64(s.memory_mib.saturating_mul(1 << 20)));
        self.memory_used
            .set(to_i64(s.memory_mib_used.saturating_mul(1 << 20)));
    }

    /// The egress policy's counters now, `(category, packets)`: each
    /// category's counter advances by what nft counted since the last
    /// sample (all of it when nft's count went down: the table was made
    /// anew).
    pub fn sample_egress(&self, counts: impl IntoIterator<Item = (&'static str, u64)>) {
        let mut seen = self
            .egress_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (category, now) in counts {
            let before = match seen.iter_mut().find(|(c, _)| *c == category) {
                Some((_, n)) => std::mem::replace(n, now),
                None => {
                    seen.push((category, now));
                    0
                }
            };
            let delta = if now >= before { now - before } else { now };
            self.egress
                .get_or_create(&CategoryLabel { category })
                .inc_by(delta);
        }
    }
}

/// What [`Metrics::sample_scheduler`] reads: `(pool, queued, running)` per
/// pool, and the host's capacity and use.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerSample<'a> {
    pub pools: &'a [(&'a str, usize, u32)],
    pub vcpus: u32,
    pub vcpus_used: u32,
    pub memory_mib: u64,
    pub memory_mib_used: u64,
}

fn pool_label(pool: &str) -> PoolLabel {
    PoolLabel {
        pool: pool.to_owned(),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
