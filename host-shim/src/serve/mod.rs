//! `kiln serve`'s job sources: GitHub's webhooks in over HTTP, and the
//! runner scale sets' queues polled over outbound HTTPS; both hand jobs to
//! the one [`Scheduler`].
//!
//! - [`webhook`] — `POST /webhook`: signature, parsing, de-duplication, the queue.
//! - [`scale_set`] — one listener per `source = "scale-set"` pool.
//! - [`http`] — the HTTP/1 server under the router: accept loop, timers.
//! - [`tls`] — HTTPS when `[tls]` asks for it: certificate files or ACME.
//! - [`conns`] — the open connections, and which one goes when room is needed.
//! - [`body`] — reading unverified bodies under a shared byte budget.
//! - [`limits`] — what an unauthenticated client may cost; the file limit.
//! - [`dedupe`] — the bounded memory of deliveries already handled.
//! - [`signals`] — SIGINT/SIGTERM: drain, then cancel.
//! - [`error`] — [`ServeError`].
//!
//! `GET /healthz` answers 200 while the server runs.

mod body;
mod conns;
pub mod dedupe;
pub mod error;
mod http;
pub mod limits;
pub mod scale_set;
pub mod signals;
mod tls;
pub mod webhook;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

pub use error::ServeError;
pub use limits::{BodyLimits, HttpLimits, ServerLimits};
pub use tls::TlsError;

use crate::admin::Admin;
use crate::config::{Config, Pool};
use crate::github::RunnerScope;
use crate::job::Jobs;
use crate::logs::events;
use crate::scheduler::{Dispatch, Scheduler};
use crate::secret::Secret;
use body::Budget;
use conns::Connections;
use dedupe::{Seen, DEDUPE_ENTRIES};
use signals::Signals;

/// After the first signal, open connections get this long to finish.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

/// The webhook server and its scheduler.
pub struct Server<D: Dispatch> {
    app: Arc<App<D>>,
    http: HttpLimits,
}

/// What the handlers share.
struct App<D: Dispatch> {
    /// `None`: no webhooks configured (every pool has a scale set); every
    /// delivery is refused.
    webhook_secret: Option<Secret>,
    /// Where runners register: jobs of other repositories are not queued.
    scope: RunnerScope,
    pools: Vec<Arc<Pool>>,
    scheduler: Scheduler<D>,
    seen: Mutex<Seen>,
    /// The open connections: who is closed when room is needed.
    conns: Arc<Connections>,
    /// Bounds the unverified body bytes held at once.
    budget: Budget,
}

impl<D: Dispatch> App<D> {
    fn lock_seen(&self) -> MutexGuard<'_, Seen> {
        // Two set insertions cannot leave it inconsistent.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<D: Dispatch> Server<D> {
    pub fn new(config: &Config, dispatcher: D) -> Self {
        Self::with_limits(config, dispatcher, ServerLimits::default())
    }

    pub fn with_limits(config: &Config, dispatcher: D, limits: ServerLimits) -> Self {
        Self {
            app: Arc::new(App {
                webhook_secret: config.webhook_secret.clone(),
                scope: config.github.scope.clone(),
                pools: config.pools.clone(),
                scheduler: Scheduler::new(
                    config.host,
                    &config.pools,
                    config.max_queued,
                    dispatcher,
                ),
                seen: Mutex::new(Seen::new(DEDUPE_ENTRIES)),
                conns: Connections::new(limits.http.max_connections),
                budget: Budget::new(limits.body),
            }),
            http: limits.http,
        }
    }

    pub fn scheduler(&self) -> &Scheduler<D> {
        &self.app.scheduler
    }

    /// `POST /webhook` and `GET /healthz`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhook", post(webhook::handle::<D>))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(Arc::clone(&self.app))
    }

    /// Serves HTTP on `listener` until `shutdown` resolves and the open
    /// connections have finished. The scheduler keeps running: see [`run`].
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(listener, None, shutdown).await
    }

    /// [`Server::serve`], over TLS when `tls` is set.
    async fn serve_with(
        &self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        http::serve(
            listener,
            self.router(),
            Arc::clone(&self.app.conns),
            self.http,
            tls,
            shutdown,
        )
        .await
    }

    /// Connections open now (those told to close not counted).
    pub fn connections(&self) -> usize {
        self.app.conns.len()
    }
}

/// Serves `router` on `listener` with the webhook server's accept loop,
/// connection cap and timers (`limits`), until `shutdown` resolves: for
/// other listeners of the daemon (the metrics listener).
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let conns = Connections::new(limits.max_connections);
    http::serve(listener, router, conns, limits, None, shutdown).await
}

