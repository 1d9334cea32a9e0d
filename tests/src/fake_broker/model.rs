//! The fake broker's state and its rules, without HTTP: runner groups,
//! scale sets (labels, one session, a message queue), jobs (queued,
//! offered, assigned, running, completed), runners, and how they move:
//! assignment at poll time gated by the capacity the poll reports, the
//! GHES offer-and-acquire flow, a JIT runner starting the oldest assigned
//! job, a runner's deletion completing it, and jobs taken back (cancelled
//! and queued again, at most [`MAX_REASSIGNMENTS`] times) when nobody
//! starts them in time or their scale set's session ends.
//!
//! Events for a scale set wait in its `pending` list until a poll folds
//! them into one message (a JSON array), which stays in the queue until it
//! is deleted.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::wire;

/// How often GitHub takes a job back from scale sets that did not start
/// it before it stays cancelled (the reference: "up to 3 times").
pub const MAX_REASSIGNMENTS: u32 = 3;

/// The id of the default runner group ("Default").
pub const DEFAULT_GROUP: u64 = 1;

/// How the fake behaves; every field has a setter on
/// [`super::FakeBroker`] too.
#[derive(Clone, Debug)]
pub struct Settings {
    /// GHES: jobs are first offered (`JobAvailable`) and assigned only once
    /// acquired; github.com (false): assigned directly.
    pub ghes: bool,
    /// An assigned job no runner started for this long is taken back.
    pub reassign_after: Duration,
    /// A session nobody polled for this long ends.
    pub session_timeout: Duration,
    /// How long a poll is held when there is nothing to answer (GitHub:
    /// about 50 s), before 202.
    pub poll_hold: Duration,
    /// The admin JWT's lifetime (its `exp`).
    pub admin_token_lifetime: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ghes: false,
            reassign_after: Duration::from_secs(60),
            session_timeout: Duration::from_secs(120),
            poll_hold: Duration::from_secs(50),
            admin_token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A job's `jobId` (a UUID string): how tests and the wire name a job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey(pub String);

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a scale set (none has it).
    Queued,
    /// GHES: offered (`JobAvailable`) to one or more scale sets, not yet
    /// acquired.
    Available,
    /// Assigned to a scale set, no runner yet.
    Assigned,
    /// A runner of its scale set has it.
    Running,
    /// Over: `succeeded` (its runner was deleted) or `canceled` (taken
    /// back more than [`MAX_REASSIGNMENTS`] times).
    Completed { result: String },
}

/// A job as the tests see it.
#[derive(Clone, Debug)]
pub struct JobInfo {
    pub key: JobKey,
    /// `owner/name`.
    pub repository: String,
    pub labels: Vec<String>,
    /// 0 in github.com mode; positive and unique in GHES mode.
    pub runner_request_id: i64,
    pub state: JobState,
    /// The scale set that has it, or had it last (None while queued and
    /// never assigned).
    pub scale_set: Option<u64>,
    /// Runners ever attached to it.
    pub runs: u32,
    /// Their names, in order.
    pub runners: Vec<String>,
    /// Times it was taken back from a scale set.
    pub reassignments: u32,
}

pub(crate) struct Job {
    pub info: JobInfo,
    pub workflow_run_id: i64,
    pub queue_time: u64,
    pub scale_set_assign_time: Option<u64>,
    pub runner_assign_time: Option<u64>,
    pub finish_time: Option<u64>,
    /// When it was last assigned (for `reassign_after`).
    pub assigned_at: Option<Instant>,
    /// GHES: scale sets it is offered to.
    pub offered_to: HashSet<u64>,
    /// Its runner while running: (id, name).
    pub runner: Option<(u64, String)>,
}

pub(crate) struct Session {
    pub id: String,
    pub owner: String,
    /// The current queue token; earlier ones are refused.
    pub token: String,
    pub last_poll: Instant,
    /// Polls being held now: a session with one is polling.
    pub in_flight: u32,
}

