//! The egress policy: see [`super`].
//!
//! Kiln owns exactly one nftables table, `table inet kiln` ([`TABLE`]), and
//! never touches another (no `flush ruleset`, listings name only this table).
//! [`Policy::install`] replaces it atomically; [`Policy::add_vm`] and
//! [`Policy::remove_vm`] change only set elements, one small transaction per
//! VM, so rules and named counters stay as they are.
//!
//! What a VM may send, judged on its host-side veth (`kv-*`), in this order:
//! nothing invalid or spoofed; replies; never to another VM; to its
//! allowlist (tcp and udp, a CIDR and a port or all ports); DNS (port 53) to
//! the resolvers it was given, and no other DNS (53, 853); nothing to private,
//! loopback, link-local (cloud metadata), CGNAT, multicast or reserved
//! ranges, nor their IPv6 equivalents; nothing but out of an uplink; the rest
//! (the public internet) is allowed. Nothing a VM sends reaches the host's
//! own addresses (input hook), and nobody opens connections to a VM. IPv4
//! leaving by an uplink is masqueraded; IPv6 is routed (masqueraded only with
//! [`PolicyConfig::nat66`]). Every drop counts in a named counter:
//! [`Policy::counters`].
//!
//! Kiln fails closed: adding a VM's elements to a missing table fails, and a
//! VM whose elements are absent can send nothing (its source address is not
//! in `vm4`/`vm6`, so every packet counts as spoofed).
//!
//! Scripts are generated from typed values only: interface names are
//! validated (`[a-z0-9-]` for VMs), addresses are formatted from `std::net`
//! and `ipnet` types.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::nft::{Nft, NftError};

/// The one table Kiln owns, in family `inet`.
pub const TABLE: &str = "kiln";

/// The usual prefix of VMs' host-side veths ([`PolicyConfig::vm_ifname_prefix`]).
pub const DEFAULT_VM_IFNAME_PREFIX: &str = "kv-";

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// IPv4 ranges no VM may reach (unless allowlisted): "this network",
/// RFC 1918, CGNAT, loopback, link-local (cloud metadata), IETF protocol
/// assignments, benchmarking, multicast, reserved.
const DENY4: [(Ipv4Addr, u8); 11] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges no VM may reach (unless allowlisted): unspecified and
/// loopback (`::/127`), the prefixes that lead to IPv4 (v4-mapped, NAT64
/// well-known and local-use, 6to4), unique local, link-local, multicast.
const DENY6: [(Ipv6Addr, u8); 8] = [
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 127),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the egress policy needs at least one uplink interface (the interfaces VM traffic leaves the host by, e.g. \"eth0\")")]
    NoUplinks,
    #[error("uplink interface name {name:?} {reason}")]
    BadUplink { name: String, reason: &'static str },
    #[error("uplink {name:?} starts with the VMs' interface prefix {prefix:?}: pick another prefix or uplink, or VM traffic and uplink traffic cannot be told apart")]
    UplinkLooksLikeVm { name: String, prefix: String },
    #[error("VM interface prefix {prefix:?} {reason}")]
    BadVmPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("VM interface name {ifname:?} {reason}")]
    BadVmIfname {
        ifname: String,
        reason: &'static str,
    },
    #[error("VM interface {ifname:?} does not start with the configured prefix {prefix:?}: the policy would not judge its traffic")]
    VmIfnameOutsidePrefix { ifname: String, prefix: String },
    #[error("VM {ifname:?} has neither an IPv4 nor an IPv6 address: give it one (it could send nothing)")]
    NoVmAddress { ifname: String },
    #[error("VM {ifname:?} has IPv6 address {addr}, but the policy has IPv6 off: enable ipv6 in the policy config or give the VM no IPv6 address")]
    Ipv6Off { ifname: String, addr: Ipv6Addr },
    #[error("VM {ifname:?}: allowlist entries {a} and {b} partly overlap, which nftables' interval sets refuse: merge them (e.g. all ports on the wider one) or make them disjoint")]
    AllowOverlap { ifname: String, a: Allow, b: Allow },
    #[error("table inet {TABLE} is not installed, so VM {ifname:?} cannot be added (Kiln fails closed: no VM starts without the egress policy): install the policy first")]
    NotInstalled { ifname: String },
    #[error("VM {ifname:?}'s elements are not (all) in table inet {TABLE}: was it added with these exact rules? {source}")]
    VmNotPresent {
        ifname: String,
        #[source]
        source: NftError,
    },
    #[error("table inet {TABLE} is not installed, so it has no counters")]
    NoCounters,
    #[error("nft's counter listing of table inet {TABLE} lacks counter {name:?} (was the table created by another Kiln version? reinstall it)")]
    CounterMissing { name: &'static str },
    #[error("{action}: {source}")]
    Nft {
        /// What Kiln was doing, e.g. "installing table inet kiln".
        action: String,
        #[source]
        source: NftError,
    },
}

