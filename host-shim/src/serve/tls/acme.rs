//! `[tls.acme]`: certificates from an ACME CA (RFC 8555), validated by
//! TLS-ALPN-01 (RFC 8737) on the webhook listener itself, so no port 80.
//!
//! In `$KILN_STATE_DIR/acme/` (0700, files 0600): `account.json` (the
//! account key and URL, with the directory it belongs to), `cert.pem` and
//! `key.pem`. At start a stored certificate for the same names that is
//! still valid is served at once, without asking the CA. A background
//! task orders a new one when there is none, and renews at two thirds of
//! its lifetime; failures are logged with the domains and retried with
//! backoff.
//!
//! The ACME client is instant-acme, given Kiln's own hyper + rustls (ring)
//! client with webpki's and the system's roots, plus `ca_roots`.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use super::error::{chain, TlsError};
use super::files;
use super::private_files::{private_dir, write_private};
use super::resolver::CertResolver;
use crate::config::AcmeSettings;
use crate::logs::events;

/// An order (account, challenges, finalisation) that takes longer than
/// this has failed: the CA is not answering.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the CA may take to validate the challenges, and to issue.
const VALIDATION_WAIT: Duration = Duration::from_secs(120);
/// The first retry after a failed order; doubled each time, up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(4 * 3600);
/// The renewal task wakes at least this often to check the clock (a
/// suspended host or a clock change do not leave it sleeping past expiry).
const RECHECK: Duration = Duration::from_secs(3600);

/// The certificate's names and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validity {
    pub names: BTreeSet<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Reads the leaf certificate.
    pub fn of(leaf: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            Some(d.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            names,
            not_before: time(cert.validity().not_before.timestamp()),
            not_after: time(cert.validity().not_after.timestamp()),
        })
    }

    /// Two thirds into its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// What `account.json` holds.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The ACME side of `kiln serve`: the stored state, the client, and the
/// certificate currently served.
pub(crate) struct Acme {
    settings: AcmeSettings,
    dir: PathBuf,
    resolver: Arc<CertResolver>,
    http: AcmeHttp,
    account: Option<Account>,
    /// Of the certificate served now, if any.
    current: Option<Validity>,
}

impl Acme {
    /// Prepares `<state_dir>/acme/` and serves a stored certificate if it
    /// is still good for these names. Errors (an unwritable state
    /// directory, unreadable `ca_roots`) stop `kiln serve` from starting.
    pub fn start(
        settings: &AcmeSettings,
        state_dir: &Path,
        resolver: Arc<CertResolver>,
    ) -> Result<Self, TlsError> {
        let dir = state_dir.join("acme");
        private_dir(&dir)?;
        let mut acme = Self {
            http: AcmeHttp::new(settings.ca_roots.as_deref())?,
            settings: settings.clone(),
            dir,
            resolver,
            account: None,
            current: None,
        };
        acme.load_stored();
        Ok(acme)
    }

    fn wanted(&self) -> BTreeSet<String> {
        self.settings
            .domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect()
    }

