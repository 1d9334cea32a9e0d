//! `kiln serve`'s operator side, apart from the webhook port:
//!
//! - the metrics listener (`[admin] listen`, loopback by default):
//!   `GET /metrics` (OpenMetrics, or Prometheus text for clients that do
//!   not ask for OpenMetrics) and `GET /healthz`, under the webhook
//!   server's connection limits and timers ([`metrics`]);
//! - the admin socket, `<runtime dir>/admin.sock` (mode 0600 in a 0700
//!   directory, and only peers with kiln's own uid or root are served):
//!   `GET /v1/ps`, `GET /v1/logs/{job or VM id}?follow=1`,
//!   `POST /v1/jobs/{id}/cancel` and `GET /metrics`, for `kiln ps`,
//!   `kiln logs` and `kiln cancel` ([`socket`], [`logs`], [`client`]).
//!
//! - [`wire`] — what the socket sends.
//! - [`error`] — [`AdminError`].

pub mod client;
pub mod error;
mod logs;
pub mod metrics;
pub mod socket;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::AdminError;

use crate::config::AdminSettings;
use crate::job::Jobs;
use crate::logs::events;
use crate::scheduler::Scheduler;

/// The admin socket's file name in the runtime directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// The admin socket of the daemon whose runtime directory is `runtime`.
pub fn socket_path(runtime: &Path) -> PathBuf {
    runtime.join(SOCKET_NAME)
}

/// What the admin handlers share.
#[derive(Clone)]
pub(crate) struct State {
    pub jobs: Jobs,
    pub scheduler: Scheduler<Jobs>,
}

/// The running admin servers; dropping it stops them and removes the socket.
pub struct Admin {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
}

impl Admin {
    /// Binds the metrics listener (unless off) and the admin socket, and
    /// serves both in tasks of their own.
    pub async fn start(
        settings: &AdminSettings,
        jobs: Jobs,
        scheduler: Scheduler<Jobs>,
    ) -> Result<Admin, AdminError> {
        let state = Arc::new(State { jobs, scheduler });
        let path = socket_path(state.jobs.runtime_dir());
        let listener = socket::bind(&path)?;
        let mut tasks = vec![tokio::spawn(socket::serve(listener, Arc::clone(&state)))];
        let mut metrics_at = None;
        if let Some(addr) = settings.listen {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AdminError::Listen { addr, source })?;
            metrics_at = Some(tcp.local_addr().unwrap_or(addr));
            tasks.push(tokio::spawn(metrics::serve(tcp, Arc::clone(&state))));
        }
        tracing::info!(
            event = %events::ADMIN_LISTENING,
            socket = %path.display(),
            metrics = metrics_at.map(|a| a.to_string()),
            "admin socket for kiln ps, kiln logs, kiln cancel; metrics on GET /metrics"
        );
        Ok(Admin {
            tasks,
            socket: path,
        })
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
