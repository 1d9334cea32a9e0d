//! The HTTP side of the GitHub client: one request with a timeout, retried
//! with backoff on 5xx and connection failures, waiting out rate limits up to
//! a bound, and turned into [`GithubError`]s that name the request.
//!
//! TLS (rustls with webpki and system roots) in production; plain `http://`
//! works too so tests can point the client at a local fake.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use super::error::{truncate_message, GithubError};
use crate::metrics::Metrics;

/// Answers larger than this are refused; a JIT config is a few KiB.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// GitHub's documented wait for a secondary rate limit that names no time.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);
const API_VERSION: &str = "2022-11-28";
const USER_AGENT: &str = concat!("kiln/", env!("CARGO_PKG_VERSION"));

/// Timeouts, retries and waits of every GitHub request.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// One attempt, connect to last body byte.
    pub request_timeout: Duration,
    /// Attempts per request, including the first (5xx, connection errors,
    /// timeouts and rate limits each use one).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest rate-limit wait Kiln sits out (summed over one request's
    /// attempts); a longer one fails with [`GithubError::RateLimited`].
    pub max_rate_limit_wait: Duration,
    /// An installation token is replaced this long before its `expires_at`.
    pub token_refresh_margin: Duration,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_attempts: 4,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_rate_limit_wait: Duration::from_secs(120),
            token_refresh_margin: Duration::from_secs(5 * 60),
        }
    }
}

/// An answer Kiln did not retry: any status but 5xx and rate limits.
pub(crate) struct Answer {
    pub status: StatusCode,
    // Not Debug on purpose: a 201 body holds the JIT config or a token.
    body: Bytes,
    /// The `ETag` header, for a later `If-None-Match`.
    pub etag: Option<String>,
    /// GitHub's `x-ratelimit-*` headers, when it sent them.
    pub rate_limit: Option<RateLimit>,
}

/// GitHub's rate-limit headers on an answer: the bucket of the token that
/// made the request (for an installation token, the installation's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// `x-ratelimit-limit`: requests per hour.
    pub limit: u64,
    /// `x-ratelimit-remaining`: requests left in this hour.
    pub remaining: u64,
    /// `x-ratelimit-reset`: when the hour ends, Unix seconds.
    pub reset_unix: u64,
}

impl RateLimit {
    fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(Self {
            limit: num("x-ratelimit-limit")?,
            remaining: num("x-ratelimit-remaining")?,
            reset_unix: num("x-ratelimit-reset")?,
        })
    }
}

impl Answer {
    /// A `200 OK` with `body`: a cached answer standing in for a 304.
    pub fn cached(body: Bytes, etag: String, rate_limit: Option<RateLimit>) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            etag: Some(etag),
            rate_limit,
        }
    }

    /// The body as received, for the conditional-request cache.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// GitHub's `message` field, truncated, for error texts.
    pub fn message(&self) -> String {
        github_message(&self.body)
    }

    /// Decodes a success body. The error never quotes the body, which may
    /// hold a token or a JIT config: only serde's position and kind, or the
    /// name of a missing field.
    pub fn json<T: DeserializeOwned>(&self, method: &Method, path: &str) -> Result<T, GithubError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let text = e.to_string();
            let problem = if text.starts_with("missing field") {
                text
            } else {
                format!(
                    "body is not the documented JSON ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                )
            };
            GithubError::Decode {
                method: method_name(method),
                path: path.to_owned(),
                problem,
            }
        })
    }

    /// The error for an answer the caller does not accept.
    pub fn into_error(self, method: &Method, path: &str) -> GithubError {
        GithubError::Status {
            method: method_name(method),
            path: path.to_owned(),
            status: self.status.as_u16(),
            message: self.message(),
        }
    }
}

/// What a request needs beyond the API's defaults.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extra {
    /// Set on the request, replacing Kiln's own header of the same name.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// One attempt's timeout instead of the policy's (a long poll's).
    pub timeout: Option<Duration>,
}

/// Whether `path` is a whole `http(s)://` URL rather than a path under the base.
fn is_absolute(path: &str) -> bool {
    path.starts_with("https://") || path.starts_with("http://")
}

