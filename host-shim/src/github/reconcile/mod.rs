//! GitHub as the source of truth: what Kiln does when a webhook was lost, a
//! runner registration outlived its VM, or Kiln's own infrastructure failed
//! a job. Library pieces; the daemon owns the timers and the journal.
//!
//! - [`lost`] — the [`Reconciler`]: queued jobs no webhook told Kiln about,
//!   found within a bounded, hourly API budget.
//! - [`stale`] — deleting offline `kiln-` runner registrations Kiln no
//!   longer knows.
//! - [`rerun`] — re-running a job once when Kiln's infrastructure failed it.
//! - [`budget`] — the sliding-hour request budget.

pub mod budget;
pub mod lost;
pub mod rerun;
pub mod stale;

pub use budget::Budget;
pub use lost::{LostJob, PassReport, Reconciler, Settings};
pub use rerun::{decide, rerun_if_due, CompletedJob, RerunDecision, RerunPolicy};
pub use stale::{is_stale, sweep_stale_runners, SweepReport, RUNNER_PREFIX};