/// How the policy is set up on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Interfaces VM traffic may leave the host by (masqueraded there), e.g. `["eth0"]`.
    pub uplinks: Vec<String>,
    /// The prefix of every VM's host-side veth ([`DEFAULT_VM_IFNAME_PREFIX`]);
    /// the policy judges traffic of interfaces named so, and only those.
    pub vm_ifname_prefix: String,
    /// Whether VMs get IPv6 (the host then answers their neighbour discovery).
    pub ipv6: bool,
    /// Masquerade IPv6 leaving by an uplink too (otherwise it is routed).
    pub nat66: bool,
}

impl PolicyConfig {
    /// Checks what the ruleset is built from: uplinks and the VM prefix.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_vm_prefix(&self.vm_ifname_prefix)?;
        if self.uplinks.is_empty() {
            return Err(PolicyError::NoUplinks);
        }
        for name in &self.uplinks {
            check_uplink(name)?;
            if name.starts_with(&self.vm_ifname_prefix) {
                return Err(PolicyError::UplinkLooksLikeVm {
                    name: name.clone(),
                    prefix: self.vm_ifname_prefix.clone(),
                });
            }
        }
        Ok(())
    }
}

/// One VM's part of the policy: its host-side interface, its addresses,
/// the resolvers and the destinations it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRules {
    /// The VM's host-side veth, e.g. `kv-0123456789ab`: at most 15 bytes of `[a-z0-9-]`.
    pub ifname: String,
    /// The VM's own IPv4 address (the only IPv4 source it may use; none: no IPv4).
    pub ipv4: Option<Ipv4Addr>,
    /// The VM's own IPv6 address (the only IPv6 source it may use; none: no IPv6).
    pub ipv6: Option<Ipv6Addr>,
    /// Resolvers the VM may query (port 53, tcp and udp); may be private addresses.
    pub dns: Vec<IpAddr>,
    /// Destinations the VM may reach even where the policy denies them.
    pub allow: Vec<Allow>,
}

impl VmRules {
    /// Checks the interface name and that the VM has an address, and that
    /// the allowlist fits in nftables' interval sets (see [`PolicyError::AllowOverlap`]).
    pub fn validate(&self) -> Result<(), PolicyError> {
        Elements::of(self).map(drop)
    }
}

/// An allowlist entry: tcp and udp to `net`, on `port` or on every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allow {
    pub net: IpNet,
    pub port: Option<u16>,
}

impl Allow {
    /// The ports as nft writes them: one port, or all of them.
    fn ports(&self) -> (u16, u16) {
        self.port.map_or((0, u16::MAX), |p| (p, p))
    }

    /// Whether every packet `other` allows, `self` allows too.
    fn covers(&self, other: &Allow) -> bool {
        self.net.contains(&other.net) && (self.port.is_none() || self.port == other.port)
    }

    /// Whether (addr, port) lies inside this entry.
    fn holds(&self, addr: IpAddr, port: u16) -> bool {
        let (lo, hi) = self.ports();
        self.net.contains(&addr) && (lo..=hi).contains(&port)
    }

    /// nftables refuses to insert an interval element whose first or last
    /// key lies inside an element already there (unless both are equal);
    /// which one is refused depends on the order, so either way is refused here.
    fn clashes_with(&self, other: &Allow) -> bool {
        let ends = |a: &Allow| {
            let (lo, hi) = a.ports();
            [(a.net.network(), lo), (a.net.broadcast(), hi)]
        };
        ends(other).iter().any(|&(ip, p)| self.holds(ip, p))
            || ends(self).iter().any(|&(ip, p)| other.holds(ip, p))
    }
}

/// As [`Allow::from_str`] reads it (`10.1.2.0/24:5000`, `[fd00::1/128]:443`).
impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net, self.port) {
            (net, None) => write!(f, "{net}"),
            (IpNet::V4(net), Some(port)) => write!(f, "{net}:{port}"),
            (IpNet::V6(net), Some(port)) => write!(f, "[{net}]:{port}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowlist entry {value:?}: {reason} (expected e.g. 10.0.0.5, 10.1.2.0/24, 10.1.2.3/32:5000, fd00::/64, [fd00::1]:443)")]
pub struct AllowParseError {
    pub value: String,
    pub reason: String,
}

impl FromStr for Allow {
    type Err = AllowParseError;

    /// `ADDR`, `ADDR/LEN`, `ADDR:PORT`, `ADDR/LEN:PORT`, and for IPv6 with a
    /// port `[ADDR]:PORT` or `[ADDR/LEN]:PORT`. A bare address is a /32 or
    /// /128; a CIDR must have no host bits set; port 0 is refused.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| AllowParseError {
            value: value.to_owned(),
            reason,
        };
        let (host, port) = split_port(value.trim()).map_err(|r| fail(r.to_owned()))?;
        let net = parse_net(host).map_err(fail)?;
        let port = port.map(parse_port).transpose().map_err(fail)?;
        Ok(Allow { net, port })
    }
}

