//! What can go wrong talking to GitHub. Every variant names the request
//! (method and path) it concerns; none carries a token, a JWT, the App key or
//! a JIT config, so these errors are safe to log.

use std::time::Duration;

/// How long GitHub's `message` field may be inside an error.
pub(crate) const MAX_MESSAGE_CHARS: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The App's private key cannot be used; `problem` says why (never the key itself).
    #[error("GitHub App private key: {problem}")]
    Key { problem: String },

    /// `github.api_url` is not an http(s) base URL.
    #[error("GitHub API URL {url:?}: {problem}")]
    ApiUrl { url: String, problem: String },

    /// The TLS client could not be set up (no usable root certificates, ...).
    #[error("TLS for the GitHub API client: {problem}")]
    Tls { problem: String },

    /// A request Kiln was asked to send is invalid (checked before sending).
    #[error("invalid {what}: {problem}")]
    InvalidRequest { what: &'static str, problem: String },

    /// GitHub answered with a status the call does not accept.
    #[error("{method} {path}: GitHub answered HTTP {status}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        /// GitHub's `message` field, truncated.
        message: String,
    },

    /// GitHub's rate limit lasts longer than Kiln is willing to wait.
    #[error(
        "{method} {path}: rate limited by GitHub (HTTP {status}) until {until} \
         ({wait_secs} s from now, longer than the {max_wait_secs} s Kiln waits): {message}"
    )]
    RateLimited {
        method: &'static str,
        path: String,
        status: u16,
        /// When the limit lifts, RFC 3339 UTC.
        until: String,
        wait_secs: u64,
        max_wait_secs: u64,
        message: String,
    },

    /// No (complete) answer within the per-request timeout, on every attempt.
    #[error("{method} {path}: no answer from GitHub within {timeout:?} ({attempts} attempts)")]
    Timeout {
        method: &'static str,
        path: String,
        timeout: Duration,
        attempts: u32,
    },

    /// Connecting or talking to GitHub failed on every attempt.
    #[error("{method} {path}: cannot reach GitHub after {attempts} attempts: {problem}")]
    Transport {
        method: &'static str,
        path: String,
        attempts: u32,
        problem: String,
    },

    /// GitHub kept answering 5xx.
    #[error("{method} {path}: GitHub answered HTTP {status} {attempts} times in a row: {message}")]
    Unavailable {
        method: &'static str,
        path: String,
        status: u16,
        attempts: u32,
        message: String,
    },

    /// A success answer whose body is not what the documentation promises.
    #[error("{method} {path}: unexpected answer from GitHub: {problem}")]
    Decode {
        method: &'static str,
        path: String,
        problem: String,
    },

    /// Signing the App's JWT failed.
    #[error("signing the GitHub App JWT: {problem}")]
    Jwt { problem: String },
}

/// Cuts `s` to at most [`MAX_MESSAGE_CHARS`] characters, marking the cut.
pub(crate) fn truncate_message(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE_CHARS + 10);
        let cut = truncate_message(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 3);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate_message("Not Found"), "Not Found");
    }
}
