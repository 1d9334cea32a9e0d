//! The fake scale-set broker (`src/fake_broker`) and the fake GitHub's
//! scale-set bootstrap, checked against the wire contract with plain HTTP
//! (hyper's connection API, no client library): registration, scale sets,
//! sessions, capacity-gated polls, acks and replay, the GHES acquire flow,
//! reassignment, JIT runners, and the injected trouble. No VM; each test
//! takes a second or two.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kiln_vm_tests::fake_broker::{FakeBroker, JobKey, JobState, Settings};
use kiln_vm_tests::fake_github::{now_unix, test_key, FakeGithub, APP_ID, INSTALLATION_ID};
use serde_json::{json, Value};

const API: &str = "api-version=6.0-preview";

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Aborts the connection task when the request is dropped, so a dropped
/// request closes its socket.
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request on a fresh connection.
async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let at = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let _conn = Connection(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(if path.is_empty() { "/" } else { path })
        .header("host", authority)
        .header("user-agent", "kiln-fake-broker-test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let text = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            v.to_string()
        }
        None => String::new(),
    };
    let response = sender
        .send_request(req.body(Full::new(Bytes::from(text))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// `{svc}/{path}` with api-version, as Kiln's client calls the service.
fn svc_url(svc: &str, path: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{svc}/{path}{sep}{API}")
}

/// An admin call with `token` as Bearer.
async fn admin(method: &str, svc: &str, path: &str, token: &str, body: Option<&Value>) -> Reply {
    let auth = format!("Bearer {token}");
    request(
        method,
        &svc_url(svc, path),
        &[("authorization", &auth)],
        body,
    )
    .await
}

/// A queue poll with `capacity`, after `last` when given.
async fn poll(queue: &str, token: &str, capacity: &str, last: Option<i64>) -> Reply {
    let url = match last {
        Some(n) => format!("{queue}?lastMessageId={n}"),
        None => queue.to_owned(),
    };
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("accept", "application/json; api-version=6.0-preview"),
        ("x-scalesetmaxcapacity", capacity),
    ];
    request("GET", &url, &headers, None).await
}

async fn delete_message(queue: &str, token: &str, id: i64) -> Reply {
    let auth = format!("Bearer {token}");
    request(
        "DELETE",
        &format!("{queue}/{id}"),
        &[("authorization", &auth)],
        None,
    )
    .await
}

/// The job messages of a 200 poll answer.
fn events(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "poll: {}", reply.body);
    let envelope = reply.json();
    assert_eq!(envelope["messageType"], "RunnerScaleSetJobMessages");
    assert!(envelope["messageId"].is_i64(), "{envelope}");
    for field in [
        "totalAssignedJobs",
        "totalAvailableJobs",
        "totalRunningJobs",
    ] {
        assert!(envelope["statistics"][field].is_u64(), "{envelope}");
    }
    let body = envelope["body"].as_str().expect("body is a JSON string");
    serde_json::from_str::<Vec<Value>>(body).expect("body is a JSON array")
}

