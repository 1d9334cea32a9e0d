//! The stable names of `kiln serve`'s structured events: the `event`
//! field of the log lines that tools (the bench, tests, log shippers)
//! depend on. The human text of these lines may change; these names and
//! the fields listed here do not, unless this list says so.
//!
//! Every line about a job is logged in the job's span, so with
//! `log_format = "json"` it also carries `job_id`, `pool`, `runner` and,
//! once known, `runner_id` (GitHub's) and `vm` (the VM's id, `kiln-N`).
//! Below, "(job span)" marks those events.
//!
//! The daemon:
//! - [`SERVE_LIMITS`] `serve_limits`: `fd_limit`, `max_connections`,
//!   `header_timeout`, `idle_timeout`, `body_budget_bytes`.
//! - [`SERVE_LISTENING`] `serve_listening`: `listen` (the webhook address, port
//!   included; absent without a webhook port), `host_vcpus`,
//!   `host_memory_mib`, `scope`, `https`, `scale_sets` (how many).
//! - [`SERVE_DRAINING`] `serve_draining`: the first signal; `dropped_from_queue`
//!   (jobs that never ran), `running`.
//! - [`SERVE_STOPPED`] `serve_stopped`: the last line of a clean stop.
//! - [`SERVE_FAILED`] `serve_failed` (JSON only; text writes the plain
//!   message): `error`, why `kiln serve` stops after its logs started.
//! - [`RECOVERY_CLEANUP`] `recovery_cleanup`: the start-up scan of what a
//!   previous kiln left; `vms` (how many VMs it found), `clean`,
//!   `stale_leases`, `ms`.
//! - [`JOURNAL_MOVED_ASIDE`] `journal_moved_aside`: an unreadable journal;
//!   `from`, `to` (where it went), `reason`.
//! - [`JOURNAL_FULL`] `journal_full`: the journal's filesystem is full;
//!   new jobs are refused. `error`.
//! - [`EGRESS_POLICY_LOST`] `egress_policy_lost`: the egress table is
//!   gone; every VM is killed. `error`.
//! - [`TLS_RELOADED`] `tls_reloaded`: changed certificate files are
//!   served now; `cert`, `key`.
//! - [`TLS_RELOAD_FAILED`] `tls_reload_failed`: changed certificate files
//!   cannot be used; the previous certificate stays. `error`.
//! - [`ACME_CERTIFICATE`] `acme_certificate`: a certificate from the ACME
//!   CA is served; `domains`, `not_after`, `source` (`stored`: kept from
//!   before a restart; `new`: just issued, with `renew_at`).
//! - [`ACME_FAILED`] `acme_failed`: no certificate this time; `domains`,
//!   `error`, `retry_in`.
//! - [`ADMIN_LISTENING`] `admin_listening`: the admin socket is up;
//!   `socket`, and `metrics` (the metrics listener's address) unless it is off.
//!
//! A scale-set pool's queue (every line has `scale_set`, and `session`
//! once one is open):
//! - [`SCALE_SET_READY`] `scale_set_ready`: a message session is open;
//!   `scale_set_id`, `created` (the scale set was made now), `labels`.
//! - [`SCALE_SET_STANDBY`] `scale_set_standby`: another session holds the
//!   scale set (HTTP 409): waiting, not failing; `retry_in`.
//! - [`SCALE_SET_MESSAGE`] `scale_set_message`: a message from the queue;
//!   `message_id`, `assigned`, `available`, `started`, `completed`, `queued`
//!   (jobs recorded and queued now), `replayed` (true: recorded before, a
//!   redelivery).
//! - [`SCALE_SET_ACKED`] `scale_set_acked`: the message is deleted at
//!   GitHub, after its jobs were recorded; `message_id`.
//! - [`SCALE_SET_RECOVERING`] `scale_set_recovering`: GitHub lost or refused
//!   something and the listener mends it; `problem` (`session_gone`,
//!   `scale_set_gone`, `queue_token`, `admin_token`, `error`), `error`,
//!   `retry_in`.
//! - [`SCALE_SET_JOB_CANCELED`] `scale_set_job_canceled`: GitHub took an
//!   assigned job back (or cancelled it) before it ran: it leaves the queue;
//!   `job_id`, `job_key`, `result`.
//! - [`WEBHOOK_SCALE_SET_JOB`] `webhook_scale_set_job`: a webhook queued a
//!   job for a scale-set pool: noted only, never run from the webhook;
//!   `delivery`, `job_id`, `pool`.
//!
//! An operator's `kiln cancel`:
//! - [`JOB_CANCELLED`] `job_cancelled`: `job_id`, `pool`, `was` (`queued`:
//!   dequeued; `running`: its runner is being stopped, and the job then
//!   ends with one of the four ends below).
//!
//! A job, in order:
//! - [`JOB_QUEUED`] `job_queued`: a webhook or the reconciler queued it;
//!   `delivery`, `job_id`, `pool`, `queued` (the queue's length).
//! - [`JOB_NOT_QUEUED`] `job_not_queued` (job span): GitHub says it is
//!   not queued any more (or cannot say): no runner, no VM; `delivery`,
//!   `repository`, `github_state` (the job's status on GitHub,
//!   `not_found`, or `unknown` when GitHub could not be asked).
//! - [`JOB_NO_JIT_CONFIG`] `job_no_jit_config` (job span): GitHub gave no
//!   JIT runner config: no VM; `delivery`, `repository`, `error`.
//! - [`JOB_WAITS`] `job_waits` (job span): every address of the pool, or
//!   the room for its disk, is taken: the job waits; `lacking`.
//! - [`VM_STARTING`] `vm_starting` (job span): the VM is prepared, its VMM
//!   starts; `vm`, `cid`, `backend`, `dir`.
//! - [`JOB_IDLE_STOPPED`] `job_idle_stopped` (job span): the runner took no
//!   job within the pool's `idle_timeout`: its VM is stopped;
//!   `idle_timeout`.
//! - [`VM_DONE`] `vm_done` (job span): the VM is torn down; `vm`, `timing`.
//! - One of the four ends (job span), with `runner_id`, `exit`, `queued_ms`,
//!   `jit_ms`, `total_ms`, `log` and, when a VM ran, `backend`, `stop`,
//!   `vm_ms`, `job_ms`, `timing`, `teardown`:
//!   [`JOB_DONE`] `job_done` (the runner exited 0),
//!   [`JOB_RUNNER_FAILED`] `job_runner_failed` (it exited otherwise),
//!   [`JOB_FAILED`] `job_failed` (the VM failed, or its teardown did),
//!   [`JOB_WITHOUT_VM`] `job_without_vm` (no VM ran: not queued any more,
//!   no JIT config, cancelled before).

