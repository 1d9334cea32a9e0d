//! `kiln doctor`'s network checks: what VM networking ([`crate::net`])
//! needs from the host, and what on the host would defeat it.
//!
//! - the `nft` binary, and nf_tables in the kernel (`nft list tables`);
//! - IPv4 forwarding: information only, Kiln turns it on at start;
//! - `/dev/net/tun`, for the VMs' taps;
//! - an uplink: a default route's link, and its MTU (the VMs' MTU);
//! - the DNS resolvers VMs would get ([`crate::net::dns::host_resolvers`]);
//! - another firewall's forward policy: an accept in `table inet kiln` ends
//!   only Kiln's own chain, and every other base chain on the forward hook
//!   still judges the packet. An iptables `FORWARD` chain with policy
//!   `DROP` (Docker sets one) or an nftables base chain on the forward hook
//!   with policy `drop` in another table drops VM traffic Kiln accepts,
//!   unless it accepts the VMs' `kv-*` links itself;
//! - the address pool against the host's addresses and routes.
//!
//! Every check runs in the calling thread's network namespace: the
//! commands it starts, the files under `/proc/sys/net` it reads and the
//! netlink socket it opens all belong to the namespace of the thread that
//! makes them. Tests run the checks on a thread that joined a throwaway
//! namespace. The decisions are pure functions of the commands' text and
//! JSON ([`parse_iptables`], [`nft_forward_drops`], [`nft_chain_accepts`]),
//! tested on given input.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::{IpNet, Ipv4Net};

use super::{Finding, Level};
use crate::net::dns::{self, DnsError};
use crate::net::host::{self, HostView};
use crate::net::link::Netlink;
use crate::net::nft::find_binary;
use crate::net::{policy, HOST_IF_PREFIX};

/// IPv4 forwarding of the calling thread's namespace.
pub const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The tun driver's device, which every VM's tap is made through.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// The iptables front ends, each its own view of the kernel's rules: the
/// legacy one (x_tables) and the nf_tables one. `iptables` is whichever of
/// them the system's alternative points to.
const IPTABLES: [&str; 3] = ["iptables-legacy", "iptables-nft", "iptables"];

/// The VMs' host-side links in iptables' wildcard syntax, and in nft's.
const IPT_VM_IFS: &str = "kv-+";
const NFT_VM_IFS: &str = "kv-*";

/// What the network checks look at.
#[derive(Debug, Clone)]
pub struct NetCheckConfig {
    /// The address pool VMs' /30 links come from.
    pub pool4: Ipv4Net,
    /// The resolver lists VMs' resolvers are taken from, first usable wins.
    pub resolv_files: Vec<PathBuf>,
    pub tun_device: PathBuf,
}

impl Default for NetCheckConfig {
    fn default() -> Self {
        NetCheckConfig {
            pool4: crate::net::DEFAULT_POOL4
                .parse()
                .unwrap_or_else(|_| Ipv4Net::default()),
            resolv_files: vec![
                PathBuf::from(dns::RESOLV_CONF),
                PathBuf::from(dns::RESOLVED_UPSTREAMS),
            ],
            tun_device: PathBuf::from(TUN_DEVICE),
        }
    }
}

/// Every network check, in the calling thread's network namespace.
pub fn check_network(cfg: &NetCheckConfig) -> Vec<Finding> {
    let nft = find_binary("nft");
    let mut out = vec![check_nft_binary(nft.as_deref())];
    out.push(check_nf_tables(nft.as_deref()));
    out.push(check_forwarding(Path::new(IPV4_FORWARD)));
    out.push(check_tun(&cfg.tun_device));
    match read_host_view() {
        Ok(view) => {
            out.push(check_uplink(&view));
            out.push(check_pool(&view, cfg.pool4));
        }
        Err(e) => {
            for name in ["uplink", "address pool"] {
                out.push(Finding::problem(
                    name,
                    Level::Warn,
                    format!("cannot read the host's links, addresses and routes: {e}"),
                    "run `kiln doctor` on the host Kiln runs on, where netlink answers",
                ));
            }
        }
    }
    out.push(check_resolvers(&cfg.resolv_files));
    out.push(check_forward_policy(nft.as_deref()));
    out
}

/// The first line a command printed on success; its error otherwise.
fn run(binary: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(binary)
        .args(args)
        // Messages are matched on ("Operation not permitted").
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned();
    Err(format!(
        "`{} {}` failed ({}): {first}",
        binary.display(),
        args.join(" "),
        out.status
    ))
}

fn not_root(message: &str) -> bool {
    message.contains("Operation not permitted") || message.contains("Permission denied")
}

