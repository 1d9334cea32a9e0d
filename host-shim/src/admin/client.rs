//! The client side of the admin socket, for `kiln ps`, `kiln logs` and
//! `kiln cancel`: one HTTP/1 request per connection.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use super::wire::{CancelAnswer, Ps};
use super::AdminError;

/// Answers larger than this are refused (a `ps` of thousands of jobs is far less).
const MAX_ANSWER: usize = 64 << 20;

/// Talks to the `kiln serve` whose admin socket is at `path`.
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// The jobs running (and with `all`, those finished lately) and queued.
    pub async fn ps(&self, all: bool) -> Result<Ps, AdminError> {
        let uri = if all { "/v1/ps?all=true" } else { "/v1/ps" };
        self.json(Method::GET, uri).await
    }

    /// Cancels job `job_id`: dequeued if waiting, its VM stopped if running.
    pub async fn cancel(&self, job_id: u64) -> Result<CancelAnswer, AdminError> {
        self.json(Method::POST, &format!("/v1/jobs/{job_id}/cancel"))
            .await
    }

    /// The metrics text, as the metrics listener serves it.
    pub async fn metrics(&self) -> Result<String, AdminError> {
        let body = self.body(Method::GET, "/metrics").await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Copies the log of job or VM `id` to `out`; with `follow`, until the
    /// job is over.
    pub async fn logs(
        &self,
        id: &str,
        follow: bool,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), AdminError> {
        let id = encode_segment(id);
        let uri = format!("/v1/logs/{id}{}", if follow { "?follow=true" } else { "" });
        let answer = self.send(Method::GET, &uri).await?;
        let mut body = ok(answer).await?.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.exchange(format!("the log stopped: {e}")))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .await
                    .map_err(|e| self.exchange(format!("cannot write the log out: {e}")))?;
                out.flush()
                    .await
                    .map_err(|e| self.exchange(format!("cannot write the log out: {e}")))?;
            }
        }
        Ok(())
    }

    async fn json<T: DeserializeOwned>(&self, method: Method, uri: &str) -> Result<T, AdminError> {
        let body = self.body(method, uri).await?;
        serde_json::from_slice(&body).map_err(|e| self.exchange(format!("unexpected answer: {e}")))
    }

    /// A successful answer's whole body.
    async fn body(&self, method: Method, uri: &str) -> Result<Bytes, AdminError> {
        let answer = self.send(method, uri).await?;
        collect(ok(answer).await?.into_body())
            .await
            .map_err(|e| self.exchange(e))
    }

    async fn send(&self, method: Method, uri: &str) -> Result<Response<Incoming>, AdminError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| AdminError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.exchange(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "kiln")
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.exchange(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.exchange(e.to_string()))
    }

    fn exchange(&self, problem: impl Into<String>) -> AdminError {
        AdminError::Exchange {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }
}

/// The answer if it is a 2xx, else [`AdminError::Refused`] with the
/// server's text.
async fn ok(answer: Response<Incoming>) -> Result<Response<Incoming>, AdminError> {
    let status = answer.status();
    if status.is_success() {
        return Ok(answer);
    }
    let body = collect(answer.into_body()).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    Err(AdminError::Refused {
        status: status.as_u16(),
        message: if text.is_empty() {
            status_text(status)
        } else {
            text
        },
    })
}

async fn collect(body: Incoming) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, MAX_ANSWER);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("cannot read the answer: {e}"))
}

fn status_text(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_owned()
}

/// A job or VM id as one path segment: ids are digits, letters and '-';
/// anything else is percent-encoded so it cannot change the path.
fn encode_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
