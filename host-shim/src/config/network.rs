//! `[network]` (host-wide) and each pool's `network`, `allow` and `proxy`.

use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::{ConfigErrorKind, Problems};
use super::file::{RawAllow, RawNetwork};
use crate::net::policy::reaches_denied;
use crate::net::Allow;

/// `[network]`, validated: the host-wide settings of the VMs' networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub pool4: Ipv4Net,
    pub pool6: Option<Ipv6Net>,
    /// Empty: the default routes' links.
    pub uplinks: Vec<String>,
    /// `None`: the uplinks' smallest.
    pub mtu: Option<u32>,
    /// Empty: the host's upstream resolvers.
    pub dns: Vec<IpAddr>,
}

/// A pool's network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PoolNetwork {
    /// The public internet, the resolvers and the allowlist.
    #[default]
    Egress,
    /// No network device: only `lo`.
    None,
}

/// An HTTP(S) proxy a pool's jobs use: allowlisted, and passed to the job
/// as `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub url: String,
    pub addr: SocketAddr,
}

/// `[network]`, every key checked; `None` with the problems noted.
pub(crate) fn settings(
    raw: Option<RawNetwork>,
    problems: &mut Problems,
) -> Option<NetworkSettings> {
    let raw = raw.unwrap_or_default();
    let pool4 = problems.take(pool4(raw.pool));
    let pool6 = problems.take(raw.pool6.map(pool6).transpose());
    if let Some(m) = raw.mtu {
        if !(1280..=65535).contains(&m) {
            problems.push(ConfigErrorKind::bad_value(
                "network.mtu",
                format!("{m} is outside 1280..=65535 (leave it out for the uplink's)"),
            ));
        }
    }
    let dns = problems.take(resolvers(raw.dns.unwrap_or_default()));
    Some(NetworkSettings {
        pool4: pool4?,
        pool6: pool6?,
        uplinks: raw.uplinks.unwrap_or_default(),
        mtu: raw.mtu,
        dns: dns?,
    })
}

/// `network.pool`: an IPv4 CIDR with room for a VM's /30.
fn pool4(raw: Option<String>) -> Result<Ipv4Net, ConfigErrorKind> {
    let pool4 = match raw {
        None => crate::net::DEFAULT_POOL4
            .parse()
            .map_err(|_| ConfigErrorKind::bad_value("network.pool", "the default is not a CIDR"))?,
        Some(text) => text.parse::<Ipv4Net>().map_err(|_| {
            ConfigErrorKind::bad_value(
                "network.pool",
                format!("{text:?} is not an IPv4 CIDR: write e.g. \"10.200.0.0/16\""),
            )
        })?,
    };
    if pool4.prefix_len() > 29 {
        return Err(ConfigErrorKind::bad_value(
            "network.pool",
            format!("{pool4} is too small: each VM needs a /30, use a /29 or larger (e.g. 10.200.0.0/16)"),
        ));
    }
    Ok(pool4)
}

/// `network.pool6`: a routed /64 or larger.
fn pool6(text: String) -> Result<Ipv6Net, ConfigErrorKind> {
    let p = text.parse::<Ipv6Net>().map_err(|_| {
        ConfigErrorKind::bad_value(
            "network.pool6",
            format!("{text:?} is not an IPv6 CIDR: write e.g. \"2001:db8:1::/64\""),
        )
    })?;
    if p.prefix_len() > 64 {
        return Err(ConfigErrorKind::bad_value(
            "network.pool6",
            format!("{p} is too small: use a /64 (or larger) routed to this host"),
        ));
    }
    Ok(p)
}

/// `network.dns`: addresses VMs can reach (not loopback).
fn resolvers(texts: Vec<String>) -> Result<Vec<IpAddr>, ConfigErrorKind> {
    let mut dns = Vec::new();
    for (i, text) in texts.into_iter().enumerate() {
        let key = format!("network.dns[{i}]");
        let ip = text.parse::<IpAddr>().map_err(|_| {
            ConfigErrorKind::bad_value(
                &key,
                format!("{text:?} is not an IP address: list resolvers as [\"192.0.2.53\", ...]"),
            )
        })?;
        if ip.is_loopback() {
            return Err(ConfigErrorKind::bad_value(
                key,
                format!("{ip} is a loopback address, which no VM can reach: name the resolver's own address"),
            ));
        }
        dns.push(ip);
    }
    Ok(dns)
}

