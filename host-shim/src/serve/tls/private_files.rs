//! The ACME directory's files: the directory mode 0700, every file 0600,
//! written whole (a temporary file renamed over the old one), so a crash
//! leaves the old file or the new one, never half of either.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::TlsError;

/// Creates `dir` (and its parents) if needed, and makes it 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<(), TlsError> {
    let failed = |cause| TlsError::Write {
        path: dir.to_path_buf(),
        cause,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// Replaces `path` with `content`, mode 0600.
pub(crate) fn write_private(path: &Path, content: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let failed = |cause| TlsError::Write {
        path: path.to_path_buf(),
        cause,
    };
    // A temporary file a crash left behind may have any mode: start over.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    f.write_all(content).map_err(failed)?;
    f.sync_all().map_err(failed)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn files_are_0600_in_a_0700_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state/acme");
        private_dir(&dir).expect("mkdir");
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("key.pem");
        write_private(&f, b"one").expect("write");
        write_private(&f, b"two").expect("rewrite");
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).expect("read"), b"two");
        assert!(!f.with_extension("tmp").exists());
    }
}
