//! Removing one orphaned VM ([`super::scan::Orphan`]), processes first:
//!
//! 1. SIGKILL the journal's VMM (only if its start time still matches),
//!    every process working in, rooted in or naming the VM's directory or
//!    jail, and every process in its cgroups (`cgroup.kill`, or one by one
//!    on cgroup v1), then wait for them to go. Nothing of the VM is in use
//!    after this.
//! 2. The cgroups (deepest first), the network namespace (which takes the
//!    tap and veth inside, and with the veth its host end), the jail, the
//!    scratch disk, the VM directory.
//! 3. Host links that survived (a `kv-` end whose namespace was already
//!    gone), by name, in this process's network namespace.
//! 4. The owner lock, last, by dropping the claim.
//!
//! Each step logs what it removed (`vm = <id>`); a failed step is recorded
//! in the [`ReapReport`] and the rest still run. Every path is checked to
//! be named for the VM's id before it is touched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{processes_using, wait_gone, ProcessId};
use super::scan::{named, HostLayout, Orphan, SCRATCH_SUFFIX};
use crate::net::link::{LinkError, Netlink};
use crate::net::netns::NetnsError;
use crate::vmm::cgroup::CgroupError;

/// How long killed processes get to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("removing host link {name}: {source}")]
    Link {
        name: String,
        #[source]
        source: LinkError,
    },
    #[error("processes {pids:?} were still alive {waited:?} after SIGKILL")]
    Survivors { pids: Vec<u32>, waited: Duration },
    #[error("{path} is not named for VM {id}: not touched")]
    NotNamed { path: PathBuf, id: String },
    #[error("the clean-up task for VM {id} failed: {cause}")]
    Task { id: String, cause: String },
}

/// What removing one VM did.
#[derive(Debug, Default)]
pub struct ReapReport {
    pub id: String,
    /// Processes SIGKILLed.
    pub killed: Vec<ProcessId>,
    /// What was removed, one line each (`cgroup /sys/fs/cgroup/kiln/<id>`).
    pub removed: Vec<String>,
    pub errors: Vec<ReapError>,
}

impl ReapReport {
    /// Whether everything found was removed: the journal's record can go.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    fn note(&mut self, what: &'static str, path: &Path) {
        tracing::info!(vm = %self.id, path = %path.display(), "removed the {what}");
        self.removed.push(format!("{what} {}", path.display()));
    }

    fn fail(&mut self, e: impl Into<ReapError>) {
        let e = e.into();
        tracing::warn!(vm = %self.id, error = %e, "clean-up step failed");
        self.errors.push(e);
    }
}

/// Removes everything `orphan` lists, then its owner lock.
pub async fn reap(layout: &HostLayout, orphan: Orphan) -> ReapReport {
    let id = orphan.id.clone();
    let links = orphan.links.clone();
    let done = tokio::task::spawn_blocking(move || {
        let report = reap_blocking(&orphan);
        (report, orphan)
    })
    .await;
    let (mut report, orphan) = match done {
        Ok(r) => r,
        Err(e) => {
            let mut report = ReapReport {
                id: id.clone(),
                ..ReapReport::default()
            };
            report.fail(ReapError::Task {
                id,
                cause: e.to_string(),
            });
            return report;
        }
    };
    if layout.host_links {
        remove_links(&mut report, &links).await;
    }
    let lock = orphan.claim.path().to_owned();
    drop(orphan);
    report.note("owner lock", &lock);
    tracing::info!(
        vm = %report.id,
        killed = report.killed.len(),
        removed = report.removed.len(),
        errors = report.errors.len(),
        "cleaned up a VM left by a dead Kiln process"
    );
    report
}

