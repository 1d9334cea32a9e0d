//! GitHub App authentication: the App's RS256 JWT, exchanged for installation
//! tokens that are cached per installation and refreshed before they expire.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::client::{
    format_rfc3339, parse_rfc3339, unix_secs, Answer, ClientPolicy, HttpClient, RateLimit,
};
use super::error::GithubError;
use super::scope::RunnerScope;
use crate::secret::Secret;

/// GitHub allows at most 10 minutes; 9 leaves room for clock skew.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
/// `iat` in the past, as GitHub advises, so a host clock slightly ahead still works.
const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// Validity assumed for a token whose `expires_at` cannot be read (GitHub's is 1 h).
const FALLBACK_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// A GitHub App as Kiln uses it: creates JIT runners and deletes them, in any
/// of the App's installations. `Send + Sync`: share it through an `Arc`.
pub struct GithubApp {
    app_id: u64,
    key: EncodingKey,
    pub(crate) http: HttpClient,
    /// One slot per installation. The slot's async lock is held while a token
    /// is fetched, so concurrent callers wait for that one refresh.
    tokens: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
    /// The last rate-limit headers GitHub sent, per installation.
    rate_limits: Mutex<HashMap<u64, RateLimit>>,
}

// The job lifecycle (crate::job) shares one GithubApp between tasks through an Arc.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<GithubApp>();
};

impl fmt::Debug for GithubApp {
    // By hand: the key and the cached tokens stay out of every log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .field("api", &self.http.base())
            .finish_non_exhaustive()
    }
}

struct CachedToken {
    token: Secret,
    refresh_at: SystemTime,
}

impl GithubApp {
    /// `api_url`: `https://api.github.com`, or `https://HOST/api/v3` for GitHub
    /// Enterprise Server. `private_key_pem`: the `.pem` file GitHub generated
    /// for the App. Checks the key by signing once, so a bad key fails here
    /// rather than at the first job.
    pub fn new(api_url: &str, app_id: u64, private_key_pem: &Secret) -> Result<Self, GithubError> {
        Self::with_policy(api_url, app_id, private_key_pem, ClientPolicy::default())
    }

    /// [`GithubApp::new`] with other timeouts, retries or waits.
    /// Counts every request to GitHub in `metrics`.
    pub fn count_in(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.http.count_in(metrics);
        self
    }

    pub fn with_policy(
        api_url: &str,
        app_id: u64,
        private_key_pem: &Secret,
        policy: ClientPolicy,
    ) -> Result<Self, GithubError> {
        Ok(Self {
            app_id,
            key: parse_key(private_key_pem)?,
            http: HttpClient::new(api_url, policy)?,
            tokens: Mutex::new(HashMap::new()),
            rate_limits: Mutex::new(HashMap::new()),
        })
    }

    /// The App's JWT (RS256; `iat` = now - 60 s, `exp` = now + 9 min, `iss` = App id).
    fn jwt(&self) -> Result<Secret, GithubError> {
        #[derive(serde::Serialize)]
        struct Claims {
            iat: u64,
            exp: u64,
            iss: u64,
        }
        let now = unix_secs(SystemTime::now());
        let claims = Claims {
            iat: now.saturating_sub(JWT_BACKDATE.as_secs()),
            exp: now + JWT_LIFETIME.as_secs(),
            iss: self.app_id,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| GithubError::Jwt {
                problem: e.to_string(),
            })
    }

