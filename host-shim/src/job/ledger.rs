//! What the job lifecycle writes to the journal ([`crate::store`]), and
//! when; a failed write is logged here, once, with what it means.
//!
//! - A job is recorded `queued` when a webhook (or the reconciler) queues
//!   it, so a restart queues it again; `running`, with the runner made for
//!   it, when its VM is about to start; removed once GitHub reports it
//!   `completed` (and the re-run decision is made).
//! - A runner registration is recorded before GitHub is asked for it and
//!   removed after it is deleted, so a restart deletes what a crash left.
//! - A VM is recorded as soon as it has an id (with its directory and
//!   CID), again when its VMM runs (pid and start time), and removed after
//!   its teardown. Its host resources are all named for its id, so the
//!   start-up scan finds them even without the record.
//! - When a VM ends for a reason that is not the job's own, the job its
//!   runner took is marked with why (an infrastructure failure), for the
//!   re-run once GitHub reports it failed.
//!
//! A full filesystem refuses new jobs (their VM does not start; GitHub
//! still has them queued, and the reconciler finds them again once there
//! is room) but never stops a running one.

use std::sync::Arc;

use crate::logs::events;
use crate::scheduler::QueuedJob;
use crate::store::{unix_now, JobRecord, JobState, Journal, RunnerRecord, StoreError, VmRecord};
use crate::vm::Progress;

/// VMs started for one job before the reconciler stops taking it again.
pub const MAX_ATTEMPTS: u32 = 3;

/// The journal as the job lifecycle uses it. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    journal: Arc<dyn Journal>,
}

