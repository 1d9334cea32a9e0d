//! cgroup v2 delegation so rootless podman and buildah can manage their own
//! cgroups: PID 1 in a leaf, controllers enabled at the root, and a
//! `runner` subtree owned by the job's user with the job started in the
//! leaf `runner/job`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::unistd::{chown, Gid, Uid};

use crate::error::{OrSys, SysError};

const ROOT: &str = "/sys/fs/cgroup";
const WANTED: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];
/// The files a delegatee may write (cgroup-v2.rst, "Delegation Containment");
/// resource knobs stay root's.
const DELEGATED_FILES: &[&str] = &["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"];

/// The job's leaf: PID 1's child writes "0" to `procs` to move itself in
/// before it drops privileges.
#[derive(Debug)]
pub struct Delegation {
    pub procs: File,
}

/// Moves PID 1 to `init`, enables the controllers the kernel has, and
/// creates the runner's subtree — `runner` with the same controllers, and
/// its leaf `runner/job` — before the job (and its user) is known, so the
/// boot does it beside the module loads. [`delegate`] hands it over.
pub fn setup_root() -> Result<(), SysError> {
    favor_dynamic_moves()?;
    let root = Path::new(ROOT);
    let init = root.join("init");
    make_dir(&init)?;
    write(&init.join("cgroup.procs"), "0")?;
    let available = read(&root.join("cgroup.controllers"))?;
    let enable = controllers_to_enable(&available);
    let runner = root.join("runner");
    make_dir(&runner)?;
    make_dir(&runner.join("job"))?;
    if !enable.is_empty() {
        let line = subtree_line(&enable);
        write(&root.join("cgroup.subtree_control"), &line)?;
        write(&runner.join("cgroup.subtree_control"), &line)?;
    }
    Ok(())
}

/// cgroup2's `favordynmods` (Linux 6.0+): without it, each move of a
/// process between cgroups waits for an RCU grace period — the boot's
/// moves of PID 1 and the runner, and every one rootless podman makes for
/// its containers. Forks and exits pay a little more instead. An older
/// kernel (EINVAL) keeps the default.
fn favor_dynamic_moves() -> Result<(), SysError> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(
        None::<&str>,
        ROOT,
        None::<&str>,
        flags,
        Some("nsdelegate,favordynmods"),
    ) {
        Err(Errno::EINVAL) => Ok(()),
        r => r.or_sys(|| format!("remount {ROOT} with favordynmods")),
    }
}

/// Gives `runner` and `runner/job` (made by [`setup_root`]) to the job's
/// user, and opens the leaf's `cgroup.procs` for the child.
pub fn delegate(uid: u32, gid: u32) -> Result<Delegation, SysError> {
    let runner = Path::new(ROOT).join("runner");
    let job = runner.join("job");
    for dir in [&runner, &job] {
        give(dir, uid, gid)?;
        for f in DELEGATED_FILES {
            give(&dir.join(f), uid, gid)?;
        }
    }
    let procs_path = job.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&procs_path)
        .or_sys(|| format!("open {}", procs_path.display()))?;
    Ok(Delegation { procs })
}

/// The wanted controllers the kernel offers, in the kernel's order.
pub fn controllers_to_enable(available: &str) -> Vec<String> {
    available
        .split_whitespace()
        .filter(|c| WANTED.contains(c))
        .map(str::to_owned)
        .collect()
}

pub fn subtree_line(controllers: &[String]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn make_dir(p: &Path) -> Result<(), SysError> {
    match std::fs::create_dir(p) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(e).or_sys(|| format!("create cgroup {}", p.display()))
        }
        _ => Ok(()),
    }
}

fn give(p: &Path, uid: u32, gid: u32) -> Result<(), SysError> {
    chown(p, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .or_sys(|| format!("chown {uid}:{gid} {}", p.display()))
}

fn write(p: &Path, value: &str) -> Result<(), SysError> {
    std::fs::write(p, value).or_sys(|| format!("write {value:?} to {}", p.display()))
}

fn read(p: &Path) -> Result<String, SysError> {
    std::fs::read_to_string(p).or_sys(|| format!("read {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wanted_and_available_controllers() {
        let got = controllers_to_enable("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert_eq!(got, vec!["cpuset", "cpu", "io", "memory", "pids"]);
        assert_eq!(subtree_line(&got), "+cpuset +cpu +io +memory +pids");
        assert!(controllers_to_enable("hugetlb rdma").is_empty());
        assert_eq!(controllers_to_enable("memory pids"), vec!["memory", "pids"]);
    }
}
