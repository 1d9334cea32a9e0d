//! The recovery pieces of `kiln::github::reconcile` against the fake GitHub
//! (no VM): lost webhooks found by the reconciler within its API budget,
//! stale runner registrations deleted, infrastructure failures re-run once.
//! Every request and answer is checked against GitHub's schemas by the fake.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::github::reconcile::{
    rerun_if_due, sweep_stale_runners, CompletedJob, PassReport, Reconciler, RerunDecision,
    RerunPolicy, Settings, RUNNER_PREFIX,
};
use kiln::github::{ClientPolicy, GithubApp, GithubError, JitRequest, JobConclusion, RunnerScope};
use kiln::secret::Secret;
use kiln_vm_tests::fake_github::{ops, test_key, Failure, FakeGithub, APP_ID};
use kiln_vm_tests::github_schema::{check_answer, check_request};
use serde_json::json;

const INSTALLATION: u64 = 77;
const POOL_LABEL: &str = "kiln-small";

fn app_for(fake: &FakeGithub) -> Arc<GithubApp> {
    let policy = ClientPolicy {
        request_timeout: Duration::from_secs(5),
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_rate_limit_wait: Duration::from_secs(5),
        ..ClientPolicy::default()
    };
    let key = Secret::new(test_key().private_pkcs1.clone());
    match GithubApp::with_policy(&fake.url, APP_ID, &key, policy) {
        Ok(app) => Arc::new(app),
        Err(e) => panic!("GithubApp: {e}"),
    }
}

fn org() -> RunnerScope {
    RunnerScope::Org { org: "acme".into() }
}

fn wanted(labels: &[String]) -> bool {
    labels.iter().any(|l| l == POOL_LABEL)
}

/// The journal stand-in: the job ids Kiln knows.
#[derive(Clone, Default)]
struct Known(Arc<Mutex<HashSet<u64>>>);

impl Known {
    fn has(&self, id: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }
    fn add(&self, report: &PassReport) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        known.extend(report.found.iter().map(|j| j.job_id));
    }
}

async fn pass_at(r: &mut Reconciler, now: Instant, known: &Known) -> PassReport {
    match r.pass_at(now, wanted, |id| known.has(id)).await {
        Ok(report) => report,
        Err(e) => panic!("pass: {e}"),
    }
}

fn found_ids(report: &PassReport) -> Vec<u64> {
    report.found.iter().map(|j| j.job_id).collect()
}

fn assert_no_violations(fake: &FakeGithub) {
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// Repositories `acme/r00`... in the installation.
fn add_repositories(fake: &FakeGithub, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("acme/r{i:02}")).collect();
    for name in &names {
        fake.add_repository(name);
    }
    names
}

/// The repositories whose run lists were requested, in order.
fn run_lists_asked(fake: &FakeGithub) -> Vec<String> {
    fake.seen()
        .into_iter()
        .filter(|s| s.path.ends_with("/actions/runs"))
        .filter_map(|s| s.path.split('/').nth(3).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_queued_job_without_a_webhook_is_found_once() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 2);
    fake.add_repository("other/elsewhere");
    fake.queue_job("acme/r01", 50, 500, &["self-hosted", POOL_LABEL]);
    fake.queue_job("other/elsewhere", 60, 600, &["self-hosted", POOL_LABEL]);
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, org(), Settings::default());
    let known = Known::default();

    let report = pass_at(&mut r, Instant::now(), &known).await;
    assert_eq!(found_ids(&report), vec![500], "{report:?}");
    let job = &report.found[0];
    assert_eq!(
        (job.run_id, job.repository(), job.labels.clone()),
        (
            50,
            "acme/r01".to_owned(),
            vec!["self-hosted".to_owned(), POOL_LABEL.to_owned()]
        )
    );
    assert_eq!(
        job.html_url.as_deref(),
        Some("https://github.com/acme/r01/actions/runs/50/job/500")
    );
    // The organization scope never looks at another owner's repository.
    assert_eq!(run_lists_asked(&fake), vec!["r00", "r01"]);
    assert_eq!((report.repositories, report.visited), (2, 2));

    known.add(&report);
    let again = pass_at(&mut r, Instant::now(), &known).await;
    assert!(again.found.is_empty(), "{again:?}");
    assert_no_violations(&fake);
}