impl Ledger {
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        Ledger { journal }
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }

    /// A job was queued: recorded so that a restart queues it again.
    pub fn queued(&self, job: &QueuedJob) -> Result<(), StoreError> {
        let rec = record_of(job, JobState::Queued, None);
        let kept = self.journal.job(job.job_id).ok().flatten();
        let rec = JobRecord {
            attempts: kept.as_ref().map_or(0, |k| k.attempts),
            reruns: kept.as_ref().map_or(0, |k| k.reruns),
            infra_failure: kept.and_then(|k| k.infra_failure),
            ..rec
        };
        self.write("recording a queued job", self.journal.put_job(&rec))
    }

    /// A scale-set message's jobs, recorded before the message is deleted
    /// (see [`crate::store::Journal::record_message`]).
    pub fn record_message(
        &self,
        scale_set_id: u64,
        message_id: i64,
        jobs: &[QueuedJob],
    ) -> Result<Option<Vec<u64>>, StoreError> {
        let recs: Vec<JobRecord> = jobs
            .iter()
            .map(|j| record_of(j, JobState::Queued, None))
            .collect();
        let r = self.journal.record_message(scale_set_id, message_id, &recs);
        if let Err(e) = &r {
            log_failure("recording a scale-set message", e);
        }
        r
    }

    /// The job's VM is about to start with runner `runner`. An error (a
    /// full disk) means the job must not start.
    pub fn starting(&self, job: &QueuedJob, runner: &str) -> Result<(), StoreError> {
        let kept = self.journal.job(job.job_id).ok().flatten();
        let rec = JobRecord {
            attempts: kept.as_ref().map_or(0, |k| k.attempts) + 1,
            reruns: kept.as_ref().map_or(0, |k| k.reruns),
            infra_failure: kept.and_then(|k| k.infra_failure),
            ..record_of(job, JobState::Running, Some(runner))
        };
        self.write("recording a starting job", self.journal.put_job(&rec))?;
        let reg = RunnerRecord {
            runner_id: None,
            name: runner.to_owned(),
            scope: String::new(),
            job_id: job.job_id,
            vm_id: None,
            created_unix: unix_now(),
        };
        self.write("recording a runner", self.journal.put_runner(&reg))
    }

    /// GitHub registered runner `runner` as `runner_id` in `scope`.
    pub fn registered(&self, job: &QueuedJob, runner: &str, runner_id: u64, scope: &str) {
        let reg = RunnerRecord {
            runner_id: Some(runner_id),
            name: runner.to_owned(),
            scope: scope.to_owned(),
            job_id: job.job_id,
            vm_id: None,
            created_unix: unix_now(),
        };
        let _ = self.write("recording a runner's id", self.journal.put_runner(&reg));
    }

    /// The runner registration is gone at GitHub (or was never made).
    pub fn runner_gone(&self, runner: &str) {
        let _ = self.write("forgetting a runner", self.journal.remove_runner(runner));
    }

    /// A milestone of a VM's run for job `job_id` of `pool`.
    pub fn vm_progress(&self, pool: &str, job_id: u64, p: &Progress) {
        match p {
            Progress::Prepared { id, dir, cid } => {
                let rec = VmRecord {
                    id: id.clone(),
                    pool: pool.to_owned(),
                    job_id: Some(job_id),
                    dir: dir.clone(),
                    vmm_pid: None,
                    vmm_start_ticks: None,
                    cid: Some(*cid),
                    uid: None,
                    netns: None,
                    links: Vec::new(),
                    scratch: None,
                    jail: None,
                    cgroup: None,
                    created_unix: unix_now(),
                };
                let _ = self.write("recording a VM", self.journal.put_vm(&rec));
            }
            Progress::VmmStarted { pid: Some(pid) } => self.vmm_started(job_id, *pid),
            _ => {}
        }
    }

    fn vmm_started(&self, job_id: u64, pid: u32) {
        let Ok(vms) = self.journal.vms() else {
            return;
        };
        let Some(mut rec) = vms.into_iter().find(|v| v.job_id == Some(job_id)) else {
            return;
        };
        rec.vmm_pid = Some(pid);
        rec.vmm_start_ticks = start_ticks(pid);
        let _ = self.write("recording a VMM", self.journal.put_vm(&rec));
    }

    /// VM `id` is torn down.
    pub fn vm_gone(&self, id: &str) {
        let _ = self.write("forgetting a VM", self.journal.remove_vm(id));
    }

    /// Runner `runner`'s VM ended for `why`, not the job's own doing: the
    /// job the runner took (as GitHub reported it, else the one it was
    /// made for) is marked for a re-run once GitHub reports it failed.
    pub fn infra_failure(&self, made_for: u64, runner: &str, why: &str) {
        let took = self
            .journal
            .jobs_in(&[JobState::Running, JobState::Queued, JobState::Finished])
            .unwrap_or_default()
            .into_iter()
            .find(|j| j.runner_name.as_deref() == Some(runner))
            .map_or(made_for, |j| j.job_id);
        tracing::warn!(job_id = took, runner, why, "the VM ended for a reason not the job's own: the job is re-run if GitHub reports it failed");
        let _ = self.write(
            "recording an infrastructure failure",
            self.journal.mark_infra_failure(took, why).map(drop),
        );
        let _ = self.journal.set_job_state(took, JobState::Finished);
    }

    /// The job's VM ended by the job's own doing (or the job never ran).
    pub fn finished(&self, job_id: u64) {
        let _ = self.write(
            "recording a finished job",
            self.journal
                .set_job_state(job_id, JobState::Finished)
                .map(drop),
        );
    }

    /// GitHub says runner `runner` took the job of `rec` (`in_progress`):
    /// the job is recorded against it (a JIT runner takes any job its
    /// labels fit, not always the one it was made for), and no other job is.
    pub fn took(&self, rec: &JobRecord, runner: &str) {
        let jobs = self
            .journal
            .jobs_in(&[JobState::Running, JobState::Queued])
            .unwrap_or_default();
        for mut other in jobs {
            if other.job_id != rec.job_id && other.runner_name.as_deref() == Some(runner) {
                other.runner_name = None;
                other.state = JobState::Finished;
                let _ = self.journal.put_job(&other);
            }
        }
        let kept = self.journal.job(rec.job_id).ok().flatten();
        let rec = JobRecord {
            attempts: kept.as_ref().map_or(1, |k| k.attempts.max(1)),
            reruns: kept.as_ref().map_or(0, |k| k.reruns),
            infra_failure: kept.and_then(|k| k.infra_failure),
            ..rec.clone()
        };
        let _ = self.write(
            "recording which runner took a job",
            self.journal.put_job(&rec),
        );
    }

    /// GitHub reports job `job_id` completed: remembered (a later `queued`
    /// for it is ignored, also after a restart), and its record is handed
    /// back for the re-run decision and removed.
    pub fn completed(&self, job_id: u64) -> Option<JobRecord> {
        let _ = self.write(
            "remembering a completed job",
            self.journal.remember_completed(job_id),
        );
        let rec = self.journal.job(job_id).ok().flatten();
        let _ = self.journal.remove_job(job_id);
        rec
    }

    /// Re-runs Kiln asked for in workflow run `run_id` (a re-run job gets a
    /// new id, so the count is kept per run).
    pub fn reruns_in_run(&self, run_id: u64) -> u32 {
        self.journal
            .jobs_in(&[JobState::Queued, JobState::Running, JobState::Finished])
            .unwrap_or_default()
            .iter()
            .filter(|j| j.run_id == run_id)
            .map(|j| j.reruns)
            .sum()
    }

    /// Kiln asked GitHub to re-run `rec`'s job: kept (finished) with one
    /// more re-run, so the run's count holds.
    pub fn reran(&self, rec: &JobRecord) {
        let kept = JobRecord {
            state: JobState::Finished,
            reruns: rec.reruns + 1,
            updated_unix: unix_now(),
            ..rec.clone()
        };
        let _ = self.write("recording a re-run", self.journal.put_job(&kept));
    }

    /// Whether the reconciler should leave job `job_id` alone: Kiln has it
    /// queued or running, GitHub reported it completed, or Kiln tried it
    /// [`MAX_ATTEMPTS`] times already. A job Kiln finished with but GitHub
    /// still lists as queued (its VM never started) is taken again.
    pub fn knows(&self, job_id: u64) -> bool {
        let busy = self.journal.job(job_id).ok().flatten().is_some_and(|j| {
            matches!(j.state, JobState::Queued | JobState::Running) || j.attempts >= MAX_ATTEMPTS
        });
        busy || self.journal.is_completed(job_id).unwrap_or(false)
    }

    /// Logs a failed write once, saying what it means.
    fn write(&self, what: &str, r: Result<(), StoreError>) -> Result<(), StoreError> {
        if let Err(e) = &r {
            log_failure(what, e);
        }
        r
    }
}

