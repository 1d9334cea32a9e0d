//! Benchmark 4, VM churn: N VMs started and torn down back to back through
//! the VM layer (`kiln::vm::Launcher`, what `kiln run` uses) with a trivial
//! job, and what the host holds before and after.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use kiln::vm::{DiscardSink, JobEnd, StopSignal};
use kiln_protocol::ExitStatus;

use super::results::{ChurnResults, Counts};
use super::stats::Stat;
use super::vmkit::Kit;

/// The trivial job.
pub const JOB: &[&str] = &["/bin/true"];

pub async fn run(kit: &Kit, vms: usize) -> anyhow::Result<ChurnResults> {
    let launcher = kit.launcher()?;
    // One VM first, not counted: the async runtime opens some things on
    // first use (the child-reaping pipe, blocking-pool threads), which are
    // not a VM's leftovers.
    eprintln!("churn: warm-up VM (not counted)");
    let mut warm_up = Vec::new();
    super::vmkit::with_retries("churn warm-up VM", &mut warm_up, || one(kit, &launcher)).await?;
    let before = count(kit.runtime_root(), &kit.dirs.disks);
    let started = Instant::now();
    let mut per_vm = Vec::new();
    let mut failures = 0;
    let mut incidents = Vec::new();
    for i in 1..=vms {
        let t = Instant::now();
        match one(kit, &launcher).await {
            Ok(()) => per_vm.push(t.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                failures += 1;
                // The whole error, with the console's last 16 KiB, for
                // diagnosing a rare guest hang after the fact.
                let kept = kit
                    .console_dir
                    .join(format!("console-churn-failed-{i}.log"));
                let _ = std::fs::write(&kept, format!("{e:#}\n"));
                let line = format!(
                    "churn VM {i} failed: {} (whole console: {})",
                    super::vmkit::summary(&e),
                    kept.display()
                );
                eprintln!("{line}");
                incidents.push(line);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = count(kit.runtime_root(), &kit.dirs.disks);
    eprintln!(
        "churn: {vms} VMs in {seconds:.1} s ({:.1}/min), {failures} failed; before {before:?}, after {after:?}",
        (vms - failures) as f64 * 60.0 / seconds
    );
    Ok(ChurnResults {
        vms,
        failures,
        seconds,
        vms_per_minute: (vms - failures) as f64 * 60.0 / seconds,
        per_vm: Stat::of(&per_vm).context("no VM of the churn run succeeded")?,
        before,
        after,
        job: JOB.join(" "),
        incidents: warm_up.into_iter().chain(incidents).collect(),
    })
}

async fn one(kit: &Kit, launcher: &kiln::vm::Launcher) -> anyhow::Result<()> {
    let req = kit.request(kit.job(JOB)?);
    let report = launcher
        .run(req, &mut DiscardSink, StopSignal::never(), None)
        .await;
    match &report.result {
        Ok(JobEnd::Exited(e)) if e.status == ExitStatus::Code(0) => {}
        other => bail!("{other:?}; console tail:\n{}", report.console_tail),
    }
    if let Err(e) = report.teardown {
        bail!("teardown: {e}");
    }
    Ok(())
}

/// What this process and the host hold that a VM could leave behind.
pub fn count(runtime: &Path, disks: &Path) -> Counts {
    Counts {
        fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
        processes: descendants(std::process::id()).len(),
        mounts: std::fs::read_to_string("/proc/self/mountinfo").map_or(0, |m| m.lines().count()),
        taps: taps(),
        runtime_files: entries(runtime),
        disk_files: entries(disks),
    }
}

/// Every entry below `dir` (not `dir` itself); 0 when it does not exist.
fn entries(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            1 + if is_dir { entries(&e.path()) } else { 0 }
        })
        .sum()
}

/// Network devices that are tun/tap devices.
fn taps() -> usize {
    std::fs::read_dir("/sys/class/net").map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().join("tun_flags").exists())
            .count()
    })
}

/// Parent pid of every process, from `/proc/<pid>/stat`.
fn parents() -> Vec<(u32, u32)> {
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            Some((pid, parse_ppid(&stat)?))
        })
        .collect()
}

/// The ppid field of a `/proc/<pid>/stat` line; the command name may hold
/// spaces and parentheses, so fields are counted after the last ')'.
fn parse_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `root` (zombies included).
pub fn descendants(root: u32) -> Vec<u32> {
    let all = parents();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid) in &all {
            if *ppid == p && !out.contains(pid) {
                out.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_after_a_tricky_name() {
        assert_eq!(parse_ppid("42 (qemu) x) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn counts_files_and_children() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("vms/a")).expect("mkdir");
        std::fs::write(d.path().join("vms/a/sock"), b"").expect("write");
        assert_eq!(entries(d.path()), 3);
        assert_eq!(entries(&d.path().join("missing")), 0);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        assert!(descendants(std::process::id()).contains(&child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!descendants(std::process::id()).contains(&child.id()));
    }
}