#[tokio::test]
async fn jobs_no_pool_serves_or_not_queued_are_skipped() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 1);
    fake.queue_job("acme/r00", 50, 500, &["ubuntu-latest"]);
    fake.queue_job("acme/r00", 50, 501, &["self-hosted", POOL_LABEL]);
    fake.queue_job("acme/r00", 51, 510, &["self-hosted", POOL_LABEL]);
    fake.set_job_outcome(510, "completed", Some("success"));
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, org(), Settings::default());
    let report = pass_at(&mut r, Instant::now(), &Known::default()).await;
    assert_eq!(found_ids(&report), vec![501], "{report:?}");
    // Run 51 is not queued: its jobs are never asked for.
    assert_eq!(fake.count(hyper::Method::GET, "/runs/51/jobs"), 0);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn queued_jobs_of_runs_in_progress_are_found_only_when_asked() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 1);
    // A lint job on another runner started; the Kiln job waits.
    fake.queue_job("acme/r00", 50, 500, &["ubuntu-latest"]);
    fake.set_job_outcome(500, "in_progress", None);
    fake.queue_job("acme/r00", 50, 501, &[POOL_LABEL]);
    let app = app_for(&fake);
    let mut r = Reconciler::new(Arc::clone(&app), INSTALLATION, org(), Settings::default());
    let report = pass_at(&mut r, Instant::now(), &Known::default()).await;
    assert!(report.found.is_empty(), "{report:?}");

    let settings = Settings {
        include_in_progress_runs: true,
        ..Settings::default()
    };
    let mut r = Reconciler::new(app, INSTALLATION, org(), settings);
    let report = pass_at(&mut r, Instant::now(), &Known::default()).await;
    assert_eq!(found_ids(&report), vec![501]);
    // Repository list, queued runs, runs in progress, run 50's jobs.
    assert_eq!(report.counted, 4);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_repository_scope_reads_only_its_repository() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 3);
    fake.queue_job("acme/r02", 50, 500, &[POOL_LABEL]);
    fake.queue_job("acme/r01", 40, 400, &[POOL_LABEL]);
    let scope = RunnerScope::Repo {
        owner: "acme".into(),
        repo: "r02".into(),
    };
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, scope, Settings::default());
    let report = pass_at(&mut r, Instant::now(), &Known::default()).await;
    assert_eq!(found_ids(&report), vec![500]);
    assert_eq!(fake.counted_calls(Some(ops::LIST_REPOS)), 0);
    assert_eq!(run_lists_asked(&fake), vec!["r02"]);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn an_unchanged_installation_costs_only_304s() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 3);
    fake.queue_job("acme/r01", 50, 500, &[POOL_LABEL]);
    let app = app_for(&fake);
    let mut r = Reconciler::new(Arc::clone(&app), INSTALLATION, org(), Settings::default());
    let known = Known::default();
    let first = pass_at(&mut r, Instant::now(), &known).await;
    // 1 repository page + 3 run lists + 1 job list.
    assert_eq!((first.counted, first.not_modified), (5, 0));
    assert_eq!(fake.counted_calls(None), 5);
    known.add(&first);

    let second = pass_at(&mut r, Instant::now(), &known).await;
    assert_eq!((second.counted, second.not_modified), (0, 5), "{second:?}");
    assert_eq!(fake.counted_calls(None), 5);
    assert_eq!(fake.not_modified_calls(), 5);
    assert!(second.found.is_empty());

    // A new job changes its repository's run list and costs 2 counted calls.
    fake.queue_job("acme/r02", 70, 700, &[POOL_LABEL]);
    let third = pass_at(&mut r, Instant::now(), &known).await;
    assert_eq!(found_ids(&third), vec![700]);
    assert_eq!((third.counted, third.not_modified), (2, 4), "{third:?}");
    // GitHub's rate limit as its answers stated it: 7 counted so far.
    let limit = app.rate_limit(INSTALLATION).map(|l| (l.limit, l.remaining));
    assert_eq!(limit, Some((5000, 4993)));
    assert_no_violations(&fake);
}