const ROOT_FIX: &str = "run `kiln doctor` as root, as Kiln runs: VM networking needs CAP_NET_ADMIN";

pub fn check_nft_binary(nft: Option<&Path>) -> Finding {
    const FIX: &str = "apt-get install nftables (Kiln's egress policy for VMs is an nftables table; `--network none` runs VMs without a network)";
    let Some(nft) = nft else {
        return Finding::problem(
            "nftables",
            Level::Fail,
            "no `nft` in $PATH, /usr/sbin or /sbin",
            FIX,
        );
    };
    match run(nft, &["--version"]) {
        Ok(v) => Finding::ok(
            "nftables",
            format!(
                "{} ({})",
                v.lines().next().unwrap_or("").trim(),
                nft.display()
            ),
        ),
        Err(e) => Finding::problem("nftables", Level::Fail, e, FIX),
    }
}

/// Whether this kernel does nf_tables: `nft list tables` answers.
pub fn check_nf_tables(nft: Option<&Path>) -> Finding {
    let Some(nft) = nft else {
        return Finding::problem(
            "nf_tables",
            Level::Fail,
            "not checked: no `nft`",
            "apt-get install nftables, then run `kiln doctor` again",
        );
    };
    match run(nft, &["list", "tables"]) {
        Ok(text) => {
            let tables: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter_map(|l| l.strip_prefix("table "))
                .collect();
            let kiln = format!("inet {}", policy::TABLE);
            let detail = if tables.is_empty() {
                "the kernel answers `nft list tables` (no tables yet)".to_owned()
            } else {
                format!(
                    "the kernel answers `nft list tables`: {}{}",
                    tables.join(", "),
                    if tables.contains(&kiln.as_str()) {
                        " (inet kiln: a Kiln process runs, or one crashed)"
                    } else {
                        ""
                    }
                )
            };
            Finding::ok("nf_tables", detail)
        }
        Err(e) if not_root(&e) => Finding::problem("nf_tables", Level::Warn, e, ROOT_FIX),
        Err(e) => Finding::problem(
            "nf_tables",
            Level::Fail,
            e,
            "this kernel lacks nf_tables: `modprobe nf_tables`, or boot a kernel with CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET, CONFIG_NFT_CT, CONFIG_NFT_NAT and CONFIG_NFT_MASQ",
        ),
    }
}

/// `net.ipv4.ip_forward`: information only, Kiln turns it on at start.
pub fn check_forwarding(sysctl: &Path) -> Finding {
    match std::fs::read_to_string(sysctl) {
        Ok(v) if v.trim() == "1" => Finding::ok("ip forwarding", "net.ipv4.ip_forward is on"),
        Ok(v) => Finding::ok(
            "ip forwarding",
            format!(
                "net.ipv4.ip_forward is {} (off): Kiln turns it on when it starts, for the VMs' traffic",
                v.trim()
            ),
        ),
        Err(e) => Finding::problem(
            "ip forwarding",
            Level::Warn,
            format!("cannot read {}: {e}", sysctl.display()),
            "Kiln writes 1 there at start: mount /proc read-write (in a container, run Kiln with its own network namespace's sysctls writable)",
        ),
    }
}

/// The tun driver's device opens for reading and writing.
pub fn check_tun(device: &Path) -> Finding {
    let is_char = std::fs::metadata(device).map(|m| m.file_type().is_char_device());
    match (is_char, OpenOptions::new().read(true).write(true).open(device)) {
        (Ok(true) | Err(_), Ok(_)) => {
            Finding::ok("/dev/net/tun", format!("{} opens", device.display()))
        }
        (Ok(false), _) => Finding::problem(
            "/dev/net/tun",
            Level::Fail,
            format!("{} is not a character device", device.display()),
            "remove it and `modprobe tun` (the device is 10,200)",
        ),
        (_, Err(e)) if e.kind() == ErrorKind::PermissionDenied => Finding::problem(
            "/dev/net/tun",
            Level::Warn,
            format!("{}: {e}", device.display()),
            ROOT_FIX,
        ),
        (_, Err(e)) => Finding::problem(
            "/dev/net/tun",
            Level::Fail,
            format!("cannot open {}: {e}", device.display()),
            "`modprobe tun` (CONFIG_TUN); in a container, pass the device in (docker run --device /dev/net/tun)",
        ),
    }
}

/// The host's links, addresses and routes, read over netlink on a thread
/// of its own (in the caller's namespace), with a runtime of its own, so
/// this works from any caller, async or not.
fn read_host_view() -> Result<HostView, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting a runtime: {e}"))?;
            rt.block_on(async {
                let nl = Netlink::open(rt.handle()).map_err(|e| e.to_string())?;
                HostView::read(&nl).await.map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the netlink thread panicked".into()))
    })
}

