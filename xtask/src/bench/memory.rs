//! Benchmark 5, memory: kiln-init's resident memory as the runner starts
//! (the probe reads PID 1's `VmRSS`) and its size on disk; the host side
//! per running VM, three ways: the `kiln run` process while its VM runs a
//! job; the VM layer embedded in this process, idle and with VMs running;
//! and the real `kiln serve` idle and with VMs running jobs ([`serve`]).
//!
//! - [`serve`] — `kiln serve` against the fake GitHub, with a stand-in runner.

pub mod serve;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln::vm::{DiscardSink, Progress, StopSignal};
use object::Object;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::churn::descendants;
use super::results::MemoryResults;
use super::stats::Stat;
use super::vmkit::{with_retries, Kit};

/// What the running VMs do while they are measured.
const HOLD: &[&str] = &["/bin/sh", "-c", "echo kiln-bench-ready; sleep 6"];
const READY: &str = "kiln-bench-ready";

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// RSS of `root`'s QEMU and vhost-device-vsock descendants, summed per kind.
fn vmm_rss(root: u32) -> (u64, u64, usize) {
    let (mut qemu, mut vhost, mut n) = (0, 0, 0);
    for pid in descendants(root) {
        let name = comm(pid);
        let rss = rss_kib(pid).unwrap_or(0);
        if name.starts_with("qemu-system") {
            qemu += rss;
            n += 1;
        } else if name.starts_with("vhost-device") {
            vhost += rss;
        }
    }
    (qemu, vhost, n)
}

/// The size of kiln-init as built for the image, and whether it carries a
/// symbol table (the release profile strips it).
pub fn binary_facts(path: &Path) -> anyhow::Result<(u64, bool)> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file =
        object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    let stripped =
        file.section_by_name(".symtab").is_none() && file.section_by_name(".debug_info").is_none();
    Ok((data.len() as u64, stripped))
}

/// Builds `bins` ((package, binary) pairs) in release mode, as deployed,
/// in one cargo invocation, and returns the directory they are in.
pub fn build_release(workspace: &Path, bins: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    build(workspace, bins, true)
}

/// Builds the fake GitHub API (`tests/src/bin/fake-github`) for the
/// `kiln serve` figures and returns it. A debug build: it is not measured.
pub fn build_fake_github(workspace: &Path) -> anyhow::Result<PathBuf> {
    Ok(build(workspace, &[("kiln-vm-tests", "fake-github")], false)?.join("fake-github"))
}

/// `bins` in one cargo invocation, release or debug; their directory.
fn build(workspace: &Path, bins: &[(&str, &str)], release: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let names: Vec<&str> = bins.iter().map(|(_, b)| *b).collect();
    let profile = if release { "release" } else { "debug" };
    eprintln!("bench: building {} ({profile})", names.join(", "));
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "--quiet"]);
    if release {
        cmd.arg("--release");
    }
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    let status = cmd
        .arg("--target-dir")
        .arg(&target)
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("building {} failed", names.join(", "));
    }
    Ok(target.join(profile))
}

/// Builds the `kiln` binary in release mode (as deployed) and returns it.
pub fn build_kiln(workspace: &Path) -> anyhow::Result<PathBuf> {
    Ok(build_release(workspace, &[("kiln", "kiln")])?.join("kiln"))
}

