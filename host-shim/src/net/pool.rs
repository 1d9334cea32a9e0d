//! The VMs' addresses: each VM leases one slot of the configured pool, a
//! /30 of IPv4 (the host's end `.1`, the guest `.2`) and, when an IPv6
//! prefix is configured, the matching /126 of it (the guest `::2`; its
//! gateway is the link-local `fe80::1` every VM link has on the host side).
//!
//! Slots are [`crate::lease`]s named by the /30 itself (its network
//! address divided by 4), not by the slot's place in the pool: two Kiln
//! processes never hand out one address, even when their pools differ
//! (`kiln serve`'s and a `kiln run` by hand). A slot is picked at random: an address just given back is
//! rarely the next one given out, so a new VM rarely inherits return
//! traffic still in flight for the last VM that had it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::lease::{Lease, LeaseDir, LeaseError};

/// IPv4 prefix length of one VM's link.
pub const LINK_PREFIX4: u8 = 30;
/// IPv6 prefix length of one VM's slot of the pool.
pub const LINK_PREFIX6: u8 = 126;
/// The host's end of every VM link, the guest's IPv6 gateway.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("address pool {pool} is too small: a VM needs a /30, so use a /29 or larger (e.g. 10.200.0.0/16)")]
    TooSmall4 { pool: Ipv4Net },
    #[error("IPv6 prefix {pool} is too small: use a /64 (or larger) of your own")]
    TooSmall6 { pool: Ipv6Net },
}

/// The pool's shape; addresses are computed, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrPlan {
    v4: Ipv4Net,
    v6: Option<Ipv6Net>,
}

/// One VM's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddrs {
    /// The host's end of the link: the guest's IPv4 gateway.
    pub host4: Ipv4Addr,
    pub guest4: Ipv4Addr,
    pub guest6: Option<Ipv6Addr>,
}

impl AddrPlan {
    pub fn new(v4: Ipv4Net, v6: Option<Ipv6Net>) -> Result<Self, PoolError> {
        let v4 = v4.trunc();
        if v4.prefix_len() > 29 {
            return Err(PoolError::TooSmall4 { pool: v4 });
        }
        let v6 = v6.map(|p| p.trunc());
        if let Some(p) = v6 {
            if p.prefix_len() > 64 {
                return Err(PoolError::TooSmall6 { pool: p });
            }
        }
        Ok(AddrPlan { v4, v6 })
    }

    pub fn v4(&self) -> Ipv4Net {
        self.v4
    }

    pub fn v6(&self) -> Option<Ipv6Net> {
        self.v6
    }

    /// The lease key of slot 0: its /30's network address over 4.
    fn first_key(&self) -> u64 {
        u64::from(u32::from(self.v4.network()) >> 2)
    }

    /// How many VMs the pool holds at once.
    pub fn slots(&self) -> u64 {
        1u64 << (LINK_PREFIX4 - self.v4.prefix_len())
    }

    /// Slot `n`'s addresses (`n` below [`AddrPlan::slots`]).
    pub fn addrs(&self, n: u64) -> LinkAddrs {
        let base = u32::from(self.v4.network()).wrapping_add((n as u32) << 2);
        LinkAddrs {
            host4: Ipv4Addr::from(base + 1),
            guest4: Ipv4Addr::from(base + 2),
            guest6: self
                .v6
                .map(|p| Ipv6Addr::from(u128::from(p.network()) + (u128::from(n) << 2) + 2)),
        }
    }
}

/// Hands out slots across processes.
#[derive(Debug, Clone)]
pub struct AddrPool {
    plan: AddrPlan,
    leases: LeaseDir,
}

/// A VM's slot, held until dropped.
#[derive(Debug)]
pub struct Slot {
    pub addrs: LinkAddrs,
    _lease: Lease,
}

impl AddrPool {
    /// Leases live in `dir`; every Kiln process on the host must share it.
    pub fn new(plan: AddrPlan, dir: impl Into<PathBuf>) -> Self {
        let first = plan.first_key();
        let last = first + plan.slots() - 1;
        AddrPool {
            leases: LeaseDir::new("VM address slot", dir, first..=last),
            plan,
        }
    }

    pub fn plan(&self) -> &AddrPlan {
        &self.plan
    }

    /// A free slot, or [`LeaseError::Exhausted`] when every address is in use.
    pub fn lease(&self) -> Result<Slot, LeaseError> {
        let lease = self.leases.lease()?;
        Ok(Slot {
            addrs: self.plan.addrs(lease.number() - self.plan.first_key()),
            _lease: lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(v4: &str, v6: Option<&str>) -> Result<AddrPlan, PoolError> {
        AddrPlan::new(v4.parse().expect("v4"), v6.map(|s| s.parse().expect("v6")))
    }

    #[test]
    fn slots_are_disjoint_slash_30s() {
        let p = plan("10.200.0.0/16", Some("fd00:6b::/64")).expect("plan");
        assert_eq!(p.slots(), 16384);
        let a = p.addrs(0);
        assert_eq!(a.host4, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(a.guest4, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(a.guest6, Some("fd00:6b::2".parse().expect("v6")));
        let last = p.addrs(p.slots() - 1);
        assert_eq!(last.host4, Ipv4Addr::new(10, 200, 255, 253));
        assert_eq!(last.guest4, Ipv4Addr::new(10, 200, 255, 254));
        assert_eq!(p.addrs(1).guest6, Some("fd00:6b::6".parse().expect("v6")));
        // An address written with host bits is read as its network.
        assert_eq!(plan("10.200.3.7/16", None).expect("plan").v4(), p.v4());
    }

    #[test]
    fn too_small_pools_are_refused_with_the_fix() {
        let e = plan("10.0.0.0/30", None).expect_err("/30");
        assert!(e.to_string().contains("/29 or larger"), "{e}");
        assert!(plan("10.0.0.0/29", None).is_ok());
        assert!(plan("10.0.0.0/24", Some("fd00::/80")).is_err());
    }

    #[test]
    fn the_pool_never_gives_one_address_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = AddrPool::new(plan("10.9.0.0/28", None).expect("plan"), dir.path());
        let slots: Vec<Slot> = (0..4).map(|_| pool.lease().expect("slot")).collect();
        let mut guests: Vec<Ipv4Addr> = slots.iter().map(|s| s.addrs.guest4).collect();
        guests.sort();
        guests.dedup();
        assert_eq!(guests.len(), 4);
        let e = pool.lease().expect_err("exhausted");
        assert!(e.to_string().contains("no free VM address slot"), "{e}");
        drop(slots);
        assert!(pool.lease().is_ok());
    }

    #[test]
    fn pools_that_overlap_still_never_share_an_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = AddrPool::new(plan("10.9.0.8/29", None).expect("plan"), dir.path());
        let big = AddrPool::new(plan("10.9.0.0/27", None).expect("plan"), dir.path());
        let held: Vec<Slot> = (0..2).map(|_| small.lease().expect("slot")).collect();
        let others: Vec<Slot> = (0..6).map(|_| big.lease().expect("slot")).collect();
        let mut all: Vec<Ipv4Addr> = held.iter().chain(&others).map(|s| s.addrs.guest4).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8, "{all:?}");
        assert!(
            big.lease().is_err(),
            "the small pool's two are the big one's too"
        );
    }
}
