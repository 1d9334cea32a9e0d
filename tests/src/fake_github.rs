//! A fake GitHub API on 127.0.0.1 for `kiln serve`'s end-to-end tests: the
//! App token exchange (the JWT checked against a key made at test time),
//! `generate-jitconfig` and runner deletion for repo, org and enterprise
//! scope, as GitHub documents them (see /work/shared/reference/github.md),
//! plus injected failures. A smaller copy of `host-shim/tests/github_fake`,
//! which another crate's tests cannot import.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
use serde_json::{json, Value};

pub const APP_ID: u64 = 4242;

/// A throw-away RSA key pair, made once per test process (no key file in
/// the repository).
pub struct TestKey {
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`), the format GitHub hands out.
    pub private_pem: String,
    pub public_pem: String,
}

pub fn test_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA keygen");
        TestKey {
            private_pem: key.to_pkcs1_pem(LineEnding::LF).expect("pkcs1").to_string(),
            public_pem: key
                .to_public_key()
                .to_pkcs1_pem(LineEnding::LF)
                .expect("public pem"),
        }
    })
}

/// An answer used instead of the real one for the next request.
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

impl Failure {
    pub fn status(status: u16, message: &str) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
}

/// A runner registered through `generate-jitconfig`.
#[derive(Debug, Clone)]
pub struct Registered {
    pub id: u64,
    /// `orgs/acme`, `repos/o/r`, `enterprises/e`.
    pub scope: String,
    /// The request body as sent.
    pub request: Value,
    /// The `encoded_jit_config` handed out: random, so a test can tell
    /// whether it reached a guest, a log or a file.
    pub encoded: String,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, u64>,
    token_requests: u32,
    next_runner_id: u64,
    /// Still registered: id -> scope.
    live: HashMap<u64, String>,
    registered: Vec<Registered>,
    deleted: Vec<u64>,
    /// (path suffix, answer): the next request to such a path gets it.
    failures: VecDeque<(String, Failure)>,
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

    /// Answers the next `n` requests to paths ending with `suffix` with
    /// `failure`.
    pub fn fail_next(&self, n: usize, suffix: &str, failure: Failure) {
        let mut inner = self.lock();
        inner
            .failures
            .extend(std::iter::repeat_n((suffix.to_owned(), failure), n));
    }

    pub fn registered(&self) -> Vec<Registered> {
        self.lock().registered.clone()
    }

    /// Runner ids deleted, in order.
    pub fn deleted(&self) -> Vec<u64> {
        self.lock().deleted.clone()
    }

    /// Runner ids still registered.
    pub fn live_runners(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().live.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests seen with `method` for paths ending with `suffix`.
    pub fn count(&self, method: Method, suffix: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.method == method && s.path.ends_with(suffix))
            .count()
    }

    fn check_jwt(&self, headers: &HeaderMap) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Claims {
            iat: u64,
            exp: u64,
            iss: u64,
        }
        let jwt = bearer(headers, "Bearer ").ok_or("A JSON web token could not be decoded")?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iat"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(&jwt, &self.decoding_key, &validation)
            .map_err(|e| format!("bad JWT: {e}"))?
            .claims;
        if claims.iss != APP_ID {
            return Err(format!("iss {} is not the App id {APP_ID}", claims.iss));
        }
        if claims.iat > now_unix() || claims.exp <= claims.iat || claims.exp - claims.iat > 600 {
            return Err("iat/exp out of GitHub's bounds".into());
        }
        Ok(())
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), String> {
        let token = bearer(headers, "token ")
            .or_else(|| bearer(headers, "Bearer "))
            .ok_or("Requires authentication")?;
        match self.lock().tokens.get(&token) {
            Some(&expires) if expires > now_unix() => Ok(()),
            _ => Err("Bad credentials".into()),
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
    let path = uri.path().to_owned();
    let failure = {
        let mut inner = fake.lock();
        inner.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
        });
        match inner.failures.front() {
            Some((suffix, _)) if path.ends_with(suffix.as_str()) => {
                inner.failures.pop_front().map(|(_, f)| f)
            }
            _ => None,
        }
    };
    if let Some(f) = failure {
        return error(StatusCode::from_u16(f.status).expect("status"), &f.message);
    }
    if headers.get("user-agent").is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "Please make sure your request has a User-Agent header",
        );
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::POST, ["app", "installations", id, "access_tokens"]) => {
            if let Err(m) = fake.check_jwt(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let mut inner = fake.lock();
            inner.token_requests += 1;
            let token = format!("ghs_fake{:08}{id}", inner.token_requests);
            let expires = now_unix() + 3600;
            inner.tokens.insert(token.clone(), expires);
            let body = json!({"token": token, "expires_at": rfc3339(expires)});
            (StatusCode::CREATED, body.to_string()).into_response()
        }
        (Method::POST, [scope @ .., "actions", "runners", "generate-jitconfig"])
            if valid_scope(scope) =>
        {
            if let Err(m) = fake.check_token(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let request: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) => return error(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
            };
            if let Err(problem) = check_jit_body(&request) {
                return error(StatusCode::UNPROCESSABLE_ENTITY, &problem);
            }
            let name = request["name"].as_str().unwrap_or_default().to_owned();
            let scope = scope.join("/");
            let mut inner = fake.lock();
            let taken = inner.registered.iter().any(|r| {
                inner.live.contains_key(&r.id) && r.scope == scope && r.request["name"] == name
            });
            if taken {
                return error(
                    StatusCode::CONFLICT,
                    &format!("Already exists - A runner with the name {name} already exists."),
                );
            }
            inner.next_runner_id += 1;
            let id = inner.next_runner_id;
            let encoded = format!("eyJ{}fQ==", crate::job::random_token(48));
            inner.live.insert(id, scope.clone());
            inner.registered.push(Registered {
                id,
                scope,
                request: request.clone(),
                encoded: encoded.clone(),
            });
            let answer = json!({
                "runner": {
                    "id": id, "name": name, "os": "unknown", "status": "offline", "busy": false,
                    "labels": request["labels"],
                },
                "encoded_jit_config": encoded,
            });
            (StatusCode::CREATED, answer.to_string()).into_response()
        }
        (Method::DELETE, [scope @ .., "actions", "runners", id]) if valid_scope(scope) => {
            if let Err(m) = fake.check_token(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let scope = scope.join("/");
            let mut inner = fake.lock();
            let id: Option<u64> = id.parse().ok();
            match id.filter(|id| inner.live.get(id) == Some(&scope)) {
                Some(id) => {
                    inner.live.remove(&id);
                    inner.deleted.push(id);
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
    if labels.is_empty() || labels.len() > 100 || !labels.iter().all(Value::is_string) {
        return Err("labels must be 1 to 100 strings".into());
    }
    if !body["work_folder"].is_string() && !body["work_folder"].is_null() {
        return Err("work_folder must be a string".into());
    }
    Ok(())
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

/// RFC 3339 UTC, written independently of the client's own parser.
fn rfc3339(unix: u64) -> String {
    let secs_of_day = unix % 86_400;
    let mut days = unix / 86_400;
    let mut year = 1970;
    let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let feb = if leap(year) { 29 } else { 28 };
    let month_lengths = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
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
