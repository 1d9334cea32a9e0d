//! [`ScaleSetClient`]: the Actions service's runner scale-set calls, on
//! Kiln's own HTTP client (retries, rate limits, metrics), with the admin
//! token renewed before it expires and once more after a 401.

use std::time::{Duration, SystemTime};

use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, ACCEPT};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::admin::{self, AdminToken};
use super::messages::Envelope;
use crate::github::client::{Answer, Extra};
use crate::github::error::GithubError;
use crate::github::{GithubApp, JitConfig, RunnerScope};
use crate::secret::Secret;

/// Every Actions-service call carries this.
const API_VERSION: &str = "api-version=6.0-preview";
/// The queue's long poll: GitHub holds it ~50 s when there is nothing.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(120);
const CAPACITY_HEADER: HeaderName = HeaderName::from_static("x-scalesetmaxcapacity");

/// A runner scale set as GitHub describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSet {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub runner_group_id: u64,
    #[serde(default)]
    pub labels: Vec<Label>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// An open message session.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub session_id: String,
    #[serde(default)]
    pub owner_name: String,
    pub message_queue_url: String,
    message_queue_access_token: String,
    #[serde(default)]
    pub statistics: Option<super::Statistics>,
}

impl std::fmt::Debug for Session {
    // By hand: the queue token stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("owner_name", &self.owner_name)
            .field("message_queue_url", &self.message_queue_url)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn queue_auth(&self) -> String {
        format!("Bearer {}", self.message_queue_access_token)
    }
}

/// What a poll of the queue brought.
#[derive(Debug)]
pub enum Poll {
    Message(Envelope),
    /// 202: nothing within the long poll.
    Empty,
}

/// The scale-set calls for one scope and installation.
pub struct ScaleSetClient {
    app: Arc<GithubApp>,
    scope: RunnerScope,
    /// The App's installation on the scope, once asked.
    installation: tokio::sync::OnceCell<u64>,
    admin: tokio::sync::Mutex<Option<AdminToken>>,
}

impl ScaleSetClient {
    pub fn new(app: Arc<GithubApp>, scope: RunnerScope) -> Self {
        Self {
            app,
            scope,
            installation: tokio::sync::OnceCell::new(),
            admin: tokio::sync::Mutex::new(None),
        }
    }

    /// The App's installation on the scope (asked once).
    pub async fn installation(&self) -> Result<u64, GithubError> {
        self.installation
            .get_or_try_init(|| self.app.installation_of(&self.scope))
            .await
            .copied()
    }

    /// Valid admin credentials: the cached ones, or new ones when they are
    /// missing or due.
    async fn admin(&self) -> Result<AdminToken, GithubError> {
        let mut cached = self.admin.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| SystemTime::now() < t.renew_at) {
            return Ok(t.clone());
        }
        let installation = self.installation().await?;
        let fresh = admin::mint(&self.app, installation, &self.scope).await?;
        tracing::debug!(service = %fresh.service, "new Actions service admin token");
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the admin token (GitHub said 401).
    async fn forget_admin(&self) {
        *self.admin.lock().await = None;
    }

