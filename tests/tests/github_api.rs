//! The GitHub App client against a fake GitHub API on 127.0.0.1 (no VM).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use kiln::github::{
    ClientPolicy, GithubApp, GithubError, JitRequest, JobState, JobStatus, RunnerScope, RunnerState,
};
use kiln::secret::Secret;

use kiln_vm_tests::fake_github::{
    job_body, now_unix, runner_body, test_key, Failure, FakeGithub, Registered, APP_ID,
};
use kiln_vm_tests::github_schema::{check, job_runner_schemas};
use serde_json::json;

const INSTALLATION: u64 = 77;

/// Quick retries so the tests take milliseconds, not seconds.
fn fast_policy() -> ClientPolicy {
    ClientPolicy {
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_rate_limit_wait: Duration::from_secs(5),
        token_refresh_margin: Duration::from_secs(5 * 60),
    }
}

fn app_for(fake: &FakeGithub) -> GithubApp {
    app_with(&fake.url, fast_policy())
}

fn app_with(url: &str, policy: ClientPolicy) -> GithubApp {
    let key = Secret::new(test_key().private_pkcs1.clone());
    match GithubApp::with_policy(url, APP_ID, &key, policy) {
        Ok(app) => app,
        Err(e) => panic!("GithubApp: {e}"),
    }
}

fn org() -> RunnerScope {
    RunnerScope::Org { org: "acme".into() }
}

fn request(name: &str) -> JitRequest {
    JitRequest {
        name: name.into(),
        runner_group_id: 1,
        labels: vec!["self-hosted".into(), "linux".into(), "kiln-small".into()],
        work_folder: "_work".into(),
    }
}

/// Every way an error can be printed, for leak checks.
fn printed(e: &GithubError) -> String {
    format!("{e} | {e:?} | {e:#?}")
}

fn assert_no_secrets(fake: &FakeGithub, text: &str) {
    for token in fake.issued_tokens() {
        assert!(!text.contains(&token), "token leaked: {text}");
    }
    for config in fake.jit_configs() {
        assert!(!text.contains(&config), "JIT config leaked: {text}");
    }
    assert!(!text.contains("PRIVATE KEY"), "key leaked: {text}");
}

#[tokio::test]
async fn jit_configs_for_org_repo_and_enterprise() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    let scopes = [
        (org(), "/orgs/acme/actions/runners/generate-jitconfig"),
        (
            RunnerScope::Repo {
                owner: "acme".into(),
                repo: "widgets".into(),
            },
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ),
        (
            RunnerScope::Enterprise {
                enterprise: "acme-inc".into(),
            },
            "/enterprises/acme-inc/actions/runners/generate-jitconfig",
        ),
    ];
    for (i, (scope, path)) in scopes.iter().enumerate() {
        let name = format!("kiln-{i}");
        let jit = app
            .jit_config(INSTALLATION, scope, &request(&name))
            .await
            .unwrap_or_else(|e| panic!("{scope}: {e}"));
        assert_eq!(jit.runner_name, name);
        assert!(fake.live_runners().contains(&jit.runner_id));
        assert_eq!(
            fake.jit_configs().last().map(String::as_str),
            Some(jit.encoded.expose())
        );
        let last = fake.seen().pop().map(|s| (s.method, s.path));
        assert_eq!(last, Some((Method::POST, path.to_string())));
        assert!(!format!("{jit:?}").contains(jit.encoded.expose()));
    }
    assert_eq!(fake.token_requests(), 1);
}

#[tokio::test]
async fn ghes_base_url_keeps_its_path_prefix() {
    let fake = FakeGithub::start().await;
    let app = app_with(&format!("{}/api/v3/", fake.url), fast_policy());
    app.jit_config(INSTALLATION, &org(), &request("kiln-ghes"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.ghes_prefix), "{seen:?}");
}