pub(crate) struct ScaleSet {
    pub id: u64,
    pub name: String,
    pub group_id: u64,
    pub labels: Vec<String>,
    pub runner_setting: Value,
    pub created_on: String,
    pub session: Option<Session>,
    /// Undeleted messages: id -> body (a JSON array, as text).
    pub messages: BTreeMap<i64, String>,
    pub next_message_id: i64,
    /// Events not yet in a message.
    pub pending: Vec<Value>,
    /// The capacity the last poll reported.
    pub capacity: u32,
}

impl ScaleSet {
    /// Whether a job with `labels` may run here: every label is one of the
    /// scale set's (its name when it has none), case-insensitively.
    fn takes(&self, labels: &[String]) -> bool {
        let own: Vec<String> = if self.labels.is_empty() {
            vec![self.name.to_lowercase()]
        } else {
            self.labels.iter().map(|l| l.to_lowercase()).collect()
        };
        labels.iter().all(|l| own.contains(&l.to_lowercase()))
    }
}

pub(crate) struct Runner {
    pub name: String,
    pub scale_set: u64,
    pub job: Option<JobKey>,
}

/// Why a session cannot be opened.
pub(crate) enum SessionRefusal {
    NoScaleSet,
    Conflict(String),
}

/// Why a JIT runner cannot be made.
pub(crate) enum JitRefusal {
    NoScaleSet,
    NameTaken,
}

pub(crate) struct State {
    pub settings: Settings,
    /// Where `acquireJobUrl` points: the Actions service URL.
    pub service_url: String,
    pub groups: Vec<(u64, String)>,
    pub scale_sets: BTreeMap<u64, ScaleSet>,
    next_scale_set_id: u64,
    /// In the order they were queued.
    pub jobs: Vec<Job>,
    next_request_id: i64,
    next_run_id: i64,
    pub runners: BTreeMap<u64, Runner>,
    next_runner_id: u64,
    /// Every JIT config handed out, in order.
    pub jit_configs: Vec<String>,
}

impl State {
    pub fn new(settings: Settings, service_url: String) -> Self {
        Self {
            settings,
            service_url,
            groups: vec![(DEFAULT_GROUP, "Default".into())],
            scale_sets: BTreeMap::new(),
            next_scale_set_id: 1,
            jobs: Vec::new(),
            next_request_id: 1000,
            next_run_id: 5000,
            runners: BTreeMap::new(),
            next_runner_id: 300,
            jit_configs: Vec::new(),
        }
    }

    pub fn add_group(&mut self, name: &str) -> u64 {
        if let Some((id, _)) = self.groups.iter().find(|(_, n)| n == name) {
            return *id;
        }
        let id = self.groups.iter().map(|(id, _)| id + 1).max().unwrap_or(2);
        self.groups.push((id, name.to_owned()));
        id
    }

    pub fn group_name(&self, id: u64) -> Option<&str> {
        self.groups
            .iter()
            .find(|(g, _)| *g == id)
            .map(|(_, n)| n.as_str())
    }

    pub fn queue_job(&mut self, repository: &str, labels: &[&str], now: u64) -> JobKey {
        let key = JobKey(wire::uuid());
        let runner_request_id = if self.settings.ghes {
            self.next_request_id += 1;
            self.next_request_id
        } else {
            0
        };
        self.next_run_id += 1;
        self.jobs.push(Job {
            info: JobInfo {
                key: key.clone(),
                repository: repository.to_owned(),
                labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                runner_request_id,
                state: JobState::Queued,
                scale_set: None,
                runs: 0,
                runners: Vec::new(),
                reassignments: 0,
            },
            workflow_run_id: self.next_run_id,
            queue_time: now,
            scale_set_assign_time: None,
            runner_assign_time: None,
            finish_time: None,
            assigned_at: None,
            offered_to: HashSet::new(),
            runner: None,
        });
        key
    }

    pub fn find_scale_set(&self, group_id: u64, name: &str) -> Option<&ScaleSet> {
        self.scale_sets
            .values()
            .find(|s| s.group_id == group_id && s.name.eq_ignore_ascii_case(name))
    }