/// One `kiln run` with a job that holds the VM: the kiln process's RSS
/// once the job runs, and its VMM's.
async fn kiln_run_once(kit: &Kit, kiln: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let runtime = kit.runtime_root().join("kr");
    let mut child = tokio::process::Command::new(kiln)
        .arg("run")
        .arg("--image")
        .arg(&kit.image.dir)
        .args(["--backend", "qemu"])
        .args(["--cpus", &kit.vcpus.to_string()])
        .args(["--memory", &kit.memory_mib.to_string()])
        .arg("--")
        .args(HOLD)
        .env("KILN_RUNTIME_DIR", &runtime)
        .env("KILN_DISK_DIR", &kit.dirs.disks)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", kiln.display()))?;
    let pid = child.id().context("kiln exited at once")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        while let Some(l) = lines.next_line().await? {
            if l.contains(READY) {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(Duration::from_secs(300), ready).await {
        Ok(Ok(true)) => {}
        other => bail!("`kiln run` never started its job: {other:?}"),
    }
    // Let the output path settle before sampling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib(pid).context("reading kiln's RSS")?;
    let (qemu, vhost, _) = vmm_rss(pid);
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .context("`kiln run` did not end")??;
    if !status.success() {
        bail!("`kiln run` exited with {status}");
    }
    Ok((rss, qemu, vhost))
}

/// `vms` VMs at once through the VM layer in this process: this process's
/// RSS before and while they run, and their VMMs'.
async fn in_process_once(kit: &Kit, vms: usize) -> anyhow::Result<(u64, u64, u64, u64)> {
    let launcher = kit.launcher()?;
    let me = std::process::id();
    let idle = rss_kib(me).context("reading own RSS")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..vms {
        let req = kit.request(kit.job(HOLD)?);
        let l = launcher.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            let r = l
                .run(req, &mut DiscardSink, StopSignal::never(), Some(tx))
                .await;
            r.result.map(|_| ()).map_err(|e| e.to_string())
        });
    }
    drop(tx);
    let mut started = 0;
    let wait = async {
        while let Some(p) = rx.recv().await {
            if matches!(p, Progress::RunnerStarted { .. }) {
                started += 1;
                if started == vms {
                    return true;
                }
            }
        }
        false
    };
    if !tokio::time::timeout(Duration::from_secs(300), wait)
        .await
        .unwrap_or(false)
    {
        bail!("not all {vms} VMs started their job");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = rss_kib(me).context("reading own RSS")?;
    let (qemu, vhost, n) = vmm_rss(me);
    while let Some(r) = tasks.join_next().await {
        r.context("VM task")?.map_err(anyhow::Error::msg)?;
    }
    let n = n.max(1) as u64;
    Ok((idle, busy, qemu / n, vhost / n))
}

pub struct Inputs<'a> {
    pub kiln_init: &'a Path,
    /// From the boot benchmark: kiln-init's and systemd's RSS (KiB) as the
    /// runner started.
    pub kiln_init_rss: Stat,
    pub kiln_init_hwm: Stat,
    pub systemd_rss: Option<Stat>,
    pub kiln_binary: Option<PathBuf>,
    /// For the `kiln serve` figures; `None` skips them.
    pub serve: Option<serve::Binaries>,
    /// The bench's work directory (target/kiln-bench).
    pub work: &'a Path,
}

pub const IN_PROCESS_VMS: usize = 2;

pub async fn run(kit: &Kit, runs: usize, inputs: Inputs<'_>) -> anyhow::Result<MemoryResults> {
    let (bytes, stripped) = binary_facts(inputs.kiln_init)?;
    let mut incidents = Vec::new();
    let mut kiln_run = Vec::new();
    let (mut qemu, mut vhost) = (Vec::new(), Vec::new());
    if let Some(bin) = &inputs.kiln_binary {
        for i in 1..=runs {
            let (rss, q, v) = with_retries(
                &format!("`kiln run` memory run {i}"),
                &mut incidents,
                || kiln_run_once(kit, bin),
            )
            .await?;
            eprintln!("memory {i}/{runs}: kiln run {rss} KiB, its QEMU {q} KiB, vhost-device-vsock {v} KiB");
            kiln_run.push(rss as f64);
            qemu.push(q as f64);
            vhost.push(v as f64);
        }
    }
    let (mut idle, mut busy, mut per_vm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=runs {
        let (i_rss, b_rss, q, v) = with_retries(
            &format!("in-process memory run {i}"),
            &mut incidents,
            || in_process_once(kit, IN_PROCESS_VMS),
        )
        .await?;
        eprintln!(
            "memory {i}/{runs}: VM layer in process: idle {i_rss} KiB, {IN_PROCESS_VMS} VMs {b_rss} KiB"
        );
        idle.push(i_rss as f64);
        busy.push(b_rss as f64);
        per_vm.push((b_rss as f64 - i_rss as f64) / IN_PROCESS_VMS as f64);
        qemu.push(q as f64);
        vhost.push(v as f64);
    }
    let serve = match &inputs.serve {
        Some(bins) => Some(serve::run(kit, bins, inputs.work, runs, &mut incidents).await?),
        None => None,
    };
    let stat = |v: &[f64]| Stat::of(v).context("no memory figures");
    Ok(MemoryResults {
        kiln_init_rss_kib: inputs.kiln_init_rss,
        kiln_init_hwm_kib: inputs.kiln_init_hwm,
        kiln_init_bytes: bytes,
        kiln_init_stripped: stripped,
        systemd_rss_kib: inputs.systemd_rss,
        kiln_run_rss_kib: Stat::of(&kiln_run),
        in_process_idle_rss_kib: stat(&idle)?,
        in_process_busy_rss_kib: stat(&busy)?,
        in_process_vms: IN_PROCESS_VMS,
        in_process_per_vm_kib: stat(&per_vm)?,
        qemu_rss_kib: stat(&qemu)?,
        vhost_rss_kib: stat(&vhost)?,
        guest_memory_mib: kit.memory_mib,
        serve,
        incidents,
    })
}
