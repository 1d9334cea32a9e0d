//! The fake broker's JSON: what it answers (scale sets, sessions, job
//! messages, JIT configs, errors in the Actions service's
//! `{message, typeName}` shape) and the checks on what it is sent (request
//! bodies, as the contract describes them). Random ids and tokens too.

use base64::Engine as _;
use serde_json::{json, Value};

use super::model::{Job, ScaleSet, State};

/// The only `api-version` the contract knows.
pub const API_VERSION: &str = "6.0-preview";

/// A random version 4 UUID, lower-case and hyphenated.
pub fn uuid() -> String {
    let mut b = crate::job::random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A fresh message-queue access token.
pub fn queue_token() -> String {
    format!("mq_{}", crate::job::random_token(24))
}

/// RFC 3339 UTC of a Unix time.
pub fn rfc3339(unix: u64) -> String {
    crate::fake_github::rfc3339(unix)
}

fn time_or_null(t: Option<u64>) -> Value {
    t.map_or(Value::Null, |t| json!(rfc3339(t)))
}

/// A job message of `kind` with the fields every type carries.
pub(crate) fn job_message(kind: &str, job: &Job) -> Value {
    let owner = job
        .info
        .repository
        .split_once('/')
        .map_or(job.info.repository.as_str(), |(o, _)| o);
    json!({
        "messageType": kind,
        "runnerRequestId": job.info.runner_request_id,
        "repositoryName": job.info.repository.split_once('/').map_or("", |(_, r)| r),
        "ownerName": owner,
        "jobId": job.info.key.0,
        "jobWorkflowRef": format!("{}/.github/workflows/ci.yml@refs/heads/main", job.info.repository),
        "jobDisplayName": "build",
        "workflowRunId": job.workflow_run_id,
        "eventName": "push",
        "requestLabels": job.info.labels,
        "queueTime": rfc3339(job.queue_time),
        "scaleSetAssignTime": time_or_null(job.scale_set_assign_time),
        "runnerAssignTime": time_or_null(job.runner_assign_time),
        "finishTime": time_or_null(job.finish_time),
    })
}

/// A scale set as the Actions service describes it.
pub(crate) fn scale_set(state: &State, set: &ScaleSet) -> Value {
    let labels: Vec<Value> = set
        .labels
        .iter()
        .map(|l| json!({"name": l, "type": "System"}))
        .collect();
    json!({
        "id": set.id,
        "name": set.name,
        "runnerGroupId": set.group_id,
        "runnerGroupName": state.group_name(set.group_id).unwrap_or_default(),
        "labels": labels,
        "runnerSetting": set.runner_setting,
        "enabled": true,
        "createdOn": set.created_on,
        "statistics": state.statistics(set.id),
    })
}

/// A session (create and refresh answer this).
pub(crate) fn session(state: &State, set: &ScaleSet, queue_url: &str) -> Value {
    let Some(s) = set.session.as_ref() else {
        return Value::Null;
    };
    json!({
        "sessionId": s.id,
        "ownerName": s.owner,
        "runnerScaleSet": scale_set(state, set),
        "messageQueueUrl": queue_url,
        "messageQueueAccessToken": s.token,
        "statistics": state.statistics(set.id),
    })
}

/// The `encodedJITConfig` of a runner: base64 of a JSON object with the
/// runner's three files (each base64 too), its credentials random so a
/// test can tell where a JIT config ended up.
pub fn jit_config(runner_id: u64, name: &str, set_id: u64, service_url: &str) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
    let files = json!({
        ".runner": b64(json!({
            "AgentId": runner_id, "AgentName": name, "PoolId": 0, "PoolName": "",
            "ServerUrl": service_url, "WorkFolder": "_work", "Ephemeral": true,
            "RunnerScaleSetId": set_id,
        })),
        ".credentials": b64(json!({
            "Scheme": "OAuth",
            "Data": {"clientId": uuid(), "authorizationUrl": format!("{service_url}/_apis/oauth2/token")},
        })),
        ".credentials_rsaparams": b64(json!({
            "d": crate::job::random_token(64), "modulus": crate::job::random_token(64),
            "exponent": "AQAB",
        })),
    });
    b64(files)
}

/// The Actions service's error body.
pub fn error_body(type_name: &str, message: &str) -> String {
    json!({
        "$id": "1",
        "innerException": null,
        "message": message,
        "typeName": type_name,
        "typeKey": type_name.trim_end_matches("Exception"),
        "errorCode": 0,
        "eventId": 3000,
    })
    .to_string()
}

fn non_empty_string(body: &Value, field: &str) -> Result<String, String> {
    match body[field].as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{field} is missing or not a non-empty string")),
    }
}

/// A create-scale-set body: name, runner group id and labels.
pub(crate) struct NewScaleSet {
    pub name: String,
    pub group_id: u64,
    pub labels: Vec<String>,
    pub runner_setting: Value,
}

/// `{name, runnerGroupId, labels:[{name,type:"System"}], RunnerSetting}`.
pub(crate) fn new_scale_set(body: &Value) -> Result<NewScaleSet, String> {
    let name = non_empty_string(body, "name")?;
    let group_id = body["runnerGroupId"]
        .as_u64()
        .ok_or("runnerGroupId is missing or not an integer")?;
    let items = body["labels"]
        .as_array()
        .ok_or("labels is missing or not an array")?;
    let mut labels = Vec::new();
    for (i, label) in items.iter().enumerate() {
        let name = label["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or(format!("labels[{i}].name is missing or empty"))?;
        if label["type"] != "System" {
            return Err(format!(
                "labels[{i}].type is {} (not \"System\")",
                label["type"]
            ));
        }
        labels.push(name.to_owned());
    }
    let runner_setting = match &body["RunnerSetting"] {
        Value::Null => json!({}),
        v @ Value::Object(_) => v.clone(),
        other => return Err(format!("RunnerSetting is {other}, not an object")),
    };
    Ok(NewScaleSet {
        name,
        group_id,
        labels,
        runner_setting,
    })
}

/// `{ownerName}`.
pub(crate) fn session_owner(body: &Value) -> Result<String, String> {
    non_empty_string(body, "ownerName")
}

/// `{name, workFolder}`.
pub(crate) fn jit_request(body: &Value) -> Result<String, String> {
    if !body["workFolder"].is_string() {
        return Err("workFolder is missing or not a string".into());
    }
    non_empty_string(body, "name")
}

/// `[runnerRequestId, ...]`.
pub(crate) fn request_ids(body: &Value) -> Result<Vec<i64>, String> {
    body.as_array()
        .ok_or("the body is not an array of runner request ids")?
        .iter()
        .map(|v| v.as_i64().ok_or(format!("{v} is not a runner request id")))
        .collect()
}