/// The links VM traffic leaves by: the default routes'.
pub fn check_uplink(view: &HostView) -> Finding {
    match host::pick_uplinks(view, &[]) {
        Ok(links) => {
            let each: Vec<String> = links
                .iter()
                .map(|l| match view.mtu_of(std::slice::from_ref(l)) {
                    Some(mtu) => format!("{l} (MTU {mtu})"),
                    None => format!("{l} (MTU unknown)"),
                })
                .collect();
            let mtu = view.mtu_of(&links).unwrap_or(1500);
            if mtu < 1280 {
                return Finding::problem(
                    "uplink",
                    Level::Fail,
                    format!("{}: VMs would get MTU {mtu}", each.join(", ")),
                    "VMs need an MTU of at least 1280: raise the uplink's, or set `mtu = 1280` or more in [network]",
                );
            }
            Finding::ok(
                "uplink",
                format!(
                    "{} (the default route{}); VMs get MTU {mtu}",
                    each.join(", "),
                    if links.len() == 1 { "'s link" } else { "s' links" }
                ),
            )
        }
        Err(_) => Finding::problem(
            "uplink",
            Level::Fail,
            "no default route (IPv4 or IPv6): VM traffic has no link to leave by",
            "give the host a default route, or name the link VM traffic leaves by with `uplinks = [\"eth0\"]` in [network] (kiln run: --uplink IF)",
        ),
    }
}

/// The address pool overlaps none of the host's addresses and routes
/// (Kiln's own VM links aside).
pub fn check_pool(view: &HostView, pool: Ipv4Net) -> Finding {
    let net = IpNet::V4(pool);
    match view.overlap(net, &[HOST_IF_PREFIX]) {
        Some(hit) => Finding::problem(
            "address pool",
            Level::Fail,
            format!(
                "{pool} overlaps {} ({} on {}): VMs could not reach it, nor it them",
                hit.net, hit.what, hit.link
            ),
            "pick a range no address or route of the host uses: `pool = \"…\"` in [network] (kiln run and kiln doctor: --net-pool CIDR)",
        ),
        None => {
            let vms = 1u64 << 30u8.saturating_sub(pool.prefix_len()).min(32);
            Finding::ok(
                "address pool",
                format!("{pool}: free on this host ({vms} VMs' /30 links)"),
            )
        }
    }
}

/// The resolvers VMs would get.
pub fn check_resolvers(files: &[PathBuf]) -> Finding {
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    match dns::host_resolvers_from(&paths) {
        Ok(found) => Finding::ok(
            "vm dns",
            format!(
                "VMs get {} (the host's upstream resolvers; only these get port 53)",
                join_ips(&found)
            ),
        ),
        Err(DnsError::NoneUsable { checked }) => Finding::problem(
            "vm dns",
            Level::Fail,
            format!("{checked} list no resolver a VM can use (only loopback or link-local ones, or none)"),
            "name the VMs' resolvers with `dns = [\"IP\", ...]` in [network] (kiln run: --dns IP)",
        ),
    }
}

fn join_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which directions of VM traffic a firewall's rules accept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmAccepts {
    /// From the VMs: in on `kv-*`.
    pub outbound: bool,
    /// Back to them: out on `kv-*`, or every established connection.
    pub returning: bool,
}

impl VmAccepts {
    fn both(self) -> bool {
        self.outbound && self.returning
    }
}

/// What `iptables -S` (the filter table) says about forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesForward {
    /// `FORWARD`'s policy, e.g. `ACCEPT`, `DROP`.
    pub policy: String,
    /// `FORWARD` ends in an unconditional DROP or REJECT rule.
    pub drop_rule: bool,
    /// `FORWARD` jumps to `DOCKER-USER` (Docker runs).
    pub docker_user: bool,
    /// What `FORWARD` and `DOCKER-USER` accept of VM traffic.
    pub accepts: VmAccepts,
}

impl IptablesForward {
    /// Forwarded packets nobody accepted are dropped.
    pub fn drops(&self) -> bool {
        self.policy == "DROP" || self.drop_rule
    }
}

/// Whether an interface pattern (iptables' `+` or nft's `*` wildcard at
/// the end, or a plain name) matches every VM link.
fn covers_vm_links(pattern: &str, wildcard: char) -> bool {
    match pattern.strip_suffix(wildcard) {
        Some(stem) => HOST_IF_PREFIX.starts_with(stem),
        None => false,
    }
}

