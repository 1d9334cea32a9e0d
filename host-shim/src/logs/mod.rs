//! Kiln's own log lines (tracing): text for people, or JSON for machines.
//!
//! - [`LogFormat`] — `text` (tracing-subscriber's usual format, unchanged)
//!   or `json`: one object per line, every field at the top level, the
//!   fields of the spans the event is in included ([`json`]). A line
//!   about a job so carries `job_id`, `pool`, `runner` and, once known,
//!   `runner_id` and `vm` (the job's span, see [`crate::job`]).
//! - [`events`] — the stable names in the `event` field of the lines that
//!   tools and tests depend on: a documented interface.
//! - [`read`] — parsing JSON lines back (the bench, the tests).
//!
//! `kiln serve` takes the format from its config's `log_format`; the
//! commands without a config take it from [`LogFormat::ENV`]. Under
//! journald ([`LogSettings::timestamps`] false) neither format carries a
//! timestamp of kiln's own: the journal stamps every line.

pub mod events;
mod json;
pub mod read;

use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: `TIME LEVEL span{fields}: target: message fields`.
    #[default]
    Text,
    /// For machines: one JSON object per line ([`json`]).
    Json,
}

/// A log format name that is neither `text` nor `json`.
#[derive(Debug, thiserror::Error)]
#[error("{what} = {}", self.problem())]
pub struct BadLogFormat {
    /// Where the value came from: a config key or an environment variable.
    pub what: String,
    pub value: String,
}

impl BadLogFormat {
    /// What is wrong and what to write instead, without the origin.
    pub fn problem(&self) -> String {
        format!(
            "{:?} is not a log format: use \"text\" (the default) or \"json\"",
            self.value
        )
    }
}

impl LogFormat {
    /// The environment variable the commands without a config read.
    pub const ENV: &'static str = "KILN_LOG_FORMAT";

    /// `text` or `json`; `what` names the value's origin for the error.
    pub fn parse(what: &str, value: &str) -> Result<LogFormat, BadLogFormat> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(BadLogFormat {
                what: what.to_owned(),
                value: value.to_owned(),
            }),
        }
    }

    /// [`LogFormat::ENV`]: text when unset or empty.
    pub fn from_env() -> Result<LogFormat, BadLogFormat> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.is_empty() => Self::parse(Self::ENV, &v),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Err(std::env::VarError::NotUnicode(v)) => Err(BadLogFormat {
                what: Self::ENV.to_owned(),
                value: v.to_string_lossy().into_owned(),
            }),
        }
    }
}

/// What a log subscriber writes, besides the lines' content.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A timestamp of kiln's own on every line (not under journald).
    pub timestamps: bool,
    /// Terminal colours (text only: JSON never has them).
    pub ansi: bool,
}

/// A subscriber writing `settings`' format through `writer`, filtered by
/// `filter`. Install it with `tracing_subscriber::util::SubscriberInitExt`
/// (`init`, `try_init`, `set_default`).
pub fn subscriber<W>(settings: LogSettings, filter: EnvFilter, writer: W) -> tracing::Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match (settings.format, settings.timestamps) {
        (LogFormat::Text, true) => fmt.with_ansi(settings.ansi).finish().into(),
        (LogFormat::Text, false) => fmt.with_ansi(settings.ansi).without_time().finish().into(),
        (LogFormat::Json, timestamps) => fmt
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(json::FlatJson { timestamps })
            .finish()
            .into(),
    }
}

#[cfg(test)]
mod tests;
