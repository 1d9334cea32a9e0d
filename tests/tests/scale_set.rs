//! `kiln serve` taking jobs from GitHub's runner scale-set queue: the
//! binary, over QEMU, against the fake GitHub and the fake scale-set
//! broker on 127.0.0.1 (`kiln_vm_tests::fake_broker`, which behaves as
//! GitHub's queue is documented and measured to: capacity-gated
//! assignment, at-least-once delivery replayed to new sessions, one
//! session per scale set, GHES's offer-and-acquire, re-assignment of jobs
//! no runner started). No daemon here opens a webhook port.
//!
//! - A job assigned through the queue is recorded in the journal before
//!   its message is acknowledged, runs once in a VM with the scale set's
//!   JIT config, and with room for one VM the second job waits at GitHub.
//! - GHES (offer, acquire, run) and every failure the reference lists
//!   (409 at session creation, 401 on the queue, a revoked admin token, a
//!   session and a scale set deleted at GitHub, 5xx bursts), each followed
//!   by a job that must still run.
//! - Killed after recording a job but before the ack, then restarted: the
//!   job runs once.
//! - Two daemons with their own scale sets share 20 jobs; one is
//!   SIGKILLed midway: its unstarted jobs go to the other; none runs twice.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use kiln::github::scaleset::local_job_id;
use kiln::store::{JobState as StoredState, Journal, SqliteJournal};
use kiln_vm_tests::assets;
use kiln_vm_tests::daemon::{self, Setup, LABELS};
use kiln_vm_tests::events::{self, names};
use kiln_vm_tests::fake_broker::{FakeBroker, JobKey, JobState, Settings};
use kiln_vm_tests::fake_github::FakeGithub;
use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The stand-in runner: a hash of the JIT config it got, then a moment's
/// work, then success.
const STAND_IN: &str = r#"#!/bin/sh
echo "jit-sha256=$(printf %s "$ACTIONS_RUNNER_INPUT_JITCONFIG" | sha256sum | cut -d' ' -f1)"
sleep 2
echo "stand-in done"
"#;

/// How long anything here may take (VMs boot under QEMU on a busy machine).
const PATIENCE: Duration = Duration::from_secs(180);

/// One `kiln serve` with its own directories; SIGTERMed (then killed) when
/// dropped, so no test leaves a daemon or a VM behind.
struct Host {
    root: TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// The webhook port, when the daemon has one.
    port: Option<u16>,
}

impl Host {
    /// A daemon whose one pool takes its jobs from scale set `scale_set`,
    /// at most `max_vms` VMs at once.
    fn new(api_url: &str, scale_set: &str, max_vms: u32) -> Self {
        Self::with_webhook(api_url, scale_set, max_vms, false)
    }

    /// [`Host::new`], with a webhook port when `webhook`.
    fn with_webhook(api_url: &str, scale_set: &str, max_vms: u32, webhook: bool) -> Self {
        let root = tempfile::Builder::new()
            .prefix("kiln-ss-")
            .tempdir_in("/tmp")
            .unwrap();
        let pool =
            format!("source = \"scale-set\"\nscale_set = \"{scale_set}\"\nmax_vms = {max_vms}");
        let port = daemon::free_port().unwrap();
        let setup = Setup {
            api_url,
            port,
            admin_listen: "off",
            github: "",
            stand_in: STAND_IN,
            webhook,
            pool: &pool,
        };
        let config = daemon::write_config(root.path(), &setup).unwrap();
        Self {
            root,
            config,
            child: None,
            port: webhook.then_some(port),
        }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    /// Starts it; returns once its session is open.
    async fn start(&mut self) {
        let before = events::find(&self.logs(), names::SCALE_SET_READY, &[]).len();
        let child = daemon::start_until(self.root(), &self.config, names::SERVE_LISTENING)
            .await
            .unwrap();
        self.child = Some(child);
        self.wait_for("its session", |h| {
            events::find(&h.logs(), names::SCALE_SET_READY, &[]).len() > before
        })
        .await;
    }

    fn logs(&self) -> String {
        daemon::logs(self.root())
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, waiting for the clean stop.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            daemon::stop(&mut c, Duration::from_secs(90));
        }
    }

