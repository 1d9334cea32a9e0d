//! Lost webhooks: a [`Reconciler`] lists the installation's queued jobs and
//! returns those a pool serves that Kiln does not know, so the daemon can
//! queue them as if their `workflow_job` webhook had arrived.
//!
//! One [`Reconciler::pass`] reads, as installation `installation_id`:
//! `GET /installation/repositories` (skipped for a repository scope, which
//! looks at its one repository; an organization scope keeps the
//! organization's repositories), then per repository
//! `GET /repos/{o}/{r}/actions/runs?status=queued` and, per queued run,
//! `GET /repos/{o}/{r}/actions/runs/{run_id}/jobs`. Every one of them is a
//! conditional request ([`EtagCache`]): GitHub answers 304, which does not
//! count against the rate limit, when the list did not change.
//!
//! **Budget.** Counted (non-304) requests are bounded by
//! [`Settings::budget_per_hour`] in any sliding hour (default 500, a tenth
//! of an installation's 5 000), and a pass also stops when GitHub says fewer
//! than [`Settings::min_remaining`] requests are left for the installation,
//! so the dispatcher's own calls always find room. A stopped pass logs once
//! and remembers the repository it stopped at; the next pass starts there
//! (round-robin), so every repository is visited even on a tight budget.
//!
//! **Cost, measured against the fake GitHub** (`tests/github_reconcile.rs`,
//! `fifty_repositories_stay_inside_the_budget`), for an installation with 50
//! repositories at the default 60 s interval: every pass sends 51 requests
//! (1 repository page + 50 queued-run lists) plus one job list per queued
//! run. The first pass is answered in full: 51 counted. A pass over nothing
//! new is answered 304 throughout: 0 counted. Each workflow run that queues
//! a job costs 3 counted requests (its repository's run list when it queues
//! and again when it starts, its job list once). The measured hour, 60
//! passes with a new run every 10 minutes: 3 066 requests, **69 counted**
//! (51 + 6 × 3), under 14 % of the default budget of 500; with nothing
//! queued, 51 counted in the first hour and 0 in every hour after. The
//! budget pays for about 150 new runs an hour beyond the first pass; past
//! that, passes stop early and a webhook-less job waits for its
//! repository's turn. (Retries of 5xx answers also count at GitHub and are
//! not seen here; token exchanges are the App's, not the installation's.)
//!
//! By default only runs with status `queued` are read, as the recovery
//! issue asks. A job still queued in a run whose other jobs already started
//! (a run `in_progress`, e.g. a lint job on a GitHub-hosted runner next to
//! a Kiln job) is then not found: [`Settings::include_in_progress_runs`]
//! reads those runs too. Idle, that adds one free 304 per repository; but a
//! running run's job list changes at every step, so each pass pays about
//! one counted request per run in progress, which is why it is off by
//! default.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::github::conditional::{Cost, EtagCache};
use crate::github::error::GithubError;
use crate::github::jobs::JobStatus;
use crate::github::lists::{repo_path, Page, Repository, RunFilter, WorkflowJob, WorkflowRun};
use crate::github::scope::RunnerScope;
use crate::github::GithubApp;

use super::budget::Budget;

/// How often and how expensively the reconciler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Between passes (the daemon's timer).
    pub interval: Duration,
    /// Counted requests per sliding hour, at most.
    pub budget_per_hour: u32,
    /// A pass stops when GitHub's `x-ratelimit-remaining` for the
    /// installation is below this.
    pub min_remaining: u64,
    /// Also look for queued jobs in runs that are `in_progress` (see the
    /// module doc for the cost).
    pub include_in_progress_runs: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            budget_per_hour: 500,
            min_remaining: 500,
            include_in_progress_runs: false,
        }
    }
}

/// A queued job no webhook brought: what the daemon needs to queue it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostJob {
    pub job_id: u64,
    pub run_id: u64,
    pub owner: String,
    pub repo: String,
    /// The job's name in the workflow.
    pub name: String,
    /// Its `runs-on` labels.
    pub labels: Vec<String>,
    pub html_url: Option<String>,
}