    /// `method {service}/{path}?{query}&api-version=…` as admin; a 401
    /// renews the token and tries once more.
    async fn admin_call(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(Answer, String), GithubError> {
        let mut renewed = false;
        loop {
            let admin = self.admin().await?;
            let sep = if query.is_empty() { "" } else { "&" };
            let url = format!("{}/{path}?{query}{sep}{API_VERSION}", admin.service);
            let auth = format!("Bearer {}", admin.token.expose());
            let answer = self
                .app
                .http
                .send_with(
                    method.clone(),
                    &url,
                    &auth,
                    body.clone().map(Bytes::from),
                    &Extra::default(),
                )
                .await?;
            if answer.status == StatusCode::UNAUTHORIZED && !renewed {
                tracing::warn!(
                    path,
                    "the Actions service refused the admin token: renewing it"
                );
                self.forget_admin().await;
                renewed = true;
                continue;
            }
            return Ok((answer, format!("/{path}")));
        }
    }

    /// The scale set `name` in runner group `group_id`, if there is one.
    pub async fn scale_set_by_name(
        &self,
        group_id: u64,
        name: &str,
    ) -> Result<Option<ScaleSet>, GithubError> {
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            value: Vec<ScaleSet>,
        }
        let query = format!(
            "runnerGroupId={group_id}&name={}",
            crate::github::scope::encode_segment(name)
        );
        let (answer, path) = self
            .admin_call(Method::GET, "_apis/runtime/runnerscalesets", &query, None)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.into_error(&Method::GET, &path));
        }
        let List { value } = answer.json(&Method::GET, &path)?;
        Ok(value.into_iter().find(|s| s.name == name))
    }

    /// Scale set `id`; `None` when GitHub has none (deleted).
    pub async fn scale_set(&self, id: u64) -> Result<Option<ScaleSet>, GithubError> {
        let path = format!("_apis/runtime/runnerscalesets/{id}");
        let (answer, path) = self.admin_call(Method::GET, &path, "", None).await?;
        match answer.status {
            StatusCode::OK => answer.json(&Method::GET, &path).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(answer.into_error(&Method::GET, &path)),
        }
    }

    /// Creates scale set `name` in group `group_id` with `labels`
    /// (runner updates off: the image pins the runner).
    pub async fn create_scale_set(
        &self,
        group_id: u64,
        name: &str,
        labels: &[String],
    ) -> Result<ScaleSet, GithubError> {
        let body = serde_json::json!({
            "name": name,
            "runnerGroupId": group_id,
            "labels": labels.iter().map(|l| Label { name: l.clone(), kind: "System".into() }).collect::<Vec<_>>(),
            "RunnerSetting": { "disableUpdate": true },
        });
        let (answer, path) = self
            .admin_call(
                Method::POST,
                "_apis/runtime/runnerscalesets",
                "",
                Some(body.to_string().into_bytes()),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(answer.into_error(&Method::POST, &path));
        }
        answer.json(&Method::POST, &path)
    }

    /// Opens a message session on scale set `id` as `owner`. 409: another
    /// session is open ([`is_conflict`]).
    pub async fn create_session(&self, id: u64, owner: &str) -> Result<Session, GithubError> {
        let path = format!("_apis/runtime/runnerscalesets/{id}/sessions");
        let body = serde_json::json!({ "ownerName": owner });
        let (answer, path) = self
            .admin_call(Method::POST, &path, "", Some(body.to_string().into_bytes()))
            .await?;
        if !answer.status.is_success() {
            return Err(answer.into_error(&Method::POST, &path));
        }
        let session: Session = answer.json(&Method::POST, &path)?;
        if session.message_queue_url.is_empty() {
            // Seen from GitHub during incidents: nothing to poll.
            return Err(GithubError::Decode {
                method: "POST",
                path,
                problem: "the session has no messageQueueUrl".into(),
            });
        }
        Ok(session)
    }

    /// A new queue token for `session` (PATCH); 404: the session is gone.
    pub async fn refresh_session(
        &self,
        id: u64,
        session: &Session,
    ) -> Result<Session, GithubError> {
        let path = format!(
            "_apis/runtime/runnerscalesets/{id}/sessions/{}",
            crate::github::scope::encode_segment(&session.session_id)
        );
        let (answer, path) = self.admin_call(Method::PATCH, &path, "", None).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.into_error(&Method::PATCH, &path));
        }
        answer.json(&Method::PATCH, &path)
    }

    /// Closes session `session_id` of scale set `id`; gone already is fine.
    pub async fn delete_session(&self, id: u64, session_id: &str) -> Result<(), GithubError> {
        let path = format!(
            "_apis/runtime/runnerscalesets/{id}/sessions/{}",
            crate::github::scope::encode_segment(session_id)
        );
        let (answer, path) = self.admin_call(Method::DELETE, &path, "", None).await?;
        match answer.status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(answer.into_error(&Method::DELETE, &path)),
        }
    }

    /// Long-polls the queue for the first undeleted message after
    /// `last_message_id`, telling GitHub this scale set holds at most
    /// `capacity` jobs now. 401 and 404 come back as errors: the caller
    /// refreshes or re-creates the session.
    pub async fn get_message(
        &self,
        session: &Session,
        last_message_id: i64,
        capacity: u32,
    ) -> Result<Poll, GithubError> {
        let url = if last_message_id > 0 {
            let sep = if session.message_queue_url.contains('?') {
                '&'
            } else {
                '?'
            };
            format!(
                "{}{sep}lastMessageId={last_message_id}",
                session.message_queue_url
            )
        } else {
            session.message_queue_url.clone()
        };
        let extra = Extra {
            headers: vec![
                (
                    ACCEPT,
                    HeaderValue::from_static("application/json; api-version=6.0-preview"),
                ),
                (CAPACITY_HEADER, HeaderValue::from(capacity)),
            ],
            timeout: Some(POLL_TIMEOUT),
        };
        let answer = self
            .app
            .http
            .send_with(Method::GET, &url, &session.queue_auth(), None, &extra)
            .await?;
        match answer.status {
            StatusCode::OK => answer
                .json(&Method::GET, "message queue")
                .map(Poll::Message),
            StatusCode::ACCEPTED | StatusCode::NO_CONTENT => Ok(Poll::Empty),
            _ => Err(answer.into_error(&Method::GET, "message queue")),
        }
    }

    /// Deletes message `message_id` from the queue: GitHub will not send it
    /// again. 404: deleted already (or the session is gone: then it comes
    /// back to the next session, which recognises it).
    pub async fn delete_message(
        &self,
        session: &Session,
        message_id: i64,
    ) -> Result<(), GithubError> {
        let base = session
            .message_queue_url
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/');
        let url = format!("{base}/{message_id}");
        let answer = self
            .app
            .http
            .send_with(
                Method::DELETE,
                &url,
                &session.queue_auth(),
                None,
                &Extra::default(),
            )
            .await?;
        match answer.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => {
                tracing::debug!(message_id, "message deleted already");
                Ok(())
            }
            _ => Err(answer.into_error(&Method::DELETE, "message queue message")),
        }
    }

    /// GHES: acquires the jobs `request_ids` offered as available; answers
    /// those GitHub gave this scale set.
    pub async fn acquire_jobs(
        &self,
        id: u64,
        session: &Session,
        request_ids: &[i64],
    ) -> Result<Vec<i64>, GithubError> {
        #[derive(Deserialize)]
        struct Acquired {
            #[serde(default)]
            value: Vec<i64>,
        }
        let admin = self.admin().await?;
        let path = format!("/_apis/runtime/runnerscalesets/{id}/acquirejobs");
        let url = format!("{}{path}?{API_VERSION}", admin.service);
        let body = serde_json::to_vec(request_ids).unwrap_or_default();
        let answer = self
            .app
            .http
            .send_with(
                Method::POST,
                &url,
                &session.queue_auth(),
                Some(Bytes::from(body)),
                &Extra::default(),
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.into_error(&Method::POST, &path));
        }
        let Acquired { value } = answer.json(&Method::POST, &path)?;
        Ok(value)
    }

    /// A JIT runner config from scale set `id`: the runner takes the scale
    /// set's labels and group.
    pub async fn generate_jit(
        &self,
        id: u64,
        name: &str,
        work_folder: &str,
    ) -> Result<JitConfig, GithubError> {
        #[derive(Deserialize)]
        struct Runner {
            id: u64,
            name: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            runner: Runner,
            #[serde(rename = "encodedJITConfig")]
            encoded_jit_config: String,
        }
        let path = format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig");
        let body = serde_json::json!({ "name": name, "workFolder": work_folder });
        let (answer, path) = self
            .admin_call(Method::POST, &path, "", Some(body.to_string().into_bytes()))
            .await?;
        if !answer.status.is_success() {
            return Err(answer.into_error(&Method::POST, &path));
        }
        let Answer {
            runner,
            encoded_jit_config,
        } = answer.json(&Method::POST, &path)?;
        tracing::info!(scale_set_id = id, runner_id = runner.id, runner_name = %runner.name, "registered JIT runner from the scale set");
        Ok(JitConfig {
            runner_id: runner.id,
            runner_name: runner.name,
            encoded: Secret::new(encoded_jit_config),
        })
    }

    /// Deletes runner `runner_id`; gone already is fine.
    pub async fn delete_runner(&self, runner_id: u64) -> Result<(), GithubError> {
        let path = format!("_apis/distributedtask/pools/0/agents/{runner_id}");
        let (answer, path) = self.admin_call(Method::DELETE, &path, "", None).await?;
        match answer.status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            _ => Err(answer.into_error(&Method::DELETE, &path)),
        }
    }
}

/// Whether `e` is GitHub's answer that another session holds the scale set.
pub fn is_conflict(e: &GithubError) -> bool {
    status_of(e) == Some(409)
}

/// The HTTP status of an answer GitHub gave, when `e` is one.
pub fn status_of(e: &GithubError) -> Option<u16> {
    match e {
        GithubError::Status { status, .. } => Some(*status),
        _ => None,
    }
}