    /// The journal, opened beside the daemon (WAL: readers do not block it).
    fn journal(&self) -> SqliteJournal {
        SqliteJournal::open(&self.root().join("state"))
            .unwrap()
            .journal
    }

    /// What the job logs say, all of them.
    fn job_output(&self) -> String {
        let dir = self.root().join("state/logs");
        let mut all = String::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        all
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let until = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; kiln's log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fakes: GitHub with the broker attached.
async fn fakes(settings: Settings) -> (FakeGithub, FakeBroker) {
    let broker = FakeBroker::start_with(settings).await;
    let github = FakeGithub::start().await;
    github.attach_broker(&broker);
    (github, broker)
}

/// Quick timings: a held poll answers in 2 s.
fn quick() -> Settings {
    Settings {
        poll_hold: Duration::from_secs(2),
        ..Settings::default()
    }
}

fn state(broker: &FakeBroker, key: &JobKey) -> JobState {
    broker.job(key).unwrap().state
}

fn completed(broker: &FakeBroker, key: &JobKey) -> bool {
    matches!(state(broker, key), JobState::Completed { .. })
}

/// Waits until `done` says so about the broker, showing `host`'s log if not.
async fn wait_broker(host: &Host, what: &str, done: impl Fn() -> bool) {
    host.wait_for(what, |_| done()).await;
}

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: kiln serve needs root for its VMs' uids and cgroups");
        return true;
    }
    let _ = assets::get().unwrap_or_else(|e| panic!("{e:#}"));
    false
}

fn sha256(s: &str) -> String {
    format!("{:x}", Sha256::digest(s.as_bytes()))
}

#[test]
fn a_queued_job_is_recorded_before_its_ack_and_runs_once_within_capacity() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (github, broker) = fakes(quick()).await;
        let mut host = Host::with_webhook(&github.url, "kiln-tiny-a", 1, true);
        host.start().await;
        // A webhook for the pool's job is noted, never run: the queue brings it.
        let port = host.port.unwrap();
        let answer = daemon::deliver(port, &daemon::Delivery::queued(77))
            .await
            .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 202") && answer.contains("noted"),
            "{answer}"
        );
        host.wait_for("the webhook to be noted", |h| {
            events::has(
                &h.logs(),
                names::WEBHOOK_SCALE_SET_JOB,
                &[("job_id", json!(77))],
            )
        })
        .await;
        let set = broker.scale_sets();
        assert_eq!(set.len(), 1, "one scale set registered");
        assert_eq!(set[0].name, "kiln-tiny-a");
        assert_eq!(set[0].labels, LABELS, "with the pool's labels");

        broker.hold_message_deletes();
        let first = broker.queue_job("acme/widgets", LABELS);
        let second = broker.queue_job("acme/widgets", LABELS);
        tokio::time::timeout(PATIENCE, broker.wait_held_deletes(1))
            .await
            .unwrap_or_else(|_| panic!("no ack came; log:\n{}", host.logs()));
        // The ack is held: the job is in the journal already, but no runner
        // was asked for (nothing runs before the ack), and with room for one
        // VM GitHub assigned only the first.
        let id = local_job_id(&first.0, 0);
        let rec = host.journal().job(id).unwrap();
        assert_eq!(
            rec.map(|r| r.state),
            Some(StoredState::Queued),
            "recorded before the ack"
        );
        assert_eq!(state(&broker, &first), JobState::Assigned);
        assert_eq!(state(&broker, &second), JobState::Queued);
        assert!(broker.jit_configs().is_empty(), "no runner before the ack");
        assert_eq!(broker.scale_sets()[0].capacity, 1);
        broker.release_message_deletes();

        // The first runs; the second waits at GitHub until it is over.
        wait_broker(&host, "the first job to start", || {
            state(&broker, &first) == JobState::Running || completed(&broker, &first)
        })
        .await;
        assert_eq!(
            state(&broker, &second),
            JobState::Queued,
            "capacity 1: the second is not assigned while the first runs"
        );
        wait_broker(&host, "both jobs to complete", || {
            completed(&broker, &first) && completed(&broker, &second)
        })
        .await;
        for key in [&first, &second] {
            let job = broker.job(key).unwrap();
            assert_eq!(job.runs, 1, "{key:?} ran once: {job:?}");
        }
        // Each runner got its scale set's JIT config, in its environment.
        let output = host.job_output();
        for jit in broker.jit_configs() {
            assert!(
                output.contains(&format!("jit-sha256={}", sha256(&jit))),
                "the guest got the scale set's JIT config:\n{output}"
            );
        }
        let logs = host.logs();
        assert_eq!(events::find(&logs, names::JOB_DONE, &[]).len(), 2, "{logs}");
        assert!(
            !events::has(&logs, names::JOB_QUEUED, &[("job_id", json!(77))]),
            "the webhook's job never queued"
        );
        assert!(events::find(&logs, names::SCALE_SET_ACKED, &[]).len() >= 2);
        assert!(
            !logs.contains(&broker.jit_configs()[0]),
            "no JIT config in the log"
        );

        // A clean stop closes the session (GitHub assigns it nothing more).
        host.stop();
        assert_eq!(broker.scale_sets()[0].session, None, "session closed");
        assert_eq!(host.journal().session("kiln-tiny-a").unwrap(), None);
        assert!(broker.violations().is_empty(), "{:?}", broker.violations());
    });
}

