//! Every VM's network: a namespace of its own holding the VM's tap, joined
//! to the host by a veth pair, routed point to point from an address pool,
//! and judged by the egress policy in Kiln's one nftables table.
//!
//! - [`nft`] — running `nft` (in this or a given network namespace).
//! - [`policy`] — `table inet kiln`: the ruleset, per-VM elements, drop counters.

pub mod nft;
pub mod policy;