    /// A new scale set; None when the group already has one of that name.
    pub fn create_scale_set(
        &mut self,
        name: &str,
        group_id: u64,
        labels: Vec<String>,
        runner_setting: Value,
        now: u64,
    ) -> Option<&ScaleSet> {
        if self.find_scale_set(group_id, name).is_some() {
            return None;
        }
        let id = self.next_scale_set_id;
        self.next_scale_set_id += 1;
        let set = ScaleSet {
            id,
            name: name.to_owned(),
            group_id,
            labels,
            runner_setting,
            created_on: wire::rfc3339(now),
            session: None,
            messages: BTreeMap::new(),
            next_message_id: 1,
            pending: Vec::new(),
            capacity: 0,
        };
        Some(self.scale_sets.entry(id).or_insert(set))
    }

    /// Deletes a scale set with its queue and session; the jobs it was
    /// assigned but had not started are taken back.
    pub fn delete_scale_set(&mut self, id: u64, now: u64) -> bool {
        if self.scale_sets.remove(&id).is_none() {
            return false;
        }
        self.take_back_all(id, now);
        true
    }

    pub fn open_session(
        &mut self,
        set_id: u64,
        owner: &str,
        now: Instant,
    ) -> Result<(String, String), SessionRefusal> {
        let set = self
            .scale_sets
            .get_mut(&set_id)
            .ok_or(SessionRefusal::NoScaleSet)?;
        if set.session.is_some() {
            return Err(SessionRefusal::Conflict(set.name.clone()));
        }
        let session = Session {
            id: wire::uuid(),
            owner: owner.to_owned(),
            token: wire::queue_token(),
            last_poll: now,
            in_flight: 0,
        };
        let ids = (session.id.clone(), session.token.clone());
        set.session = Some(session);
        Ok(ids)
    }

    /// A new queue token for the session; the old one stops working.
    pub fn refresh_session(&mut self, set_id: u64, session_id: &str) -> bool {
        match self.session_mut(set_id, session_id) {
            Some(session) => {
                session.token = wire::queue_token();
                true
            }
            None => false,
        }
    }

    /// Ends the session of `set_id` (only `session_id`'s, when given): the
    /// jobs it was assigned but had not started are taken back.
    pub fn end_session(&mut self, set_id: u64, session_id: Option<&str>, now: u64) -> bool {
        let Some(set) = self.scale_sets.get_mut(&set_id) else {
            return false;
        };
        let matches = set
            .session
            .as_ref()
            .is_some_and(|s| session_id.is_none_or(|id| s.id == id));
        if !matches {
            return false;
        }
        set.session = None;
        self.take_back_all(set_id, now);
        true
    }

    pub fn session_mut(&mut self, set_id: u64, session_id: &str) -> Option<&mut Session> {
        self.scale_sets
            .get_mut(&set_id)?
            .session
            .as_mut()
            .filter(|s| s.id == session_id)
    }

    /// The scale set whose current session is `session_id`.
    pub fn set_of_session(&self, session_id: &str) -> Option<u64> {
        self.scale_sets
            .values()
            .find(|s| s.session.as_ref().is_some_and(|x| x.id == session_id))
            .map(|s| s.id)
    }

    /// The scale set and session a current queue token belongs to.
    pub fn queue_token_owner(&self, token: &str) -> Option<(u64, String)> {
        self.scale_sets.values().find_map(|s| {
            let session = s.session.as_ref().filter(|x| x.token == token)?;
            Some((s.id, session.id.clone()))
        })
    }

