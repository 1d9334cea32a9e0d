//! [`TlsError`]: what can go wrong with certificates, keys and ACME. Each
//! message names the file or the CA, and prints its cause.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write {}: {cause} (is KILN_STATE_DIR writable?)", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    BadPem { path: PathBuf, problem: String },
    #[error("the key in {} does not match the certificate in {}: {problem}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
    #[error("ACME CA {directory}: {problem}")]
    Acme { directory: String, problem: String },
    #[error("TLS setup: {problem}")]
    Setup { problem: String },
}

/// `error` and its causes, `: `-separated (for errors from other crates
/// whose message leaves the cause out).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
