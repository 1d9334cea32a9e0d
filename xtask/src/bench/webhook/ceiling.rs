//! The ceiling: the least an HTTP server on the same stack as `kiln serve`
//! (axum on Tokio's multi-threaded runtime, `axum::serve`) can do per
//! delivery — read the body, answer 202. No signature, no parsing, no
//! queue: what is left of `kiln serve`'s time above this is Kiln's own.

use std::net::SocketAddr;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

pub fn router() -> Router {
    Router::new()
        .route(
            "/webhook",
            post(|_body: Bytes| async { StatusCode::ACCEPTED }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Serves until killed; built like `kiln serve`'s runtime (all CPUs).
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        axum::serve(listener, router())
            .await
            .context("serving HTTP")
    })
}
