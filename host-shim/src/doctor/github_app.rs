//! `kiln doctor --config FILE`: whether GitHub takes the App's key. Mints
//! the App's JWT and asks `GET {api_url}/app`; a network that does not
//! reach GitHub leaves it "not checked", a warning rather than a failure.

use std::time::Duration;

use super::{Finding, Level};
use crate::github::{ClientPolicy, GithubApp, GithubError};
use crate::secret::Secret;

const NAME: &str = "github app";

/// One short attempt, retried once: the doctor should not hang on a
/// network that drops packets.
fn policy() -> ClientPolicy {
    ClientPolicy {
        request_timeout: Duration::from_secs(10),
        max_attempts: 2,
        first_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_millis(200),
        max_rate_limit_wait: Duration::ZERO,
        ..ClientPolicy::default()
    }
}

/// Whether App `app_id`'s `key` authenticates at `api_url`.
pub async fn check_app(api_url: &str, app_id: u64, key: &Secret) -> Finding {
    check_app_with(api_url, app_id, key, policy()).await
}

/// [`check_app`] with another client policy (tests: quicker retries).
pub async fn check_app_with(
    api_url: &str,
    app_id: u64,
    key: &Secret,
    policy: ClientPolicy,
) -> Finding {
    let app = match GithubApp::with_policy(api_url, app_id, key, policy) {
        Ok(app) => app,
        Err(e) => return key_unusable(app_id, &e),
    };
    match app.authenticate().await {
        Ok(slug) => Finding::ok(
            NAME,
            format!("App {app_id} ({slug}) authenticates at {api_url}"),
        ),
        Err(e) => answer_problem(api_url, app_id, &e),
    }
}

fn key_unusable(app_id: u64, e: &GithubError) -> Finding {
    Finding::problem(
        NAME,
        Level::Fail,
        format!("App {app_id}: {e}"),
        "set github.private_key_file to the .pem GitHub generated for the App (App settings, Private keys)",
    )
}

/// GitHub refused the key, or could not be asked.
fn answer_problem(api_url: &str, app_id: u64, e: &GithubError) -> Finding {
    match e {
        GithubError::Transport { .. } | GithubError::Timeout { .. } => Finding::problem(
            NAME,
            Level::Warn,
            format!("not checked: {api_url} cannot be reached from here ({e})"),
            "run kiln doctor where the network reaches GitHub to check the App's key",
        ),
        GithubError::Status { status: 401, .. } => Finding::problem(
            NAME,
            Level::Fail,
            format!("GitHub refused the key as App {app_id}'s: {e}"),
            format!("check github.app_id = {app_id} is the App's ID, and github.private_key_file is a current private key of that App (App settings, Private keys; a deleted key stops working)"),
        ),
        _ => Finding::problem(
            NAME,
            Level::Fail,
            format!("App {app_id}: {e}"),
            "check github.api_url and the App's settings",
        ),
    }
}
