//! The metrics listener: `GET /metrics` and `GET /healthz` on
//! `[admin] listen`, under the webhook server's accept loop, so its
//! connection cap and timers hold here too.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::State;
use crate::metrics::{to_prometheus_text, SchedulerSample, OPENMETRICS, PROMETHEUS_TEXT};

/// Scrapers are few: connections beyond this close the oldest.
const MAX_CONNECTIONS: usize = 32;

/// Serves until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    let limits = crate::serve::HttpLimits {
        max_connections: MAX_CONNECTIONS,
        ..crate::serve::HttpLimits::default()
    };
    let never = std::future::pending::<()>();
    if let Err(e) = crate::serve::serve_router(listener, router, limits, never).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}

/// `GET /metrics`: samples what is a state (queue, VMs, capacity, egress
/// counters), then encodes every metric, as OpenMetrics when the client
/// accepts it and as Prometheus text otherwise.
pub(crate) async fn scrape(Shared(state): Shared<Arc<State>>, headers: HeaderMap) -> Response {
    let metrics = state.jobs.metrics();
    let snapshot = state.scheduler.snapshot();
    let pools: Vec<(&str, usize, u32)> = snapshot
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.queued, p.running))
        .collect();
    metrics.sample_scheduler(&SchedulerSample {
        pools: &pools,
        vcpus: snapshot.capacity.vcpus,
        vcpus_used: snapshot.vcpus_used,
        memory_mib: snapshot.capacity.memory_mib,
        memory_mib_used: snapshot.memory_mib_used,
    });
    if let Some(network) = state.jobs.network() {
        let network = Arc::clone(network);
        // nft runs as a child process: off the async threads.
        match tokio::task::spawn_blocking(move || network.policy().counters()).await {
            Ok(Ok(counters)) => metrics.sample_egress(counters.iter().map(|(n, p, _)| (n, p))),
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics: cannot read the egress counters"),
            Err(e) => tracing::warn!(error = %e, "metrics: reading the egress counters failed"),
        }
    }
    let text = metrics.encode();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&text),
        )
            .into_response()
    }
}
