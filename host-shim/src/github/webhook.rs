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

/// Why a signed `workflow_job` body was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid workflow_job payload: {0}")]
pub struct PayloadError(String);

/// Parses a `workflow_job` body (after its signature was checked).
///
/// sonic-rs rather than serde_json: a delivery is about 6 KiB, nearly all
/// of it the repository, sender and organisation objects Kiln never
/// reads, and sonic-rs skips those with SIMD where serde_json matches
/// every key. The derive below is the same for both.
pub fn parse_workflow_job(body: &[u8]) -> Result<WorkflowJobEvent, PayloadError> {
    sonic_rs::from_slice(body).map_err(|e| {
        // sonic-rs appends the lines of the body around the error; the
        // reason goes to logs, so only its first line is kept (what was
        // wrong, at which line and column), as serde_json's error read.
        let text = e.to_string();
        PayloadError(text.lines().next().unwrap_or_default().to_string())
    })
}

/// A `workflow_job` delivery: only what the scheduler reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkflowJob {
    pub id: u64,
    pub run_id: u64,
    /// What `runs-on` asked for.
    #[serde(default)]
    pub labels: Vec<String>,
    /// A `completed` delivery's conclusion (null before; what
    /// `reconcile::rerun::decide` reads).
    #[serde(default)]
    pub conclusion: Option<super::jobs::JobConclusion>,
    /// The runner that took it (`in_progress`, `completed`), once one did.
    #[serde(default)]
    pub runner_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Repository {
    /// `owner/name`.
    pub full_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Installation {
    pub id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::jobs::JobConclusion;

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
    fn a_completed_delivery_carries_its_conclusion() {
        let body = r#"{
            "action": "completed",
            "workflow_job": {"id": 1, "run_id": 2, "labels": [], "conclusion": "failure"},
            "repository": {"full_name": "acme/widgets"},
            "installation": {"id": 42}
        }"#;
        let ev = parse_workflow_job(body.as_bytes()).expect("parses");
        assert_eq!(ev.workflow_job.conclusion, Some(JobConclusion::Failure));
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
        let ev = parse_workflow_job(body.as_bytes()).expect("parses");
        assert_eq!(ev.action, WorkflowJobAction::Queued);
        assert_eq!(ev.workflow_job.id, 29679449);
        assert_eq!(ev.workflow_job.run_id, 10365395);
        assert_eq!(ev.workflow_job.labels, ["self-hosted", "Linux"]);
        assert_eq!(ev.workflow_job.conclusion, None);
        assert_eq!(ev.repository.full_name, "acme/widgets");
        assert_eq!(ev.installation.map(|i| i.id), Some(42));
    }

    #[test]
    fn new_actions_parse_as_other_and_missing_fields_fail() {
        let body = r#"{"action": "rerouted", "workflow_job": {"id": 1, "run_id": 2},
                       "repository": {"full_name": "a/b"}}"#;
        let ev = parse_workflow_job(body.as_bytes()).expect("parses");
        assert_eq!(ev.action, WorkflowJobAction::Other);
        assert!(ev.installation.is_none());

        let err = parse_workflow_job(br#"{"action": "queued"}"#).expect_err("no workflow_job");
        assert!(err.to_string().contains("workflow_job"), "{err}");
    }

    #[test]
    fn a_parse_error_is_one_line_without_the_body() {
        let body = b"{\"action\": \"queued\",\n \"workflow_job\": {\"id\": x, \"secretish\": 1}}";
        let err = parse_workflow_job(body).expect_err("not JSON").to_string();
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains("line 2 column"), "{err}");
        assert!(
            !err.contains("secretish") && !err.contains("\"id\""),
            "{err}"
        );
    }

    mod same_as_serde_json {
        //! sonic-rs parses deliveries; serde_json is the reference. On any
        //! body, both must accept the same ones with the same values.
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::{json, Map, Value};

        fn text() -> impl Strategy<Value = String> {
            // Escapes, quotes, non-ASCII and control characters.
            proptest::string::string_regex("([a-z/_.-]|\\\\|\"|é|€|🦀|\t|\n|\u{1}){0,24}")
                .expect("valid regex")
        }

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e300f64..1e300).prop_map(Value::from),
                text().prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(text(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn extra() -> impl Strategy<Value = Map<String, Value>> {
            prop::collection::btree_map("[a-z_]{1,12}", value(), 0..5)
                .prop_map(|m| m.into_iter().collect())
        }

        /// A delivery with random unknown fields at every level Kiln reads,
        /// and random values where it reads them.
        fn body() -> impl Strategy<Value = Vec<u8>> {
            (
                prop_oneof![
                    Just("queued".to_string()),
                    Just("completed".to_string()),
                    text()
                ],
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec(text(), 0..5),
                text(),
                prop::option::of(any::<u64>()),
                (extra(), extra(), extra(), extra()),
                any::<bool>(),
            )
                .prop_map(
                    |(
                        action,
                        id,
                        run_id,
                        labels,
                        full_name,
                        inst,
                        (top, job, repo, ins),
                        pretty,
                    )| {
                        let mut workflow_job =
                            json!({"id": id, "run_id": run_id, "labels": labels});
                        let mut repository = json!({"full_name": full_name});
                        for (k, v) in job {
                            workflow_job[k.as_str()] = v;
                        }
                        for (k, v) in repo {
                            repository[k.as_str()] = v;
                        }
                        let mut ev = json!({
                            "action": action,
                            "workflow_job": workflow_job,
                            "repository": repository,
                        });
                        if let Some(id) = inst {
                            let mut installation = json!({"id": id});
                            for (k, v) in ins {
                                installation[k.as_str()] = v;
                            }
                            ev["installation"] = installation;
                        }
                        for (k, v) in top {
                            ev[k.as_str()] = v;
                        }
                        if pretty {
                            serde_json::to_vec_pretty(&ev).expect("serialises")
                        } else {
                            serde_json::to_vec(&ev).expect("serialises")
                        }
                    },
                )
        }

        fn reference(body: &[u8]) -> Option<WorkflowJobEvent> {
            serde_json::from_slice(body).ok()
        }

        proptest! {
            #[test]
            fn well_formed_bodies(body in body()) {
                let ours = parse_workflow_job(&body).ok();
                prop_assert_eq!(&ours, &reference(&body));
            }

            /// Cut, flipped or spliced bytes. What both parsers take reads
            /// the same, and a body serde_json takes (as valid UTF-8) sonic-rs
            /// takes too. sonic-rs is the more lenient only inside values it
            /// skips: it does not check the four hex digits of a `\\u`
            /// escape there (this test found it). Only bodies with GitHub's
            /// signature reach the parser, so that difference would need
            /// GitHub itself to sign malformed JSON.
            #[test]
            fn damaged_bodies(
                body in body(),
                cut in any::<prop::sample::Index>(),
                at in any::<prop::sample::Index>(),
                byte in prop_oneof![Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b','), Just(b':'), Just(0xff), any::<u8>()],
                how in 0..3u8,
            ) {
                let mut b = body.clone();
                match how {
                    0 => b.truncate(cut.index(b.len())),
                    1 => { let i = at.index(b.len()); b[i] = byte; }
                    _ => { let i = at.index(b.len()); b.insert(i, byte); }
                }
                let (ours, theirs) = (parse_workflow_job(&b).ok(), reference(&b));
                if let (Some(ours), Some(theirs)) = (&ours, &theirs) {
                    prop_assert_eq!(ours, theirs, "body: {}", String::from_utf8_lossy(&b));
                }
                if theirs.is_some() && std::str::from_utf8(&b).is_ok() {
                    prop_assert!(ours.is_some(), "sonic-rs refused what serde_json took: {}", String::from_utf8_lossy(&b));
                }
            }
        }
    }
}
