//! `kiln serve`'s structured events, for tests: its log with
//! `log_format = "json"`, read with [`kiln::logs::read`]. Every line must
//! parse (a line that does not fails the test, showing it: nothing is
//! skipped), and events are found by their name ([`kiln::logs::events`])
//! and fields, never by their human text.

use kiln::logs::read::{self, LogLine};
use serde_json::Value;

pub use kiln::logs::events as names;

/// Every line of a JSON log; panics, showing the bad line, on one that
/// is not a JSON object.
pub fn lines(text: &str) -> Vec<LogLine> {
    read::lines(text).unwrap_or_else(|e| panic!("{e}\nthe whole log:\n{text}"))
}

/// The lines of event `name` with all of `fields`.
pub fn find(text: &str, name: &str, fields: &[(&str, Value)]) -> Vec<LogLine> {
    read::find(&lines(text), name, fields)
        .into_iter()
        .cloned()
        .collect()
}

/// Whether the log has event `name` with all of `fields`.
pub fn has(text: &str, name: &str, fields: &[(&str, Value)]) -> bool {
    !find(text, name, fields).is_empty()
}

/// The one line of event `name` with `fields`; panics, showing the log,
/// when there is none or more than one.
pub fn one(text: &str, name: &str, fields: &[(&str, Value)]) -> LogLine {
    let mut found = find(text, name, fields);
    match found.len() {
        1 => found.remove(0),
        n => panic!("{n} `{name}` events with {fields:?} in the log:\n{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LOG: &str =
        "{\"level\":\"INFO\",\"event\":\"job_done\",\"job_id\":1,\"vm\":\"kiln-3\"}\n\
                       {\"level\":\"INFO\",\"message\":\"pool\"}\n";

    #[test]
    fn events_are_found_by_name_and_fields() {
        assert!(has(LOG, names::JOB_DONE, &[("job_id", json!(1))]));
        assert!(!has(LOG, names::JOB_DONE, &[("job_id", json!(2))]));
        assert_eq!(one(LOG, names::JOB_DONE, &[]).str("vm"), Some("kiln-3"));
    }

    #[test]
    #[should_panic(expected = "log line 2 is not a JSON object")]
    fn a_line_that_is_not_json_fails() {
        lines("{\"event\":\"job_done\"}\n INFO kiln: job done\n");
    }
}