    /// Serves `cert.pem` and `key.pem` if they are for the configured
    /// names, not expired, and from the configured CA (a staging
    /// certificate is not kept after a switch to production).
    fn load_stored(&mut self) {
        let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
        if !cert.exists() {
            return;
        }
        if self.stored_directory().as_deref() != Some(self.settings.directory.as_str()) {
            tracing::info!(
                directory = %self.settings.directory,
                "ACME: the stored certificate is from another CA: ordering a new one"
            );
            return;
        }
        let loaded = files::load(&cert, &key).and_then(|certified| {
            let validity =
                Validity::of(&certified.cert[0]).map_err(|problem| TlsError::BadPem {
                    path: cert.clone(),
                    problem,
                })?;
            Ok((certified, validity))
        });
        match loaded {
            Ok((certified, validity))
                if validity.names == self.wanted() && validity.not_after > SystemTime::now() =>
            {
                tracing::info!(
                    event = %events::ACME_CERTIFICATE,
                    source = "stored",
                    domains = ?self.settings.domains,
                    not_after = %when(validity.not_after),
                    "ACME: using the stored certificate"
                );
                self.resolver.set(certified);
                self.current = Some(validity);
            }
            Ok((_, validity)) => tracing::info!(
                stored = ?validity.names,
                domains = ?self.settings.domains,
                "ACME: the stored certificate is expired or for other names: ordering a new one"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "ACME: the stored certificate cannot be used: ordering a new one")
            }
        }
    }

    /// The directory `account.json` belongs to, if it can be read.
    fn stored_directory(&self) -> Option<String> {
        let bytes = std::fs::read(self.dir.join("account.json")).ok()?;
        serde_json::from_slice::<StoredAccount>(&bytes)
            .ok()
            .map(|a| a.directory)
    }

    /// The CA no longer knows the stored account (a test CA restarted, an
    /// account deactivated): forget it, so the next attempt registers anew.
    fn forget_account_if_unknown(&mut self, e: &instant_acme::Error) {
        let unknown = matches!(e, instant_acme::Error::Api(p)
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"));
        if unknown {
            self.account = None;
            let path = self.dir.join("account.json");
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "ACME: cannot remove the unknown account");
            }
        }
    }

    /// When the next order is due: now without a certificate.
    fn due(&self) -> SystemTime {
        self.current
            .as_ref()
            .map_or(SystemTime::now(), Validity::renew_at)
    }

    /// Orders and renews for ever (spawned; the listener must be serving,
    /// it answers the CA's validation).
    pub async fn run(mut self) {
        let mut retry = FIRST_RETRY;
        loop {
            let wait = self
                .due()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if !wait.is_zero() {
                tokio::time::sleep(wait.min(RECHECK)).await;
                continue;
            }
            let ordered = tokio::time::timeout(ORDER_TIMEOUT, self.order()).await;
            let failure = match ordered {
                Ok(Ok(validity)) => {
                    tracing::info!(
                        event = %events::ACME_CERTIFICATE,
                        source = "new",
                        domains = ?self.settings.domains,
                        not_after = %when(validity.not_after),
                        renew_at = %when(validity.renew_at()),
                        "ACME: new certificate installed"
                    );
                    self.current = Some(validity);
                    retry = FIRST_RETRY;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no certificate within {ORDER_TIMEOUT:?}"),
            };
            self.resolver.clear_challenges();
            tracing::error!(
                event = %events::ACME_FAILED,
                domains = ?self.settings.domains,
                error = %failure,
                retry_in = ?retry,
                "ACME: cannot get a certificate"
            );
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    fn failed(&self, problem: impl Into<String>) -> TlsError {
        TlsError::Acme {
            directory: self.settings.directory.clone(),
            problem: problem.into(),
        }
    }

    fn acme_error(&self, what: &str, e: &instant_acme::Error) -> TlsError {
        self.failed(format!("{what}: {}", chain(e)))
    }

    /// One order, from account to installed certificate.
    async fn order(&mut self) -> Result<Validity, TlsError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(order) => order,
            Err(e) => {
                self.forget_account_if_unknown(&e);
                return Err(self.acme_error("new order", &e));
            }
        };
        self.answer_challenges(&mut order).await?;
        let retries = RetryPolicy::new().timeout(VALIDATION_WAIT);
        let status = order.poll_ready(&retries).await;
        self.resolver.clear_challenges();
        match status.map_err(|e| self.acme_error("validation", &e))? {
            OrderStatus::Ready => {}
            other => {
                return Err(self.failed(format!(
                    "the order is {other:?} after validation: the CA connects to port 443 of {:?} (TLS-ALPN-01), which must reach kiln serve's listener",
                    self.settings.domains
                )))
            }
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| self.acme_error("finalize", &e))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| self.acme_error("certificate", &e))?;
        self.install(&chain_pem, &key_pem)
    }

    /// Sets up a TLS-ALPN-01 answer for each pending authorization and
    /// tells the CA to validate.
    async fn answer_challenges(&self, order: &mut instant_acme::Order) -> Result<(), TlsError> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| self.acme_error("authorization", &e))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(self.failed(format!("an authorization is {other:?}"))),
            }
            let Some(mut challenge) = authz.challenge(ChallengeType::TlsAlpn01) else {
                return Err(self.failed(
                    "the CA offers no tls-alpn-01 challenge (Kiln validates on its HTTPS listener only)",
                ));
            };
            let domain = challenge.identifier().to_string();
            let cert = challenge_cert(&domain, challenge.key_authorization().digest().as_ref())?;
            self.resolver.set_challenge(&domain, cert);
            challenge
                .set_ready()
                .await
                .map_err(|e| self.acme_error("challenge", &e))?;
        }
        Ok(())
    }

    /// Checks, stores and serves a new certificate.
    fn install(&self, chain_pem: &str, key_pem: &str) -> Result<Validity, TlsError> {
        let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
        let certified = files::from_pem(chain_pem.as_bytes(), &cert, key_pem.as_bytes(), &key)?;
        let validity = Validity::of(&certified.cert[0])
            .map_err(|problem| self.failed(format!("the issued certificate: {problem}")))?;
        write_private(&key, key_pem.as_bytes())?;
        write_private(&cert, chain_pem.as_bytes())?;
        self.resolver.set(certified);
        Ok(validity)
    }

    /// The stored account if it belongs to this directory, else a new one
    /// (stored).
    async fn account(&mut self) -> Result<Account, TlsError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let path = self.dir.join("account.json");
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<StoredAccount>(&bytes)
                .map_err(|e| TlsError::BadPem {
                    path: path.clone(),
                    problem: format!(
                        "not an account file Kiln wrote ({e}): remove it to register a new account"
                    ),
                })
                .map(Some)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(cause) => return Err(TlsError::Read { path, cause }),
        };
        let builder = Account::builder_with_http(Box::new(self.http.clone()));
        let account = match stored {
            Some(s) if s.directory == self.settings.directory => builder
                .from_credentials(s.credentials)
                .await
                .map_err(|e| self.acme_error("stored account", &e))?,
            _ => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder
                    .create(&new, self.settings.directory.clone(), None)
                    .await
                    .map_err(|e| self.acme_error("new account", &e))?;
                let stored = StoredAccount {
                    directory: self.settings.directory.clone(),
                    credentials,
                };
                let json = serde_json::to_vec_pretty(&stored)
                    .map_err(|e| self.failed(format!("cannot serialise the account: {e}")))?;
                write_private(&path, &json)?;
                tracing::info!(directory = %self.settings.directory, "ACME: account registered");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }
}