#[tokio::test]
async fn the_budget_stops_a_pass_and_the_next_resumes_at_the_next_repository() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 5);
    fake.queue_job("acme/r03", 50, 500, &[POOL_LABEL]);
    let settings = Settings {
        budget_per_hour: 3,
        ..Settings::default()
    };
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, org(), settings);
    let known = Known::default();
    let t0 = Instant::now();

    // Repository list + r00 + r01: the budget is spent before r02.
    let first = pass_at(&mut r, t0, &known).await;
    assert!(first.stopped_early);
    assert_eq!(
        (first.counted, first.visited, first.repositories),
        (3, 2, 5)
    );
    assert_eq!(run_lists_asked(&fake), vec!["r00", "r01"]);

    // A minute later the hour still holds those 3: no request at all.
    let before = fake.seen().len();
    let second = pass_at(&mut r, t0 + Duration::from_secs(60), &known).await;
    assert!(second.stopped_early && second.counted == 0 && second.not_modified == 0);
    assert_eq!(fake.seen().len(), before);

    // An hour later: the repository list is a free 304, then r02, r03 (and
    // its queued run's jobs) spend the 3.
    let third = pass_at(&mut r, t0 + Duration::from_secs(3601), &known).await;
    assert_eq!(found_ids(&third), vec![500], "{third:?}");
    assert_eq!((third.counted, third.not_modified), (3, 1));
    assert_eq!(run_lists_asked(&fake), vec!["r00", "r01", "r02", "r03"]);
    assert!(third.stopped_early);
    known.add(&third);

    // Next hour: r04, then round the ring to r00 and r01 (304s, free).
    let fourth = pass_at(&mut r, t0 + Duration::from_secs(7300), &known).await;
    assert_eq!(
        run_lists_asked(&fake)[4..].to_vec(),
        vec!["r04", "r00", "r01", "r02", "r03"]
    );
    assert!(!fourth.stopped_early, "{fourth:?}");
    assert_eq!(fourth.visited, 5);
    assert_no_violations(&fake);
}

/// The figure the module doc quotes: an hour of passes at the default 60 s
/// interval over 50 repositories, with a new workflow run every 10 minutes
/// that the daemon then starts (its run leaves the queued list).
#[tokio::test]
async fn fifty_repositories_stay_inside_the_budget() {
    let fake = FakeGithub::start().await;
    let repos = add_repositories(&fake, 50);
    let settings = Settings::default();
    let interval = settings.interval;
    let budget = settings.budget_per_hour;
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, org(), settings);
    let known = Known::default();
    let t0 = Instant::now();
    let passes = (3600 / interval.as_secs()) as u32;
    let mut per_pass = Vec::new();
    let mut requests = 0;
    for i in 0..passes {
        if i % 10 == 5 {
            let id = 1000 + u64::from(i);
            fake.queue_job(&repos[i as usize % 50], id, id, &[POOL_LABEL]);
        }
        let report = pass_at(&mut r, t0 + interval * i, &known).await;
        assert!(
            !report.stopped_early && report.failed.is_empty(),
            "{report:?}"
        );
        requests += report.counted + report.not_modified;
        per_pass.push(report.counted);
        for job in &report.found {
            fake.set_job_outcome(job.job_id, "in_progress", None);
        }
        known.add(&report);
    }
    let counted: u32 = per_pass.iter().sum();
    eprintln!(
        "50 repositories, {passes} passes: {requests} requests, {counted} counted \
         (first pass {}, idle passes 0, 6 new runs x 3)",
        per_pass[0]
    );
    // The first pass: 1 repository page + 50 run lists.
    assert_eq!(per_pass[0], 51);
    // An idle pass: only 304s.
    assert_eq!(per_pass[1], 0);
    // Each new run: its run list (queued), its job list, its run list (started).
    assert_eq!(counted, 51 + 6 * 3);
    // Every pass asks 51 lists; a pass that finds a run asks its jobs too.
    assert_eq!(requests, passes * 51 + 6);
    assert!(counted <= budget);
    assert_eq!(known.0.lock().map(|k| k.len()).unwrap_or(0), 6);
    assert_eq!(fake.counted_calls(None), counted as usize);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn a_failing_repository_is_reported_and_the_pass_goes_on() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 2);
    fake.queue_job("acme/r01", 50, 500, &[POOL_LABEL]);
    fake.fail_next_for(
        1,
        "acme/r00/actions/runs",
        Failure::status(404, "Not Found"),
    );
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, org(), Settings::default());
    let report = pass_at(&mut r, Instant::now(), &Known::default()).await;
    assert_eq!(found_ids(&report), vec![500]);
    assert_eq!(report.visited, 1);
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|(repo, e)| format!("{repo}: {e}"))
        .collect();
    assert_eq!(
        failed,
        vec![
            "acme/r00: GET /repos/acme/r00/actions/runs?status=queued&per_page=100&page=1: \
             GitHub answered HTTP 404: Not Found"
        ]
    );
    assert_no_violations(&fake);
}