/// Parses `iptables -S` (every chain of the filter table).
pub fn parse_iptables(text: &str) -> Option<IptablesForward> {
    let mut policy = None;
    let mut drop_rule = false;
    let mut docker_user = false;
    let mut accepts = VmAccepts::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["-P", "FORWARD", p, ..] => policy = Some((*p).to_owned()),
            ["-A", "FORWARD", "-j", "DOCKER-USER"] => docker_user = true,
            ["-A", "FORWARD", "-j", "DROP" | "REJECT", ..] => drop_rule = true,
            ["-A", "FORWARD" | "DOCKER-USER", rest @ ..] => {
                let rule = Rule::of(rest);
                if rule.target == Some("ACCEPT") {
                    accepts.outbound |= rule.iface("-i").is_some_and(|p| covers_vm_links(p, '+'));
                    accepts.returning |= rule.iface("-o").is_some_and(|p| covers_vm_links(p, '+'))
                        || (rule.established
                            && rule.iface("-i").is_none()
                            && rule.iface("-o").is_none());
                }
            }
            _ => {}
        }
    }
    Some(IptablesForward {
        policy: policy?,
        drop_rule,
        docker_user,
        accepts,
    })
}

/// One iptables rule's words after `-A CHAIN`.
struct Rule<'a> {
    words: &'a [&'a str],
    target: Option<&'a str>,
    established: bool,
}

impl<'a> Rule<'a> {
    fn of(words: &'a [&'a str]) -> Self {
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1).copied())
        };
        Rule {
            words,
            target: after("-j"),
            established: after("--ctstate")
                .or_else(|| after("--state"))
                .is_some_and(|s| s.split(',').any(|x| x == "ESTABLISHED")),
        }
    }

    /// The interface given with `flag` (`-i`, `-o`), unless negated.
    fn iface(&self, flag: &str) -> Option<&'a str> {
        let i = self.words.iter().position(|w| *w == flag)?;
        if i > 0 && self.words[i - 1] == "!" {
            return None;
        }
        self.words.get(i + 1).copied()
    }
}

/// A base chain of another table on the forward hook that drops by policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub family: String,
    pub table: String,
    pub name: String,
}

impl std::fmt::Display for NftChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {} {} chain {}",
            self.family, self.table, self.name
        )
    }
}

/// The forward-hook base chains with policy drop in `nft -j list chains`,
/// but Kiln's own (`inet kiln`). Only the families whose forward hook sees
/// routed IP traffic count (not `bridge`, not `netdev`).
pub fn nft_forward_drops(listing: &serde_json::Value) -> Vec<NftChain> {
    let Some(items) = listing.get("nftables").and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("hook").and_then(|h| h.as_str()) == Some("forward"))
        .filter(|c| c.get("policy").and_then(|p| p.as_str()) == Some("drop"))
        .filter_map(|c| {
            let s = |k: &str| c.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            Some(NftChain {
                family: s("family")?,
                table: s("table")?,
                name: s("name")?,
            })
        })
        .filter(|c| matches!(c.family.as_str(), "ip" | "ip6" | "inet"))
        .filter(|c| !(c.family == "inet" && c.table == policy::TABLE))
        .collect()
}

/// What the rules of one chain (`nft -j list chain FAMILY TABLE NAME`)
/// accept of VM traffic: a rule with an `iifname` match covering `kv-*`
/// and an accept verdict lets the VMs out; one with `oifname` covering it,
/// or a bare `ct state established` accept, lets their replies back.
pub fn nft_chain_accepts(listing: &serde_json::Value) -> VmAccepts {
    let mut accepts = VmAccepts::default();
    let Some(items) = listing.get("nftables").and_then(|v| v.as_array()) else {
        return accepts;
    };
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let Some(exprs) = rule.get("expr").and_then(|e| e.as_array()) else {
            continue;
        };
        if !exprs.iter().any(|e| e.get("accept").is_some()) {
            continue;
        }
        let mut iif = None;
        let mut oif = None;
        let mut established = false;
        for m in exprs.iter().filter_map(|e| e.get("match")) {
            let op = m.get("op").and_then(|o| o.as_str()).unwrap_or("==");
            if op != "==" && op != "in" {
                continue;
            }
            let left = m.get("left");
            let right = m.get("right");
            let meta = left
                .and_then(|l| l.get("meta"))
                .and_then(|x| x.get("key"))
                .and_then(|k| k.as_str());
            let ct = left
                .and_then(|l| l.get("ct"))
                .and_then(|x| x.get("key"))
                .and_then(|k| k.as_str());
            let text = right.and_then(|r| r.as_str());
            match (meta, ct) {
                (Some("iifname"), _) => iif = Some(text.is_some_and(|p| covers_vm_links(p, '*'))),
                (Some("oifname"), _) => oif = Some(text.is_some_and(|p| covers_vm_links(p, '*'))),
                (_, Some("state")) => {
                    established = right.is_some_and(|r| r.to_string().contains("established"))
                }
                _ => {}
            }
        }
        accepts.outbound |= iif == Some(true);
        accepts.returning |= oif == Some(true) || (established && iif.is_none() && oif.is_none());
    }
    accepts
}

