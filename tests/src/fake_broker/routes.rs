//! The fake broker's HTTP side: every request is logged, injected failures
//! are answered first, then the request is checked against the contract
//! (api-version, the token its endpoint takes, the capacity header, the
//! body) and handed to [`super::model`]. Queue polls are held until there
//! is a message or `poll_hold` passes, woken by [`super::Shared::changed`];
//! [`timer`] ends idle sessions and takes back unstarted jobs on time.

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::admin::Refusal;
use super::model::{JitRefusal, SessionRefusal};
use super::wire::{self, API_VERSION};
use super::{Call, Shared};
use crate::fake_github::now_unix;

/// An answer other than the one asked for (boxed: a `Response` is large).
type Refused = Box<Response>;

type Reply = Result<Response, Refused>;

/// Logs the call when answered, or when its client went away first.
struct CallLog<'a> {
    shared: &'a Shared,
    call: Option<Call>,
}

impl Drop for CallLog<'_> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            self.shared.lock().calls.push(call);
        }
    }
}

pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut log = CallLog {
        shared: &shared,
        call: Some(Call {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            status: None,
        }),
    };
    let req = Request {
        shared: &shared,
        method,
        uri,
        headers,
        body,
    };
    let response = req.route().await.unwrap_or_else(|e| *e);
    if let Some(call) = log.call.as_mut() {
        call.status = Some(response.status().as_u16());
    }
    response
}

struct Request<'a> {
    shared: &'a Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn ok(v: &Value) -> Reply {
    Ok(json_response(StatusCode::OK, v))
}

fn fail(status: StatusCode, type_name: &str, message: &str) -> Refused {
    Box::new(
        (
            status,
            [("content-type", "application/json")],
            wire::error_body(type_name, message),
        )
            .into_response(),
    )
}

fn not_found(type_name: &str, message: &str) -> Refused {
    fail(StatusCode::NOT_FOUND, type_name, message)
}

fn unauthorized(message: &str) -> Refused {
    fail(StatusCode::UNAUTHORIZED, "UnauthorizedException", message)
}

/// The value of query parameter `name`, if given, percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// `%XX` and `+` (a space) decoded; anything malformed kept as it is.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_id(s: &str) -> Option<u64> {
    s.parse().ok()
}

