//! `[tls]`: whether `kiln serve` terminates TLS itself, and with what.
//!
//! Three shapes, one of them:
//!
//! - no `[tls]` table: plain HTTP (behind a reverse proxy that does TLS);
//! - `cert` and `key`: PEM files, reloaded when they change (the key file
//!   is a secret: mode 0600, like the other secret files);
//! - `[tls.acme]`: certificates from an ACME CA (Let's Encrypt by default),
//!   kept in `$KILN_STATE_DIR/acme/`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ConfigErrorKind;

/// Let's Encrypt's production directory: `[tls.acme] directory`'s default.
pub const DEFAULT_ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub acme: Option<RawAcme>,
}

/// `[tls.acme]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub domains: Vec<String>,
    pub contact: Option<Vec<String>>,
    pub directory: Option<String>,
    pub ca_roots: Option<PathBuf>,
}

/// How `kiln serve` gets its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSettings {
    /// PEM files, reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// From an ACME CA.
    Acme(AcmeSettings),
}

/// `[tls.acme]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// DNS names the certificate covers (no wildcards: TLS-ALPN-01 cannot
    /// prove them).
    pub domains: Vec<String>,
    /// `mailto:` addresses for the CA's expiry notices.
    pub contact: Vec<String>,
    /// The CA's ACME directory URL (https).
    pub directory: String,
    /// Extra PEM roots trusted for the ACME server's own HTTPS.
    pub ca_roots: Option<PathBuf>,
}

/// Validates `[tls]`; relative paths are relative to `base`.
pub(crate) fn settings(
    raw: Option<RawTls>,
    base: &Path,
) -> Result<Option<TlsSettings>, ConfigErrorKind> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match (raw.cert, raw.key, raw.acme) {
        (None, None, None) => Err(ConfigErrorKind::bad_value(
            "tls",
            "is empty: set cert and key (PEM files), or a [tls.acme] table; or remove [tls] for plain HTTP",
        )),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(ConfigErrorKind::bad_value(
            "tls",
            "has both cert/key and [tls.acme]: use one (files you renew yourself, or ACME)",
        )),
        (Some(_), None, None) => Err(ConfigErrorKind::bad_value(
            "tls.key",
            "is missing: cert needs the PEM file of its private key (key = \"PATH\")",
        )),
        (None, Some(_), None) => Err(ConfigErrorKind::bad_value(
            "tls.cert",
            "is missing: key needs the PEM file of its certificate chain (cert = \"PATH\")",
        )),
        (Some(cert), Some(key), None) => files(&base.join(cert), &base.join(key)),
        (None, None, Some(acme)) => Ok(Some(TlsSettings::Acme(acme_settings(acme, base)?))),
    }
}

fn files(cert: &Path, key: &Path) -> Result<Option<TlsSettings>, ConfigErrorKind> {
    readable_file("tls.cert", cert)?;
    let meta = readable_file("tls.key", key)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigErrorKind::SecretExposed {
            key: "tls.key".to_string(),
            file: key.to_path_buf(),
            mode,
        });
    }
    Ok(Some(TlsSettings::Files {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    }))
}

fn readable_file(key: &str, file: &Path) -> Result<std::fs::Metadata, ConfigErrorKind> {
    let unreadable = |e: std::io::Error| {
        ConfigErrorKind::bad_value(key, format!("cannot read {}: {e}", file.display()))
    };
    let meta = std::fs::metadata(file).map_err(unreadable)?;
    std::fs::File::open(file).map_err(unreadable)?;
    Ok(meta)
}

fn acme_settings(raw: RawAcme, base: &Path) -> Result<AcmeSettings, ConfigErrorKind> {
    if raw.domains.is_empty() {
        return Err(ConfigErrorKind::bad_value(
            "tls.acme.domains",
            "is empty: list the DNS names GitHub sends webhooks to, e.g. [\"kiln.example.com\"]",
        ));
    }
    for d in &raw.domains {
        domain(d)?;
    }
    let contact = raw.contact.unwrap_or_default();
    if let Some(bad) = contact.iter().find(|c| !valid_contact(c)) {
        return Err(ConfigErrorKind::bad_value(
            "tls.acme.contact",
            format!("{bad:?} is not a mailto: address: use e.g. \"mailto:ops@example.com\""),
        ));
    }
    let directory = raw
        .directory
        .unwrap_or_else(|| DEFAULT_ACME_DIRECTORY.to_string());
    if !directory.starts_with("https://") || directory.len() <= "https://".len() {
        return Err(ConfigErrorKind::bad_value(
            "tls.acme.directory",
            format!("{directory:?} is not an https:// URL: ACME directories are served over HTTPS (default {DEFAULT_ACME_DIRECTORY})"),
        ));
    }
    let ca_roots = match raw.ca_roots {
        Some(p) => {
            let p = base.join(p);
            readable_file("tls.acme.ca_roots", &p)?;
            Some(p)
        }
        None => None,
    };
    Ok(AcmeSettings {
        domains: raw.domains,
        contact,
        directory,
        ca_roots,
    })
}

