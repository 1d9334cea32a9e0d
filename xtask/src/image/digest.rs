//! sha256 of files, hex-encoded as `sha256sum` prints it.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path} to hash it: {source}")]
pub struct DigestError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub fn sha256_file(path: &Path) -> Result<String, DigestError> {
    let err = |source| DigestError {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_known_vector() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("abc");
        std::fs::write(&p, "abc").expect("write");
        assert_eq!(
            sha256_file(&p).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha256_file(&d.path().join("missing")).is_err());
    }
}
