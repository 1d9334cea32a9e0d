//! A fake GitHub API on 127.0.0.1, for the GitHub App client's tests
//! (`tests/github_api.rs`), `kiln serve`'s end-to-end tests
//! (`tests/serve_e2e.rs`) and, as a process (`src/bin/fake-github`),
//! `cargo xtask bench`'s `kiln serve` memory figures: the App token
//! exchange and the authenticated App (`GET /app`; the JWT checked against a
//! key made at test time),
//! `generate-jitconfig`, getting a runner (its `busy` field) and runner
//! deletion for repo, org and enterprise scope, and getting a workflow job
//! (every job it was not told about is `queued`, in whichever repository
//! is asked; [`FakeGithub::set_job`] says otherwise), checked the way
//! GitHub documents them (the job and runner answers against GitHub's
//! schemas in `data/github-job-runner.json`), with an optional GHES
//! `/api/v3` prefix, plus injected trouble: canned answers (5xx, rate
//! limits, bodies that break the documented shape), delays and revoked
//! tokens.
//!
//! For the reconciler (`tests/github_reconcile.rs`): the installation's
//! repositories, queued workflow runs and their jobs (made from the jobs
//! [`FakeGithub::queue_job`] describes), the runners of a scope, and job
//! re-runs; list answers carry an `ETag` and a matching `If-None-Match` is
//! answered 304, which [`FakeGithub::counted_calls`] does not count, as
//! GitHub's rate limit does not. Every request to these operations (query
//! parameters, body) and every answer is checked against GitHub's schemas in
//! `data/github-reconcile.json`; [`FakeGithub::violations`] lists the
//! breaches, and a request that breaks them is answered 422.
//!
//! For the scale-set listener: registration tokens (checked against
//! `data/github-registration-token.json`) and `POST
//! /actions/runner-registration` (`RemoteAuth <registration token>`),
//! which answers with the Actions service URL and an admin token of the
//! fake broker attached with [`FakeGithub::attach_broker`].

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

/// The App's installation on every organization, repository and
/// enterprise the fake is asked about.
pub const INSTALLATION_ID: u64 = 7;

