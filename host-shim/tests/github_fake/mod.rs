//! A fake GitHub API on 127.0.0.1 for the client tests: the App token
//! exchange, `generate-jitconfig` and runner deletion for repo, org and
//! enterprise scope, checked the way GitHub documents them, plus failure
//! injection (5xx, rate limits, delays, revoked tokens).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
use rsa::pkcs8::EncodePrivateKey;
use serde_json::{json, Value};

pub const APP_ID: u64 = 4242;

/// A throw-away RSA key pair, made once per test binary (no key file in the repo).
pub struct TestKey {
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`), the format GitHub hands out.
    pub private_pkcs1: String,
    pub private_pkcs8: String,
    pub public_pem: String,
}

pub fn test_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA keygen");
        TestKey {
            private_pkcs1: key.to_pkcs1_pem(LineEnding::LF).expect("pkcs1").to_string(),
            private_pkcs8: key.to_pkcs8_pem(LineEnding::LF).expect("pkcs8").to_string(),
            public_pem: key
                .to_public_key()
                .to_pkcs1_pem(LineEnding::LF)
                .expect("public pem"),
        }
    })
}

/// One injected answer, used instead of the real one for the next request
/// to a runner or token endpoint.
#[derive(Clone)]
pub struct Failure {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Failure {
    pub fn server_error() -> Self {
        Self {
            status: 500,
            headers: vec![],
            body: json!({"message": "Server Error"}).to_string(),
        }
    }

    /// A primary rate limit: 403, remaining 0, reset at `reset_unix`.
    pub fn rate_limited_until(reset_unix: u64) -> Self {
        Self {
            status: 403,
            headers: vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset_unix.to_string()),
            ],
            body: json!({"message": "API rate limit exceeded for installation ID 7."}).to_string(),
        }
    }

    /// A secondary rate limit with `Retry-After`.
    pub fn retry_after(secs: u64) -> Self {
        Self {
            status: 429,
            headers: vec![("retry-after", secs.to_string())],
            body: json!({"message": "You have exceeded a secondary rate limit."}).to_string(),
        }
    }

    pub fn status(status: u16, message: &str) -> Self {
        Self {
            status,
            headers: vec![],
            body: json!({ "message": message }).to_string(),
        }
    }

    /// A 201 whose body does not match the documentation.
    pub fn raw(status: u16, body: String) -> Self {
        Self {
            status,
            headers: vec![],
            body,
        }
    }
}

/// What the fake saw: one entry per request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Without the GHES `/api/v3` prefix.
    pub path: String,
    pub ghes_prefix: bool,
}

#[derive(Default)]
struct Inner {
    token_lifetime: Duration,
    /// Valid tokens and when they expire.
    tokens: HashMap<String, u64>,
    token_requests: u32,
    next_runner_id: u64,
    /// Registered runners: id -> (scope path, name).
    runners: HashMap<u64, (String, String)>,
    /// Encoded JIT configs handed out, for leak checks.
    jit_configs: Vec<String>,
    failures: VecDeque<Failure>,
    delay: Duration,
    seen: Vec<Seen>,
}

#[derive(Clone)]
pub struct FakeGithub {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    decoding_key: Arc<DecodingKey>,
}

impl FakeGithub {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token_lifetime: Duration::from_secs(3600),
            next_runner_id: 100,
            ..Inner::default()
        }));
        let decoding_key = Arc::new(
            DecodingKey::from_rsa_pem(test_key().public_pem.as_bytes()).expect("public key"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let fake = Self {
            url,
            inner,
            decoding_key,
        };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long from now the tokens issued from now on expire.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.lock().token_lifetime = lifetime;
    }

    /// Answers the next requests with these failures, in order.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut inner = self.lock();
        inner.failures.extend(std::iter::repeat_n(failure, n));
    }

    /// Waits this long before every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Invalidates every token issued so far (as when an App is re-keyed).
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn token_requests(&self) -> u32 {
        self.lock().token_requests
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().tokens.keys().cloned().collect()
    }

    pub fn jit_configs(&self) -> Vec<String> {
        self.lock().jit_configs.clone()
    }

    pub fn runner_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().runners.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests seen for paths ending with `suffix`.
    pub fn count(&self, method: Method, suffix: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.method == method && s.path.ends_with(suffix))
            .count()
    }

    fn check_jwt(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        #[derive(serde::Deserialize)]
        struct Claims {
            iat: u64,
            exp: u64,
            iss: u64,
        }
        let jwt = bearer(headers, "Bearer ")
            .ok_or_else(|| unauthorized("A JSON web token could not be decoded"))?;
        let mut validation = Validation::new(Algorithm::RS256);
        // iss is Kiln's numeric App id, which jsonwebtoken's own issuer check
        // (strings only) cannot read: `Claims` requires and checks it instead.
        validation.set_required_spec_claims(&["exp", "iat"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(&jwt, &self.decoding_key, &validation)
            .map_err(|e| unauthorized(&format!("bad JWT: {e}")))?
            .claims;
        let now = now_unix();
        let problem = if claims.iss != APP_ID {
            Some(format!("iss {} is not the App id {APP_ID}", claims.iss))
        } else if claims.iat > now {
            Some(
                "'Issued at' claim (iat) must be an Integer representing a time in the past".into(),
            )
        } else if claims.exp <= claims.iat || claims.exp - claims.iat > 600 {
            Some("'Expiration time' claim ('exp') is too far in the future".into())
        } else if now - claims.iat < 50 {
            // Kiln backdates iat by 60 s for clock skew: make sure it still does.
            Some(format!("iat is only {} s in the past", now - claims.iat))
        } else {
            None
        };
        match problem {
            Some(p) => Err(unauthorized(&p)),
            None => Ok(()),
        }
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let token = bearer(headers, "token ")
            .or_else(|| bearer(headers, "Bearer "))
            .ok_or_else(|| unauthorized("Requires authentication"))?;
        match self.lock().tokens.get(&token) {
            Some(&expires) if expires > now_unix() => Ok(()),
            _ => Err(unauthorized("Bad credentials")),
        }
    }
}

async fn handle(
    State(fake): State<FakeGithub>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (path, ghes_prefix) = match uri.path().strip_prefix("/api/v3") {
        Some(rest) => (rest.to_owned(), true),
        None => (uri.path().to_owned(), false),
    };
    let (delay, failure) = {
        let mut inner = fake.lock();
        inner.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            ghes_prefix,
        });
        (inner.delay, inner.failures.pop_front())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(f) = failure {
        let mut response = (
            StatusCode::from_u16(f.status).expect("status"),
            [("content-type", "application/json")],
            f.body,
        )
            .into_response();
        for (name, value) in f.headers {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_str(&value).expect("header"));
        }
        return response;
    }
    if headers.get("user-agent").is_none() {
        return error(StatusCode::FORBIDDEN, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::POST, ["app", "installations", id, "access_tokens"]) => {
            if let Err(Rejection(m)) = fake.check_jwt(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            if id.parse::<u64>().is_err() {
                return error(StatusCode::NOT_FOUND, "Not Found");
            }
            let mut inner = fake.lock();
            inner.token_requests += 1;
            let token = format!("ghs_fake{:08}{}", inner.token_requests, id);
            let expires = now_unix() + inner.token_lifetime.as_secs();
            inner.tokens.insert(token.clone(), expires);
            let body = json!({
                "token": token,
                "expires_at": rfc3339(expires),
                "permissions": {"organization_self_hosted_runners": "write"},
                "repository_selection": "all",
            });
            (StatusCode::CREATED, body.to_string()).into_response()
        }
        (Method::POST, [scope @ .., "actions", "runners", "generate-jitconfig"])
            if valid_scope(scope) =>
        {
            if let Err(Rejection(m)) = fake.check_token(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let body: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => return error(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
            };
            if let Err(problem) = check_jit_body(&body) {
                return error(StatusCode::UNPROCESSABLE_ENTITY, &problem);
            }
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            let scope = scope.join("/");
            let mut inner = fake.lock();
            if inner
                .runners
                .values()
                .any(|(s, n)| *s == scope && *n == name)
            {
                return error(
                    StatusCode::CONFLICT,
                    &format!("Already exists - A runner with the name {name} already exists."),
                );
            }
            inner.next_runner_id += 1;
            let id = inner.next_runner_id;
            inner.runners.insert(id, (scope, name.clone()));
            let encoded = format!("eyJKSVQiOiJzZWNyZXQtand0LWNvbmZpZy0{id}fQ==");
            inner.jit_configs.push(encoded.clone());
            let answer = json!({
                "runner": {
                    "id": id, "name": name, "os": "unknown", "status": "offline", "busy": false,
                    "labels": body["labels"].as_array().map(|ls| ls.iter().map(|l| json!({"name": l, "type": "custom"})).collect::<Vec<_>>()),
                },
                "encoded_jit_config": encoded,
            });
            (StatusCode::CREATED, answer.to_string()).into_response()
        }
        (Method::DELETE, [scope @ .., "actions", "runners", id]) if valid_scope(scope) => {
            if let Err(Rejection(m)) = fake.check_token(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let scope = scope.join("/");
            let mut inner = fake.lock();
            let id: Option<u64> = id.parse().ok();
            match id.filter(|id| inner.runners.get(id).is_some_and(|(s, _)| *s == scope)) {
                Some(id) => {
                    inner.runners.remove(&id);
                    StatusCode::NO_CONTENT.into_response()
                }
                None => error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn valid_scope(scope: &[&str]) -> bool {
    matches!(scope, ["repos", _, _] | ["orgs", _] | ["enterprises", _])
}

/// GitHub's rules for the generate-jitconfig body.
fn check_jit_body(body: &Value) -> Result<(), String> {
    if body["name"].as_str().is_none_or(str::is_empty) {
        return Err("name is missing or not a string".into());
    }
    if !body["runner_group_id"].is_u64() {
        return Err("runner_group_id is missing or not an integer".into());
    }
    let labels = body["labels"]
        .as_array()
        .ok_or("labels is missing or not an array")?;
    if labels.is_empty() || labels.len() > 100 {
        return Err(format!(
            "labels must have 1 to 100 items, not {}",
            labels.len()
        ));
    }
    if !labels.iter().all(Value::is_string) {
        return Err("labels must be strings".into());
    }
    if !body["work_folder"].is_string() && !body["work_folder"].is_null() {
        return Err("work_folder must be a string".into());
    }
    Ok(())
}

/// A 401 the handler turns into GitHub's error JSON.
struct Rejection(String);

fn unauthorized(message: &str) -> Rejection {
    Rejection(message.to_owned())
}

fn bearer(headers: &HeaderMap, scheme: &str) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix(scheme)
        .map(str::to_owned)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"message": message, "documentation_url": "https://docs.github.com/rest"});
    (status, body.to_string()).into_response()
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 UTC, written independently of the client's own formatter.
fn rfc3339(unix: u64) -> String {
    let secs_of_day = unix % 86_400;
    let mut days = unix / 86_400;
    let mut year = 1970;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let month_lengths = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while days >= month_lengths[month] {
        days -= month_lengths[month];
        month += 1;
    }
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        month + 1,
        days + 1,
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

fn is_leap(year: u64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}