/// One firewall that drops VM traffic Kiln accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blocker {
    Iptables {
        binary: String,
        forward: IptablesForward,
    },
    Nft {
        chain: NftChain,
        accepts: VmAccepts,
    },
}

impl Blocker {
    fn describe(&self) -> String {
        match self {
            Blocker::Iptables { binary, forward } => format!(
                "{binary}: FORWARD {}{}",
                if forward.policy == "DROP" {
                    "policy DROP".to_owned()
                } else {
                    "ends in a DROP/REJECT rule".to_owned()
                },
                if forward.docker_user {
                    " (Docker's)"
                } else {
                    ""
                }
            ),
            Blocker::Nft { chain, .. } => format!("nft: {chain} (hook forward, policy drop)"),
        }
    }

    fn fix(&self) -> String {
        match self {
            Blocker::Iptables { binary, forward } => {
                let chain = if forward.docker_user {
                    "DOCKER-USER"
                } else {
                    "FORWARD"
                };
                let mut cmds = Vec::new();
                if !forward.accepts.outbound {
                    cmds.push(format!("`{binary} -I {chain} -i {IPT_VM_IFS} -j ACCEPT`"));
                }
                if !forward.accepts.returning {
                    cmds.push(format!(
                        "`{binary} -I {chain} -o {IPT_VM_IFS} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`"
                    ));
                }
                format!(
                    "accept the VMs' links in {chain}{}: {} (make it persistent{})",
                    if forward.docker_user {
                        ", which Docker keeps for its users' rules"
                    } else {
                        ""
                    },
                    cmds.join(" and "),
                    if forward.docker_user {
                        ", e.g. a unit run after docker.service"
                    } else {
                        ", e.g. with iptables-persistent"
                    }
                )
            }
            Blocker::Nft { chain, accepts } => {
                let NftChain {
                    family,
                    table,
                    name,
                } = chain;
                let mut cmds = Vec::new();
                if !accepts.outbound {
                    cmds.push(format!(
                        "`nft insert rule {family} {table} {name} iifname \"{NFT_VM_IFS}\" accept`"
                    ));
                }
                if !accepts.returning {
                    cmds.push(format!(
                        "`nft insert rule {family} {table} {name} oifname \"{NFT_VM_IFS}\" ct state established,related accept`"
                    ));
                }
                format!(
                    "accept the VMs' links in that chain: {} (and in the file that defines the table, e.g. /etc/nftables.conf)",
                    cmds.join(" and ")
                )
            }
        }
    }
}

