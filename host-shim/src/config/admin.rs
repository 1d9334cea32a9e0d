//! `[admin]`: where `kiln serve` answers its operator. `listen` is the
//! Prometheus metrics listener (`GET /metrics`, `GET /healthz`), separate
//! from the webhook port and on loopback unless said otherwise; `"off"`
//! turns it off. `kiln ps`, `kiln logs` and `kiln cancel` use the admin
//! socket in the runtime directory, which needs no key.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigErrorKind;

/// The metrics listener unless `[admin] listen` says otherwise (9464 is
/// the port Prometheus' exporter registry gives OpenTelemetry exporters,
/// free on a Kiln host).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
}

/// `[admin]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// The metrics listener; `None`: off.
    pub listen: Option<SocketAddr>,
}

pub(crate) fn settings(raw: Option<RawAdmin>) -> Result<AdminSettings, ConfigErrorKind> {
    let listen = raw.and_then(|r| r.listen);
    let text = listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    if text == "off" {
        return Ok(AdminSettings { listen: None });
    }
    match text.parse::<SocketAddr>() {
        Ok(addr) => Ok(AdminSettings { listen: Some(addr) }),
        Err(_) => Err(ConfigErrorKind::bad_value(
            "admin.listen",
            format!("{text:?} is not an address with a port: use e.g. \"{DEFAULT_ADMIN_LISTEN}\" (the default), or \"off\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: Option<&str>) -> Result<AdminSettings, ConfigErrorKind> {
        settings(Some(RawAdmin {
            listen: s.map(str::to_owned),
        }))
    }

    #[test]
    fn the_listener_defaults_to_loopback_and_can_be_turned_off() {
        assert_eq!(
            settings(None).unwrap().listen,
            Some(DEFAULT_ADMIN_LISTEN.parse().unwrap())
        );
        assert_eq!(listen(None).unwrap().listen, settings(None).unwrap().listen);
        assert_eq!(listen(Some("off")).unwrap().listen, None);
        assert_eq!(
            listen(Some("[::1]:9100")).unwrap().listen,
            Some("[::1]:9100".parse().unwrap())
        );
        let e = listen(Some("localhost")).unwrap_err();
        let e = format!("{}: {e}", e.key().unwrap_or_default());
        assert!(e.contains("admin.listen") && e.contains("\"off\""), "{e}");
    }
}
