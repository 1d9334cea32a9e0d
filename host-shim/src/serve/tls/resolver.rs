//! [`CertResolver`]: the certificate the listener presents, swapped
//! atomically when files change or ACME renews, and the TLS-ALPN-01
//! challenge certificates while an ACME order is being validated.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Hands rustls the current certificate; a validation handshake from the
/// ACME CA gets the challenge certificate for its server name instead.
#[derive(Debug, Default)]
pub(crate) struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Server name → challenge certificate.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// Handshakes from now on present `cert`.
    pub fn set(&self, cert: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(cert);
    }

    /// The certificate presented now.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answers TLS-ALPN-01 validations for `domain` with `cert`.
    pub fn set_challenge(&self, domain: &str, cert: Arc<CertifiedKey>) {
        self.challenges_mut()
            .insert(domain.to_ascii_lowercase(), cert);
    }

    /// No more challenge certificates.
    pub fn clear_challenges(&self) {
        self.challenges_mut().clear();
    }

    fn challenges_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737: the CA offers acme-tls/1 and nothing else.
        let validation = hello.alpn().is_some_and(|protocols| {
            let offered: Vec<&[u8]> = protocols.collect();
            offered == [ACME_TLS_ALPN]
        });
        if validation {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
        }
        self.current()
    }
}