impl Request<'_> {
    /// A breach of the contract: kept, and answered `status` (400 unless
    /// the request is for no endpoint at all).
    fn breach_with(&self, status: StatusCode, what: &str) -> Refused {
        let line = format!("{} {}: {what}", self.method, self.uri.path());
        self.shared.lock().violations.push(line);
        fail(status, "ArgumentException", what)
    }

    fn breach(&self, what: &str) -> Refused {
        self.breach_with(StatusCode::BAD_REQUEST, what)
    }

    async fn route(&self) -> Reply {
        if let Some(status) = self.injected() {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(fail(status, "InjectedFailure", "injected by the test"));
        }
        let path = self.uri.path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["svc", rest @ ..] => self.service(rest),
            ["queue", session] if self.method == Method::GET => self.poll(session).await,
            ["queue", session, id] if self.method == Method::DELETE => {
                self.delete_message(session, id).await
            }
            _ => Err(self.breach_with(StatusCode::NOT_FOUND, "no such endpoint")),
        }
    }

    fn injected(&self) -> Option<u16> {
        let path = self.uri.path();
        let mut inner = self.shared.lock();
        let failures = &mut inner.trouble.failures;
        let at = failures
            .iter()
            .position(|(suffix, _)| path.ends_with(suffix.as_str()))?;
        failures.remove(at).map(|(_, status)| status)
    }

    fn bearer(&self) -> Result<&str, Refused> {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.breach("no `Authorization: Bearer` header"))
    }

    /// The admin JWT is required: a queue token is a breach, an expired,
    /// revoked or unknown token 401.
    fn admin(&self) -> Result<(), Refused> {
        let token = self.bearer()?;
        let inner = self.shared.lock();
        match inner.admin.check(token) {
            Ok(()) => Ok(()),
            Err(Refusal::Expired) => Err(unauthorized("the admin token has expired")),
            Err(Refusal::Revoked) => Err(unauthorized("the admin token was revoked")),
            Err(Refusal::Unknown) => {
                let queue = inner.model.queue_token_owner(token).is_some();
                drop(inner);
                if queue {
                    Err(self.breach("a message-queue token where the admin token belongs"))
                } else {
                    Err(unauthorized("unknown admin token"))
                }
            }
        }
    }

    /// A current queue token is required: returns its (scale set,
    /// session); an admin JWT is a breach, an old or unknown token 401.
    fn queue_token(&self) -> Result<(u64, String), Refused> {
        let token = self.bearer()?;
        let inner = self.shared.lock();
        if let Some(owner) = inner.model.queue_token_owner(token) {
            return Ok(owner);
        }
        let admin = !matches!(inner.admin.check(token), Err(Refusal::Unknown));
        drop(inner);
        if admin {
            return Err(self.breach("the admin token where the message-queue token belongs"));
        }
        Err(unauthorized(
            "the message queue token has expired or is unknown",
        ))
    }

    /// The JSON body, sent as `application/json`.
    fn json(&self) -> Result<Value, Refused> {
        let typed = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !typed {
            return Err(self.breach("the body is not sent as Content-Type: application/json"));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| self.breach(&format!("the body is not JSON: {e}")))
    }

    /// The Actions service: `{svc}/_apis/...?api-version=6.0-preview`.
    fn service(&self, rest: &[&str]) -> Reply {
        if query_value(self.uri.query(), "api-version").as_deref() != Some(API_VERSION) {
            return Err(self.breach(&format!("api-version={API_VERSION} is missing")));
        }
        let m = &self.method;
        match rest {
            ["_apis", "runtime", "runnergroups"] | ["_apis", "runtime", "runnergroups", ""]
                if m == Method::GET =>
            {
                self.runner_groups()
            }
            ["_apis", "runtime", "runnerscalesets"] if m == Method::GET => self.find_scale_set(),
            ["_apis", "runtime", "runnerscalesets"] if m == Method::POST => self.create_scale_set(),
            ["_apis", "runtime", "runnerscalesets", id] => self.scale_set(id),
            ["_apis", "runtime", "runnerscalesets", id, "sessions"] if m == Method::POST => {
                self.create_session(id)
            }
            ["_apis", "runtime", "runnerscalesets", id, "sessions", session] => {
                self.session(id, session)
            }
            ["_apis", "runtime", "runnerscalesets", id, "acquirejobs"] if m == Method::POST => {
                self.acquire(id)
            }
            ["_apis", "runtime", "runnerscalesets", id, "generatejitconfig"]
                if m == Method::POST =>
            {
                self.generate_jit(id)
            }
            ["_apis", "distributedtask", "pools", "0", "agents", id] if m == Method::DELETE => {
                self.delete_runner(id)
            }
            _ => Err(self.breach_with(StatusCode::NOT_FOUND, "no such endpoint")),
        }
    }

    fn runner_groups(&self) -> Reply {
        self.admin()?;
        let name = query_value(self.uri.query(), "groupName")
            .ok_or_else(|| self.breach("groupName is missing"))?;
        let inner = self.shared.lock();
        let value: Vec<Value> = inner
            .model
            .groups
            .iter()
            .filter(|(_, n)| n.eq_ignore_ascii_case(&name))
            .map(|(id, n)| json!({"id": id, "name": n, "isDefault": *id == super::DEFAULT_GROUP}))
            .collect();
        ok(&json!({"count": value.len(), "value": value}))
    }

    fn find_scale_set(&self) -> Reply {
        self.admin()?;
        let query = self.uri.query();
        let group = query_value(query, "runnerGroupId")
            .as_deref()
            .and_then(parse_id)
            .ok_or_else(|| self.breach("runnerGroupId is missing or not an integer"))?;
        let name = query_value(query, "name").ok_or_else(|| self.breach("name is missing"))?;
        let inner = self.shared.lock();
        let value: Vec<Value> = inner
            .model
            .find_scale_set(group, &name)
            .map(|s| wire::scale_set(&inner.model, s))
            .into_iter()
            .collect();
        ok(&json!({"count": value.len(), "value": value}))
    }

    fn create_scale_set(&self) -> Reply {
        self.admin()?;
        let body = self.json()?;
        let new = wire::new_scale_set(&body).map_err(|e| self.breach(&e))?;
        let now = now_unix();
        self.shared.mutate(|inner| {
            if inner.model.group_name(new.group_id).is_none() {
                return Err(not_found(
                    "RunnerGroupNotFoundException",
                    &format!("runner group {} does not exist", new.group_id),
                ));
            }
            let m = &mut inner.model;
            let Some(id) = m
                .create_scale_set(&new.name, new.group_id, new.labels, new.runner_setting, now)
                .map(|s| s.id)
            else {
                return Err(fail(
                    StatusCode::CONFLICT,
                    "RunnerScaleSetExistsException",
                    &format!(
                        "A runner scale set named {} already exists in the group",
                        new.name
                    ),
                ));
            };
            ok(&wire::scale_set(m, &m.scale_sets[&id]))
        })
    }

    fn scale_set_missing(id: u64) -> Refused {
        not_found(
            "RunnerScaleSetNotFoundException",
            &format!("The runner scale set {id} does not exist."),
        )
    }

    fn scale_set(&self, id: &str) -> Reply {
        self.admin()?;
        let id = parse_id(id).ok_or_else(|| self.breach("the scale set id is not an integer"))?;
        if self.method == Method::GET {
            let inner = self.shared.lock();
            let set = inner
                .model
                .scale_sets
                .get(&id)
                .ok_or_else(|| Self::scale_set_missing(id))?;
            return ok(&wire::scale_set(&inner.model, set));
        }
        if self.method != Method::DELETE {
            return Err(self.breach_with(StatusCode::NOT_FOUND, "no such endpoint"));
        }
        let now = now_unix();
        if self.shared.mutate(|i| i.model.delete_scale_set(id, now)) {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(Self::scale_set_missing(id))
        }
    }

    fn queue_url(&self, session: &str) -> String {
        format!("{}/queue/{session}", self.shared.base)
    }

    fn create_session(&self, id: &str) -> Reply {
        self.admin()?;
        let id = parse_id(id).ok_or_else(|| self.breach("the scale set id is not an integer"))?;
        let owner = wire::session_owner(&self.json()?).map_err(|e| self.breach(&e))?;
        self.shared.mutate(|inner| {
            let name = inner.model.scale_sets.get(&id).map(|s| s.name.clone());
            let refused = inner.trouble.refuse_sessions > 0 && name.is_some();
            let opened = if refused {
                inner.trouble.refuse_sessions -= 1;
                Err(SessionRefusal::Conflict(name.unwrap_or_default()))
            } else {
                inner.model.open_session(id, &owner, Instant::now())
            };
            match opened {
                Ok((session, _)) => {
                    let set = &inner.model.scale_sets[&id];
                    ok(&wire::session(&inner.model, set, &self.queue_url(&session)))
                }
                Err(SessionRefusal::NoScaleSet) => Err(Self::scale_set_missing(id)),
                Err(SessionRefusal::Conflict(name)) => Err(fail(
                    StatusCode::CONFLICT,
                    "RunnerScaleSetSessionConflictException",
                    &format!("The actions runner scaleset {name} already has an active session for owner {owner}."),
                )),
            }
        })
    }

    fn session_missing(session: &str) -> Refused {
        not_found(
            "RunnerScaleSetSessionNotFoundException",
            &format!("The message session {session} does not exist."),
        )
    }

    /// PATCH (refresh) or DELETE a session.
    fn session(&self, id: &str, session: &str) -> Reply {
        self.admin()?;
        let id = parse_id(id).ok_or_else(|| self.breach("the scale set id is not an integer"))?;
        let now = now_unix();
        match self.method {
            Method::PATCH => self.shared.mutate(|inner| {
                if !inner.model.refresh_session(id, session) {
                    return Err(Self::session_missing(session));
                }
                let set = &inner.model.scale_sets[&id];
                ok(&wire::session(&inner.model, set, &self.queue_url(session)))
            }),
            Method::DELETE => {
                if self
                    .shared
                    .mutate(|i| i.model.end_session(id, Some(session), now))
                {
                    Ok(StatusCode::NO_CONTENT.into_response())
                } else {
                    Err(Self::session_missing(session))
                }
            }
            _ => Err(self.breach_with(StatusCode::NOT_FOUND, "no such endpoint")),
        }
    }

    /// GHES only: github.com answers `404 page not found` at this route.
    fn acquire(&self, id: &str) -> Reply {
        if !self.shared.lock().model.settings.ghes {
            return Err(Box::new(
                (StatusCode::NOT_FOUND, "404 page not found").into_response(),
            ));
        }
        let (set_id, _) = self.queue_token()?;
        let id = parse_id(id).ok_or_else(|| self.breach("the scale set id is not an integer"))?;
        if set_id != id {
            return Err(unauthorized(
                "the message-queue token is for another scale set",
            ));
        }
        let ids = wire::request_ids(&self.json()?).map_err(|e| self.breach(&e))?;
        let now = now_unix();
        let acquired = self
            .shared
            .mutate(|i| i.model.acquire(id, &ids, now, Instant::now()));
        ok(&json!({"count": acquired.len(), "value": acquired}))
    }

    fn generate_jit(&self, id: &str) -> Reply {
        self.admin()?;
        let id = parse_id(id).ok_or_else(|| self.breach("the scale set id is not an integer"))?;
        let name = wire::jit_request(&self.json()?).map_err(|e| self.breach(&e))?;
        let now = now_unix();
        let service_url = self.shared.service_url();
        self.shared.mutate(|inner| {
            let runner = match inner.model.add_runner(id, &name, now) {
                Ok(runner) => runner,
                Err(JitRefusal::NoScaleSet) => return Err(Self::scale_set_missing(id)),
                Err(JitRefusal::NameTaken) => {
                    return Err(fail(
                        StatusCode::CONFLICT,
                        "AgentExistsException",
                        &format!("A runner named {name} already exists in the scale set."),
                    ))
                }
            };
            let encoded = wire::jit_config(runner, &name, id, &service_url);
            inner.model.jit_configs.push(encoded.clone());
            ok(&json!({
                "runner": {"id": runner, "name": name, "runnerScaleSetId": id},
                "encodedJITConfig": encoded,
            }))
        })
    }

    fn delete_runner(&self, id: &str) -> Reply {
        self.admin()?;
        let id = parse_id(id).ok_or_else(|| self.breach("the runner id is not an integer"))?;
        let now = now_unix();
        if self.shared.mutate(|i| i.model.delete_runner(id, now)) {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(not_found(
                "AgentNotFoundException",
                &format!("No runner with id {id} exists."),
            ))
        }
    }

    /// The session `session`'s scale set, if the request's queue token is
    /// its current one (404 when the session is gone, 401 when the token
    /// is stale, a breach for an admin token).
    fn queue_session(&self, session: &str) -> Result<u64, Refused> {
        let set = self.shared.lock().model.set_of_session(session);
        let Some(set) = set else {
            self.bearer()?;
            return Err(Self::session_missing(session));
        };
        match self.queue_token() {
            Ok((owner, s)) if owner == set && s == session => Ok(set),
            Ok(_) => Err(unauthorized(
                "the message-queue token is for another session",
            )),
            Err(e) => Err(e),
        }
    }

    fn poll_headers(&self) -> Result<(u32, i64), Refused> {
        let accept = self
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !accept.contains(&format!("api-version={API_VERSION}")) {
            return Err(self.breach(&format!(
                "Accept lacks api-version={API_VERSION} (got {accept:?})"
            )));
        }
        let capacity = self
            .headers
            .get("x-scalesetmaxcapacity")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| self.breach("X-ScaleSetMaxCapacity is missing or not an integer"))?;
        let last = match query_value(self.uri.query(), "lastMessageId") {
            None => 0,
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| self.breach(&format!("lastMessageId={v} is not an integer")))?,
        };
        Ok((capacity, last))
    }

    /// `GET {messageQueueUrl}`: the first undeleted message after
    /// `lastMessageId`, assigning jobs up to the capacity first; held until
    /// there is one or `poll_hold` passes (202).
    async fn poll(&self, session: &str) -> Reply {
        let (capacity, last) = self.poll_headers()?;
        let set = self.queue_session(session)?;
        let hold = {
            let mut inner = self.shared.lock();
            if inner.trouble.unauthorized_polls > 0 {
                inner.trouble.unauthorized_polls -= 1;
                return Err(unauthorized("the message queue token has expired"));
            }
            let Some(s) = inner.model.session_mut(set, session) else {
                return Err(Self::session_missing(session));
            };
            s.in_flight += 1;
            inner.model.settings.poll_hold
        };
        let _flight = InFlight {
            shared: self.shared,
            set,
            session,
        };
        let deadline = tokio::time::Instant::now() + hold;
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let mut notified = pin!(self.shared.changed.notified());
            notified.as_mut().enable();
            if let Some(reply) = self.poll_once(set, session, capacity, last)? {
                return Ok(reply);
            }
            if tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
                return Ok(StatusCode::ACCEPTED.into_response());
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One look at the queue: the message to answer with, if any.
    fn poll_once(
        &self,
        set: u64,
        session: &str,
        capacity: u32,
        last: i64,
    ) -> Result<Option<Response>, Refused> {
        if self.queue_session(session)? != set {
            return Err(Self::session_missing(session));
        }
        let mut inner = self.shared.lock();
        let changed = inner.model.poll(set, capacity, now_unix(), Instant::now());
        let found = inner.model.message_after(set, last);
        let statistics = inner.model.statistics(set);
        drop(inner);
        if changed {
            self.shared.changed.notify_waiters();
        }
        Ok(found.map(|(id, body)| {
            json_response(
                StatusCode::OK,
                &json!({
                    "messageId": id,
                    "messageType": "RunnerScaleSetJobMessages",
                    "body": body,
                    "statistics": statistics,
                }),
            )
        }))
    }

    /// `DELETE {messageQueueUrl}/{messageId}`; held while the test holds
    /// deletes, and nothing is deleted if the client goes away meanwhile.
    async fn delete_message(&self, session: &str, id: &str) -> Reply {
        self.queue_session(session)?;
        let id: i64 = id
            .parse()
            .map_err(|_| self.breach("the message id is not an integer"))?;
        let mut holds = self.shared.hold_deletes.subscribe();
        if *holds.borrow() {
            let _held = Held::new(self.shared);
            let mut shutdown = self.shared.shutdown.clone();
            tokio::select! {
                _ = holds.wait_for(|h| !*h) => {}
                _ = shutdown.wait_for(|s| *s) => {
                    return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "ShuttingDown", "the fake is shutting down"));
                }
            }
        }
        let set = self.queue_session(session)?;
        let deleted = self.shared.mutate(|inner| {
            inner
                .model
                .scale_sets
                .get_mut(&set)
                .is_some_and(|s| s.messages.remove(&id).is_some())
        });
        if deleted {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(not_found(
                "MessageNotFoundException",
                &format!("No message {id} in the queue."),
            ))
        }
    }
}

/// A poll being held: the session counts as polling until it ends.
struct InFlight<'a> {
    shared: &'a Shared,
    set: u64,
    session: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.mutate(|inner| {
            if let Some(s) = inner.model.session_mut(self.set, self.session) {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.last_poll = Instant::now();
            }
        });
    }
}

/// A held message delete, counted while it waits.
struct Held<'a>(&'a Shared);

impl<'a> Held<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.held.send_modify(|n| *n += 1);
        Self(shared)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Ends idle sessions and takes back unstarted jobs when their time
/// comes: sleeps until the next such deadline or until the state changes.
pub(crate) async fn timer(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let mut notified = pin!(shared.changed.notified());
        notified.as_mut().enable();
        let (changed, next) = shared.lock().model.reap(now_unix(), Instant::now());
        if changed {
            shared.changed.notify_waiters();
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            () = notified => {}
            () = sleep_until(next) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Some("runnerGroupId=1&name=kiln%20host+1&bad=%zz");
        assert_eq!(query_value(q, "name").as_deref(), Some("kiln host 1"));
        assert_eq!(query_value(q, "runnerGroupId").as_deref(), Some("1"));
        assert_eq!(query_value(q, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_value(q, "missing"), None);
    }
}