/// `kiln serve`: listens on `config.listen` until SIGINT or SIGTERM. The
/// first signal stops taking webhooks and starting jobs (queued ones are
/// dropped; GitHub keeps them queued) and waits for the running jobs; the
/// next cancels them.
///
/// Beside the webhook port: the metrics listener and the admin socket
/// ([`crate::admin`]), for as long as it runs.
pub async fn run(config: Config, dispatcher: Jobs) -> Result<(), ServeError> {
    let signals = Signals::install().map_err(ServeError::Signals)?;
    let limits = server_limits();
    // No webhook secret: every pool has a scale set, and no port is opened.
    let listener = match &config.webhook_secret {
        Some(_) => {
            Some(
                TcpListener::bind(config.listen)
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: config.listen,
                        source,
                    })?,
            )
        }
        None => None,
    };
    let jobs = dispatcher.clone();
    let tls = match &config.tls {
        Some(settings) => Some(tls::Tls::start(settings, acme_state_dir).map_err(ServeError::Tls)?),
        None => None,
    };
    let server = Server::with_limits(&config, dispatcher, limits);
    let scheduler = server.scheduler().clone();
    let _admin = Admin::start(&config.admin, jobs.clone(), scheduler.clone())
        .await
        .map_err(ServeError::Admin)?;
    for job in scheduler.dispatcher().recovered() {
        if let Err(e) = scheduler.enqueue(job) {
            tracing::warn!(error = %e, "a job queued before the restart cannot be queued again");
        }
    }
    let enqueue = scheduler.clone();
    scheduler
        .dispatcher()
        .find_lost(std::sync::Arc::new(move |job| enqueue.enqueue(job).is_ok()));
    let scale_sets = scale_set::Listeners::start(&config, &jobs, &scheduler);
    for pool in &config.pools {
        tracing::info!(
            pool = %pool.name,
            labels = ?pool.labels,
            vcpus = pool.vcpus,
            memory_mib = pool.memory_mib,
            max_vms = ?pool.max_vms,
            "pool"
        );
        if pool.max_vms == Some(0) {
            tracing::warn!(pool = %pool.name, "max_vms = 0: this pool's jobs are queued but never run");
        }
    }
    let listen = listener
        .as_ref()
        .map(|l| tracing::field::display(l.local_addr().unwrap_or(config.listen)));
    tracing::info!(
        event = %events::SERVE_LISTENING,
        listen,
        host_vcpus = config.host.vcpus,
        host_memory_mib = config.host.memory_mib,
        scope = %config.github.scope,
        https = tls.is_some(),
        scale_sets = scale_sets.len(),
        "{}",
        if listener.is_some() {
            "kiln serve: listening for webhooks on POST /webhook"
        } else {
            "kiln serve: taking jobs from scale-set queues only; no webhook port"
        }
    );

    let drain_deadline = {
        let signals = signals.clone();
        async move {
            signals.count(1).await;
            tokio::time::sleep(HTTP_DRAIN).await;
        }
    };
    let served = async {
        match listener {
            Some(listener) => {
                server
                    .serve_with(
                        listener,
                        tls.as_ref().map(tls::Tls::acceptor),
                        signals.clone().count(1),
                    )
                    .await
            }
            None => {
                signals.clone().count(1).await;
                Ok(())
            }
        }
    };
    tokio::select! {
        served = served => served.map_err(ServeError::Http)?,
        () = drain_deadline => tracing::warn!("connections still open {HTTP_DRAIN:?} after the signal: closing them"),
    }
    // GitHub assigns the scale sets nothing more once their sessions close.
    scale_sets.stop(HTTP_DRAIN).await;

    let scheduler = server.scheduler();
    let dropped = scheduler.close();
    for job in dropped
        .iter()
        .filter(|j| j.pool.source.scale_set().is_some())
    {
        // Assigned to this host's scale set but never started: GitHub
        // gives it to another runner; a restart must not start it.
        jobs.not_queued(job.job_id);
    }
    let running = scheduler.snapshot().running;
    tracing::info!(
        event = %events::SERVE_DRAINING,
        dropped_from_queue = dropped.len(),
        running,
        "webhooks stopped; waiting for the running jobs (signal again to cancel them)"
    );
    tokio::select! {
        () = scheduler.wait_idle() => {}
        () = signals.count(2) => {
            let cancelled = scheduler.abort_running();
            tracing::warn!(cancelled, "cancelling the running jobs");
            scheduler.wait_idle().await;
        }
    }
    tracing::info!(event = %events::SERVE_STOPPED, "kiln serve: stopped");
    Ok(())
}

/// `$KILN_STATE_DIR` (or its default), where ACME keeps its account and
/// certificates.
fn acme_state_dir() -> Result<std::path::PathBuf, TlsError> {
    crate::job::Settings::from_env()
        .map(|s| s.state_dir)
        .map_err(|e| TlsError::Setup {
            problem: e.to_string(),
        })
}

/// The default limits, with the file limit raised to its hard limit and
/// at most half of it for connections.
fn server_limits() -> ServerLimits {
    let fd_limit = match limits::raise_fd_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("{e}");
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft)
        }
    };
    let limits = ServerLimits {
        http: HttpLimits::for_fd_limit(fd_limit),
        ..ServerLimits::default()
    };
    tracing::info!(
        event = %events::SERVE_LIMITS,
        fd_limit,
        max_connections = limits.http.max_connections,
        header_timeout = ?limits.http.header_timeout,
        idle_timeout = ?limits.http.idle_timeout,
        body_budget_bytes = limits.body.budget_bytes,
        "webhook limits"
    );
    limits
}
