//! `log_format = "json"`: one JSON object per line, every field at the top
//! level.
//!
//! ```text
//! {"timestamp":"2026-12-03T16:31:04.123456Z","level":"INFO","target":"kiln::job",
//!  "message":"job done","event":"job_done","job_id":42,"pool":"small",
//!  "runner":"kiln-small-42-ab12","runner_id":7,"vm":"kiln-3", ...}
//! ```
//!
//! `timestamp` (RFC 3339, UTC; absent under journald), `level`, `target`,
//! then the fields in name order: those of the spans the event is in
//! (outermost first) and the event's own, an inner one winning over an
//! outer one of the same name. tracing-subscriber's own JSON format nests
//! span fields under `span`; here a reader finds `job_id` where it finds
//! `event`. Span fields are kept as JSON by tracing-subscriber's
//! [`JsonFields`] (which also merges fields recorded later, such as the
//! job's `vm`); the event's are visited here. Values a field records with
//! `%` or `?` are their Display or Debug text: a [`crate::secret::Secret`]
//! is `[redacted]` here as anywhere.

use std::fmt;

use serde::ser::{SerializeMap, Serializer as _};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Keys every line has (but `timestamp` under journald), written first;
/// a field of the same name is dropped.
const FIXED: [&str; 3] = ["timestamp", "level", "target"];

/// The event formatter: see the module doc.
pub(super) struct FlatJson {
    pub timestamps: bool,
}

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = span_fields(ctx);
        event.record(&mut Fields(&mut fields));
        let mut timestamp = String::new();
        if self.timestamps {
            SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        }
        let meta = event.metadata();
        let mut line = Vec::with_capacity(256);
        let mut ser = serde_json::Serializer::new(&mut line);
        let written = (|| {
            let mut map = ser.serialize_map(None)?;
            if self.timestamps {
                map.serialize_entry("timestamp", &timestamp)?;
            }
            map.serialize_entry("level", meta.level().as_str())?;
            map.serialize_entry("target", meta.target())?;
            for (k, v) in fields.iter().filter(|(k, _)| !FIXED.contains(&k.as_str())) {
                map.serialize_entry(k, v)?;
            }
            map.end()
        })();
        written.map_err(|_| fmt::Error)?;
        // serde_json writes UTF-8 only.
        let line = String::from_utf8(line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// The fields of the spans the event is in, outermost first.
fn span_fields<S>(ctx: &FmtContext<'_, S, JsonFields>) -> Map<String, Value>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let mut fields = Map::new();
    let Some(scope) = ctx.event_scope() else {
        return fields;
    };
    for span in scope.from_root() {
        let ext = span.extensions();
        let Some(stored) = ext.get::<FormattedFields<JsonFields>>() else {
            continue;
        };
        // JsonFields stores an object, or nothing for a span without fields.
        if let Ok(Value::Object(own)) = serde_json::from_str::<Value>(stored.as_str()) {
            fields.extend(own);
        }
    }
    fields
}

/// Visits an event's fields into a JSON map: numbers and booleans as
/// such, everything else as its text.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        self.0.insert(field.name().to_owned(), value);
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