impl LostJob {
    /// `owner/repo`, as in a webhook's `repository.full_name`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Queued jobs a pool serves and Kiln does not know.
    pub found: Vec<LostJob>,
    /// Requests answered in full (spent from the budget).
    pub counted: u32,
    /// Requests answered 304 (free).
    pub not_modified: u32,
    /// Repositories in scope, and how many of them this pass finished.
    pub repositories: usize,
    pub visited: usize,
    /// The budget (or GitHub's remaining limit) ended the pass early.
    pub stopped_early: bool,
    /// Repositories whose lists failed (`owner/name`, error); the pass went on.
    pub failed: Vec<(String, GithubError)>,
}

/// Finds queued jobs of one installation and scope. Keep it between passes:
/// it holds the `ETag`s, the budget and the round-robin position.
pub struct Reconciler {
    app: Arc<GithubApp>,
    installation_id: u64,
    scope: RunnerScope,
    settings: Settings,
    cache: EtagCache,
    budget: Budget,
    /// `owner/name` (lower case) of the repository the last stopped pass did not finish.
    resume_at: Option<String>,
    /// The budget stop was logged; quiet until a pass finishes.
    stop_logged: bool,
}

/// Why a visit ended before its lists did.
enum Stop {
    OutOfBudget,
    Failed(GithubError),
}

/// One paginated list the reconciler reads: [`Reconciler::pages`] pays
/// for each page and gathers the items.
trait List: Sync {
    type Item: Send;
    fn page<'a>(
        &'a self,
        app: &'a GithubApp,
        installation_id: u64,
        page: u32,
        cache: &'a mut EtagCache,
    ) -> impl Future<Output = Result<Page<Self::Item>, GithubError>> + Send + 'a;
}

/// The repositories the installation may reach.
struct Repositories;

impl List for Repositories {
    type Item = Repository;
    fn page<'a>(
        &'a self,
        app: &'a GithubApp,
        installation_id: u64,
        page: u32,
        cache: &'a mut EtagCache,
    ) -> impl Future<Output = Result<Page<Repository>, GithubError>> + Send + 'a {
        app.installation_repositories_page(installation_id, page, cache)
    }
}

/// A repository's workflow runs with one status.
struct Runs<'s> {
    owner: &'s str,
    repo: &'s str,
    filter: RunFilter,
}

impl List for Runs<'_> {
    type Item = WorkflowRun;
    fn page<'a>(
        &'a self,
        app: &'a GithubApp,
        installation_id: u64,
        page: u32,
        cache: &'a mut EtagCache,
    ) -> impl Future<Output = Result<Page<WorkflowRun>, GithubError>> + Send + 'a {
        app.runs_page(
            installation_id,
            self.owner,
            self.repo,
            self.filter,
            page,
            cache,
        )
    }
}

/// One workflow run's jobs.
struct RunJobs<'s> {
    owner: &'s str,
    repo: &'s str,
    run_id: u64,
}

impl List for RunJobs<'_> {
    type Item = WorkflowJob;
    fn page<'a>(
        &'a self,
        app: &'a GithubApp,
        installation_id: u64,
        page: u32,
        cache: &'a mut EtagCache,
    ) -> impl Future<Output = Result<Page<WorkflowJob>, GithubError>> + Send + 'a {
        app.run_jobs_page(
            installation_id,
            self.owner,
            self.repo,
            self.run_id,
            page,
            cache,
        )
    }
}

impl From<GithubError> for Stop {
    fn from(e: GithubError) -> Self {
        Stop::Failed(e)
    }
}

impl Reconciler {
    pub fn new(
        app: Arc<GithubApp>,
        installation_id: u64,
        scope: RunnerScope,
        settings: Settings,
    ) -> Self {
        let budget = Budget::new(settings.budget_per_hour);
        Self {
            app,
            installation_id,
            scope,
            settings,
            cache: EtagCache::new(),
            budget,
            resume_at: None,
            stop_logged: false,
        }
    }

