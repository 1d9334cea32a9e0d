//! One VM's network, made in phases that each record what they made, so
//! that [`VmNet::detach`] (or `Drop`, when the future was dropped) removes
//! exactly that, whichever phase failed:
//!
//! 1. an address slot from the pool;
//! 2. the namespace `kiln-<id>` with the tap `kt-<id>` inside;
//! 3. the veth pair: `kv-<id>` on the host, `kp-<id>` in the namespace;
//! 4. the host's end: up, the gateway address (and for IPv6 `fe80::1` and a
//!    route to the guest's address);
//! 5. the namespace's wire: tap and veth end up, a tc redirect each way;
//! 6. the VM's elements in the egress policy (its address, resolvers,
//!    allowlist).
//!
//! The VM then sees one point-to-point link whose other end is the host's
//! `kv-` interface: routing, NAT and the policy all happen on the host.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_protocol::{Ipv4Config, Ipv6Config, NetworkConfig};

use super::link::{LinkError, Netlink};
use super::netns::{CreateError, NetNs, NetnsError};
use super::policy::{Allow, Policy, VmRules};
use super::pool::{Slot, GATEWAY6, LINK_PREFIX4, LINK_PREFIX6};
use super::{NetError, Network};

/// Prefix of the host's end of each VM's veth pair (the policy matches it).
pub const HOST_IF_PREFIX: &str = "kv-";
/// Prefix of each VM's tap, inside its namespace.
pub const TAP_PREFIX: &str = "kt-";
/// Prefix of the namespace's end of each VM's veth pair.
pub const PEER_PREFIX: &str = "kp-";

/// What one VM's network is to allow, beyond the default policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetRequest {
    /// Extra destinations (private ones included), with an optional port.
    pub allow: Vec<Allow>,
    /// The resolvers this VM uses; `None`: the host-wide ones.
    pub dns: Option<Vec<IpAddr>>,
    /// The only uid that may attach to the tap (Firecracker's jail uid);
    /// `None` for a VMM that runs as root.
    pub tap_owner: Option<u32>,
}

/// The interface names of one VM, from its id's random part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmIfNames {
    pub host: String,
    pub peer: String,
    pub tap: String,
}

impl VmIfNames {
    /// `kiln-0123456789ab` → `kv-0123456789ab`, `kp-…`, `kt-…` (15 bytes,
    /// the kernel's limit).
    pub fn of(vm_id: &str) -> VmIfNames {
        let tail = vm_id.strip_prefix("kiln-").unwrap_or(vm_id);
        let tail = &tail[..tail.len().min(12)];
        VmIfNames {
            host: format!("{HOST_IF_PREFIX}{tail}"),
            peer: format!("{PEER_PREFIX}{tail}"),
            tap: format!("{TAP_PREFIX}{tail}"),
        }
    }
}

/// A VM's network, alive until [`VmNet::detach`].
#[derive(Debug)]
pub struct VmNet {
    id: String,
    names: VmIfNames,
    policy: Option<Policy>,
    slot: Option<Slot>,
    ns: Option<NetNs>,
    /// The veth pair exists (its host end has `names.host`).
    veth: bool,
    /// The policy holds this VM's elements.
    rules: Option<VmRules>,
    /// What the guest configures on eth0.
    guest: NetworkConfig,
    dns: Vec<IpAddr>,
}

impl VmNet {
    /// The namespace's path, for the jailer's `--netns` or QEMU's `setns`.
    pub fn netns_path(&self) -> Option<&Path> {
        self.ns.as_ref().map(NetNs::path)
    }

    pub fn netns_file(&self) -> Option<&std::fs::File> {
        self.ns.as_ref().map(NetNs::file)
    }

    pub fn tap(&self) -> &str {
        &self.names.tap
    }

    pub fn names(&self) -> &VmIfNames {
        &self.names
    }

    /// eth0's settings for the guest's `Job`.
    pub fn guest_config(&self) -> &NetworkConfig {
        &self.guest
    }

    /// The resolvers the guest is given (and the policy lets through).
    pub fn dns(&self) -> &[IpAddr] {
        &self.dns
    }

