//! What `kiln serve` does at start, before it takes work, about what a
//! previous run left: a crash, a SIGKILL, a power loss.
//!
//! 1. The host: every VM no live Kiln process owns, found on the host
//!    (VM directories, scratch disks, cgroups, jails, namespaces, links)
//!    and in the journal, is killed (its VMM checked by pid and start
//!    time) and removed ([`crate::recover`]).
//! 2. The jobs those VMs ran: marked as failed by the infrastructure, so
//!    that GitHub's `completed` with a failure re-runs them (and queued
//!    again, for the case their VM never got to take them).
//! 3. The runner registrations the journal holds: deleted at GitHub.
//! 4. Runners in Kiln's scope with Kiln's prefix that are offline and not
//!    in the journal: deleted (a crash between registering a runner and
//!    recording its id leaves such a runner).
//! 5. The jobs that were queued: handed back to be queued again.
//!
//! Steps 1, 2 and 5 touch only the host and the journal and run before the
//! daemon listens; steps 3 and 4 talk to GitHub and run after it started,
//! so an unreachable GitHub delays nothing (its records stay for the next
//! start). Nothing here stops the daemon from starting.

use std::sync::Arc;

use super::ledger::Ledger;
use crate::config::Pool;
use crate::github::reconcile::{sweep_stale_runners, RUNNER_PREFIX};
use crate::github::{GithubApp, RunnerScope};
use crate::logs::events;
use crate::recover::{reconcile_host, HostLayout};
use crate::scheduler::QueuedJob;
use crate::store::{JobRecord, JobState};

/// Why a job's VM was gone after a restart.
const GONE: &str = "kiln serve restarted while the job's VM ran (the VM was killed and removed)";

/// Steps 1, 2 and 5, on the host alone (fast, before the daemon listens);
/// returns the jobs to queue again. A job whose VM was running is queued
/// again too, marked: the dispatch asks GitHub first and starts nothing for
/// a job no longer queued, whose re-run then waits for GitHub's
/// `completed`. Steps 3 and 4 ([`clean_github`]) run after the start.
pub(super) async fn recover(
    layout: &HostLayout,
    ledger: &Ledger,
    pools: &[Arc<Pool>],
) -> Vec<QueuedJob> {
    let journal = ledger.journal();
    let vms = journal.vms().unwrap_or_default();
    let report = reconcile_host(layout, &vms).await;
    tracing::info!(
        event = %events::RECOVERY_CLEANUP,
        vms = report.vms.len(),
        clean = report.is_clean(),
        stale_leases = report.stale_leases,
        ms = report.elapsed.as_millis() as u64,
        "start-up: what a previous kiln left on the host is removed"
    );
    let cleaned: Vec<String> = report.cleaned_ids().map(str::to_owned).collect();
    for vm in vms.iter().filter(|v| cleaned.contains(&v.id)) {
        ledger.vm_gone(&vm.id);
    }
    for job in journal.jobs_in(&[JobState::Running]).unwrap_or_default() {
        ledger.infra_failure(
            job.job_id,
            job.runner_name.as_deref().unwrap_or_default(),
            GONE,
        );
        // A scale set's job cannot be asked about before a new VM starts:
        // its runner had it; GitHub re-assigns it if it never started.
        let from_scale_set = pools
            .iter()
            .any(|p| p.name == job.pool && p.source.scale_set().is_some());
        if !from_scale_set {
            let _ = journal.set_job_state(job.job_id, JobState::Queued);
        }
    }
    journal
        .jobs_in(&[JobState::Queued])
        .unwrap_or_default()
        .into_iter()
        .filter_map(|rec| requeue(rec, pools))
        .collect()
}

/// Steps 3 and 4: the runner registrations a previous run left.
pub(super) async fn clean_github(
    ledger: &Ledger,
    github: &GithubApp,
    scope: &RunnerScope,
    webhook_pools: &[String],
) {
    let journal = ledger.journal();
    // Scale-set runners are deleted through their scale set (by its listener).
    let runners: Vec<_> = journal
        .runners()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.scope.starts_with(super::scale_sets::SCOPE_PREFIX))
        .collect();
    let installation = match github.installation_of(scope).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, runners = runners.len(), "start-up: cannot reach GitHub to delete the runners a previous kiln left; they stay recorded for the next start");
            return;
        }
    };
    for r in &runners {
        let Some(id) = r.runner_id else {
            // Never registered, or registered without its id recorded:
            // the sweep below finds it by name.
            ledger.runner_gone(&r.name);
            continue;
        };
        match github.delete_runner(installation, scope, id).await {
            Ok(_) => {
                tracing::info!(runner = %r.name, runner_id = id, "start-up: deleted the runner registration a previous kiln left");
                ledger.runner_gone(&r.name);
            }
            Err(e) => {
                tracing::error!(runner = %r.name, runner_id = id, error = %e, "start-up: cannot delete a runner registration a previous kiln left")
            }
        }
    }
    let known: Vec<String> = journal
        .runners()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    // Only names this host's webhook pools make: other hosts' runners
    // (their scale sets') are theirs to clean.
    let ours = |name: &str| {
        webhook_pools
            .iter()
            .any(|p| super::runner::is_named_for(name, p))
    };
    match sweep_stale_runners(github, installation, scope, RUNNER_PREFIX, |name| {
        known.iter().any(|k| k == name) || !ours(name)
    })
    .await
    {
        Ok(sweep) if !sweep.deleted.is_empty() => {
            let names: Vec<&str> = sweep.deleted.iter().map(|r| r.name.as_str()).collect();
            tracing::info!(deleted = ?names, "start-up: deleted offline Kiln runners nobody knows");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "start-up: cannot list the runners in scope"),
    }
}

/// A queued job's record as the scheduler takes it; `None` if its pool is
/// gone from the config.
fn requeue(rec: JobRecord, pools: &[Arc<Pool>]) -> Option<QueuedJob> {
    let Some(pool) = pools.iter().find(|p| p.name == rec.pool) else {
        tracing::warn!(job_id = rec.job_id, pool = %rec.pool, "start-up: a queued job's pool is no longer configured; it is not queued again");
        return None;
    };
    tracing::info!(job_id = rec.job_id, pool = %rec.pool, "start-up: queued again");
    Some(QueuedJob {
        delivery: rec.delivery.unwrap_or_else(|| "recovered".into()).into(),
        job_id: rec.job_id,
        run_id: rec.run_id,
        installation_id: rec.installation_id,
        repository: format!("{}/{}", rec.owner, rec.repo),
        labels: rec.labels,
        pool: Arc::clone(pool),
        received: std::time::Instant::now(),
    })
}