#[test]
fn ghes_acquire_and_every_failure_recovered_without_losing_a_job() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (github, broker) = fakes(Settings {
            ghes: true,
            ..quick()
        })
        .await;
        // Another session holds the scale set at first: Kiln stands by.
        broker.refuse_sessions(2);
        let mut host = Host::new(&github.url, "kiln-tiny-ghes", 2);
        host.start().await;
        let logs = host.logs();
        assert_eq!(
            events::find(&logs, names::SCALE_SET_STANDBY, &[]).len(),
            2,
            "{logs}"
        );

        let mut jobs = Vec::new();
        let run_one = |broker: &FakeBroker| broker.queue_job("acme/widgets", LABELS);
        // GHES: offered, acquired, assigned, run.
        jobs.push(run_one(&broker));
        wait_broker(&host, "the GHES job to complete", || {
            completed(&broker, &jobs[0])
        })
        .await;
        assert!(
            broker
                .calls()
                .iter()
                .any(|c| c.path.ends_with("/acquirejobs") && c.status == Some(200)),
            "the job was acquired"
        );

        let set = broker.scale_set_id("kiln-tiny-ghes").unwrap();
        type Trouble = fn(&FakeBroker, u64);
        let troubles: [(&str, Trouble); 5] = [
            ("401 on the queue", |b, _| b.fail_polls_unauthorized(1)),
            ("a revoked admin token", |b, _| b.revoke_admin_tokens()),
            ("5xx bursts", |b, _| b.fail_next(6, "", 503)),
            ("a session deleted at GitHub", |b, s| {
                assert!(b.end_session(s));
            }),
            ("the scale set deleted at GitHub", |b, s| {
                assert!(b.delete_scale_set(s));
            }),
        ];
        for (what, trouble) in troubles {
            let set = broker.scale_set_id("kiln-tiny-ghes").unwrap_or(set);
            trouble(&broker, set);
            let key = run_one(&broker);
            wait_broker(&host, &format!("a job after {what} to complete"), || {
                completed(&broker, &key)
            })
            .await;
            jobs.push(key);
        }
        for key in &jobs {
            assert_eq!(broker.job(key).unwrap().runs, 1, "{key:?}");
        }
        let logs = host.logs();
        for problem in ["queue_token", "session_gone"] {
            assert!(
                events::has(
                    &logs,
                    names::SCALE_SET_RECOVERING,
                    &[("problem", json!(problem))]
                ),
                "{problem} logged:\n{logs}"
            );
        }
        assert!(
            broker
                .scale_set_id("kiln-tiny-ghes")
                .is_some_and(|id| id != set),
            "the deleted scale set was registered again"
        );
        assert_eq!(events::find(&logs, names::JOB_DONE, &[]).len(), jobs.len());
        assert!(broker.violations().is_empty(), "{:?}", broker.violations());
    });
}

