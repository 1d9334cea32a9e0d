//! A fake of GitHub's runner scale-set service (the "broker" behind the
//! Actions service URL), for Kiln's scale-set tests and bench: stateful,
//! not canned, behaving as the reference describes GitHub (runner groups,
//! scale sets with labels, one message session per scale set, a long-polled
//! message queue with at-least-once delivery and replay to new sessions,
//! capacity-gated assignment, the GHES offer-and-acquire flow, JIT runners
//! that start jobs, job reassignment) on its own listener on 127.0.0.1.
//!
//! - [`model`] — the state and its rules, without HTTP.
//! - [`routes`] — the HTTP side: routing, auth, request checks, long polls.
//! - [`wire`] — the JSON it answers and the request shapes it accepts.
//! - [`admin`] — the admin JWTs the fake GitHub's `runner-registration`
//!   mints ([`FakeGithub::attach_broker`](crate::fake_github::FakeGithub::attach_broker)).
//!
//! The service URL is `{url}/svc`; message queues are `{url}/queue/{session}`.
//! Every request is checked against the contract (api-version, which token
//! an endpoint takes, the capacity header, body shapes): breaches are kept
//! ([`FakeBroker::violations`]) and answered 400. Trouble is injected with
//! a method each. Everything it started ends when the last clone is
//! dropped: held polls and held deletes are answered, the listener and the
//! timer task stop.

pub mod admin;
pub mod model;
pub mod routes;
pub mod wire;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

pub use model::{JobInfo, JobKey, JobState, Settings, DEFAULT_GROUP, MAX_REASSIGNMENTS};

/// One request the fake received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The status answered; None when the client went away first.
    pub status: Option<u16>,
}

/// A scale set as the tests see it.
#[derive(Clone, Debug)]
pub struct ScaleSetInfo {
    pub id: u64,
    pub name: String,
    pub runner_group_id: u64,
    pub labels: Vec<String>,
    /// The open session's id and owner.
    pub session: Option<(String, String)>,
    /// Ids of the messages not deleted yet.
    pub messages: Vec<i64>,
    /// The capacity its last poll reported.
    pub capacity: u32,
    /// Polls of its session held open now (0 without a session): with one
    /// held, a job queued now is assigned at once, up to `capacity`.
    pub polls_held: u32,
    /// Its runners' ids.
    pub runners: Vec<u64>,
}

/// Injected trouble still to come.
#[derive(Default)]
pub(crate) struct Trouble {
    pub refuse_sessions: u32,
    pub unauthorized_polls: u32,
    /// (path suffix, status), in order.
    pub failures: VecDeque<(String, u16)>,
}

pub(crate) struct Inner {
    pub model: model::State,
    pub admin: admin::AdminTokens,
    pub trouble: Trouble,
    pub calls: Vec<Call>,
    pub violations: Vec<String>,
}

pub(crate) struct Shared {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    inner: Mutex<Inner>,
    /// Woken whenever the state changes (long polls and the timer wait on it).
    pub changed: Notify,
    pub shutdown: watch::Receiver<bool>,
    /// Whether message deletes are held.
    pub hold_deletes: watch::Sender<bool>,
    /// How many message deletes are held now.
    pub held: watch::Sender<usize>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the state, then wakes everyone waiting for a change.
    pub fn mutate<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.notify_waiters();
        out
    }

    pub fn service_url(&self) -> String {
        format!("{}/svc", self.base)
    }
}

/// Ends the fake when the last [`FakeBroker`] clone goes.
struct Life {
    shutdown: watch::Sender<bool>,
}

impl Drop for Life {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// What the fake GitHub needs of a broker: its service URL and admin
/// tokens. Does not keep the broker running.
#[derive(Clone)]
pub struct BrokerLink(Arc<Shared>);

impl BrokerLink {
    /// The `runner-registration` answer for `scope` (`orgs/acme`, ...):
    /// `{url, token}`.
    pub fn register(&self, scope: &str) -> Value {
        json!({
            "url": self.0.service_url(),
            "token": mint(&self.0, scope),
        })
    }
}

fn mint(shared: &Shared, scope: &str) -> String {
    let mut inner = shared.lock();
    let lifetime = inner.model.settings.admin_token_lifetime;
    inner.admin.mint(scope, lifetime)
}

#[derive(Clone)]
pub struct FakeBroker {
    shared: Arc<Shared>,
    _life: Arc<Life>,
}

impl FakeBroker {
    /// github.com behaviour (jobs assigned directly), default timings.
    pub async fn start() -> Self {
        Self::start_with(Settings::default()).await
    }

    /// GHES behaviour: `JobAvailable`, acquire, then `JobAssigned`.
    pub async fn ghes() -> Self {
        Self::start_with(Settings {
            ghes: true,
            ..Settings::default()
        })
        .await
    }