/// `kiln serve`'s webhook server limits, at start.
pub const SERVE_LIMITS: &str = "serve_limits";
/// `kiln serve` listens: the `listen` field has the port.
pub const SERVE_LISTENING: &str = "serve_listening";
/// The first shutdown signal: no new webhooks, running jobs go on.
pub const SERVE_DRAINING: &str = "serve_draining";
/// `kiln serve` stopped cleanly.
pub const SERVE_STOPPED: &str = "serve_stopped";
/// `kiln serve` stops on an error (JSON lines only).
pub const SERVE_FAILED: &str = "serve_failed";
/// The start-up scan removed what a previous kiln left.
pub const RECOVERY_CLEANUP: &str = "recovery_cleanup";
/// An unreadable journal was moved aside.
pub const JOURNAL_MOVED_ASIDE: &str = "journal_moved_aside";
/// The journal's filesystem is full.
pub const JOURNAL_FULL: &str = "journal_full";
/// The egress policy table is gone.
pub const EGRESS_POLICY_LOST: &str = "egress_policy_lost";
/// A job was queued.
pub const JOB_QUEUED: &str = "job_queued";
/// GitHub says the job is not queued any more.
pub const JOB_NOT_QUEUED: &str = "job_not_queued";
/// No JIT runner config from GitHub.
pub const JOB_NO_JIT_CONFIG: &str = "job_no_jit_config";
/// The job waits for an address or disk room.
pub const JOB_WAITS: &str = "job_waits";
/// A job's VM starts.
pub const VM_STARTING: &str = "vm_starting";
/// The runner took no job in time: its VM is stopped.
pub const JOB_IDLE_STOPPED: &str = "job_idle_stopped";
/// A VM is done and torn down.
pub const VM_DONE: &str = "vm_done";
/// The job's runner exited 0.
pub const JOB_DONE: &str = "job_done";
/// The job's runner exited non-zero (or by a signal).
pub const JOB_RUNNER_FAILED: &str = "job_runner_failed";
/// The job's VM failed, or its teardown did.
pub const JOB_FAILED: &str = "job_failed";
/// The job ended without a VM.
pub const JOB_WITHOUT_VM: &str = "job_without_vm";