#[tokio::test]
async fn repositories_are_read_page_by_page() {
    let fake = FakeGithub::start().await;
    let repos: Vec<String> = (0..130).map(|i| format!("acme/p{i:03}")).collect();
    for name in &repos {
        fake.add_repository(name);
    }
    fake.queue_job("acme/p129", 50, 500, &[POOL_LABEL]);
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, org(), Settings::default());
    let report = pass_at(&mut r, Instant::now(), &Known::default()).await;
    assert_eq!(found_ids(&report), vec![500]);
    assert_eq!(report.repositories, 130);
    assert_eq!(fake.counted_calls(Some(ops::LIST_REPOS)), 2);
    assert_eq!(report.counted, 2 + 130 + 1);
    assert_no_violations(&fake);
}

/// "A job whose webhook never arrives runs within two reconciler intervals":
/// the daemon's timer, standing in, passes every interval and queues what
/// it finds.
#[tokio::test]
async fn a_job_without_a_webhook_is_queued_within_two_intervals() {
    let fake = FakeGithub::start().await;
    add_repositories(&fake, 5);
    let interval = Duration::from_millis(300);
    let settings = Settings {
        interval,
        ..Settings::default()
    };
    let mut r = Reconciler::new(app_for(&fake), INSTALLATION, org(), settings);
    let known = Known::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let loop_known = known.clone();
    let timer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let k = loop_known.clone();
            if let Ok(report) = r.pass(wanted, move |id| k.has(id)).await {
                loop_known.add(&report);
                for job in report.found {
                    let _ = tx.send((job.job_id, Instant::now()));
                }
            }
        }
    });
    // Mid-interval, some passes in.
    tokio::time::sleep(interval * 3 + interval / 2).await;
    let queued_at = Instant::now();
    fake.queue_job("acme/r03", 50, 500, &[POOL_LABEL]);
    let got = tokio::time::timeout(interval * 4, rx.recv()).await;
    timer.abort();
    let Ok(Some((job, at))) = got else {
        panic!("the lost job was not found: {got:?}");
    };
    assert_eq!(job, 500);
    let waited = at.duration_since(queued_at);
    assert!(waited <= interval * 2, "found after {waited:?}");
    assert_no_violations(&fake);
}

