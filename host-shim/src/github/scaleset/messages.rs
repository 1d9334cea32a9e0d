//! What the scale set's queue says: the message envelope, the job
//! messages inside its `body` (a JSON string holding an array), and the
//! statistics. Parsed strictly but tolerantly of fields GitHub adds; a
//! message of another type or with a body that is not the array is an
//! error naming the message, never quoting it.

use serde::Deserialize;

/// The only envelope type the queue sends.
pub const JOB_MESSAGES: &str = "RunnerScaleSetJobMessages";

/// The most job messages one envelope may carry (GitHub sends at most 50).
const MAX_JOBS_PER_MESSAGE: usize = 1000;

/// The queue's counts for the scale set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Statistics {
    pub total_available_jobs: u64,
    pub total_acquired_jobs: u64,
    pub total_assigned_jobs: u64,
    pub total_running_jobs: u64,
    pub total_registered_runners: u64,
    pub total_busy_runners: u64,
    pub total_idle_runners: u64,
}

/// One message from the queue, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub message_id: i64,
    pub message_type: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub statistics: Option<Statistics>,
}

/// What a job message says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// GHES: the job may be acquired (`acquireJobUrl`).
    Available,
    /// The job is this scale set's: a runner of it should take it.
    Assigned,
    /// Runner `runner_name` took it.
    Started { runner_id: u64, runner_name: String },
    /// Over: `result` is GitHub's (`succeeded`, `failed`, `canceled`, ...).
    Completed { result: String },
}

/// One job message of a [`Envelope`]'s body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMessage {
    pub event: JobEvent,
    /// The job's id: a UUID on github.com. Jobs are keyed on it.
    pub job_id: String,
    /// 0 on github.com's auto-assignment; what GHES acquires by.
    pub runner_request_id: i64,
    /// `owner/name`.
    pub repository: String,
    pub workflow_run_id: u64,
    pub labels: Vec<String>,
    pub display_name: String,
}

/// The job messages of one envelope, in order.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: i64,
    pub jobs: Vec<JobMessage>,
    pub statistics: Option<Statistics>,
}

/// A message Kiln cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message {id}: type {kind:?} is not {JOB_MESSAGES:?}")]
    Type { id: i64, kind: String },
    #[error("message {id}: its body is not an array of job messages ({problem})")]
    Body { id: i64, problem: String },
    #[error("message {id}: {count} job messages, more than the {MAX_JOBS_PER_MESSAGE} Kiln reads")]
    TooMany { id: i64, count: usize },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawJob {
    message_type: String,
    #[serde(default)]
    runner_request_id: i64,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    repository_name: String,
    #[serde(default)]
    owner_name: String,
    #[serde(default)]
    workflow_run_id: u64,
    #[serde(default)]
    request_labels: Vec<String>,
    #[serde(default)]
    job_display_name: String,
    #[serde(default)]
    runner_id: u64,
    #[serde(default)]
    runner_name: String,
    #[serde(default)]
    result: String,
}

impl Envelope {
    /// The job messages inside. Job messages of a type Kiln does not know
    /// are skipped (GitHub may add some); a job message without a job id is
    /// an error, since nothing could be keyed on it.
    pub fn parse(self) -> Result<Message, MessageError> {
        let id = self.message_id;
        if self.message_type != JOB_MESSAGES {
            return Err(MessageError::Type {
                id,
                kind: self.message_type.chars().take(64).collect(),
            });
        }
        let body = self.body.unwrap_or_default();
        let raw: Vec<RawJob> = if body.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&body).map_err(|e| MessageError::Body {
                id,
                problem: format!("{:?} error at column {}", e.classify(), e.column()),
            })?
        };
        if raw.len() > MAX_JOBS_PER_MESSAGE {
            return Err(MessageError::TooMany {
                id,
                count: raw.len(),
            });
        }
        let mut jobs = Vec::with_capacity(raw.len());
        for r in raw {
            let event = match r.message_type.as_str() {
                "JobAvailable" => JobEvent::Available,
                "JobAssigned" => JobEvent::Assigned,
                "JobStarted" => JobEvent::Started {
                    runner_id: r.runner_id,
                    runner_name: r.runner_name,
                },
                "JobCompleted" => JobEvent::Completed { result: r.result },
                other => {
                    tracing::debug!(
                        message_id = id,
                        kind = other,
                        "job message of an unknown type skipped"
                    );
                    continue;
                }
            };
            let Some(job_id) = r.job_id.filter(|j| !j.is_empty() && j.len() <= 128) else {
                return Err(MessageError::Body {
                    id,
                    problem: "a job message has no (or an overlong) jobId".into(),
                });
            };
            let repository = if r.owner_name.is_empty() {
                r.repository_name
            } else {
                format!("{}/{}", r.owner_name, r.repository_name)
            };
            jobs.push(JobMessage {
                event,
                job_id,
                runner_request_id: r.runner_request_id,
                repository,
                workflow_run_id: r.workflow_run_id,
                labels: r.request_labels,
                display_name: r.job_display_name,
            });
        }
        Ok(Message {
            id,
            jobs,
            statistics: self.statistics,
        })
    }
}

