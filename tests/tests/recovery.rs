//! A daemon you can kill: `kiln serve` (the binary, over QEMU, against a
//! fake GitHub on 127.0.0.1) is SIGKILLed while a job's VM runs, then
//! started again. The second one must remove everything the first left —
//! the VMM and its helper, the VM directory, the scratch disk, the VM's
//! cgroup — and delete the runner registration, all within a minute; and
//! the job, whose VM died with its daemon, is re-run once GitHub reports
//! it failed. Repeated [`ROUNDS`] times with the same directories, so
//! nothing may accumulate either.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use kiln_vm_tests::daemon::{self, Delivery, Setup, LABELS};
use kiln_vm_tests::events::{self, names};
use kiln_vm_tests::fake_github::FakeGithub;
use kiln_vm_tests::{assets, layer};

/// Kill and restart this many times in a row (`KILN_TEST_RECOVERY_ROUNDS`).
const ROUNDS: u32 = 10;
/// What the issue asks of the cleanup after a restart.
const CLEANUP_WITHIN: Duration = Duration::from_secs(60);

/// The stand-in runner (its hostname carries the job id): jobs 9xxx hold
/// until their VM dies, 7xx1 print that they ran and exit 0, 7xx2 exit 1.
const STAND_IN: &str = r#"#!/bin/sh
case "$(hostname)" in
  *-9[0-9][0-9][0-9]-*) echo holding; exec sleep 600;;
  *-7[0-9][0-9]1-*) echo "ran without a webhook"; exit 0;;
  *) echo "failing by itself"; exit 1;;
esac
"#;

#[test]
fn a_sigkilled_daemon_leaves_nothing_after_its_restart() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: kiln serve needs root for its VMs' uids and cgroups");
        return;
    }
    let _ = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fake = FakeGithub::start().await;
        let root = tempfile::Builder::new()
            .prefix("kiln-rec-")
            .tempdir_in("/tmp")
            .unwrap();
        let port = free_port();
        let config = write_config(root.path(), &fake.url, port);
        let rounds = std::env::var("KILN_TEST_RECOVERY_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(ROUNDS);
        let mut took_by_point = Vec::new();
        for round in 0..rounds {
            let job_id = 9_000 + u64::from(round);
            let at = KillAt::of_round(round);
            // The second Disk round also loses its journal.
            let truncate = round == 4;
            let took =
                kill_then_restart(root.path(), &config, port, &fake, job_id, at, truncate).await;
            took_by_point.push((at, took));
        }
        eprintln!("cleanup after SIGKILL, per round: {took_by_point:?}");
        // A start after a SIGTERM drain finds nothing to clean; one after
        // a SIGKILL finds the VM it left.
        let starts = events::find(&logs(root.path()), names::RECOVERY_CLEANUP, &[]);
        assert_eq!(starts.len(), 2 * rounds as usize, "{starts:#?}");
        for (i, line) in starts.iter().enumerate() {
            let want = if i % 2 == 0 { 0 } else { 1 };
            assert_eq!(line.u64("vms"), Some(want), "start {i}: {line:?}");
        }
        // Everything of every round is gone: nothing accumulates.
        layer::assert_no_vm_left(root.path());
        assert!(cgroups_named(&vm_ids_seen(root.path())).is_empty());
    });
}

/// When in a VM's life the daemon is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillAt {
    /// Its scratch disk exists (before the VMM).
    Disk,
    /// Its VMM runs, the guest has not had its Job.
    Vmm,
    /// The job runs.
    Job,
}

impl KillAt {
    fn of_round(round: u32) -> KillAt {
        [KillAt::Job, KillAt::Disk, KillAt::Vmm][round as usize % 3]
    }
}