pub(crate) fn pool_network(
    pool: &str,
    mode: Option<String>,
    allow: Vec<RawAllow>,
    proxy: Option<String>,
) -> Result<(PoolNetwork, Vec<Allow>, Option<Proxy>), ConfigErrorKind> {
    // `pool` is the pool's key path, `pool[0]`.
    let key = |k: &str| format!("{pool}.{k}");
    let mode = match mode.as_deref() {
        None | Some("egress") => PoolNetwork::Egress,
        Some("none") => PoolNetwork::None,
        Some(other) => {
            return Err(ConfigErrorKind::bad_value(
                key("network"),
                format!("{other:?} is not \"egress\" (the default) or \"none\""),
            ))
        }
    };
    let mut allowed = Vec::with_capacity(allow.len());
    for (i, a) in allow.into_iter().enumerate() {
        allowed.push(allow_entry(&key(&format!("allow[{i}]")), a)?);
    }
    let proxy = proxy.map(|p| parse_proxy(&key("proxy"), &p)).transpose()?;
    if mode == PoolNetwork::None && (!allowed.is_empty() || proxy.is_some()) {
        return Err(ConfigErrorKind::bad_value(
            key("network"),
            "is \"none\", but the pool also has allow or proxy entries: drop them, or use \"egress\"",
        ));
    }
    if let Some(p) = &proxy {
        allowed.push(Allow {
            net: IpNet::from(p.addr.ip()),
            port: Some(p.addr.port()),
        });
    }
    Ok((mode, allowed, proxy))
}

/// One `[[pool.allow]]`; `key` is its path (`pool[0].allow[1]`), each
/// problem is at the field it is about.
fn allow_entry(key: &str, a: RawAllow) -> Result<Allow, ConfigErrorKind> {
    let cidr_key = format!("{key}.cidr");
    let net = a.cidr.parse::<IpNet>().or_else(|_| a.cidr.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
        ConfigErrorKind::bad_value(
            &cidr_key,
            format!("cidr {:?} is not an address or CIDR: write e.g. \"10.1.2.3/32\" or \"10.1.0.0/16\"", a.cidr),
        )
    })?;
    if net.trunc() != net {
        return Err(ConfigErrorKind::bad_value(
            &cidr_key,
            format!(
                "cidr {net} has host bits set: did you mean {}?",
                net.trunc()
            ),
        ));
    }
    if a.port == Some(0) {
        return Err(ConfigErrorKind::bad_value(
            format!("{key}.port"),
            format!("{net}: port 0 is not a port; leave it out for every port"),
        ));
    }
    let unnamed = a.name.as_deref().is_none_or(|n| n.trim().is_empty());
    if unnamed && reaches_denied(&net) {
        return Err(ConfigErrorKind::bad_value(
            &cidr_key,
            format!("{net} reaches a private range, which jobs cannot reach by default: say what it is with name = \"...\" (e.g. \"registry\"), so the exception is on record"),
        ));
    }
    Ok(Allow { net, port: a.port })
}

