//! A network lab for the end-to-end network tests: throwaway network
//! namespaces standing in for the machine Kiln runs on and for what its VMs
//! may or may not reach, so the egress policy is tested without touching a
//! real network.
//!
//! | namespace | link (peer)   | addresses                                        | serves |
//! |-----------|---------------|--------------------------------------------------|--------|
//! | `host`    | `up0` (inet)  | 203.0.113.2/24, 2001:db8:1::2/64; default routes | |
//! |           | `lan0` (lan)  | 10.99.0.1/24, fd00:99::1/64                      | |
//! |           | `meta0` (meta)| 169.254.169.1/24, fd00:ec2::1/64                 | |
//! | `inet`    | `eth0`        | 203.0.113.1, .53, .54/24; 2001:db8:1::1, ::53, ::54/64 | HTTP :80 on .1 and ::1; DNS :53 on .53, .54, ::53, ::54 |
//! | `lan`     | `eth0`        | 10.99.0.5/24, fd00:99::5/64                      | TCP :8080, :8081 (a line naming the port) |
//! | `meta`    | `eth0`        | 169.254.169.254/24, fd00:ec2::254/64             | HTTP :80 |
//!
//! - `host` stands in for the machine: it forwards (IPv4 and IPv6), its
//!   default routes leave by its uplink `up0` to `inet`, and `lan` and
//!   `meta` hang off it on their own links, so 10.99.0.5 and
//!   169.254.169.254 are genuinely routable from it: when a VM cannot reach
//!   them, that is the policy's doing. `rp_filter` is 0 (`all` and
//!   `default`), so no drop is the lab's: what Kiln sets per interface is
//!   what applies.
//! - `inet`, `lan` and `meta` do not forward (IPv4 forwarding is copied from
//!   the real host's namespace, so it is set explicitly) and route
//!   everything back to `host`: a reply finds its way even to a VM address
//!   the host did not masquerade, so a server's log shows what got through
//!   and from which address ([`Hit::peer`]), never a routing accident.
//! - The servers ([`serve`]) are threads of the test process that joined
//!   their namespace before binding. Every request, DNS query and
//!   connection is logged as a [`Hit`].
//!
//! - IPv6 addresses skip duplicate address detection, and so do the lab's
//!   own links (an IPv6 router cannot resolve a neighbour on a link whose
//!   link-local address is still tentative, a second or two after it came
//!   up). Links made later in `host`, Kiln's, do DAD as on a real host.
//!
//! Kiln's network code must run in `host`: [`Lab::block_on_in_host`] for
//! the library, [`Lab::command_in_host`] for the binary. Its uplink is
//! [`UPLINK_IF`], its resolver [`RESOLVER`] (and [`RESOLVER6`]).
//!
//! Namespaces are named `kl-<pid>-<n>-<site>` ([`Lab::prefix`]);
//! interface names are fixed (each namespace has its own). Dropping the
//! [`Lab`] stops the servers and deletes the namespaces, and with them
//! every veth and anything Kiln left inside; a lab of a test process that
//! was killed is deleted by the next [`Lab::new`].
//!
//! Needs root (see [`unavailable`]), `ip` and `nsenter`; [`Lab::host_leftovers`]
//! also `nft`.

pub mod dns;
pub mod serve;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use nix::sched::{setns, CloneFlags};

use crate::prereq::{self, HostTool};
pub use serve::{Hit, Service};

/// The internet's web server (HTTP on port 80).
pub const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The resolver VMs are given (DNS on port 53).
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
pub const RESOLVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x53);
/// A resolver on the internet that VMs are not given: the policy must keep
/// their queries from it.
pub const OTHER_RESOLVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 54);
pub const OTHER_RESOLVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x54);
/// The host's own address on its uplink: what the internet sees of a
/// masqueraded VM.
pub const UPLINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The host's uplink interface (in the `host` namespace).
pub const UPLINK_IF: &str = "up0";
/// A private LAN host, listening on [`LAN_PORTS`].
pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 5);
pub const LAN_HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 5);
/// The host's own address on the LAN.
pub const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const LAN_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
pub const LAN_PORTS: [u16; 2] = [8080, 8081];
/// The cloud metadata service (HTTP on port 80).
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const METADATA6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// The host's own address on the metadata service's link.
pub const META_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 1);
pub const META_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 1);
/// The one name the resolvers know: A [`INET`], AAAA [`INET6`].
pub const DNS_NAME: &str = "example.test";
/// What the internet's web server answers.
pub const INET_BODY: &str = "hello from the internet\n";
/// What the metadata service answers.
pub const METADATA_BODY: &str = "hello from the metadata service\n";

