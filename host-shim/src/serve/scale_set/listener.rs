//! One scale set's listener, in phases:
//!
//! 1. **Register**: find the scale set by name in the runner group, or
//!    create it with the pool's labels; its id goes to the pool's
//!    [`ScaleSetPool`] (runners are minted from it). Runners a previous
//!    run left in it are deleted.
//! 2. **Session**: the session a previous run of this host left (recorded
//!    in the journal) is closed first; then a new one is opened. A 409 —
//!    another session holds the scale set — is a standby, not a failure:
//!    wait and try again. A 404 means the scale set is gone: register again.
//! 3. **Listen**: long-poll the queue with `X-ScaleSetMaxCapacity` = the
//!    jobs this host holds for the pool plus those it could start now (the
//!    poll starts over when room opens up). A message's assigned jobs are
//!    recorded in the journal together with the message's id, *then* the
//!    message is deleted at GitHub, *then* the jobs are queued: a kill in
//!    between finds them recorded (queued again at start) and the
//!    redelivered message recognised. GHES offers jobs first (`JobAvailable`):
//!    as many as fit are acquired, and come back assigned. A `JobCompleted`
//!    for a job still queued here (GitHub took it back: nobody started it
//!    in time, or it was cancelled) takes it out of the queue.
//! 4. **Recover**: a 401 on the queue refreshes the session's token; a
//!    session or scale set deleted at GitHub is opened or registered again;
//!    anything else waits ([`super::backoff`]) and tries again. The admin
//!    token is renewed before it expires and after a 401
//!    ([`crate::github::scaleset::admin`]).
//! 5. **Stop**: the session is closed and forgotten.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::backoff::Backoff;
use crate::github::scaleset::{
    is_conflict, local_job_id, status_of, JobEvent, JobMessage, Message, Poll, ScaleSetClient,
    Session,
};
use crate::github::GithubError;
use crate::job::scale_sets::ScaleSetPool;
use crate::job::Jobs;
use crate::logs::events;
use crate::scheduler::{EnqueueError, QueuedJob, Scheduler};

/// While a poll is held, how often the room is looked at: more room than
/// the poll announced starts it over, so GitHub learns at once.
const ROOM_CHECK: Duration = Duration::from_secs(1);
/// The most capacity announced (GitHub's scale sets go to thousands).
const MAX_CAPACITY: u64 = 10_000;

/// What every listener of a daemon shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runner_group_id: u64,
    /// The sessions' `ownerName`: this host.
    pub owner: String,
}

/// The session owner's name: the host's name.
pub fn owner_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kiln".to_owned())
}

/// Why listening on a session ended.
enum End {
    Stopped,
    /// Open a new session (the old one is gone).
    SessionGone,
}

/// One scale set's listener.
pub struct Listener {
    set: Arc<ScaleSetPool>,
    client: Arc<ScaleSetClient>,
    jobs: Jobs,
    scheduler: Scheduler<Jobs>,
    settings: Settings,
    stop: watch::Receiver<bool>,
    backoff: Backoff,
}

impl Listener {
    pub fn new(
        set: Arc<ScaleSetPool>,
        jobs: Jobs,
        scheduler: Scheduler<Jobs>,
        settings: Settings,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client: Arc::clone(&set.client),
            set,
            jobs,
            scheduler,
            settings,
            stop,
            backoff: Backoff::default(),
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Runs until stopped.
    pub async fn run(mut self) {
        let span = tracing::info_span!("scale_set", scale_set = %self.set.name, pool = %self.set.pool.name);
        tracing::Instrument::instrument(
            async move {
                let mut cleaned = false;
                while !self.stopped() {
                    let Some(id) = self.register().await else {
                        continue;
                    };
                    if !cleaned {
                        self.delete_leftover_runners().await;
                        cleaned = true;
                    }
                    self.close_recorded_session().await;
                    let Some(session) = self.open_session(id).await else {
                        continue;
                    };
                    match self.listen(id, session).await {
                        End::Stopped => return,
                        End::SessionGone => {}
                    }
                }
            },
            span,
        )
        .await;
    }

    /// Waits `wait`, or less when stopped. True when stopped.
    async fn pause(&mut self, wait: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => self.stopped(),
            _ = stop.wait_for(|s| *s) => true,
        }
    }

    /// Logs a failure and waits before the next attempt.
    async fn recover(&mut self, problem: &'static str, error: &GithubError) {
        self.jobs
            .metrics()
            .scale_set_recovery(&self.set.name, problem);
        let wait = self.backoff.next();
        tracing::warn!(event = %events::SCALE_SET_RECOVERING, problem, error = %error, retry_in = ?wait, "scale set: {problem}; trying again");
        self.pause(wait).await;
    }