    /// The `Authorization` value for installation `installation_id`: a cached
    /// token, or a fresh one when it is missing or due for refresh.
    pub(crate) async fn installation_auth(
        &self,
        installation_id: u64,
    ) -> Result<Secret, GithubError> {
        let slot = {
            let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(tokens.entry(installation_id).or_default())
        };
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| SystemTime::now() < c.refresh_at) {
            return Ok(Secret::new(format!("token {}", c.token.expose())));
        }
        let fresh = self.fetch_token(installation_id).await?;
        let auth = Secret::new(format!("token {}", fresh.token.expose()));
        *cached = Some(fresh);
        Ok(auth)
    }

    /// The id of the App's installation that covers `scope` (asked as the
    /// App: `GET /orgs/{org}/installation`, `/repos/{owner}/{repo}/installation`
    /// or `/enterprises/{enterprise}/installation`).
    pub async fn installation_of(&self, scope: &RunnerScope) -> Result<u64, GithubError> {
        #[derive(serde::Deserialize)]
        struct Installation {
            id: u64,
        }
        let path = scope.installation_path();
        let auth = format!("Bearer {}", self.jwt()?.expose());
        let answer = self.http.send(Method::GET, &path, &auth, None).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.into_error(&Method::GET, &path));
        }
        let Installation { id } = answer.json(&Method::GET, &path)?;
        Ok(id)
    }

    /// The App itself, asked as the App (`GET /app` with its JWT): whether
    /// GitHub takes the key as App `app_id`'s. Answers the App's slug.
    pub async fn authenticate(&self) -> Result<String, GithubError> {
        #[derive(serde::Deserialize)]
        struct App {
            slug: String,
        }
        let path = "/app";
        let auth = format!("Bearer {}", self.jwt()?.expose());
        let answer = self.http.send(Method::GET, path, &auth, None).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.into_error(&Method::GET, path));
        }
        let App { slug } = answer.json(&Method::GET, path)?;
        Ok(slug)
    }

    /// The App id the JWTs name.
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// Forgets installation `installation_id`'s token (GitHub said 401: revoked).
    async fn forget_token(&self, installation_id: u64) {
        let slot = {
            let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
            tokens.get(&installation_id).cloned()
        };
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }

    async fn fetch_token(&self, installation_id: u64) -> Result<CachedToken, GithubError> {
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: String,
            expires_at: String,
        }
        let path = format!("/app/installations/{installation_id}/access_tokens");
        let auth = format!("Bearer {}", self.jwt()?.expose());
        let answer = self.http.send(Method::POST, &path, &auth, None).await?;
        if answer.status != StatusCode::CREATED {
            return Err(answer.into_error(&Method::POST, &path));
        }
        let TokenAnswer { token, expires_at } = answer.json(&Method::POST, &path)?;
        let margin = self.http.policy().token_refresh_margin;
        let refresh_at = match parse_rfc3339(&expires_at) {
            Some(unix) => SystemTime::UNIX_EPOCH + Duration::from_secs(unix),
            None => {
                tracing::warn!(
                    installation_id,
                    expires_at,
                    "installation token's expires_at is not RFC 3339; assuming 30 minutes"
                );
                SystemTime::now() + FALLBACK_TOKEN_LIFETIME
            }
        }
        .checked_sub(margin)
        .unwrap_or(SystemTime::UNIX_EPOCH);
        tracing::debug!(
            installation_id,
            refresh_at = format_rfc3339(unix_secs(refresh_at)),
            "new GitHub installation token"
        );
        Ok(CachedToken {
            token: Secret::new(token),
            refresh_at,
        })
    }

    /// Sends a request as installation `installation_id`. A 401 means the
    /// cached token was revoked: forget it and try once more with a new one.
    pub(crate) async fn send_as_installation(
        &self,
        installation_id: u64,
        method: Method,
        path: &str,
        json_body: Option<Bytes>,
    ) -> Result<Answer, GithubError> {
        self.send_as_installation_if(installation_id, method, path, json_body, None)
            .await
    }

    /// [`GithubApp::send_as_installation`] with `If-None-Match: if_none_match`
    /// when given (a 304 is returned as is). Records the answer's rate-limit
    /// headers for [`GithubApp::rate_limit`].
    pub(crate) async fn send_as_installation_if(
        &self,
        installation_id: u64,
        method: Method,
        path: &str,
        json_body: Option<Bytes>,
        if_none_match: Option<&str>,
    ) -> Result<Answer, GithubError> {
        let auth = self.installation_auth(installation_id).await?;
        let answer = self
            .http
            .send_conditional(
                method.clone(),
                path,
                auth.expose(),
                json_body.clone(),
                if_none_match,
            )
            .await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            self.note_rate_limit(installation_id, &answer);
            return Ok(answer);
        }
        tracing::warn!(
            installation_id,
            path,
            "GitHub refused the installation token; fetching a new one"
        );
        self.forget_token(installation_id).await;
        let auth = self.installation_auth(installation_id).await?;
        let answer = self
            .http
            .send_conditional(method, path, auth.expose(), json_body, if_none_match)
            .await?;
        self.note_rate_limit(installation_id, &answer);
        Ok(answer)
    }

    fn note_rate_limit(&self, installation_id: u64, answer: &Answer) {
        if let Some(limit) = answer.rate_limit {
            self.rate_limits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(installation_id, limit);
        }
    }

    /// The rate limit of installation `installation_id` as GitHub's last
    /// answer to one of its requests stated it; None before any answer
    /// carried the headers.
    pub fn rate_limit(&self, installation_id: u64) -> Option<RateLimit> {
        self.rate_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&installation_id)
            .copied()
    }
}