/// Logs a failed journal write once, saying what it means.
fn log_failure(what: &str, e: &StoreError) {
    if e.is_full() {
        tracing::error!(event = %events::JOURNAL_FULL, error = %e, "{what}: the journal's filesystem is full: new jobs are refused until there is room; running jobs go on");
    } else {
        tracing::error!(error = %e, "{what}: the journal could not be written; a crash now may leave this behind until the start-up scan");
    }
}

/// A job's record in `state`, with `runner` as the runner that has it.
fn record_of(job: &QueuedJob, state: JobState, runner: Option<&str>) -> JobRecord {
    let (owner, repo) = job
        .repository
        .split_once('/')
        .map_or((job.repository.clone(), String::new()), |(o, r)| {
            (o.to_owned(), r.to_owned())
        });
    JobRecord {
        job_id: job.job_id,
        delivery: Some(job.delivery.to_string()),
        owner,
        repo,
        pool: job.pool.name.clone(),
        labels: job.labels.clone(),
        state,
        attempts: 0,
        runner_name: runner.map(str::to_owned),
        infra_failure: None,
        reruns: 0,
        updated_unix: unix_now(),
        run_id: job.run_id,
        installation_id: job.installation_id,
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock
/// ticks after boot (the comm before it may hold spaces and parentheses).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow the comm: field 22 is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_are_this_process_s_and_stable() {
        let me = std::process::id();
        let a = start_ticks(me).expect("own stat");
        assert_eq!(start_ticks(me), Some(a));
        assert!(start_ticks(u32::MAX).is_none());
    }
}
