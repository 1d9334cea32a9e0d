//! `GET /v1/logs/{id}[?follow=1]`: a job's log file, found by job id or VM
//! id (the board's running and recent jobs, then the log directory by job
//! id), sent as it is; with `follow`, what the job writes next is sent as
//! it comes, until the job is over and everything is sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State as Shared};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;

use super::State;
use crate::job::Jobs;

/// How often a followed log is looked at for more.
const POLL: Duration = Duration::from_millis(200);
/// Read at most this much at once.
const CHUNK: usize = 64 << 10;

#[derive(serde::Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

pub(crate) async fn logs(
    Shared(state): Shared<Arc<State>>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let jobs = &state.jobs;
    let (job_id, path) = match jobs.board().find(&id) {
        Some(row) => match row.log {
            Some(path) => (Some(row.job_id), path),
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    format!(
                        "job {} has no log yet: its VM has not started (kiln ps says where it is)",
                        row.job_id
                    ),
                )
                    .into_response()
            }
        },
        None => match id
            .parse::<u64>()
            .ok()
            .and_then(|j| newest_log(jobs.log_dir(), j))
        {
            Some(path) => (None, path),
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    format!(
                    "no job or VM {id:?} here: kiln ps --all lists the jobs this kiln serve knows"
                ),
                )
                    .into_response()
            }
        },
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::NOT_FOUND,
                format!("cannot open the log {}: {e}", path.display()),
            )
                .into_response()
        }
    };
    // A finished job's log is sent whole and ends there.
    let follow = q.follow.then_some(job_id).flatten();
    let body = Body::from_stream(tail(file, jobs.clone(), follow));
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The file's bytes; with `follow`, more as they come while job `follow`
/// runs, and the rest once it is over.
fn tail(
    file: tokio::fs::File,
    jobs: Jobs,
    follow: Option<u64>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold(Some((file, follow)), move |state| {
        let jobs = jobs.clone();
        async move {
            let (mut file, mut follow) = state?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => match follow {
                        Some(job_id) if jobs.board().is_running(job_id) => {
                            tokio::time::sleep(POLL).await;
                        }
                        // Over: read on to the end once more.
                        Some(_) => follow = None,
                        None => return None,
                    },
                    Ok(n) => {
                        buf.truncate(n);
                        return Some((Ok(Bytes::from(buf)), Some((file, follow))));
                    }
                    Err(e) => return Some((Err(e), None)),
                }
            }
        }
    })
}

/// The newest `<job id>-<runner>.log` in `dir`.
fn newest_log(dir: &Path, job_id: u64) -> Option<PathBuf> {
    let prefix = format!("{job_id}-");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".log")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
}