/// Every firewall on the forward hook that would drop VM traffic Kiln
/// accepts, and what it was checked with.
pub fn check_forward_policy(nft: Option<&Path>) -> Finding {
    const NAME: &str = "forward policy";
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    let mut blockers = Vec::new();
    // iptables-nft's tables are also nft's (`ip filter FORWARD`): told
    // about through iptables, whose listing shows DOCKER-USER's rules.
    let mut iptables_nft = false;
    let mut seen_backends = Vec::new();
    for name in IPTABLES {
        let Some(bin) = find_binary(name) else {
            continue;
        };
        // `iptables` is one of the other two: skip it when its backend was
        // listed already.
        let backend = match run(&bin, &["-V"]) {
            Ok(v) if v.contains("nf_tables") => "nf_tables",
            Ok(v) if v.contains("legacy") => "legacy",
            Ok(_) => name,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if seen_backends.contains(&backend) {
            continue;
        }
        seen_backends.push(backend);
        match run(&bin, &["-S"]) {
            Ok(text) => {
                checked.push(name.to_owned());
                iptables_nft |= backend == "nf_tables";
                if let Some(forward) = parse_iptables(&text) {
                    if forward.drops() && !forward.accepts.both() {
                        blockers.push(Blocker::Iptables {
                            binary: name.to_owned(),
                            forward,
                        });
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if let Some(nft) = nft {
        match run(nft, &["-j", "list", "chains"]) {
            Ok(text) => {
                checked.push("nft".to_owned());
                let listing: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                for chain in nft_forward_drops(&listing) {
                    let iptables_own =
                        matches!(chain.family.as_str(), "ip" | "ip6") && chain.table == "filter";
                    if iptables_nft && iptables_own && chain.name == "FORWARD" {
                        continue;
                    }
                    let accepts = run(
                        nft,
                        &[
                            "-j",
                            "list",
                            "chain",
                            &chain.family,
                            &chain.table,
                            &chain.name,
                        ],
                    )
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .map(|l| nft_chain_accepts(&l))
                    .unwrap_or_default();
                    if !accepts.both() {
                        blockers.push(Blocker::Nft { chain, accepts });
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if !blockers.is_empty() {
        let detail = format!(
            "{}: VM traffic Kiln's table accepts is dropped there (an accept ends only Kiln's own chain)",
            blockers
                .iter()
                .map(Blocker::describe)
                .collect::<Vec<_>>()
                .join("; ")
        );
        let fix = format!(
            "{}. Kiln's own table still drops what its policy forbids: a drop in any table is final",
            blockers
                .iter()
                .map(Blocker::fix)
                .collect::<Vec<_>>()
                .join("; ")
        );
        return Finding::problem(NAME, Level::Fail, detail, fix);
    }
    if checked.is_empty() {
        let why = if problems.is_empty() {
            "neither nft nor iptables is installed".to_owned()
        } else {
            problems.join("; ")
        };
        let fix = if problems.iter().any(|p| not_root(p)) {
            ROOT_FIX
        } else {
            "apt-get install nftables, then run `kiln doctor` again"
        };
        return Finding::problem(NAME, Level::Warn, format!("not checked: {why}"), fix);
    }
    Finding::ok(
        NAME,
        format!(
            "no other firewall drops forwarded VM traffic (checked: {}){}",
            checked.join(", "),
            if problems.is_empty() {
                String::new()
            } else {
                format!("; not checked: {}", problems.join("; "))
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables -S` on a host where Docker runs (its own rules trimmed).
    const DOCKER: &str = "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n\
        -N DOCKER\n-N DOCKER-ISOLATION-STAGE-1\n-N DOCKER-USER\n\
        -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
        -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
        -A FORWARD -i docker0 ! -o docker0 -j ACCEPT\n\
        -A DOCKER-USER -j RETURN\n";

    #[test]
    fn dockers_forward_drop_is_found_with_its_chain() {
        let f = parse_iptables(DOCKER).unwrap();
        assert_eq!(f.policy, "DROP");
        assert!(f.drops() && f.docker_user);
        assert_eq!(f.accepts, VmAccepts::default());
        let b = Blocker::Iptables {
            binary: "iptables".into(),
            forward: f,
        };
        assert_eq!(b.describe(), "iptables: FORWARD policy DROP (Docker's)");
        let fix = b.fix();
        assert!(
            fix.contains("`iptables -I DOCKER-USER -i kv-+ -j ACCEPT`"),
            "{fix}"
        );
        assert!(
            fix.contains(
                "`iptables -I DOCKER-USER -o kv-+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`"
            ),
            "{fix}"
        );
    }

    #[test]
    fn accepting_the_vm_links_clears_the_drop_and_half_is_told_apart() {
        let both = format!(
            "{DOCKER}-A DOCKER-USER -i kv-+ -j ACCEPT\n\
             -A DOCKER-USER -o kv-+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        );
        let f = parse_iptables(&both).unwrap();
        assert!(f.accepts.both(), "{f:?}");
        // Only the way out: the fix names only the way back.
        let half = format!("{DOCKER}-A DOCKER-USER -i kv-+ -j ACCEPT\n");
        let f = parse_iptables(&half).unwrap();
        assert_eq!(
            f.accepts,
            VmAccepts {
                outbound: true,
                returning: false
            }
        );
        let fix = Blocker::Iptables {
            binary: "iptables-legacy".into(),
            forward: f,
        }
        .fix();
        assert!(!fix.contains("-i kv-+"), "{fix}");
        assert!(
            fix.contains("iptables-legacy -I DOCKER-USER -o kv-+"),
            "{fix}"
        );
        // A negated match, or another interface, accepts nothing of the VMs'.
        let other =
            format!("{DOCKER}-A DOCKER-USER ! -i kv-+ -j ACCEPT\n-A FORWARD -i eth+ -j ACCEPT\n");
        assert!(!parse_iptables(&other).unwrap().accepts.outbound);
        // `-i k+` covers kv-*; `-i kv-ab+` does not.
        assert!(covers_vm_links("k+", '+') && covers_vm_links("kv-+", '+'));
        assert!(!covers_vm_links("kv-ab+", '+') && !covers_vm_links("kv-", '+'));
    }

    #[test]
    fn accepting_forward_or_a_final_drop_rule() {
        let open = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";
        let f = parse_iptables(open).unwrap();
        assert!(!f.drops());
        let closed = format!("{open}-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A FORWARD -j REJECT --reject-with icmp-host-prohibited\n");
        let f = parse_iptables(&closed).unwrap();
        assert!(f.drops() && !f.docker_user);
        // A bare established accept lets every reply back.
        assert_eq!(
            f.accepts,
            VmAccepts {
                outbound: false,
                returning: true
            }
        );
        assert!(parse_iptables("").is_none());
    }

    /// `nft -j list chains` with a drop chain of another table, Kiln's own,
    /// an accepting one, an input hook and a bridge chain.
    fn chains() -> serde_json::Value {
        serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "kiln", "name": "forward", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "nat", "name": "f", "handle": 2,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 3,
                       "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "bridge", "table": "br", "name": "fw", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "filter", "name": "regular", "handle": 4}}
        ]})
    }

    #[test]
    fn nft_forward_drop_of_another_table_is_found() {
        let found = nft_forward_drops(&chains());
        assert_eq!(
            found,
            [NftChain {
                family: "inet".into(),
                table: "filter".into(),
                name: "forward".into()
            }]
        );
        let b = Blocker::Nft {
            chain: found[0].clone(),
            accepts: VmAccepts::default(),
        };
        assert_eq!(
            b.describe(),
            "nft: table inet filter chain forward (hook forward, policy drop)"
        );
        let fix = b.fix();
        assert!(
            fix.contains("`nft insert rule inet filter forward iifname \"kv-*\" accept`"),
            "{fix}"
        );
        assert!(
            fix.contains("oifname \"kv-*\" ct state established,related accept"),
            "{fix}"
        );
        assert!(nft_forward_drops(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn nft_rules_accepting_the_vm_links_are_seen() {
        // As `nft -j list chain` prints `iifname "kv-*" accept` and
        // `ct state established,related accept`.
        let listing = serde_json::json!({"nftables": [
            {"chain": {"family": "inet", "table": "filter", "name": "forward"}},
            {"rule": {"expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "kv-*"}},
                {"accept": null}]}},
            {"rule": {"expr": [
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                {"accept": null}]}},
            {"rule": {"expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
                {"accept": null}]}}
        ]});
        assert_eq!(
            nft_chain_accepts(&listing),
            VmAccepts {
                outbound: true,
                returning: true
            }
        );
        // A drop verdict, a negation or another link accept nothing.
        let listing = serde_json::json!({"nftables": [
            {"rule": {"expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "kv-*"}},
                {"drop": null}]}},
            {"rule": {"expr": [
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "kv-*"}},
                {"accept": null}]}},
            {"rule": {"expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth*"}},
                {"accept": null}]}}
        ]});
        assert_eq!(nft_chain_accepts(&listing), VmAccepts::default());
    }

    #[test]
    fn resolvers_none_usable_is_a_failure_that_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("resolv.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        let missing = dir.path().join("upstreams");
        let f = check_resolvers(&[stub.clone(), missing]);
        assert_eq!(f.level, Level::Fail);
        assert!(f.detail.contains("resolv.conf"), "{}", f.detail);
        assert!(f.fix.as_deref().unwrap_or("").contains("dns = ["), "{f:?}");
        std::fs::write(&stub, "nameserver 192.0.2.53\nnameserver ::1\n").unwrap();
        let f = check_resolvers(&[stub]);
        assert_eq!(f.level, Level::Ok);
        assert!(f.detail.contains("VMs get 192.0.2.53 ("), "{}", f.detail);
    }

    #[test]
    fn forwarding_is_information_and_tun_must_open() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("ip_forward");
        std::fs::write(&sysctl, "0\n").unwrap();
        let f = check_forwarding(&sysctl);
        assert_eq!(f.level, Level::Ok);
        assert!(f.detail.contains("turns it on"), "{}", f.detail);
        std::fs::write(&sysctl, "1\n").unwrap();
        assert!(check_forwarding(&sysctl).detail.contains("is on"));
        assert_eq!(
            check_forwarding(&dir.path().join("missing")).level,
            Level::Warn
        );
        let f = check_tun(&dir.path().join("tun"));
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.fix.as_deref().unwrap_or("").contains("modprobe tun"),
            "{f:?}"
        );
        assert_eq!(check_tun(&sysctl).level, Level::Fail);
    }

    #[test]
    fn uplink_and_pool_decisions() {
        use crate::net::host::{HostLink, HostPrefix};
        let mut view = HostView {
            links: vec![HostLink {
                index: 2,
                name: "eth0".into(),
                mtu: Some(1460),
            }],
            prefixes: vec![HostPrefix {
                net: "10.200.4.0/24".parse().unwrap(),
                link: "eth0".into(),
                what: "address",
            }],
            default_links: vec![],
            addresses: vec![],
        };
        let f = check_uplink(&view);
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.fix.as_deref().unwrap_or("").contains("uplinks = ["),
            "{f:?}"
        );
        view.default_links.push("eth0".into());
        let f = check_uplink(&view);
        assert_eq!(f.level, Level::Ok);
        assert!(f.detail.starts_with("eth0 (MTU 1460)"), "{}", f.detail);
        let pool: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let f = check_pool(&view, pool);
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.detail.contains("10.200.4.0/24 (address on eth0)"),
            "{}",
            f.detail
        );
        let f = check_pool(&view, "10.201.0.0/16".parse().unwrap());
        assert_eq!(f.level, Level::Ok);
        assert!(f.detail.contains("16384 VMs"), "{}", f.detail);
    }

    fn skip_unless_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return false;
        }
        eprintln!("skipped: needs root (network namespaces, nftables)");
        true
    }

    /// `ip CMD…` in the calling thread's namespace.
    fn ip(args: &str) {
        let bin = find_binary("ip").expect("ip (apt-get install iproute2)");
        let out = Command::new(bin)
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The checks on a thread that unshared a network namespace of its
    /// own: an uplink whose address overlaps the pool, and another table
    /// with a forward chain that drops by policy.
    #[test]
    fn network_checks_in_a_throwaway_namespace() {
        if skip_unless_root() || find_binary("nft").is_none() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let nft = crate::net::nft::Nft::new().unwrap();
            let find = |fs: &[Finding], name: &str| {
                fs.iter()
                    .find(|f| f.name == name)
                    .cloned()
                    .unwrap_or_else(|| panic!("no {name} finding in {fs:?}"))
            };
            let cfg = NetCheckConfig::default();

            // Nothing but lo: no uplink, and nothing drops.
            std::fs::write(IPV4_FORWARD, "0\n").unwrap();
            let fs = check_network(&cfg);
            assert_eq!(find(&fs, "nf_tables").level, Level::Ok);
            let fwd = find(&fs, "ip forwarding");
            assert_eq!(fwd.level, Level::Ok);
            assert!(fwd.detail.contains("off"), "{fwd:?}");
            assert_eq!(find(&fs, "uplink").level, Level::Fail);
            assert_eq!(find(&fs, "forward policy").level, Level::Ok);

            ip("link set lo up");
            ip("link add up0 type veth peer name up0p");
            ip("addr add 203.0.113.2/24 dev up0");
            ip("addr add 10.200.7.1/24 dev up0");
            ip("link set up0 mtu 1400 up");
            ip("link set up0p up");
            ip("route add default via 203.0.113.1 dev up0");
            nft.apply(
                "table inet other {\n  chain f {\n    type filter hook forward priority 0; policy drop;\n  }\n}\n\
                 table inet kiln {\n  chain forward {\n    type filter hook forward priority 0; policy drop;\n  }\n}\n",
            )
            .unwrap();
            let fs = check_network(&cfg);
            let up = find(&fs, "uplink");
            assert_eq!(up.level, Level::Ok, "{up:?}");
            assert!(up.detail.starts_with("up0 (MTU 1400)"), "{up:?}");
            let pool = find(&fs, "address pool");
            assert_eq!(pool.level, Level::Fail, "{pool:?}");
            assert!(pool.detail.contains("10.200.7.0/24 (address on up0)"), "{pool:?}");
            let policy = find(&fs, "forward policy");
            assert_eq!(policy.level, Level::Fail, "{policy:?}");
            assert!(
                policy.detail.contains("table inet other chain f") && !policy.detail.contains("kiln chain"),
                "{policy:?}"
            );
            let fix = policy.fix.clone().unwrap_or_default();
            assert!(
                fix.contains("nft insert rule inet other f iifname \"kv-*\" accept"),
                "{fix}"
            );

            // The fix, applied, clears it.
            nft.apply(
                "insert rule inet other f iifname \"kv-*\" accept\n\
                 insert rule inet other f oifname \"kv-*\" ct state established,related accept\n",
            )
            .unwrap();
            let policy = find(&check_network(&cfg), "forward policy");
            assert_eq!(policy.level, Level::Ok, "{policy:?}");
        })
        .join()
        .unwrap();
    }
}
