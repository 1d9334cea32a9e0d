//! HTTP/1.1 client for Firecracker's API socket. One connection per request:
//! there are a handful of requests per VM, and a fresh connection leaves no
//! idle-connection state to get wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::models::{ApiFault, ApiRequest};

/// Answers are small JSON documents; Firecracker is treated as untrusted
/// once a guest runs in it, so a larger answer is cut off.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Fault messages are logged and shown to users: keep them short.
const MAX_FAULT_CHARS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("connecting to Firecracker's API socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {uri} on {socket}: {message}")]
    Http {
        method: &'static str,
        uri: String,
        socket: PathBuf,
        message: String,
    },
    #[error("{method} {uri} on {socket}: no answer within {after:?}")]
    Timeout {
        method: &'static str,
        uri: String,
        socket: PathBuf,
        after: Duration,
    },
    #[error("Firecracker rejected {method} {uri} with {status}: {fault}")]
    Rejected {
        method: &'static str,
        uri: String,
        status: StatusCode,
        fault: String,
    },
}

/// A client for one Firecracker's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; any answer but 2xx is an error carrying
    /// Firecracker's `fault_message`.
    pub async fn send(&self, request: &ApiRequest) -> Result<(), ApiError> {
        let method = request.method();
        let uri = request.path();
        let body = request.body().to_string();
        tracing::debug!(socket = %self.socket.display(), method, uri = %uri, body = %body, "firecracker api request");
        let exchange = self.exchange(method, &uri, body);
        let (status, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ApiError::Timeout {
                method,
                uri: uri.clone(),
                socket: self.socket.clone(),
                after: self.timeout,
            })??;
        if status.is_success() {
            return Ok(());
        }
        Err(ApiError::Rejected {
            method,
            uri,
            status,
            fault: fault_message(&answer),
        })
    }

    async fn exchange(
        &self,
        method: &'static str,
        uri: &str,
        body: String,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let http_err = |message: String| ApiError::Http {
            method,
            uri: uri.to_owned(),
            socket: self.socket.clone(),
            message,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_err(format!("handshake: {e}")))?;
        // The connection future does the socket I/O; it ends when the
        // exchange is over and `sender` is dropped, or with the abort below.
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).map_err(|e| http_err(e.to_string()))?)
            .uri(uri)
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http_err(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http_err(e.to_string()))?;
            let status = response.status();
            let answer = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| http_err(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, answer))
        }
        .await;
        driver.abort();
        result
    }
}

/// Firecracker's `{"fault_message": "..."}`, or the raw answer when it is
/// not that shape, shortened and stripped of control characters.
fn fault_message(answer: &[u8]) -> String {
    let text = match serde_json::from_slice::<ApiFault>(answer) {
        Ok(ApiFault {
            fault_message: Some(m),
        }) => m,
        _ => String::from_utf8_lossy(answer).into_owned(),
    };
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_FAULT_CHARS)
        .collect();
    if clean.trim().is_empty() {
        "(no message)".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn fault_messages_are_extracted_and_sanitised() {
        assert_eq!(
            fault_message(br#"{"fault_message":"bad\ninput"}"#),
            "bad input"
        );
        assert_eq!(fault_message(b"plain text"), "plain text");
        assert_eq!(fault_message(b""), "(no message)");
        assert_eq!(fault_message(&[b'x'; 5000]).len(), MAX_FAULT_CHARS);
    }
}
