//! The fake GitHub API (`kiln_vm_tests::fake_github`) as a process of its
//! own, for `cargo xtask bench`'s `kiln serve` memory figures: the bench
//! cannot link this crate (it depends on xtask), and GitHub cannot be
//! reached from the machines the bench runs on. Test-only.
//!
//!     fake-github --key-file PATH [--broker [--ghes]]
//!
//! - With `--broker`, also serves the fake scale-set broker
//!   (`kiln_vm_tests::fake_broker`, GHES behaviour with `--ghes`), handed
//!   out by the fake GitHub's `runner-registration`; its URL is printed as
//!   `broker_url`, and `queue REPO LABEL[,LABEL...]` on stdin queues a job
//!   for it, answered with one line `{"job": JOB_ID}`.
//! - Writes the App private key the fake accepts (PKCS#1 PEM, made for
//!   this process only) to PATH, created new with mode 0600, for `kiln
//!   serve`'s `private_key_file`.
//! - Serves the fake on 127.0.0.1 and prints one JSON line on stdout:
//!   `{"url": ..., "app_id": ...}`.
//! - For each `state` line on stdin, prints one JSON line of what it has
//!   seen ([`State`]): counts, runner ids and the broker's jobs only, never
//!   a token or a JIT config; with `--broker` also its scale sets, their
//!   last reported capacity and the polls they hold open now.
//! - Exits when stdin closes, so it never outlives the bench that started it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use axum::http::Method;
use kiln_vm_tests::fake_broker::{FakeBroker, JobState};
use kiln_vm_tests::fake_github::{test_key, FakeGithub, APP_ID};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the fake has seen, for the bench to check its runs were real.
#[derive(Debug, Serialize)]
struct State {
    /// `generate-jitconfig` requests, answered or not.
    jit_requests: usize,
    /// Runner deletion requests, answered or not.
    delete_requests: usize,
    /// Installation tokens issued.
    token_requests: u32,
    /// Runner ids registered through `generate-jitconfig`, in order.
    registered: Vec<u64>,
    /// Runner ids deleted, in order.
    deleted: Vec<u64>,
    /// Runner ids still registered.
    live: Vec<u64>,
    /// The broker's jobs, in the order they were queued (with `--broker`).
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<Vec<BrokerJob>>,
    /// The broker's scale sets (with `--broker`).
    #[serde(skip_serializing_if = "Option::is_none")]
    scale_sets: Option<Vec<BrokerScaleSet>>,
}

/// A scale set of the fake broker: whether its session polls now.
#[derive(Debug, Serialize)]
struct BrokerScaleSet {
    name: String,
    /// The capacity its last poll reported.
    capacity: u32,
    /// Polls held open now: a job queued now is assigned at once.
    polls_held: u32,
}

fn broker_scale_sets(broker: &FakeBroker) -> Vec<BrokerScaleSet> {
    broker
        .scale_sets()
        .into_iter()
        .map(|s| BrokerScaleSet {
            name: s.name,
            capacity: s.capacity,
            polls_held: s.polls_held,
        })
        .collect()
}

/// A job of the fake broker.
#[derive(Debug, Serialize)]
struct BrokerJob {
    job: String,
    /// `queued`, `available`, `assigned`, `running`, `succeeded`, `canceled`.
    state: String,
    scale_set: Option<u64>,
    /// Runners that started it.
    runs: u32,
    reassignments: u32,
}

fn broker_jobs(broker: &FakeBroker) -> Vec<BrokerJob> {
    broker
        .jobs()
        .into_iter()
        .map(|j| BrokerJob {
            job: j.key.0,
            state: match j.state {
                JobState::Queued => "queued".into(),
                JobState::Available => "available".into(),
                JobState::Assigned => "assigned".into(),
                JobState::Running => "running".into(),
                JobState::Completed { result } => result,
            },
            scale_set: j.scale_set,
            runs: j.runs,
            reassignments: j.reassignments,
        })
        .collect()
}

fn state(fake: &FakeGithub, broker: Option<&FakeBroker>) -> State {
    State {
        jit_requests: fake.count(Method::POST, "/actions/runners/generate-jitconfig"),
        delete_requests: fake
            .seen()
            .iter()
            .filter(|s| s.method == Method::DELETE && s.path.contains("/actions/runners/"))
            .count(),
        token_requests: fake.token_requests(),
        registered: fake.registered().iter().map(|r| r.id).collect(),
        deleted: fake.deleted(),
        live: fake.live_runners(),
        broker: broker.map(broker_jobs),
        scale_sets: broker.map(broker_scale_sets),
    }
}

/// The command line.
struct Args {
    key_file: PathBuf,
    /// None: no broker; Some(ghes).
    broker: Option<bool>,
}

const USAGE: &str = "usage: fake-github --key-file PATH [--broker [--ghes]]";

fn args() -> Result<Args> {
    let mut key_file = None;
    let (mut broker, mut ghes) = (false, false);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--key-file") => key_file = args.next().map(PathBuf::from),
            Some("--broker") => broker = true,
            Some("--ghes") => ghes = true,
            _ => bail!("unknown argument {arg:?}; {USAGE}"),
        }
    }
    if ghes && !broker {
        bail!("--ghes needs --broker; {USAGE}");
    }
    let key_file = key_file.with_context(|| format!("--key-file PATH is missing; {USAGE}"))?;
    Ok(Args {
        key_file,
        broker: broker.then_some(ghes),
    })
}

/// `queue REPO LABEL[,LABEL...]`: queues a job for the broker.
fn queue(broker: Option<&FakeBroker>, rest: &str) -> Result<()> {
    let broker = broker.context("`queue` needs --broker")?;
    let mut words = rest.split_whitespace();
    let (Some(repo), Some(labels), None) = (words.next(), words.next(), words.next()) else {
        bail!("usage: queue OWNER/REPO LABEL[,LABEL...] (got {rest:?})");
    };
    if !repo.contains('/') {
        bail!("queue: {repo:?} is not OWNER/REPO");
    }
    let labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    let key = broker.queue_job(repo, &labels);
    print_line(&serde_json::json!({ "job": key.0 }))
}

/// Writes `pem` to `path`, which must not exist: created 0600, so the key
/// is never readable by others, not even for a moment.
fn write_key(path: &std::path::Path, pem: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn print_line(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value).context("encoding")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

async fn run() -> Result<()> {
    let args = args()?;
    write_key(&args.key_file, &test_key().private_pkcs1)?;
    let fake = FakeGithub::start().await;
    let broker = match args.broker {
        Some(true) => Some(FakeBroker::ghes().await),
        Some(false) => Some(FakeBroker::start().await),
        None => None,
    };
    let mut hello = serde_json::json!({ "url": fake.url, "app_id": APP_ID });
    if let Some(broker) = &broker {
        fake.attach_broker(broker);
        hello["broker_url"] = broker.url().into();
    }
    print_line(&hello)?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        let line = line.trim();
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        match command {
            "state" => print_line(&state(&fake, broker.as_ref()))?,
            "queue" => queue(broker.as_ref(), rest)?,
            "" => {}
            other => bail!("unknown command {other:?} (they are `state` and `queue`)"),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-github: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-github: {e:#}");
            ExitCode::FAILURE
        }
    }
}