/// Sends requests to one GitHub API base URL.
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `https://api.github.com` or `https://ghes.example/api/v3`, no trailing slash.
    base: String,
    policy: ClientPolicy,
    /// Where every answer and every request without one is counted.
    metrics: Option<Arc<Metrics>>,
}

impl HttpClient {
    pub fn new(api_url: &str, policy: ClientPolicy) -> Result<Self, GithubError> {
        let base = parse_base(api_url)?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            client,
            base,
            policy,
            metrics: None,
        })
    }

    /// Counts every answer (method, status, rate limit left) and every
    /// request that got none in `metrics`.
    pub fn count_in(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn policy(&self) -> &ClientPolicy {
        &self.policy
    }

    /// Sends `method path` with `authorization` (the whole header value) and
    /// an optional JSON body; retries what is transient. Returns the first
    /// answer that is neither 5xx nor a rate limit, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        json_body: Option<Bytes>,
    ) -> Result<Answer, GithubError> {
        self.send_conditional(method, path, authorization, json_body, None)
            .await
    }

    /// [`HttpClient::send`] with an `If-None-Match` header when `if_none_match`
    /// is given; GitHub then answers 304 (returned as is) if nothing changed.
    pub async fn send_conditional(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        json_body: Option<Bytes>,
        if_none_match: Option<&str>,
    ) -> Result<Answer, GithubError> {
        let mut extra = Extra::default();
        if let Some(etag) = if_none_match {
            let value = HeaderValue::from_str(etag).map_err(|_| GithubError::InvalidRequest {
                what: "If-None-Match",
                problem: format!("the ETag {etag:?} is not a valid header value"),
            })?;
            extra.headers.push((header::IF_NONE_MATCH, value));
        }
        self.send_with(method, path, authorization, json_body, &extra)
            .await
    }

    /// [`HttpClient::send`] with `extra`'s headers (replacing Kiln's own of
    /// the same name) and timeout. `path` may be an absolute `http(s)://`
    /// URL: the scale-set queue lives on another host than the API.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        json_body: Option<Bytes>,
        extra: &Extra,
    ) -> Result<Answer, GithubError> {
        let policy = &self.policy;
        let request_timeout = extra.timeout.unwrap_or(policy.request_timeout);
        let name = method_name(&method);
        let mut rate_limit_waited = Duration::ZERO;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= policy.max_attempts;
            let once = self.once(&method, path, authorization, json_body.clone(), extra);
            let result = tokio::time::timeout(request_timeout, once).await;
            self.count(name, &result);
            let retry_after = match result {
                Err(_elapsed) => {
                    if last {
                        return Err(GithubError::Timeout {
                            method: name,
                            path: path.to_owned(),
                            timeout: request_timeout,
                            attempts: attempt,
                        });
                    }
                    tracing::warn!(
                        method = name,
                        path,
                        attempt,
                        "GitHub request timed out; retrying"
                    );
                    backoff(policy, attempt)
                }
                Ok(Err(problem)) => {
                    if last {
                        return Err(GithubError::Transport {
                            method: name,
                            path: path.to_owned(),
                            attempts: attempt,
                            problem,
                        });
                    }
                    tracing::warn!(method = name, path, attempt, %problem, "GitHub request failed; retrying");
                    backoff(policy, attempt)
                }
                Ok(Ok((answer, headers))) => {
                    let status = answer.status.as_u16();
                    tracing::debug!(method = name, path, attempt, status, "GitHub answered");
                    if let Some(wait) = rate_limit_wait(answer.status, &headers, &answer.message())
                    {
                        if last || rate_limit_waited + wait > policy.max_rate_limit_wait {
                            let until = SystemTime::now() + wait;
                            return Err(GithubError::RateLimited {
                                method: name,
                                path: path.to_owned(),
                                status,
                                until: format_rfc3339(unix_secs(until)),
                                wait_secs: wait.as_secs(),
                                max_wait_secs: policy.max_rate_limit_wait.as_secs(),
                                message: answer.message(),
                            });
                        }
                        tracing::warn!(
                            method = name,
                            path,
                            status,
                            wait_secs = wait.as_secs(),
                            "rate limited by GitHub; waiting"
                        );
                        rate_limit_waited += wait;
                        wait
                    } else if answer.status.is_server_error() {
                        if last {
                            return Err(GithubError::Unavailable {
                                method: name,
                                path: path.to_owned(),
                                status,
                                attempts: attempt,
                                message: answer.message(),
                            });
                        }
                        tracing::warn!(
                            method = name,
                            path,
                            attempt,
                            status,
                            "GitHub answered a server error; retrying"
                        );
                        backoff(policy, attempt)
                    } else {
                        return Ok(answer);
                    }
                }
            };
            tokio::time::sleep(retry_after).await;
        }
    }

    /// Counts one attempt's result in the metrics.
    fn count<E>(
        &self,
        method: &'static str,
        result: &Result<Result<(Answer, HeaderMap), String>, E>,
    ) {
        let Some(m) = &self.metrics else { return };
        match result {
            Err(_) => m.github_error("timeout"),
            Ok(Err(_)) => m.github_error("transport"),
            Ok(Ok((answer, _))) => m.github_answer(
                method,
                answer.status.as_u16(),
                answer.rate_limit.map(|r| r.remaining),
            ),
        }
    }

    /// One attempt. The error is a transport problem as text (its source chain).
    async fn once(
        &self,
        method: &Method,
        path: &str,
        authorization: &str,
        json_body: Option<Bytes>,
        extra: &Extra,
    ) -> Result<(Answer, HeaderMap), String> {
        let uri: Uri = if is_absolute(path) {
            path.parse()
        } else {
            format!("{}{}", self.base, path).parse()
        }
        .map_err(|e| format!("bad request URI: {e}"))?;
        let mut auth = HeaderValue::from_str(authorization)
            .map_err(|_| "the Authorization value is not a valid header".to_owned())?;
        auth.set_sensitive(true);
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::AUTHORIZATION, auth);
        if json_body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let mut request = builder
            .body(Full::new(json_body.unwrap_or_default()))
            .map_err(|e| format!("building the request: {e}"))?;
        for (name, value) in &extra.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let etag = parts
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let rate_limit = RateLimit::from_headers(&parts.headers);
        Ok((
            Answer {
                status: parts.status,
                body,
                etag,
                rate_limit,
            },
            parts.headers,
        ))
    }
}

