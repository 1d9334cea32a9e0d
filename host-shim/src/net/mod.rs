//! Every VM's network: a namespace of its own holding the VM's tap, joined
//! to the host by a veth pair, routed point to point from an address pool,
//! NATed out of the host's uplinks, and judged by the egress policy in
//! Kiln's one nftables table (`table inet kiln`): the public internet and
//! the VM's resolvers, nothing private, not the host, not other VMs.
//!
//! - [`Network`] — the host-wide part: checks at start, the table, the pool.
//! - [`attach`] — one VM's network ([`VmNet`]), made and removed in phases.
//! - [`policy`] — the ruleset, per-VM elements, drop counters.
//! - [`nft`] — running `nft` (in this or a given network namespace).
//! - [`netns`], [`tap`], [`link`] — namespaces, taps, rtnetlink requests.
//! - [`pool`] — address slots; [`dns`] — which resolvers VMs get;
//!   [`host`] — what the host's namespace has (uplinks, prefixes, MTU);
//!   [`users`] — several Kiln processes sharing the one table.

pub mod attach;
pub mod dns;
pub mod host;
pub mod link;
pub mod netns;
pub mod nft;
pub mod policy;
pub mod pool;
pub mod tap;
pub mod users;

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use attach::{NetRequest, VmIfNames, VmNet, HOST_IF_PREFIX};
pub use policy::Allow;

use host::HostView;
use link::{LinkError, Netlink};
use netns::NetnsError;
use policy::{Policy, PolicyConfig};
use pool::{AddrPlan, AddrPool, PoolError};

/// The default address pool: 16384 VMs' /30s.
pub const DEFAULT_POOL4: &str = "10.200.0.0/16";

/// The host-wide network settings (`[network]`, or `kiln run`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub pool4: Ipv4Net,
    /// A routed IPv6 prefix of the operator's; `None`: no IPv6 in VMs.
    pub pool6: Option<Ipv6Net>,
    /// The links VM traffic may leave by; empty: the default routes' links.
    pub uplinks: Vec<String>,
    /// The VMs' MTU; `None`: the smallest of the uplinks'.
    pub mtu: Option<u32>,
    /// The VMs' resolvers; empty: the host's upstream resolvers.
    pub dns: Vec<IpAddr>,
    /// Address leases and the table's lock (shared by every Kiln on the
    /// host, so the same for all of them: `<runtime>/net`).
    pub run_dir: PathBuf,
    /// Where named namespaces live.
    pub netns_dir: PathBuf,
}

/// The address slot leases' directory below [`NetConfig::run_dir`].
pub const ADDR_LEASES_DIR: &str = "addrs";