/// One round: a job's VM is set up or runs, kiln is SIGKILLed at `at`, a
/// new kiln cleans up. With `truncate_journal` the journal is cut short
/// before the restart: it is moved aside, and the host scan still cleans.
async fn kill_then_restart(
    root: &Path,
    config: &Path,
    port: u16,
    fake: &FakeGithub,
    job_id: u64,
    at: KillAt,
    truncate_journal: bool,
) -> Duration {
    let mut first = start_kiln(root, config, port).await;
    let answer = deliver(port, "queued", job_id, None, None).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    wait_for_kill_point(root, job_id, at, &mut first).await;
    let registered = fake.registered();
    let runner = registered.last().unwrap();
    let runner_id = runner.id;
    let runner_name = runner.request["name"].as_str().unwrap().to_owned();
    if at == KillAt::Job {
        // The runner took the job, as GitHub says in `in_progress`.
        fake.set_job(job_id, "acme/widgets", "in_progress");
        let answer = deliver(port, "in_progress", job_id, None, Some(&runner_name)).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    } else {
        // Cancelled meanwhile: not queued again after the restart.
        fake.set_job(job_id, "acme/widgets", "completed");
    }

    first.kill().unwrap();
    first.wait().unwrap();
    // What outlives its daemon: what the restart must clean.
    let left = layer::processes_working_below(root).len()
        + layer::scratch_disks_left(&root.join("disks")).len();
    assert!(left > 0, "nothing left to clean at {at:?}");
    if truncate_journal {
        let journal = root.join("state/journal.db");
        let len = std::fs::metadata(&journal).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap()
            .set_len(len.min(1000))
            .unwrap();
    }

    let restarted = Instant::now();
    let mut second = start_kiln(root, config, port).await;
    let took = wait_clean(root, restarted).await;
    if truncate_journal {
        let moved = events::one(&logs(root), names::JOURNAL_MOVED_ASIDE, &[]);
        assert!(
            moved
                .str("to")
                .is_some_and(|to| to.contains("journal.db.corrupt-")),
            "{moved:?}"
        );
    } else {
        assert!(
            fake.deleted().contains(&runner_id),
            "runner {runner_id} not deleted: {:?}",
            fake.deleted()
        );
    }
    if at == KillAt::Job && !truncate_journal {
        assert_rerun_after_failure(root, port, fake, job_id, &runner_name).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    second.wait().unwrap();
    took
}

/// Waits until job `job_id`'s VM got to `at`.
async fn wait_for_kill_point(root: &Path, job_id: u64, at: KillAt, kiln: &mut Child) {
    let reached = || match at {
        KillAt::Disk => !layer::scratch_disks_left(&root.join("disks")).is_empty(),
        KillAt::Vmm => layer::processes_working_below(root)
            .iter()
            .any(|p| p.name.starts_with("qemu-system")),
        KillAt::Job => log_says(root, job_id, "holding"),
    };
    let what = format!("job {job_id} never got to {at:?}");
    // Fine-grained: the disk comes a moment before the VMM.
    wait_while_kiln_runs(root, kiln, &what, Duration::from_millis(2), reached).await;
}

/// GitHub reports the job failed (its runner vanished with its VM): it is
/// re-run.
async fn assert_rerun_after_failure(
    root: &Path,
    port: u16,
    fake: &FakeGithub,
    job_id: u64,
    runner: &str,
) {
    let reruns_before = fake.reruns().len();
    fake.set_job(job_id, "acme/widgets", "completed");
    let answer = deliver(port, "completed", job_id, Some("failure"), Some(runner)).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let until = Instant::now() + Duration::from_secs(20);
    while fake.reruns().len() == reruns_before {
        assert!(
            Instant::now() < until,
            "job {job_id} was not re-run:\n{}",
            logs(root)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.reruns()[reruns_before], job_id);
}

/// Waits until nothing of any VM is left under `root` (processes, VM
/// directories, scratch disks, cgroups); returns how long it took.
async fn wait_clean(root: &Path, since: Instant) -> Duration {
    loop {
        let procs = layer::processes_working_below(root);
        let vms = layer::entries_below(&root.join("run/vms"));
        let disks = layer::scratch_disks_left(&root.join("disks"));
        let cgroups = cgroups_named(&vm_ids_seen(root));
        if procs.is_empty() && vms.is_empty() && disks.is_empty() && cgroups.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < CLEANUP_WITHIN,
            "still there {CLEANUP_WITHIN:?} after the restart: processes {procs:#?}, VM dirs {vms:?}, disks {disks:?}, cgroups {cgroups:?}\n{}",
            logs(root)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The VM ids kiln's log names (the `vm` field of its lines).
fn vm_ids_seen(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = events::lines(&logs(root))
        .iter()
        .filter_map(|l| l.str("vm"))
        .filter(|id| kiln::recover::is_vm_id(id))
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Cgroup directories named for one of `ids`, in any hierarchy.
fn cgroups_named(ids: &[String]) -> Vec<PathBuf> {
    let roots = [
        "/sys/fs/cgroup/kiln",
        "/sys/fs/cgroup/unified/kiln",
        "/sys/fs/cgroup/memory/kiln",
        "/sys/fs/cgroup/cpu/kiln",
    ];
    roots
        .iter()
        .flat_map(|r| ids.iter().map(move |id| Path::new(r).join(id)))
        .filter(|p| p.exists())
        .collect()
}

async fn wait_for_holding(root: &Path, job_id: u64, kiln: &mut Child) {
    wait_for_log(root, job_id, "holding", kiln).await;
}

async fn start_kiln(root: &Path, config: &Path, port: u16) -> Child {
    daemon::start(root, config, port)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn logs(root: &Path) -> String {
    daemon::logs(root)
}

fn free_port() -> u16 {
    daemon::free_port().unwrap()
}

/// The config, its secrets and the stand-in's image under `root`.
fn write_config(root: &Path, api_url: &str, port: u16) -> PathBuf {
    write_config_with(root, api_url, port, "")
}

/// [`write_config`] with more `[github]` keys.
fn write_config_with(root: &Path, api_url: &str, port: u16, github: &str) -> PathBuf {
    let setup = Setup {
        api_url,
        port,
        admin_listen: "off",
        github,
        stand_in: STAND_IN,
        webhook: true,
        pool: "",
    };
    daemon::write_config(root, &setup).unwrap()
}

/// Sends a signed `workflow_job` delivery; returns the whole answer.
async fn deliver(
    port: u16,
    action: &str,
    job_id: u64,
    conclusion: Option<&str>,
    runner: Option<&str>,
) -> String {
    let d = Delivery {
        action,
        job_id,
        conclusion,
        runner,
    };
    daemon::deliver(port, &d).await.unwrap()
}

/// GitHub as the source of truth: a queued job whose webhook never came is
/// found by the reconciler and runs within two of its intervals; a job
/// whose VMM is SIGKILLed mid-job is re-run once GitHub reports it failed,
/// and a job that exits 1 by itself is not.
#[test]
fn lost_webhooks_and_infrastructure_failures() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: kiln serve needs root for its VMs' uids and cgroups");
        return;
    }
    let _ = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fake = FakeGithub::start().await;
        fake.add_repository("acme/widgets");
        let root = tempfile::Builder::new()
            .prefix("kiln-rec-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = root.path();
        let port = free_port();
        let interval = Duration::from_secs(3);
        let config = write_config_with(root, &fake.url, port, "reconcile_interval = \"3s\"");
        let mut kiln = start_kiln(root, &config, port).await;

        // No webhook: only GitHub knows job 7001 is queued.
        let queued_at = Instant::now();
        fake.queue_job("acme/widgets", 7_100, 7_001, LABELS);
        // Picked up (its runner registered) within two intervals; the
        // runner takes it, as GitHub then says.
        let until = queued_at + 2 * interval + Duration::from_secs(5);
        while !fake.registered().iter().any(|r| {
            r.request["name"]
                .as_str()
                .is_some_and(|n| n.contains("-7001-"))
        }) {
            assert!(
                Instant::now() < until,
                "job 7001 not taken:\n{}",
                logs(root)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let taken = queued_at.elapsed();
        fake.set_job_outcome(7_001, "in_progress", None);
        wait_for_log(root, 7_001, "ran without a webhook", &mut kiln).await;
        eprintln!(
            "a job without a webhook: taken after {taken:?}, ran after {:?}",
            queued_at.elapsed()
        );

        // Job 9100's VMM dies mid-job: an infrastructure failure.
        let answer = deliver(port, "queued", 9_100, None, None).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        wait_for_holding(root, 9_100, &mut kiln).await;
        let runner = runner_of(&fake, 9_100);
        deliver(port, "in_progress", 9_100, None, Some(&runner)).await;
        let qemu = layer::processes_working_below(root)
            .into_iter()
            .find(|p| p.name.starts_with("qemu-system"))
            .expect("the job's QEMU");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(qemu.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        wait_for_log(root, 9_100, "[kiln] VM failed", &mut kiln).await;
        fake.set_job(9_100, "acme/widgets", "completed");
        deliver(port, "completed", 9_100, Some("failure"), Some(&runner)).await;
        let until = Instant::now() + Duration::from_secs(20);
        while !fake.reruns().contains(&9_100) {
            assert!(
                Instant::now() < until,
                "job 9100 was not re-run:\n{}",
                logs(root)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Job 7002 fails by itself: never re-run.
        let answer = deliver(port, "queued", 7_002, None, None).await;
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        wait_for_log(root, 7_002, "[kiln] exit 1", &mut kiln).await;
        let runner = runner_of(&fake, 7_002);
        deliver(port, "in_progress", 7_002, None, Some(&runner)).await;
        fake.set_job(7_002, "acme/widgets", "completed");
        deliver(port, "completed", 7_002, Some("failure"), Some(&runner)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(fake.reruns(), [9_100], "{}", logs(root));

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(kiln.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        kiln.wait().unwrap();
        layer::assert_no_vm_left(root);
        assert_eq!(fake.violations(), Vec::<String>::new());
    });
}

/// The name of the runner registered for `job_id`.
fn runner_of(fake: &FakeGithub, job_id: u64) -> String {
    fake.registered()
        .iter()
        .filter_map(|r| r.request["name"].as_str())
        .find(|n| n.contains(&format!("-{job_id}-")))
        .unwrap_or_else(|| panic!("no runner for job {job_id}"))
        .to_owned()
}

/// Waits until job `job_id`'s log holds `text`.
async fn wait_for_log(root: &Path, job_id: u64, text: &str, kiln: &mut Child) {
    let what = format!("job {job_id}'s log never said {text:?}");
    let said = || log_says(root, job_id, text);
    wait_while_kiln_runs(root, kiln, &what, Duration::from_millis(200), said).await;
}

/// Whether job `job_id`'s log holds `text`.
fn log_says(root: &Path, job_id: u64, text: &str) -> bool {
    layer::entries_below(&root.join("state/logs"))
        .iter()
        .filter(|p| p.to_string_lossy().contains(&format!("/{job_id}-")))
        .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(text)))
}

/// Polls `reached` every `every` until it holds; fails with `what` after
/// 240 s, or as soon as kiln exits.
async fn wait_while_kiln_runs(
    root: &Path,
    kiln: &mut Child,
    what: &str,
    every: Duration,
    mut reached: impl FnMut() -> bool,
) {
    let until = Instant::now() + Duration::from_secs(240);
    while !reached() {
        assert!(
            kiln.try_wait().unwrap().is_none(),
            "kiln exited:\n{}",
            logs(root)
        );
        assert!(Instant::now() < until, "{what}:\n{}", logs(root));
        tokio::time::sleep(every).await;
    }
}