    /// Phase 1: the scale set's id (found or created), or `None` after a
    /// failure (logged, waited out).
    async fn register(&mut self) -> Option<u64> {
        let group = self.settings.runner_group_id;
        let name = self.set.name.clone();
        let found = match self.client.scale_set_by_name(group, &name).await {
            Ok(found) => found,
            Err(e) => {
                self.recover("error", &e).await;
                return None;
            }
        };
        let (set, created) = match found {
            Some(set) => (set, false),
            None => match self
                .client
                .create_scale_set(group, &name, &self.set.pool.labels)
                .await
            {
                Ok(set) => (set, true),
                Err(e) => {
                    self.recover("error", &e).await;
                    return None;
                }
            },
        };
        let labels: Vec<&str> = set.labels.iter().map(|l| l.name.as_str()).collect();
        tracing::info!(
            scale_set_id = set.id,
            created,
            ?labels,
            runner_group_id = group,
            "scale set registered"
        );
        self.set.set_id(set.id);
        Some(set.id)
    }

    /// Deletes the runners the journal holds for this scale set: a
    /// previous run's, whose VMs are gone.
    async fn delete_leftover_runners(&self) {
        let scope = self.set.record_scope();
        let journal = self.jobs.journal();
        let runners = journal.runners().unwrap_or_default();
        for r in runners.into_iter().filter(|r| r.scope == scope) {
            if let Some(id) = r.runner_id {
                if let Err(e) = self.client.delete_runner(id).await {
                    tracing::warn!(runner = %r.name, runner_id = id, error = %e, "cannot delete a runner a previous kiln left in the scale set; tried again at the next start");
                    continue;
                }
                tracing::info!(runner = %r.name, runner_id = id, "deleted a runner a previous kiln left in the scale set");
            }
            let _ = journal.remove_runner(&r.name);
        }
    }

    /// The session a previous run of this host left open: closed, so a
    /// restart does not wait for GitHub to expire it.
    async fn close_recorded_session(&self) {
        let journal = self.jobs.journal();
        let Ok(Some((set_id, session_id))) = journal.session(&self.set.name) else {
            return;
        };
        match self.client.delete_session(set_id, &session_id).await {
            Ok(()) => {
                tracing::info!(session = %session_id, "closed the session a previous kiln left open");
                let _ = journal.remove_session(&self.set.name);
            }
            Err(e) => {
                tracing::warn!(session = %session_id, error = %e, "cannot close the session a previous kiln left open")
            }
        }
    }

    /// Phase 2: a new session, or `None` (standby, a lost scale set, a
    /// failure: logged and waited out).
    async fn open_session(&mut self, id: u64) -> Option<Session> {
        match self.client.create_session(id, &self.settings.owner).await {
            Ok(session) => {
                let journal = self.jobs.journal();
                if let Err(e) = journal.put_session(&self.set.name, id, &session.session_id) {
                    tracing::warn!(error = %e, "cannot record the session: a restart waits for GitHub to expire it");
                }
                self.backoff.reset();
                self.jobs.metrics().scale_set_session(&self.set.name, true);
                let labels: Vec<&str> = self.set.pool.labels.iter().map(String::as_str).collect();
                tracing::info!(event = %events::SCALE_SET_READY, scale_set_id = id, session = %session.session_id, ?labels, assigned = session.statistics.as_ref().map(|s| s.total_assigned_jobs), "scale set: listening for jobs");
                Some(session)
            }
            Err(e) if is_conflict(&e) => {
                let wait = self.backoff.next();
                tracing::warn!(event = %events::SCALE_SET_STANDBY, retry_in = ?wait, "scale set: another session is open (another kiln with this scale set's name?): standing by");
                self.pause(wait).await;
                None
            }
            Err(e) if status_of(&e) == Some(404) => {
                self.recover("scale_set_gone", &e).await;
                None
            }
            Err(e) => {
                self.recover("error", &e).await;
                None
            }
        }
    }

