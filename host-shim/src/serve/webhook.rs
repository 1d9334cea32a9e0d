//! `POST /webhook`: GitHub's deliveries. The order matters: the headers
//! first (event, signature present, declared length), so unsigned junk
//! costs no buffering; events other than `workflow_job` and `ping` are
//! answered 202 without reading their body (Kiln uses nothing in them);
//! then the body, read under the shared budget ([`super::body`]: 413, 408,
//! 503), the signature over the raw bytes (401), and parsing,
//! de-duplication and the queue. A `queued` job is not queued when its
//! `completed` was seen already or its repository is outside the runners'
//! scope (their runners could never take it). The answer comes at once: no GitHub call
//! and no VM work happen here, only bookkeeping under a lock.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

use super::body::BodyError;
use super::http::ConnHandle;
use super::App;
use crate::github::webhook::{
    parse_workflow_job, verify_signature, SignatureError, WorkflowJobAction, WorkflowJobEvent,
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
};
use crate::logs::events;
use crate::scheduler::dispatch::{JobNews, News};
use crate::scheduler::{Dispatch, EnqueueError, QueuedJob};

/// A delivery id longer than this is not GitHub's (a GUID is 36).
const MAX_DELIVERY_LEN: usize = 128;

/// Parse errors are cut to this in answers and logs.
const MAX_REASON_LEN: usize = 200;

// Looked up as `HeaderName`s: a `&str` name is parsed again on every lookup.
const DELIVERY: HeaderName = HeaderName::from_static(DELIVERY_HEADER);
const EVENT: HeaderName = HeaderName::from_static(EVENT_HEADER);
const SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);

/// `POST /webhook`; every answer is counted by its status.
pub(super) async fn handle<D: Dispatch>(
    State(app): State<Arc<App<D>>>,
    request: Request,
) -> Response {
    let response = handle_delivery(&app, request).await;
    if let Some(m) = app.scheduler.dispatcher().metrics() {
        m.webhook(response.status().as_u16());
    }
    response
}