/// The line the LAN host's listener on `port` answers with.
pub fn lan_line(port: u16) -> String {
    format!("lan host port {port}")
}

pub const IP: HostTool = HostTool {
    program: "ip",
    install: "apt-get install iproute2",
};
pub const NSENTER: HostTool = HostTool {
    program: "nsenter",
    install: "apt-get install util-linux",
};
pub const NFT: HostTool = HostTool {
    program: "nft",
    install: "apt-get install nftables",
};

/// Why this process cannot run a lab (`None` when it can): tests print it
/// and skip. Missing tools are not a reason: [`Lab::new`] fails with the
/// command that installs them.
pub fn unavailable() -> Option<String> {
    (!nix::unistd::geteuid().is_root())
        .then(|| "the network lab needs root (ip netns add, veth pairs)".to_owned())
}

/// The lab's namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// The machine Kiln runs on.
    Host,
    /// The public internet: a web server and two resolvers.
    Inet,
    /// A private LAN host (10.99.0.5).
    Lan,
    /// The cloud metadata service (169.254.169.254).
    Meta,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Host, Site::Inet, Site::Lan, Site::Meta];

    /// The end of the namespace's name.
    pub fn suffix(self) -> &'static str {
        match self {
            Site::Host => "host",
            Site::Inet => "inet",
            Site::Lan => "lan",
            Site::Meta => "meta",
        }
    }
}

const NETNS_DIR: &str = "/run/netns";
/// The start of every lab namespace's name.
const LAB_PREFIX: &str = "kl-";
/// Link names of Kiln's per-VM veths (`kv-`) and taps (`kt-`).
const KILN_LINK_PREFIXES: [&str; 2] = ["kv-", "kt-"];
/// Kiln's per-VM namespaces in [`NETNS_DIR`].
const KILN_NETNS_PREFIX: &str = "kiln-";
/// The host's `rp_filter` (`all` and `default`): off, so that Kiln's own
/// per-interface settings are the ones that count.
pub const HOST_RP_FILTER: u8 = 0;
/// How long the client helpers wait for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// One lab: four namespaces, their links and servers. See the module docs.
pub struct Lab {
    prefix: String,
    ip: PathBuf,
    log: serve::Log,
    stop: Arc<AtomicBool>,
    servers: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped last: after the servers are stopped.
    namespaces: Mutex<Namespaces>,
}