/// A DNS name a CA can issue for by TLS-ALPN-01: not an address, no
/// wildcard.
fn domain(d: &str) -> Result<(), ConfigErrorKind> {
    let bad = |why: &str| {
        Err(ConfigErrorKind::bad_value(
            "tls.acme.domains",
            format!("{d:?} {why}"),
        ))
    };
    if d.starts_with("*.") {
        return bad("is a wildcard: TLS-ALPN-01 cannot prove wildcards; list each name");
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return bad("is an IP address: ACME certificates here are for DNS names");
    }
    match rustls::pki_types::DnsName::try_from(d) {
        Ok(_) if d.contains('.') => Ok(()),
        _ => bad("is not a fully qualified DNS name, e.g. \"kiln.example.com\""),
    }
}

fn valid_contact(c: &str) -> bool {
    c.strip_prefix("mailto:")
        .is_some_and(|addr| addr.contains('@') && !addr.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, base: &Path) -> Result<Option<TlsSettings>, ConfigErrorKind> {
        #[derive(Deserialize)]
        struct Wrapper {
            tls: Option<RawTls>,
        }
        let w: Wrapper = toml::from_str(text).expect("toml");
        settings(w.tls, base)
    }

    fn secret(dir: &Path, name: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, "x").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// `key: problem`, as `kiln config check` prints it after the position.
    fn message(r: Result<Option<TlsSettings>, ConfigErrorKind>) -> String {
        let e = r.expect_err("refused");
        format!("{}: {e}", e.key().unwrap_or_default())
    }

    #[test]
    fn no_table_is_plain_http() {
        assert_eq!(parse("", Path::new("/")).expect("ok"), None);
    }

    #[test]
    fn cert_and_key_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        secret(dir.path(), "c.pem", 0o644);
        secret(dir.path(), "k.pem", 0o600);
        let got = parse("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n", dir.path()).expect("ok");
        assert_eq!(
            got,
            Some(TlsSettings::Files {
                cert: dir.path().join("c.pem"),
                key: dir.path().join("k.pem"),
            })
        );
    }

    #[test]
    fn a_readable_key_file_is_refused_with_chmod_600() {
        let dir = tempfile::tempdir().expect("tempdir");
        secret(dir.path(), "c.pem", 0o644);
        secret(dir.path(), "k.pem", 0o640);
        let m = message(parse(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
            dir.path(),
        ));
        assert!(m.contains("tls.key") && m.contains("chmod 600"), "{m}");
    }

    #[test]
    fn a_missing_cert_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        secret(dir.path(), "k.pem", 0o600);
        let m = message(parse(
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
            dir.path(),
        ));
        assert!(m.contains("tls.cert") && m.contains("c.pem"), "{m}");
    }

    #[test]
    fn half_a_pair_both_kinds_or_nothing_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        let m = message(parse("[tls]\ncert = \"c.pem\"\n", base));
        assert!(m.contains("tls.key") && m.contains("missing"), "{m}");
        let m = message(parse("[tls]\nkey = \"k.pem\"\n", base));
        assert!(m.contains("tls.cert") && m.contains("missing"), "{m}");
        let m = message(parse(
            "[tls]\ncert = \"c.pem\"\n[tls.acme]\ndomains = [\"a.example\"]\n",
            base,
        ));
        assert!(m.contains("use one"), "{m}");
        let m = message(parse("[tls]\n", base));
        assert!(m.contains("remove [tls] for plain HTTP"), "{m}");
    }

    #[test]
    fn acme_defaults_to_lets_encrypt_production() {
        let got = parse(
            "[tls.acme]\ndomains = [\"kiln.example.com\"]\n",
            Path::new("/"),
        )
        .expect("ok");
        assert_eq!(
            got,
            Some(TlsSettings::Acme(AcmeSettings {
                domains: vec!["kiln.example.com".into()],
                contact: vec![],
                directory: DEFAULT_ACME_DIRECTORY.into(),
                ca_roots: None,
            }))
        );
    }

    #[test]
    fn acme_refuses_bad_domains_contacts_and_directories() {
        let base = Path::new("/");
        for (text, says) in [
            ("domains = []", "is empty"),
            ("domains = [\"*.example.com\"]", "wildcard"),
            ("domains = [\"10.0.0.1\"]", "IP address"),
            ("domains = [\"localhost\"]", "fully qualified"),
            ("domains = [\"bad name.com\"]", "fully qualified"),
            (
                "domains = [\"a.example\"]\ncontact = [\"ops@example.com\"]",
                "mailto:",
            ),
            (
                "domains = [\"a.example\"]\ndirectory = \"http://ca.example/dir\"",
                "https://",
            ),
            (
                "domains = [\"a.example\"]\nca_roots = \"/nonexistent/roots.pem\"",
                "tls.acme.ca_roots",
            ),
        ] {
            let m = message(parse(&format!("[tls.acme]\n{text}\n"), base));
            assert!(m.contains(says), "{text}: {m}");
        }
    }
}
