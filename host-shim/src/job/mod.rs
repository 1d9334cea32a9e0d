//! One job's lifecycle, as `kiln serve` runs it ([`Jobs`], the scheduler's
//! [`Dispatch`]): for each job the scheduler starts, design.md's steps 3 to 9.
//!
//! 1. A runner name `kiln-<pool>-<job id>-<random>` ([`runner`]).
//! 2. GitHub is asked whether the job is still queued
//!    (`GET /repos/{owner}/{repo}/actions/jobs/{id}`): a job that ran,
//!    was cancelled or is a replayed delivery gets no runner and no VM,
//!    and so does one GitHub cannot tell about (fails closed).
//! 3. A JIT runner config from GitHub with the pool's labels and the
//!    config's runner group. It stays in memory: it goes to the guest in
//!    `ACTIONS_RUNNER_INPUT_JITCONFIG` only (never argv, the kernel command
//!    line, a disk or a log line). A failure here ends the job: no VM.
//! 4. A fresh VM of the pool's size from the pool's image ([`pools`]),
//!    running the image's actions runner as the image's user (plus the
//!    `kiln-sudo` group when the pool has `sudo = true`), with the pool's
//!    `job_timeout` as the deadline, through [`Launcher::run`], which tears
//!    the VM down on every path. A runner that has taken no job within
//!    the pool's `idle_timeout` of its start has its VM stopped ([`idle`]).
//! 5. The job's output goes to its own capped log file ([`joblog`]), never
//!    to tracing.
//! 6. The runner registration is deleted, always: a JIT runner that took
//!    its job has deregistered already (404, fine); one that never took a
//!    job would otherwise stay registered.
//! 7. One log line says how it went (job, pool, runner, VM, exit, timings).
//!
//! Cancellation. The scheduler cancels a job by dropping its dispatch
//! future (a second SIGTERM). Dropping [`Launcher::run`]'s future is safe
//! for the VM (its guard's `Drop` SIGKILLs the VMM and removes the disk and
//! directories), but would skip the runner's deletion. So each job runs in
//! its own task ([`tasks`]) and the dispatch future only waits for it;
//! when that future is dropped it raises the job's [`StopSignal`] to
//! `Kill`: the task kills and tears down the VM in order, then deletes the
//! runner. [`Jobs::finish`] lets `kiln serve` wait (bounded) for
//! those tasks before the runtime goes away.
//!
//! Networks. When any pool has `network = "egress"` (the default),
//! [`Jobs`] starts [`crate::net::Network`] at start-up (checks, the
//! egress policy table) and gives each such pool's VM a network with the
//! pool's allowlist; a proxy reaches the job as `HTTP_PROXY`/`HTTPS_PROXY`.
//! A watchdog checks every [`NET_CHECK_EVERY`] that the table is still
//! there: if it is gone, every running VM is killed (they would run
//! unfiltered) and no new VM can start (adding its elements fails), until
//! `kiln serve` restarts.
//!
//! - [`runner`] — runner names and the [`kiln_protocol::Job`] that starts the runner.
//! - [`pools`] — each pool's image, opened at start-up.
//! - [`joblog`] — per-job log files: private, capped, pruned.
//! - [`idle`] — stopping a runner that never takes a job.
//! - [`board`] — the jobs running now and lately, for `kiln ps`, `kiln logs`, `kiln cancel`.
//! - [`ledger`] — what the journal learns of each job, runner and VM.
//! - [`scale_sets`] — the scale sets of `source = "scale-set"` pools: their
//!   runners' JIT configs come from there (steps 2 and 3 differ: GitHub
//!   assigned the job to the scale set, so it is not asked again).
//! - [`tasks`] — counting the job tasks for shutdown.
//! - [`error`] — [`SetupError`]: why [`Jobs`] cannot start.

pub mod board;
pub mod error;
pub mod idle;
pub mod joblog;
pub mod ledger;
mod lost;
mod news;
pub mod pools;
mod recovery;
pub mod runner;
pub mod scale_sets;
pub mod tasks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::ExitStatus;
use tracing::Instrument;

pub use error::SetupError;

use crate::config::{Config, PoolNetwork};
use crate::github::{
    ClientPolicy, GithubApp, JitConfig, JitRequest, JobState, JobStatus, RunnerScope,
};
use crate::logs::events;
use crate::metrics::{JobResult, Metrics};
use crate::net::{NetConfig, NetRequest, Network};
use crate::recover::HostLayout;
use crate::scheduler::{Dispatch, QueuedJob};
use crate::store::SqliteJournal;
use crate::vm::{
    select_backend, stop_channel, Backend, BackendOptions, JobEnd, Launcher, OutputSink, Progress,
    RunError, RuntimeDirs, StopHandle, StopLevel, StopSignal, Timeouts, VmReport, VmRequest,
};
use crate::vmm::cgroup::CgroupSettings;
use crate::vmm::firecracker::FirecrackerSettings;
use crate::vmm::qemu::Confinement;
use board::{Board, NewRow, Stage};
use idle::{IdleVerdict, JobSpotter, Spotting};
use joblog::JobLogs;
use ledger::Ledger;
use pools::PoolImage;
use runner::{RunnerSpec, RUNNER_COMMAND, WORK_FOLDER};
use tasks::JobTasks;

