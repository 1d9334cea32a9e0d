//! A VM's own cgroup, for a VMM that does not make one itself (QEMU; the
//! jailer makes Firecracker's): `<hierarchy>/<parent>/<vm id>`, holding the
//! VMM and its helpers, limited to the VM's CPUs and memory.
//!
//! As well as the host allows:
//! - cgroup v2 (found in `/proc/self/mountinfo`, at `/sys/fs/cgroup` on a
//!   unified host or `/sys/fs/cgroup/unified` on a hybrid one) always
//!   holds the VM's processes, so [`VmCgroup::remove`] can kill every one
//!   of them at once (`cgroup.kill`); its `cpu` and `memory` controllers
//!   carry the limits where the hierarchy has them.
//! - A controller that v2 lacks is taken from a cgroup v1 hierarchy that
//!   has it (a hybrid host): `cpu.cfs_quota_us`, `memory.limit_in_bytes`.
//! - A limit no hierarchy can carry is reported in [`VmCgroup::unapplied`]
//!   for the caller's log line; the VM still starts (its vCPU count and
//!   memory size bound it from inside).
//!
//! The VMM joins the cgroups between fork and exec ([`VmCgroup::joiner`]):
//! the `cgroup.procs` files are opened beforehand, and the child writes
//! `0` (itself) to each, so no process of the VM ever runs outside them.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cgroup v2 `cpu.max` period and v1 `cpu.cfs_period_us`, in µs.
pub const CPU_PERIOD_US: u64 = 100_000;

/// How long [`VmCgroup::remove`] waits for killed processes to leave.
const EMPTY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists: VM {id:?} is running or was not cleaned up; remove it or use another id")]
    AlreadyExists { path: PathBuf, id: String },
    #[error("cgroup parent {parent:?} must be a relative path of plain names")]
    BadParent { parent: String },
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo): mount one (`mount -t cgroup2 none /sys/fs/cgroup`) or boot with systemd's unified hierarchy")]
    NoHierarchy,
    #[error("the processes of cgroup {path} were still there {waited:?} after SIGKILL")]
    NotEmpty { path: PathBuf, waited: Duration },
}

/// What a VM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole CPUs' worth of time per period.
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// Where VM cgroups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSettings {
    /// Relative to each hierarchy's root, e.g. `kiln` (as the jailer's
    /// `--parent-cgroup`).
    pub parent: String,
    /// The mount table to read hierarchies from.
    pub mountinfo: PathBuf,
}