#[tokio::test]
async fn stale_runners_only_prefixed_offline_unknown_ones_are_deleted() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    // 120 runners of someone else: the list takes two pages.
    for i in 0..120 {
        fake.add_runner("orgs/acme", &format!("ci-box-{i}"), "offline", false);
    }
    let stale = fake.add_runner("orgs/acme", "kiln-small-1-aaaaaa", "offline", false);
    let online = fake.add_runner("orgs/acme", "kiln-small-2-bbbbbb", "online", false);
    let busy = fake.add_runner("orgs/acme", "kiln-small-3-cccccc", "online", true);
    let journaled = fake.add_runner("orgs/acme", "kiln-small-4-dddddd", "offline", false);
    let elsewhere = fake.add_runner("orgs/other", "kiln-small-5-eeeeee", "offline", false);
    // A JIT registration whose VM never came (offline, unknown): stale too.
    let jit = app
        .jit_config(
            INSTALLATION,
            &org(),
            &JitRequest {
                name: "kiln-small-6-ffffff".into(),
                runner_group_id: 1,
                labels: vec!["self-hosted".into(), POOL_LABEL.into()],
                work_folder: "_work".into(),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let known = |name: &str| name == "kiln-small-4-dddddd";
    let report = sweep_stale_runners(&app, INSTALLATION, &org(), RUNNER_PREFIX, known)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut deleted: Vec<u64> = report.deleted.iter().map(|r| r.id).collect();
    deleted.sort_unstable();
    assert_eq!(deleted, vec![stale, jit.runner_id]);
    assert_eq!(report.listed, 120 + 5);
    assert!(report.failed.is_empty());
    let live = fake.live_runners();
    for kept in [online, busy, journaled, elsewhere] {
        assert!(live.contains(&kept), "{kept} was deleted");
    }
    assert_eq!(fake.counted_calls(Some(ops::LIST_RUNNERS_ORG)), 2);
    assert_eq!(fake.counted_calls(Some(ops::DELETE_RUNNER)), 2);

    // A second sweep finds nothing more to delete.
    let again = sweep_stale_runners(&app, INSTALLATION, &org(), RUNNER_PREFIX, known)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.deleted.is_empty());
    assert_no_violations(&fake);
}

#[tokio::test]
async fn runners_are_listed_for_repo_and_enterprise_scopes() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    let repo_id = fake.add_runner("repos/acme/widgets", "kiln-a-1-x", "offline", false);
    let ent_id = fake.add_runner("enterprises/acme-inc", "kiln-b-2-y", "online", true);
    let repo = RunnerScope::Repo {
        owner: "acme".into(),
        repo: "widgets".into(),
    };
    let ent = RunnerScope::Enterprise {
        enterprise: "acme-inc".into(),
    };
    let listed = app.runners(INSTALLATION, &repo).await;
    let ids: Vec<u64> = listed.iter().flatten().map(|r| r.id).collect();
    assert_eq!(ids, vec![repo_id]);
    let listed = app.runners(INSTALLATION, &ent).await;
    let runners = listed.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runners.len(), 1);
    assert_eq!(
        (runners[0].id, runners[0].status.as_str(), runners[0].busy),
        (ent_id, "online", true)
    );
    assert_eq!(fake.counted_calls(Some(ops::LIST_RUNNERS_REPO)), 1);
    assert_eq!(fake.counted_calls(Some(ops::LIST_RUNNERS_ENTERPRISE)), 1);
    assert_no_violations(&fake);
}