    pub async fn start_with(settings: Settings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake broker");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                model: model::State::new(settings, format!("{base}/svc")),
                admin: admin::AdminTokens::default(),
                trouble: Trouble::default(),
                calls: Vec::new(),
                violations: Vec::new(),
            }),
            base,
            changed: Notify::new(),
            shutdown: shutdown.clone(),
            hold_deletes: watch::Sender::new(false),
            held: watch::Sender::new(0),
        });
        let app = Router::new()
            .fallback(routes::handle)
            .with_state(shared.clone());
        let mut stop = shutdown;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        tokio::spawn(routes::timer(shared.clone()));
        Self {
            shared,
            _life: Arc::new(Life {
                shutdown: shutdown_tx,
            }),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.shared.base
    }

    /// The Actions service URL (`runner-registration` hands it out).
    pub fn service_url(&self) -> String {
        self.shared.service_url()
    }

    /// For [`FakeGithub::attach_broker`](crate::fake_github::FakeGithub::attach_broker).
    pub fn link(&self) -> BrokerLink {
        BrokerLink(self.shared.clone())
    }

    /// A fresh admin JWT (as `runner-registration` would hand out).
    pub fn mint_admin_token(&self, scope: &str) -> String {
        mint(&self.shared, scope)
    }

    fn settings(&self, f: impl FnOnce(&mut Settings)) {
        self.shared.mutate(|i| f(&mut i.model.settings));
    }

    pub fn set_ghes(&self, ghes: bool) {
        self.settings(|s| s.ghes = ghes);
    }

    pub fn set_reassign_after(&self, d: Duration) {
        self.settings(|s| s.reassign_after = d);
    }

    pub fn set_session_timeout(&self, d: Duration) {
        self.settings(|s| s.session_timeout = d);
    }

    pub fn set_poll_hold(&self, d: Duration) {
        self.settings(|s| s.poll_hold = d);
    }

    /// The lifetime of admin tokens minted from now on.
    pub fn set_admin_token_lifetime(&self, d: Duration) {
        self.settings(|s| s.admin_token_lifetime = d);
    }

    /// A runner group (besides "Default", id 1); returns its id.
    pub fn add_runner_group(&self, name: &str) -> u64 {
        self.shared.mutate(|i| i.model.add_group(name))
    }

    /// A job of `repository` (`owner/name`) asking for `labels`, queued
    /// for any scale set that has them all.
    pub fn queue_job(&self, repository: &str, labels: &[&str]) -> JobKey {
        let now = crate::fake_github::now_unix();
        self.shared
            .mutate(|i| i.model.queue_job(repository, labels, now))
    }

    pub fn job(&self, key: &JobKey) -> Option<JobInfo> {
        let inner = self.shared.lock();
        let job = inner.model.jobs.iter().find(|j| &j.info.key == key)?;
        Some(job.info.clone())
    }

    /// Every job, in the order they were queued.
    pub fn jobs(&self) -> Vec<JobInfo> {
        let inner = self.shared.lock();
        inner.model.jobs.iter().map(|j| j.info.clone()).collect()
    }

    pub fn scale_sets(&self) -> Vec<ScaleSetInfo> {
        let inner = self.shared.lock();
        let m = &inner.model;
        m.scale_sets
            .values()
            .map(|s| ScaleSetInfo {
                id: s.id,
                name: s.name.clone(),
                runner_group_id: s.group_id,
                labels: s.labels.clone(),
                session: s.session.as_ref().map(|x| (x.id.clone(), x.owner.clone())),
                messages: s.messages.keys().copied().collect(),
                capacity: s.capacity,
                polls_held: s.session.as_ref().map_or(0, |x| x.in_flight),
                runners: m
                    .runners
                    .iter()
                    .filter(|(_, r)| r.scale_set == s.id)
                    .map(|(id, _)| *id)
                    .collect(),
            })
            .collect()
    }

    /// The id of the scale set called `name` (in any group).
    pub fn scale_set_id(&self, name: &str) -> Option<u64> {
        self.scale_sets()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.id)
    }

    /// Every `encodedJITConfig` handed out, in order.
    pub fn jit_configs(&self) -> Vec<String> {
        self.shared.lock().model.jit_configs.clone()
    }

    /// The next `n` session creates are refused with 409
    /// `RunnerScaleSetSessionConflictException`.
    pub fn refuse_sessions(&self, n: u32) {
        self.shared.mutate(|i| i.trouble.refuse_sessions += n);
    }

    /// The next `n` queue polls are answered 401 (an expired queue token).
    pub fn fail_polls_unauthorized(&self, n: u32) {
        self.shared.mutate(|i| i.trouble.unauthorized_polls += n);
    }

    /// Every admin token handed out so far stops working (401).
    pub fn revoke_admin_tokens(&self) {
        self.shared.mutate(|i| i.admin.revoke_all());
    }

    /// Ends the scale set's session server-side (its queue stays).
    pub fn end_session(&self, scale_set: u64) -> bool {
        let now = crate::fake_github::now_unix();
        self.shared
            .mutate(|i| i.model.end_session(scale_set, None, now))
    }

    /// Deletes the scale set server-side, with its session and queue.
    pub fn delete_scale_set(&self, scale_set: u64) -> bool {
        let now = crate::fake_github::now_unix();
        self.shared
            .mutate(|i| i.model.delete_scale_set(scale_set, now))
    }

    /// The next `n` requests whose path ends with `suffix` ("" matches
    /// every path) are answered `status` (e.g. 503) and do nothing else.
    pub fn fail_next(&self, n: usize, suffix: &str, status: u16) {
        self.shared.mutate(|i| {
            let failures = std::iter::repeat_n((suffix.to_owned(), status), n);
            i.trouble.failures.extend(failures);
        });
    }

    /// Holds message deletes until [`Self::release_message_deletes`]; a
    /// held delete whose client goes away deletes nothing.
    pub fn hold_message_deletes(&self) {
        self.shared.hold_deletes.send_replace(true);
    }

    pub fn release_message_deletes(&self) {
        self.shared.hold_deletes.send_replace(false);
    }

    /// Waits until at least `n` message deletes are held.
    pub async fn wait_held_deletes(&self, n: usize) {
        let mut rx = self.shared.held.subscribe();
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    /// Message deletes held now.
    pub fn held_deletes(&self) -> usize {
        *self.shared.held.borrow()
    }

    /// Where requests broke the contract.
    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    /// Every request, in the order they were answered.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }
}
