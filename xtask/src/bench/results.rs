//! What a bench run found: the JSON file's schema, and what BENCHMARKS.md
//! is rendered from. Durations are milliseconds, memory KiB, sizes bytes,
//! unless a field's name says otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::Stat;

/// Bumped when a field changes meaning. 2: `backend` is absent when no VM
/// benchmark ran; `webhook` holds measurements (or, from schema 1, why
/// there were none), and is absent when it did not run. 3: `boot` names
/// its kernel and may hold the production kernel's comparison too. 4:
/// `network`, the VM network's set-up and teardown and boots with it on
/// and off (absent when it did not run, and in older files). 5:
/// `scale_set`, a job handed over to runner exec through the scale-set
/// queue and through a webhook (absent when it did not run, and in older
/// files).
pub const SCHEMA: u32 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub schema: u32,
    pub generated_unix: u64,
    /// The command line that produced this.
    pub command: String,
    /// `full`, `quick` or `partial` (`--only`).
    pub mode: String,
    pub runs: usize,
    /// `git describe`-like: the commit, `-dirty` when the tree had changes.
    pub git: Option<String>,
    pub machine: MachineInfo,
    /// The VMs' backend; absent when only host-side benchmarks ran.
    #[serde(default)]
    pub backend: Option<BackendInfo>,
    /// The host's load average before each benchmark (other work on the
    /// machine skews every figure).
    pub load: Vec<LoadSample>,
    pub boot: Option<BootResults>,
    pub disk: Option<DiskResults>,
    pub churn: Option<ChurnResults>,
    pub memory: Option<MemoryResults>,
    #[serde(default)]
    pub webhook: Option<Webhook>,
    #[serde(default)]
    pub network: Option<NetworkResults>,
    #[serde(default)]
    pub scale_set: Option<ScaleSetResults>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub qemu: String,
    pub vhost_device_vsock: String,
    /// The filesystem scratch disks and images live on.
    pub disk_fs: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendInfo {
    /// What every figure is labelled with, e.g. "QEMU TCG".
    pub label: String,
    pub vmm: String,
    pub accel: String,
    pub machine: String,
    /// Why this accelerator (the KVM probe's answer).
    pub accel_reason: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub guest_kernel: String,
    /// Measurement settings added to every guest's command line.
    pub extra_kernel_args: Vec<String>,
}

/// How busy the host was while one benchmark ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSample {
    /// The benchmark.
    pub during: String,
    /// 1-minute load average as it started (it includes the bench's own
    /// VMs from the benchmark before).
    pub load1_before: f64,
    /// CPU time used by everything but the bench and its VMs, as a share
    /// of all the host's CPUs over the benchmark's wall time.
    pub others_cpu_pct: f64,
    /// The same for the bench itself (its QEMU and vhost children included).
    pub bench_cpu_pct: f64,
}

/// A named figure and what it covers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub what: String,
    pub stat: Stat,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootResults {
    /// The kernel `kiln`, `systemd` and `ratios` booted (absent before
    /// schema 3: Debian's cloud kernel).
    #[serde(default)]
    pub kernel: String,
    pub kiln: BootPath,
    pub systemd: BootPath,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Target>,
    /// Runs that failed and were retried.
    pub incidents: Vec<String>,
    /// The same comparison on Kiln's production kernel, everything built
    /// in (schema 3; absent when it was not built).
    #[serde(default)]
    pub built_in: Option<BootComparison>,
}

/// Both paths on one kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootComparison {
    pub kernel: String,
    /// Whether both paths loaded modules.
    pub modular: bool,
    pub kiln: BootPath,
    pub systemd: BootPath,
    pub ratios: Vec<Ratio>,
}