    /// Removes everything this VM's network has; every step is tried, and
    /// what could not be removed is reported. Call it once the VMM is gone.
    ///
    /// The veth pair and the tap are not deleted one by one: deleting a
    /// link waits for RCU grace periods (about 20 ms each here), while the
    /// kernel frees a namespace, and every link in it, in a batch in the
    /// background once its name is removed and nothing holds it. The host's
    /// end loses its address at once, so its routes are gone before the
    /// address slot is handed out again.
    ///
    /// The VM's policy elements are removed in the background too (`nft`
    /// deleting set elements takes about 25 ms, twice adding them): they
    /// name the VM's own `kv-` link, which no later VM has, so they match
    /// nothing meanwhile. [`Network::settle`] waits for them.
    pub(super) async fn detach(mut self, host: &Netlink, background: &Background) -> Vec<String> {
        if let (Some(policy), Some(rules)) = (self.policy.take(), self.rules.take()) {
            background.remove_rules(self.id.clone(), policy, rules);
        }
        let mut problems = Vec::new();
        if self.veth {
            let flushed = match host.find(&self.names.host).await {
                Ok(Some(i)) => host.flush_addresses(i).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = flushed {
                problems.push(format!(
                    "removing the addresses of {}: {e}",
                    self.names.host
                ));
            }
            self.veth = false;
        }
        if let Some(ns) = self.ns.take() {
            if let Err(e) = ns.delete() {
                problems.push(e.to_string());
            }
        }
        drop(self.slot.take());
        problems
    }
}

/// Work a detach leaves running: the removal of policy elements.
#[derive(Debug, Clone)]
pub(super) struct Background {
    pending: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Background {
    fn default() -> Self {
        Background {
            pending: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl Background {
    fn remove_rules(&self, vm: String, policy: Policy, rules: VmRules) {
        self.pending.send_modify(|n| *n += 1);
        let pending = Arc::clone(&self.pending);
        tokio::spawn(async move {
            let r = tokio::task::spawn_blocking(move || policy.remove_vm(&rules)).await;
            let failed = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                tracing::error!(vm = %vm, error = %e, "the VM's egress policy elements were left behind");
            }
            pending.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    /// Waits until no removal is pending.
    pub(super) async fn settle(&self) {
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for VmNet {
    /// The path for a dropped future or a panic: what needs no waiting.
    /// Deleting the namespace also deletes the veth pair once the VMM that
    /// held it is gone.
    fn drop(&mut self) {
        if let (Some(policy), Some(rules)) = (self.policy.take(), self.rules.take()) {
            if let Err(e) = policy.remove_vm(&rules) {
                tracing::warn!(vm = %self.id, error = %e, "VM policy elements left behind");
            }
        }
        if let Some(ns) = self.ns.take() {
            if let Err(e) = ns.delete() {
                tracing::warn!(vm = %self.id, error = %e, "VM network namespace left behind");
            }
        }
    }
}

impl Network {
    /// Makes VM `vm_id`'s network (see the module docs). On error nothing
    /// of it is left.
    pub async fn attach(&self, vm_id: &str, req: &NetRequest) -> Result<VmNet, NetError> {
        let mut net = VmNet {
            id: vm_id.to_owned(),
            names: VmIfNames::of(vm_id),
            policy: None,
            slot: None,
            ns: None,
            veth: false,
            rules: None,
            guest: NetworkConfig {
                ipv4: None,
                ipv6: None,
                mtu: Some(self.mtu),
            },
            dns: req.dns.clone().unwrap_or_else(|| self.dns.clone()),
        };
        match self.build(&mut net, req).await {
            Ok(()) => Ok(net),
            Err(e) => {
                let problems = net.detach(&self.host, &self.background).await;
                if !problems.is_empty() {
                    tracing::error!(vm = %vm_id, problems = %problems.join("; "), "undoing a failed network setup left something behind");
                }
                Err(e)
            }
        }
    }

    async fn build(&self, net: &mut VmNet, req: &NetRequest) -> Result<(), NetError> {
        let slot = self.pool.lease()?;
        let addrs = slot.addrs;
        net.slot = Some(slot);
        net.guest.ipv4 = Some(Ipv4Config {
            address: addrs.guest4,
            prefix_len: LINK_PREFIX4,
            gateway: Some(addrs.host4),
        });
        net.guest.ipv6 = addrs.guest6.map(|a| Ipv6Config {
            address: a,
            prefix_len: LINK_PREFIX6,
            gateway: Some(GATEWAY6),
        });

        let rules = VmRules {
            ifname: net.names.host.clone(),
            ipv4: Some(addrs.guest4),
            ipv6: addrs.guest6,
            dns: net.dns.clone(),
            allow: req.allow.clone(),
        };
        // The policy's elements name the VM's link, which need not exist
        // yet: they are added while the links are made.
        let policy = self.policy.clone();
        let add = rules.clone();
        let add_rules = async move {
            tokio::task::spawn_blocking(move || policy.add_vm(&add))
                .await
                .map_err(|e| NetError::Task(e.to_string()))?
                .map_err(NetError::from)
        };
        let (added, wired) = tokio::join!(add_rules, self.wire(net, req));
        if added.is_ok() {
            net.policy = Some(self.policy.clone());
            net.rules = Some(rules);
        }
        added?;
        wired
    }

    /// Steps 2 to 5: the namespace, the tap, the veth pair and the wire.
    async fn wire(&self, net: &mut VmNet, req: &NetRequest) -> Result<(), NetError> {
        let addrs = net
            .slot
            .as_ref()
            .map(|s| s.addrs)
            .ok_or(NetError::Internal("address slot missing"))?;
        let vm_nl = self.make_namespace(net, req.tap_owner).await?;
        let names = net.names.clone();
        let ns = net
            .ns
            .as_ref()
            .ok_or(NetError::Internal("namespace missing"))?;
        self.host
            .add_veth(&names.host, &names.peer, ns.file())
            .await?;
        net.veth = true;
        self.host_end(&names.host, addrs.host4, addrs.guest6)
            .await?;
        let tap = vm_nl.index(&names.tap).await?;
        let peer = vm_nl.index(&names.peer).await?;
        vm_nl.up(tap, Some(self.mtu)).await?;
        vm_nl.up(peer, Some(self.mtu)).await?;
        vm_nl.redirect(tap, peer).await?;
        vm_nl.redirect(peer, tap).await?;
        Ok(())
    }

    /// Step 2: the namespace with the tap inside, and a netlink socket in it.
    async fn make_namespace(
        &self,
        net: &mut VmNet,
        owner: Option<u32>,
    ) -> Result<Netlink, NetError> {
        let rt = tokio::runtime::Handle::current();
        let dir: PathBuf = self.netns_dir.clone();
        let id = net.id.clone();
        let tap = net.names.tap.clone();
        let made = tokio::task::spawn_blocking(move || {
            NetNs::create(&dir, &id, || -> Result<Netlink, NetError> {
                super::tap::create_persistent(&tap, owner).map_err(|source| NetError::Tap {
                    name: tap.clone(),
                    source,
                })?;
                Ok(Netlink::open(&rt)?)
            })
        })
        .await
        .map_err(|e| NetError::Task(e.to_string()))?;
        match made {
            Ok((ns, nl)) => {
                net.ns = Some(ns);
                Ok(nl)
            }
            Err(CreateError::Netns(e)) => Err(e.into()),
            Err(CreateError::Inside(e)) => Err(e),
        }
    }

    /// Step 4: the host's end of the link.
    async fn host_end(
        &self,
        name: &str,
        gateway4: std::net::Ipv4Addr,
        guest6: Option<std::net::Ipv6Addr>,
    ) -> Result<(), NetError> {
        let idx = self.host.index(name).await?;
        // No IPv6 on a link without an IPv6 address: the VM then cannot
        // even reach the host's link-local address.
        let v6 = if guest6.is_some() { "0" } else { "1" };
        let mut sysctls = vec![("disable_ipv6", v6)];
        if guest6.is_some() {
            // No duplicate address detection on a point-to-point link the
            // host alone numbers: the link is usable at once, not ~1 s later.
            sysctls.extend([("accept_dad", "0"), ("accept_ra", "0")]);
        }
        for (key, value) in sysctls {
            super::host::set_link_sysctl("ipv6", name, key, value).map_err(|source| {
                NetError::Sysctl {
                    what: format!("net.ipv6.conf.{name}.{key}"),
                    source,
                }
            })?;
        }
        self.host.up(idx, Some(self.mtu)).await?;
        self.host
            .add_address(idx, IpAddr::V4(gateway4), LINK_PREFIX4)
            .await?;
        if let Some(g6) = guest6 {
            self.host.add_address(idx, IpAddr::V6(GATEWAY6), 64).await?;
            self.host
                .add_link_route(idx, IpAddr::V6(g6), LINK_PREFIX6)
                .await?;
        }
        Ok(())
    }
}

impl From<LinkError> for NetError {
    fn from(e: LinkError) -> Self {
        NetError::Link(e)
    }
}

impl From<NetnsError> for NetError {
    fn from(e: NetnsError) -> Self {
        NetError::Netns(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernels_limit() {
        let n = VmIfNames::of("kiln-0123456789ab");
        assert_eq!(n.host, "kv-0123456789ab");
        assert_eq!(n.peer, "kp-0123456789ab");
        assert_eq!(n.tap, "kt-0123456789ab");
        assert!(n.host.len() <= 15);
        assert!(VmIfNames::of("a-very-long-id-indeed").tap.len() <= 15);
    }
}