    /// Phase 3 and 4: polls until stopped or the session is gone.
    async fn listen(&mut self, id: u64, mut session: Session) -> End {
        let mut last = 0i64;
        loop {
            if self.stopped() {
                self.close(id, &session).await;
                return End::Stopped;
            }
            let capacity = self.capacity();
            self.jobs
                .metrics()
                .scale_set_capacity(&self.set.name, capacity);
            let polled = {
                let poll = self.client.get_message(&session, last, capacity);
                let grew = room_grew(&self.scheduler, &self.set.pool.name, capacity);
                let mut stop = self.stop.clone();
                tokio::select! {
                    r = poll => Some(r),
                    () = grew => None,
                    _ = stop.wait_for(|s| *s) => None,
                }
            };
            let Some(polled) = polled else { continue };
            match polled {
                Ok(Poll::Empty) => self.backoff.reset(),
                Ok(Poll::Message(envelope)) => {
                    self.backoff.reset();
                    let message_id = envelope.message_id;
                    match envelope.parse() {
                        Ok(message) => {
                            if self.handle(id, &session, message).await {
                                last = message_id;
                            }
                        }
                        Err(e) => {
                            // Not deleted: a later session sees it again.
                            tracing::error!(event = %events::SCALE_SET_RECOVERING, problem = "error", error = %e, "scale set: unreadable message skipped");
                            last = message_id;
                        }
                    }
                }
                Err(e) if status_of(&e) == Some(401) => {
                    self.jobs
                        .metrics()
                        .scale_set_recovery(&self.set.name, "queue_token");
                    tracing::info!(event = %events::SCALE_SET_RECOVERING, problem = "queue_token", session = %session.session_id, "scale set: the queue refused the session's token: refreshing the session");
                    match self.client.refresh_session(id, &session).await {
                        Ok(fresh) => session = fresh,
                        Err(e) if status_of(&e) == Some(404) => {
                            self.forget_session();
                            self.recover("session_gone", &e).await;
                            return End::SessionGone;
                        }
                        Err(e) => self.recover("error", &e).await,
                    }
                }
                Err(e) if matches!(status_of(&e), Some(404 | 410)) => {
                    self.forget_session();
                    self.jobs
                        .metrics()
                        .scale_set_recovery(&self.set.name, "session_gone");
                    tracing::warn!(event = %events::SCALE_SET_RECOVERING, problem = "session_gone", error = %e, "scale set: the session is gone at GitHub: opening a new one");
                    return End::SessionGone;
                }
                Err(e) => self.recover("error", &e).await,
            }
        }
    }

    /// What the capacity header says: the jobs held plus those that fit.
    fn capacity(&self) -> u32 {
        let room = self.scheduler.room(&self.set.pool.name);
        u32::try_from((room.held + room.more).min(MAX_CAPACITY)).unwrap_or(u32::MAX)
    }