/// One way of booting to the runner, over N runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootPath {
    pub name: String,
    /// Exactly what this path does, for the reader to judge the comparison.
    pub includes: Vec<String>,
    /// VMM start to the runner's exec, phase by phase, in order.
    pub phases: Vec<Figure>,
    /// VMM start to the runner's exec.
    pub total: Stat,
    /// PID 1's own share: from the first userspace instruction to the
    /// runner's exec, without any wait for the host.
    pub init_share: Stat,
    /// The same without loading kernel modules.
    pub init_share_without_modules: Stat,
    /// Before the VMM starts (VM directory, CID, scratch disk): not in
    /// `total`.
    pub prepare: Stat,
    /// PID 1's resident memory as the runner starts.
    pub pid1_rss_kib: Stat,
    pub pid1_hwm_kib: Stat,
    /// PID 1's name as the probe saw it.
    pub pid1: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub what: String,
    /// Medians.
    pub kiln_ms: f64,
    pub systemd_ms: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    /// `met`, `not met`, or `not measurable here`.
    pub verdict: String,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskResults {
    /// Kiln's way: a fresh sparse scratch disk per VM, copied from its
    /// template; the base image is attached read-only and never copied.
    pub kiln: Vec<Figure>,
    /// Copying an image per VM.
    pub naive: Vec<Figure>,
    /// What Kiln pays once per image and disk size (mkfs, which makes the
    /// template). Results from before templates hold other ways to the
    /// same disk here.
    pub alternatives: Vec<Figure>,
    pub image_bytes: u64,
    pub image_what: String,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnResults {
    pub vms: usize,
    pub failures: usize,
    pub seconds: f64,
    pub vms_per_minute: f64,
    /// One VM's whole life, request to teardown.
    pub per_vm: Stat,
    pub before: Counts,
    pub after: Counts,
    pub job: String,
    /// What each failed VM reported.
    pub incidents: Vec<String>,
}

/// What a VM could leave behind on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Open file descriptors of the bench process (which runs the VMs).
    pub fds: usize,
    /// Live descendants of the bench process (QEMU, vhost-device-vsock).
    pub processes: usize,
    /// Lines of the bench process's mountinfo.
    pub mounts: usize,
    /// tun/tap devices on the host.
    pub taps: usize,
    /// Entries under the runtime directory (VM dirs, sockets, CID leases).
    pub runtime_files: usize,
    /// Entries under the scratch disk directory.
    pub disk_files: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryResults {
    pub kiln_init_rss_kib: Stat,
    pub kiln_init_hwm_kib: Stat,
    pub kiln_init_bytes: u64,
    pub kiln_init_stripped: bool,
    /// systemd as PID 1 at the same point, from the boot benchmark.
    pub systemd_rss_kib: Option<Stat>,
    /// The `kiln run` process while its VM runs a job.
    pub kiln_run_rss_kib: Option<Stat>,
    /// The VM layer inside one process (what `kiln serve` embeds):
    /// the process idle, and with `vms` VMs running.
    pub in_process_idle_rss_kib: Stat,
    pub in_process_busy_rss_kib: Stat,
    pub in_process_vms: usize,
    pub in_process_per_vm_kib: Stat,
    /// The VMM's own processes per running VM, for scale.
    pub qemu_rss_kib: Stat,
    pub vhost_rss_kib: Stat,
    pub guest_memory_mib: u32,
    /// The real `kiln serve` with VMs running; absent when skipped
    /// (`--no-kiln-run`) and in files from before it was measured.
    #[serde(default)]
    pub serve: Option<ServeVmMemory>,
    /// Runs that failed and were retried.
    pub incidents: Vec<String>,
}

/// `kiln serve` (release build) running jobs in VMs: its own resident
/// memory (`VmRSS`, KiB) over the runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeVmMemory {
    /// VMs running at once at the busiest sample; the pool's room.
    pub vms: usize,
    /// Each VM's size.
    pub vcpus: u32,
    pub memory_mib: u32,
    /// How long each job (the stand-in runner) holds its VM, seconds.
    pub hold_s: u64,
    /// After start-up, before any job.
    pub idle_rss_kib: Stat,
    /// With one VM's runner running.
    pub one_vm_rss_kib: Stat,
    /// With `vms` runners running.
    pub vms_rss_kib: Stat,
    /// (`vms_rss_kib` - `idle_rss_kib`) / `vms`, per run.
    pub per_vm_kib: Stat,
    /// Once every job ended (VMs torn down, runners deleted).
    pub after_rss_kib: Stat,
    /// For scale: `kiln serve`'s QEMU and vhost-device-vsock children at
    /// the busiest sample, summed over its `vms` VMs.
    pub qemu_rss_kib: Stat,
    pub vhost_rss_kib: Stat,
    pub check: ServeVmCheck,
}

