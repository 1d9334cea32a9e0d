//! GitHub's runner scale-set protocol, as Kiln's job source that needs no
//! public endpoint (see docs/scale-set.md): admin credentials from the
//! App, scale sets, message sessions, the long-polled queue, job
//! acquisition (GHES) and JIT configs minted from the scale set.
//!
//! Written on Kiln's own HTTP client rather than with the `scaleset`
//! crate: that crate brings reqwest and aws-lc-rs (a second HTTP and TLS
//! stack beside hyper + rustls/ring), and its listener decides when a
//! message is acknowledged, where Kiln must journal each job first.
//!
//! - [`admin`] — the registration token → admin JWT exchange, renewed before `exp`.
//! - [`api`] — [`ScaleSetClient`]: every call, typed.
//! - [`messages`] — the envelope and the job messages in its body.

pub mod admin;
pub mod api;
pub mod messages;

pub use api::{is_conflict, status_of, Poll, ScaleSet, ScaleSetClient, Session};
pub use messages::{local_job_id, JobEvent, JobMessage, Message, Statistics};