impl Lab {
    /// Builds a lab: namespaces, sysctls, links, addresses, routes, and the
    /// servers, bound and answering when this returns.
    pub fn new() -> anyhow::Result<Lab> {
        let ip = prereq::require(&IP)?;
        prereq::require(&NSENTER)?;
        sweep_stale(&ip);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{LAB_PREFIX}{}-{n}-", std::process::id());
        let mut namespaces = Namespaces {
            ip: ip.clone(),
            names: Vec::new(),
        };
        for site in Site::ALL {
            namespaces.add(&format!("{prefix}{}", site.suffix()))?;
        }
        let lab = Lab {
            prefix,
            ip,
            log: serve::Log::default(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Mutex::new(Vec::new()),
            namespaces: Mutex::new(namespaces),
        };
        lab.set_sysctls()?;
        lab.wire()?;
        lab.restore_dad()?;
        lab.start_servers()?;
        Ok(lab)
    }

    /// `kl-<pid>-<n>-`: every namespace of this lab is named with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace's name (in `/run/netns`, for `ip -n NAME`).
    pub fn netns_name(&self, site: Site) -> String {
        format!("{}{}", self.prefix, site.suffix())
    }

    /// `/run/netns/<name>`: open it and `setns` to join the namespace.
    pub fn netns_path(&self, site: Site) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(site))
    }

    /// The `host` namespace's path, where Kiln's network code runs.
    pub fn host_netns_path(&self) -> PathBuf {
        self.netns_path(Site::Host)
    }

    /// `program`, to be run inside the `host` namespace.
    pub fn command_in_host(&self, program: impl AsRef<OsStr>) -> Command {
        self.command_in(Site::Host, program)
    }

    /// `program`, to be run inside `site`'s namespace, as `nsenter
    /// --net=/run/netns/NAME -- program`: nsenter joins the network
    /// namespace only. `ip netns exec` would also unshare the mount
    /// namespace, remount `/sys` and make every mount a slave, so the
    /// per-VM namespaces Kiln pins in `/run/netns` (bind mounts) would be
    /// invisible to this process, and to [`Lab::host_leftovers`]. The
    /// price: `/sys/class/net` in the child shows the real host's links,
    /// not the namespace's (netlink and `/proc/sys/net` are per namespace).
    pub fn command_in(&self, site: Site, program: impl AsRef<OsStr>) -> Command {
        let mut net = std::ffi::OsString::from("--net=");
        net.push(self.netns_path(site));
        let mut cmd = Command::new(NSENTER.program);
        cmd.arg(net).arg("--").arg(program);
        cmd
    }

    /// Runs `f` on a thread of its own that joined the `host` namespace:
    /// sockets it opens live there for good.
    pub fn in_host<T: Send>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        in_netns(&self.host_netns_path(), f)
    }

    /// Runs `fut` to completion on a multi-threaded tokio runtime made for
    /// it inside the `host` namespace: the thread that blocks on it, the
    /// workers and the blocking pool (threads inherit their creator's
    /// namespace), and so every socket, netlink socket and child process
    /// they make, are the host's. How a test runs Kiln's async network code
    /// in the lab.
    pub fn block_on_in_host<F>(&self, fut: F) -> anyhow::Result<F::Output>
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        self.in_host(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("building a runtime in the host namespace")?;
            Ok(rt.block_on(fut))
        })
    }

    /// [`Lab::in_host`] for any site.
    pub fn in_site<T: Send>(
        &self,
        site: Site,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        in_netns(&self.netns_path(site), f)
    }

    /// Every hit on every server, in order.
    pub fn hits(&self) -> Vec<Hit> {
        self.log.select(|_| true)
    }

    /// HTTP requests the internet's web server got ([`INET`], [`INET6`]).
    pub fn http_requests(&self) -> Vec<Hit> {
        self.log
            .select(|h| h.site == Site::Inet && h.service == Service::Http)
    }

    /// DNS queries the resolver at `server` got (e.g. [`RESOLVER`],
    /// [`OTHER_RESOLVER`]).
    pub fn dns_queries(&self, server: impl Into<IpAddr>) -> Vec<Hit> {
        let server = server.into();
        self.log
            .select(|h| h.service == Service::Dns && h.local.ip() == server)
    }

    /// Connections the LAN host accepted on `port`, over IPv4 or IPv6.
    pub fn lan_connections(&self, port: u16) -> Vec<Hit> {
        self.log
            .select(|h| h.site == Site::Lan && h.local.port() == port)
    }

    /// HTTP requests the metadata service got ([`METADATA`], [`METADATA6`]).
    pub fn meta_requests(&self) -> Vec<Hit> {
        self.log.select(|h| h.site == Site::Meta)
    }

    /// Hits on the server bound to `addr` (e.g. one [`Lab::serve_name`] added).
    pub fn hits_on(&self, addr: SocketAddr) -> Vec<Hit> {
        self.log.select(|h| h.local == addr)
    }

    /// Adds a TCP listener on `addr` in `site` that answers each connection
    /// with `line` and a newline, then closes; its connections are
    /// [`Lab::hits_on`] `addr`. The address must be one of the site's.
    pub fn serve_name(&self, site: Site, addr: SocketAddr, line: &str) -> anyhow::Result<()> {
        self.serve(
            site,
            vec![serve::Spec {
                addr,
                answer: serve::Answer::Name(line.to_owned()),
            }],
        )
    }

    /// What Kiln may have left in the `host` namespace: links named `kv-*`
    /// or `kt-*`, nftables tables (the lab makes none), and namespaces
    /// `/run/netns/kiln-*` (global: those of another test process's VMs
    /// show too; see [`Lab::host_leftovers_in`]). Empty when clean; a
    /// listing that failed is a leftover too, so a broken check never
    /// passes.
    pub fn host_leftovers(&self) -> Vec<String> {
        self.host_leftovers_in(Path::new(NETNS_DIR))
    }

    /// [`Lab::host_leftovers`] for a Kiln whose per-VM namespaces are named
    /// in `netns_dir` (its `NetConfig::netns_dir`): there, any entry at all
    /// is a leftover.
    pub fn host_leftovers_in(&self, netns_dir: &Path) -> Vec<String> {
        let mut left = Vec::new();
        match self.host_links() {
            Ok(links) => left.extend(
                links
                    .into_iter()
                    .filter(|l| KILN_LINK_PREFIXES.iter().any(|p| l.starts_with(p)))
                    .map(|l| format!("link {l}")),
            ),
            Err(e) => left.push(format!("could not list links: {e:#}")),
        }
        match self.host_nft_tables() {
            Ok(tables) => left.extend(tables),
            Err(e) => left.push(format!("could not list nft tables: {e:#}")),
        }
        let global = netns_dir == Path::new(NETNS_DIR);
        left.extend(
            dir_entries(netns_dir)
                .into_iter()
                .filter(|n| !global || n.starts_with(KILN_NETNS_PREFIX))
                .map(|n| netns_dir.join(n).display().to_string()),
        );
        left
    }

    /// Panics listing [`Lab::host_leftovers`], if there are any.
    #[track_caller]
    pub fn assert_clean_host(&self) {
        let left = self.host_leftovers();
        assert!(left.is_empty(), "left in the host namespace: {left:#?}");
    }

    /// Link names in the `host` namespace.
    pub fn host_links(&self) -> anyhow::Result<Vec<String>> {
        let out = run(Command::new(&self.ip).args([
            "-n",
            &self.netns_name(Site::Host),
            "-j",
            "link",
            "show",
        ]))?;
        let links: Vec<serde_json::Value> =
            serde_json::from_str(&out).context("parsing `ip -j link show`")?;
        Ok(links
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// `nft list tables` in the `host` namespace: `table inet kiln`, ...
    pub fn host_nft_tables(&self) -> anyhow::Result<Vec<String>> {
        let nft = prereq::require(&NFT)?;
        let out = run(self.command_in_host(nft).args(["list", "tables"]))?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Forwarding on in `host`, off elsewhere; `rp_filter` off; and no
    /// duplicate address detection on the links the lab is about to make
    /// (an IPv6 router cannot resolve a neighbour until its link-local
    /// address has passed DAD, a second or two after the link is up).
    fn set_sysctls(&self) -> anyhow::Result<()> {
        for site in Site::ALL {
            let forward = if site == Site::Host { "1" } else { "0" };
            let rp_filter = HOST_RP_FILTER.to_string();
            let settings = [
                ("net/ipv4/ip_forward", forward),
                ("net/ipv6/conf/all/forwarding", forward),
                ("net/ipv6/conf/default/forwarding", forward),
                ("net/ipv4/conf/all/rp_filter", &rp_filter),
                ("net/ipv4/conf/default/rp_filter", &rp_filter),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ];
            self.in_site(site, || write_sysctls(&settings))
                .with_context(|| format!("setting sysctls in {}", self.netns_name(site)))?;
        }
        Ok(())
    }

    /// Links made in `host` from now on (Kiln's) do DAD, as on a real host.
    fn restore_dad(&self) -> anyhow::Result<()> {
        self.in_host(|| write_sysctls(&[("net/ipv6/conf/default/accept_dad", "1")]))
    }

    /// Links, addresses and routes. The host's ends go up before the far
    /// ends, so every link has its carrier by the time routes name it.
    fn wire(&self) -> anyhow::Result<()> {
        let host = self.netns_name(Site::Host);
        let mut batch = String::from("link set lo up\n");
        for l in &LINKS {
            let far = self.netns_name(l.far);
            batch += &format!(
                "link add {} type veth peer name eth0 netns {far}\n",
                l.host_if
            );
            batch += &addresses(l.host_if, &[l.host4], &[l.host6]);
        }
        for l in &LINKS {
            batch += &format!("link set {} up\n", l.host_if);
        }
        self.ip_batch(&host, &batch)?;
        for l in &LINKS {
            let batch = format!(
                "link set lo up\n{}link set eth0 up\n{}",
                addresses("eth0", l.far4, l.far6),
                default_routes("eth0", l.host4, l.host6),
            );
            self.ip_batch(&self.netns_name(l.far), &batch)?;
        }
        self.ip_batch(&host, &default_routes(UPLINK_IF, INET, INET6))
    }

    /// Another namespace, `<prefix><suffix>` with `lo` up, deleted with
    /// the lab: e.g. a stand-in for a VM's, for tests without a VM.
    pub fn add_netns(&self, suffix: &str) -> anyhow::Result<PathBuf> {
        let name = format!("{}{suffix}", self.prefix);
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&name)?;
        self.ip_batch(&name, "link set lo up\n")?;
        Ok(Path::new(NETNS_DIR).join(name))
    }

    /// Runs `ip -n <netns> -batch -` with `commands`, one a line, stopping
    /// at the first that fails.
    pub fn ip_batch(&self, netns: &str, commands: &str) -> anyhow::Result<()> {
        let mut child = Command::new(&self.ip)
            .args(["-n", netns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ip -batch")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(commands.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip -n {netns} -batch failed ({}): {}\ncommands:\n{commands}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn start_servers(&self) -> anyhow::Result<()> {
        use serve::{Answer, Spec};
        let http = |ip: IpAddr, body: &str| Spec {
            addr: SocketAddr::new(ip, 80),
            answer: Answer::Http(body.to_owned()),
        };
        let zone = dns::Zone {
            name: DNS_NAME.to_owned(),
            v4: INET,
            v6: INET6,
        };
        let resolvers = [RESOLVER, OTHER_RESOLVER]
            .map(IpAddr::from)
            .into_iter()
            .chain([RESOLVER6, OTHER_RESOLVER6].map(IpAddr::from));
        let mut inet = vec![http(INET.into(), INET_BODY), http(INET6.into(), INET_BODY)];
        inet.extend(resolvers.map(|ip| Spec {
            addr: SocketAddr::new(ip, 53),
            answer: Answer::Dns(zone.clone()),
        }));
        let lan = [IpAddr::from(LAN_HOST), IpAddr::from(LAN_HOST6)]
            .into_iter()
            .flat_map(|ip| {
                LAN_PORTS.map(|port| Spec {
                    addr: SocketAddr::new(ip, port),
                    answer: Answer::Name(lan_line(port)),
                })
            })
            .collect();
        let meta = vec![
            http(METADATA.into(), METADATA_BODY),
            http(METADATA6.into(), METADATA_BODY),
        ];
        self.serve(Site::Inet, inet)?;
        self.serve(Site::Lan, lan)?;
        self.serve(Site::Meta, meta)
    }

    fn serve(&self, site: Site, specs: Vec<serve::Spec>) -> anyhow::Result<()> {
        let ctl = serve::Ctl {
            site,
            log: self.log.clone(),
            stop: Arc::clone(&self.stop),
        };
        let thread = serve::spawn(self.netns_path(site), specs, ctl)
            .with_context(|| format!("starting servers in {}", self.netns_name(site)))?;
        self.servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(thread);
        Ok(())
    }
}

impl Drop for Lab {
    /// Stops the servers; then `namespaces` deletes the namespaces.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let servers = self
            .servers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for thread in servers.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One of the host's links: its name there, the site at the other end
/// (where it is `eth0`), and the addresses of both ends (/24 and /64).
struct Link {
    host_if: &'static str,
    host4: Ipv4Addr,
    host6: Ipv6Addr,
    far: Site,
    far4: &'static [Ipv4Addr],
    far6: &'static [Ipv6Addr],
}

const LINKS: [Link; 3] = [
    Link {
        host_if: UPLINK_IF,
        host4: UPLINK,
        host6: UPLINK6,
        far: Site::Inet,
        far4: &[INET, RESOLVER, OTHER_RESOLVER],
        far6: &[INET6, RESOLVER6, OTHER_RESOLVER6],
    },
    Link {
        host_if: "lan0",
        host4: LAN_GATEWAY,
        host6: LAN_GATEWAY6,
        far: Site::Lan,
        far4: &[LAN_HOST],
        far6: &[LAN_HOST6],
    },
    Link {
        host_if: "meta0",
        host4: META_GATEWAY,
        host6: META_GATEWAY6,
        far: Site::Meta,
        far4: &[METADATA],
        far6: &[METADATA6],
    },
];

/// `ip` commands adding `v4` (/24) and `v6` (/64, without DAD) to `dev`.
fn addresses(dev: &str, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> String {
    let v4 = v4.iter().map(|a| format!("address add {a}/24 dev {dev}\n"));
    let v6 = v6
        .iter()
        .map(|a| format!("address add {a}/64 dev {dev} nodad\n"));
    v4.chain(v6).collect()
}

/// `ip` commands adding default routes via `gw4` and `gw6` on `dev`.
fn default_routes(dev: &str, gw4: Ipv4Addr, gw6: Ipv6Addr) -> String {
    format!("route add default via {gw4} dev {dev}\nroute add default via {gw6} dev {dev}\n")
}

/// Namespaces created so far, deleted on drop (in reverse order).
struct Namespaces {
    ip: PathBuf,
    names: Vec<String>,
}

impl Namespaces {
    /// `ip netns add name`. Serialized within the process: the first
    /// `ip netns add` on a host also makes `/run/netns` a shared mount, and
    /// two at once may both do it.
    fn add(&mut self, name: &str) -> anyhow::Result<()> {
        static CREATING: Mutex<()> = Mutex::new(());
        let _guard = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
        run(Command::new(&self.ip).args(["netns", "add", name]))?;
        self.names.push(name.to_owned());
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            if let Err(e) = run(Command::new(&self.ip).args(["netns", "del", &name])) {
                eprintln!("netlab: deleting namespace {name}: {e:#}");
            }
        }
    }
}

/// Deletes the namespaces of labs whose process is gone (killed before
/// its labs were dropped).
fn sweep_stale(ip: &Path) {
    for name in netns_entries() {
        let Some(pid) = name
            .strip_prefix(LAB_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = run(Command::new(ip).args(["netns", "del", &name]));
        }
    }
}

/// The names in `/run/netns` (none if it does not exist).
pub fn netns_entries() -> Vec<String> {
    dir_entries(Path::new(NETNS_DIR))
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `cmd`; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `settings` (`net/ipv4/ip_forward`, `"1"`: paths below
/// `/proc/sys`) in this thread's network namespace.
pub fn write_sysctls(settings: &[(&str, &str)]) -> anyhow::Result<()> {
    for (key, value) in settings {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))?;
    }
    Ok(())
}

/// Reads a sysctl (a path below `/proc/sys`) in this thread's network
/// namespace.
pub fn read_sysctl(key: &str) -> anyhow::Result<String> {
    let path = Path::new("/proc/sys").join(key);
    let value = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(value.trim().to_owned())
}

/// Whether the calling thread is in the network namespace at `netns`.
pub fn in_netns_now(netns: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let mine = std::fs::metadata("/proc/thread-self/ns/net").context("/proc/thread-self/ns/net")?;
    let there = std::fs::metadata(netns).with_context(|| netns.display().to_string())?;
    Ok((mine.dev(), mine.ino()) == (there.dev(), there.ino()))
}

/// Runs `f` on a thread of its own that first joined the network namespace
/// at `netns`. A panic in `f` is resumed on the calling thread.
pub fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        let thread = s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("joining {}", netns.display()))?;
            drop(ns);
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `GET /` over HTTP/1.0 from this thread's namespace: the whole response,
/// status line and headers included.
pub fn http_get(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = connect(addr)?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: netlab\r\n\r\n")?;
    read_to_end(&mut stream, addr)
}

/// What a TCP listener at `addr` sends before closing, e.g. a name line.
pub fn read_line(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = connect(addr)?;
    read_to_end(&mut stream, addr)
}

/// Asks the resolver at `server` for `name`'s records of type `qtype`
/// ([`dns::TYPE_A`], [`dns::TYPE_AAAA`]) from this thread's namespace.
pub fn dns_query(server: IpAddr, name: &str, qtype: u16) -> anyhow::Result<dns::Response> {
    let local: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    socket.connect((server, 53))?;
    let id = 0x4b4c;
    socket.send(&dns::query(id, name, qtype))?;
    let mut buf = [0u8; 1500];
    let n = socket
        .recv(&mut buf)
        .with_context(|| format!("no answer from {server}:53"))?;
    let response = dns::parse_response(&buf[..n])?;
    anyhow::ensure!(
        response.id == id,
        "answer to another query ({})",
        response.id
    );
    Ok(response)
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(stream)
}

fn read_to_end(stream: &mut TcpStream, addr: SocketAddr) -> anyhow::Result<String> {
    let mut out = String::new();
    stream
        .read_to_string(&mut out)
        .with_context(|| format!("reading from {addr}"))?;
    Ok(out)
}