/// How long to wait if `status`/`headers`/`message` say "rate limited", else None.
/// 429 always is one; 403 only with GitHub's rate-limit signs (a plain 403 is
/// a permission problem and must not be retried).
fn rate_limit_wait(status: StatusCode, headers: &HeaderMap, message: &str) -> Option<Duration> {
    let header_u64 = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let retry_after = header_u64("retry-after");
    let exhausted = header_u64("x-ratelimit-remaining") == Some(0);
    let says_so = message.to_ascii_lowercase().contains("rate limit");
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && (retry_after.is_some() || exhausted || says_so));
    if !limited {
        return None;
    }
    if let Some(secs) = retry_after {
        return Some(Duration::from_secs(secs.max(1)));
    }
    if let Some(reset) = header_u64("x-ratelimit-reset").filter(|_| exhausted) {
        // The reset is in whole seconds: one more so the limit has surely lifted.
        let now = unix_secs(SystemTime::now());
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    Some(SECONDARY_LIMIT_WAIT)
}

fn backoff(policy: &ClientPolicy, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    policy
        .first_backoff
        .saturating_mul(factor)
        .min(policy.max_backoff)
}

/// GitHub's `message` field of an error body, truncated; never the raw body.
fn github_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { message: Some(m) }) => truncate_message(&m),
        Ok(ErrorBody { message: None }) => "(no message)".to_owned(),
        Err(_) if body.is_empty() => "(empty body)".to_owned(),
        Err(_) => format!("(a {}-byte body that is not GitHub's JSON)", body.len()),
    }
}