async fn handle_delivery<D: Dispatch>(app: &App<D>, request: Request) -> Response {
    // Taken apart rather than extracted as a `HeaderMap`, which would copy it.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    // Header values that are not visible ASCII fail `to_str`, so what is
    // logged below cannot forge log lines.
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = header(&DELIVERY).unwrap_or("");
    if delivery.len() > MAX_DELIVERY_LEN {
        return answer(StatusCode::BAD_REQUEST, "X-GitHub-Delivery is too long");
    }
    let Some(event) = header(&EVENT) else {
        return answer(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header");
    };
    let signature = headers.get(SIGNATURE).map(|v| v.as_bytes());
    if signature.is_none() {
        tracing::warn!(%delivery, %event, reason = %SignatureError::Missing, "webhook refused: bad signature");
        return answer(StatusCode::UNAUTHORIZED, "bad signature");
    }
    if !matches!(event, "workflow_job" | "ping") {
        tracing::debug!(%delivery, %event, "event ignored");
        return answer(StatusCode::ACCEPTED, "ignored: not a workflow_job event");
    }
    let declared_len = header(&CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    let conn = parts.extensions.get::<ConnHandle>().map(|h| &h.0);
    let body = match app.budget.read(body, declared_len, conn, &app.conns).await {
        Ok(body) => body,
        Err(e) => return body_refused(&e, delivery, event),
    };
    let Some(secret) = &app.webhook_secret else {
        return answer(StatusCode::NOT_FOUND, "no webhooks configured");
    };
    if let Err(e) = verify_signature(secret, &body.bytes, signature) {
        tracing::warn!(%delivery, %event, reason = %e, "webhook refused: bad signature");
        return answer(StatusCode::UNAUTHORIZED, "bad signature");
    }
    // Whoever holds the webhook secret: its connection is the last to go.
    if let Some(conn) = conn {
        conn.trust();
    }
    if event == "ping" {
        tracing::info!(%delivery, "ping from GitHub");
        return answer(StatusCode::OK, "pong");
    }
    let ev = match parse_workflow_job(&body.bytes) {
        Ok(ev) => ev,
        Err(e) => {
            let reason = truncate(&e.to_string());
            tracing::warn!(%delivery, %reason, "webhook refused");
            return answer(StatusCode::BAD_REQUEST, reason);
        }
    };
    drop(body);
    if delivery.is_empty() {
        return answer(StatusCode::BAD_REQUEST, "missing X-GitHub-Delivery header");
    }
    // One copy of the id, shared by the de-duplication sets and the job.
    app.accept(Arc::from(delivery), ev)
}

/// The answer to a body that could not be read.
fn body_refused(e: &BodyError, delivery: &str, event: &str) -> Response {
    match e {
        BodyError::TooLarge { max } => answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {max} bytes"),
        ),
        BodyError::Timeout { .. } => {
            answer(StatusCode::REQUEST_TIMEOUT, "body not received in time")
        }
        BodyError::Busy { .. } => {
            tracing::warn!(%delivery, %event, reason = %e, "webhook refused");
            answer(StatusCode::SERVICE_UNAVAILABLE, "busy")
        }
        BodyError::Broken(_) => answer(StatusCode::BAD_REQUEST, "cannot read the body"),
    }
}

impl<D: Dispatch> App<D> {
    /// A signed, parsed `workflow_job`: de-duplicate, then queue or dequeue.
    fn accept(&self, delivery: Arc<str>, ev: WorkflowJobEvent) -> Response {
        let job_id = ev.workflow_job.id;
        let action = ev.action;
        // Checked and recorded in one step, so two copies arriving at once
        // cannot both pass; the lock is not held while the job is queued
        // (that logs, and every delivery takes this lock).
        {
            let mut seen = self.lock_seen();
            if seen.is_duplicate(&delivery, job_id, action) {
                drop(seen);
                tracing::debug!(
                    %delivery,
                    job_id,
                    action = action.as_str(),
                    "duplicate delivery"
                );
                return answer(StatusCode::ACCEPTED, "duplicate");
            }
            seen.remember(&delivery, job_id, action);
        }
        let response = match action {
            WorkflowJobAction::Queued => self.queue(Arc::clone(&delivery), ev),
            WorkflowJobAction::Completed => {
                let cancelled = self.scheduler.cancel_queued(job_id);
                let conclusion = ev.workflow_job.conclusion;
                self.tell(&delivery, ev, News::Completed { conclusion });
                match cancelled {
                    Some(job) => {
                        if let Some(m) = self.scheduler.dispatcher().metrics() {
                            m.job_cancelled(&job.pool.name, "github");
                        }
                        tracing::info!(%delivery, job_id, pool = %job.pool.name, "job completed before it ran: removed from the queue");
                        answer(StatusCode::ACCEPTED, "removed from the queue")
                    }
                    None => answer(StatusCode::ACCEPTED, "completed"),
                }
            }
            WorkflowJobAction::InProgress => match ev.workflow_job.runner_name.clone() {
                Some(runner) => {
                    self.tell(&delivery, ev, News::Taken { runner });
                    answer(StatusCode::ACCEPTED, "noted")
                }
                None => answer(StatusCode::ACCEPTED, "ignored: no runner named"),
            },
            other => {
                tracing::debug!(%delivery, job_id, action = other.as_str(), "action ignored");
                answer(StatusCode::ACCEPTED, "ignored: action")
            }
        };
        // Refused deliveries (503) are forgotten again, so a redelivery of
        // the same one is taken once there is room. (A copy that arrived
        // meanwhile was answered "duplicate": GitHub has the job queued
        // either way, and it only redelivers on request.)
        if response.status() != StatusCode::ACCEPTED {
            self.lock_seen().forget(&delivery, job_id, action);
        }
        response
    }

    /// Hands what GitHub reported to the dispatcher (the journal, re-runs).
    fn tell(&self, delivery: &Arc<str>, ev: WorkflowJobEvent, what: News) {
        self.scheduler.dispatcher().news(JobNews {
            delivery: Arc::clone(delivery),
            job_id: ev.workflow_job.id,
            run_id: ev.workflow_job.run_id,
            installation_id: ev.installation.map(|i| i.id),
            repository: ev.repository.full_name,
            labels: ev.workflow_job.labels,
            what,
        });
    }

    fn queue(&self, delivery: Arc<str>, ev: WorkflowJobEvent) -> Response {
        let job_id = ev.workflow_job.id;
        if self.lock_seen().is_completed(job_id) {
            tracing::info!(%delivery, job_id, "queued after its completed: job ignored");
            return answer(StatusCode::ACCEPTED, "ignored: the job is completed");
        }
        if !self.scope.covers(&ev.repository.full_name) {
            tracing::info!(
                %delivery,
                job_id,
                repository = ?ev.repository.full_name,
                scope = %self.scope,
                "repository outside the runners' scope (github.org/repo/enterprise): job ignored"
            );
            return answer(
                StatusCode::ACCEPTED,
                "ignored: repository outside the runners' scope",
            );
        }
        let labels = ev.workflow_job.labels;
        let Some(pool) = self.pools.iter().find(|p| p.accepts(&labels)) else {
            tracing::info!(%delivery, job_id, ?labels, repository = ?ev.repository.full_name, "no pool serves these labels: job ignored");
            return answer(StatusCode::ACCEPTED, "ignored: no pool serves these labels");
        };
        if let Some(scale_set) = pool.source.scale_set() {
            // The scale set's queue brings this job (or gives it to another
            // host's scale set): a second VM for it would be a second runner.
            tracing::info!(event = %events::WEBHOOK_SCALE_SET_JOB, %delivery, job_id, pool = %pool.name, scale_set, repository = ?ev.repository.full_name, "job queued at GitHub for a scale-set pool: noted, its scale set's queue brings it");
            return answer(
                StatusCode::ACCEPTED,
                "noted: the pool takes its jobs from its scale set",
            );
        }
        let Some(installation) = ev.installation else {
            tracing::warn!(
                %delivery,
                job_id,
                "workflow_job without an installation: the webhook must be the GitHub App's"
            );
            return answer(
                StatusCode::BAD_REQUEST,
                "no installation in the payload: send webhooks from the GitHub App",
            );
        };
        let job = QueuedJob {
            delivery: Arc::clone(&delivery),
            job_id,
            run_id: ev.workflow_job.run_id,
            installation_id: installation.id,
            repository: ev.repository.full_name,
            labels,
            pool: Arc::clone(pool),
            received: Instant::now(),
        };
        let recorded = job.clone();
        match self.scheduler.enqueue(job) {
            Ok(()) if self.scheduler.dispatcher().queued(&recorded) => {
                answer(StatusCode::ACCEPTED, "queued")
            }
            Ok(()) => {
                // Not recorded (a full disk): a restart would lose it, so it
                // is not taken; GitHub keeps it queued for the reconciler.
                self.scheduler.cancel_queued(job_id);
                answer(StatusCode::SERVICE_UNAVAILABLE, "cannot record the job")
            }
            Err(EnqueueError::AlreadyQueued { .. }) => answer(StatusCode::ACCEPTED, "duplicate"),
            Err(e @ EnqueueError::QueueFull { .. }) => {
                tracing::warn!(%delivery, job_id, pool = %pool.name, "job refused: {e}");
                answer(StatusCode::SERVICE_UNAVAILABLE, "queue full")
            }
            Err(e @ EnqueueError::Closed) => {
                tracing::warn!(%delivery, job_id, pool = %pool.name, "job refused: {e}");
                answer(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            }
            Err(e) => {
                tracing::error!(%delivery, job_id, pool = %pool.name, "job refused: {e}");
                answer(StatusCode::INTERNAL_SERVER_ERROR, "cannot queue the job")
            }
        }
    }
}

/// A plain-text answer; a `&'static str` body is sent without a copy.
fn answer(status: StatusCode, text: impl IntoResponse) -> Response {
    (status, text).into_response()
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_REASON_LEN) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
