//! GitHub's own schemas, for checking the fake GitHub against them:
//! `data/github-job-runner.json` (a job, a runner) and
//! `data/github-reconcile.json` (the reconciler's operations, keyed by
//! GitHub's `operationId`: parameters, request body, 2xx answers), both cut
//! from GitHub's OpenAPI description. [`check`] validates a JSON value with
//! the OpenAPI 3 keywords those schemas use; [`check_request`] and
//! [`check_answer`] an operation's request and answer.

use std::sync::OnceLock;

use serde_json::{json, Value};

/// GitHub's documented largest `per_page`.
pub const MAX_PER_PAGE: u64 = 100;

/// `data/github-job-runner.json`: `job` and `runner`.
pub fn job_runner_schemas() -> &'static Value {
    static SCHEMAS: OnceLock<Value> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        serde_json::from_str(include_str!("../data/github-job-runner.json"))
            .expect("data/github-job-runner.json is JSON")
    })
}

/// `data/github-reconcile.json`'s `operations`.
pub fn operations() -> &'static Value {
    static OPS: OnceLock<Value> = OnceLock::new();
    OPS.get_or_init(|| {
        let all: Value = serde_json::from_str(include_str!("../data/github-reconcile.json"))
            .expect("data/github-reconcile.json is JSON");
        all["operations"].clone()
    })
}

/// Where `v` breaks `schema`, as `$.path: problem` lines (empty: it fits).
pub fn check(schema: &Value, v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    violations(schema, v, "$", &mut out);
    out
}

/// Where the request to `operation` breaks GitHub's description: unknown or
/// ill-typed query parameters, a `per_page` above 100, a body that does not
/// fit (or a body where none is described).
pub fn check_request(operation: &str, query: Option<&str>, body: &[u8]) -> Vec<String> {
    let op = &operations()[operation];
    if op.is_null() {
        return vec![format!("{operation}: not a described operation")];
    }
    let mut out = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        check_query_parameter(op, name, value, &mut out);
    }
    check_body(op, body, &mut out);
    out.into_iter()
        .map(|v| format!("{operation}: {v}"))
        .collect()
}

/// Where `body` (answered with `status`) breaks `operation`'s answer schema.
pub fn check_answer(operation: &str, status: u16, body: &Value) -> Vec<String> {
    let schema = &operations()[operation]["responses"][status.to_string()];
    if schema.is_null() {
        return vec![format!(
            "{operation}: HTTP {status} is not a described answer"
        )];
    }
    check(schema, body)
        .into_iter()
        .map(|v| format!("{operation} {status}: {v}"))
        .collect()
}

fn check_query_parameter(op: &Value, name: &str, value: &str, out: &mut Vec<String>) {
    let described = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["in"] == "query" && p["name"] == name);
    let Some(parameter) = described else {
        out.push(format!("query parameter {name:?} is not described"));
        return;
    };
    let schema = &parameter["schema"];
    let typed = match schema["type"].as_str() {
        Some("integer") => value.parse::<u64>().map(Value::from).ok(),
        Some("boolean") => value.parse::<bool>().map(Value::from).ok(),
        _ => Some(Value::from(value)),
    };
    let Some(typed) = typed else {
        out.push(format!(
            "{name}={value:?} is not of type {}",
            schema["type"]
        ));
        return;
    };
    out.extend(
        check(schema, &typed)
            .into_iter()
            .map(|v| format!("{name}: {v}")),
    );
    if name == "per_page" && typed.as_u64().is_some_and(|n| n == 0 || n > MAX_PER_PAGE) {
        out.push(format!("per_page={value} is outside 1..={MAX_PER_PAGE}"));
    }
}

fn check_body(op: &Value, body: &[u8], out: &mut Vec<String>) {
    let described = &op["requestBody"];
    if body.is_empty() {
        if described["required"] == json!(true) {
            out.push("the request body is required".into());
        }
        return;
    }
    if described.is_null() {
        out.push("a request body where none is described".into());
        return;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => out.extend(check(&described["schema"], &v)),
        Err(e) => out.push(format!("the request body is not JSON: {e}")),
    }
}

/// The OpenAPI 3 keywords GitHub's schemas here use: `type`, `nullable`,
/// `enum`, `required`, `properties`, `additionalProperties: false`, `items`,
/// `allOf`.
fn violations(schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    for part in schema["allOf"].as_array().into_iter().flatten() {
        violations(part, v, at, out);
    }
    if v.is_null() {
        if schema["nullable"] != json!(true) && schema.get("type").is_some() {
            out.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    let fits = match schema["type"].as_str() {
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some("object") => v.is_object(),
        _ => true,
    };
    if !fits {
        out.push(format!("{at}: {v} is not of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            out.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if v.get(name).is_none() {
            out.push(format!("{at}: {name} is required"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema["properties"].as_object();
        for (k, field) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => violations(s, field, &format!("{at}.{k}"), out),
                None if schema["additionalProperties"] == json!(false) => {
                    out.push(format!("{at}: {k} is not allowed"));
                }
                None => {}
            }
        }
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            violations(&schema["items"], item, &format!("{at}[{i}]"), out);
        }
    }
}
