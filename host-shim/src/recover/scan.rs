//! Finding what dead Kiln processes left: every VM id seen anywhere Kiln
//! makes things (VM directories, scratch disks, cgroups, jails, network
//! namespaces, owner locks) or named by the journal, minus the VMs a live
//! process owns ([`super::owner`]).
//!
//! Only names that are Kiln VM ids ([`super::is_vm_id`]) count; anything
//! else in those directories is never looked at again. A path the journal
//! gives is used only if its last component is the VM's id (or, for the
//! scratch disk, `<id>.ext4`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::process::ProcessId;
use crate::net::attach::{VmIfNames, HOST_IF_PREFIX, PEER_PREFIX, TAP_PREFIX};
use crate::net::{NetConfig, ADDR_LEASES_DIR};
use crate::store::VmRecord;
use crate::vm::dirs::RuntimeDirs;
use crate::vm::owner::VmOwner;
use crate::vmm::cgroup::CgroupSettings;
use crate::vmm::firecracker::FirecrackerSettings;

/// The scratch disks' file name suffix.
pub const SCRATCH_SUFFIX: &str = ".ext4";

/// Where Kiln makes VM resources on this host.
#[derive(Debug, Clone)]
pub struct HostLayout {
    /// VM directories, scratch disks, leases and owner locks.
    pub dirs: RuntimeDirs,
    /// Named network namespaces (`/run/netns`).
    pub netns_dir: PathBuf,
    /// QEMU's VM cgroups: `<hierarchy>/<parent>/<id>`.
    pub cgroup: CgroupSettings,
    /// More directories holding `<id>` cgroups: Firecracker's
    /// `<cgroup_root>/<parent_cgroup>` when it differs from the above.
    pub extra_cgroup_parents: Vec<PathBuf>,
    /// The jailer's jails, when Firecracker is configured.
    pub jails: Option<JailBase>,
    /// Whether to look for and remove VMs' leftover host-side links
    /// (`kv-…`) in this process's network namespace: true for `kiln serve`.
    pub host_links: bool,
    /// Lease directories (CIDs, uids) whose unheld files are tidied.
    pub lease_dirs: Vec<PathBuf>,
}

/// Where the jailer builds jails: `<chroot_base>/<exec_name>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailBase {
    pub chroot_base: PathBuf,
    /// Firecracker's executable's file name.
    pub exec_name: String,
}

impl HostLayout {
    /// Kiln's VMs under `dirs`, network namespaces in `netns_dir`
    /// ([`crate::net::netns::NETNS_DIR`]), QEMU's cgroups as `cgroup`
    /// places them; host links are looked for; no Firecracker jails.
    pub fn new(dirs: RuntimeDirs, netns_dir: impl Into<PathBuf>, cgroup: CgroupSettings) -> Self {
        let lease_dirs = vec![dirs.cids(), dirs.uids()];
        HostLayout {
            dirs,
            netns_dir: netns_dir.into(),
            cgroup,
            extra_cgroup_parents: Vec::new(),
            jails: None,
            host_links: true,
            lease_dirs,
        }
    }

    /// Takes the network namespaces' directory and the address slot
    /// leases from the network's config.
    pub fn with_net(mut self, net: &NetConfig) -> Self {
        self.netns_dir = net.netns_dir.clone();
        let addrs = net.run_dir.join(ADDR_LEASES_DIR);
        if !self.lease_dirs.contains(&addrs) {
            self.lease_dirs.push(addrs);
        }
        self
    }

    /// Adds Firecracker's jails, cgroups and uid leases: `exec_name` names
    /// the jails' directory ([`crate::vmm::firecracker::Firecracker::exec_name`]).
    pub fn with_firecracker(mut self, settings: &FirecrackerSettings, exec_name: &str) -> Self {
        self.jails = Some(JailBase {
            chroot_base: settings.chroot_base.clone(),
            exec_name: exec_name.to_owned(),
        });
        let parent = settings.cgroup_root.join(&settings.parent_cgroup);
        if !self.extra_cgroup_parents.contains(&parent) {
            self.extra_cgroup_parents.push(parent);
        }
        if !self.lease_dirs.contains(&settings.uid_lease_dir) {
            self.lease_dirs.push(settings.uid_lease_dir.clone());
        }
        self
    }
}

