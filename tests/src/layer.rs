//! Support for the VM layer's tests (`tests/vm_layer.rs`, and
//! `host-shim/tests/kiln_run.rs`): a [`Launcher`] over QEMU with the test
//! assets, a minimal image directory for `kiln run`, and the checks that
//! nothing was left behind (processes, fds, files, sockets, mounts).

use std::path::{Path, PathBuf};

use anyhow::Context;
use kiln::vm::{BootImage, Launcher, ModuleSet, RuntimeDirs};
use kiln::vmm::qemu::{Machine, QemuConfig};
use serde_json::json;

use crate::assets::{self, Assets};
use crate::job::RUNNER_UID;

/// The test kernel and initramfs (kiln-init, busybox, the modules), no base
/// image: the initramfs is the root's lower layer.
pub fn boot_image(assets: &Assets) -> BootImage {
    BootImage {
        kernel: assets.kernel.vmlinuz.clone(),
        arch: kiln::vmm::Arch::host(),
        initrd: Some(assets.initrd.clone()),
        base_image: None,
        modules: ModuleSet::Listed(module_names()),
        scratch_skeleton: None,
    }
}

/// The QEMU configuration tests use: the machine from `KILN_TEST_MACHINE`,
/// the KVM probe's answer cached with the assets.
pub fn qemu_config(assets: &Assets) -> anyhow::Result<QemuConfig> {
    Ok(QemuConfig {
        machine: std::env::var("KILN_TEST_MACHINE")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(Machine::Microvm),
        accel_cache: Some(assets.cache.join("accel-probe")),
        ..QemuConfig::from_env()?
    })
}

/// A launcher over QEMU whose runtime and disk directories are under `root`.
pub fn launcher(root: &Path) -> anyhow::Result<(Launcher, RuntimeDirs)> {
    let assets = assets::get()?;
    let dirs = RuntimeDirs::new(root.join("run"), root.join("disks"));
    let launcher = Launcher::new(kiln::vm::Backend::Qemu(qemu_config(assets)?), dirs.clone())?;
    Ok((launcher, dirs))
}

/// Every module the test initramfs carries, as the image manifest lists them.
pub fn module_names() -> Vec<String> {
    assets::module_names()
        .into_iter()
        .map(String::from)
        .collect()
}

/// A minimal image directory in `dir`, laid out like `cargo xtask image`'s:
/// `rootfs.ext4` (busybox and the accounts, runner uid 1001), the test
/// kernel and initramfs, and a `manifest.json` in its format.
pub fn minimal_image_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    minimal_image_dir_with(dir, &[])
}

/// [`minimal_image_dir`] whose rootfs also holds `files` (path, mode,
/// content), e.g. a stand-in actions runner.
pub fn minimal_image_dir_with(dir: &Path, files: &[(&str, u32, &str)]) -> anyhow::Result<PathBuf> {
    let assets = assets::get()?;
    let out = dir.join("image");
    std::fs::create_dir_all(&out)?;
    let base = crate::disk::base_image_with(dir, assets, files)?;
    std::fs::rename(&base, out.join("rootfs.ext4")).context("placing rootfs.ext4")?;
    std::os::unix::fs::symlink(&assets.kernel.vmlinuz, out.join("vmlinuz"))?;
    std::os::unix::fs::symlink(&assets.initrd, out.join("initrd"))?;
    let manifest = json!({
        "format": 1,
        "suite": "test",
        "kernel": { "release": assets.kernel.release, "modules": module_names() },
        "accounts": {
            "user": "runner", "uid": RUNNER_UID, "gid": RUNNER_UID, "home": "/home/runner",
            "sudo_group": "kiln-sudo", "sudo_gid": 1100
        },
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(out)
}

/// The image `cargo xtask image` built (`KILN_TEST_IMAGE`, or the
/// workspace's `target/kiln-image`), if there is a complete one.
pub fn baked_image_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets::workspace().join("target/kiln-image"));
    kiln::vm::Image::open(&dir).ok().map(|_| dir)
}

/// Makes the async runtime open what it opens lazily on first use (the
/// SIGCHLD pipe of child processes, the blocking pool), so that counting
/// fds before and after a VM compares like with like.
pub async fn warm_up_runtime() {
    let _ = tokio::process::Command::new("true").status().await;
    let _ = tokio::task::spawn_blocking(|| ()).await;
}

