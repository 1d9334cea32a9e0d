//! GitHub: webhooks in, and (for the job lifecycle, [`crate::job`]) the App's REST calls out.
//!
//! - [`webhook`] — `X-Hub-Signature-256` check and the typed `workflow_job` payload.
//! - [`scope`] — where runners register: a repository, an organization or an enterprise.
//! - [`app`] — App authentication: the RS256 JWT and cached installation tokens ([`GithubApp`]).
//! - [`jit`] — just-in-time runner configs.
//! - [`jobs`] — a workflow job's status now (is it still queued?).
//! - [`runners`] — whether a runner is busy; deleting runner registrations.
//! - [`lists`] — installation repositories, queued runs, a run's jobs, the
//!   scope's runners; re-running a job.
//! - [`conditional`] — `ETag`/`If-None-Match` requests that cost no rate limit
//!   when nothing changed.
//! - [`reconcile`] — lost webhooks, stale runners, re-running jobs Kiln's
//!   infrastructure failed.
//! - [`scaleset`] — the runner scale-set queue: jobs without webhooks.
//! - [`client`] — HTTP: timeouts, retries, rate limits, TLS.
//! - [`error`] — [`GithubError`]: names the request, never a token or JIT config.

pub mod app;
pub mod client;
pub mod conditional;
pub mod error;
pub mod jit;
pub mod jobs;
pub mod lists;
pub mod reconcile;
pub mod runners;
pub mod scaleset;
pub mod scope;
pub mod webhook;

pub use app::GithubApp;
pub use client::{ClientPolicy, RateLimit};
pub use conditional::{Cost, EtagCache};
pub use error::GithubError;
pub use jit::{JitConfig, JitRequest};
pub use jobs::{JobConclusion, JobState, JobStatus};
pub use lists::{Page, Repository, RunFilter, Runner, WorkflowJob, WorkflowRun};
pub use runners::RunnerState;
pub use scope::RunnerScope;
