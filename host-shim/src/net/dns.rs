//! Which DNS resolvers a VM may use. They are explicit: the configured
//! ones, or else the host's own upstream resolvers — never a loopback stub
//! such as systemd-resolved's 127.0.0.53, which a VM cannot reach (then
//! the stub's upstreams, from `/run/systemd/resolve/resolv.conf`). Only
//! these get port 53 through the egress policy.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The host's resolver list.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of its upstream servers.
pub const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no DNS resolver a VM can use: {checked} list none but loopback or link-local ones; name resolvers with `dns = [\"IP\", ...]` in [network] (kiln run: --dns IP)")]
    NoneUsable { checked: String },
}

/// The `nameserver` addresses of a resolv.conf text, in order, without the
/// ones a VM cannot reach (loopback, link-local with a zone, unspecified).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next())?
        })
        .filter_map(|w| w.parse::<IpAddr>().ok())
        .filter(|ip| usable(*ip))
        .collect()
}

fn usable(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return false;
    }
    match ip {
        IpAddr::V4(_) => true,
        // fe80::/10 needs a zone (an interface of the host's), meaningless in a VM.
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 != 0xfe80,
    }
}

/// The host's upstream resolvers: `/etc/resolv.conf`'s usable ones, else
/// systemd-resolved's upstreams.
pub fn host_resolvers() -> Result<Vec<IpAddr>, DnsError> {
    host_resolvers_from(&[Path::new(RESOLV_CONF), Path::new(RESOLVED_UPSTREAMS)])
}

/// [`host_resolvers`] over the given files, first usable list wins.
pub fn host_resolvers_from(files: &[&Path]) -> Result<Vec<IpAddr>, DnsError> {
    for f in files {
        if let Ok(text) = std::fs::read_to_string(f) {
            let found = parse_resolv_conf(&text);
            if !found.is_empty() {
                return Ok(found);
            }
        }
    }
    Err(DnsError::NoneUsable {
        checked: files
            .iter()
            .map(|p| PathBuf::from(p).display().to_string())
            .collect::<Vec<_>>()
            .join(" and "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_stubs_are_skipped() {
        let text = "# a comment\nnameserver 127.0.0.53\noptions edns0\nsearch example.com\n\
                    nameserver 10.0.0.2\nnameserver ::1\nnameserver fe80::1%eth0\n\
                    nameserver 2001:4860:4860::8888\nnameserver bogus\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            ["10.0.0.2", "2001:4860:4860::8888"].map(|s| s.parse::<IpAddr>().expect("ip"))
        );
    }

    #[test]
    fn a_stub_only_resolv_conf_falls_back_to_resolved_upstreams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = dir.path().join("resolv.conf");
        let upstream = dir.path().join("upstream.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\n").expect("write");
        std::fs::write(&upstream, "nameserver 192.0.2.53\n").expect("write");
        let got = host_resolvers_from(&[&stub, &upstream]).expect("resolvers");
        assert_eq!(got, ["192.0.2.53".parse::<IpAddr>().expect("ip")]);
        let err = host_resolvers_from(&[&stub, &dir.path().join("missing")]).expect_err("none");
        assert!(err.to_string().contains("dns = ["), "{err}");
    }
}
