//! Reading `log_format = "json"` lines back: the bench counts events with
//! it, the tests find them. Strict: a line that is not a JSON object is
//! an error, never skipped, so a format change cannot make a reader
//! quietly find nothing.

use serde_json::{Map, Value};

/// One log line: its top-level fields (see [`super::json`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine(Map<String, Value>);

/// A line that is not one JSON object.
#[derive(Debug, thiserror::Error)]
#[error("log line {number} is not a JSON object: {line:?}")]
pub struct BadLine {
    /// 1-based.
    pub number: usize,
    pub line: String,
}

impl LogLine {
    /// The line's `event` name, if it has one ([`super::events`]).
    pub fn event(&self) -> Option<&str> {
        self.str("event")
    }

    /// Whether this is event `name`.
    pub fn is(&self, name: &str) -> bool {
        self.event() == Some(name)
    }

    pub fn message(&self) -> Option<&str> {
        self.str("message")
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// A number field.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.0.get(key).and_then(Value::as_u64)
    }

    /// Whether every `(key, value)` is a field of this line.
    pub fn has(&self, fields: &[(&str, Value)]) -> bool {
        fields.iter().all(|(k, v)| self.0.get(*k) == Some(v))
    }

    /// All fields.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Every line of `text`. A line ends with its newline: text after the
/// last newline is a line still being written (a reader polling the log
/// of a running kiln) and is left for the next read.
pub fn lines(text: &str) -> Result<Vec<LogLine>, BadLine> {
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .enumerate()
        .map(|(i, line)| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => Ok(LogLine(map)),
            _ => Err(BadLine {
                number: i + 1,
                line: line.to_owned(),
            }),
        })
        .collect()
}

/// The lines of event `name` with all of `fields`.
pub fn find<'a>(lines: &'a [LogLine], name: &str, fields: &[(&str, Value)]) -> Vec<&'a LogLine> {
    lines
        .iter()
        .filter(|l| l.is(name) && l.has(fields))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_are_found_by_event_and_fields() {
        let text = "{\"event\":\"job_done\",\"job_id\":1,\"pool\":\"a\"}\n\
                    {\"event\":\"job_done\",\"job_id\":2,\"pool\":\"a\"}\n\
                    {\"message\":\"no event\"}\n";
        let all = lines(text).unwrap();
        assert_eq!(all.len(), 3);
        let found = find(&all, "job_done", &[("job_id", json!(2))]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].str("pool"), Some("a"));
        assert_eq!(find(&all, "job_done", &[]).len(), 2);
        assert_eq!(find(&all, "job_failed", &[]).len(), 0);
        assert_eq!(all[2].message(), Some("no event"));
    }

    #[test]
    fn a_line_still_being_written_is_left_for_later() {
        let all = lines("{\"a\":1}\n{\"b\":").unwrap();
        assert_eq!(all.len(), 1);
        assert!(lines("{\"b\":").unwrap().is_empty());
    }

    #[test]
    fn a_line_that_is_not_an_object_is_an_error_naming_it() {
        let err = lines("{\"a\":1}\nINFO job done\n").unwrap_err();
        assert_eq!(err.number, 2);
        assert!(err.to_string().contains("INFO job done"), "{err}");
        assert!(lines("[1,2]\n").is_err());
        assert!(
            lines("{\"a\":1}\n\n").is_err(),
            "a blank line in the middle"
        );
    }
}
