//! What the host's own network namespace looks like: its links, the
//! prefixes its addresses and routes cover, and its uplinks (the links of
//! its default routes). Read once at start to pick the uplinks and the
//! MTU, and to refuse an address pool that would shadow a network the host
//! already reaches.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::RouteMessageBuilder;

use super::link::{name_and_mtu, LinkError, Netlink};

/// The main routing table's id.
const MAIN_TABLE: u8 = 254;

/// One link of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub index: u32,
    pub name: String,
    pub mtu: Option<u32>,
}

/// A prefix the host reaches directly (an address's subnet) or by a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPrefix {
    pub net: IpNet,
    /// The link it is on or routed through, for messages.
    pub link: String,
    pub what: &'static str,
}

/// The host's namespace, as read.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub links: Vec<HostLink>,
    /// Every address's subnet and every non-default route of the main table.
    pub prefixes: Vec<HostPrefix>,
    /// The links of the default routes (IPv4 and IPv6), sorted, deduplicated.
    pub default_links: Vec<String>,
    /// The host's own addresses.
    pub addresses: Vec<IpAddr>,
}

impl HostView {
    /// Reads links, addresses and routes through `nl` (the host's namespace).
    pub async fn read(nl: &Netlink) -> Result<HostView, LinkError> {
        let h = nl.handle();
        let fail = |action: &'static str| {
            move |source| LinkError::Request {
                action: action.into(),
                source,
            }
        };
        let mut view = HostView::default();
        let mut links = h.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(fail("listing links"))? {
            let (name, mtu) = name_and_mtu(&l.attributes);
            view.links.push(HostLink {
                index: l.header.index,
                name: name.unwrap_or_default(),
                mtu,
            });
        }
        let mut addrs = h.address().get().execute();
        while let Some(a) = addrs.try_next().await.map_err(fail("listing addresses"))? {
            let Some(ip) = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }) else {
                continue;
            };
            view.addresses.push(ip);
            if let Ok(net) = IpNet::new(ip, a.header.prefix_len) {
                view.prefixes.push(HostPrefix {
                    net: net.trunc(),
                    link: view.link_name(a.header.index),
                    what: "address",
                });
            }
        }
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = h.route().get(msg).execute();
            while let Some(r) = routes.try_next().await.map_err(fail("listing routes"))? {
                view.add_route(&r);
            }
        }
        view.default_links.sort();
        view.default_links.dedup();
        Ok(view)
    }

    fn add_route(&mut self, r: &rtnetlink::packet_route::route::RouteMessage) {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        if table != u32::from(MAIN_TABLE) || r.header.kind != RouteType::Unicast {
            return;
        }
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let link = oif.map(|i| self.link_name(i)).unwrap_or_default();
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        let len = r.header.destination_prefix_length;
        if len == 0 {
            if !link.is_empty() {
                self.default_links.push(link);
            }
            return;
        }
        if let Some(net) = dst.and_then(|d| IpNet::new(d, len).ok()) {
            self.prefixes.push(HostPrefix {
                net: net.trunc(),
                link,
                what: "route",
            });
        }
    }

    fn link_name(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("#{index}"))
    }

    /// The first prefix of the host's that overlaps `net`, ignoring links
    /// whose names start with one of `ignore` (Kiln's own VM links).
    pub fn overlap(&self, net: IpNet, ignore: &[&str]) -> Option<&HostPrefix> {
        self.prefixes.iter().find(|p| {
            !ignore.iter().any(|i| p.link.starts_with(i))
                && (p.net.contains(&net.network()) || net.contains(&p.net.network()))
        })
    }

    /// The smallest MTU of `links` (those that report one).
    pub fn mtu_of(&self, links: &[String]) -> Option<u32> {
        self.links
            .iter()
            .filter(|l| links.contains(&l.name))
            .filter_map(|l| l.mtu)
            .min()
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.links.iter().any(|l| l.name == name)
    }
}

/// IPv4 forwarding of the calling process's namespace.
pub const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// IPv6 forwarding of the calling process's namespace.
pub const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Turns IPv4 forwarding on; returns whether it was off before.
pub fn enable_forwarding() -> std::io::Result<bool> {
    enable(IPV4_FORWARD)
}

/// Turns IPv6 forwarding on; returns whether it was off before. A host
/// that forwards ignores router advertisements on links whose `accept_ra`
/// is 1: a host that takes its own IPv6 address by SLAAC needs
/// `accept_ra = 2` on its uplink (`kiln doctor` says so).
pub fn enable_forwarding6() -> std::io::Result<bool> {
    enable(IPV6_FORWARD)
}

fn enable(path: &str) -> std::io::Result<bool> {
    let was = std::fs::read_to_string(path)?;
    if was.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1\n")?;
    Ok(true)
}

/// Sets a per-link sysctl (`net/ipv4/conf/<link>/<key>` and the like) of
/// the calling process's namespace.
pub fn set_link_sysctl(family: &str, link: &str, key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/net/{family}/conf/{link}/{key}"), value)
}

/// Uplinks for `wanted` (configured names; empty: the default routes').
pub fn pick_uplinks(view: &HostView, wanted: &[String]) -> Result<Vec<String>, String> {
    if wanted.is_empty() {
        if view.default_links.is_empty() {
            return Err("this host has no default route, so no uplink to send VM traffic out of; name one with `uplinks = [\"eth0\"]` in [network]".into());
        }
        return Ok(view.default_links.clone());
    }
    let missing: BTreeSet<&String> = wanted.iter().filter(|w| !view.has_link(w)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "uplink {} does not exist on this host (its links: {})",
            missing.into_iter().cloned().collect::<Vec<_>>().join(", "),
            view.links
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(wanted.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> HostView {
        HostView {
            links: vec![
                HostLink {
                    index: 1,
                    name: "lo".into(),
                    mtu: Some(65536),
                },
                HostLink {
                    index: 2,
                    name: "eth0".into(),
                    mtu: Some(1460),
                },
            ],
            prefixes: vec![
                HostPrefix {
                    net: "10.128.0.0/20".parse().expect("net"),
                    link: "eth0".into(),
                    what: "address",
                },
                HostPrefix {
                    net: "10.200.0.0/30".parse().expect("net"),
                    link: "kv-0123456789ab".into(),
                    what: "address",
                },
            ],
            default_links: vec!["eth0".into()],
            addresses: vec![],
        }
    }

    #[test]
    fn overlaps_are_found_both_ways_and_kilns_own_links_ignored() {
        let v = view();
        let hit = v
            .overlap("10.0.0.0/8".parse().expect("net"), &["kv-"])
            .expect("overlap");
        assert_eq!(hit.link, "eth0");
        assert!(v
            .overlap("10.128.4.0/24".parse().expect("net"), &["kv-"])
            .is_some());
        assert!(v
            .overlap("10.200.0.0/16".parse().expect("net"), &["kv-"])
            .is_none());
        assert!(v
            .overlap("10.200.0.0/16".parse().expect("net"), &[])
            .is_some());
    }

    #[test]
    fn uplinks_default_to_the_default_routes_and_must_exist() {
        let v = view();
        assert_eq!(pick_uplinks(&v, &[]).expect("auto"), ["eth0"]);
        let e = pick_uplinks(&v, &["ens5".into()]).expect_err("missing");
        assert!(e.contains("ens5") && e.contains("eth0"), "{e}");
        assert_eq!(v.mtu_of(&["eth0".into()]), Some(1460));
    }
}