#[test]
fn killed_between_recording_and_ack_the_job_runs_once_after_the_restart() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (github, broker) = fakes(quick()).await;
        let mut host = Host::new(&github.url, "kiln-tiny-replay", 2);
        host.start().await;
        broker.hold_message_deletes();
        let key = broker.queue_job("acme/widgets", LABELS);
        tokio::time::timeout(PATIENCE, broker.wait_held_deletes(1))
            .await
            .unwrap_or_else(|_| panic!("no ack came; log:\n{}", host.logs()));
        host.kill();
        broker.release_message_deletes();
        let set = &broker.scale_sets()[0];
        assert_eq!(set.messages.len(), 1, "the message was never deleted");

        // The restart closes the session it left, opens one, is sent the
        // message again and recognises it; the job runs from the journal.
        host.start().await;
        wait_broker(&host, "the job to complete", || completed(&broker, &key)).await;
        // The replay may come before or after the job ends: wait for it.
        host.wait_for("the replayed message", |h| {
            events::has(
                &h.logs(),
                names::SCALE_SET_MESSAGE,
                &[("replayed", json!(true))],
            )
        })
        .await;
        let job = broker.job(&key).unwrap();
        assert_eq!(job.runs, 1, "ran once: {job:?}");
        assert_eq!(broker.jit_configs().len(), 1, "one runner in all");
        let logs = host.logs();
        assert_eq!(events::find(&logs, names::JOB_DONE, &[]).len(), 1, "{logs}");
        wait_broker(&host, "the replayed message to be deleted", || {
            broker.scale_sets()[0].messages.is_empty()
        })
        .await;
    });
}

#[test]
fn two_hosts_share_twenty_jobs_and_one_killed_midway_loses_none() {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (github, broker) = fakes(Settings {
            // A dead host's unstarted jobs come back within seconds.
            reassign_after: Duration::from_secs(10),
            session_timeout: Duration::from_secs(4),
            ..quick()
        })
        .await;
        let mut a = Host::new(&github.url, "kiln-tiny-a", 2);
        let mut b = Host::new(&github.url, "kiln-tiny-b", 2);
        a.start().await;
        b.start().await;
        let keys: Vec<JobKey> = (0..20)
            .map(|_| broker.queue_job("acme/widgets", LABELS))
            .collect();
        let done = |broker: &FakeBroker| keys.iter().filter(|k| completed(broker, k)).count();
        wait_broker(&a, "a few jobs to complete", || done(&broker) >= 4).await;
        a.kill();
        let set_a = broker.scale_set_id("kiln-tiny-a").unwrap();
        // Every job runs: on b, or on a before it died (those a's runner
        // still has; a's restart below deletes its runners).
        wait_broker(&b, "every job to run", || {
            keys.iter().all(|k| {
                let j = broker.job(k).unwrap();
                completed(&broker, k)
                    || (j.state == JobState::Running && j.scale_set == Some(set_a))
            })
        })
        .await;
        // a's restart cleans up what its SIGKILL left: VMs and runners.
        a.start().await;
        wait_broker(&a, "a's leftover runners to be deleted", || {
            done(&broker) == keys.len()
        })
        .await;
        let mut ran_on = std::collections::BTreeMap::new();
        for k in &keys {
            let j = broker.job(k).unwrap();
            assert_eq!(j.runs, 1, "no job ran twice: {j:?}");
            *ran_on.entry(j.scale_set).or_insert(0) += 1;
        }
        let set_b = broker.scale_set_id("kiln-tiny-b").unwrap();
        assert!(
            ran_on.get(&Some(set_b)).copied().unwrap_or(0) > 0,
            "{ran_on:?}"
        );
        // What GitHub took back from the dead host ran on the other.
        for k in &keys {
            let j = broker.job(k).unwrap();
            if j.reassignments > 0 {
                assert_eq!(j.scale_set, Some(set_b), "{j:?}");
            }
        }
        eprintln!("jobs per scale set: {ran_on:?}");
        a.stop();
        b.stop();
        assert!(broker.violations().is_empty(), "{:?}", broker.violations());
    });
}