/// Splits `value` into the address part and the port, if any.
fn split_port(value: &str) -> Result<(&str, Option<&str>), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("has '[' but no ']': write [fd00::1]:443")?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err("has something other than :PORT after ']'"),
        };
    }
    if let Some((addr, len_port)) = value.split_once('/') {
        // A prefix length never holds ':', so the port is unambiguous here.
        return Ok(match len_port.split_once(':') {
            Some((len, port)) => (&value[..addr.len() + 1 + len.len()], Some(port)),
            None => (value, None),
        });
    }
    if value.parse::<IpAddr>().is_ok() {
        return Ok((value, None));
    }
    match value.rsplit_once(':') {
        Some((addr, port)) if addr.parse::<Ipv4Addr>().is_ok() => Ok((addr, Some(port))),
        _ => Err("is not an IP address or CIDR (an IPv6 address with a port needs brackets: [fd00::1]:443)"),
    }
}

fn parse_net(host: &str) -> Result<IpNet, String> {
    if !host.contains('/') {
        return host
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{host:?} is not an IP address"));
    }
    let net: IpNet = host
        .parse()
        .map_err(|_| format!("{host:?} is not a CIDR (address/prefix length)"))?;
    if net != net.trunc() {
        return Err(format!(
            "{net} has host bits set: did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {port:?} is not a number from 1 to 65535")),
        Ok(port) => Ok(port),
    }
}

/// Packets and bytes one named counter saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// The policy's named counters: what it dropped, by reason, and what two
/// accept rules let through. They restart from zero whenever
/// [`Policy::install`] recreates the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// A source address not the VM's own.
    pub spoofed: Count,
    /// Packets conntrack cannot place in any connection.
    pub invalid: Count,
    /// To another VM.
    pub vm_to_vm: Count,
    /// DNS (53) or DNS over TLS (853) to a server not given to the VM.
    pub dns_blocked: Count,
    /// To a private, loopback, link-local, multicast or reserved address.
    pub private: Count,
    /// Out of an interface that is no uplink.
    pub not_uplink: Count,
    /// To any of the host's own addresses.
    pub to_host: Count,
    /// New connections towards a VM.
    pub inbound: Count,
    /// Accepted: DNS to a resolver given to the VM.
    pub dns_allowed: Count,
    /// Accepted: to an allowlisted destination.
    pub allowlisted: Count,
}

impl DropCounters {
    /// Every counter's name, as in the table (and in metrics).
    pub const NAMES: [&'static str; 10] = [
        "spoofed",
        "invalid",
        "vm_to_vm",
        "dns_blocked",
        "private",
        "not_uplink",
        "to_host",
        "inbound",
        "dns_allowed",
        "allowlisted",
    ];

    /// (name, packets, bytes) of every counter, in [`Self::NAMES`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64, u64)> + '_ {
        Self::NAMES.into_iter().filter_map(move |name| {
            self.get(name)
                .map(|count| (name, count.packets, count.bytes))
        })
    }

    /// The counter named `name`.
    pub fn get(&self, name: &str) -> Option<Count> {
        let mut copy = *self;
        copy.slot(name).map(|count| *count)
    }

    fn slot(&mut self, name: &str) -> Option<&mut Count> {
        Some(match name {
            "spoofed" => &mut self.spoofed,
            "invalid" => &mut self.invalid,
            "vm_to_vm" => &mut self.vm_to_vm,
            "dns_blocked" => &mut self.dns_blocked,
            "private" => &mut self.private,
            "not_uplink" => &mut self.not_uplink,
            "to_host" => &mut self.to_host,
            "inbound" => &mut self.inbound,
            "dns_allowed" => &mut self.dns_allowed,
            "allowlisted" => &mut self.allowlisted,
            _ => return None,
        })
    }

    /// Reads `nft -j list counters table inet kiln`: `{"nftables": [{"metainfo": …},
    /// {"counter": {"family": "inet", "table": "kiln", "name": …, "packets": …, "bytes": …}}, …]}`.
    fn from_nft_json(json: &serde_json::Value) -> Result<Self, PolicyError> {
        let mut counters = DropCounters::default();
        let mut seen = HashSet::new();
        let objects = json.get("nftables").and_then(|v| v.as_array());
        for counter in objects
            .into_iter()
            .flatten()
            .filter_map(|object| object.get("counter"))
            .filter(|c| c["family"] == "inet" && c["table"] == TABLE)
        {
            let Some(name) = counter["name"].as_str() else {
                continue;
            };
            if let Some(slot) = counters.slot(name) {
                slot.packets = counter["packets"].as_u64().unwrap_or(0);
                slot.bytes = counter["bytes"].as_u64().unwrap_or(0);
                seen.insert(name.to_owned());
            }
        }
        match Self::NAMES.into_iter().find(|name| !seen.contains(*name)) {
            Some(name) => Err(PolicyError::CounterMissing { name }),
            None => Ok(counters),
        }
    }
}

/// Kiln's table on this host (or in the network namespace `nft` runs in).
#[derive(Debug, Clone)]
pub struct Policy {
    nft: Nft,
    cfg: PolicyConfig,
}