impl JailBase {
    /// `<chroot_base>/<exec_name>`: the jails are its entries.
    pub fn dir(&self) -> PathBuf {
        self.chroot_base.join(&self.exec_name)
    }
}

/// What was found of one VM no live process owns. Holds the VM's owner
/// lock, so that nothing starts using the id while it is removed.
#[derive(Debug)]
pub struct Orphan {
    pub id: String,
    pub claim: VmOwner,
    /// The journal's record, if it has one.
    pub record: Option<VmRecord>,
    /// The journal's VMM, if it is still alive.
    pub vmm: Option<ProcessId>,
    pub vm_dir: Option<PathBuf>,
    pub scratch: Option<PathBuf>,
    /// In every hierarchy; each is `…/<id>`.
    pub cgroups: Vec<PathBuf>,
    pub jail: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    /// Host-side link names that may be left: `kv-`, `kp-`, `kt-` with the
    /// id's hex digits.
    pub links: Vec<String>,
    /// Where the VM's processes work or what they name: its directory and
    /// jail, whether or not they still exist.
    pub process_dirs: Vec<PathBuf>,
}

impl Orphan {
    /// Whether anything but the owner lock and the journal record was found.
    pub fn has_resources(&self) -> bool {
        self.vmm.is_some()
            || self.vm_dir.is_some()
            || self.scratch.is_some()
            || !self.cgroups.is_empty()
            || self.jail.is_some()
            || self.netns.is_some()
    }
}

/// Every VM left by a dead process: the ids found on the host and in
/// `journal_vms`, minus those whose owner lock a live process holds.
pub fn scan(layout: &HostLayout, journal_vms: &[VmRecord]) -> Vec<Orphan> {
    scan_with(layout, journal_vms, &[])
}

/// [`scan`], with more ids found elsewhere (from host links:
/// [`ids_of_host_links`]).
pub fn scan_with(
    layout: &HostLayout,
    journal_vms: &[VmRecord],
    more_ids: &[String],
) -> Vec<Orphan> {
    let cgroup_parents = cgroup_parents(layout);
    let mut ids: BTreeSet<String> = more_ids
        .iter()
        .filter(|id| super::is_vm_id(id))
        .cloned()
        .collect();
    for dir in [
        layout.dirs.vms(),
        layout.netns_dir.clone(),
        layout.dirs.owners(),
    ]
    .iter()
    .chain(&cgroup_parents)
    .chain(layout.jails.as_ref().map(JailBase::dir).as_ref())
    {
        ids.extend(ids_in(dir, ""));
    }
    ids.extend(ids_in(&layout.dirs.disks, SCRATCH_SUFFIX));
    ids.extend(
        journal_vms
            .iter()
            .filter(|r| super::is_vm_id(&r.id))
            .map(|r| r.id.clone()),
    );
    ids.into_iter()
        .filter_map(|id| {
            let claim = claim(layout, &id)?;
            let record = journal_vms.iter().find(|r| r.id == id).cloned();
            Some(find(layout, &cgroup_parents, claim, record))
        })
        .collect()
}

/// Takes VM `id`'s owner lock, or `None` if a live process holds it.
fn claim(layout: &HostLayout, id: &str) -> Option<VmOwner> {
    match VmOwner::try_claim(&layout.dirs.owners(), id) {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            tracing::info!(vm = %id, "left alone: a live Kiln process owns it");
            None
        }
        Err(e) => {
            tracing::warn!(vm = %id, error = %e, "left alone: its owner lock could not be taken");
            None
        }
    }
}