/// A throw-away RSA key pair, made once per test process (no key file in
/// the repository).
pub struct TestKey {
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`), the format GitHub hands out.
    pub private_pkcs1: String,
    /// PKCS#8 (`BEGIN PRIVATE KEY`), which Kiln accepts too.
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

/// An answer given instead of the real one (see [`FakeGithub::fail_next`]).
#[derive(Clone, Debug)]
pub struct Failure {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Failure {
    /// GitHub's error JSON with this status and message.
    pub fn status(status: u16, message: &str) -> Self {
        Self {
            status,
            headers: vec![],
            body: json!({ "message": message }).to_string(),
        }
    }

    pub fn server_error() -> Self {
        Self::status(500, "Server Error")
    }

    /// A primary rate limit: 403, remaining 0, reset at `reset_unix`.
    pub fn rate_limited_until(reset_unix: u64) -> Self {
        Self {
            headers: vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset_unix.to_string()),
            ],
            ..Self::status(403, "API rate limit exceeded for installation ID 7.")
        }
    }

    /// A secondary rate limit with `Retry-After`.
    pub fn retry_after(secs: u64) -> Self {
        Self {
            headers: vec![("retry-after", secs.to_string())],
            ..Self::status(429, "You have exceeded a secondary rate limit.")
        }
    }

    /// Any status with this body as it is, e.g. a 201 that does not match
    /// the documentation.
    pub fn raw(status: u16, body: String) -> Self {
        Self {
            status,
            headers: vec![],
            body,
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Without the GHES `/api/v3` prefix.
    pub path: String,
    /// Whether the request came with the GHES `/api/v3` prefix.
    pub ghes_prefix: bool,
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
    /// whether it reached a guest, a log, an error or a file.
    pub encoded: String,
}

#[derive(Default)]
struct Inner {
    token_lifetime: Duration,
    /// Valid tokens and when they expire (Unix seconds).
    tokens: HashMap<String, u64>,
    token_requests: u32,
    next_runner_id: u64,
    /// Still registered: id -> scope.
    live: HashMap<u64, String>,
    /// Every registration, deleted or not, in order.
    registered: Vec<Registered>,
    deleted: Vec<u64>,
    /// (path suffix, answer), in order: a request gets the first answer
    /// whose suffix its path ends with ("" matches every path).
    failures: VecDeque<(String, Failure)>,
    delay: Duration,
    seen: Vec<Seen>,
    /// Jobs the test described, by id.
    jobs: HashMap<u64, FakeJob>,
    /// Runners GitHub shows as busy.
    busy: Vec<u64>,
    /// The installation's repositories (`owner/name`), in order.
    repositories: Vec<String>,
    /// Runners added by [`FakeGithub::add_runner`]: id -> (name, status, busy).
    listed: HashMap<u64, (String, String, bool)>,
    /// Jobs re-run, in order.
    reruns: Vec<u64>,
    /// Every call to a reconciler operation, in order.
    api_calls: Vec<ApiCall>,
    /// Where requests or answers broke GitHub's schemas.
    violations: Vec<String>,
    /// Registration tokens: token -> (scope, expiry in Unix seconds).
    registration_tokens: HashMap<String, (String, u64)>,
    /// The scale-set broker `runner-registration` hands out.
    broker: Option<crate::fake_broker::BrokerLink>,
}

/// A workflow job of the fake.
#[derive(Debug, Clone)]
pub struct FakeJob {
    /// `owner/name`.
    pub repository: String,
    pub run_id: u64,
    pub status: String,
    pub conclusion: Option<String>,
    pub labels: Vec<String>,
}

/// One call to an operation the reconciler uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// GitHub's `operationId`, e.g. `actions/list-workflow-runs-for-repo`.
    pub operation: &'static str,
    /// Answered 304 Not Modified: free under GitHub's rate limit.
    pub not_modified: bool,
}

/// The operation ids of the reconciler's calls.
pub mod ops {
    pub const LIST_REPOS: &str = "apps/list-repos-accessible-to-installation";
    pub const LIST_RUNS: &str = "actions/list-workflow-runs-for-repo";
    pub const LIST_JOBS: &str = "actions/list-jobs-for-workflow-run";
    pub const RERUN_JOB: &str = "actions/re-run-job-for-workflow-run";
    pub const LIST_RUNNERS_REPO: &str = "actions/list-self-hosted-runners-for-repo";
    pub const LIST_RUNNERS_ORG: &str = "actions/list-self-hosted-runners-for-org";
    pub const LIST_RUNNERS_ENTERPRISE: &str =
        "enterprise-admin/list-self-hosted-runners-for-enterprise";
    pub const DELETE_RUNNER: &str = "actions/delete-self-hosted-runner";
    pub const ORG_INSTALLATION: &str = "apps/get-org-installation";
    pub const REPO_INSTALLATION: &str = "apps/get-repo-installation";
    pub const ENTERPRISE_INSTALLATION: &str = "apps/get-enterprise-installation";
}

/// GitHub's primary rate limit of an installation, as the fake reports it.
pub const RATE_LIMIT: u64 = 5000;

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

    /// Answers the next `n` requests, whatever their path, with `failure`.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.fail_next_for(n, "", failure);
    }

    /// Answers the next `n` requests to paths ending with `suffix` with
    /// `failure`; other requests are answered as usual meanwhile.
    pub fn fail_next_for(&self, n: usize, suffix: &str, failure: Failure) {
        let mut inner = self.lock();
        inner
            .failures
            .extend(std::iter::repeat_n((suffix.to_owned(), failure), n));
    }

    /// Job `job_id` is in `repository` (`owner/name`) with `status`
    /// (`queued`, `in_progress`, `completed`, ...); asked for in another
    /// repository it is not found.
    pub fn set_job(&self, job_id: u64, repository: &str, status: &str) {
        let job = FakeJob {
            repository: repository.to_owned(),
            run_id: job_id + 1,
            status: status.to_owned(),
            conclusion: (status == "completed").then(|| "success".to_owned()),
            labels: vec!["self-hosted".into()],
        };
        self.lock().jobs.insert(job_id, job);
    }

    /// Adds `owner/name` to the installation's repositories.
    pub fn add_repository(&self, repository: &str) {
        self.lock().repositories.push(repository.to_owned());
    }

    /// Job `job_id` of run `run_id` in `repository`, `queued`, with these
    /// `runs-on` labels. No webhook is sent: the fake sends none.
    pub fn queue_job(&self, repository: &str, run_id: u64, job_id: u64, labels: &[&str]) {
        let job = FakeJob {
            repository: repository.to_owned(),
            run_id,
            status: "queued".into(),
            conclusion: None,
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        };
        self.lock().jobs.insert(job_id, job);
    }

    /// Sets job `job_id`'s status and conclusion (`None` while not completed).
    pub fn set_job_outcome(&self, job_id: u64, status: &str, conclusion: Option<&str>) {
        if let Some(job) = self.lock().jobs.get_mut(&job_id) {
            job.status = status.to_owned();
            job.conclusion = conclusion.map(str::to_owned);
        }
    }

    /// Job `job_id` as the fake has it now.
    pub fn job(&self, job_id: u64) -> Option<FakeJob> {
        self.lock().jobs.get(&job_id).cloned()
    }

    /// A runner registered by someone (not through `generate-jitconfig`) in
    /// `scope` (`orgs/acme`, `repos/o/r`, `enterprises/e`); returns its id.
    pub fn add_runner(&self, scope: &str, name: &str, status: &str, busy: bool) -> u64 {
        let mut inner = self.lock();
        inner.next_runner_id += 1;
        let id = inner.next_runner_id;
        inner.live.insert(id, scope.to_owned());
        inner
            .listed
            .insert(id, (name.to_owned(), status.to_owned(), busy));
        id
    }

    /// Jobs re-run, in order.
    pub fn reruns(&self) -> Vec<u64> {
        self.lock().reruns.clone()
    }

    /// Every call to a reconciler operation, in order.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        self.lock().api_calls.clone()
    }

    /// Calls GitHub counts against the installation's rate limit (all but
    /// 304s), for `operation` or, with None, every operation.
    pub fn counted_calls(&self, operation: Option<&str>) -> usize {
        self.lock()
            .api_calls
            .iter()
            .filter(|c| !c.not_modified && operation.is_none_or(|o| o == c.operation))
            .count()
    }

    /// Calls answered 304 Not Modified.
    pub fn not_modified_calls(&self) -> usize {
        self.lock()
            .api_calls
            .iter()
            .filter(|c| c.not_modified)
            .count()
    }

    /// Every place a request to, or an answer of, a reconciler operation
    /// broke GitHub's schemas (`data/github-reconcile.json`); tests assert
    /// it is empty.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// GitHub shows runner `id` as busy (running a job).
    pub fn set_runner_busy(&self, id: u64) {
        self.lock().busy.push(id);
    }

    /// Waits this long before every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// How long from now the tokens issued from now on expire.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.lock().token_lifetime = lifetime;
    }

    /// Invalidates every token issued so far (as when an App is re-keyed).
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Installation tokens issued.
    pub fn token_requests(&self) -> u32 {
        self.lock().token_requests
    }

    /// Tokens issued and not revoked, for leak checks.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().tokens.keys().cloned().collect()
    }

    /// Every runner registered, deleted or not, in order.
    pub fn registered(&self) -> Vec<Registered> {
        self.lock().registered.clone()
    }

    /// Every `encoded_jit_config` handed out, in order, for leak checks.
    pub fn jit_configs(&self) -> Vec<String> {
        self.lock()
            .registered
            .iter()
            .map(|r| r.encoded.clone())
            .collect()
    }

    /// Runner ids deleted, in order.
    pub fn deleted(&self) -> Vec<u64> {
        self.lock().deleted.clone()
    }

    /// Runner ids still registered, sorted.
    pub fn live_runners(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().live.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Every request received, in order.
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
        // iss is Kiln's numeric App id, which jsonwebtoken's own issuer check
        // (strings only) cannot read: `Claims` requires and checks it instead.
        validation.set_required_spec_claims(&["exp", "iat"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(&jwt, &self.decoding_key, &validation)
            .map_err(|e| format!("bad JWT: {e}"))?
            .claims;
        let now = now_unix();
        if claims.iss != APP_ID {
            return Err(format!("iss {} is not the App id {APP_ID}", claims.iss));
        }
        if claims.iat > now {
            return Err(
                "'Issued at' claim (iat) must be an Integer representing a time in the past".into(),
            );
        }
        if claims.exp <= claims.iat || claims.exp - claims.iat > 600 {
            return Err("'Expiration time' claim ('exp') is too far in the future".into());
        }
        if now - claims.iat < 50 {
            // Kiln backdates iat by 60 s for clock skew: make sure it still does.
            return Err(format!("iat is only {} s in the past", now - claims.iat));
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

    /// Answers a reconciler list operation: checks the token and the
    /// request against GitHub's description, builds the answer with
    /// `build(state, query)`, checks it against the schema, and answers 304
    /// when `If-None-Match` names its `ETag` (not counted, like GitHub).
    /// The App's installation for a scope (authenticated as the App).
    fn installation(&self, operation: &'static str, headers: &HeaderMap, target: &str) -> Response {
        if let Err(m) = self.check_jwt(headers) {
            return error(StatusCode::UNAUTHORIZED, &m);
        }
        let id = INSTALLATION_ID;
        let answer = json!({
            "id": id,
            "app_id": APP_ID,
            "app_slug": "kiln-test",
            "target_id": 1,
            "target_type": target,
            "single_file_name": null,
            "repository_selection": "all",
            "access_tokens_url": format!("https://api.github.com/app/installations/{id}/access_tokens"),
            "html_url": format!("https://github.com/organizations/acme/settings/installations/{id}"),
            "repositories_url": "https://api.github.com/installation/repositories",
            "events": ["workflow_job"],
            "account": null,
            "permissions": {"organization_self_hosted_runners": "write", "actions": "write"},
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "suspended_by": null,
            "suspended_at": null,
        });
        let mut inner = self.lock();
        let problems = crate::github_schema::check_answer(operation, 200, &answer);
        inner.violations.extend(problems);
        inner.api_calls.push(ApiCall {
            operation,
            not_modified: false,
        });
        drop(inner);
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            answer.to_string(),
        )
            .into_response()
    }

    fn reconcile_call(
        &self,
        operation: &'static str,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        build: impl FnOnce(&Inner, Option<&str>) -> Value,
    ) -> Response {
        if let Err(m) = self.check_token(headers) {
            return error(StatusCode::UNAUTHORIZED, &m);
        }
        let mut inner = self.lock();
        let problems = crate::github_schema::check_request(operation, uri.query(), body);
        if !problems.is_empty() {
            let message = problems.join("; ");
            inner.violations.extend(problems);
            return error(StatusCode::UNPROCESSABLE_ENTITY, &message);
        }
        let answer = build(&inner, uri.query());
        let problems = crate::github_schema::check_answer(operation, 200, &answer);
        inner.violations.extend(problems);
        let text = answer.to_string();
        let tag = etag(&text);
        let not_modified = headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == tag);
        inner.api_calls.push(ApiCall {
            operation,
            not_modified,
        });
        let remaining = RATE_LIMIT.saturating_sub(counted(&inner) as u64);
        drop(inner);
        let mut response = if not_modified {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            (StatusCode::OK, [("content-type", "application/json")], text).into_response()
        };
        let h = response.headers_mut();
        h.insert("etag", HeaderValue::from_str(&tag).expect("etag header"));
        h.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
        h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(now_unix() + 3600));
        response
    }

    /// `POST /repos/{o}/{r}/actions/jobs/{id}/rerun`: a completed job of
    /// that repository goes back to `queued`.
    fn rerun(
        &self,
        repository: &str,
        id: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        if let Err(m) = self.check_token(headers) {
            return error(StatusCode::UNAUTHORIZED, &m);
        }
        let mut inner = self.lock();
        inner.api_calls.push(ApiCall {
            operation: ops::RERUN_JOB,
            not_modified: false,
        });
        let problems = crate::github_schema::check_request(ops::RERUN_JOB, uri.query(), body);
        if !problems.is_empty() {
            let message = problems.join("; ");
            inner.violations.extend(problems);
            return error(StatusCode::UNPROCESSABLE_ENTITY, &message);
        }
        let Some(id) = id.parse::<u64>().ok() else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        let Some(job) = inner
            .jobs
            .get_mut(&id)
            .filter(|j| j.repository == repository)
        else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        if job.status != "completed" {
            return error(StatusCode::FORBIDDEN, "This job is not completed.");
        }
        job.status = "queued".into();
        job.conclusion = None;
        inner.reruns.push(id);
        let answer = json!({});
        let problems = crate::github_schema::check_answer(ops::RERUN_JOB, 201, &answer);
        inner.violations.extend(problems);
        (StatusCode::CREATED, answer.to_string()).into_response()
    }

    /// `runner-registration` answers with this broker's service URL and
    /// admin tokens (without one it answers 404).
    pub fn attach_broker(&self, broker: &crate::fake_broker::FakeBroker) {
        self.lock().broker = Some(broker.link());
    }

    /// Every registration token handed out so far expires now.
    pub fn expire_registration_tokens(&self) {
        for (_, expires) in self.lock().registration_tokens.values_mut() {
            *expires = 0;
        }
    }

    /// `POST /{scope}/actions/runners/registration-token` with an
    /// installation token: a registration token for that scope, valid for
    /// an hour, its answer checked against GitHub's schema.
    fn registration_token(&self, scope: &[&str], headers: &HeaderMap) -> Response {
        if let Err(m) = self.check_token(headers) {
            return error(StatusCode::UNAUTHORIZED, &m);
        }
        let operation = match scope {
            ["orgs", ..] => "actions/create-registration-token-for-org",
            ["repos", ..] => "actions/create-registration-token-for-repo",
            _ => "enterprise-admin/create-registration-token-for-enterprise",
        };
        let mut inner = self.lock();
        let token = format!("AREG{}", crate::job::random_token(16).to_uppercase());
        let expires = now_unix() + 3600;
        inner
            .registration_tokens
            .insert(token.clone(), (scope.join("/"), expires));
        let answer = json!({"token": token, "expires_at": rfc3339(expires)});
        let schema = &registration_token_operations()[operation]["responses"]["201"];
        let problems = crate::github_schema::check(schema, &answer);
        inner.violations.extend(
            problems
                .into_iter()
                .map(|p| format!("{operation} 201: {p}")),
        );
        (StatusCode::CREATED, answer.to_string()).into_response()
    }

    /// `POST /actions/runner-registration` with `RemoteAuth <registration
    /// token>` and `{url, runner_event: "register"}`, the url naming the
    /// token's scope: the attached broker's `{url, token}`.
    fn runner_registration(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let Some(token) = bearer(headers, "RemoteAuth ") else {
            return error(
                StatusCode::UNAUTHORIZED,
                "Requires RemoteAuth authentication",
            );
        };
        let request = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(_) => return self.registration_breach("the body is not JSON"),
        };
        let Some(url) = request["url"].as_str() else {
            return self.registration_breach("url is missing or not a string");
        };
        if request["runner_event"] != "register" {
            return self.registration_breach("runner_event is not \"register\"");
        }
        let mut inner = self.lock();
        let scope = match inner.registration_tokens.get(&token) {
            Some((scope, expires)) if *expires > now_unix() => scope.clone(),
            _ => return error(StatusCode::UNAUTHORIZED, "Bad credentials"),
        };
        let path = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = path.find('/').map_or("", |at| &path[at..]);
        let wanted = scope_path(&scope);
        if !path.trim_end_matches('/').ends_with(&wanted) {
            let problem = format!("runner-registration: url {url} does not name {wanted}");
            inner.violations.push(problem.clone());
            return error(StatusCode::BAD_REQUEST, &problem);
        }
        let Some(broker) = inner.broker.clone() else {
            return error(
                StatusCode::NOT_FOUND,
                "Not Found (no scale-set broker attached)",
            );
        };
        drop(inner);
        (StatusCode::OK, broker.register(&scope).to_string()).into_response()
    }

    fn registration_breach(&self, problem: &str) -> Response {
        let problem = format!("runner-registration: {problem}");
        self.lock().violations.push(problem.clone());
        error(StatusCode::BAD_REQUEST, &problem)
    }

    /// Takes the first injected failure meant for `path`, if any.
    fn take_failure(inner: &mut Inner, path: &str) -> Option<Failure> {
        let at = inner
            .failures
            .iter()
            .position(|(suffix, _)| path.ends_with(suffix.as_str()))?;
        inner.failures.remove(at).map(|(_, f)| f)
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
        let failure = FakeGithub::take_failure(&mut inner, &path);
        (inner.delay, failure)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(f) = failure {
        return injected(f);
    }
    if headers.get("user-agent").is_none() {
        return error(StatusCode::FORBIDDEN, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        // The authenticated App (`kiln doctor` checks the key with it).
        (Method::GET, ["app"]) => {
            if let Err(m) = fake.check_jwt(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let body = json!({
                "id": APP_ID,
                "slug": "kiln-test",
                "name": "Kiln test",
                "owner": {"login": "acme", "id": 1},
                "permissions": {"organization_self_hosted_runners": "write", "actions": "write"},
                "events": ["workflow_job"],
            });
            (StatusCode::OK, body.to_string()).into_response()
        }
        (Method::POST, ["app", "installations", id, "access_tokens"]) => {
            if let Err(m) = fake.check_jwt(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            if id.parse::<u64>().is_err() {
                return error(StatusCode::NOT_FOUND, "Not Found");
            }
            let mut inner = fake.lock();
            inner.token_requests += 1;
            let token = format!("ghs_fake{:08}{id}", inner.token_requests);
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
        (Method::POST, [scope @ .., "actions", "runners", "registration-token"])
            if valid_scope(scope) =>
        {
            fake.registration_token(scope, &headers)
        }
        (Method::POST, ["actions", "runner-registration"]) => {
            fake.runner_registration(&headers, &body)
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
            let labels: Vec<Value> = request["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| json!({"name": l, "type": "custom"}))
                .collect();
            let answer = json!({
                "runner": {
                    "id": id, "name": name, "os": "unknown", "status": "offline", "busy": false,
                    "labels": labels,
                },
                "encoded_jit_config": encoded,
            });
            (StatusCode::CREATED, answer.to_string()).into_response()
        }
        (Method::GET, ["repos", owner, repo, "actions", "jobs", id]) => {
            if let Err(m) = fake.check_token(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let Ok(id) = id.parse::<u64>() else {
                return error(StatusCode::NOT_FOUND, "Not Found");
            };
            let asked = format!("{owner}/{repo}");
            let job = match fake.lock().jobs.get(&id) {
                Some(j) => j.clone(),
                None => FakeJob {
                    repository: asked.clone(),
                    run_id: id + 1,
                    status: "queued".into(),
                    conclusion: None,
                    labels: vec!["self-hosted".into()],
                },
            };
            if job.repository != asked {
                return error(StatusCode::NOT_FOUND, "Not Found");
            }
            (StatusCode::OK, fake_job_body(id, &job).to_string()).into_response()
        }
        (Method::GET, ["orgs", _, "installation"]) => {
            fake.installation(ops::ORG_INSTALLATION, &headers, "Organization")
        }
        (Method::GET, ["repos", _, _, "installation"]) => {
            fake.installation(ops::REPO_INSTALLATION, &headers, "Organization")
        }
        (Method::GET, ["enterprises", _, "installation"]) => {
            fake.installation(ops::ENTERPRISE_INSTALLATION, &headers, "Enterprise")
        }
        (Method::GET, ["installation", "repositories"]) => {
            fake.reconcile_call(ops::LIST_REPOS, &uri, &headers, &body, |inner, q| {
                let all: Vec<Value> = inner
                    .repositories
                    .iter()
                    .enumerate()
                    .map(|(i, r)| repository_body(i as u64 + 1, r))
                    .collect();
                let total = all.len();
                json!({
                    "total_count": total,
                    "repositories": paginate(all, q),
                    "repository_selection": "all",
                })
            })
        }
        (Method::GET, ["repos", owner, repo, "actions", "runs"]) => {
            let repository = format!("{owner}/{repo}");
            fake.reconcile_call(ops::LIST_RUNS, &uri, &headers, &body, |inner, q| {
                let wanted = query_value(q, "status");
                let runs: Vec<Value> = runs_of(inner, &repository)
                    .into_iter()
                    .filter(|(_, status)| wanted.as_deref().is_none_or(|w| w == status))
                    .map(|(id, status)| run_body(id, &repository, &status))
                    .collect();
                let total = runs.len();
                json!({"total_count": total, "workflow_runs": paginate(runs, q)})
            })
        }
        (Method::GET, ["repos", owner, repo, "actions", "runs", run_id, "jobs"]) => {
            let repository = format!("{owner}/{repo}");
            let run_id: Option<u64> = run_id.parse().ok();
            fake.reconcile_call(ops::LIST_JOBS, &uri, &headers, &body, |inner, q| {
                let mut ids: Vec<u64> = inner
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.repository == repository && Some(j.run_id) == run_id)
                    .map(|(id, _)| *id)
                    .collect();
                ids.sort_unstable();
                let jobs: Vec<Value> = ids
                    .iter()
                    .filter_map(|id| inner.jobs.get(id).map(|j| fake_job_body(*id, j)))
                    .collect();
                let total = jobs.len();
                json!({"total_count": total, "jobs": paginate(jobs, q)})
            })
        }
        (Method::POST, ["repos", owner, repo, "actions", "jobs", id, "rerun"]) => {
            fake.rerun(&format!("{owner}/{repo}"), id, &uri, &headers, &body)
        }
        (Method::GET, [scope @ .., "actions", "runners"]) if valid_scope(scope) => {
            let operation = match scope {
                ["repos", ..] => ops::LIST_RUNNERS_REPO,
                ["orgs", ..] => ops::LIST_RUNNERS_ORG,
                _ => ops::LIST_RUNNERS_ENTERPRISE,
            };
            let scope = scope.join("/");
            fake.reconcile_call(operation, &uri, &headers, &body, |inner, q| {
                let runners = runners_of(inner, &scope);
                let total = runners.len();
                json!({"total_count": total, "runners": paginate(runners, q)})
            })
        }
        (Method::GET, [scope @ .., "actions", "runners", id]) if valid_scope(scope) => {
            if let Err(m) = fake.check_token(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let scope = scope.join("/");
            let inner = fake.lock();
            let id: Option<u64> = id.parse().ok();
            let found = id
                .filter(|id| inner.live.get(id) == Some(&scope))
                .and_then(|id| inner.registered.iter().find(|r| r.id == id));
            match found {
                Some(r) => {
                    let busy = inner.busy.contains(&r.id);
                    (StatusCode::OK, runner_body(r, busy).to_string()).into_response()
                }
                None => error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        (Method::DELETE, [scope @ .., "actions", "runners", id]) if valid_scope(scope) => {
            if let Err(m) = fake.check_token(&headers) {
                return error(StatusCode::UNAUTHORIZED, &m);
            }
            let scope = scope.join("/");
            let mut inner = fake.lock();
            let id: Option<u64> = id.parse().ok();
            inner.api_calls.push(ApiCall {
                operation: ops::DELETE_RUNNER,
                not_modified: false,
            });
            match id.filter(|id| inner.live.get(id) == Some(&scope)) {
                Some(id) => {
                    inner.live.remove(&id);
                    inner.listed.remove(&id);
                    inner.deleted.push(id);
                    StatusCode::NO_CONTENT.into_response()
                }
                None => error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// A `job` as GitHub's REST API describes it (every required field).
pub fn job_body(id: u64, repository: &str, status: &str) -> Value {
    let job = FakeJob {
        repository: repository.to_owned(),
        run_id: id + 1,
        status: status.to_owned(),
        conclusion: (status == "completed").then(|| "success".to_owned()),
        labels: vec!["self-hosted".into()],
    };
    fake_job_body(id, &job)
}

/// [`job_body`] of a [`FakeJob`].
pub fn fake_job_body(id: u64, job: &FakeJob) -> Value {
    let (repository, status, run_id) = (&job.repository, &job.status, job.run_id);
    let api = format!("https://api.github.com/repos/{repository}/actions");
    let done = status == "completed";
    json!({
        "id": id, "node_id": format!("CR_{id}"), "run_id": run_id,
        "run_url": format!("{api}/runs/{run_id}"), "run_attempt": 1,
        "head_sha": "f83a356604ae3c5d03e1b46ef4d1ca77d64a90b0",
        "workflow_name": "CI", "head_branch": "main", "name": "build",
        "url": format!("{api}/jobs/{id}"),
        "html_url": format!("https://github.com/{repository}/actions/runs/{run_id}/job/{id}"),
        "status": status, "conclusion": job.conclusion,
        "created_at": "2026-01-01T10:00:00Z", "started_at": "2026-01-01T10:00:00Z",
        "completed_at": if done { json!("2026-01-01T10:05:00Z") } else { Value::Null },
        "check_run_url": format!("https://api.github.com/repos/{repository}/check-runs/{id}"),
        "labels": job.labels, "steps": [],
        "runner_id": Value::Null, "runner_name": Value::Null,
        "runner_group_id": Value::Null, "runner_group_name": Value::Null,
    })
}

/// A `runner` as GitHub's REST API describes it.
pub fn runner_body(r: &Registered, busy: bool) -> Value {
    let labels: Vec<Value> = r.request["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| json!({"name": l, "type": "custom"}))
        .collect();
    json!({
        "id": r.id, "name": r.request["name"], "os": "Linux",
        "status": if busy { "online" } else { "offline" }, "busy": busy,
        "labels": labels, "ephemeral": true,
    })
}

/// Calls counted against the rate limit so far.
fn counted(inner: &Inner) -> usize {
    inner.api_calls.iter().filter(|c| !c.not_modified).count()
}

/// A weak `ETag` of an answer body (stable within a process).
fn etag(body: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("W/\"{:016x}\"", hasher.finish())
}

/// The value of query parameter `name`, if given.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The `page`th slice of `per_page` items (GitHub's defaults 1 and 30).
fn paginate(items: Vec<Value>, query: Option<&str>) -> Vec<Value> {
    let number = |name, default| {
        query_value(query, name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let per_page = number("per_page", 30).max(1);
    let page = number("page", 1).max(1);
    items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect()
}

/// `repository`'s runs (id, status), newest first: `in_progress` if a job
/// runs, else `queued` if one is queued, else `completed`.
fn runs_of(inner: &Inner, repository: &str) -> Vec<(u64, String)> {
    let mut runs: HashMap<u64, Vec<&str>> = HashMap::new();
    for job in inner.jobs.values().filter(|j| j.repository == repository) {
        runs.entry(job.run_id).or_default().push(&job.status);
    }
    let mut out: Vec<(u64, String)> = runs
        .into_iter()
        .map(|(id, statuses)| {
            let status = if statuses.contains(&"in_progress") {
                "in_progress"
            } else if statuses.contains(&"queued") {
                "queued"
            } else {
                "completed"
            };
            (id, status.to_owned())
        })
        .collect();
    out.sort_unstable_by_key(|run| std::cmp::Reverse(run.0));
    out
}

/// `scope`'s runners: live JIT registrations and added ones, by id.
fn runners_of(inner: &Inner, scope: &str) -> Vec<Value> {
    let mut ids: Vec<u64> = inner
        .live
        .iter()
        .filter(|(_, s)| s.as_str() == scope)
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids.into_iter()
        .filter_map(|id| {
            if let Some((name, status, busy)) = inner.listed.get(&id) {
                return Some(json!({
                    "id": id, "name": name, "os": "Linux", "status": status,
                    "busy": busy, "labels": [{"name": "self-hosted", "type": "read-only"}],
                }));
            }
            let r = inner.registered.iter().find(|r| r.id == id)?;
            Some(runner_body(r, inner.busy.contains(&id)))
        })
        .collect()
}

/// A `simple-user` (an account) as GitHub describes it.
fn account_body(login: &str) -> Value {
    let api = format!("https://api.github.com/users/{login}");
    json!({
        "login": login, "id": 1, "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://avatars.githubusercontent.com/u/1", "gravatar_id": "",
        "url": api, "html_url": format!("https://github.com/{login}"),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"), "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": "Organization", "site_admin": false,
    })
}

/// A `repository` as GitHub describes it (every field the full schema
/// requires, which covers the minimal one too).
pub fn repository_body(id: u64, full_name: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    let api = format!("https://api.github.com/repos/{full_name}");
    let mut repo = json!({
        "id": id, "node_id": format!("R_{id}"), "name": name, "full_name": full_name,
        "owner": account_body(owner), "private": true, "description": Value::Null,
        "fork": false, "url": api, "html_url": format!("https://github.com/{full_name}"),
        "clone_url": format!("https://github.com/{full_name}.git"),
        "git_url": format!("git://github.com/{full_name}.git"),
        "ssh_url": format!("git@github.com:{full_name}.git"),
        "svn_url": format!("https://github.com/{full_name}"),
        "mirror_url": Value::Null, "homepage": Value::Null, "language": "Rust",
        "default_branch": "main", "forks": 0, "forks_count": 0, "open_issues": 0,
        "open_issues_count": 0, "stargazers_count": 0, "watchers": 0, "watchers_count": 0,
        "size": 1, "has_downloads": true, "has_issues": true, "has_projects": false,
        "has_wiki": false, "has_pages": false, "archived": false, "disabled": false,
        "license": Value::Null, "pushed_at": "2026-01-01T10:00:00Z",
        "created_at": "2025-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z",
    });
    let links = [
        ("archive_url", "/{archive_format}{/ref}"),
        ("assignees_url", "/assignees{/user}"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("branches_url", "/branches{/branch}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("comments_url", "/comments{/number}"),
        ("commits_url", "/commits{/sha}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("contents_url", "/contents/{+path}"),
        ("contributors_url", "/contributors"),
        ("deployments_url", "/deployments"),
        ("downloads_url", "/downloads"),
        ("events_url", "/events"),
        ("forks_url", "/forks"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("hooks_url", "/hooks"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("issue_events_url", "/issues/events{/number}"),
        ("issues_url", "/issues{/number}"),
        ("keys_url", "/keys{/key_id}"),
        ("labels_url", "/labels{/name}"),
        ("languages_url", "/languages"),
        ("merges_url", "/merges"),
        ("milestones_url", "/milestones{/number}"),
        (
            "notifications_url",
            "/notifications{?since,all,participating}",
        ),
        ("pulls_url", "/pulls{/number}"),
        ("releases_url", "/releases{/id}"),
        ("stargazers_url", "/stargazers"),
        ("statuses_url", "/statuses/{sha}"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("tags_url", "/tags"),
        ("teams_url", "/teams"),
        ("trees_url", "/git/trees{/sha}"),
    ];
    for (field, tail) in links {
        repo[field] = json!(format!("{api}{tail}"));
    }
    repo
}

/// A `workflow-run` as GitHub describes it.
pub fn run_body(id: u64, repository: &str, status: &str) -> Value {
    let api = format!("https://api.github.com/repos/{repository}/actions/runs/{id}");
    let repo = repository_body(1, repository);
    json!({
        "id": id, "node_id": format!("WFR_{id}"), "name": "CI", "head_branch": "main",
        "head_sha": "f83a356604ae3c5d03e1b46ef4d1ca77d64a90b0",
        "path": ".github/workflows/ci.yml", "display_title": "CI", "run_number": id,
        "run_attempt": 1, "event": "push", "status": status,
        "conclusion": if status == "completed" { json!("success") } else { Value::Null },
        "workflow_id": 1, "url": api,
        "html_url": format!("https://github.com/{repository}/actions/runs/{id}"),
        "created_at": "2026-01-01T10:00:00Z", "updated_at": "2026-01-01T10:00:00Z",
        "jobs_url": format!("{api}/jobs"), "logs_url": format!("{api}/logs"),
        "check_suite_url": format!("https://api.github.com/repos/{repository}/check-suites/{id}"),
        "artifacts_url": format!("{api}/artifacts"), "cancel_url": format!("{api}/cancel"),
        "rerun_url": format!("{api}/rerun"),
        "workflow_url": format!("https://api.github.com/repos/{repository}/actions/workflows/1"),
        "pull_requests": [], "head_commit": Value::Null,
        "repository": repo.clone(), "head_repository": repo,
    })
}

/// `data/github-registration-token.json`'s `operations`.
fn registration_token_operations() -> &'static Value {
    static OPS: OnceLock<Value> = OnceLock::new();
    OPS.get_or_init(|| {
        let all: Value =
            serde_json::from_str(include_str!("../data/github-registration-token.json"))
                .expect("data/github-registration-token.json is JSON");
        all["operations"].clone()
    })
}

/// The path a scope's GitHub config URL ends with: `orgs/acme` -> `/acme`,
/// `repos/o/r` -> `/o/r`, `enterprises/e` -> `/enterprises/e`.
fn scope_path(scope: &str) -> String {
    match scope.split_once('/') {
        Some(("orgs" | "repos", rest)) => format!("/{rest}"),
        _ => format!("/{scope}"),
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

fn bearer(headers: &HeaderMap, scheme: &str) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix(scheme)
        .map(str::to_owned)
}

fn injected(f: Failure) -> Response {
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
    response
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
pub(crate) fn rfc3339(unix: u64) -> String {
    let secs_of_day = unix % 86_400;
    let mut days = unix / 86_400;
    let mut year = 1970;
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
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
