//! The admin socket: a Unix socket in the runtime directory, mode 0600,
//! serving HTTP/1 to root and to kiln's own uid only (checked on each
//! connection with `SO_PEERCRED`, beside the file mode).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State as Shared};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};

use super::wire::{CancelAnswer, Capacity, Ps, Queued};
use super::{AdminError, State};
use crate::job::board::Cancelled;

/// A request's head must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `path` with mode 0600. A socket file left by a dead daemon is
/// replaced; one a live daemon answers on is not.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AdminError::InUse {
                path: path.to_owned(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| AdminError::Bind {
        path: path.to_owned(),
        source,
    };
    // Made 0600 before anyone may connect: the umask covers the bind.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves the admin routes on `listener` until the task is aborted.
pub(crate) async fn serve(listener: UnixListener, state: Arc<State>) {
    let router = router(state);
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !allowed(&stream, me) {
            continue;
        }
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin socket connection ended");
            }
        });
    }
}

/// Root, or kiln's own uid.
fn allowed(stream: &UnixStream, me: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == me => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "admin socket: a peer that is neither root nor kiln's uid was refused"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot tell the peer's uid; refused");
            false
        }
    }
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/ps", get(ps))
        .route("/v1/logs/{id}", get(super::logs::logs))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/metrics", get(super::metrics::scrape))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct PsQuery {
    #[serde(default)]
    all: bool,
}

async fn ps(Shared(state): Shared<Arc<State>>, Query(q): Query<PsQuery>) -> Json<Ps> {
    let snapshot = state.scheduler.snapshot();
    let queued = state
        .scheduler
        .waiting()
        .into_iter()
        .map(|j| Queued {
            job_id: j.job_id,
            run_id: j.run_id,
            repository: j.repository,
            pool: j.pool.name.clone(),
            age_secs: j.received.elapsed().as_secs_f64(),
        })
        .collect();
    Json(Ps {
        jobs: state.jobs.board().rows(q.all),
        queued,
        capacity: Capacity {
            vcpus: snapshot.capacity.vcpus,
            vcpus_used: snapshot.vcpus_used,
            memory_mib: snapshot.capacity.memory_mib,
            memory_mib_used: snapshot.memory_mib_used,
        },
    })
}

async fn cancel(Shared(state): Shared<Arc<State>>, UrlPath(id): UrlPath<String>) -> Response {
    let Ok(job_id) = id.parse::<u64>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a job id (kiln ps lists them)"),
        )
            .into_response();
    };
    let result = match state.scheduler.cancel_queued(job_id) {
        Some(job) => {
            state.jobs.forget_queued(&job);
            "dequeued"
        }
        None => match state.jobs.cancel(job_id) {
            Cancelled::Stopping { .. } => "stopping",
            Cancelled::AlreadyOver => "already_over",
            Cancelled::Unknown => "unknown",
        },
    };
    let status = if result == "unknown" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let answer = CancelAnswer {
        job_id,
        result: result.to_owned(),
    };
    (status, Json(answer)).into_response()
}