/// Where job logs go (`<dir>/logs/`), when set: `KILN_STATE_DIR`.
pub const STATE_DIR_ENV: &str = "KILN_STATE_DIR";
/// SIGTERM to SIGKILL for the runner at its deadline and on cancel.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How much of a job's output the guest may send at all (the log keeps less).
const MAX_OUTPUT_BYTES: u64 = 1 << 30;
/// Guest-supplied text in a tracing line is cut to this many characters.
const MAX_LOGGED_CHARS: usize = 300;
/// How long a job whose VM found every address of the pool in use waits
/// before it tries again.
const ADDRESS_RETRY: Duration = Duration::from_secs(2);
/// How often the watchdog checks that the egress policy table is there.
pub const NET_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How [`Jobs`] runs VMs; [`Settings::from_env`] is what `kiln
/// serve` uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None`: Firecracker when it, its jailer and a KVM that runs guests
    /// are present, QEMU otherwise (as `kiln run --backend auto`).
    pub backend: Option<Backend>,
    pub dirs: RuntimeDirs,
    /// Job logs go to `<state_dir>/logs`.
    pub state_dir: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: usize,
    pub github: ClientPolicy,
    pub grace: Duration,
    pub timeouts: Timeouts,
    /// How often the watchdog checks the egress policy table.
    pub net_check_every: Duration,
    /// Where jobs, VMs and GitHub calls are counted.
    pub metrics: Arc<Metrics>,
}

impl Settings {
    /// The backend chosen at start-up; `KILN_RUNTIME_DIR`, `KILN_DISK_DIR`
    /// and [`STATE_DIR_ENV`] or their defaults (for root `/run/kiln`,
    /// `/var/lib/kiln/scratch`, `/var/lib/kiln`).
    pub fn from_env() -> Result<Self, SetupError> {
        Ok(Settings {
            backend: None,
            dirs: RuntimeDirs::from_env()?,
            state_dir: state_dir_from_env()?,
            log_max_bytes: joblog::DEFAULT_MAX_BYTES,
            log_keep: joblog::DEFAULT_KEEP,
            github: ClientPolicy::default(),
            grace: DEFAULT_GRACE,
            timeouts: Timeouts::default(),
            net_check_every: NET_CHECK_EVERY,
            metrics: Arc::new(Metrics::new()),
        })
    }
}

/// The state directory: `KILN_STATE_DIR` (absolute), `/var/lib/kiln` for
/// root, else under `$HOME` (also for `kiln doctor`).
pub fn state_dir_from_env() -> Result<PathBuf, SetupError> {
    match std::env::var_os(STATE_DIR_ENV) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(SetupError::NotAbsolute {
                    var: STATE_DIR_ENV,
                    value: p,
                })
            }
        }
        _ if nix::unistd::geteuid().is_root() => Ok(PathBuf::from("/var/lib/kiln")),
        _ => Ok(match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join(".local/state/kiln"),
            _ => PathBuf::from(format!("/tmp/kiln-state-{}", nix::unistd::geteuid())),
        }),
    }
}

/// Runs each job the scheduler hands over: JIT config, VM, log, runner
/// deletion. Cheap to
/// clone (shared): keep a clone to call [`Jobs::finish`] after
/// handing one to the server.
#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
    tasks: JobTasks,
    /// What the start-up recovery found queued, until the server takes it.
    recovered: Arc<std::sync::Mutex<Vec<QueuedJob>>>,
}

struct Shared {
    github: Arc<GithubApp>,
    scope: RunnerScope,
    runner_group_id: u64,
    /// By pool name; pools with `max_vms = 0` have none (they never run).
    pools: HashMap<String, PoolImage>,
    launcher: Launcher,
    logs: JobLogs,
    grace: Duration,
    timeouts: Timeouts,
    network: Option<Arc<Network>>,
    /// True once the egress policy table was found gone.
    net_lost: tokio::sync::watch::Receiver<bool>,
    ledger: Ledger,
    /// Every pool of the config, for matching a job's labels.
    config_pools: Vec<Arc<crate::config::Pool>>,
    /// Re-runs per workflow run after infrastructure failures.
    max_retries: u32,
    /// Between the reconciler's passes.
    reconcile_interval: Duration,
    metrics: Arc<Metrics>,
    board: Arc<Board>,
    /// By pool name: the pools whose jobs come from a scale set.
    scale_sets: HashMap<String, Arc<scale_sets::ScaleSetPool>>,
}

impl Jobs {
    /// [`Jobs::start_with`] and [`Settings::from_env`]: what `kiln serve` runs.
    pub async fn start(config: &Config) -> Result<Jobs, SetupError> {
        Self::start_with(config, Settings::from_env()?).await
    }

    /// Opens every pool's image, builds the GitHub App client, chooses the
    /// backend and prepares the directories; fails with what to fix.
    pub async fn start_with(config: &Config, settings: Settings) -> Result<Jobs, SetupError> {
        let mut pools = HashMap::new();
        for pool in &config.pools {
            if pool.max_vms == Some(0) {
                tracing::info!(pool = %pool.name, "max_vms = 0: the pool's image is not opened");
                continue;
            }
            let image = PoolImage::open(pool, &config.source)?;
            tracing::info!(pool = %pool.name, image = %image.image.dir.display(), "pool image");
            pools.insert(pool.name.clone(), image);
        }
        let github = GithubApp::with_policy(
            &config.github.api_url,
            config.github.app_id,
            &config.github.private_key,
            settings.github,
        )
        .map_err(SetupError::Github)?
        .count_in(Arc::clone(&settings.metrics));
        settings
            .metrics
            .know_pools(config.pools.iter().map(|p| p.name.as_str()));
        // Ours and written by us alone, or refused with what to run.
        settings.dirs.ensure()?;
        crate::vm::dirs::make_private_dir_all(&settings.state_dir)?;
        let opened = SqliteJournal::open(&settings.state_dir)?;
        let ledger = Ledger::new(Arc::new(opened.journal));
        let backend = match settings.backend {
            Some(b) => b,
            None => {
                // QEMU's KVM probe boots a kernel: any pool's will do.
                let kernel = config
                    .pools
                    .iter()
                    .filter_map(|p| pools.get(&p.name))
                    .find(|p| p.image.boot.arch.is_native())
                    .map(|p| p.image.boot.kernel.clone())
                    .unwrap_or_default();
                let mut opts = BackendOptions::from_env(config.backend, kernel)?;
                opts.qemu.accel_cache = Some(settings.dirs.runtime.join("accel-probe"));
                opts.firecracker.uid_lease_dir = settings.dirs.uids();
                let selected = select_backend(&opts).await?;
                tracing::info!(backend = selected.backend.name(), why = %selected.reason, "backend chosen");
                selected.backend
            }
        };
        let backend = confined(backend, &settings.dirs);
        if let Backend::Firecracker(fc) = &backend {
            pools::only_native(&pools)?;
            check_jail_filesystem(fc, &pools, &settings.dirs.disks)?;
        }
        let network = start_network(config, &pools, &settings.dirs.runtime).await?;
        let (net_lost_tx, net_lost) = tokio::sync::watch::channel(false);
        let mut launcher = Launcher::new(backend, settings.dirs)?;
        if let Some(n) = &network {
            launcher = launcher.with_network(Arc::clone(n));
            tokio::spawn(watch_policy(
                Arc::clone(n),
                settings.net_check_every,
                net_lost_tx,
            ));
        }
        let log_dir = settings.state_dir.join("logs");
        let logs = JobLogs::open(log_dir.clone(), settings.log_max_bytes, settings.log_keep)
            .map_err(|source| SetupError::Logs {
                dir: log_dir,
                source,
            })?;
        tracing::info!(dir = %logs.dir.display(), "job logs");
        let github = Arc::new(github);
        // The namespaces and address leases as start_network places them.
        let net = NetConfig::defaults(&launcher.dirs().runtime);
        let layout = host_layout(&launcher, &net);
        let recovered = recovery::recover(&layout, &ledger, &config.pools).await;
        let scale_sets = scale_sets::for_pools(&config.pools, &github, &config.github.scope);
        tokio::spawn({
            let (ledger, github) = (ledger.clone(), Arc::clone(&github));
            let scope = config.github.scope.clone();
            let webhook_pools: Vec<String> = config
                .pools
                .iter()
                .filter(|p| p.source.scale_set().is_none())
                .map(|p| p.name.clone())
                .collect();
            async move { recovery::clean_github(&ledger, &github, &scope, &webhook_pools).await }
        });
        Ok(Jobs {
            recovered: Arc::new(std::sync::Mutex::new(recovered)),
            shared: Arc::new(Shared {
                github,
                scope: config.github.scope.clone(),
                runner_group_id: config.github.runner_group_id,
                pools,
                launcher,
                logs,
                grace: settings.grace,
                timeouts: settings.timeouts,
                network,
                net_lost,
                ledger,
                config_pools: config.pools.clone(),
                max_retries: config.github.max_retries,
                reconcile_interval: config.github.reconcile_interval,
                metrics: settings.metrics,
                board: Arc::new(Board::default()),
                scale_sets,
            }),
            tasks: JobTasks::default(),
        })
    }
}

/// Where this daemon's VMs put things on the host, for the start-up
/// clean-up: its directories, network namespaces, and the cgroups and
/// jails of its backend.
fn host_layout(launcher: &Launcher, net: &NetConfig) -> HostLayout {
    let (cgroup, firecracker) = match launcher.backend() {
        Backend::Firecracker(fc) => (
            CgroupSettings::new(fc.settings().parent_cgroup.clone()),
            Some(fc),
        ),
        Backend::Qemu(cfg) => (
            cfg.confine
                .as_ref()
                .map_or_else(|| CgroupSettings::new("kiln"), |c| c.cgroup.clone()),
            None,
        ),
    };
    let layout = HostLayout::new(launcher.dirs().clone(), &net.netns_dir, cgroup).with_net(net);
    match firecracker {
        Some(fc) => layout.with_firecracker(fc.settings(), fc.exec_name()),
        None => layout,
    }
}

/// QEMU, when it is the backend, never runs as root under `kiln serve`:
/// each VM's gets its own uid (from the jails' range and lock files), a
/// seccomp sandbox and a cgroup ([`crate::vmm::qemu::confine`]).
fn confined(backend: Backend, dirs: &RuntimeDirs) -> Backend {
    match backend {
        Backend::Qemu(mut cfg) => {
            if cfg.confine.is_none() {
                let mut jails = FirecrackerSettings::new(PathBuf::new(), PathBuf::new());
                jails.uid_lease_dir = dirs.uids();
                cfg.confine = Some(Confinement::like_jails(&jails));
            }
            Backend::Qemu(cfg)
        }
        other => other,
    }
}

/// Firecracker's jails hard-link each VM's files: the images and the disk
/// directory must be on the chroot base's filesystem (checked now rather
/// than at the first job).
fn check_jail_filesystem(
    fc: &crate::vmm::firecracker::Firecracker,
    pools: &HashMap<String, PoolImage>,
    disks: &std::path::Path,
) -> Result<(), SetupError> {
    std::fs::create_dir_all(disks).map_err(|source| SetupError::Jail {
        source: crate::vmm::firecracker::FirecrackerError::Io {
            action: "creating",
            path: disks.to_owned(),
            source,
        },
    })?;
    let mut paths: Vec<&std::path::Path> = vec![disks];
    for p in pools.values() {
        paths.push(&p.image.boot.kernel);
        paths.extend(p.image.boot.initrd.as_deref());
        paths.extend(p.image.boot.base_image.as_deref());
    }
    fc.check_same_filesystem(&paths)
        .map_err(|source| SetupError::Jail { source })
}

/// The VMs' network, when a pool that runs has one.
async fn start_network(
    config: &Config,
    pools: &HashMap<String, PoolImage>,
    runtime: &std::path::Path,
) -> Result<Option<Arc<Network>>, SetupError> {
    let wanted = config
        .pools
        .iter()
        .any(|p| pools.contains_key(&p.name) && p.network == PoolNetwork::Egress);
    if !wanted {
        return Ok(None);
    }
    let n = &config.network;
    let cfg = NetConfig {
        pool4: n.pool4,
        pool6: n.pool6,
        uplinks: n.uplinks.clone(),
        mtu: n.mtu,
        dns: n.dns.clone(),
        ..NetConfig::defaults(runtime)
    };
    let network = Network::start(&cfg).await.map_err(SetupError::Network)?;
    Ok(Some(Arc::new(network)))
}

/// Fails closed: once the policy table is gone, every running VM is
/// killed (`lost` wakes their jobs) and stays so until a restart.
async fn watch_policy(
    network: Arc<Network>,
    every: Duration,
    lost: tokio::sync::watch::Sender<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if lost.is_closed() {
            return;
        }
        if let Err(e) = network.check().await {
            tracing::error!(event = %events::EGRESS_POLICY_LOST, error = %e, "the egress policy is gone: killing every running VM; no VM starts until kiln serve restarts");
            let _ = lost.send(true);
            return;
        }
    }
}

impl Jobs {
    /// Waits, at most `within`, for the jobs' tasks to finish their
    /// clean-up (cancelled jobs go on tearing down their VM and deleting
    /// their runner after the scheduler let go of them). Returns how many
    /// are still running.
    pub async fn finish(&self, within: Duration) -> usize {
        self.tasks.wait(within).await
    }

    /// Job tasks alive now.
    pub fn running(&self) -> usize {
        self.tasks.alive()
    }

    /// The runtime directory (the admin socket's place).
    pub fn runtime_dir(&self) -> &std::path::Path {
        &self.shared.launcher.dirs().runtime
    }

    /// Where job logs go.
    pub fn log_dir(&self) -> &std::path::Path {
        &self.shared.logs.dir
    }

    /// Gives up the egress policy table (the last Kiln process on the host
    /// deletes it). Call after [`Jobs::finish`].
    pub async fn stop_network(&self) {
        if let Some(n) = &self.shared.network {
            if let Err(e) = n.stop().await {
                tracing::error!(error = %e, "removing the egress policy table");
            }
        }
    }

    /// The VMs' network, when one was started.
    pub fn network(&self) -> Option<&Arc<Network>> {
        self.shared.network.as_ref()
    }

    /// The scale sets of the pools that take their jobs from one.
    pub fn scale_sets(&self) -> Vec<Arc<scale_sets::ScaleSetPool>> {
        self.shared.scale_sets.values().cloned().collect()
    }

    /// The journal (scale-set sessions are kept there).
    pub fn journal(&self) -> &Arc<dyn crate::store::Journal> {
        self.shared.ledger.journal()
    }

    /// Records the jobs of message `message_id` of scale set
    /// `scale_set_id` before the message is deleted at GitHub: `None` for a
    /// message recorded before, else the ids of the jobs to queue.
    pub fn record_message(
        &self,
        scale_set_id: u64,
        message_id: i64,
        jobs: &[QueuedJob],
    ) -> Result<Option<Vec<u64>>, crate::store::StoreError> {
        self.shared
            .ledger
            .record_message(scale_set_id, message_id, jobs)
    }

    /// GitHub took job `job` back (or cancelled it) before it ran: the
    /// journal forgets it.
    pub fn withdrawn(&self, job: &QueuedJob) {
        self.shared.ledger.completed(job.job_id);
        self.shared.metrics.job_cancelled(&job.pool.name, "github");
    }

    /// A recorded job that could not be queued (the queue is full or
    /// closed): it is not held any more; GitHub gives it to another runner.
    pub fn not_queued(&self, job_id: u64) {
        self.shared.ledger.finished(job_id);
    }

    /// The jobs running now and lately.
    pub fn board(&self) -> &Board {
        &self.shared.board
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// An operator's cancel of running job `job_id` (see [`Board::cancel`]).
    pub fn cancel(&self, job_id: u64) -> board::Cancelled {
        let found = self.shared.board.cancel(job_id);
        if let board::Cancelled::Stopping { pool } = &found {
            self.shared.metrics.job_cancelled(pool, "operator");
            tracing::warn!(event = %events::JOB_CANCELLED, job_id, %pool, was = "running", "job cancelled by an operator: its runner is stopped");
        }
        found
    }

    /// An operator's cancel of job `job_id` while it was queued: the
    /// journal forgets it (GitHub keeps it queued; the reconciler may bring
    /// it back).
    pub fn forget_queued(&self, job: &QueuedJob) {
        self.shared.ledger.finished(job.job_id);
        self.shared
            .metrics
            .job_cancelled(&job.pool.name, "operator");
        tracing::warn!(event = %events::JOB_CANCELLED, job_id = job.job_id, pool = %job.pool.name, was = "queued", "queued job cancelled by an operator");
    }
}

/// Raises a job's stop signal to `Kill` when dropped: the dispatch future
/// was dropped, or the job is over (then nothing listens any more).
struct KillOnDrop(StopHandle);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

impl Dispatch for Jobs {
    fn queued(&self, job: &QueuedJob) -> bool {
        match self.shared.ledger.queued(job) {
            Ok(()) => true,
            Err(e) => !e.is_full(),
        }
    }

    fn metrics(&self) -> Option<&Metrics> {
        Some(&self.shared.metrics)
    }

    fn news(&self, news: crate::scheduler::dispatch::JobNews) {
        self.shared.news(news);
    }

    fn recovered(&self) -> Vec<QueuedJob> {
        std::mem::take(
            &mut *self
                .recovered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn find_lost(&self, enqueue: lost::Enqueue) {
        tokio::spawn(Arc::clone(&self.shared).find_lost(enqueue));
    }

    fn dispatch(&self, job: QueuedJob) -> impl std::future::Future<Output = ()> + Send {
        let shared = Arc::clone(&self.shared);
        let tasks = self.tasks.clone();
        async move {
            let (handle, stop) = stop_channel();
            // A lost egress policy kills the VM (see `watch_policy`).
            let mut lost = shared.net_lost.clone();
            let killer = handle.clone();
            let watcher = tokio::spawn(async move {
                if lost.wait_for(|l| *l).await.is_ok() {
                    killer.kill();
                }
            });
            let idle_stop = handle.clone();
            let _kill_on_drop = KillOnDrop(handle);
            let _stop_watching = AbortOnDrop(watcher);
            let job_id = job.job_id;
            let token = tasks.token();
            let task = tokio::spawn(async move {
                let _token = token;
                shared.run(job, idle_stop, stop).await;
            });
            if let Err(e) = task.await {
                // A panic is a bug: the VM guard's Drop has cleaned up what
                // it could; the runner may stay registered.
                tracing::error!(job_id, error = %e, "the job's task failed");
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How far a job got, for its log line.
struct Outcome {
    runner_id: Option<u64>,
    jit_ms: u64,
    report: Option<VmReport>,
    log: Option<PathBuf>,
}

impl Shared {
    async fn run(&self, job: QueuedJob, handle: StopHandle, stop: StopSignal) {
        let picked_up = Instant::now();
        let pool = Arc::clone(&job.pool);
        let Some(image) = self.pools.get(&pool.name) else {
            tracing::error!(job_id = job.job_id, pool = %pool.name, "no image for this pool; the job does not run");
            return;
        };
        let runner = match runner::random_suffix() {
            Ok(s) => runner::runner_name(&pool.name, job.job_id, &s),
            Err(e) => {
                tracing::error!(job_id = job.job_id, pool = %pool.name, error = %e, "no randomness for the runner name; the job does not run");
                return;
            }
        };
        // Every line about the job carries these (`vm` and `runner_id`
        // once known): see crate::logs. Never a secret here.
        let span = tracing::info_span!(
            "job",
            job_id = job.job_id,
            pool = %pool.name,
            runner = %runner,
            runner_id = tracing::field::Empty,
            vm = tracing::field::Empty,
        );
        self.board.add(
            &NewRow {
                job_id: job.job_id,
                run_id: job.run_id,
                repository: &job.repository,
                pool: &pool.name,
                runner: &runner,
            },
            handle.clone(),
        );
        async move {
            let queued_ms = ms(picked_up.saturating_duration_since(job.received));
            let outcome = self.run_runner(&job, image, &runner, handle, stop).await;
            log_outcome(queued_ms, &outcome, picked_up.elapsed());
            self.count(&pool.name, &outcome);
            let how = outcome
                .report
                .as_ref()
                .map_or_else(|| "no VM".to_owned(), |r| describe(&r.result));
            self.board.done(job.job_id, how);
        }
        .instrument(span)
        .await;
    }

    /// JIT config, VM, runner deletion.
    async fn run_runner(
        &self,
        job: &QueuedJob,
        image: &PoolImage,
        runner: &str,
        handle: StopHandle,
        stop: StopSignal,
    ) -> Outcome {
        let asked = Instant::now();
        let scale_set = self.scale_sets.get(&job.pool.name).cloned();
        // A scale set's job was assigned to it by GitHub: not asked again
        // (its id is not a REST job id).
        if scale_set.is_none() && !self.still_queued(job).await {
            self.ledger.finished(job.job_id);
            return Outcome {
                runner_id: None,
                jit_ms: 0,
                report: None,
                log: None,
            };
        }
        if let Err(e) = self.ledger.starting(job, runner) {
            tracing::error!(error = %e, "the job is not started: it could not be recorded");
            return Outcome {
                runner_id: None,
                jit_ms: 0,
                report: None,
                log: None,
            };
        }
        self.board.stage(job.job_id, Stage::Registering);
        let req = JitRequest {
            name: runner.to_owned(),
            runner_group_id: self.runner_group_id,
            labels: job.pool.labels.clone(),
            work_folder: WORK_FOLDER.into(),
        };
        let jit = match &scale_set {
            Some(s) => s.jit(runner, WORK_FOLDER).await,
            None => {
                self.github
                    .jit_config(job.installation_id, &self.scope, &req)
                    .await
            }
        };
        let mut outcome = Outcome {
            runner_id: None,
            jit_ms: ms(asked.elapsed()),
            report: None,
            log: None,
        };
        let jit = match jit {
            Ok(jit) => jit,
            Err(e) => {
                tracing::error!(
                    event = %events::JOB_NO_JIT_CONFIG,
                    delivery = %job.delivery,
                    repository = %job.repository,
                    error = %e,
                    "no JIT runner config from GitHub: no VM for this job"
                );
                self.ledger.runner_gone(runner);
                self.ledger.finished(job.job_id);
                return outcome;
            }
        };
        outcome.runner_id = Some(jit.runner_id);
        tracing::Span::current().record("runner_id", jit.runner_id);
        let record_scope = scale_set
            .as_ref()
            .map_or_else(|| self.scope.to_string(), |s| s.record_scope());
        self.ledger
            .registered(job, runner, jit.runner_id, &record_scope);
        // From here on a runner is registered: it is deleted whatever happens.
        if stop.level() > StopLevel::Run {
            tracing::warn!("cancelled before its VM started");
        } else {
            self.board.stage(job.job_id, Stage::Booting);
            self.run_vm(job, image, runner, &jit, (handle, stop), &mut outcome)
                .await;
        }
        match infra_failure(outcome.report.as_ref()) {
            Some(why) => self.ledger.infra_failure(job.job_id, runner, &why),
            None => self.ledger.finished(job.job_id),
        }
        let deleted = match &scale_set {
            Some(s) => s.client.delete_runner(jit.runner_id).await,
            None => {
                self.github
                    .delete_runner(job.installation_id, &self.scope, jit.runner_id)
                    .await
            }
        };
        match deleted {
            Ok(_) => self.ledger.runner_gone(runner),
            Err(e) => tracing::error!(
                runner_id = jit.runner_id,
                error = %e,
                "cannot delete the runner registration: it is retried at the next start (or delete it in GitHub's runner settings)"
            ),
        }
        outcome
    }

    async fn run_vm(
        &self,
        job: &QueuedJob,
        image: &PoolImage,
        runner: &str,
        jit: &JitConfig,
        (handle, stop): (StopHandle, StopSignal),
        outcome: &mut Outcome,
    ) {
        let mut entropy = vec![0u8; 64];
        if let Err(e) = crate::vm::random::try_fill(&mut entropy) {
            tracing::error!(error = %e, "no randomness for the guest: no VM for this job");
            return;
        }
        let pool = &job.pool;
        let spec = RunnerSpec {
            command: RUNNER_COMMAND.into(),
            user: image.image.user.clone(),
            sudo_gid: image.sudo_gid,
            hostname: runner::hostname_for(runner),
            deadline: pool.job_timeout,
            grace: self.grace,
        };
        let mut job_spec = runner::runner_job(&spec, &jit.encoded, entropy);
        if let Some(proxy) = &pool.proxy {
            job_spec.env.extend(runner::proxy_env(&proxy.url));
        }
        let network = (pool.network == PoolNetwork::Egress).then(|| NetRequest {
            allow: pool.allow.clone(),
            dns: None,
            tap_owner: None,
        });
        let req = VmRequest {
            network,
            vcpus: pool.vcpus,
            memory_mib: image.memory_mib,
            scratch_bytes: Some(pool.scratch_gib.saturating_mul(1 << 30)),
            cancel_grace: self.grace,
            max_output_bytes: Some(MAX_OUTPUT_BYTES),
            timeouts: self.timeouts,
            ..VmRequest::new(image.image.boot.clone(), job_spec)
        };
        let mut log = match self.logs.create(job.job_id, runner).await {
            Ok(log) => Some(log),
            Err(e) => {
                tracing::warn!(dir = %self.logs.dir.display(), error = %e, "cannot create the job log: its output is dropped");
                None
            }
        };
        if let Some(log) = log.as_mut() {
            outcome.log = Some(log.path().to_owned());
            self.board.log(job.job_id, log.path().to_owned());
            log.note(&format!(
                "job {} of {} (run {}, delivery {}), pool {}, runner {} (id {})",
                job.job_id,
                job.repository,
                job.run_id,
                job.delivery,
                pool.name,
                runner,
                jit.runner_id
            ))
            .await;
        }
        let (report, idle) = self
            .run_watched(job, jit.runner_id, req, &mut log, (handle, stop))
            .await;
        if let Some(log) = log.as_mut() {
            if idle == IdleVerdict::Stopped {
                log.note(&format!(
                    "the runner took no job within the pool's idle_timeout ({:?}): its VM was stopped",
                    pool.idle_timeout
                ))
                .await;
            }
            log.note(&format!(
                "{}; {}",
                describe(&report.result),
                report.timing.render()
            ))
            .await;
            if report.result.is_err() && !report.console_tail.is_empty() {
                log.note(&format!(
                    "the end of the guest's console:\n{}",
                    report.console_tail
                ))
                .await;
            }
            log.finish().await;
        }
        outcome.report = Some(report);
    }
}

impl Shared {
    /// Counts how the job ended and where its VM's time went.
    fn count(&self, pool: &str, outcome: &Outcome) {
        let m = &self.metrics;
        let Some(report) = &outcome.report else {
            m.job_finished(pool, JobResult::NoVm);
            return;
        };
        let result = match &report.result {
            Ok(JobEnd::Exited(e)) if e.status == ExitStatus::Code(0) => JobResult::Succeeded,
            Ok(_) => JobResult::Failed,
            Err(_) => JobResult::VmFailed,
        };
        m.job_finished(pool, result);
        let t = &report.timing;
        let phases = [
            ("prepare", t.prepare),
            ("vmm_start", t.vmm_start),
            ("pre_kernel", t.pre_kernel),
            ("kernel", t.kernel),
            ("init", t.init),
            ("handshake", t.handshake),
            ("shutdown", t.shutdown),
        ];
        for (phase, took) in phases {
            if let Some(took) = took {
                m.boot_phase(phase, took);
            }
        }
        if let Some(job) = t.job {
            m.job_duration(pool, job);
        }
        if let Some(teardown) = t.teardown {
            m.teardown(teardown);
        }
    }

    /// Whether GitHub says the job is still queued; logs why not. Anything
    /// but `queued` (a job that ran, was cancelled, a replayed delivery,
    /// a job GitHub cannot find or cannot tell about) gets no runner.
    async fn still_queued(&self, job: &QueuedJob) -> bool {
        let state = self
            .github
            .job_state(job.installation_id, &job.repository, job.job_id)
            .await;
        // `github_state` for the event: the job's status, `not_found` or `unknown`.
        let (github_state, why) = match state {
            Ok(JobState::Known(JobStatus::Queued)) => return true,
            Ok(JobState::Known(status)) => (
                status.as_str(),
                format!("GitHub says the job is {}", status.as_str()),
            ),
            Ok(JobState::NotFound) => (
                "not_found",
                "GitHub knows no such job in this repository (404)".to_owned(),
            ),
            Err(e) => ("unknown", format!(
                "cannot ask GitHub whether the job is still queued (the App needs the repository permission \"Actions: read\"): {e}"
            )),
        };
        tracing::warn!(
            event = %events::JOB_NOT_QUEUED,
            github_state,
            delivery = %job.delivery,
            repository = %job.repository,
            "job not queued any more: no runner and no VM: {why}"
        );
        false
    }

    /// Runs the VM ([`Shared::run_when_addressed`]) while [`idle`] watches
    /// that the runner takes a job within the pool's `idle_timeout`.
    async fn run_watched(
        &self,
        job: &QueuedJob,
        runner_id: u64,
        req: VmRequest,
        log: &mut Option<joblog::JobLog>,
        (handle, stop): (StopHandle, StopSignal),
    ) -> (VmReport, IdleVerdict) {
        let (spotter, taken) = JobSpotter::new();
        let (progress, progress_rx, journaling) = self.journal_progress(job);
        let mut sink = Spotting {
            inner: log,
            spotter,
        };
        let ask = || {
            self.github
                .runner_state(job.installation_id, &self.scope, runner_id)
        };
        let watch = idle::watch_idle(job.pool.idle_timeout, progress_rx, taken, ask, handle);
        let run = self.run_when_addressed(job.job_id, req, &mut sink, stop, progress);
        tokio::pin!(run, watch);
        let mut verdict = None;
        // The watch is dropped with the VM's end, even while it asks GitHub.
        let report = loop {
            tokio::select! {
                report = &mut run => break report,
                v = &mut watch, if verdict.is_none() => verdict = Some(v),
            }
        };
        // Every milestone is written before the VM's record goes.
        let named = journaling.await.unwrap_or(false);
        if let Some(id) = &report.id {
            if !named {
                // A VM that failed before it was prepared: named once, now.
                tracing::Span::current().record("vm", tracing::field::display(id));
            }
            self.ledger.vm_gone(id);
        }
        (report, verdict.unwrap_or(IdleVerdict::VmEnded))
    }

    /// A progress channel whose milestones the journal records (the VM's
    /// id, directory, CID, VMM pid) before the idle watch sees them. The
    /// VM's id goes into the job's span as `vm`; the task returns whether
    /// it did.
    fn journal_progress(
        &self,
        job: &QueuedJob,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<Progress>,
        tokio::sync::mpsc::UnboundedReceiver<Progress>,
        tokio::task::JoinHandle<bool>,
    ) {
        let (tx, mut raw) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let (fwd, rx) = tokio::sync::mpsc::unbounded_channel();
        let ledger = self.ledger.clone();
        let (board, metrics) = (Arc::clone(&self.board), Arc::clone(&self.metrics));
        let (pool, job_id, received) = (job.pool.name.clone(), job.job_id, job.received);
        let span = tracing::Span::current();
        let task = tokio::spawn(async move {
            let mut named = false;
            while let Some(p) = raw.recv().await {
                if let Progress::Prepared { id, .. } = &p {
                    // The job's lines from here on name its VM.
                    span.record("vm", tracing::field::display(id));
                    named = true;
                }
                ledger.vm_progress(&pool, job_id, &p);
                board.progress(job_id, &p);
                if matches!(p, Progress::RunnerStarted { .. }) {
                    metrics.runner_started(&pool, received.elapsed());
                }
                let _ = fwd.send(p);
            }
            named
        });
        (tx, rx, task)
    }

    /// Runs the VM; while every address of the pool is in use (other jobs,
    /// other Kiln processes), or the disk directory has no room for its
    /// scratch disk beside the others', the job waits, with a log line,
    /// rather than failing: never two VMs on one address, never a host disk
    /// filled by VMs.
    async fn run_when_addressed(
        &self,
        job_id: u64,
        req: VmRequest,
        sink: &mut impl OutputSink,
        mut stop: StopSignal,
        progress: tokio::sync::mpsc::UnboundedSender<Progress>,
    ) -> VmReport {
        let mut told = false;
        loop {
            let report = self
                .launcher
                .run(req.clone(), sink, stop.clone(), Some(progress.clone()))
                .await;
            let Some(lacking) = lacking(&report.result) else {
                return report;
            };
            if stop.level() > StopLevel::Run {
                return report;
            }
            self.board.waiting(job_id, lacking);
            if !told {
                tracing::warn!(
                    event = %events::JOB_WAITS,
                    lacking,
                    "the job waits for room: {}",
                    describe(&report.result)
                );
                told = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(ADDRESS_RETRY) => {}
                _ = stop.above(StopLevel::Run) => return report,
            }
        }
    }
}

/// What a VM that could not start lacked, when waiting can bring it: an
/// address of the pool (other jobs, other Kiln processes hold them all), or
/// disk space for its scratch disk (other VMs may still write theirs).
/// Why a VM ended, when the reason was not the job's own: its VMM died
/// or its guest went silent while the job ran. A job that never started
/// (GitHub still has it queued), that exited by itself, hit its deadline
/// or was cancelled is not such a failure.
fn infra_failure(report: Option<&VmReport>) -> Option<String> {
    let report = report?;
    match &report.result {
        Err(
            e @ (RunError::VmmExitedDuringJob { .. }
            | RunError::Conversation(_)
            | RunError::Task(_)),
        ) => Some(e.to_string()),
        _ => None,
    }
}

fn lacking(result: &Result<JobEnd, RunError>) -> Option<&'static str> {
    match result {
        Err(RunError::Network(crate::net::NetError::Lease(
            crate::lease::LeaseError::Exhausted { .. },
        ))) => Some("address"),
        Err(RunError::NoDiskSpace(crate::disk::budget::BudgetError::NoRoom { .. })) => {
            Some("disk space")
        }
        _ => None,
    }
}

/// One line per job, at a level that says whether it went well, with
/// the event that says how it ended ([`events`]). The job, pool, runner
/// and VM are in the span.
fn log_outcome(queued_ms: u64, o: &Outcome, took: Duration) {
    let Some(report) = &o.report else {
        tracing::warn!(
            event = %events::JOB_WITHOUT_VM,
            runner_id = o.runner_id,
            queued_ms,
            jit_ms = o.jit_ms,
            total_ms = ms(took),
            "job ended without a VM"
        );
        return;
    };
    let exit = describe(&report.result);
    let log = o.log.as_ref().map(|p| p.display().to_string());
    let teardown = report.teardown.as_ref().err().map(ToString::to_string);
    macro_rules! line {
        ($level:ident, $event:expr, $msg:literal) => {
            tracing::$level!(
                event = %$event,
                runner_id = o.runner_id,
                backend = %report.backend,
                exit = %exit,
                stop = ?report.stop,
                queued_ms,
                jit_ms = o.jit_ms,
                vm_ms = ms(report.timing.total),
                job_ms = report.timing.job.map(ms),
                total_ms = ms(took),
                timing = %report.timing.render(),
                teardown = teardown.as_deref(),
                log = log.as_deref(),
                $msg
            )
        };
    }
    match &report.result {
        Ok(JobEnd::Exited(e)) if e.status == ExitStatus::Code(0) => {
            line!(info, events::JOB_DONE, "job done")
        }
        Ok(_) if report.teardown.is_ok() => {
            line!(
                warn,
                events::JOB_RUNNER_FAILED,
                "job done: the runner failed"
            )
        }
        _ => line!(error, events::JOB_FAILED, "job failed"),
    }
}

/// How the job ended, in one line fit for a log: guest-supplied text is
/// cut and stripped of control characters.
fn describe(result: &Result<JobEnd, RunError>) -> String {
    let text = match result {
        Ok(JobEnd::Exited(e)) => {
            let status = match e.status {
                ExitStatus::Code(c) => format!("exit {c}"),
                ExitStatus::Signal(s) => format!("killed by signal {s}"),
            };
            match &e.stopped_by {
                Some(cause) => format!("{status} (stopped: {cause:?})"),
                None => status,
            }
        }
        Ok(JobEnd::GuestError(g)) => format!("guest error: {}: {}", g.what, g.detail),
        Err(e) => format!("VM failed: {e}"),
    };
    printable(&text, MAX_LOGGED_CHARS)
}

fn printable(s: &str, max_chars: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(max_chars).is_some() {
        out.push_str("...");
    }
    out
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{GuestError, RunnerExited};

    #[test]
    fn outcomes_read_well_and_guest_text_is_tamed() {
        let exited = |status, stopped_by| {
            Ok(JobEnd::Exited(RunnerExited {
                status,
                duration_ms: 1,
                stopped_by,
            }))
        };
        assert_eq!(describe(&exited(ExitStatus::Code(0), None)), "exit 0");
        assert_eq!(
            describe(&exited(ExitStatus::Signal(9), None)),
            "killed by signal 9"
        );
        let hostile = Ok(JobEnd::GuestError(GuestError {
            what: "spawn\x1b[2J".into(),
            detail: "x".repeat(1000),
        }));
        let d = describe(&hostile);
        assert!(d.starts_with("guest error: spawn?[2J: xxx"), "{d}");
        assert!(
            d.ends_with("...") && d.chars().count() == MAX_LOGGED_CHARS + 3,
            "{d}"
        );
        assert_eq!(
            describe(&Err(RunError::Killed)),
            "VM failed: killed on request"
        );
    }
}