fn message_id(reply: &Reply) -> i64 {
    reply.json()["messageId"].as_i64().expect("messageId")
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["messageType"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// An installation token, through the App JWT (as Kiln gets one).
async fn installation_token(github: &FakeGithub) -> String {
    let now = now_unix();
    let claims = json!({"iat": now - 60, "exp": now + 540, "iss": APP_ID});
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(test_key().private_pkcs1.as_bytes()).unwrap();
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap();
    let url = format!(
        "{}/app/installations/{INSTALLATION_ID}/access_tokens",
        github.url
    );
    let reply = request(
        "POST",
        &url,
        &[("authorization", &format!("Bearer {jwt}"))],
        None,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["token"].as_str().unwrap().to_owned()
}

/// The bootstrap for org `acme`: registration token, runner-registration;
/// returns the service URL and the admin token.
async fn register(github: &FakeGithub) -> (String, String) {
    let installation = installation_token(github).await;
    let url = format!(
        "{}/orgs/acme/actions/runners/registration-token",
        github.url
    );
    let auth = format!("token {installation}");
    let reply = request("POST", &url, &[("authorization", &auth)], None).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let registration = reply.json()["token"].as_str().unwrap().to_owned();
    let body = json!({"url": format!("{}/acme", github.url), "runner_event": "register"});
    let url = format!("{}/actions/runner-registration", github.url);
    let auth = format!("RemoteAuth {registration}");
    let reply = request("POST", &url, &[("authorization", &auth)], Some(&body)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    (
        answer["url"].as_str().unwrap().to_owned(),
        answer["token"].as_str().unwrap().to_owned(),
    )
}

/// A scale set `name` with `labels` in the default group, and a session
/// on it: (scale set id, queue URL, queue token, session id).
async fn scale_set_with_session(
    svc: &str,
    token: &str,
    name: &str,
    labels: &[&str],
) -> (u64, String, String, String) {
    let labels: Vec<Value> = labels
        .iter()
        .map(|l| json!({"name": l, "type": "System"}))
        .collect();
    let body = json!({"name": name, "runnerGroupId": 1, "labels": labels,
        "RunnerSetting": {"disableUpdate": true}});
    let reply = admin(
        "POST",
        svc,
        "_apis/runtime/runnerscalesets",
        token,
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.json()["id"].as_u64().unwrap();
    let (queue, queue_token, session) = open_session(svc, token, id).await;
    (id, queue, queue_token, session)
}

async fn open_session(svc: &str, token: &str, id: u64) -> (String, String, String) {
    let path = format!("_apis/runtime/runnerscalesets/{id}/sessions");
    let body = json!({"ownerName": "kiln-test"});
    let reply = admin("POST", svc, &path, token, Some(&body)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let s = reply.json();
    (
        s["messageQueueUrl"].as_str().unwrap().to_owned(),
        s["messageQueueAccessToken"].as_str().unwrap().to_owned(),
        s["sessionId"].as_str().unwrap().to_owned(),
    )
}

/// A broker, its service URL and an admin token minted directly (the
/// bootstrap through the fake GitHub has a test of its own: making the
/// App's RSA key takes seconds).
async fn setup(settings: Settings) -> (FakeBroker, String, String) {
    let broker = FakeBroker::start_with(settings).await;
    let token = broker.mint_admin_token("orgs/acme");
    let svc = broker.service_url();
    (broker, svc, token)
}

fn quick() -> Settings {
    Settings {
        poll_hold: Duration::from_millis(300),
        ..Settings::default()
    }
}

/// Waits (bounded, as a hang guard) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn bootstrap_hands_out_the_service_url_and_an_expiring_admin_token() {
    let github = FakeGithub::start().await;
    let broker = FakeBroker::start().await;
    github.attach_broker(&broker);
    broker.set_admin_token_lifetime(Duration::from_secs(1));
    let (svc, token) = register(&github).await;
    assert_eq!(svc, broker.service_url());
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let exp = claims["exp"].as_u64().expect("exp");
    assert!(exp <= now_unix() + 1, "exp {exp} is not 1 s away");

    let groups = "_apis/runtime/runnergroups/?groupName=Default";
    let reply = admin("GET", &svc, groups, &token, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["value"][0]["id"], 1);
    assert_eq!(reply.json()["value"][0]["isDefault"], true);
    until("the admin token expired", || now_unix() > exp).await;
    assert_eq!(admin("GET", &svc, groups, &token, None).await.status, 401);

    // A wrong scope in the config URL, and an unknown registration token.
    let installation = installation_token(&github).await;
    let url = format!(
        "{}/orgs/acme/actions/runners/registration-token",
        github.url
    );
    let reply = request(
        "POST",
        &url,
        &[("authorization", &format!("token {installation}"))],
        None,
    )
    .await;
    let registration = reply.json()["token"].as_str().unwrap().to_owned();
    let url = format!("{}/actions/runner-registration", github.url);
    let wrong = json!({"url": format!("{}/other", github.url), "runner_event": "register"});
    let auth = format!("RemoteAuth {registration}");
    assert_eq!(
        request("POST", &url, &[("authorization", &auth)], Some(&wrong))
            .await
            .status,
        400
    );
    let right = json!({"url": format!("{}/acme", github.url), "runner_event": "register"});
    let bad = [("authorization", "RemoteAuth AREGNOTATOKEN")];
    assert_eq!(request("POST", &url, &bad, Some(&right)).await.status, 401);
    github.expire_registration_tokens();
    assert_eq!(
        request("POST", &url, &[("authorization", &auth)], Some(&right))
            .await
            .status,
        401
    );
    assert_eq!(github.violations().len(), 1, "{:?}", github.violations());
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());
}

#[tokio::test]
async fn scale_sets_and_sessions_follow_the_contract() {
    let (broker, svc, token) = setup(quick()).await;
    let find = "_apis/runtime/runnerscalesets?runnerGroupId=1&name=kiln-a";
    assert_eq!(
        admin("GET", &svc, find, &token, None).await.json()["count"],
        0
    );
    let (id, queue, queue_token, session) =
        scale_set_with_session(&svc, &token, "kiln-a", &["self-hosted", "kiln"]).await;
    let found = admin("GET", &svc, find, &token, None).await.json();
    assert_eq!(found["count"], 1);
    assert_eq!(found["value"][0]["id"], id);
    assert_eq!(found["value"][0]["labels"][1]["name"], "kiln");
    let body = json!({"name": "kiln-a", "runnerGroupId": 1, "labels": []});
    let again = admin(
        "POST",
        &svc,
        "_apis/runtime/runnerscalesets",
        &token,
        Some(&body),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);

    // One session per scale set.
    let path = format!("_apis/runtime/runnerscalesets/{id}/sessions");
    let owner = json!({"ownerName": "other"});
    let second = admin("POST", &svc, &path, &token, Some(&owner)).await;
    assert_eq!(second.status, 409);
    assert_eq!(
        second.json()["typeName"],
        "RunnerScaleSetSessionConflictException"
    );

    // A refresh gives a new queue token; the old one is refused.
    let refresh = format!("{path}/{session}");
    let refreshed = admin("PATCH", &svc, &refresh, &token, None).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let new_token = refreshed.json()["messageQueueAccessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(refreshed.json()["sessionId"], session.as_str());
    assert_ne!(new_token, queue_token);
    assert_eq!(poll(&queue, &queue_token, "0", None).await.status, 401);
    assert_eq!(poll(&queue, &new_token, "0", None).await.status, 202);
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());

    // Breaches: no api-version, the queue token on an admin endpoint, a
    // poll without a capacity, an admin token on the queue.
    let bare = format!("{svc}/_apis/runtime/runnerscalesets/{id}");
    let auth = format!("Bearer {token}");
    assert_eq!(
        request("GET", &bare, &[("authorization", &auth)], None)
            .await
            .status,
        400
    );
    let get = format!("_apis/runtime/runnerscalesets/{id}");
    assert_eq!(admin("GET", &svc, &get, &new_token, None).await.status, 400);
    let auth = format!("Bearer {new_token}");
    let no_capacity = [
        ("authorization", auth.as_str()),
        ("accept", "application/json; api-version=6.0-preview"),
    ];
    assert_eq!(request("GET", &queue, &no_capacity, None).await.status, 400);
    assert_eq!(poll(&queue, &new_token, "two", None).await.status, 400);
    assert_eq!(poll(&queue, &token, "1", None).await.status, 400);
    assert_eq!(broker.violations().len(), 5, "{:?}", broker.violations());

    // Deleting the session ends it: its queue is gone, a new one opens.
    assert_eq!(
        admin("DELETE", &svc, &refresh, &token, None).await.status,
        204
    );
    assert_eq!(poll(&queue, &new_token, "1", None).await.status, 404);
    open_session(&svc, &token, id).await;
    let calls = broker.calls();
    assert!(calls
        .iter()
        .any(|c| c.method == "PATCH" && c.status == Some(200)));
}

#[tokio::test]
async fn capacity_gates_assignment_one_message_per_poll() {
    let (broker, svc, token) = setup(quick()).await;
    let (id, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let first = broker.queue_job("acme/app", &["kiln"]);
    let second = broker.queue_job("acme/app", &["kiln"]);
    broker.queue_job("acme/app", &["gpu"]);

    assert_eq!(poll(&queue, &qt, "0", None).await.status, 202);
    let one = poll(&queue, &qt, "1", None).await;
    let got = events(&one);
    assert_eq!(kinds(&got), ["JobAssigned"]);
    assert_eq!(got[0]["jobId"], first.0.as_str());
    assert_eq!(got[0]["runnerRequestId"], 0);
    assert_eq!(got[0]["repositoryName"], "app");
    assert_eq!(got[0]["ownerName"], "acme");
    let last = message_id(&one);
    assert_eq!(poll(&queue, &qt, "1", Some(last)).await.status, 202);
    assert_eq!(broker.job(&second).unwrap().state, JobState::Queued);

    let two = poll(&queue, &qt, "2", Some(last)).await;
    let got = events(&two);
    assert_eq!(got[0]["jobId"], second.0.as_str());
    assert!(message_id(&two) > last);
    assert_eq!(two.json()["statistics"]["totalAssignedJobs"], 2);
    let job = broker.job(&second).unwrap();
    assert_eq!((job.state, job.scale_set), (JobState::Assigned, Some(id)));
    // github.com has no acquire route.
    let acquire = format!("_apis/runtime/runnerscalesets/{id}/acquirejobs");
    let reply = admin("POST", &svc, &acquire, &qt, Some(&json!([1]))).await;
    assert_eq!(reply.status, 404);
    // The gpu job has no scale set with its label.
    assert_eq!(
        poll(&queue, &qt, "5", Some(message_id(&two))).await.status,
        202
    );
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());
}

#[tokio::test]
async fn a_held_poll_wakes_when_a_job_arrives() {
    let settings = Settings {
        poll_hold: Duration::from_secs(120),
        ..Settings::default()
    };
    let (broker, svc, token) = setup(settings).await;
    let (_, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let held = tokio::spawn(async move { poll(&queue, &qt, "1", None).await });
    until("the poll is held", || broker.scale_sets()[0].capacity == 1).await;
    let key = broker.queue_job("acme/app", &["kiln"]);
    let reply = held.await.unwrap();
    assert_eq!(events(&reply)[0]["jobId"], key.0.as_str());
}

#[tokio::test]
async fn unacked_messages_replay_to_a_new_session_until_deleted() {
    let (broker, svc, token) = setup(quick()).await;
    let (id, queue, qt, session) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let key = broker.queue_job("acme/app", &["kiln"]);
    let first = poll(&queue, &qt, "1", None).await;
    let first_id = message_id(&first);
    let path = format!("_apis/runtime/runnerscalesets/{id}/sessions/{session}");
    assert_eq!(admin("DELETE", &svc, &path, &token, None).await.status, 204);

    let (queue2, qt2, _) = open_session(&svc, &token, id).await;
    assert_ne!(queue2, queue);
    let replay = poll(&queue2, &qt2, "0", None).await;
    assert_eq!(message_id(&replay), first_id);
    assert_eq!(replay.json()["body"], first.json()["body"]);
    // The ended session's unstarted job was taken back: cancelled here,
    // and queued again (capacity 0 keeps it from coming back).
    let next = poll(&queue2, &qt2, "0", Some(first_id)).await;
    let cancelled = events(&next);
    assert_eq!(kinds(&cancelled), ["JobCompleted"]);
    assert_eq!(cancelled[0]["result"], "canceled");
    assert_eq!(cancelled[0]["jobId"], key.0.as_str());
    assert_eq!(broker.job(&key).unwrap().reassignments, 1);

    assert_eq!(delete_message(&queue2, &qt2, first_id).await.status, 204);
    assert_eq!(delete_message(&queue2, &qt2, first_id).await.status, 404);
    let after = poll(&queue2, &qt2, "0", None).await;
    assert_eq!(message_id(&after), message_id(&next));
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());
}

#[tokio::test]
async fn ghes_offers_jobs_and_assigns_only_acquired_ones() {
    let settings = Settings {
        ghes: true,
        ..quick()
    };
    let (broker, svc, token) = setup(settings).await;
    let (id, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let a = broker.queue_job("acme/app", &["kiln"]);
    let b = broker.queue_job("acme/app", &["kiln"]);
    let offered = poll(&queue, &qt, "2", None).await;
    let got = events(&offered);
    assert_eq!(kinds(&got), ["JobAvailable", "JobAvailable"]);
    let ids: Vec<i64> = got
        .iter()
        .map(|e| e["runnerRequestId"].as_i64().unwrap())
        .collect();
    assert!(ids[0] > 0 && ids[1] > 0 && ids[0] != ids[1], "{ids:?}");
    assert!(got[0]["acquireJobUrl"]
        .as_str()
        .unwrap()
        .ends_with("/acquirejobs"));
    assert_eq!(broker.job(&a).unwrap().state, JobState::Available);

    let path = format!("_apis/runtime/runnerscalesets/{id}/acquirejobs");
    let wanted = json!([ids[0]]);
    assert_eq!(
        admin("POST", &svc, &path, &token, Some(&wanted))
            .await
            .status,
        400
    );
    let acquired = admin("POST", &svc, &path, &qt, Some(&wanted)).await;
    assert_eq!(acquired.status, 200, "{}", acquired.body);
    assert_eq!(acquired.json(), json!({"count": 1, "value": [ids[0]]}));
    let assigned = poll(&queue, &qt, "2", Some(message_id(&offered))).await;
    let got = events(&assigned);
    assert_eq!(kinds(&got), ["JobAssigned"]);
    assert_eq!(got[0]["jobId"], a.0.as_str());
    assert_eq!(broker.job(&a).unwrap().state, JobState::Assigned);
    assert_eq!(broker.job(&b).unwrap().state, JobState::Available);
    assert_eq!(broker.violations().len(), 1, "{:?}", broker.violations());
}

#[tokio::test]
async fn an_unstarted_job_is_reassigned_to_another_scale_set() {
    let settings = Settings {
        reassign_after: Duration::from_millis(500),
        poll_hold: Duration::from_secs(120),
        ..Settings::default()
    };
    let (broker, svc, token) = setup(settings).await;
    let (a, queue_a, qt_a, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let key = broker.queue_job("acme/app", &["kiln"]);
    let got = poll(&queue_a, &qt_a, "1", None).await;
    assert_eq!(broker.job(&key).unwrap().scale_set, Some(a));
    let (b, queue_b, qt_b, _) = scale_set_with_session(&svc, &token, "kiln-b", &["kiln"]).await;
    // B's held poll gets the job once A has not started it in time.
    let reply = poll(&queue_b, &qt_b, "1", None).await;
    assert_eq!(events(&reply)[0]["jobId"], key.0.as_str());
    let job = broker.job(&key).unwrap();
    assert_eq!((job.scale_set, job.reassignments), (Some(b), 1));
    let cancelled = poll(&queue_a, &qt_a, "0", Some(message_id(&got))).await;
    let cancelled = events(&cancelled);
    assert_eq!(cancelled[0]["messageType"], "JobCompleted");
    assert_eq!(cancelled[0]["result"], "canceled");
}

#[tokio::test]
async fn a_job_nobody_starts_is_cancelled_after_three_reassignments() {
    let settings = Settings {
        reassign_after: Duration::from_millis(200),
        poll_hold: Duration::from_secs(120),
        ..Settings::default()
    };
    let (broker, svc, token) = setup(settings).await;
    let (_, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let key = broker.queue_job("acme/app", &["kiln"]);
    let mut seen = Vec::new();
    let mut last = 0;
    while !matches!(broker.job(&key).unwrap().state, JobState::Completed { .. }) {
        let reply = poll(&queue, &qt, "1", Some(last)).await;
        last = message_id(&reply);
        seen.extend(events(&reply));
    }
    let assigned = seen
        .iter()
        .filter(|e| e["messageType"] == "JobAssigned")
        .count();
    assert_eq!(assigned, 4, "{seen:?}");
    let job = broker.job(&key).unwrap();
    assert_eq!(job.reassignments, 3);
    assert_eq!(
        job.state,
        JobState::Completed {
            result: "canceled".into()
        }
    );
}

#[tokio::test]
async fn a_jit_runner_starts_the_job_and_its_deletion_completes_it() {
    let (broker, svc, token) = setup(quick()).await;
    let (id, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let key: JobKey = broker.queue_job("acme/app", &["kiln"]);
    let assigned = poll(&queue, &qt, "1", None).await;

    let path = format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig");
    let body = json!({"name": "kiln-vm-1", "workFolder": "_work"});
    let jit = admin("POST", &svc, &path, &token, Some(&body)).await;
    assert_eq!(jit.status, 200, "{}", jit.body);
    let jit = jit.json();
    let runner = jit["runner"]["id"].as_u64().unwrap();
    assert_eq!(jit["runner"]["runnerScaleSetId"], id);
    let blob = base64::engine::general_purpose::STANDARD
        .decode(jit["encodedJITConfig"].as_str().unwrap())
        .unwrap();
    let files: Value = serde_json::from_slice(&blob).unwrap();
    for file in [".runner", ".credentials", ".credentials_rsaparams"] {
        assert!(files[file].is_string(), "{file} missing in {files}");
    }
    assert_eq!(
        broker.jit_configs(),
        [jit["encodedJITConfig"].as_str().unwrap()]
    );
    let taken = admin("POST", &svc, &path, &token, Some(&body)).await;
    assert_eq!(taken.status, 409, "{}", taken.body);

    let job = broker.job(&key).unwrap();
    assert_eq!(job.state, JobState::Running);
    assert_eq!(
        (job.runs, job.runners.clone()),
        (1, vec!["kiln-vm-1".to_owned()])
    );
    let started = poll(&queue, &qt, "1", Some(message_id(&assigned))).await;
    let got = events(&started);
    assert_eq!(kinds(&got), ["JobStarted"]);
    assert_eq!(got[0]["runnerId"], runner);
    assert_eq!(got[0]["runnerName"], "kiln-vm-1");

    let agent = format!("_apis/distributedtask/pools/0/agents/{runner}");
    assert_eq!(
        admin("DELETE", &svc, &agent, &token, None).await.status,
        204
    );
    assert_eq!(
        admin("DELETE", &svc, &agent, &token, None).await.status,
        404
    );
    let completed = poll(&queue, &qt, "1", Some(message_id(&started))).await;
    let got = events(&completed);
    assert_eq!(kinds(&got), ["JobCompleted"]);
    assert_eq!(got[0]["result"], "succeeded");
    let job = broker.job(&key).unwrap();
    assert_eq!(
        job.state,
        JobState::Completed {
            result: "succeeded".into()
        }
    );
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());
}

#[tokio::test]
async fn a_held_delete_deletes_nothing_when_its_client_goes_away() {
    let (broker, svc, token) = setup(quick()).await;
    let (id, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    broker.queue_job("acme/app", &["kiln"]);
    let message = message_id(&poll(&queue, &qt, "1", None).await);

    broker.hold_message_deletes();
    let (q, t) = (queue.clone(), qt.clone());
    let dropped = tokio::spawn(async move { delete_message(&q, &t, message).await });
    broker.wait_held_deletes(1).await;
    dropped.abort();
    until("the held delete was dropped", || broker.held_deletes() == 0).await;
    broker.release_message_deletes();
    let set = |b: &FakeBroker| b.scale_sets().into_iter().find(|s| s.id == id).unwrap();
    assert_eq!(set(&broker).messages, [message]);
    let gone = broker.calls().into_iter().find(|c| c.method == "DELETE");
    assert_eq!(gone.map(|c| c.status), Some(None));

    broker.hold_message_deletes();
    let (q, t) = (queue.clone(), qt.clone());
    let held = tokio::spawn(async move { delete_message(&q, &t, message).await });
    broker.wait_held_deletes(1).await;
    assert_eq!(set(&broker).messages, [message]);
    broker.release_message_deletes();
    assert_eq!(held.await.unwrap().status, 204);
    assert!(set(&broker).messages.is_empty());
}

#[tokio::test]
async fn injected_trouble_is_answered_as_asked() {
    let settings = Settings {
        session_timeout: Duration::from_millis(500),
        ..quick()
    };
    let (broker, svc, token) = setup(settings).await;
    let (id, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;

    broker.fail_polls_unauthorized(1);
    assert_eq!(poll(&queue, &qt, "1", None).await.status, 401);
    assert_eq!(poll(&queue, &qt, "1", None).await.status, 202);
    broker.fail_next(2, "/generatejitconfig", 503);
    let path = format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig");
    let body = json!({"name": "r1", "workFolder": "_work"});
    assert_eq!(
        admin("POST", &svc, &path, &token, Some(&body)).await.status,
        503
    );
    assert_eq!(
        admin("POST", &svc, &path, &token, Some(&body)).await.status,
        503
    );
    assert_eq!(
        admin("POST", &svc, &path, &token, Some(&body)).await.status,
        200
    );

    // Server-side session loss, then a refused session, then an idle one
    // timing out.
    assert!(broker.end_session(id));
    assert_eq!(poll(&queue, &qt, "1", None).await.status, 404);
    broker.refuse_sessions(1);
    let sessions = format!("_apis/runtime/runnerscalesets/{id}/sessions");
    let owner = json!({"ownerName": "kiln-test"});
    assert_eq!(
        admin("POST", &svc, &sessions, &token, Some(&owner))
            .await
            .status,
        409
    );
    let (queue, _, _) = open_session(&svc, &token, id).await;
    until("the idle session ended", || {
        broker.scale_sets()[0].session.is_none()
    })
    .await;
    let (queue2, qt2, _) = open_session(&svc, &token, id).await;
    assert_ne!(queue, queue2);

    assert!(broker.delete_scale_set(id));
    let get = format!("_apis/runtime/runnerscalesets/{id}");
    let reply = admin("GET", &svc, &get, &token, None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["typeName"], "RunnerScaleSetNotFoundException");
    assert_eq!(poll(&queue2, &qt2, "1", None).await.status, 404);
    broker.revoke_admin_tokens();
    assert_eq!(
        admin(
            "GET",
            &svc,
            "_apis/runtime/runnergroups/?groupName=Default",
            &token,
            None
        )
        .await
        .status,
        401
    );
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());
}

#[tokio::test]
async fn dropping_the_fake_answers_held_polls_and_closes_it() {
    let settings = Settings {
        poll_hold: Duration::from_secs(600),
        ..Settings::default()
    };
    let (broker, svc, token) = setup(settings).await;
    let (_, queue, qt, _) = scale_set_with_session(&svc, &token, "kiln-a", &["kiln"]).await;
    let url = broker.url().to_owned();
    let held = tokio::spawn(async move { poll(&queue, &qt, "1", None).await });
    until("the poll is held", || broker.scale_sets()[0].capacity == 1).await;
    drop(broker);
    let reply = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the held poll was answered")
        .unwrap();
    assert_eq!(reply.status, 202);
    let addr = url.trim_start_matches("http://").to_owned();
    until_refused(&addr).await;
}

async fn until_refused(addr: &str) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} still accepts connections");
}