/// The `kiln` binary of this checkout, built by `cargo build -p kiln --bin
/// kiln` into the target directory this test runs from (a no-op when it is
/// up to date). This crate depends on kiln's library only, so cargo does not
/// build the binary for its tests by itself.
pub fn kiln_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the test executable")?;
    // <target>/<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in <target>/<profile>/deps")?;
    let target = profile_dir
        .parent()
        .context("the test executable is not in <target>/<profile>/deps")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet", "--package", "kiln", "--bin", "kiln"])
        .arg("--target-dir")
        .arg(target)
        .current_dir(assets::workspace());
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .context("running cargo build for the kiln binary")?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p kiln --bin kiln failed ({status})"
    );
    let bin = profile_dir.join("kiln");
    anyhow::ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// File descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Processes whose parent is this process (zombies included), with their names.
pub fn children() -> Vec<(u32, String)> {
    children_of(std::process::id())
}

pub fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in proc.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split at ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push((pid, comm.to_owned()));
        }
    }
    out
}

/// Every file, directory or socket below `dir` (not `dir` itself).
pub fn entries_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Unix sockets this host has bound at paths below `dir` (listed in
/// `/proc/net/unix` while any process holds them, even once unlinked).
pub fn unix_sockets_below(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Mount points below `dir` in this process's mount namespace.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// What a process runs as and with, read from `/proc/<pid>/`.
#[derive(Debug, Clone)]
pub struct ProcView {
    pub pid: u32,
    /// `Name:` of its status (the executable's name, 15 bytes at most).
    pub name: String,
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    /// `Seccomp:` (0 off, 1 strict, 2 filter).
    pub seccomp: Option<u32>,
    pub no_new_privs: Option<u32>,
    /// `NAME=value` entries.
    pub environ: Vec<String>,
    /// `/proc/<pid>/cgroup`.
    pub cgroups: String,
}

/// The processes whose working directory is below `path` (a confined
/// QEMU and its vhost-device-vsock run in their VM's directory).
pub fn processes_working_below(path: &Path) -> Vec<ProcView> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            cwd.starts_with(path).then(|| proc_view(pid))?
        })
        .collect()
}

fn proc_view(pid: u32) -> Option<ProcView> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
    Some(ProcView {
        pid,
        name: field("Name:").unwrap_or_default(),
        uids: field("Uid:")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect(),
        seccomp: field("Seccomp:").and_then(|v| v.parse().ok()),
        no_new_privs: field("NoNewPrivs:").and_then(|v| v.parse().ok()),
        environ: environ
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect(),
        cgroups: std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default(),
    })
}

/// Processes whose command line mentions `path` (a VM's QEMU or
/// vhost-device-vsock names its directory) or that work below it (a
/// confined QEMU names its files relative to its VM's directory).
pub fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // A confined QEMU names its files relative to its working directory.
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(path) {
            out.push(cmdline);
        }
    }
    out
}

/// What is below a disks directory besides its scratch disk templates,
/// which stay for the next VMs (`kiln::disk::Templates`): VMs' disks.
pub fn scratch_disks_left(disks: &Path) -> Vec<PathBuf> {
    let templates = disks.join(kiln::vm::TEMPLATES_DIR);
    entries_below(disks)
        .into_iter()
        .filter(|p| !p.starts_with(&templates))
        .collect()
}

/// Nothing of any VM is left under `root`, laid out as `$KILN_RUNTIME_DIR
/// = root/run` and `$KILN_DISK_DIR = root/disks`: no VM directory, CID
/// lease, scratch disk, socket, or process naming it.
pub fn assert_no_vm_left(root: &Path) {
    let run = root.join("run");
    let left: Vec<PathBuf> = [run.join("vms"), run.join("cids")]
        .iter()
        .flat_map(|d| entries_below(d))
        .chain(scratch_disks_left(&root.join("disks")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let sockets = unix_sockets_below(root);
    assert!(sockets.is_empty(), "sockets left: {sockets:?}");
    let procs = processes_mentioning(root);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}