#[tokio::test]
async fn one_token_serves_many_calls_even_concurrent_ones() {
    let fake = FakeGithub::start().await;
    let app = Arc::new(app_for(&fake));
    // A slow token endpoint makes the concurrent callers overlap for sure.
    fake.set_delay(Duration::from_millis(200));
    let calls = (0..5).map(|i| {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.jit_config(INSTALLATION, &org(), &request(&format!("kiln-c{i}")))
                .await
        })
    });
    for call in calls {
        let result = call.await.unwrap_or_else(|e| panic!("task: {e}"));
        result.unwrap_or_else(|e| panic!("{e}"));
    }
    fake.set_delay(Duration::ZERO);
    app.jit_config(INSTALLATION, &org(), &request("kiln-after"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.count(Method::POST, "/generate-jitconfig"), 6);

    // Another installation has its own token.
    app.jit_config(INSTALLATION + 1, &org(), &request("kiln-other"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_token_near_its_expiry_is_replaced() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    // Inside the 5-minute refresh margin from the start: every call needs a new one.
    fake.set_token_lifetime(Duration::from_secs(4 * 60));
    for i in 0..3 {
        app.jit_config(INSTALLATION, &org(), &request(&format!("kiln-e{i}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(fake.token_requests(), 3);

    // A token that lives past the margin is kept until the margin is reached.
    let fake = FakeGithub::start().await;
    let mut policy = fast_policy();
    policy.token_refresh_margin = Duration::from_secs(3600 - 2);
    let app = app_with(&fake.url, policy);
    app.jit_config(INSTALLATION, &org(), &request("kiln-a"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.jit_config(INSTALLATION, &org(), &request("kiln-b"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.jit_config(INSTALLATION, &org(), &request("kiln-c"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    app.jit_config(INSTALLATION, &org(), &request("kiln-1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fake.revoke_tokens();
    app.jit_config(INSTALLATION, &org(), &request("kiln-2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    app.delete_runner(INSTALLATION, &org(), 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fake.fail_next(2, Failure::server_error());
    let jit = app
        .jit_config(INSTALLATION, &org(), &request("kiln-r"))
        .await;
    assert!(jit.is_ok(), "{:?}", jit.err());
    assert_eq!(fake.count(Method::POST, "/generate-jitconfig"), 3);
}

#[tokio::test]
async fn server_errors_give_up_after_the_attempt_bound() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    fake.fail_next(10, Failure::server_error());
    let err = app
        .jit_config(INSTALLATION, &org(), &request("kiln-x"))
        .await
        .err()
        .unwrap_or_else(|| panic!("succeeded through 10 failures"));
    // The token request is the one that failed 4 times.
    assert!(
        matches!(&err, GithubError::Unavailable { status: 500, attempts: 4, path, .. }
            if path == &format!("/app/installations/{INSTALLATION}/access_tokens")),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("POST") && text.contains("HTTP 500") && text.contains("Server Error"),
        "{text}"
    );
    assert_eq!(fake.count(Method::POST, "/access_tokens"), 4);
}

#[tokio::test]
async fn a_long_rate_limit_fails_saying_until_when() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    app.jit_config(INSTALLATION, &org(), &request("kiln-1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reset = now_unix() + 3600;
    fake.fail_next(1, Failure::rate_limited_until(reset));
    let started = Instant::now();
    let err = app
        .jit_config(INSTALLATION, &org(), &request("kiln-2"))
        .await
        .err()
        .unwrap_or_else(|| panic!("rate limit ignored"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited for an hour-long limit"
    );
    let text = err.to_string();
    assert!(
        text.contains("rate limited by GitHub (HTTP 403) until 20"),
        "{text}"
    );
    assert!(text.contains("API rate limit exceeded"), "{text}");
    assert!(
        text.contains("/orgs/acme/actions/runners/generate-jitconfig"),
        "{text}"
    );
    match err {
        GithubError::RateLimited { wait_secs, .. } => {
            assert!((3595..=3605).contains(&wait_secs), "{wait_secs}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_short_rate_limit_is_waited_out() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    fake.fail_next(1, Failure::retry_after(1));
    let started = Instant::now();
    app.jit_config(INSTALLATION, &org(), &request("kiln-w"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "did not honour Retry-After"
    );
    assert_eq!(fake.count(Method::POST, "/access_tokens"), 2);
}

#[tokio::test]
async fn a_plain_403_is_not_retried() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    app.jit_config(INSTALLATION, &org(), &request("kiln-1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    fake.fail_next(
        1,
        Failure::status(403, "Resource not accessible by integration"),
    );
    let err = app.delete_runner(INSTALLATION, &org(), 5).await.err();
    assert!(
        matches!(&err, Some(GithubError::Status { status: 403, method: "DELETE", message, .. })
            if message == "Resource not accessible by integration"),
        "{err:?}"
    );
    assert_eq!(fake.count(Method::DELETE, "/runners/5"), 1);
}

#[tokio::test]
async fn delete_runner_204_and_404_are_ok() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    let scope = RunnerScope::Repo {
        owner: "acme".into(),
        repo: "widgets".into(),
    };
    let jit = app
        .jit_config(INSTALLATION, &scope, &request("kiln-d"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fake.live_runners(), vec![jit.runner_id]);
    app.delete_runner(INSTALLATION, &scope, jit.runner_id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(fake.live_runners().is_empty());
    let path = format!("/repos/acme/widgets/actions/runners/{}", jit.runner_id);
    assert_eq!(fake.count(Method::DELETE, &path), 1);
    // Gone already (the runner took its job and deregistered): still Ok.
    app.delete_runner(INSTALLATION, &scope, jit.runner_id)
        .await
        .unwrap_or_else(|e| panic!("second delete: {e}"));
    assert_eq!(fake.count(Method::DELETE, &path), 2);
}

#[tokio::test]
async fn a_jobs_status_is_read_and_an_unknown_job_is_not_found() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    fake.set_job(11, "acme/widgets", "completed");
    fake.set_job(12, "acme/widgets", "in_progress");
    let state = |repo: &'static str, id: u64| {
        let app = &app;
        async move {
            app.job_state(INSTALLATION, repo, id)
                .await
                .unwrap_or_else(|e| panic!("{repo} {id}: {e}"))
        }
    };
    assert_eq!(
        state("acme/widgets", 11).await,
        JobState::Known(JobStatus::Completed)
    );
    assert_eq!(
        state("acme/widgets", 12).await,
        JobState::Known(JobStatus::InProgress)
    );
    // The fake's default: a job it was not told about is queued.
    assert_eq!(
        state("acme/widgets", 13).await,
        JobState::Known(JobStatus::Queued)
    );
    assert_eq!(state("acme/gadgets", 11).await, JobState::NotFound);
    assert_eq!(
        fake.count(Method::GET, "/repos/acme/widgets/actions/jobs/11"),
        1
    );
    fake.fail_next_for(
        1,
        "/actions/jobs/14",
        Failure::status(403, "Resource not accessible by integration"),
    );
    let err = app
        .job_state(INSTALLATION, "acme/widgets", 14)
        .await
        .expect_err("403");
    assert!(printed(&err).contains("HTTP 403"), "{err}");
}

#[tokio::test]
async fn a_runners_busy_field_is_read_for_every_scope() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    let scopes = [
        org(),
        RunnerScope::Repo {
            owner: "acme".into(),
            repo: "widgets".into(),
        },
        RunnerScope::Enterprise {
            enterprise: "acme-inc".into(),
        },
    ];
    for (i, scope) in scopes.iter().enumerate() {
        let jit = app
            .jit_config(INSTALLATION, scope, &request(&format!("kiln-busy-{i}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let get = app.runner_state(INSTALLATION, scope, jit.runner_id).await;
        assert_eq!(
            get.ok(),
            Some(RunnerState::Registered { busy: false }),
            "{scope}"
        );
        fake.set_runner_busy(jit.runner_id);
        let get = app.runner_state(INSTALLATION, scope, jit.runner_id).await;
        assert_eq!(
            get.ok(),
            Some(RunnerState::Registered { busy: true }),
            "{scope}"
        );
        app.delete_runner(INSTALLATION, scope, jit.runner_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let get = app.runner_state(INSTALLATION, scope, jit.runner_id).await;
        assert_eq!(get.ok(), Some(RunnerState::Gone), "{scope}");
    }
    assert_eq!(
        fake.count(Method::GET, "/enterprises/acme-inc/actions/runners/103"),
        3
    );
}

#[tokio::test]
async fn github_errors_carry_status_and_message() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    app.jit_config(INSTALLATION, &org(), &request("kiln-same"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = app
        .jit_config(INSTALLATION, &org(), &request("kiln-same"))
        .await
        .err()
        .unwrap_or_else(|| panic!("duplicate name accepted"));
    let text = err.to_string();
    assert!(
        text.starts_with("POST /orgs/acme/actions/runners/generate-jitconfig: GitHub answered HTTP 409: Already exists"),
        "{text}"
    );
    assert_no_secrets(&fake, &printed(&err));
}

#[tokio::test]
async fn invalid_requests_never_reach_github() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    let mut req = request("kiln-labels");
    req.labels = (0..101).map(|i| format!("l{i}")).collect();
    let err = app.jit_config(INSTALLATION, &org(), &req).await.err();
    assert!(
        matches!(err, Some(GithubError::InvalidRequest { .. })),
        "{err:?}"
    );
    req.labels.clear();
    assert!(app.jit_config(INSTALLATION, &org(), &req).await.is_err());
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
}

#[tokio::test]
async fn errors_never_show_tokens_or_jit_configs() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    let jit = app
        .jit_config(INSTALLATION, &org(), &request("kiln-1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let token = fake.issued_tokens().pop().unwrap_or_default();
    assert!(!token.is_empty());

    // A 201 that breaks the documented shape, with the secret where serde
    // would quote it in its own message.
    let secret = jit.encoded.expose().to_owned();
    let body = format!(
        r#"{{"runner": {{"id": "{secret}", "name": "x"}}, "encoded_jit_config": "{secret}"}}"#
    );
    fake.fail_next(1, Failure::raw(201, body));
    let err = app
        .jit_config(INSTALLATION, &org(), &request("kiln-2"))
        .await
        .err()
        .unwrap_or_else(|| panic!("bad body accepted"));
    assert!(matches!(err, GithubError::Decode { .. }), "{err:?}");
    assert_no_secrets(&fake, &printed(&err));

    // An error body that quotes the token back (a misbehaving proxy) is not shown raw.
    fake.fail_next(
        1,
        Failure::raw(400, format!("<html>bad token {token}</html>")),
    );
    let err = app.delete_runner(INSTALLATION, &org(), 9).await.err();
    let text = err.as_ref().map(printed).unwrap_or_default();
    assert!(text.contains("HTTP 400"), "{text}");
    assert_no_secrets(&fake, &text);

    assert_no_secrets(&fake, &format!("{jit:?}"));
    let shown = format!("{app:?}");
    assert!(
        shown.contains("app_id: 4242") && shown.contains(&fake.url),
        "{shown}"
    );
    assert_no_secrets(&fake, &shown);
}

#[tokio::test]
async fn timeouts_and_unreachable_hosts_fail_with_the_request_named() {
    let fake = FakeGithub::start().await;
    let mut policy = fast_policy();
    policy.request_timeout = Duration::from_millis(100);
    policy.max_attempts = 2;
    let app = app_with(&fake.url, policy.clone());
    fake.set_delay(Duration::from_millis(500));
    let err = app.delete_runner(INSTALLATION, &org(), 3).await.err();
    assert!(
        matches!(err, Some(GithubError::Timeout { attempts: 2, .. })),
        "{err:?}"
    );

    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let closed = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    drop(listener);
    let app = app_with(&closed, policy);
    let err = app.delete_runner(INSTALLATION, &org(), 3).await.err();
    let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        matches!(err, Some(GithubError::Transport { attempts: 2, .. })),
        "{err:?}"
    );
    assert!(
        text.contains("cannot reach GitHub") && text.contains("/access_tokens"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_keys_fail_at_construction_with_a_clear_error() {
    let key_error =
        |pem: &str| match GithubApp::new("https://api.github.com", APP_ID, &Secret::new(pem)) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => printed(&e),
        };
    let text = key_error("ghp_notakeyatall");
    assert!(
        text.starts_with("GitHub App private key: not PEM"),
        "{text}"
    );
    assert!(!text.contains("ghp_notakeyatall"), "{text}");

    let text = key_error(&test_key().public_pem);
    assert!(
        text.contains("\"RSA PUBLIC KEY\", not an RSA private key"),
        "{text}"
    );

    // Right label, broken content.
    let broken = test_key().private_pkcs1.replacen("MII", "MIA", 1);
    let text = key_error(&broken);
    assert!(
        text.starts_with("GitHub App private key: a PEM \"RSA PRIVATE KEY\""),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY-----"), "{text}");

    // PKCS#8 works as well as GitHub's PKCS#1.
    assert_eq!(key_error(&test_key().private_pkcs8), "accepted");
    assert_eq!(key_error(&test_key().private_pkcs1), "accepted");

    let url = GithubApp::new(
        "api.github.com",
        APP_ID,
        &Secret::new(test_key().private_pkcs1.clone()),
    );
    let text = url.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("GitHub API URL \"api.github.com\""), "{text}");
}

#[test]
fn the_fakes_job_and_runner_answers_follow_githubs_schemas() {
    let schemas = job_runner_schemas();
    for status in ["queued", "in_progress", "completed"] {
        let job = job_body(7, "acme/widgets", status);
        assert_eq!(
            check(&schemas["job"], &job),
            Vec::<String>::new(),
            "{status}"
        );
    }
    let runner = Registered {
        id: 101,
        scope: "orgs/acme".into(),
        request: json!({"name": "kiln-1", "labels": ["self-hosted", "kiln-small"]}),
        encoded: String::new(),
    };
    for busy in [false, true] {
        let body = runner_body(&runner, busy);
        assert_eq!(
            check(&schemas["runner"], &body),
            Vec::<String>::new(),
            "{busy}"
        );
    }
    // The check can fail: a wrong status, a missing field, a string busy.
    let mut job = job_body(7, "acme/widgets", "queued");
    job["status"] = json!("teleported");
    job.as_object_mut().map(|o| o.remove("run_id"));
    let found = check(&schemas["job"], &job);
    assert!(found.iter().any(|v| v.contains("$.status")), "{found:?}");
    assert!(
        found.iter().any(|v| v.contains("run_id is required")),
        "{found:?}"
    );
    let mut body = runner_body(&runner, false);
    body["busy"] = json!("no");
    assert_eq!(check(&schemas["runner"], &body).len(), 1);
}
