//! After a crash: finding and removing what dead Kiln processes left on
//! the host.
//!
//! `kiln serve` can be SIGKILLed or lose power with VMs running. Their
//! VMMs then keep running, and their directories, scratch disks, cgroups,
//! jails and network namespaces stay. [`reconcile_host`] runs at start,
//! before any work is taken, and removes all of it.
//!
//! # Which VMs are orphans: owner locks
//!
//! Every VM's resources are named for its id (`kiln-` and 12 hex digits).
//! The ids are collected from every place Kiln makes something
//! ([`scan::scan`]) and from the journal ([`crate::store`]). A VM another
//! live Kiln process still runs (another `kiln serve`, a `kiln run` with
//! the same runtime directory) must not be touched; the journal cannot
//! tell (it is this daemon's, and may be lost), a pid cannot either (the
//! daemon is gone, its VMMs are not). So the liveness test is a lock: the
//! process running a VM holds `flock` on `<runtime>/owners/<id>`
//! ([`owner`]), which the kernel releases when that process dies, however
//! it dies. A VM whose lock can be taken is an orphan; the clean-up takes
//! its lock and holds it until everything is removed.
//!
//! # Identity of processes
//!
//! The journal records the VMM's pid with its start time
//! ([`process::ProcessId`]): a pid that now belongs to another process is
//! never killed. Processes the journal does not name are found by where
//! they work (their cwd or root in the VM's directory or jail), by a
//! command line naming the VM's directory, and by membership in the VM's
//! cgroups, which are killed whole (`cgroup.kill`).
//!
//! # Order, per VM ([`reap::reap`])
//!
//! Processes first (nothing is removed from under a running VMM), then
//! cgroups, network namespace (with its tap and veth pair), jail, scratch
//! disk, VM directory, leftover host links, and the owner lock last. After
//! all VMs: lease files (CIDs, uids) nobody holds. Leases are `flock`s
//! that died with the crashed daemon already; their files are only tidied.
//!
//! nftables needs nothing here: the first Kiln process to use `table inet
//! kiln` replaces the whole table.

pub mod process;
pub mod reap;
pub mod scan;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::{Duration, Instant};

pub use crate::vm::dirs::is_vm_id;
pub use crate::vm::owner::{is_owned, OwnerError, VmOwner};
pub use process::ProcessId;
pub use reap::{reap, ReapError, ReapReport};
pub use scan::{ids_of_host_links, scan, scan_with, HostLayout, JailBase, Orphan};

use crate::lease::LeaseDir;
use crate::net::link::Netlink;
use crate::store::VmRecord;

/// What [`reconcile_host`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// One per orphaned VM, in id order.
    pub vms: Vec<ReapReport>,
    /// Lease files removed (nobody held them).
    pub stale_leases: usize,
    pub elapsed: Duration,
}

impl Report {
    /// Whether every orphan was removed completely.
    pub fn is_clean(&self) -> bool {
        self.vms.iter().all(ReapReport::is_clean)
    }

    /// The ids of the VMs removed completely: their journal records can go.
    pub fn cleaned_ids(&self) -> impl Iterator<Item = &str> {
        self.vms
            .iter()
            .filter(|r| r.is_clean())
            .map(|r| r.id.as_str())
    }
}

/// Finds every VM no live process owns, on the host and in `journal_vms`
/// (the journal's VM records; empty if the journal was unreadable), and
/// removes all of it; then tidies the lease files nobody holds. With
/// `layout.host_links`, `kv-` links in this process's network namespace
/// name VMs too. Never fails: what could not be removed is in the
/// report (and logged).
pub async fn reconcile_host(layout: &HostLayout, journal_vms: &[VmRecord]) -> Report {
    let started = Instant::now();
    let link_ids = if layout.host_links {
        host_link_ids().await
    } else {
        Vec::new()
    };
    let scan_layout = layout.clone();
    let records = journal_vms.to_vec();
    let orphans = tokio::task::spawn_blocking(move || scan_with(&scan_layout, &records, &link_ids))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "the host scan failed");
            Vec::new()
        });
    let mut report = Report::default();
    for orphan in orphans {
        report.vms.push(reap(layout, orphan).await);
    }
    let dirs = layout.lease_dirs.clone();
    report.stale_leases = tokio::task::spawn_blocking(move || {
        dirs.iter().map(|d| remove_stale_leases(d)).sum::<usize>()
    })
    .await
    .unwrap_or(0);
    report.elapsed = started.elapsed();
    let failed = report.vms.iter().filter(|r| !r.is_clean()).count();
    tracing::info!(
        vms = report.vms.len(),
        failed,
        stale_leases = report.stale_leases,
        elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        "host clean-up after restart done"
    );
    report
}

/// The VM ids of the `kv-` links in this process's network namespace.
async fn host_link_ids() -> Vec<String> {
    let names = match Netlink::open(&tokio::runtime::Handle::current()) {
        Ok(nl) => nl.names().await,
        Err(e) => Err(e),
    };
    match names {
        Ok(names) => ids_of_host_links(&names),
        Err(e) => {
            tracing::warn!(error = %e, "host links are not scanned");
            Vec::new()
        }
    }
}

/// Removes the lease files in `dir` nobody holds (taking each lease and
/// giving it back removes its file); returns how many.
fn remove_stale_leases(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let leases = LeaseDir::new("lease", dir, 0..=u64::MAX);
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&n| matches!(leases.try_take(n), Ok(Some(_))))
        .count()
}