    /// The installation whose jobs it looks for.
    pub fn installation_id(&self) -> u64 {
        self.installation_id
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counted requests spent in the hour up to `now`.
    pub fn spent(&mut self, now: Instant) -> u32 {
        self.budget.spent(now)
    }

    /// One pass now. `wanted(labels)`: a pool serves a job with these
    /// `runs-on` labels; `known(job_id)`: Kiln already has the job (queued,
    /// running or done). Errors only when the repository list cannot be
    /// read; a repository whose lists fail is reported and skipped.
    pub async fn pass(
        &mut self,
        wanted: impl Fn(&[String]) -> bool,
        known: impl Fn(u64) -> bool,
    ) -> Result<PassReport, GithubError> {
        self.pass_at(Instant::now(), wanted, known).await
    }

    /// [`Reconciler::pass`] with the budget's clock at `now` (tests move it).
    pub async fn pass_at(
        &mut self,
        now: Instant,
        wanted: impl Fn(&[String]) -> bool,
        known: impl Fn(u64) -> bool,
    ) -> Result<PassReport, GithubError> {
        let mut report = PassReport::default();
        let repos = match self.repositories(now, &mut report).await? {
            Some(repos) => repos,
            None => {
                self.stopped(&mut report, None);
                return Ok(report);
            }
        };
        report.repositories = repos.len();
        self.forget_other_repositories(&repos);
        for (owner, repo) in self.round_robin(repos) {
            match self
                .visit(now, &owner, &repo, &wanted, &known, &mut report)
                .await
            {
                Ok(()) => report.visited += 1,
                Err(Stop::OutOfBudget) => {
                    self.stopped(&mut report, Some(format!("{owner}/{repo}")));
                    return Ok(report);
                }
                Err(Stop::Failed(e)) => {
                    tracing::warn!(owner, repo, error = %e, "reconciler: cannot list the repository's queued jobs");
                    report.failed.push((format!("{owner}/{repo}"), e));
                }
            }
        }
        self.resume_at = None;
        self.stop_logged = false;
        Ok(report)
    }

    fn stopped(&mut self, report: &mut PassReport, at: Option<String>) {
        report.stopped_early = true;
        if let Some(at) = at {
            self.resume_at = Some(at.to_ascii_lowercase());
        }
        if self.stop_logged {
            tracing::debug!(
                installation_id = self.installation_id,
                "reconciler pass stopped early again"
            );
            return;
        }
        self.stop_logged = true;
        tracing::warn!(
            installation_id = self.installation_id,
            budget_per_hour = self.settings.budget_per_hour,
            min_remaining = self.settings.min_remaining,
            resume_at = self.resume_at.as_deref().unwrap_or("(start)"),
            "reconciler: API budget spent; the pass stops and the next resumes here"
        );
    }

    /// The `(owner, name)`s in scope, sorted; None when the budget cannot
    /// pay for the repository list.
    async fn repositories(
        &mut self,
        now: Instant,
        report: &mut PassReport,
    ) -> Result<Option<Vec<(String, String)>>, GithubError> {
        if let RunnerScope::Repo { owner, repo } = &self.scope {
            return Ok(Some(vec![(owner.clone(), repo.clone())]));
        }
        let all: Vec<Repository> = match self.pages(now, report, &Repositories).await? {
            Some(all) => all,
            None => return Ok(None),
        };
        let mut repos: Vec<(String, String)> = all
            .into_iter()
            .filter(|r| self.scope.covers(&r.full_name))
            .map(|r| (r.owner.login, r.name))
            .collect();
        repos.sort_by_key(|(o, r)| format!("{o}/{r}").to_ascii_lowercase());
        repos.dedup();
        Ok(Some(repos))
    }

    /// `repos` rotated to start at the repository the last pass stopped at
    /// (or the first after it, if that one is gone).
    fn round_robin(&self, mut repos: Vec<(String, String)>) -> Vec<(String, String)> {
        if let Some(at) = &self.resume_at {
            let start = repos
                .iter()
                .position(|(o, r)| format!("{o}/{r}").to_ascii_lowercase() >= *at)
                .unwrap_or(0);
            repos.rotate_left(start);
        }
        repos
    }

    /// Drops cached answers of repositories no longer in scope.
    fn forget_other_repositories(&mut self, repos: &[(String, String)]) {
        let prefixes: Vec<String> = repos
            .iter()
            .filter_map(|(o, r)| repo_path(o, r).ok())
            .map(|p| format!("{p}/"))
            .collect();
        self.cache.retain(|path| {
            !path.starts_with("/repos/") || prefixes.iter().any(|p| path.starts_with(p))
        });
    }

    /// The queued jobs of one repository.
    async fn visit(
        &mut self,
        now: Instant,
        owner: &str,
        repo: &str,
        wanted: &impl Fn(&[String]) -> bool,
        known: &impl Fn(u64) -> bool,
        report: &mut PassReport,
    ) -> Result<(), Stop> {
        let mut run_ids = self
            .runs(now, owner, repo, RunFilter::Queued, report)
            .await?;
        if self.settings.include_in_progress_runs {
            let running = self
                .runs(now, owner, repo, RunFilter::InProgress, report)
                .await?;
            run_ids.extend(running);
        }
        self.forget_other_runs(owner, repo, &run_ids);
        for run_id in run_ids {
            for job in self.run_jobs(now, owner, repo, run_id, report).await? {
                if job.status != JobStatus::Queued || known(job.id) || !wanted(&job.labels) {
                    continue;
                }
                tracing::info!(
                    owner,
                    repo,
                    run_id,
                    job_id = job.id,
                    "reconciler: a queued job no webhook announced"
                );
                report.found.push(LostJob {
                    job_id: job.id,
                    run_id,
                    owner: owner.to_owned(),
                    repo: repo.to_owned(),
                    name: job.name,
                    labels: job.labels,
                    html_url: job.html_url,
                });
            }
        }
        Ok(())
    }

    /// The ids of `owner/repo`'s runs with status `filter`.
    async fn runs(
        &mut self,
        now: Instant,
        owner: &str,
        repo: &str,
        filter: RunFilter,
        report: &mut PassReport,
    ) -> Result<Vec<u64>, Stop> {
        let runs = self
            .pages(
                now,
                report,
                &Runs {
                    owner,
                    repo,
                    filter,
                },
            )
            .await?
            .ok_or(Stop::OutOfBudget)?;
        Ok(runs.iter().map(|r| r.id).collect())
    }

    async fn run_jobs(
        &mut self,
        now: Instant,
        owner: &str,
        repo: &str,
        run_id: u64,
        report: &mut PassReport,
    ) -> Result<Vec<WorkflowJob>, Stop> {
        self.pages(
            now,
            report,
            &RunJobs {
                owner,
                repo,
                run_id,
            },
        )
        .await?
        .ok_or(Stop::OutOfBudget)
    }

    /// Every page of one list, each paid for from the budget before it is
    /// asked for; `None` when the budget (or GitHub's remaining limit) ran
    /// out first.
    async fn pages<L: List>(
        &mut self,
        now: Instant,
        report: &mut PassReport,
        list: &L,
    ) -> Result<Option<Vec<L::Item>>, GithubError> {
        let app = Arc::clone(&self.app);
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            if !self.may_spend(now) {
                return Ok(None);
            }
            let this = list
                .page(&app, self.installation_id, page, &mut self.cache)
                .await?;
            self.account(now, this.cost, report);
            let more = this.has_next(page);
            all.extend(this.items);
            if !more {
                return Ok(Some(all));
            }
            page += 1;
        }
    }

    /// Drops cached job lists of `owner/repo`'s runs that are no longer queued.
    fn forget_other_runs(&mut self, owner: &str, repo: &str, run_ids: &[u64]) {
        let Ok(base) = repo_path(owner, repo) else {
            return;
        };
        let runs = format!("{base}/actions/runs/");
        self.cache.retain(|path| {
            let Some(rest) = path.strip_prefix(&runs) else {
                return true;
            };
            let id = rest.split('/').next().and_then(|id| id.parse::<u64>().ok());
            id.is_some_and(|id| run_ids.contains(&id))
        });
    }

    /// Whether one more counted request fits the hourly budget and GitHub's
    /// remaining limit for the installation.
    fn may_spend(&mut self, now: Instant) -> bool {
        let github_has_room = self
            .app
            .rate_limit(self.installation_id)
            .is_none_or(|l| l.remaining >= self.settings.min_remaining);
        github_has_room && self.budget.allows(now)
    }

    /// Spends `cost` from the budget and counts it in `report`.
    fn account(&mut self, now: Instant, cost: Cost, report: &mut PassReport) {
        match cost {
            Cost::Counted => {
                self.budget.spend(now);
                report.counted += 1;
            }
            Cost::NotModified => report.not_modified += 1,
        }
    }
}