/// What exists of VM `id`.
fn find(
    layout: &HostLayout,
    cgroup_parents: &[PathBuf],
    claim: VmOwner,
    record: Option<VmRecord>,
) -> Orphan {
    let id = claim.id().to_owned();
    let rec = record.as_ref();
    let vmm = rec.and_then(journal_vmm);
    let scratch_name = format!("{id}{SCRATCH_SUFFIX}");
    let vm_dir = existing(
        [
            Some(layout.dirs.vms().join(&id)),
            rec.map(|r| r.dir.clone()),
        ],
        &id,
    );
    let scratch = existing(
        [
            Some(layout.dirs.disks.join(&scratch_name)),
            rec.and_then(|r| r.scratch.clone()),
        ],
        &scratch_name,
    );
    let jail = existing(
        [
            layout.jails.as_ref().map(|j| j.dir().join(&id)),
            rec.and_then(|r| r.jail.clone()),
        ],
        &id,
    );
    let netns = existing(
        [
            Some(layout.netns_dir.join(&id)),
            rec.and_then(|r| r.netns.as_deref().map(|n| layout.netns_dir.join(n))),
        ],
        &id,
    );
    let mut cgroups: Vec<PathBuf> = Vec::new();
    for c in cgroup_parents
        .iter()
        .map(|p| p.join(&id))
        .chain(rec.and_then(|r| r.cgroup.clone()))
    {
        if named(&c, &id) && c.is_dir() && !cgroups.contains(&c) {
            cgroups.push(c);
        }
    }
    let links = link_names(&id, rec.map(|r| r.links.as_slice()).unwrap_or_default());
    let mut process_dirs = vec![layout.dirs.vms().join(&id)];
    process_dirs.extend(layout.jails.as_ref().map(|j| j.dir().join(&id)));
    for d in vm_dir.iter().chain(&jail) {
        if !process_dirs.contains(d) {
            process_dirs.push(d.clone());
        }
    }
    Orphan {
        id,
        claim,
        record,
        vmm,
        vm_dir,
        scratch,
        cgroups,
        jail,
        netns,
        links,
        process_dirs,
    }
}

/// The journal's VMM, if that very process still runs.
fn journal_vmm(r: &VmRecord) -> Option<ProcessId> {
    let vmm = ProcessId {
        pid: r.vmm_pid?,
        start_ticks: r.vmm_start_ticks?,
    };
    if vmm.is_same_alive() {
        return Some(vmm);
    }
    if ProcessId::of(vmm.pid).is_some() {
        tracing::info!(vm = %r.id, pid = vmm.pid, "the journal's VMM pid now belongs to another process: not touched");
    }
    None
}

/// The first of `candidates` that is named `name` and exists (a symlink
/// counts, and is removed as one, never followed).
fn existing(candidates: [Option<PathBuf>; 2], name: &str) -> Option<PathBuf> {
    candidates
        .into_iter()
        .flatten()
        .find(|p| named(p, name) && p.symlink_metadata().is_ok())
}

/// Whether `path`'s last component is exactly `name`.
pub fn named(path: &Path, name: &str) -> bool {
    path.file_name().is_some_and(|n| n == name)
}

/// The host link names VM `id` may have left: its `kv-`, `kp-` and `kt-`
/// names, and the journal's links if they are among them.
pub fn link_names(id: &str, journal_links: &[String]) -> Vec<String> {
    let ours = VmIfNames::of(id);
    let mut names = vec![ours.host.clone()];
    for l in journal_links {
        let is_ours = [&ours.host, &ours.peer, &ours.tap].contains(&l);
        if is_ours && !names.contains(l) {
            names.push(l.clone());
        } else if !is_ours {
            tracing::warn!(vm = %id, link = %l, "the journal names a link that is not this VM's: not touched");
        }
    }
    debug_assert!(names
        .iter()
        .all(|n| [HOST_IF_PREFIX, PEER_PREFIX, TAP_PREFIX]
            .iter()
            .any(|p| n.starts_with(p))));
    names
}

/// The VM ids of the host-side veth ends (`kv-<12 hex>`) among `names`.
pub fn ids_of_host_links(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| {
            let id = format!("kiln-{}", n.strip_prefix(HOST_IF_PREFIX)?);
            super::is_vm_id(&id).then_some(id)
        })
        .collect()
}

/// Every cgroup directory VM cgroups are made in.
fn cgroup_parents(layout: &HostLayout) -> Vec<PathBuf> {
    let mut parents = match crate::vmm::cgroup::parent_dirs(&layout.cgroup) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cgroups are not scanned");
            Vec::new()
        }
    };
    for p in &layout.extra_cgroup_parents {
        if !parents.contains(p) {
            parents.push(p.clone());
        }
    }
    parents
}

/// The VM ids named by the entries of `dir` (each `<id><suffix>`); none if
/// `dir` does not exist.
fn ids_in(dir: &Path, suffix: &str) -> Vec<String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "not scanned");
            return Vec::new();
        }
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(suffix)?;
            super::is_vm_id(id).then(|| id.to_owned())
        })
        .collect()
}
