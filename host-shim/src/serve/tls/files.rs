//! `[tls] cert` and `key`: a certificate chain and its key from PEM files,
//! reloaded when either file changes (renewed by certbot, say) without a
//! restart. A new pair that does not load keeps the old one in use, and the
//! error names the file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::error::TlsError;
use super::resolver::CertResolver;
use crate::logs::events;

/// How often the files' metadata is compared with what was loaded.
pub(crate) const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Reads and checks a certificate chain and its key (PEM).
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|cause| TlsError::Read {
            path: path.to_path_buf(),
            cause,
        })
    };
    from_pem(&read(cert)?, cert, &read(key)?, key)
}

/// A [`CertifiedKey`] from PEM text; the paths are for messages.
pub(crate) fn from_pem(
    cert_pem: &[u8],
    cert: &Path,
    key_pem: &[u8],
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |path: &Path, problem: String| TlsError::BadPem {
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            cert,
            "no CERTIFICATE block in it: put the PEM certificate chain there, leaf first".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        bad(
            key,
            format!(
                "no PEM private key in it (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY): {e}"
            ),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, private, &provider).map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            problem: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// What identifies a file's content without reading it: replaced
/// (new inode), rewritten (mtime, size) or gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, i64, i64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size())),
        )
    }
}

/// A cert/key pair in use, and what its files looked like when loaded.
pub(crate) struct Watched {
    cert: PathBuf,
    key: PathBuf,
    seen: (Stamp, Stamp),
    resolver: Arc<CertResolver>,
}

impl Watched {
    /// Loads the pair into `resolver`: an error stops `kiln serve` from
    /// starting.
    pub fn start(cert: &Path, key: &Path, resolver: Arc<CertResolver>) -> Result<Self, TlsError> {
        let seen = (Stamp::of(cert), Stamp::of(key));
        resolver.set(load(cert, key)?);
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            seen,
            resolver,
        })
    }

    /// If either file changed since the last look, loads the pair again:
    /// `None` when nothing changed. A pair that does not load is reported
    /// once (until the files change again) and the old one stays.
    pub fn check(&mut self) -> Option<Result<(), TlsError>> {
        let now = (Stamp::of(&self.cert), Stamp::of(&self.key));
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(load(&self.cert, &self.key).map(|c| self.resolver.set(c)))
    }

    /// Checks every [`RELOAD_POLL`], for ever.
    pub async fn watch(mut self) {
        let mut tick = tokio::time::interval(RELOAD_POLL);
        loop {
            tick.tick().await;
            match self.check() {
                None => {}
                Some(Ok(())) => tracing::info!(
                    event = %events::TLS_RELOADED,
                    cert = %self.cert.display(),
                    key = %self.key.display(),
                    "TLS certificate reloaded"
                ),
                Some(Err(e)) => tracing::error!(
                    event = %events::TLS_RELOAD_FAILED,
                    error = %e,
                    "TLS certificate files changed but cannot be used: still serving the previous certificate"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name`: (cert PEM, key PEM).
    pub(crate) fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("keygen");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("self-sign");
        (cert.pem(), key.serialize_pem())
    }

    fn write_pair(dir: &Path, pair: &(String, String)) {
        std::fs::write(dir.join("cert.pem"), &pair.0).expect("write cert");
        std::fs::write(dir.join("key.pem"), &pair.1).expect("write key");
    }

    fn leaf(resolver: &CertResolver) -> Vec<u8> {
        resolver.current().expect("a certificate").cert[0].to_vec()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let a = self_signed("a.example");
        write_pair(dir.path(), &a);
        let resolver = Arc::new(CertResolver::default());
        let mut watched = Watched::start(&cert, &key, Arc::clone(&resolver)).expect("load A");
        assert_eq!(leaf(&resolver), der(&a.0));
        assert!(watched.check().is_none(), "nothing changed");

        let b = self_signed("b.example");
        write_pair(dir.path(), &b);
        watched.check().expect("a change").expect("B loads");
        assert_eq!(leaf(&resolver), der(&b.0));

        std::fs::write(&cert, "not a certificate").expect("break cert");
        let e = watched.check().expect("a change").expect_err("refused");
        assert!(e.to_string().contains(&cert.display().to_string()), "{e}");
        assert_eq!(leaf(&resolver), der(&b.0), "B stays");
        assert!(watched.check().is_none(), "reported once");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = self_signed("a.example");
        let b = self_signed("b.example");
        write_pair(dir.path(), &(a.0, b.1));
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let e = load(&cert, &key).expect_err("mismatch");
        let m = e.to_string();
        assert!(
            m.contains("does not match")
                && m.contains(&cert.display().to_string())
                && m.contains(&key.display().to_string()),
            "{m}"
        );
    }

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let m = load(&cert, &key).expect_err("missing").to_string();
        assert!(m.contains("cannot read") && m.contains("cert.pem"), "{m}");
        std::fs::write(&cert, "").expect("write");
        std::fs::write(&key, "").expect("write");
        let m = load(&cert, &key).expect_err("empty").to_string();
        assert!(m.contains("no CERTIFICATE block"), "{m}");
    }
}