impl CgroupSettings {
    pub fn new(parent: impl Into<String>) -> Self {
        CgroupSettings {
            parent: parent.into(),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

/// Which kind of hierarchy a directory is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V2,
    V1,
}

/// One directory of the VM's cgroup, in one hierarchy.
#[derive(Debug)]
struct Member {
    dir: PathBuf,
    version: Version,
}

/// The hierarchies mounted on this host.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mounts {
    v2: Option<PathBuf>,
    /// v1 hierarchies by controller.
    v1_cpu: Option<PathBuf>,
    v1_memory: Option<PathBuf>,
}

/// A VM's cgroups. Dropping it kills what is left in them and removes
/// them (best effort); [`VmCgroup::remove`] does the same and reports.
#[derive(Debug)]
pub struct VmCgroup {
    members: Vec<Member>,
    procs: Arc<Vec<OwnedFd>>,
    unapplied: Vec<&'static str>,
    removed: bool,
}

/// Moves the calling process into a VM's cgroups; for `pre_exec`.
#[derive(Debug, Clone)]
pub struct Joiner {
    procs: Arc<Vec<OwnedFd>>,
}

impl Joiner {
    /// Writes `0` (the caller) to every `cgroup.procs` of the VM. Only
    /// `write` system calls on fds opened beforehand: safe between fork
    /// and exec.
    pub fn join(&self) -> std::io::Result<()> {
        for fd in self.procs.iter() {
            // SAFETY: `fd` is an open descriptor this value owns, and the
            // buffer is a one-byte static string.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl VmCgroup {
    /// Makes VM `id`'s cgroups with `limits` in every hierarchy that can
    /// carry one of them. On error nothing made is left.
    pub fn create(
        settings: &CgroupSettings,
        id: &str,
        limits: Limits,
    ) -> Result<Self, CgroupError> {
        check_parent(&settings.parent)?;
        let text =
            std::fs::read_to_string(&settings.mountinfo).map_err(|source| CgroupError::Io {
                action: "reading",
                path: settings.mountinfo.clone(),
                source,
            })?;
        let mounts = parse_mountinfo(&text);
        let v2 = mounts.v2.clone().ok_or(CgroupError::NoHierarchy)?;
        let mut cg = VmCgroup {
            members: Vec::new(),
            procs: Arc::new(Vec::new()),
            unapplied: Vec::new(),
            removed: false,
        };
        // On error `cg` is dropped, which removes what was made.
        let v2_has = cg.make_v2(&v2, &settings.parent, id, limits)?;
        if !v2_has.cpu {
            cg.make_v1(
                mounts.v1_cpu.as_deref(),
                &settings.parent,
                id,
                "cpu",
                &[
                    ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    (
                        "cpu.cfs_quota_us",
                        (u64::from(limits.cpus) * CPU_PERIOD_US).to_string(),
                    ),
                ],
            )?;
        }
        if !v2_has.memory {
            cg.make_v1(
                mounts.v1_memory.as_deref(),
                &settings.parent,
                id,
                "memory",
                &[("memory.limit_in_bytes", limits.memory_bytes.to_string())],
            )?;
        }
        let procs = cg
            .members
            .iter()
            .map(|m| open_procs(&m.dir))
            .collect::<Result<Vec<_>, _>>()?;
        cg.procs = Arc::new(procs);
        Ok(cg)
    }

    /// What joins a process to these cgroups (see [`Joiner::join`]).
    pub fn joiner(&self) -> Joiner {
        Joiner {
            procs: Arc::clone(&self.procs),
        }
    }

    /// The v2 directory: every process of the VM is in it.
    pub fn dir(&self) -> Option<&Path> {
        self.members
            .iter()
            .find(|m| m.version == Version::V2)
            .map(|m| m.dir.as_path())
    }

    /// Every directory made, v2 first.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.members.iter().map(|m| m.dir.as_path())
    }

    /// The limits no hierarchy carries on this host (`cpu`, `memory`).
    pub fn unapplied(&self) -> &[&'static str] {
        &self.unapplied
    }

    /// Kills every process left in the cgroups and removes them.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        let mut first_error = None;
        // v1 first: a v1 directory empties as the v2 kill takes effect too.
        for m in self.members.iter().rev() {
            if let Err(e) = remove_member(m) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn make_v2(
        &mut self,
        root: &Path,
        parent: &str,
        id: &str,
        limits: Limits,
    ) -> Result<Has, CgroupError> {
        let available = read_words(&root.join("cgroup.controllers"));
        let has = Has {
            cpu: available.iter().any(|c| c == "cpu"),
            memory: available.iter().any(|c| c == "memory"),
        };
        let parent_dir = root.join(parent);
        mkdir_all(&parent_dir)?;
        let wanted: Vec<&str> = [("cpu", has.cpu), ("memory", has.memory)]
            .into_iter()
            .filter_map(|(c, on)| on.then_some(c))
            .collect();
        // Each level between the root and the VM hands the controllers down.
        let mut level = root.to_path_buf();
        for part in Path::new(parent).components() {
            enable(&level, &wanted)?;
            level.push(part);
        }
        enable(&level, &wanted)?;
        let dir = self.make_dir(&parent_dir, id, Version::V2)?;
        if has.cpu {
            let quota = u64::from(limits.cpus) * CPU_PERIOD_US;
            write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        if has.memory {
            write_file(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_file(&swap, "0")?;
            }
        }
        Ok(has)
    }

    fn make_v1(
        &mut self,
        mount: Option<&Path>,
        parent: &str,
        id: &str,
        controller: &'static str,
        files: &[(&str, String)],
    ) -> Result<(), CgroupError> {
        let Some(mount) = mount else {
            self.unapplied.push(controller);
            return Ok(());
        };
        let parent_dir = mount.join(parent);
        mkdir_all(&parent_dir)?;
        let dir = self.make_dir(&parent_dir, id, Version::V1)?;
        for (file, value) in files {
            write_file(&dir.join(file), value)?;
        }
        Ok(())
    }

    /// Makes `<parent_dir>/<id>`, never adopting one that exists.
    fn make_dir(
        &mut self,
        parent_dir: &Path,
        id: &str,
        version: Version,
    ) -> Result<PathBuf, CgroupError> {
        let dir = parent_dir.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::AlreadyExists {
                    path: dir,
                    id: id.to_owned(),
                })
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    action: "creating",
                    path: dir,
                    source,
                })
            }
        }
        self.members.push(Member {
            dir: dir.clone(),
            version,
        });
        Ok(dir)
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        for m in self.members.iter().rev() {
            if let Err(e) = remove_member(m) {
                tracing::warn!(error = %e, "removing a VM cgroup");
            }
        }
    }
}