/// A self-signed certificate for `domain` carrying the acmeIdentifier
/// extension with `digest` (RFC 8737, section 3).
fn challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |e: rcgen::Error| TlsError::Setup {
        problem: format!("the TLS-ALPN-01 certificate for {domain}: {e}"),
    };
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(bad)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = rustls::crypto::ring::default_provider();
    // Not `CertifiedKey::from_der`: its key check parses the certificate
    // with webpki, which refuses the critical acmeIdentifier extension.
    let signer = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Setup {
            problem: format!("the TLS-ALPN-01 key for {domain}: {e}"),
        })?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// `t` for a log line: RFC 2822 in UTC.
fn when(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| x509_parser::time::ASN1Time::from_timestamp(s).ok())
        .and_then(|t| t.to_rfc2822().ok())
        .unwrap_or_else(|| format!("{secs} s after the Unix epoch"))
}

/// instant-acme's HTTP client: hyper over rustls with Kiln's roots.
#[derive(Clone)]
struct AcmeHttp(Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl AcmeHttp {
    fn new(ca_roots: Option<&Path>) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_roots {
            add_roots(&mut roots, path)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup {
                problem: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self(Client::builder(TokioExecutor::new()).build(https)))
    }
}

/// Adds every certificate of the PEM file `path` to `roots`.
fn add_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), TlsError> {
    let bad = |problem: String| TlsError::BadPem {
        path: path.to_path_buf(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|cause| TlsError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no CERTIFICATE block in it (tls.acme.ca_roots: the ACME server's CA, PEM)".into(),
        ));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(())
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = self.0.request(req);
        Box::pin(async move {
            sent.await
                .map(BytesResponse::from)
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], days: i64) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("keygen");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let now = rcgen::date_time_ymd(2030, 1, 1);
        params.not_before = now;
        params.not_after =
            now + std::time::Duration::from_secs(u64::try_from(days).expect("days") * 86400);
        params.self_signed(&key).expect("sign").der().clone()
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let v = Validity::of(&cert(&["A.example", "b.example"], 90)).expect("parse");
        assert_eq!(
            v.names,
            BTreeSet::from(["a.example".to_string(), "b.example".to_string()])
        );
        let life = v.not_after.duration_since(v.not_before).expect("after");
        assert_eq!(life, Duration::from_secs(90 * 86400));
        assert_eq!(
            v.renew_at().duration_since(v.not_before).expect("after"),
            Duration::from_secs(60 * 86400)
        );
    }

    #[test]
    fn the_challenge_certificate_is_for_the_domain() {
        let c = challenge_cert("kiln.example.com", &[7u8; 32]).expect("cert");
        let v = Validity::of(&c.cert[0]).expect("parse");
        assert_eq!(v.names, BTreeSet::from(["kiln.example.com".to_string()]));
        let (_, x) = x509_parser::parse_x509_certificate(c.cert[0].as_ref()).expect("x509");
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31, critical.
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }

    /// A state directory as an earlier run against `directory` left it.
    fn stored_state(state: &Path, directory: &str, domain: &str) {
        let acme = state.join("acme");
        private_dir(&acme).expect("mkdir");
        let account = serde_json::json!({
            "directory": directory,
            "credentials": {"id": "https://ca.example/acct/1", "key_pkcs8": "AAAA", "directory": directory},
        });
        write_private(&acme.join("account.json"), account.to_string().as_bytes()).expect("write");
        let key = rcgen::KeyPair::generate().expect("keygen");
        let cert = rcgen::CertificateParams::new(vec![domain.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("sign");
        write_private(&acme.join("cert.pem"), cert.pem().as_bytes()).expect("write");
        write_private(&acme.join("key.pem"), key.serialize_pem().as_bytes()).expect("write");
    }

    fn settings(directory: &str, domain: &str) -> AcmeSettings {
        AcmeSettings {
            domains: vec![domain.to_string()],
            contact: vec![],
            directory: directory.to_string(),
            ca_roots: None,
        }
    }

    /// Whether a start with `settings` serves the stored certificate.
    fn reuses(state: &Path, settings: &AcmeSettings) -> bool {
        let resolver = Arc::new(CertResolver::default());
        let acme = Acme::start(settings, state, Arc::clone(&resolver)).expect("start");
        assert_eq!(acme.current.is_some(), resolver.current().is_some());
        resolver.current().is_some()
    }

    #[test]
    fn a_stored_certificate_is_reused_only_for_the_same_ca_and_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (ca, other_ca) = ("https://ca.example/dir", "https://other.example/dir");
        stored_state(tmp.path(), ca, "kiln.example.com");
        assert!(reuses(tmp.path(), &settings(ca, "kiln.example.com")));
        assert!(!reuses(tmp.path(), &settings(other_ca, "kiln.example.com")));
        assert!(!reuses(tmp.path(), &settings(ca, "other.example.com")));
    }

    #[test]
    fn bad_ca_roots_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("roots.pem");
        std::fs::write(&p, "nothing").expect("write");
        let mut roots = rustls::RootCertStore::empty();
        let m = add_roots(&mut roots, &p).expect_err("refused").to_string();
        assert!(
            m.contains("roots.pem") && m.contains("no CERTIFICATE"),
            "{m}"
        );
    }
}
