//! TLS on the webhook listener, when `[tls]` asks for it: the server
//! config (ALPN `http/1.1`, plus `acme-tls/1` with ACME), the certificate
//! source, and the tasks that keep the certificate fresh.
//!
//! - [`resolver`] — the certificate presented, swapped atomically.
//! - [`files`] — `cert` and `key` PEM files, reloaded when they change.
//! - [`acme`] — certificates from an ACME CA by TLS-ALPN-01, kept in the
//!   state directory and renewed in the background.
//! - [`private_files`] — the ACME directory's 0700/0600 files.
//! - [`error`] — [`TlsError`].
//!
//! The handshake itself runs in [`super::http`], under the connection cap
//! and the header timeout.

mod acme;
mod error;
mod files;
mod private_files;
mod resolver;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use error::TlsError;

use crate::config::TlsSettings;
use resolver::{CertResolver, ACME_TLS_ALPN};

/// TLS for the listener, and its background task (file watcher or ACME
/// renewal), stopped when this is dropped.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    task: JoinHandle<()>,
}

impl Tls {
    /// Loads the certificate files, or the stored ACME certificate, and
    /// starts the task that reloads or renews it. Must run inside the
    /// runtime. `state_dir` is only read for ACME.
    pub fn start(
        settings: &TlsSettings,
        state_dir: impl FnOnce() -> Result<PathBuf, TlsError>,
    ) -> Result<Self, TlsError> {
        let resolver = Arc::new(CertResolver::default());
        let (task, acme) = match settings {
            TlsSettings::Files { cert, key } => {
                let watched = files::Watched::start(cert, key, Arc::clone(&resolver))?;
                (tokio::spawn(watched.watch()), false)
            }
            TlsSettings::Acme(acme) => {
                let state = acme::Acme::start(acme, &state_dir()?, Arc::clone(&resolver))?;
                (tokio::spawn(state.run()), true)
            }
        };
        Ok(Self {
            acceptor: TlsAcceptor::from(server_config(resolver, acme)?),
            task,
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(
    resolver: Arc<CertResolver>,
    acme: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup {
            problem: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if acme {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

/// The handshake was an ACME CA's TLS-ALPN-01 validation: it is over,
/// no HTTP follows.
pub(crate) fn is_validation(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(ACME_TLS_ALPN)
}