/// `<hierarchy>/<parent>` in every hierarchy VM cgroups may be made in
/// (v2, and v1 `cpu` and `memory`), for finding what a crashed process
/// left there. A directory that does not exist is listed all the same.
pub fn parent_dirs(settings: &CgroupSettings) -> Result<Vec<PathBuf>, CgroupError> {
    check_parent(&settings.parent)?;
    let text = std::fs::read_to_string(&settings.mountinfo).map_err(|source| CgroupError::Io {
        action: "reading",
        path: settings.mountinfo.clone(),
        source,
    })?;
    let m = parse_mountinfo(&text);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for root in [m.v2, m.v1_cpu, m.v1_memory].into_iter().flatten() {
        let dir = root.join(&settings.parent);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    Ok(dirs)
}

/// Kills every process in cgroup `dir` and its descendants and removes
/// them, deepest first: for a cgroup nobody holds a [`VmCgroup`] for any
/// more (left by a crashed process, or made by the jailer). Returns
/// whether there was anything to remove.
pub fn kill_and_remove(dir: &Path) -> Result<bool, CgroupError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    let children = std::fs::read_dir(dir).map_err(|source| CgroupError::Io {
        action: "listing",
        path: dir.to_owned(),
        source,
    })?;
    for entry in children.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_and_remove(&entry.path())?;
        }
    }
    // `kill_all` uses `cgroup.kill` where there is one (v2 only) and the
    // listed processes otherwise, so v2 is right for either kind here.
    remove_member(&Member {
        dir: dir.to_owned(),
        version: Version::V2,
    })?;
    Ok(true)
}

/// Which limits the v2 hierarchy carries.
struct Has {
    cpu: bool,
    memory: bool,
}

/// Kills what is left in `m` and removes the directory.
fn remove_member(m: &Member) -> Result<(), CgroupError> {
    if !m.dir.exists() {
        return Ok(());
    }
    kill_all(m)?;
    let started = Instant::now();
    loop {
        match std::fs::remove_dir(&m.dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY: the killed processes have not left yet.
            Err(_) if started.elapsed() < EMPTY_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                return Err(CgroupError::NotEmpty {
                    path: m.dir.clone(),
                    waited: EMPTY_WAIT,
                })
            }
        }
    }
}

/// SIGKILLs every process in `m`: all at once through `cgroup.kill` where
/// the kernel has it (v2, Linux 5.14), else one by one.
fn kill_all(m: &Member) -> Result<(), CgroupError> {
    let kill = m.dir.join("cgroup.kill");
    if m.version == Version::V2 && kill.exists() {
        return write_file(&kill, "1");
    }
    for pid in read_words(&m.dir.join("cgroup.procs")) {
        if let Ok(pid) = pid.parse::<i32>() {
            // A process that is gone already is what we want.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    Ok(())
}

/// `+cpu +memory` into `dir`'s `cgroup.subtree_control`, where missing.
fn enable(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let on = read_words(&path);
    let missing: Vec<String> = controllers
        .iter()
        .filter(|c| !on.iter().any(|o| o == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&path, &missing.join(" "))
}

fn check_parent(parent: &str) -> Result<(), CgroupError> {
    let plain = !parent.is_empty()
        && Path::new(parent)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(CgroupError::BadParent {
            parent: parent.to_owned(),
        })
    }
}

fn open_procs(dir: &Path) -> Result<OwnedFd, CgroupError> {
    let path = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|source| CgroupError::Io {
            action: "opening",
            path,
            source,
        })
}

fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
        action: "creating",
        path: dir.to_owned(),
        source,
    })
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    File::options()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Io {
            action: "writing",
            path: path.to_owned(),
            source,
        })
}

/// The whitespace-separated words of a small file; none if unreadable.
fn read_words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The cgroup hierarchies in a `/proc/self/mountinfo`: the first cgroup2
/// mount, and the v1 mounts carrying `cpu` and `memory`.
fn parse_mountinfo(text: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let point = PathBuf::from(unescape(point));
        let options: Vec<&str> = fields
            .get(sep + 3)
            .map(|o| o.split(',').collect())
            .unwrap_or_default();
        match *fstype {
            "cgroup2" if mounts.v2.is_none() => mounts.v2 = Some(point),
            "cgroup" => {
                if options.contains(&"cpu") && mounts.v1_cpu.is_none() {
                    mounts.v1_cpu = Some(point.clone());
                }
                if options.contains(&"memory") && mounts.v1_memory.is_none() {
                    mounts.v1_memory = Some(point);
                }
            }
            _ => {}
        }
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