#[tokio::test]
async fn only_infrastructure_failures_are_rerun_once() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    fake.queue_job("acme/widgets", 90, 900, &[POOL_LABEL]);
    fake.set_job_outcome(900, "completed", Some("failure"));
    fake.queue_job("acme/widgets", 91, 910, &[POOL_LABEL]);
    fake.set_job_outcome(910, "completed", Some("failure"));
    fake.queue_job("acme/widgets", 92, 920, &[POOL_LABEL]);
    fake.set_job_outcome(920, "completed", Some("cancelled"));
    let policy = RerunPolicy::default();
    let job = |job_id, conclusion, infra_failure, reruns| CompletedJob {
        owner: "acme",
        repo: "widgets",
        job_id,
        conclusion: Some(conclusion),
        infra_failure,
        reruns,
    };
    let decide = |j: CompletedJob<'static>| {
        let app = Arc::clone(&app);
        async move { rerun_if_due(&app, INSTALLATION, &j, policy).await }
    };

    // Kiln's infrastructure failed job 900: re-run, and it is queued again.
    let first = decide(job(900, JobConclusion::Failure, true, 0)).await;
    assert_eq!(first.ok(), Some(RerunDecision::Rerun));
    assert_eq!(fake.reruns(), vec![900]);
    assert_eq!(fake.job(900).map(|j| j.status), Some("queued".into()));

    // It fails again the same way: max_retries (1) is spent.
    fake.set_job_outcome(900, "completed", Some("failure"));
    let second = decide(job(900, JobConclusion::Failure, true, 1)).await;
    assert_eq!(second.ok(), Some(RerunDecision::RetriesSpent { reruns: 1 }));
    // Job 910 failed by itself; job 920 was cancelled.
    let own = decide(job(910, JobConclusion::Failure, false, 0)).await;
    assert_eq!(own.ok(), Some(RerunDecision::NotInfrastructure));
    let cancelled = decide(job(920, JobConclusion::Cancelled, true, 0)).await;
    assert_eq!(cancelled.ok(), Some(RerunDecision::NotFailed));
    assert_eq!(fake.reruns(), vec![900]);
    assert_eq!(fake.counted_calls(Some(ops::RERUN_JOB)), 1);

    // GitHub refusing (the job is running) is an error naming the request.
    fake.set_job_outcome(910, "in_progress", None);
    let refused = app.rerun_job(INSTALLATION, "acme", "widgets", 910).await;
    assert!(
        matches!(&refused, Err(GithubError::Status { status: 403, path, .. })
            if path == "/repos/acme/widgets/actions/jobs/910/rerun"),
        "{refused:?}"
    );
    assert_no_violations(&fake);
}

#[test]
fn the_schema_checks_catch_bad_requests_and_answers() {
    assert!(check_request(
        ops::LIST_RUNS,
        Some("status=queued&per_page=100&page=2"),
        b""
    )
    .is_empty());
    let bad = check_request(
        ops::LIST_RUNS,
        Some("status=stuck&per_page=500&color=red"),
        b"",
    );
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(check_request(ops::RERUN_JOB, None, b"").is_empty());
    assert!(check_request(ops::RERUN_JOB, None, br#"{"enable_debug_logging":true}"#).is_empty());
    let bad = check_request(ops::RERUN_JOB, None, br#"{"enable_debug_logging":"yes"}"#);
    assert_eq!(bad.len(), 1, "{bad:?}");
    let bad = check_request(ops::LIST_JOBS, None, b"{}");
    assert_eq!(bad.len(), 1, "{bad:?}");

    let answer = json!({"total_count": 1, "jobs": [{"id": "seven"}]});
    let found = check_answer(ops::LIST_JOBS, 200, &answer);
    assert!(
        found.iter().any(|v| v.contains("$.jobs[0].id")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("run_id is required")),
        "{found:?}"
    );
    assert_eq!(
        check_answer(ops::RERUN_JOB, 201, &json!({"extra": 1})).len(),
        1
    );
    assert!(!check_answer(ops::LIST_REPOS, 200, &json!({"repositories": []})).is_empty());
}

/// The reconciler starts from the App's installation on the configured
/// scope, asked as the App (a JWT), for each kind of scope.
#[tokio::test]
async fn the_installation_of_each_scope_is_found_as_the_app() {
    let fake = FakeGithub::start().await;
    let app = app_for(&fake);
    let scopes = [
        org(),
        RunnerScope::Repo {
            owner: "acme".into(),
            repo: "widgets".into(),
        },
        RunnerScope::Enterprise {
            enterprise: "megacorp".into(),
        },
    ];
    for scope in &scopes {
        let id = app.installation_of(scope).await.expect("installation");
        assert_eq!(id, kiln_vm_tests::fake_github::INSTALLATION_ID, "{scope:?}");
    }
    for op in [
        ops::ORG_INSTALLATION,
        ops::REPO_INSTALLATION,
        ops::ENTERPRISE_INSTALLATION,
    ] {
        assert_eq!(fake.counted_calls(Some(op)), 1, "{op}");
    }
    assert_eq!(fake.violations(), Vec::<String>::new());
}
