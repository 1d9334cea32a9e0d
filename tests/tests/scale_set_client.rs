//! Kiln's scale-set client (`kiln::github::scaleset`) against the fake
//! GitHub and broker, in-process and without VMs: the admin token is
//! renewed before it expires (no call is refused for it), a second session
//! is a conflict, a refreshed session's old queue token is refused, an
//! empty poll is `Empty`, and a deleted scale set reads as gone.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use kiln::github::scaleset::{is_conflict, status_of, Poll, ScaleSetClient};
use kiln::github::{GithubApp, RunnerScope};
use kiln::secret::Secret;
use kiln_vm_tests::fake_broker::{FakeBroker, Settings};
use kiln_vm_tests::fake_github::{test_key, FakeGithub, APP_ID};

async fn client(settings: Settings) -> (FakeGithub, FakeBroker, ScaleSetClient) {
    let broker = FakeBroker::start_with(settings).await;
    let github = FakeGithub::start().await;
    github.attach_broker(&broker);
    let app = GithubApp::new(
        &github.url,
        APP_ID,
        &Secret::new(test_key().private_pkcs1.clone()),
    )
    .unwrap();
    let scope = RunnerScope::Org { org: "acme".into() };
    let client = ScaleSetClient::new(Arc::new(app), scope);
    (github, broker, client)
}

#[tokio::test]
async fn the_admin_token_is_renewed_before_it_expires() {
    // 61 s of life: due for renewal 1 s after it is minted.
    let (github, broker, client) = client(Settings {
        admin_token_lifetime: Duration::from_secs(61),
        ..Settings::default()
    })
    .await;
    let labels = vec!["self-hosted".to_owned(), "kiln".to_owned()];
    let set = client.create_scale_set(1, "kiln-x", &labels).await.unwrap();
    assert_eq!(
        github.count(Method::POST, "/actions/runner-registration"),
        1
    );
    let again = client.scale_set_by_name(1, "kiln-x").await.unwrap();
    assert_eq!(again.map(|s| s.id), Some(set.id));
    assert_eq!(
        github.count(Method::POST, "/actions/runner-registration"),
        1,
        "a valid token is reused"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(client.scale_set(set.id).await.unwrap().is_some());
    assert_eq!(
        github.count(Method::POST, "/actions/runner-registration"),
        2,
        "renewed once due, before it expired"
    );
    let refused = broker
        .calls()
        .iter()
        .filter(|c| c.status == Some(401))
        .count();
    assert_eq!(
        refused,
        0,
        "no call was refused for an old token: {:?}",
        broker.calls()
    );
    // Revoked at GitHub: the 401 renews it and the call goes through.
    broker.revoke_admin_tokens();
    assert!(client.scale_set(set.id).await.unwrap().is_some());
    assert_eq!(
        github.count(Method::POST, "/actions/runner-registration"),
        3
    );
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());
}

#[tokio::test]
async fn sessions_conflict_refresh_and_poll_as_github_does() {
    let (_github, broker, client) = client(Settings {
        poll_hold: Duration::from_millis(300),
        ..Settings::default()
    })
    .await;
    let set = client
        .create_scale_set(1, "kiln-y", &["kiln".to_owned()])
        .await
        .unwrap();
    let session = client.create_session(set.id, "host-a").await.unwrap();
    let second = client.create_session(set.id, "host-b").await.unwrap_err();
    assert!(is_conflict(&second), "{second}");
    assert!(matches!(
        client.get_message(&session, 0, 0).await.unwrap(),
        Poll::Empty
    ));
    let fresh = client.refresh_session(set.id, &session).await.unwrap();
    assert_eq!(fresh.session_id, session.session_id);
    let old = client.get_message(&session, 0, 0).await.unwrap_err();
    assert_eq!(
        status_of(&old),
        Some(401),
        "the old queue token is refused: {old}"
    );
    // A job arrives for a poll that has room, and its ack removes it.
    broker.queue_job("acme/widgets", &["kiln"]);
    let Poll::Message(envelope) = client.get_message(&fresh, 0, 1).await.unwrap() else {
        panic!("the job's message");
    };
    let message = envelope.parse().unwrap();
    assert_eq!(message.jobs.len(), 1);
    client.delete_message(&fresh, message.id).await.unwrap();
    client.delete_message(&fresh, message.id).await.unwrap();
    assert!(broker.scale_sets()[0].messages.is_empty());
    client
        .delete_session(set.id, &fresh.session_id)
        .await
        .unwrap();
    assert!(broker.delete_scale_set(set.id));
    assert_eq!(client.scale_set(set.id).await.unwrap().map(|s| s.id), None);
    let gone = client.create_session(set.id, "host-a").await.unwrap_err();
    assert_eq!(status_of(&gone), Some(404), "{gone}");
    assert!(broker.violations().is_empty(), "{:?}", broker.violations());
}