/// Changed certificate files are served.
pub const TLS_RELOADED: &str = "tls_reloaded";
/// Changed certificate files cannot be used.
pub const TLS_RELOAD_FAILED: &str = "tls_reload_failed";
/// An ACME certificate is served.
pub const ACME_CERTIFICATE: &str = "acme_certificate";
/// Getting an ACME certificate failed; it is retried.
pub const ACME_FAILED: &str = "acme_failed";
/// The admin socket (and the metrics listener) are up.
pub const ADMIN_LISTENING: &str = "admin_listening";
/// An operator cancelled a job.
pub const JOB_CANCELLED: &str = "job_cancelled";

/// A scale set's message session is open.
pub const SCALE_SET_READY: &str = "scale_set_ready";
/// Another session holds the scale set: waiting.
pub const SCALE_SET_STANDBY: &str = "scale_set_standby";
/// A message from a scale set's queue.
pub const SCALE_SET_MESSAGE: &str = "scale_set_message";
/// A message deleted at GitHub after its jobs were recorded.
pub const SCALE_SET_ACKED: &str = "scale_set_acked";
/// The scale-set listener mends a failure.
pub const SCALE_SET_RECOVERING: &str = "scale_set_recovering";
/// GitHub took back or cancelled a scale-set job before it ran.
pub const SCALE_SET_JOB_CANCELED: &str = "scale_set_job_canceled";
/// A webhook for a scale-set pool's job: noted, not run.
pub const WEBHOOK_SCALE_SET_JOB: &str = "webhook_scale_set_job";

/// Every name above, for tests that they stay distinct and snake_case.
pub const ALL: &[&str] = &[
    SERVE_LIMITS,
    SERVE_LISTENING,
    SERVE_DRAINING,
    SERVE_STOPPED,
    SERVE_FAILED,
    RECOVERY_CLEANUP,
    JOURNAL_MOVED_ASIDE,
    JOURNAL_FULL,
    EGRESS_POLICY_LOST,
    JOB_QUEUED,
    JOB_NOT_QUEUED,
    JOB_NO_JIT_CONFIG,
    JOB_WAITS,
    VM_STARTING,
    JOB_IDLE_STOPPED,
    VM_DONE,
    JOB_DONE,
    JOB_RUNNER_FAILED,
    JOB_FAILED,
    JOB_WITHOUT_VM,
    TLS_RELOADED,
    TLS_RELOAD_FAILED,
    ACME_CERTIFICATE,
    ACME_FAILED,
    ADMIN_LISTENING,
    JOB_CANCELLED,
    SCALE_SET_READY,
    SCALE_SET_STANDBY,
    SCALE_SET_MESSAGE,
    SCALE_SET_ACKED,
    SCALE_SET_RECOVERING,
    SCALE_SET_JOB_CANCELED,
    WEBHOOK_SCALE_SET_JOB,
];
