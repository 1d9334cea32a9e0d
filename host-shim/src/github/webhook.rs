//! GitHub webhooks: the `X-Hub-Signature-256` check over the raw body, and
//! the typed `workflow_job` payload (only the fields Kiln uses; unknown
//! fields are ignored, so GitHub adding some breaks nothing).

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::secret::Secret;

/// The event name: `workflow_job`, `ping`, ...
pub const EVENT_HEADER: &str = "x-github-event";
/// A GUID per delivery; a redelivery carries the same one.
pub const DELIVERY_HEADER: &str = "x-github-delivery";
/// `sha256=<hex of HMAC-SHA256(secret, raw body)>`.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

const SIGNATURE_PREFIX: &str = "sha256=";

/// Why a delivery's signature was refused. Carries neither the signature
/// nor the secret, so it is safe to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Hub-Signature-256 header (is the webhook secret set on GitHub?)")]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=` followed by 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body (wrong webhook secret?)")]
    Mismatch,
}

/// Checks `header` (the `X-Hub-Signature-256` value, if any) against the
/// HMAC-SHA256 of `body` under `secret`, in constant time.
pub fn verify_signature(
    secret: &Secret,
    body: &[u8],
    header: Option<&[u8]>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .strip_prefix(SIGNATURE_PREFIX.as_bytes())
        .ok_or(SignatureError::Malformed)?;
    let mut expected = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut expected).map_err(|_| SignatureError::Malformed)?;
    mac(secret, body)
        .verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The `X-Hub-Signature-256` value GitHub would send for `body`: what
/// tests, benchmarks and fake senders put in the header.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let digest = mac(secret, body).finalize().into_bytes();
    format!("{SIGNATURE_PREFIX}{}", hex::encode(digest))
}

fn mac(secret: &Secret, body: &[u8]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)] // HMAC takes keys of any length: new_from_slice cannot fail
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

/// A `workflow_job` delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowJobEvent {
    pub action: WorkflowJobAction,
    pub workflow_job: WorkflowJob,
    pub repository: Repository,
    /// Present when the webhook comes from a GitHub App (Kiln's case).
    #[serde(default)]
    pub installation: Option<Installation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowJobAction {
    Queued,
    Waiting,
    InProgress,
    Completed,
    /// An action GitHub added after this code was written.
    #[serde(other)]
    Other,
}

impl WorkflowJobAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Waiting => "waiting",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowJob {
    pub id: u64,
    pub run_id: u64,
    #[serde(default = "first_attempt")]
    pub run_attempt: u64,
    /// What `runs-on` asked for.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub conclusion: Option<String>,
    /// Set once a runner took the job.
    #[serde(default)]
    pub runner_id: Option<u64>,
    #[serde(default)]
    pub runner_name: Option<String>,
    #[serde(default)]
    pub runner_group_id: Option<u64>,
}

fn first_attempt() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    /// `owner/name`.
    pub full_name: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Installation {
    pub id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's documented test vector.
    const SECRET: &str = "It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_test_vector() {
        let secret = Secret::new(SECRET);
        assert_eq!(sign(&secret, BODY), SIGNATURE);
        assert_eq!(
            verify_signature(&secret, BODY, Some(SIGNATURE.as_bytes())),
            Ok(())
        );
    }

    #[test]
    fn refuses_wrong_missing_and_malformed_signatures() {
        let secret = Secret::new(SECRET);
        let check = |h: Option<&str>| verify_signature(&secret, BODY, h.map(str::as_bytes));
        assert_eq!(check(None), Err(SignatureError::Missing));
        assert_eq!(
            check(Some(&SIGNATURE.replace("757107", "757108"))),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&secret, b"Hello, World?", Some(SIGNATURE.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&Secret::new("other"), BODY, Some(SIGNATURE.as_bytes())),
            Err(SignatureError::Mismatch)
        );
        for bad in [
            "",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1700",
        ] {
            assert_eq!(check(Some(bad)), Err(SignatureError::Malformed), "{bad}");
        }
    }

    #[test]
    fn parses_a_workflow_job_payload_and_ignores_unknown_fields() {
        let body = r#"{
            "action": "queued",
            "workflow_job": {
                "id": 29679449, "run_id": 10365395, "run_attempt": 2,
                "labels": ["self-hosted", "Linux"], "status": "queued",
                "conclusion": null, "runner_id": null, "runner_name": null,
                "runner_group_id": null, "steps": [], "head_sha": "abc"
            },
            "repository": {"id": 1, "full_name": "acme/widgets", "private": true},
            "organization": {"login": "acme", "id": 7},
            "installation": {"id": 42, "node_id": "x"},
            "sender": {"login": "octocat"}
        }"#;
        let ev: WorkflowJobEvent = serde_json::from_str(body).expect("parses");
        assert_eq!(ev.action, WorkflowJobAction::Queued);
        assert_eq!(ev.workflow_job.id, 29679449);
        assert_eq!(ev.workflow_job.run_id, 10365395);
        assert_eq!(ev.workflow_job.run_attempt, 2);
        assert_eq!(ev.workflow_job.labels, ["self-hosted", "Linux"]);
        assert_eq!(ev.workflow_job.runner_name, None);
        assert_eq!(ev.repository.full_name, "acme/widgets");
        assert_eq!(ev.installation.map(|i| i.id), Some(42));
    }

    #[test]
    fn new_actions_parse_as_other_and_missing_fields_fail() {
        let body = r#"{"action": "rerouted", "workflow_job": {"id": 1, "run_id": 2},
                       "repository": {"full_name": "a/b"}}"#;
        let ev: WorkflowJobEvent = serde_json::from_str(body).expect("parses");
        assert_eq!(ev.action, WorkflowJobAction::Other);
        assert_eq!(ev.workflow_job.run_attempt, 1);
        assert!(ev.installation.is_none());

        let err = serde_json::from_str::<WorkflowJobEvent>(r#"{"action": "queued"}"#)
            .expect_err("no workflow_job");
        assert!(err.to_string().contains("workflow_job"), "{err}");
    }
}
