//! Secrets come from files only, never from the TOML or argv. A file that
//! group or others can read is refused: the secret would already be leaked
//! to every local account.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::ConfigErrorKind;
use crate::secret::Secret;

/// How the file's content becomes the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trim {
    /// `echo secret > file` leaves a newline that is not part of the secret.
    TrailingNewline,
    /// Kept byte for byte (PEM keys: the parser copes with whitespace).
    Nothing,
}

pub(crate) fn read_secret(key: &str, file: &Path, trim: Trim) -> Result<Secret, ConfigErrorKind> {
    let unreadable = |source| ConfigErrorKind::SecretUnreadable {
        key: key.to_string(),
        file: file.to_path_buf(),
        error: source,
    };
    let meta = std::fs::metadata(file).map_err(unreadable)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigErrorKind::SecretExposed {
            key: key.to_string(),
            file: file.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(file).map_err(unreadable)?;
    let text = match trim {
        Trim::TrailingNewline => text.trim_end_matches(['\n', '\r']).to_string(),
        Trim::Nothing => text,
    };
    if text.trim().is_empty() {
        return Err(ConfigErrorKind::SecretEmpty {
            key: key.to_string(),
            file: file.to_path_buf(),
        });
    }
    Ok(Secret::new(text))
}