fn parse_base(api_url: &str) -> Result<String, GithubError> {
    let bad = |problem: &str| GithubError::ApiUrl {
        url: api_url.to_owned(),
        problem: problem.to_owned(),
    };
    let uri: Uri = api_url.parse().map_err(|e| {
        bad(&format!(
            "not a URL ({e}); expected e.g. https://api.github.com"
        ))
    })?;
    match uri.scheme_str() {
        Some("https") | Some("http") => {}
        _ => {
            return Err(bad(
                "must start with https:// (or http:// for a local test server)",
            ))
        }
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if uri.query().is_some() {
        return Err(bad("must not have a query string"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        authority,
        prefix
    ))
}

/// webpki's Mozilla roots plus the system's, so GitHub Enterprise Server with
/// a CA installed on the host works as well as api.github.com.
fn tls_config() -> Result<rustls::ClientConfig, GithubError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates for GitHub TLS");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GithubError::Tls {
            problem: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "HTTP",
    }
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (UTC).
pub(crate) fn format_rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Unix time of GitHub's `expires_at` (`2016-07-11T22:14:10Z`; fractional
/// seconds and a `+00:00`-style offset are accepted too).
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let unix = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(unix).ok()
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, UTC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2016-07-11T22:14:10Z"), Some(1_468_275_250));
        assert_eq!(
            parse_rfc3339("2016-07-11T22:14:10.123Z"),
            Some(1_468_275_250)
        );
        assert_eq!(
            parse_rfc3339("2016-07-12T00:14:10+02:00"),
            Some(1_468_275_250)
        );
        assert_eq!(format_rfc3339(1_468_275_250), "2016-07-11T22:14:10Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for bad in [
            "",
            "2016-07-11",
            "2016-13-11T22:14:10Z",
            "2016-07-11T22:14:10",
            "x016-07-11T22:14:10Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base("https://api.github.com").ok().as_deref(),
            Some("https://api.github.com")
        );
        assert_eq!(
            parse_base("https://ghes.example/api/v3/").ok().as_deref(),
            Some("https://ghes.example/api/v3")
        );
        assert_eq!(
            parse_base("http://127.0.0.1:8080").ok().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        for bad in ["api.github.com", "ftp://x", "https://x/?a=b", ""] {
            let err = parse_base(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("GitHub API URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn rate_limits_are_told_apart_from_permission_errors() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &headers,
                "Resource not accessible by integration"
            ),
            None
        );
        assert_eq!(
            rate_limit_wait(StatusCode::NOT_FOUND, &headers, "rate limit"),
            None
        );
        assert_eq!(
            rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &headers, ""),
            Some(SECONDARY_LIMIT_WAIT)
        );
        assert_eq!(
            rate_limit_wait(
                StatusCode::FORBIDDEN,
                &headers,
                "You have exceeded a secondary rate limit"
            ),
            Some(SECONDARY_LIMIT_WAIT)
        );
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            rate_limit_wait(StatusCode::FORBIDDEN, &headers, ""),
            Some(Duration::from_secs(7))
        );
        let mut headers = HeaderMap::new();
        let reset = unix_secs(SystemTime::now()) + 100;
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        let wait = rate_limit_wait(StatusCode::FORBIDDEN, &headers, "API rate limit exceeded");
        assert!(
            matches!(wait, Some(w) if (99..=102).contains(&w.as_secs())),
            "{wait:?}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = ClientPolicy::default();
        assert_eq!(backoff(&policy, 1), Duration::from_millis(500));
        assert_eq!(backoff(&policy, 2), Duration::from_secs(1));
        assert_eq!(backoff(&policy, 10), Duration::from_secs(8));
        assert_eq!(backoff(&policy, u32::MAX), Duration::from_secs(8));
    }

    #[test]
    fn error_messages_never_quote_a_non_json_body() {
        assert_eq!(github_message(br#"{"message":"Not Found"}"#), "Not Found");
        assert_eq!(
            github_message(b"<html>secret</html>"),
            "(a 19-byte body that is not GitHub's JSON)"
        );
        assert_eq!(github_message(b""), "(empty body)");
    }
}