/// Steps 1 and 2 (see the module docs): file system and /proc only.
pub fn reap_blocking(orphan: &Orphan) -> ReapReport {
    let mut report = ReapReport {
        id: orphan.id.clone(),
        ..ReapReport::default()
    };
    kill_processes(&mut report, orphan);
    remove_cgroups(&mut report, orphan);
    if let Some(ns) = &orphan.netns {
        remove_netns(&mut report, ns);
    }
    let id = orphan.id.as_str();
    if let Some(jail) = &orphan.jail {
        remove_tree(&mut report, "jail", jail, id);
    }
    if let Some(scratch) = &orphan.scratch {
        remove_scratch(&mut report, scratch, id);
    }
    if let Some(dir) = &orphan.vm_dir {
        remove_tree(&mut report, "VM directory", dir, id);
    }
    report
}

/// SIGKILLs the VM's processes known without its cgroups, and waits.
fn kill_processes(report: &mut ReapReport, orphan: &Orphan) {
    let mut targets: Vec<ProcessId> = orphan.vmm.into_iter().collect();
    for p in processes_using(&orphan.process_dirs) {
        if !targets.contains(&p) {
            targets.push(p);
        }
    }
    for p in targets {
        if p.kill() {
            tracing::info!(vm = %report.id, pid = p.pid, "killed a process of the VM");
            report.killed.push(p);
        }
    }
    let alive = wait_gone(&report.killed, KILL_WAIT);
    if !alive.is_empty() {
        report.fail(ReapError::Survivors {
            pids: alive.iter().map(|p| p.pid).collect(),
            waited: KILL_WAIT,
        });
    }
}

/// Kills what is in the VM's cgroups and removes them.
fn remove_cgroups(report: &mut ReapReport, orphan: &Orphan) {
    for dir in &orphan.cgroups {
        if !named(dir, &orphan.id) {
            report.fail(not_named(dir, &orphan.id));
            continue;
        }
        match crate::vmm::cgroup::kill_and_remove(dir) {
            Ok(true) => report.note("cgroup", dir),
            Ok(false) => {}
            Err(e) => report.fail(e),
        }
    }
}

fn remove_netns(report: &mut ReapReport, ns: &Path) {
    if !named(ns, &report.id) {
        let e = not_named(ns, &report.id);
        report.fail(e);
        return;
    }
    match crate::net::netns::delete_path(ns) {
        Ok(()) => report.note("network namespace", ns),
        Err(e) => report.fail(e),
    }
}

/// Removes directory `path` (or a symlink there) and all below it.
fn remove_tree(report: &mut ReapReport, what: &'static str, path: &Path, id: &str) {
    if !named(path, id) {
        report.fail(not_named(path, id));
        return;
    }
    let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
    let removed = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => report.note(what, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => report.fail(ReapError::Io {
            action: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

fn remove_scratch(report: &mut ReapReport, path: &Path, id: &str) {
    let name = format!("{id}{SCRATCH_SUFFIX}");
    if !named(path, &name) {
        report.fail(not_named(path, id));
        return;
    }
    match std::fs::remove_file(path) {
        Ok(()) => report.note("scratch disk", path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => report.fail(ReapError::Io {
            action: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Step 3: deletes the links among `names` that exist in this process's
/// network namespace.
async fn remove_links(report: &mut ReapReport, names: &[String]) {
    let nl = match Netlink::open(&tokio::runtime::Handle::current()) {
        Ok(nl) => nl,
        Err(source) => {
            report.fail(ReapError::Link {
                name: names.join(","),
                source,
            });
            return;
        }
    };
    for name in names {
        match nl.delete_named(name).await {
            Ok(true) => {
                tracing::info!(vm = %report.id, link = %name, "removed a host link");
                report.removed.push(format!("link {name}"));
            }
            Ok(false) => {}
            Err(source) => report.fail(ReapError::Link {
                name: name.clone(),
                source,
            }),
        }
    }
}

fn not_named(path: &Path, id: &str) -> ReapError {
    ReapError::NotNamed {
        path: path.to_owned(),
        id: id.to_owned(),
    }
}