    /// Handles one message; false when its jobs could not be recorded
    /// (then it is neither deleted nor passed: the next poll brings it again).
    async fn handle(&mut self, id: u64, session: &Session, message: Message) -> bool {
        let count =
            |want: fn(&JobEvent) -> bool| message.jobs.iter().filter(|j| want(&j.event)).count();
        let (available, assigned, started, completed) = (
            count(|e| matches!(e, JobEvent::Available)),
            count(|e| matches!(e, JobEvent::Assigned)),
            count(|e| matches!(e, JobEvent::Started { .. })),
            count(|e| matches!(e, JobEvent::Completed { .. })),
        );
        if available > 0 && !self.acquire(id, session, &message.jobs).await {
            // Not acknowledged: the next poll brings the offer again.
            let wait = self.backoff.next();
            self.pause(wait).await;
            return false;
        }
        let received = Instant::now();
        // Known once the admin token was minted: cached.
        let installation = self.client.installation().await.unwrap_or(0);
        let jobs: Vec<QueuedJob> = message
            .jobs
            .iter()
            .filter(|j| j.event == JobEvent::Assigned)
            .map(|j| self.queued_job((message.id, installation), j, received))
            .collect();
        let recorded = match self.jobs.record_message(id, message.id, &jobs) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(event = %events::SCALE_SET_RECOVERING, problem = "error", message_id = message.id, error = %e, "scale set: the message's jobs cannot be recorded: it is not acknowledged and comes again");
                let wait = self.backoff.next();
                self.pause(wait).await;
                return false;
            }
        };
        let replayed = recorded.is_none();
        self.jobs.metrics().scale_set_message(
            &self.set.name,
            replayed,
            &[
                ("available", available),
                ("assigned", assigned),
                ("started", started),
                ("completed", completed),
            ],
        );
        let new = recorded.unwrap_or_default();
        tracing::info!(event = %events::SCALE_SET_MESSAGE, message_id = message.id, session = %session.session_id, available, assigned, started, completed, queued = new.len(), replayed, total_assigned = message.statistics.as_ref().map(|s| s.total_assigned_jobs), "scale set: message");
        match self.client.delete_message(session, message.id).await {
            Ok(()) => {
                tracing::info!(event = %events::SCALE_SET_ACKED, message_id = message.id, "scale set: message acknowledged after its jobs were recorded")
            }
            Err(e) => {
                tracing::warn!(event = %events::SCALE_SET_RECOVERING, problem = "error", message_id = message.id, error = %e, "scale set: cannot delete the message; its jobs are recorded, so a redelivery starts nothing twice")
            }
        }
        for job in jobs.into_iter().filter(|j| new.contains(&j.job_id)) {
            self.enqueue(job);
        }
        for j in &message.jobs {
            self.note(j);
        }
        true
    }

    /// GHES: acquires the jobs offered, as many as fit; false when GitHub
    /// could not be asked.
    async fn acquire(&mut self, id: u64, session: &Session, jobs: &[JobMessage]) -> bool {
        let room = self.scheduler.room(&self.set.pool.name).more;
        let offered: Vec<i64> = jobs
            .iter()
            .filter(|j| j.event == JobEvent::Available && j.runner_request_id > 0)
            .map(|j| j.runner_request_id)
            .take(usize::try_from(room).unwrap_or(usize::MAX))
            .collect();
        if offered.is_empty() {
            return true;
        }
        match self.client.acquire_jobs(id, session, &offered).await {
            Ok(got) => {
                tracing::info!(
                    offered = offered.len(),
                    acquired = got.len(),
                    "scale set: acquired jobs"
                );
                true
            }
            Err(e) => {
                tracing::warn!(event = %events::SCALE_SET_RECOVERING, problem = "error", error = %e, "scale set: cannot acquire the jobs offered; the message is read again");
                false
            }
        }
    }

    /// The scheduler's job for an assigned job message.
    fn queued_job(
        &self,
        (message_id, installation_id): (i64, u64),
        j: &JobMessage,
        received: Instant,
    ) -> QueuedJob {
        QueuedJob {
            delivery: format!(
                "scale set {} message {message_id} job {}",
                self.set.name, j.job_id
            )
            .into(),
            job_id: local_job_id(&j.job_id, j.runner_request_id),
            run_id: j.workflow_run_id,
            installation_id,
            repository: j.repository.clone(),
            labels: if j.labels.is_empty() {
                self.set.pool.labels.clone()
            } else {
                j.labels.clone()
            },
            pool: Arc::clone(&self.set.pool),
            received,
        }
    }

    fn enqueue(&self, job: QueuedJob) {
        let job_id = job.job_id;
        match self.scheduler.enqueue(job) {
            Ok(()) | Err(EnqueueError::AlreadyQueued { .. }) => {}
            Err(e) => {
                tracing::warn!(job_id, error = %e, "scale set: assigned job not queued; GitHub gives it to another runner");
                self.jobs.not_queued(job_id);
            }
        }
    }

    /// Acts on a job's other news: one GitHub took back before it ran
    /// leaves the queue.
    fn note(&self, j: &JobMessage) {
        let job_id = local_job_id(&j.job_id, j.runner_request_id);
        match &j.event {
            JobEvent::Completed { result } => {
                if let Some(job) = self.scheduler.cancel_queued(job_id) {
                    self.jobs.withdrawn(&job);
                    tracing::info!(event = %events::SCALE_SET_JOB_CANCELED, job_id, job_key = %j.job_id, result = %result, "scale set: GitHub took the job back before it ran: removed from the queue");
                }
            }
            JobEvent::Started { runner_name, .. } => {
                tracing::debug!(job_id, job_key = %j.job_id, runner = %runner_name, "scale set: a runner took the job");
            }
            JobEvent::Available | JobEvent::Assigned => {}
        }
    }

    /// Phase 5: closes the session.
    async fn close(&self, id: u64, session: &Session) {
        match self.client.delete_session(id, &session.session_id).await {
            Ok(()) => {
                self.forget_session();
                tracing::info!(session = %session.session_id, "scale set: session closed");
            }
            Err(e) => {
                tracing::warn!(session = %session.session_id, error = %e, "scale set: cannot close the session; the next start closes it")
            }
        }
    }

    fn forget_session(&self) {
        self.jobs.metrics().scale_set_session(&self.set.name, false);
        let _ = self.jobs.journal().remove_session(&self.set.name);
    }
}

/// Resolves once pool `pool` could hold more than `announced` jobs.
async fn room_grew(scheduler: &Scheduler<Jobs>, pool: &str, announced: u32) {
    loop {
        tokio::time::sleep(ROOM_CHECK).await;
        let room = scheduler.room(pool);
        if room.held + room.more > u64::from(announced) {
            return;
        }
    }
}