impl Policy {
    /// A policy for `cfg` (validated here), applied through `nft`.
    pub fn new(nft: Nft, cfg: PolicyConfig) -> Result<Self, PolicyError> {
        cfg.validate()?;
        Ok(Policy { nft, cfg })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// The script [`Policy::install`] applies: the whole table, replacing any old one.
    pub fn ruleset(&self) -> String {
        render_ruleset(&self.cfg)
    }

    /// Creates `table inet kiln`, or replaces it, in one transaction: no
    /// moment without it, no other table touched. Replacing drops every VM's
    /// elements (their traffic is then dropped as spoofed until re-added)
    /// and restarts the counters.
    pub fn install(&self) -> Result<(), PolicyError> {
        self.nft
            .apply(&self.ruleset())
            .map_err(|source| PolicyError::Nft {
                action: format!("installing table inet {TABLE}"),
                source,
            })?;
        tracing::info!(table = TABLE, uplinks = ?self.cfg.uplinks, "egress policy installed");
        Ok(())
    }

    /// Deletes `table inet kiln`; Ok if it is not there.
    pub fn remove(&self) -> Result<(), PolicyError> {
        match self.nft.apply(&format!("delete table inet {TABLE}\n")) {
            Err(e) if !e.is_not_found() => Err(PolicyError::Nft {
                action: format!("deleting table inet {TABLE}"),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Whether `table inet kiln` exists (only that table is listed).
    pub fn is_installed(&self) -> Result<bool, PolicyError> {
        match self.nft.list_json(&["list", "table", "inet", TABLE]) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(PolicyError::Nft {
                action: format!("listing table inet {TABLE}"),
                source: e,
            }),
        }
    }

    /// Adds one VM's elements (its addresses, resolvers, allowlist) in one
    /// transaction. Fails with [`PolicyError::NotInstalled`] when the table
    /// is missing. Adding the same rules again changes nothing.
    pub fn add_vm(&self, vm: &VmRules) -> Result<(), PolicyError> {
        let elements = self.elements_of(vm)?;
        match self.nft.apply(&elements.script("add")) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() && !self.is_installed()? => Err(PolicyError::NotInstalled {
                ifname: vm.ifname.clone(),
            }),
            Err(e) => Err(PolicyError::Nft {
                action: format!("adding VM {:?} to table inet {TABLE}", vm.ifname),
                source: e,
            }),
        }
    }

    /// Deletes exactly the elements [`Policy::add_vm`] added for `vm` (pass
    /// the same rules), in one transaction: all of them or none.
    ///
    /// If the table is missing, there is nothing to remove: Ok. If the table
    /// is there but some element is not (never added, already removed, or
    /// other rules than were added): [`PolicyError::VmNotPresent`], and
    /// nothing was deleted.
    pub fn remove_vm(&self, vm: &VmRules) -> Result<(), PolicyError> {
        let elements = self.elements_of(vm)?;
        match self.nft.apply(&elements.script("delete")) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => match self.is_installed()? {
                false => Ok(()),
                true => Err(PolicyError::VmNotPresent {
                    ifname: vm.ifname.clone(),
                    source: e,
                }),
            },
            Err(e) => Err(PolicyError::Nft {
                action: format!("removing VM {:?} from table inet {TABLE}", vm.ifname),
                source: e,
            }),
        }
    }

    /// The named counters: `nft -j list counters table inet kiln`.
    pub fn counters(&self) -> Result<DropCounters, PolicyError> {
        match self
            .nft
            .list_json(&["list", "counters", "table", "inet", TABLE])
        {
            Ok(json) => DropCounters::from_nft_json(&json),
            Err(e) if e.is_not_found() => Err(PolicyError::NoCounters),
            Err(e) => Err(PolicyError::Nft {
                action: format!("listing the counters of table inet {TABLE}"),
                source: e,
            }),
        }
    }

    /// `vm`'s elements, checked against this policy's config too.
    fn elements_of(&self, vm: &VmRules) -> Result<Elements, PolicyError> {
        let prefix = &self.cfg.vm_ifname_prefix;
        if !vm.ifname.starts_with(prefix.as_str()) || vm.ifname.len() == prefix.len() {
            return Err(PolicyError::VmIfnameOutsidePrefix {
                ifname: vm.ifname.clone(),
                prefix: prefix.clone(),
            });
        }
        if let (false, Some(addr)) = (self.cfg.ipv6, vm.ipv6) {
            return Err(PolicyError::Ipv6Off {
                ifname: vm.ifname.clone(),
                addr,
            });
        }
        Elements::of(vm)
    }
}

/// One VM's set elements, rendered (`"kv-x" . 10.200.0.2`), per set.
/// Duplicates are left out (deleting an element twice in one transaction
/// fails), and so are allowlist entries another entry covers (nftables
/// refuses to insert an interval inside another).
#[derive(Debug, Default)]
struct Elements {
    vm4: Vec<String>,
    vm6: Vec<String>,
    dns4: Vec<String>,
    dns6: Vec<String>,
    allow4: Vec<String>,
    allow6: Vec<String>,
}

impl Elements {
    fn of(vm: &VmRules) -> Result<Self, PolicyError> {
        check_vm_ifname(&vm.ifname)?;
        if vm.ipv4.is_none() && vm.ipv6.is_none() {
            return Err(PolicyError::NoVmAddress {
                ifname: vm.ifname.clone(),
            });
        }
        let key = |rest: String| format!("\"{}\" . {rest}", vm.ifname);
        let mut e = Elements::default();
        e.vm4.extend(vm.ipv4.map(|a| key(a.to_string())));
        e.vm6.extend(vm.ipv6.map(|a| key(a.to_string())));
        for resolver in dedup(&vm.dns) {
            match resolver {
                IpAddr::V4(a) => e.dns4.push(key(a.to_string())),
                IpAddr::V6(a) => e.dns6.push(key(a.to_string())),
            }
        }
        for allow in allow_elements(&vm.ifname, &vm.allow)? {
            let (lo, hi) = allow.ports();
            let ports = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            let rendered = key(format!("{} . {ports}", allow.net));
            match allow.net {
                IpNet::V4(_) => e.allow4.push(rendered),
                IpNet::V6(_) => e.allow6.push(rendered),
            }
        }
        Ok(e)
    }

    /// `add element …` / `delete element …`, one line per non-empty set.
    fn script(&self, verb: &str) -> String {
        let sets = [
            ("vm4", &self.vm4),
            ("vm6", &self.vm6),
            ("dns4", &self.dns4),
            ("dns6", &self.dns6),
            ("allow4", &self.allow4),
            ("allow6", &self.allow6),
        ];
        sets.iter()
            .filter(|(_, elements)| !elements.is_empty())
            .map(|(set, elements)| {
                format!(
                    "{verb} element inet {TABLE} {set} {{ {} }}\n",
                    elements.join(", ")
                )
            })
            .collect()
    }
}

/// `allow` with host bits cleared (`10.1.2.3/24` is `10.1.2.0/24`, as nft
/// would read it), without duplicates and without entries another one
/// covers; refuses partial overlaps nftables would refuse (see [`Allow::clashes_with`]).
fn allow_elements(ifname: &str, allow: &[Allow]) -> Result<Vec<Allow>, PolicyError> {
    let trunc = |a: &Allow| Allow {
        net: a.net.trunc(),
        port: a.port,
    };
    let all: Vec<Allow> = dedup(&allow.iter().map(trunc).collect::<Vec<_>>());
    let kept: Vec<Allow> = all
        .iter()
        .enumerate()
        // Without duplicates, no two entries cover each other.
        .filter(|(i, a)| !all.iter().enumerate().any(|(j, b)| j != *i && b.covers(a)))
        .map(|(_, a)| *a)
        .collect();
    for (i, a) in kept.iter().enumerate() {
        if let Some(b) = kept[i + 1..].iter().find(|b| a.clashes_with(b)) {
            return Err(PolicyError::AllowOverlap {
                ifname: ifname.to_owned(),
                a: *a,
                b: *b,
            });
        }
    }
    Ok(kept)
}

/// `items` in their order, each once.
fn dedup<T: Copy + Eq + std::hash::Hash>(items: &[T]) -> Vec<T> {
    let mut seen = HashSet::new();
    items.iter().copied().filter(|x| seen.insert(*x)).collect()
}

fn check_vm_ifname(ifname: &str) -> Result<(), PolicyError> {
    let bad = |reason| PolicyError::BadVmIfname {
        ifname: ifname.to_owned(),
        reason,
    };
    if ifname.is_empty() || ifname.len() > IFNAME_MAX {
        return Err(bad("must be 1 to 15 bytes long"));
    }
    if !ifname.bytes().all(is_vm_ifname_byte) {
        return Err(bad("may hold only a-z, 0-9 and '-'"));
    }
    Ok(())
}

fn check_vm_prefix(prefix: &str) -> Result<(), PolicyError> {
    let bad = |reason| PolicyError::BadVmPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    if prefix.is_empty() || prefix.len() >= IFNAME_MAX {
        return Err(bad(
            "must be 1 to 14 bytes long (VM interfaces need room after it)",
        ));
    }
    if !prefix.bytes().all(is_vm_ifname_byte) {
        return Err(bad("may hold only a-z, 0-9 and '-'"));
    }
    Ok(())
}

fn check_uplink(name: &str) -> Result<(), PolicyError> {
    let bad = |reason| PolicyError::BadUplink {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(bad("must be 1 to 15 bytes long"));
    }
    if name == "." || name == ".." {
        return Err(bad("is not an interface name"));
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !name.bytes().all(ok) {
        return Err(bad("may hold only A-Z, a-z, 0-9, '-', '_' and '.'"));
    }
    Ok(())
}

fn is_vm_ifname_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// `{ a, b, … }` element list of a deny set.
/// Whether `net` reaches into a range the policy denies (private,
/// link-local, loopback, ...): an allowlist entry that does must say what
/// it is for.
pub fn reaches_denied(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => DENY4.iter().any(|(a, len)| {
            Ipv4Net::new(*a, *len)
                .is_ok_and(|d| d.contains(&n.network()) || n.contains(&d.network()))
        }),
        IpNet::V6(n) => DENY6.iter().any(|(a, len)| {
            Ipv6Net::new(*a, *len)
                .is_ok_and(|d| d.contains(&n.network()) || n.contains(&d.network()))
        }),
    }
}

fn deny_elements<A: fmt::Display>(ranges: &[(A, u8)]) -> String {
    let items: Vec<String> = ranges.iter().map(|(a, len)| format!("{a}/{len}")).collect();
    items.join(", ")
}

/// The whole table, preceded by the two lines that make the script replace
/// an existing one: `table inet kiln {}` creates it if absent (so the
/// delete cannot fail) and `delete table` removes it, all in one transaction.
/// nft 1.0.6 wants a newline or `;` before a block's closing `}`.
fn render_ruleset(cfg: &PolicyConfig) -> String {
    let vm = format!("\"{}*\"", cfg.vm_ifname_prefix);
    let uplinks: Vec<String> = cfg.uplinks.iter().map(|u| format!("\"{u}\"")).collect();
    let uplinks = uplinks.join(", ");
    let deny4 = deny_elements(&DENY4);
    let deny6 = deny_elements(&DENY6);
    let counters: String = DropCounters::NAMES
        .iter()
        .map(|name| format!("  counter {name} {{}}\n"))
        .collect();
    let ndp = if cfg.ipv6 {
        "    # IPv6 on the veth needs neighbour discovery with the host.
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept
"
    } else {
        ""
    };
    let nat66 = if cfg.nat66 {
        format!(
            "    # nat66: the VMs' IPv6 leaves as the uplink's address too.
    meta nfproto ipv6 iifname {vm} oifname @uplinks masquerade
"
        )
    } else {
        String::new()
    };
    format!(
        "table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
  # Interfaces VM traffic may leave the host by (and be masqueraded on).
  set uplinks {{ type ifname; elements = {{ {uplinks} }}; }}
  # Each VM's own addresses, keyed by its host-side veth: any other source is spoofed.
  set vm4 {{ type ifname . ipv4_addr; }}
  set vm6 {{ type ifname . ipv6_addr; }}
  # The resolvers each VM was given.
  set dns4 {{ type ifname . ipv4_addr; }}
  set dns6 {{ type ifname . ipv6_addr; }}
  # Each VM's allowlist: CIDR . port (all ports: 0-65535), tcp and udp.
  set allow4 {{ type ifname . ipv4_addr . inet_service; flags interval; }}
  set allow6 {{ type ifname . ipv6_addr . inet_service; flags interval; }}
  # This network, RFC 1918, CGNAT, loopback, link-local (cloud metadata),
  # IETF assignments, benchmarking, multicast, reserved.
  set deny4 {{ type ipv4_addr; flags interval; elements = {{ {deny4} }}; }}
  # Unspecified and loopback, the ways to IPv4 (v4-mapped, NAT64, 6to4),
  # unique local, link-local, multicast.
  set deny6 {{ type ipv6_addr; flags interval; elements = {{ {deny6} }}; }}

  # Why packets were dropped (and two kinds accepted): Policy::counters.
{counters}
  chain forward {{
    # Only VM traffic is judged; the rest of the host's forwarding is not Kiln's.
    type filter hook forward priority filter; policy accept;
    # Everything a VM sends through the host.
    iifname {vm} jump from_vm
    # Replies to connections the VM opened.
    oifname {vm} ct state established,related accept
    # Nobody opens connections to a VM.
    oifname {vm} counter name inbound drop
  }}

  chain from_vm {{
    # Conntrack cannot place it in any connection.
    ct state invalid counter name invalid drop
    # IPv4 from any address but the VM's own (`ip saddr` implies IPv4 packets only).
    iifname . ip saddr != @vm4 counter name spoofed drop
    # The same for IPv6: a VM without an IPv6 address sends no IPv6 at all.
    iifname . ip6 saddr != @vm6 counter name spoofed drop
    # The rest of a connection that was judged when it began.
    ct state established,related accept
    # VMs never reach each other (allowlists cannot change that).
    oifname {vm} counter name vm_to_vm drop
    # The VM's allowlist, before the denials below and through any interface.
    meta l4proto {{ tcp, udp }} iifname . ip daddr . th dport @allow4 counter name allowlisted accept
    meta l4proto {{ tcp, udp }} iifname . ip6 daddr . th dport @allow6 counter name allowlisted accept
    # DNS to the VM's own resolvers, before the private denial: the host's
    # upstream resolver is often private (10.0.0.2, 169.254.169.253 in clouds).
    meta l4proto {{ tcp, udp }} th dport 53 iifname . ip daddr @dns4 counter name dns_allowed accept
    meta l4proto {{ tcp, udp }} th dport 53 iifname . ip6 daddr @dns6 counter name dns_allowed accept
    # Any other DNS or DNS over TLS: the VM resolves through its own resolvers only.
    meta l4proto {{ tcp, udp }} th dport {{ 53, 853 }} counter name dns_blocked drop
    # Private, link-local (cloud metadata), loopback, multicast, reserved.
    ip daddr @deny4 counter name private drop
    ip6 daddr @deny6 counter name private drop
    # Out of anything but an uplink (e.g. the host's other networks).
    oifname != @uplinks counter name not_uplink drop
    # The public internet.
    accept
  }}

  chain input {{
    # Only VM traffic is judged; the host's own is not Kiln's.
    type filter hook input priority filter; policy accept;
    # VM traffic to any of the host's own addresses arrives here, not in forward.
    iifname {vm} jump to_host
  }}

  chain to_host {{
    # Replies to connections the host opened.
    ct state established,related accept
{ndp}    # Nothing else: no service of the host is a VM's business.
    counter name to_host drop
  }}

  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    # The VMs' IPv4 addresses are private: they leave as the uplink's address.
    meta nfproto ipv4 iifname {vm} oifname @uplinks masquerade
{nat66}  }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PolicyConfig {
        PolicyConfig {
            uplinks: vec!["eth0".into()],
            vm_ifname_prefix: DEFAULT_VM_IFNAME_PREFIX.into(),
            ipv6: true,
            nat66: false,
        }
    }

    fn vm() -> VmRules {
        VmRules {
            ifname: "kv-0123456789ab".into(),
            ipv4: Some(Ipv4Addr::new(10, 200, 0, 2)),
            ipv6: None,
            dns: vec![],
            allow: vec![],
        }
    }

    fn allow(s: &str) -> Allow {
        s.parse().expect(s)
    }

    #[test]
    fn ruleset_holds_every_deny_range_and_only_those() {
        let text = render_ruleset(&config());
        let deny4 =
            "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, \
                     192.0.0.0/24, 192.168.0.0/16, 198.18.0.0/15, 224.0.0.0/4, 240.0.0.0/4";
        let deny6 = "::/127, ::ffff:0:0/96, 64:ff9b::/96, 64:ff9b:1::/48, 2002::/16, fc00::/7, fe80::/10, ff00::/8";
        for (set, expected) in [("deny4", deny4), ("deny6", deny6)] {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("set {set} ")))
                .expect(set);
            let inside = line
                .split_once("elements = {")
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(elements, _)| elements)
                .expect("elements");
            let parse = |list: &str| -> Vec<IpNet> {
                list.split(',')
                    .map(|s| s.trim().parse().expect(s))
                    .collect()
            };
            assert_eq!(parse(inside), parse(expected), "{set}");
        }
    }

    #[test]
    fn ruleset_uses_the_configured_prefix_and_uplinks_and_the_ipv6_switches() {
        let mut cfg = config();
        cfg.vm_ifname_prefix = "vmx-".into();
        cfg.uplinks = vec!["eth0".into(), "bond0.100".into()];
        cfg.ipv6 = false;
        let text = render_ruleset(&cfg);
        assert!(!text.contains("kv-"));
        assert!(text.contains("iifname \"vmx-*\" jump from_vm"));
        assert!(text.contains("elements = { \"eth0\", \"bond0.100\" }"));
        assert!(!text.contains("nd-neighbor-solicit"));
        assert!(!text.contains("meta nfproto ipv6"));
        cfg.ipv6 = true;
        cfg.nat66 = true;
        let text = render_ruleset(&cfg);
        assert!(text.contains("nd-neighbor-solicit"));
        assert!(text.contains("meta nfproto ipv6 iifname \"vmx-*\" oifname @uplinks masquerade"));
        for name in DropCounters::NAMES {
            assert!(text.contains(&format!("counter {name} {{}}")), "{name}");
        }
    }

    #[test]
    fn config_validation_names_what_is_wrong() {
        let with = |f: fn(&mut PolicyConfig)| {
            let mut cfg = config();
            f(&mut cfg);
            cfg.validate().map_err(|e| e.to_string())
        };
        assert_eq!(with(|_| {}), Ok(()));
        let err = with(|c| c.uplinks.clear()).expect_err("no uplinks");
        assert!(err.contains("at least one uplink"), "{err}");
        let err = with(|c| c.uplinks = vec!["eth0\" accept".into()]).expect_err("quote");
        assert!(err.contains("\"eth0\\\" accept\""), "{err}");
        let err = with(|c| c.uplinks = vec!["kv-eth".into()]).expect_err("prefix clash");
        assert!(err.contains("kv-eth"), "{err}");
        let err = with(|c| c.vm_ifname_prefix = "KV*".into()).expect_err("prefix chars");
        assert!(err.contains("\"KV*\""), "{err}");
        with(|c| c.vm_ifname_prefix = String::new()).expect_err("empty prefix");
        with(|c| c.uplinks = vec!["a-very-long-uplink".into()]).expect_err("16 bytes");
    }

    #[test]
    fn vm_rules_refuse_bad_interface_names() {
        for bad in [
            "",
            "kv-0123456789abc",
            "kv-ABC",
            "kv-a b",
            "kv-\"x",
            "kv-*",
            "kv-a.b",
            "kv-é",
        ] {
            let rules = VmRules {
                ifname: bad.into(),
                ..vm()
            };
            let err = rules.validate().expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        vm().validate().expect("kv-0123456789ab is fine");
        let err = VmRules { ipv4: None, ..vm() }
            .validate()
            .expect_err("no address")
            .to_string();
        assert!(err.contains("neither an IPv4 nor an IPv6 address"), "{err}");
    }

    #[test]
    fn allow_parses_every_form() {
        let cases = [
            ("10.1.2.3/32:5000", "10.1.2.3/32", Some(5000)),
            ("10.1.2.0/24", "10.1.2.0/24", None),
            ("[fd00::1]:443", "fd00::1/128", Some(443)),
            ("[fd00::/64]:443", "fd00::/64", Some(443)),
            ("fd00::/64", "fd00::/64", None),
            ("fd00::/64:443", "fd00::/64", Some(443)),
            ("10.0.0.5", "10.0.0.5/32", None),
            ("10.0.0.5:80", "10.0.0.5/32", Some(80)),
            ("fd00::1", "fd00::1/128", None),
            (" 10.0.0.5 ", "10.0.0.5/32", None),
        ];
        for (input, net, port) in cases {
            let parsed = allow(input);
            assert_eq!(parsed.net, net.parse::<IpNet>().expect(net), "{input}");
            assert_eq!(parsed.port, port, "{input}");
            assert_eq!(allow(&parsed.to_string()), parsed, "{input} round trip");
        }
    }

    #[test]
    fn allow_refuses_with_messages_naming_the_value() {
        let cases = [
            ("", "is empty"),
            ("example.com", "not an IP address"),
            ("10.1.2.3/24", "did you mean 10.1.2.0/24"),
            ("10.1.2.0/33", "not a CIDR"),
            ("10.0.0.5:0", "1 to 65535"),
            ("10.0.0.5:65536", "1 to 65535"),
            ("10.0.0.5:http", "1 to 65535"),
            ("[fd00::1", "no ']'"),
            ("[fd00::1]443", "after ']'"),
            ("[fd00::zz]:443", "not an IP address"),
            ("fd00::1::2", "not an IP address"),
            ("10.0.0.5/24:80", "host bits"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<Allow>().expect_err(input).to_string();
            assert!(err.contains(&format!("{input:?}")), "{err}");
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn elements_render_keys_ports_and_leave_out_duplicates_and_covered_entries() {
        let rules = VmRules {
            ipv6: Some("fd00:200::2".parse().expect("v6")),
            dns: vec![
                "10.0.0.2".parse().expect("v4"),
                "10.0.0.2".parse().expect("v4"),
                "fd00::53".parse().expect("v6"),
            ],
            allow: vec![
                allow("10.1.2.3:5000"),
                allow("10.1.0.0/16"),
                allow("10.99.0.5:5000"),
                allow("10.99.0.5:5000"),
                allow("[fd00::1]:443"),
            ],
            ..vm()
        };
        let script = Elements::of(&rules).expect("valid").script("add");
        assert_eq!(
            script,
            "add element inet kiln vm4 { \"kv-0123456789ab\" . 10.200.0.2 }\n\
             add element inet kiln vm6 { \"kv-0123456789ab\" . fd00:200::2 }\n\
             add element inet kiln dns4 { \"kv-0123456789ab\" . 10.0.0.2 }\n\
             add element inet kiln dns6 { \"kv-0123456789ab\" . fd00::53 }\n\
             add element inet kiln allow4 { \"kv-0123456789ab\" . 10.1.0.0/16 . 0-65535, \"kv-0123456789ab\" . 10.99.0.5/32 . 5000 }\n\
             add element inet kiln allow6 { \"kv-0123456789ab\" . fd00::1/128 . 443 }\n"
        );
    }

    #[test]
    fn partly_overlapping_allow_entries_are_refused_by_name() {
        let rules = VmRules {
            allow: vec![allow("10.1.0.0/16:80"), allow("10.1.0.0/24")],
            ..vm()
        };
        let err = rules.validate().expect_err("overlap").to_string();
        assert!(
            err.contains("10.1.0.0/16:80") && err.contains("10.1.0.0/24"),
            "{err}"
        );
        // Disjoint ports on the same network, and nested networks that share
        // no first or last key, are fine.
        let rules = VmRules {
            allow: vec![
                allow("10.1.0.0/16:80"),
                allow("10.1.0.0/16:443"),
                allow("10.1.2.0/24"),
            ],
            ..vm()
        };
        rules.validate().expect("no clash");
    }

    #[test]
    fn counters_are_read_from_nfts_json_and_missing_ones_are_errors() {
        let mut objects = vec![serde_json::json!({"metainfo": {"version": "1.0.6"}})];
        for (i, name) in DropCounters::NAMES.iter().enumerate() {
            objects.push(serde_json::json!({"counter": {
                "family": "inet", "name": name, "table": "kiln", "handle": i,
                "packets": i as u64, "bytes": 100 * i as u64,
            }}));
        }
        objects.push(serde_json::json!({"counter": {
            "family": "inet", "name": "spoofed", "table": "other", "packets": 999, "bytes": 1
        }}));
        let json = serde_json::json!({ "nftables": objects });
        let counters = DropCounters::from_nft_json(&json).expect("all there");
        assert_eq!(
            counters.vm_to_vm,
            Count {
                packets: 2,
                bytes: 200
            }
        );
        assert_eq!(counters.spoofed.packets, 0);
        let listed: Vec<_> = counters.iter().collect();
        assert_eq!(listed.len(), DropCounters::NAMES.len());
        assert_eq!(listed[9], ("allowlisted", 9, 900));

        objects.retain(|o| o["counter"]["name"] != "inbound");
        let err = DropCounters::from_nft_json(&serde_json::json!({ "nftables": objects }))
            .expect_err("inbound missing");
        assert!(err.to_string().contains("\"inbound\""), "{err}");
    }
}