/// Whether the runs were real, summed over them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeVmCheck {
    /// Jobs sent (`vms` per run).
    pub jobs: usize,
    /// Stand-in runners that reported ready with a JIT config in their
    /// environment.
    pub ready_with_jit: usize,
    /// Jobs `kiln serve` logged as `job done` (the runner exited 0).
    pub jobs_done: usize,
    /// Jobs that ended any other way.
    pub jobs_not_done: usize,
    /// `generate-jitconfig` requests the fake GitHub got.
    pub jit_requests: usize,
    /// Runner registrations deleted, and left registered.
    pub runners_deleted: usize,
    pub runners_left: usize,
    /// VM processes and files left once `kiln serve` stopped.
    pub left_behind: Vec<String>,
    /// All of the above agree: one VM, JIT config and runner deletion per
    /// job, and nothing left.
    pub verified: bool,
}

/// Benchmark 3, or (in files from before `kiln serve`) why it did not run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Webhook {
    Measured(Box<WebhookResults>),
    Pending(Pending),
}

/// `kiln serve` against the ceiling, over loopback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookResults {
    pub kiln: WebhookSide,
    pub ceiling: WebhookSide,
    /// Keep-alive connections in the throughput runs (and available to
    /// the rate runs).
    pub connections: usize,
    /// Requests per throughput run.
    pub requests_per_run: usize,
    /// Requests per side before the measured runs, not reported.
    pub warmup_requests: usize,
    /// The open-loop runs' schedule.
    pub rate_per_s: u32,
    pub rate_requests: usize,
    /// Mean request body.
    pub body_bytes: f64,
    /// How `kiln serve` was set up, one line each.
    pub setup: Vec<String>,
    pub targets: Vec<Target>,
    pub check: WebhookCheck,
    pub memory: ServeMemory,
    /// Load runs with answers other than the expected one, or failures.
    pub incidents: Vec<String>,
}

/// One server, over the runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookSide {
    pub name: String,
    /// What it does per delivery.
    pub includes: Vec<String>,
    /// Closed loop: deliveries answered as expected per second.
    pub throughput_rps: Stat,
    /// The server process's CPU time per delivery in the throughput runs, µs.
    pub cpu_us_per_request: Stat,
    /// The load generator's CPU time in the throughput runs, % of one core.
    pub client_cpu_pct: Stat,
    /// Open loop: latency from each request's scheduled time, ms.
    pub p50_ms: Stat,
    pub p90_ms: Stat,
    pub p99_ms: Stat,
    pub max_ms: Stat,
    /// Open loop: deliveries answered per second over the run.
    pub achieved_rps: Stat,
    /// Open loop: p99 of how late the client put requests on a
    /// connection (its own share of the latency), ms.
    pub send_lateness_p99_ms: Stat,
}

/// Whether `kiln serve` really queued what the figures count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookCheck {
    /// Deliveries sent to `kiln serve`, warm-up included.
    pub sent: usize,
    /// Answered 202 `queued`.
    pub queued_answers: usize,
    /// Every other answer, "STATUS BODY" -> count.
    pub other_answers: BTreeMap<String, usize>,
    /// No answer (connection errors).
    pub failed: usize,
    /// `job_queued` events in `kiln serve`'s log (its `job queued` lines).
    pub log_job_queued: Option<usize>,
    /// The queue's length at shutdown (its `dropped_from_queue` log field).
    pub dropped_at_shutdown: Option<usize>,
    /// All of the above agree: every delivery sent was queued.
    pub verified: bool,
}

/// `kiln serve`'s resident memory (`VmRSS`), KiB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServeMemory {
    /// After start-up, before any delivery.
    pub idle_rss_kib: f64,
    /// With `queued_jobs` jobs queued (every measured delivery's).
    pub queued_rss_kib: f64,
    pub queued_jobs: usize,
    /// (queued - idle) / queued_jobs, bytes; includes the de-duplication
    /// memory of those deliveries and the allocator's slack.
    pub per_queued_job_bytes: f64,
    /// The ceiling server after start-up, for scale.
    pub ceiling_idle_rss_kib: f64,
}