/// Parses the App key, saying what is wrong without quoting it.
fn parse_key(pem: &Secret) -> Result<EncodingKey, GithubError> {
    let problem = |p: String| GithubError::Key { problem: p };
    let text = pem.expose().trim();
    let label = text
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.split_once("-----"))
        .map(|(label, _)| label);
    let Some(label) = label else {
        return Err(problem(format!(
            "not PEM ({} bytes that do not start with a \"-----BEGIN ...-----\" line); \
             use the .pem file GitHub generated for the App",
            text.len()
        )));
    };
    match label {
        "RSA PRIVATE KEY" | "PRIVATE KEY" => {}
        "ENCRYPTED PRIVATE KEY" => {
            return Err(problem(
                "an encrypted private key; decrypt it first (openssl pkey -in KEY -out KEY.pem)".into(),
            ))
        }
        other => {
            return Err(problem(format!(
                "a PEM \"{other}\", not an RSA private key; use the .pem file GitHub generated for the App"
            )))
        }
    }
    let key = EncodingKey::from_rsa_pem(text.as_bytes()).map_err(|e| {
        problem(match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => {
                format!("a PEM \"{label}\" that does not hold an RSA private key")
            }
            _ => format!("a PEM \"{label}\" that cannot be read: {e}"),
        })
    })?;
    // The RSA structure itself is only checked when signing: sign once now so
    // a broken key fails at start-up, not at the first job.
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &serde_json::json!({}), &key).map_err(
        |e| {
            problem(format!(
                "a PEM \"{label}\" that is not a usable RSA key: {e}"
            ))
        },
    )?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_error(pem: &str) -> String {
        match parse_key(&Secret::new(pem)) {
            Ok(_) => "parsed".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_keys_are_named_without_being_shown() {
        let not_pem = key_error("hunter2hunter2");
        assert!(not_pem.contains("not PEM"), "{not_pem}");
        assert!(!not_pem.contains("hunter2"), "{not_pem}");

        let ec = key_error("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n");
        assert!(
            ec.contains("\"EC PRIVATE KEY\", not an RSA private key"),
            "{ec}"
        );

        let ssh = key_error(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        );
        assert!(ssh.contains("not an RSA private key"), "{ssh}");

        let garbage = key_error(
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0c2VjcmV0\n-----END RSA PRIVATE KEY-----\n",
        );
        assert!(garbage.starts_with("GitHub App private key: "), "{garbage}");
        assert!(!garbage.contains("c2VjcmV0c2VjcmV0"), "{garbage}");
    }
}