/// `http://IP:PORT` (an address, not a name: the policy allowlists it).
fn parse_proxy(key: &str, text: &str) -> Result<Proxy, ConfigErrorKind> {
    let bad = || {
        ConfigErrorKind::bad_value(
            key,
            format!("{text:?} is not http://ADDRESS:PORT (an IP address, e.g. http://10.1.2.3:3128 or http://[fd00::3]:3128)"),
        )
    };
    let rest = text.strip_prefix("http://").ok_or_else(bad)?;
    let hostport = rest.trim_end_matches('/');
    let addr = hostport.parse::<SocketAddr>().map_err(|_| bad())?;
    Ok(Proxy {
        url: format!("http://{addr}"),
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(cidr: &str, port: Option<u16>, name: Option<&str>) -> RawAllow {
        RawAllow {
            cidr: cidr.into(),
            port,
            name: name.map(Into::into),
        }
    }

    #[test]
    fn private_allow_entries_need_a_name() {
        let e = pool_network(
            "p",
            None,
            vec![allow("10.1.2.3/32", Some(5000), None)],
            None,
        )
        .expect_err("unnamed");
        assert!(e.to_string().contains("name = "), "{e}");
        let (mode, a, _) = pool_network(
            "p",
            None,
            vec![
                allow("10.1.2.3", Some(5000), Some("registry")),
                allow("203.0.113.0/24", None, None),
            ],
            None,
        )
        .expect("named");
        assert_eq!(mode, PoolNetwork::Egress);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].to_string(), "10.1.2.3/32:5000");
    }

    #[test]
    fn bad_entries_name_the_value() {
        for (raw, want) in [
            (allow("10.0.0.0/33", None, Some("x")), "10.0.0.0/33"),
            (
                allow("10.1.2.3/24", None, Some("x")),
                "did you mean 10.1.2.0/24",
            ),
            (allow("10.1.2.3", Some(0), Some("x")), "port 0"),
        ] {
            let e = pool_network("p", None, vec![raw], None).expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let e = pool_network("p", Some("open".into()), vec![], None).expect_err("mode");
        assert!(e.to_string().contains("\"open\""), "{e}");
        let e = pool_network(
            "p",
            Some("none".into()),
            vec![],
            Some("http://10.0.0.1:3128".into()),
        )
        .expect_err("none with proxy");
        assert!(e.to_string().contains("\"none\""), "{e}");
    }

    #[test]
    fn a_proxy_is_an_address_and_is_allowlisted() {
        let (_, a, p) =
            pool_network("p", None, vec![], Some("http://10.9.9.9:3128/".into())).expect("proxy");
        let p = p.expect("proxy");
        assert_eq!(p.url, "http://10.9.9.9:3128");
        assert_eq!(
            a,
            [Allow {
                net: "10.9.9.9/32".parse().expect("net"),
                port: Some(3128)
            }]
        );
        for bad in [
            "proxy.example:3128",
            "https://10.0.0.1:3128",
            "http://10.0.0.1",
        ] {
            let e = pool_network("p", None, vec![], Some(bad.into())).expect_err(bad);
            assert!(e.to_string().contains("http://ADDRESS:PORT"), "{e}");
        }
    }

    /// `settings`' problems, one per line.
    fn settings_err(raw: RawNetwork) -> String {
        let mut problems = Problems::default();
        assert!(settings(Some(raw), &mut problems).is_none());
        let lines: Vec<String> = problems
            .0
            .iter()
            .map(|p| format!("{:?}: {p}", p.key()))
            .collect();
        lines.join("\n")
    }

    #[test]
    fn network_settings_are_checked() {
        let mut problems = Problems::default();
        let s = settings(None, &mut problems).expect("defaults");
        assert_eq!(s.pool4.to_string(), crate::net::DEFAULT_POOL4);
        let raw = |pool: &str| RawNetwork {
            pool: Some(pool.into()),
            ..RawNetwork::default()
        };
        assert!(settings_err(raw("10.0.0.0/30")).contains("/29"));
        assert!(settings_err(raw("banana")).contains("banana"));
        let e = settings_err(RawNetwork {
            dns: Some(vec!["192.0.2.53".into(), "127.0.0.53".into()]),
            ..RawNetwork::default()
        });
        assert!(
            e.contains("Some(\"network.dns[1]\")") && e.contains("loopback"),
            "{e}"
        );
        // Every key's problem, not only the first.
        let e = settings_err(RawNetwork {
            pool: Some("banana".into()),
            mtu: Some(9),
            dns: Some(vec!["resolver".into()]),
            ..RawNetwork::default()
        });
        assert_eq!(e.lines().count(), 3, "{e}");
    }
}