/// A benchmark that cannot run yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub status: String,
    pub reason: String,
}

/// Benchmark 6, the VM network: each VM's network made and removed in a
/// row without VMs, and boots with the network on and off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkResults {
    /// The namespaces the benchmark made and ran in, one line each.
    pub setup: Vec<String>,
    pub churn: NetChurn,
    /// Absent when no VM boot was measured.
    #[serde(default)]
    pub boot: Option<NetBoot>,
    pub targets: Vec<Target>,
}

/// `net-churn`: VM networks made and removed back to back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetChurn {
    pub vms: usize,
    /// VMs at each end whose medians are compared for growth.
    pub window: usize,
    /// What one VM's set-up and teardown do, one line each.
    pub covers: Vec<String>,
    /// Set-up, teardown, and the two together, per VM.
    pub phases: Vec<NetPhase>,
    /// What was left in the namespace afterwards (links, namespaces,
    /// policy elements); empty when clean.
    pub leftovers: Vec<String>,
    /// `kiln-*` namespaces in /run/netns that were another Kiln's (their VM
    /// link is not in the bench's namespace), not counted as leftovers.
    #[serde(default)]
    pub others_ignored: usize,
}

/// One per-VM figure over the churn, in milliseconds; `stat.samples` are
/// in VM order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetPhase {
    pub name: String,
    pub what: String,
    pub stat: Stat,
    /// Nearest-rank 90th percentile.
    pub p90: f64,
    /// Median of the first and of the last `window` VMs.
    pub first_median: f64,
    pub last_median: f64,
}

/// kiln-init's boot to the runner, the VM with a network and without,
/// alternating run by run on the same kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetBoot {
    pub kernel: String,
    pub off: BootPath,
    pub on: BootPath,
    /// The launcher's request to the runner's exec: `prepare` + `total`,
    /// per run.
    pub off_request_to_runner: Stat,
    pub on_request_to_runner: Stat,
    /// The VMM's exit to the VM's last file (and, on, its network) removed.
    pub off_teardown: Stat,
    pub on_teardown: Stat,
    /// Runs that failed and were retried.
    pub incidents: Vec<String>,
}

/// Benchmark 7, job sources: a job handed over to `kiln serve` until its
/// runner execs, through the scale-set queue and through a webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleSetResults {
    pub webhook: SourcePath,
    pub scale_set: SourcePath,
    /// Scale set over webhook, medians.
    pub ratios: Vec<SourceRatio>,
    /// Measured jobs per path (after one warm-up job each).
    pub runs: usize,
    /// Each VM's size (one runs at a time).
    pub vcpus: u32,
    pub memory_mib: u32,
    pub check: ScaleSetCheck,
    /// Set when these figures come from a run of their own (`--only
    /// scale-set`) merged into another run's results: which run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separate_run: Option<String>,
}

/// One job source, over the runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourcePath {
    pub name: String,
    /// What it does, one line each.
    pub includes: Vec<String>,
    /// In order; `jit_ms (beside)` is part of `queued → VM starting`.
    pub phases: Vec<Figure>,
    /// Handed over to `vm_starting`: Kiln's handling before the VM.
    pub before_vm: Stat,
    /// `vm_starting` to the runner's exec.
    pub boot: Stat,
    /// Handed over to the runner's exec.
    pub total: Stat,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRatio {
    pub what: String,
    /// Medians.
    pub webhook_ms: f64,
    pub scale_set_ms: f64,
    /// `scale_set_ms / webhook_ms`.
    pub ratio: f64,
}

/// Whether the runs were real (warm-up jobs included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleSetCheck {
    /// Jobs handed over, both paths.
    pub jobs: usize,
    /// Ended `job_done` (the stand-in runner exited 0).
    pub jobs_done: usize,
    /// Stand-ins that reported a JIT config in their environment.
    pub ready_with_jit: usize,
    /// The broker saw every scale-set job started by exactly one runner.
    pub broker_ran_each_once: bool,
    /// VM processes and files left once the daemons stopped.
    pub left_behind: Vec<String>,
    /// All of the above agree.
    pub verified: bool,
}