impl NetConfig {
    /// The defaults, with leases under `runtime` (Kiln's runtime directory).
    pub fn defaults(runtime: &std::path::Path) -> Self {
        NetConfig {
            pool4: DEFAULT_POOL4.parse().unwrap_or_else(|_| Ipv4Net::default()),
            pool6: None,
            uplinks: Vec::new(),
            mtu: None,
            dns: Vec::new(),
            run_dir: runtime.join("net"),
            netns_dir: PathBuf::from(netns::NETNS_DIR),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("address pool: {0}")]
    Lease(#[from] crate::lease::LeaseError),
    #[error("address pool {pool} overlaps {net} ({what} on {link}) on this host: VMs could not reach it, nor it them; pick a range no address or route of the host uses with `pool = \"…\"` in [network] (kiln run: --net-pool)")]
    PoolOverlap {
        pool: IpNet,
        net: IpNet,
        what: &'static str,
        link: String,
    },
    #[error("uplinks: {0}")]
    Uplinks(String),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error(transparent)]
    Link(LinkError),
    #[error(transparent)]
    Netns(NetnsError),
    #[error("creating tap {name}: {source}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting {what}: {source}")]
    Sysctl {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the egress policy: {0}")]
    Policy(#[from] policy::PolicyError),
    #[error("the egress policy table `inet {table}` is gone (deleted by hand, or by a `flush ruleset`): VMs would run unfiltered, so none starts until Kiln restarts and installs it again", table = policy::TABLE)]
    PolicyMissing,
    #[error("MTU {mtu} is outside 1280..=65535")]
    Mtu { mtu: u32 },
    #[error("a background task failed: {0}")]
    Task(String),
    #[error("{action} {path}: {source}")]
    Lock {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Nft(#[from] nft::NftError),
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// The host-wide part of VM networking, shared by every VM.
#[derive(Debug)]
pub struct Network {
    host: Netlink,
    pool: AddrPool,
    policy: Policy,
    uplinks: Vec<String>,
    mtu: u32,
    dns: Vec<IpAddr>,
    netns_dir: PathBuf,
    /// Policy element removals still running.
    background: attach::Background,
    /// This process's share of the table, given up by [`Network::stop`].
    table_use: std::sync::Mutex<Option<users::TableUse>>,
}

impl Network {
    /// Checks the host against `cfg` and installs the egress policy. Must
    /// run in the namespace whose uplinks VMs use (the host's).
    pub async fn start(cfg: &NetConfig) -> Result<Network, NetError> {
        let plan = AddrPlan::new(cfg.pool4, cfg.pool6)?;
        let host = Netlink::open(&tokio::runtime::Handle::current())?;
        let view = HostView::read(&host).await?;
        check_pool(&view, plan.v4().into())?;
        if let Some(p6) = plan.v6() {
            check_pool(&view, p6.into())?;
        }
        let uplinks = host::pick_uplinks(&view, &cfg.uplinks).map_err(NetError::Uplinks)?;
        let mtu = cfg.mtu.or_else(|| view.mtu_of(&uplinks)).unwrap_or(1500);
        if !(1280..=65535).contains(&mtu) {
            return Err(NetError::Mtu { mtu });
        }
        let dns = if cfg.dns.is_empty() {
            dns::host_resolvers()?
        } else {
            cfg.dns.clone()
        };
        match host::enable_forwarding() {
            Ok(true) => tracing::info!("IPv4 forwarding was off; turned it on for the VMs"),
            Ok(false) => {}
            Err(source) => {
                return Err(NetError::Sysctl {
                    what: "net.ipv4.ip_forward".into(),
                    source,
                })
            }
        }
        if plan.v6().is_some() {
            match host::enable_forwarding6() {
                Ok(true) => tracing::warn!("IPv6 forwarding was off; turned it on for the VMs (a host that takes its own address by SLAAC needs accept_ra = 2 on its uplink)"),
                Ok(false) => {}
                Err(source) => {
                    return Err(NetError::Sysctl {
                        what: "net.ipv6.conf.all.forwarding".into(),
                        source,
                    })
                }
            }
        }
        let policy = Policy::new(
            nft::Nft::new()?,
            PolicyConfig {
                uplinks: uplinks.clone(),
                vm_ifname_prefix: HOST_IF_PREFIX.into(),
                ipv6: plan.v6().is_some(),
                nat66: false,
            },
        )?;
        let lock = users::lock_path(&cfg.run_dir)?;
        let installer = policy.clone();
        let table_use = tokio::task::spawn_blocking(move || {
            users::TableUse::join(&lock, |role| install(&installer, role))
        })
        .await
        .map_err(|e| NetError::Task(e.to_string()))??;
        tracing::info!(
            pool = %plan.v4(),
            pool6 = ?plan.v6(),
            uplinks = %uplinks.join(","),
            mtu,
            dns = ?dns,
            "VM networking ready; egress policy installed"
        );
        Ok(Network {
            host,
            pool: AddrPool::new(plan, cfg.run_dir.join(ADDR_LEASES_DIR)),
            policy,
            uplinks,
            mtu,
            dns,
            netns_dir: cfg.netns_dir.clone(),
            background: attach::Background::default(),
            table_use: std::sync::Mutex::new(Some(table_use)),
        })
    }

    /// Gives up this process's use of the table, after its last VM; the
    /// last Kiln process on the host deletes it.
    pub async fn stop(&self) -> Result<(), NetError> {
        self.settle().await;
        let taken = match self.table_use.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(table_use) = taken else {
            return Ok(());
        };
        let policy = self.policy.clone();
        let last = tokio::task::spawn_blocking(move || {
            table_use.leave(|| policy.remove().map_err(NetError::from))
        })
        .await
        .map_err(|e| NetError::Task(e.to_string()))??;
        if last {
            tracing::info!(table = policy::TABLE, "egress policy removed");
        }
        Ok(())
    }

    /// Fails when the policy table is gone: callers stop their VMs and
    /// start no more (fail closed).
    pub async fn check(&self) -> Result<(), NetError> {
        let policy = self.policy.clone();
        let present = tokio::task::spawn_blocking(move || policy.is_installed())
            .await
            .map_err(|e| NetError::Task(e.to_string()))??;
        if present {
            Ok(())
        } else {
            Err(NetError::PolicyMissing)
        }
    }

    /// Removes VM network `net`; returns what could not be removed (its
    /// policy elements go in the background: see [`Network::settle`]).
    pub async fn detach(&self, net: VmNet) -> Vec<String> {
        net.detach(&self.host, &self.background).await
    }

    /// Waits until every detached VM's policy elements are removed.
    pub async fn settle(&self) {
        self.background.settle().await;
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn uplinks(&self) -> &[String] {
        &self.uplinks
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn dns(&self) -> &[IpAddr] {
        &self.dns
    }

    pub fn pool(&self) -> &AddrPlan {
        self.pool.plan()
    }
}

/// Installs the table when this process is alone; otherwise keeps the
/// others' table, making it only if it is missing.
fn install(policy: &Policy, role: users::Role) -> Result<(), NetError> {
    match role {
        users::Role::Alone => policy.install()?,
        users::Role::Joined => {
            if !policy.is_installed()? {
                tracing::warn!("another Kiln process runs, but the egress policy table was missing; installing it");
                policy.install()?;
            }
        }
    }
    Ok(())
}

fn check_pool(view: &HostView, pool: IpNet) -> Result<(), NetError> {
    match view.overlap(pool, &[HOST_IF_PREFIX]) {
        Some(hit) => Err(NetError::PoolOverlap {
            pool,
            net: hit.net,
            what: hit.what,
            link: hit.link.clone(),
        }),
        None => Ok(()),
    }
}