    /// Jobs `set_id` holds against its capacity: assigned and running,
    /// and (GHES) offered and not yet acquired.
    fn held(&self, set_id: u64) -> u32 {
        let n = self
            .jobs
            .iter()
            .filter(|j| match j.info.state {
                JobState::Assigned | JobState::Running => j.info.scale_set == Some(set_id),
                JobState::Available => j.offered_to.contains(&set_id),
                _ => false,
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// What a poll with `capacity` does before looking for a message:
    /// hands `set_id` jobs up to its capacity (assigns them, or in GHES
    /// mode offers them), then folds its pending events into one message.
    /// True when anything changed.
    pub fn poll(&mut self, set_id: u64, capacity: u32, now: u64, at: Instant) -> bool {
        let Some(set) = self.scale_sets.get_mut(&set_id) else {
            return false;
        };
        set.capacity = capacity;
        let mut room = capacity.saturating_sub(self.held(set_id));
        let mut changed = false;
        let ghes = self.settings.ghes;
        for i in 0..self.jobs.len() {
            if room == 0 {
                break;
            }
            let job = &self.jobs[i];
            let open = match job.info.state {
                JobState::Queued => true,
                JobState::Available => ghes && !job.offered_to.contains(&set_id),
                _ => false,
            };
            if !open || !self.scale_sets[&set_id].takes(&job.info.labels) {
                continue;
            }
            if ghes {
                self.offer(i, set_id);
            } else {
                self.assign(i, set_id, now, at);
            }
            room -= 1;
            changed = true;
        }
        self.fold(set_id) || changed
    }

    fn offer(&mut self, i: usize, set_id: u64) {
        let job = &mut self.jobs[i];
        job.offered_to.insert(set_id);
        job.info.state = JobState::Available;
        let acquire_url = format!(
            "{}/_apis/runtime/runnerscalesets/{set_id}/acquirejobs",
            self.service_url
        );
        let mut event = wire::job_message("JobAvailable", job);
        event["acquireJobUrl"] = json!(acquire_url);
        self.push_event(set_id, event);
    }

    fn assign(&mut self, i: usize, set_id: u64, now: u64, at: Instant) {
        let job = &mut self.jobs[i];
        job.offered_to.clear();
        job.info.state = JobState::Assigned;
        job.info.scale_set = Some(set_id);
        job.scale_set_assign_time = Some(now);
        job.runner_assign_time = None;
        job.assigned_at = Some(at);
        let event = wire::job_message("JobAssigned", job);
        self.push_event(set_id, event);
    }

    fn push_event(&mut self, set_id: u64, event: Value) {
        if let Some(set) = self.scale_sets.get_mut(&set_id) {
            set.pending.push(event);
        }
    }

    /// Puts the pending events of `set_id` into one new message.
    fn fold(&mut self, set_id: u64) -> bool {
        let Some(set) = self.scale_sets.get_mut(&set_id) else {
            return false;
        };
        if set.pending.is_empty() {
            return false;
        }
        let body = Value::Array(std::mem::take(&mut set.pending)).to_string();
        let id = set.next_message_id;
        set.next_message_id += 1;
        set.messages.insert(id, body);
        true
    }

    /// The first undeleted message of `set_id` after `last`.
    pub fn message_after(&self, set_id: u64, last: i64) -> Option<(i64, String)> {
        let set = self.scale_sets.get(&set_id)?;
        let (id, body) = set.messages.range(last.saturating_add(1)..).next()?;
        Some((*id, body.clone()))
    }

    /// GHES: the jobs among `ids` (runner request ids) offered to
    /// `set_id` and not yet acquired become its, assigned; returns them.
    pub fn acquire(&mut self, set_id: u64, ids: &[i64], now: u64, at: Instant) -> Vec<i64> {
        let mut acquired = Vec::new();
        for id in ids {
            let found = self.jobs.iter().position(|j| {
                j.info.runner_request_id == *id
                    && j.info.state == JobState::Available
                    && j.offered_to.contains(&set_id)
            });
            if let Some(i) = found {
                self.assign(i, set_id, now, at);
                acquired.push(*id);
            }
        }
        acquired
    }

    /// A JIT runner for `set_id`; it starts the scale set's oldest assigned
    /// job that has no runner, if any. Returns the runner's id.
    pub fn add_runner(&mut self, set_id: u64, name: &str, now: u64) -> Result<u64, JitRefusal> {
        if !self.scale_sets.contains_key(&set_id) {
            return Err(JitRefusal::NoScaleSet);
        }
        if self
            .runners
            .values()
            .any(|r| r.scale_set == set_id && r.name == name)
        {
            return Err(JitRefusal::NameTaken);
        }
        self.next_runner_id += 1;
        let id = self.next_runner_id;
        let waiting = self
            .jobs
            .iter()
            .enumerate()
            .filter(|(_, j)| j.info.state == JobState::Assigned && j.info.scale_set == Some(set_id))
            .min_by_key(|(_, j)| j.assigned_at)
            .map(|(i, _)| i);
        let mut runner = Runner {
            name: name.to_owned(),
            scale_set: set_id,
            job: None,
        };
        if let Some(i) = waiting {
            let job = &mut self.jobs[i];
            job.info.state = JobState::Running;
            job.info.runs += 1;
            job.info.runners.push(name.to_owned());
            job.runner = Some((id, name.to_owned()));
            job.runner_assign_time = Some(now);
            runner.job = Some(job.info.key.clone());
            let mut event = wire::job_message("JobStarted", job);
            event["runnerId"] = json!(id);
            event["runnerName"] = json!(name);
            self.push_event(set_id, event);
        }
        self.runners.insert(id, runner);
        Ok(id)
    }

    /// Deletes a runner; the job it ran completes (`succeeded`).
    pub fn delete_runner(&mut self, id: u64, now: u64) -> bool {
        let Some(runner) = self.runners.remove(&id) else {
            return false;
        };
        let Some(key) = runner.job else {
            return true;
        };
        if let Some(job) = self.jobs.iter_mut().find(|j| j.info.key == key) {
            job.info.state = JobState::Completed {
                result: "succeeded".into(),
            };
            job.finish_time = Some(now);
            let mut event = wire::job_message("JobCompleted", job);
            event["result"] = json!("succeeded");
            event["runnerId"] = json!(id);
            event["runnerName"] = json!(runner.name);
            job.runner = None;
            self.push_event(runner.scale_set, event);
        }
        true
    }

    /// Takes back every job `set_id` was assigned or offered and has not
    /// started.
    fn take_back_all(&mut self, set_id: u64, now: u64) {
        for i in 0..self.jobs.len() {
            let job = &mut self.jobs[i];
            if job.info.state == JobState::Available && job.offered_to.remove(&set_id) {
                if job.offered_to.is_empty() {
                    job.info.state = JobState::Queued;
                }
                continue;
            }
            if job.info.state == JobState::Assigned && job.info.scale_set == Some(set_id) {
                self.take_back(i, now);
            }
        }
    }

    /// Job `i`, assigned and not started: `JobCompleted{canceled}` to its
    /// scale set, then queued again, or cancelled for good after
    /// [`MAX_REASSIGNMENTS`].
    fn take_back(&mut self, i: usize, now: u64) {
        let job = &mut self.jobs[i];
        let Some(set_id) = job.info.scale_set else {
            return;
        };
        let mut event = wire::job_message("JobCompleted", job);
        event["result"] = json!("canceled");
        event["runnerId"] = json!(0);
        event["runnerName"] = json!("");
        event["finishTime"] = json!(wire::rfc3339(now));
        job.assigned_at = None;
        if job.info.reassignments < MAX_REASSIGNMENTS {
            job.info.reassignments += 1;
            job.info.state = JobState::Queued;
            job.scale_set_assign_time = None;
        } else {
            job.info.state = JobState::Completed {
                result: "canceled".into(),
            };
            job.finish_time = Some(now);
        }
        self.push_event(set_id, event);
    }

    /// Ends sessions nobody polled for `session_timeout` and takes back
    /// jobs nobody started for `reassign_after`. Returns whether anything
    /// changed and when the next such deadline is.
    pub fn reap(&mut self, now: u64, at: Instant) -> (bool, Option<Instant>) {
        let mut changed = false;
        let timeout = self.settings.session_timeout;
        let idle: Vec<u64> = self
            .scale_sets
            .values()
            .filter(|s| {
                s.session
                    .as_ref()
                    .is_some_and(|x| x.in_flight == 0 && at >= x.last_poll + timeout)
            })
            .map(|s| s.id)
            .collect();
        for id in idle {
            changed |= self.end_session(id, None, now);
        }
        let after = self.settings.reassign_after;
        for i in 0..self.jobs.len() {
            let job = &self.jobs[i];
            let late = job.info.state == JobState::Assigned
                && job.assigned_at.is_some_and(|t| at >= t + after);
            if late {
                self.take_back(i, now);
                changed = true;
            }
        }
        (changed, self.next_deadline())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self.scale_sets.values().filter_map(|s| {
            let x = s.session.as_ref().filter(|x| x.in_flight == 0)?;
            Some(x.last_poll + self.settings.session_timeout)
        });
        let jobs = self
            .jobs
            .iter()
            .filter(|j| j.info.state == JobState::Assigned)
            .filter_map(|j| Some(j.assigned_at? + self.settings.reassign_after));
        sessions.chain(jobs).min()
    }

    /// GitHub's statistics for `set_id`.
    pub fn statistics(&self, set_id: u64) -> Value {
        let takes = |j: &Job| {
            self.scale_sets
                .get(&set_id)
                .is_some_and(|s| s.takes(&j.info.labels))
        };
        let mine = |j: &&Job| j.info.scale_set == Some(set_id);
        let count = |f: &dyn Fn(&Job) -> bool| self.jobs.iter().filter(|j| f(j)).count();
        let available =
            count(&|j| matches!(j.info.state, JobState::Queued | JobState::Available) && takes(j));
        let assigned =
            count(&|j| matches!(j.info.state, JobState::Assigned | JobState::Running) && mine(&j));
        let running = count(&|j| j.info.state == JobState::Running && mine(&j));
        let runners: Vec<&Runner> = self
            .runners
            .values()
            .filter(|r| r.scale_set == set_id)
            .collect();
        let busy = runners.iter().filter(|r| r.job.is_some()).count();
        json!({
            "totalAvailableJobs": available,
            "totalAcquiredJobs": assigned,
            "totalAssignedJobs": assigned,
            "totalRunningJobs": running,
            "totalRegisteredRunners": runners.len(),
            "totalBusyRunners": busy,
            "totalIdleRunners": runners.len() - busy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ghes: bool) -> State {
        let settings = Settings {
            ghes,
            ..Settings::default()
        };
        State::new(settings, "http://svc".into())
    }

    fn set(s: &mut State, name: &str, labels: &[&str]) -> u64 {
        let labels = labels.iter().map(|l| (*l).to_owned()).collect();
        s.create_scale_set(name, DEFAULT_GROUP, labels, json!({}), 0)
            .map(|x| x.id)
            .unwrap()
    }

    #[test]
    fn labels_match_case_insensitively_and_a_bare_scale_set_by_its_name() {
        let mut s = state(false);
        let a = set(&mut s, "kiln-a", &["Self-Hosted", "kiln"]);
        let bare = set(&mut s, "bare", &[]);
        let key = s.queue_job("acme/app", &["self-hosted", "KILN"], 0);
        let other = s.queue_job("acme/app", &["bare"], 0);
        assert!(s.poll(bare, 5, 0, Instant::now()));
        assert!(s.poll(a, 5, 0, Instant::now()));
        let owner = |k: &JobKey| {
            s.jobs
                .iter()
                .find(|j| &j.info.key == k)
                .unwrap()
                .info
                .scale_set
        };
        assert_eq!((owner(&key), owner(&other)), (Some(a), Some(bare)));
    }

    #[test]
    fn a_job_acquired_by_one_scale_set_is_no_longer_offered_to_another() {
        let mut s = state(true);
        let a = set(&mut s, "a", &["kiln"]);
        let b = set(&mut s, "b", &["kiln"]);
        s.queue_job("acme/app", &["kiln"], 0);
        s.poll(a, 1, 0, Instant::now());
        s.poll(b, 1, 0, Instant::now());
        let id = s.jobs[0].info.runner_request_id;
        assert_eq!(s.jobs[0].offered_to.len(), 2);
        assert_eq!(s.acquire(b, &[id], 0, Instant::now()), [id]);
        assert!(s.acquire(a, &[id], 0, Instant::now()).is_empty());
        assert_eq!(s.held(a), 0);
        assert_eq!(s.jobs[0].info.scale_set, Some(b));
    }
}
