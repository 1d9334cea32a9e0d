//! The Actions service's admin credentials: a registration token from the
//! REST API (as the App's installation), exchanged at
//! `POST /actions/runner-registration` (`Authorization: RemoteAuth`) for
//! the Actions service's URL and an admin JWT. The JWT's `exp` is read
//! (unverified: it is GitHub's to check) and the pair is renewed
//! [`RENEW_BEFORE`] ahead of it, or at once after a 401.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Bytes;
use hyper::{Method, StatusCode};

use crate::github::error::GithubError;
use crate::github::scope::{encode_segment, RunnerScope};
use crate::github::GithubApp;
use crate::secret::Secret;

/// Renew the admin token this long before it expires (GitHub's own client
/// does the same: tokens were seen refused within ~17 minutes otherwise).
pub const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Freshly minted registration tokens may not have propagated: the
/// exchange is retried this many times on 401/403.
const EXCHANGE_ATTEMPTS: u32 = 4;

/// Usable admin credentials.
#[derive(Clone)]
pub struct AdminToken {
    /// The Actions service, no trailing slash.
    pub service: String,
    pub token: Secret,
    pub renew_at: SystemTime,
}

/// `githubConfigURL`: where the scope lives on the web side of GitHub —
/// `https://github.com/acme` for `https://api.github.com`,
/// `https://HOST/acme` for `https://api.HOST` and `https://HOST/api/v3`,
/// and the API base itself otherwise (a local test server).
pub fn config_url(api_url: &str, scope: &RunnerScope) -> String {
    let api = api_url.trim_end_matches('/');
    let web = if let Some(rest) = api.strip_prefix("https://api.") {
        format!("https://{rest}")
    } else if let Some(base) = api.strip_suffix("/api/v3") {
        base.to_owned()
    } else {
        api.to_owned()
    };
    let path = match scope {
        RunnerScope::Org { org } => encode_segment(org),
        RunnerScope::Repo { owner, repo } => {
            format!("{}/{}", encode_segment(owner), encode_segment(repo))
        }
        RunnerScope::Enterprise { enterprise } => {
            format!("enterprises/{}", encode_segment(enterprise))
        }
    };
    format!("{web}/{path}")
}

/// Mints new admin credentials for `scope` as installation `installation_id`.
pub async fn mint(
    app: &GithubApp,
    installation_id: u64,
    scope: &RunnerScope,
) -> Result<AdminToken, GithubError> {
    let registration = registration_token(app, installation_id, scope).await?;
    let url = config_url(app.http.base(), scope);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match exchange(app, &registration, &url).await {
            Err(GithubError::Status { status, .. })
                if (status == 401 || status == 403) && attempt < EXCHANGE_ATTEMPTS =>
            {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// `POST {scope}/actions/runners/registration-token`: 201 `{token}`.
async fn registration_token(
    app: &GithubApp,
    installation_id: u64,
    scope: &RunnerScope,
) -> Result<Secret, GithubError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: String,
    }
    let path = format!("{}/registration-token", scope.runners_path());
    let answer = app
        .send_as_installation(installation_id, Method::POST, &path, None)
        .await?;
    if answer.status != StatusCode::CREATED {
        return Err(answer.into_error(&Method::POST, &path));
    }
    let Answer { token } = answer.json(&Method::POST, &path)?;
    Ok(Secret::new(token))
}

/// `POST /actions/runner-registration`: the service URL and admin JWT.
async fn exchange(
    app: &GithubApp,
    registration: &Secret,
    config_url: &str,
) -> Result<AdminToken, GithubError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        url: String,
        token: String,
    }
    let path = "/actions/runner-registration";
    let body = serde_json::json!({ "url": config_url, "runner_event": "register" });
    let auth = format!("RemoteAuth {}", registration.expose());
    let answer = app
        .http
        .send(
            Method::POST,
            path,
            &auth,
            Some(Bytes::from(body.to_string())),
        )
        .await?;
    if !answer.status.is_success() {
        return Err(answer.into_error(&Method::POST, path));
    }
    let Answer { url, token } = answer.json(&Method::POST, path)?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(GithubError::Decode {
            method: "POST",
            path: path.to_owned(),
            problem: "the Actions service URL is not an http(s) URL".into(),
        });
    }
    let expires = expiry(&token).ok_or_else(|| GithubError::Decode {
        method: "POST",
        path: path.to_owned(),
        problem: "the admin token is not a JWT with an exp claim".into(),
    })?;
    Ok(AdminToken {
        service: url.trim_end_matches('/').to_owned(),
        token: Secret::new(token),
        renew_at: expires.checked_sub(RENEW_BEFORE).unwrap_or(UNIX_EPOCH),
    })
}

/// The `exp` of a JWT, read without checking its signature.
pub fn expiry(jwt: &str) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    let header = jsonwebtoken::decode_header(jwt).ok()?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    v.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_secret(&[]);
    let data = jsonwebtoken::decode::<Claims>(jwt, &key, &v).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(data.claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_urls_follow_github_s_hosts() {
        let org = RunnerScope::Org { org: "acme".into() };
        let repo = RunnerScope::Repo {
            owner: "acme".into(),
            repo: "app".into(),
        };
        assert_eq!(
            config_url("https://api.github.com", &org),
            "https://github.com/acme"
        );
        assert_eq!(
            config_url("https://api.octo.ghe.com/", &repo),
            "https://octo.ghe.com/acme/app"
        );
        assert_eq!(
            config_url("https://ghes.example/api/v3", &org),
            "https://ghes.example/acme"
        );
        assert_eq!(
            config_url(
                "http://127.0.0.1:9000",
                &RunnerScope::Enterprise {
                    enterprise: "e".into()
                }
            ),
            "http://127.0.0.1:9000/enterprises/e"
        );
    }

    #[test]
    fn a_jwt_s_expiry_is_read_unverified() {
        let claims = serde_json::json!({ "exp": 2_000_000_000u64, "sub": "x" });
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"not ours"),
        )
        .expect("encodes");
        assert_eq!(
            expiry(&jwt),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(expiry("not.a.jwt"), None);
    }
}