/// Kiln's number for a scale-set job, stable across restarts: its
/// `runnerRequestId` when GitHub gives one, else 53 bits of the SHA-256 of
/// its `jobId` (exact in JSON numbers; a collision with another job's
/// needs ~10^8 jobs in flight).
pub fn local_job_id(job_id: &str, runner_request_id: i64) -> u64 {
    use sha2::{Digest, Sha256};
    if let Ok(id) = u64::try_from(runner_request_id) {
        if id > 0 {
            return id;
        }
    }
    let digest = Sha256::digest(job_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Never 0, which the journal and GitHub never use.
    (u64::from_be_bytes(first) & ((1 << 53) - 1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, body: &str) -> Envelope {
        Envelope {
            message_id: 7,
            message_type: kind.into(),
            body: Some(body.into()),
            statistics: None,
        }
    }

    #[test]
    fn job_messages_are_read_from_the_body_string() {
        let body = serde_json::json!([
            {"messageType": "JobAssigned", "runnerRequestId": 0, "jobId": "9b0c", "repositoryName": "app",
             "ownerName": "acme", "workflowRunId": 12, "requestLabels": ["kiln"], "jobDisplayName": "build"},
            {"messageType": "JobStarted", "jobId": "9b0c", "runnerId": 5, "runnerName": "kiln-x"},
            {"messageType": "JobCompleted", "jobId": "9b0c", "result": "succeeded"},
            {"messageType": "JobSomethingNew", "jobId": "9b0c"}
        ])
        .to_string();
        let m = envelope(JOB_MESSAGES, &body).parse().expect("parses");
        assert_eq!(m.id, 7);
        assert_eq!(m.jobs.len(), 3);
        assert_eq!(m.jobs[0].event, JobEvent::Assigned);
        assert_eq!(m.jobs[0].repository, "acme/app");
        assert_eq!(m.jobs[0].labels, vec!["kiln".to_string()]);
        assert_eq!(
            m.jobs[1].event,
            JobEvent::Started {
                runner_id: 5,
                runner_name: "kiln-x".into()
            }
        );
        assert_eq!(
            m.jobs[2].event,
            JobEvent::Completed {
                result: "succeeded".into()
            }
        );
    }

    #[test]
    fn other_types_and_broken_bodies_are_errors_that_quote_nothing() {
        let e = envelope("Other", "[]").parse().expect_err("refused");
        assert!(matches!(e, MessageError::Type { id: 7, .. }));
        let e = envelope(JOB_MESSAGES, "{\"secret\": 1}")
            .parse()
            .expect_err("refused");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = envelope(JOB_MESSAGES, r#"[{"messageType":"JobAssigned"}]"#)
            .parse()
            .expect_err("refused");
        assert!(e.to_string().contains("jobId"), "{e}");
        assert!(envelope(JOB_MESSAGES, "")
            .parse()
            .expect("empty")
            .jobs
            .is_empty());
    }

    #[test]
    fn local_ids_are_stable_and_prefer_the_request_id() {
        assert_eq!(local_job_id("x", 42), 42);
        let a = local_job_id("9b0c5a34-0000-4000-8000-000000000001", 0);
        assert_eq!(a, local_job_id("9b0c5a34-0000-4000-8000-000000000001", 0));
        assert_ne!(a, local_job_id("9b0c5a34-0000-4000-8000-000000000002", 0));
        assert!(a > 0 && a < (1 << 53));
    }
}
