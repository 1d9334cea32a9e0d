//! The two formats, as a job's lines come out in each.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::*;
use crate::secret::Secret;

/// Writes into a shared buffer.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// What a job logs, as `kiln::job` logs it: a span with `vm` recorded
/// once known, an event before and after.
fn log_a_job() {
    let span = tracing::info_span!(
        "job",
        job_id = 42u64,
        pool = %"small",
        runner = %"kiln-small-42-ab12",
        vm = tracing::field::Empty,
    );
    let _in = span.enter();
    tracing::info!(event = %events::JOB_WAITS, lacking = "address", "before the VM");
    span.record("vm", tracing::field::display("kiln-3"));
    tracing::info!(
        event = %events::JOB_DONE,
        queued_ms = 5u64,
        ok = true,
        jit = %Secret::new("the-jit-config"),
        "job done"
    );
}

fn written(settings: LogSettings) -> String {
    let buf = Buf::default();
    let w = buf.clone();
    let dispatch = subscriber(settings, EnvFilter::new("info"), move || w.clone());
    tracing::dispatcher::with_default(&dispatch, log_a_job);
    buf.text()
}

fn json(timestamps: bool) -> Vec<Value> {
    let settings = LogSettings {
        format: LogFormat::Json,
        timestamps,
        ansi: true,
    };
    written(settings)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn a_json_line_of_a_job_has_its_span_fields_at_the_top_level() {
    let lines = json(true);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (before, done) = (&lines[0], &lines[1]);
    assert_eq!(done["event"], "job_done");
    assert_eq!(done["message"], "job done");
    assert_eq!(done["level"], "INFO");
    assert_eq!(done["target"], "kiln::logs::tests");
    assert_eq!(done["job_id"], 42);
    assert_eq!(done["pool"], "small");
    assert_eq!(done["runner"], "kiln-small-42-ab12");
    assert_eq!(done["vm"], "kiln-3");
    assert_eq!(done["queued_ms"], 5);
    assert_eq!(done["ok"], true);
    assert!(done.get("span").is_none(), "{done}");
    // Before the VM was known: no vm field yet.
    assert_eq!(before["event"], "job_waits");
    assert_eq!(before["job_id"], 42);
    assert!(before.get("vm").is_none(), "{before}");
    // RFC 3339, UTC.
    let ts = done["timestamp"].as_str().unwrap();
    assert!(
        ts.len() > 20 && ts.ends_with('Z') && ts.contains('T'),
        "{ts}"
    );
}

#[test]
fn no_secret_reaches_a_json_field() {
    let lines = json(true);
    assert_eq!(lines[1]["jit"], "[redacted]");
    assert!(!lines
        .iter()
        .any(|l| l.to_string().contains("the-jit-config")));
}

#[test]
fn under_journald_a_json_line_has_no_timestamp() {
    for line in json(false) {
        assert!(line.get("timestamp").is_none(), "{line}");
        assert_eq!(line["job_id"], 42);
    }
}

#[test]
fn the_text_format_is_tracing_subscribers_own() {
    let ours = written(LogSettings {
        format: LogFormat::Text,
        timestamps: false,
        ansi: false,
    });
    let buf = Buf::default();
    let w = buf.clone();
    let plain = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .without_time()
        .with_writer(move || w.clone())
        .finish();
    tracing::subscriber::with_default(plain, log_a_job);
    assert_eq!(ours, buf.text());
    let last = ours.lines().last().unwrap();
    assert!(
        last.starts_with(" INFO job{job_id=42 pool=small runner=kiln-small-42-ab12 vm=kiln-3}: kiln::logs::tests: job done event=job_done"),
        "{last}"
    );
    assert!(!ours.contains("the-jit-config"), "{ours}");
}

#[test]
fn with_timestamps_the_text_lines_start_with_one() {
    let ours = written(LogSettings {
        format: LogFormat::Text,
        timestamps: true,
        ansi: false,
    });
    for line in ours.lines() {
        let first = line.split_whitespace().next().unwrap();
        assert!(first.ends_with('Z') && first.contains('T'), "{line}");
    }
}

#[test]
fn a_log_format_is_text_or_json_and_else_says_what_to_write() {
    assert_eq!(
        LogFormat::parse("log_format", "text").unwrap(),
        LogFormat::Text
    );
    assert_eq!(
        LogFormat::parse("log_format", "json").unwrap(),
        LogFormat::Json
    );
    let err = LogFormat::parse("log_format", "JSON").unwrap_err();
    assert_eq!(
        err.to_string(),
        "log_format = \"JSON\" is not a log format: use \"text\" (the default) or \"json\""
    );
    assert_eq!(LogFormat::default(), LogFormat::Text);
}

#[test]
fn event_names_are_distinct_and_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for name in events::ALL {
        assert!(seen.insert(name), "{name} twice");
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
            "{name}"
        );
    }
}
