//! `kiln doctor --config`'s App check against the fake GitHub API on
//! 127.0.0.1 (no VM): the App's key authenticates, a key of another App
//! is refused with a failure naming the App id, and a GitHub that cannot
//! be reached leaves the key "not checked", a warning.

use std::time::Duration;

use kiln::doctor::github_app::check_app_with;
use kiln::doctor::Level;
use kiln::github::ClientPolicy;
use kiln::secret::Secret;
use kiln_vm_tests::fake_github::{test_key, FakeGithub, APP_ID};
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};

fn quick() -> ClientPolicy {
    ClientPolicy {
        request_timeout: Duration::from_secs(5),
        max_attempts: 2,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        ..ClientPolicy::default()
    }
}

#[tokio::test]
async fn the_apps_key_authenticates() {
    let fake = FakeGithub::start().await;
    let key = Secret::new(test_key().private_pkcs1.clone());
    let f = check_app_with(&fake.url, APP_ID, &key, quick()).await;
    assert_eq!(f.level, Level::Ok, "{f:?}");
    assert!(
        f.detail.contains(&format!("App {APP_ID} (kiln-test)")),
        "{f:?}"
    );
    assert_eq!(fake.count(hyper::Method::GET, "/app"), 1);
}

#[tokio::test]
async fn another_key_is_refused_naming_the_app_id() {
    let fake = FakeGithub::start().await;
    let other = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA keygen");
    let pem = other.to_pkcs1_pem(LineEnding::LF).expect("pem").to_string();
    let f = check_app_with(&fake.url, APP_ID, &Secret::new(pem.clone()), quick()).await;
    assert_eq!(f.level, Level::Fail, "{f:?}");
    assert!(
        f.detail
            .contains(&format!("GitHub refused the key as App {APP_ID}'s"))
            && f.detail.contains("HTTP 401"),
        "{f:?}"
    );
    let fix = f.fix.as_deref().unwrap_or_default();
    assert!(
        fix.contains(&format!("github.app_id = {APP_ID}")) && fix.contains("private_key_file"),
        "{fix}"
    );
    let printed = format!("{f:?}");
    assert!(
        !printed.contains("PRIVATE KEY"),
        "no key in the finding: {printed}"
    );
}

#[tokio::test]
async fn an_unreachable_github_is_not_checked() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let key = Secret::new(test_key().private_pkcs1.clone());
    let f = check_app_with(&format!("http://127.0.0.1:{port}"), APP_ID, &key, quick()).await;
    assert_eq!(f.level, Level::Warn, "{f:?}");
    assert!(f.detail.starts_with("not checked:"), "{f:?}");
}
