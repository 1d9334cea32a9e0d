//! One VM's life: directory, CID, scratch disk, the VMM with its listener
//! bound first, the guest's `Hello` within a timeout, the job, its output
//! streamed to a sink, the job's end (or a cancel, a kill, a deadline), the
//! guest's power-off within a timeout, and a teardown on every path.
//!
//! [`Launcher::run`] goes through it in phases, the methods of a private
//! `VmLife`: prepare (directory, CID, scratch disk, network), boot (the
//! backend), hand over (Hello, the Job), supervise (output, deadline, stop
//! signal, the VMM's exit) and finish (teardown, the [`VmReport`]). Its
//! doc comment names the phase that makes each resource.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::{ExitStatus, GuestError, Job, RunnerExited, WallClock};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::backend::{Backend, BackendError, RunningVm, VmmExit};
use super::cid::{CidAllocator, CidError, CidLease, DEFAULT_RANGE};
use super::console;
use super::dirs::{DirsError, RuntimeDirs};
use super::guard::{Live, TeardownError, VmGuard};
use super::output::OutputSink;
use super::owner::{OwnerError, VmOwner};
use super::request::{RequestError, VmRequest};
use super::stop::{StopLevel, StopSignal};
use super::timing::{Marks, Timing};
use crate::conversation::{
    self, Canceller, Conversation, ConversationError, Event, Limits, Summary,
};
use crate::disk::{self, ScratchError};
use crate::logs::events;
use crate::net::{NetError, NetRequest, Network};
use crate::vmm::{NetAttach, VmSpec};

/// How long the guest may take, once its VMM has exited, to deliver what it
/// sent before powering off (it is already in the socket's buffers).
const DRAIN: Duration = Duration::from_secs(3);
/// How long a closed channel waits for the VMM's exit, to blame the right one.
const CLOSED_VMM_GRACE: Duration = Duration::from_secs(1);

/// Starts VMs on this host: the backend, the directories, the CIDs.
#[derive(Debug, Clone)]
pub struct Launcher {
    backend: Backend,
    dirs: RuntimeDirs,
    cids: CidAllocator,
    /// Room on the disk directory's filesystem for the scratch disks.
    disk_budget: disk::budget::Budget,
    /// VMs' networks; `None`: VMs cannot have one.
    network: Option<Arc<Network>>,
}

/// Milestones of a run, for callers that watch (tests, progress displays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Prepared { id: String, dir: PathBuf, cid: u32 },
    VmmStarted { pid: Option<u32> },
    Hello,
    JobSent,
    RunnerStarted { pid: u32 },
    JobEnded,
}

/// How the job ended, as the guest reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Exited(RunnerExited),
    /// The guest could not run the job (bad command, setup failure).
    GuestError(GuestError),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Dirs(#[from] DirsError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Cid(#[from] CidError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    NoDiskSpace(#[from] disk::budget::BudgetError),
    #[error("the VM's network: {0}")]
    Network(#[from] NetError),
    #[error("the job asks for a network, but this launcher has none (start it with Launcher::with_network)")]
    NoNetwork,
    #[error("starting the VM: {0}")]
    Backend(#[from] BackendError),
    #[error("the VMM exited ({status}) before the guest said Hello")]
    VmmExitedBeforeHello { status: String },
    #[error("the VMM exited ({status}) before the guest reported the job's end")]
    VmmExitedDuringJob { status: String },
    #[error(transparent)]
    Conversation(#[from] ConversationError),
    #[error("stopped before the job was sent")]
    StoppedBeforeJob,
    #[error("killed on request")]
    Killed,
    #[error("the guest did not report the job's end within {after:?} of the cancel")]
    CancelTimeout { after: Duration },
    #[error("a background task failed: {0}")]
    Task(String),
}

/// Everything about one run. Always produced, whatever failed.
#[derive(Debug)]
pub struct VmReport {
    /// `None` when the run failed before a VM id was given out.
    pub id: Option<String>,
    pub backend: &'static str,
    /// The backend's detail (QEMU: the accelerator).
    pub detail: String,
    pub cid: Option<u32>,
    pub result: Result<JobEnd, RunError>,
    /// The highest stop level the run saw.
    pub stop: StopLevel,
    /// The conversation: the guest's boot stamps, the runner, byte counts.
    pub summary: Option<Summary>,
    pub timing: Timing,
    pub vmm_exit: Option<VmmExit>,
    /// The end of the serial console log, for diagnosing failures.
    pub console_tail: String,
    pub teardown: Result<(), TeardownError>,
}

impl VmReport {
    /// The job's exit status, when the guest reported one.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match &self.result {
            Ok(JobEnd::Exited(e)) => Some(e.status),
            _ => None,
        }
    }
}

/// What the run learned, kept for the report whatever it returns.
#[derive(Default)]
struct RunState {
    id: Option<String>,
    cid: Option<u32>,
    detail: String,
    stop: StopLevel,
    summary: Option<Summary>,
}

type Notify = Option<UnboundedSender<Progress>>;

fn notify(n: &Notify, p: Progress) {
    if let Some(tx) = n {
        // A watcher that went away does not stop the VM.
        let _ = tx.send(p);
    }
}

impl Launcher {
    pub fn new(backend: Backend, dirs: RuntimeDirs) -> Result<Self, CidError> {
        let cids = CidAllocator::new(dirs.cids(), DEFAULT_RANGE)?;
        Ok(Launcher {
            backend,
            dirs,
            cids,
            disk_budget: disk::budget::Budget::default(),
            network: None,
        })
    }

    /// Lets this launcher's VMs have a network (requests with `network` set).
    pub fn with_network(mut self, network: Arc<Network>) -> Self {
        self.network = Some(network);
        self
    }

    pub fn network(&self) -> Option<&Arc<Network>> {
        self.network.as_ref()
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn dirs(&self) -> &RuntimeDirs {
        &self.dirs
    }

    /// Runs one job in one fresh VM and tears the VM down, whatever happens.
    /// `stop` cancels (then kills) it; `progress` hears each milestone.
    pub async fn run<S: OutputSink>(
        &self,
        req: VmRequest,
        sink: &mut S,
        mut stop: StopSignal,
        progress: Option<UnboundedSender<Progress>>,
    ) -> VmReport {
        let mut life = VmLife::new(self, &req, progress);
        let result = life.live_through(sink, &mut stop).await;
        life.finish(result, &stop).await
    }

    /// The scratch disk `req` asks for, made from a template at its path
    /// under the disk directory, its room held on `guard` first.
    async fn make_scratch(
        &self,
        req: &VmRequest,
        guard: &mut VmGuard,
    ) -> Result<Option<PathBuf>, RunError> {
        let Some(bytes) = req.scratch_bytes else {
            return Ok(None);
        };
        let path = self.dirs.scratch_path(&guard.id)?;
        guard.scratch_room = Some(self.disk_budget.hold(&self.dirs.disks, &path, bytes)?);
        let p = path.clone();
        let skeleton = req.boot.scratch_skeleton.clone();
        let templates = disk::Templates::new(self.dirs.templates());
        let made =
            tokio::task::spawn_blocking(move || templates.create(&p, bytes, skeleton.as_deref()))
                .await
                .map_err(|e| RunError::Task(e.to_string()))??;
        tracing::debug!(vm = %guard.id, how = ?made, "scratch disk made");
        guard.scratch = Some(path.clone());
        Ok(Some(path))
    }

    /// Attaches the VM to its network (held on `guard`): the tap goes into
    /// `spec`, the guest's addresses and resolvers into `job`.
    async fn attach_network(
        &self,
        net_req: &NetRequest,
        guard: &mut VmGuard,
        spec: &mut VmSpec,
        job: &mut Job,
    ) -> Result<(), RunError> {
        let network = self.network.as_ref().ok_or(RunError::NoNetwork)?;
        let vm_net = network.attach(&guard.id, net_req).await?;
        spec.net = Some(NetAttach {
            netns: vm_net
                .netns_path()
                .map(ToOwned::to_owned)
                .unwrap_or_default(),
            tap: vm_net.tap().to_owned(),
        });
        job.network = Some(vm_net.guest_config().clone());
        job.dns = vm_net.dns().to_vec();
        tracing::debug!(vm = %guard.id, net = ?vm_net.guest_config(), "VM network attached");
        guard.net = Some((network.clone(), vm_net));
        Ok(())
    }

    /// The kernel command line's additions: the modules the guest needs
    /// for `spec`'s devices, `kiln.debug` with an attached console, then
    /// the request's own.
    fn add_kernel_args(&self, req: &VmRequest, spec: &mut VmSpec) {
        let modules = req.boot.modules.select(&self.backend.guest_modules(spec));
        if !modules.is_empty() {
            spec.kernel_args
                .push(format!("kiln.modules={}", modules.join(",")));
        }
        if req.console == super::ConsoleMode::Attach {
            spec.kernel_args.push("kiln.debug".into());
        }
        spec.kernel_args.extend(req.kernel_args.iter().cloned());
    }
}

/// One VM's life, phase by phase. [`Launcher::run`] makes one, runs
/// [`VmLife::live_through`] (prepare, boot, hand over, supervise) and
/// then [`VmLife::finish`], whatever the phases returned.
///
/// Where each resource is made, and so where a journal would hook in:
///
/// - [`VmLife::prepare`]: the VM's id and directory
///   ([`VmOwner::claim_new`]: the owner lock first) and with them `guard`, which owns
///   everything made after; the CID lease; the scratch disk's room and
///   file; the VM's network (namespace, tap, addresses, policy elements).
/// - [`VmLife::boot`]: the VMM's processes and the listener the guest
///   dials ([`Live`], on `guard`), and the console follower.
/// - [`VmLife::hand_over`]: the conversation (the guest's Hello, the Job).
/// - [`VmLife::supervise`]: nothing; it records the stop level and the
///   conversation's summary.
/// - [`VmLife::finish`]: removes all of it ([`VmGuard::teardown`]).
///
/// Everything made is on `guard` as soon as it exists: dropping a
/// `VmLife` in any phase (the run's future dropped) removes it in the
/// guard's `Drop`.
struct VmLife<'a> {
    launcher: &'a Launcher,
    req: &'a VmRequest,
    progress: Notify,
    marks: Marks,
    /// `None` until `prepare` made the VM's directory.
    guard: Option<VmGuard>,
    st: RunState,
}

impl<'a> VmLife<'a> {
    fn new(launcher: &'a Launcher, req: &'a VmRequest, progress: Notify) -> Self {
        VmLife {
            launcher,
            req,
            progress,
            marks: Marks::new(),
            guard: None,
            st: RunState::default(),
        }
    }

    /// The phases in order, up to the job's end or the first failure.
    async fn live_through<S: OutputSink>(
        &mut self,
        sink: &mut S,
        stop: &mut StopSignal,
    ) -> Result<JobEnd, RunError> {
        self.req.check()?;
        let (spec, job) = self.prepare().await?;
        self.boot(&spec, stop).await?;
        let conv = self.hand_over(job, stop).await?;
        self.supervise(conv, sink, stop).await
    }

    /// Directory, CID, scratch disk, network: the VM's spec and the job
    /// to send, completed with the guest's network.
    async fn prepare(&mut self) -> Result<(VmSpec, Job), RunError> {
        let (launcher, req) = (self.launcher, self.req);
        // Claimed before anything of the VM exists (see `owner`).
        let (owner, dir) = VmOwner::claim_new(&launcher.dirs)?;
        let id = owner.id().to_owned();
        self.st.id = Some(id.clone());
        let guard = self.guard.insert(VmGuard::new(owner, dir.clone()));
        let lease: CidLease = launcher.cids.lease()?;
        let cid = lease.cid();
        self.st.cid = Some(cid);
        guard.cid = Some(lease);
        let scratch = launcher.make_scratch(req, guard).await?;
        let mut spec = VmSpec {
            id: id.clone(),
            dir: dir.clone(),
            kernel: req.boot.kernel.clone(),
            arch: req.boot.arch,
            initrd: req.boot.initrd.clone(),
            base_image: req.boot.base_image.clone(),
            scratch_disk: scratch,
            kernel_args: Vec::new(),
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            guest_cid: cid,
            net: None,
            console_limit_bytes: req.console_limit_bytes,
        };
        let mut job = req.job.clone();
        if let Some(net_req) = &req.network {
            launcher
                .attach_network(net_req, guard, &mut spec, &mut job)
                .await?;
        }
        launcher.add_kernel_args(req, &mut spec);
        self.marks.prepared = Some(Instant::now());
        tracing::info!(event = %events::VM_STARTING, vm = %id, cid, backend = launcher.backend.name(), dir = %dir.display(), "starting VM");
        notify(&self.progress, Progress::Prepared { id, dir, cid });
        Ok((spec, job))
    }

    /// Starts the backend (unless stopped first) and puts the running VM
    /// and its listener on the guard.
    async fn boot(&mut self, spec: &VmSpec, stop: &mut StopSignal) -> Result<(), RunError> {
        let req = self.req;
        let guard = self.guard.as_mut().ok_or(RunError::StoppedBeforeJob)?;
        let started = tokio::select! {
            r = self.launcher.backend.start(spec, req.console) => r?,
            _ = stop.above(StopLevel::Run) => return Err(RunError::StoppedBeforeJob),
        };
        self.marks.vmm_started = Some(Instant::now());
        self.st.detail = started.vm.detail();
        notify(
            &self.progress,
            Progress::VmmStarted {
                pid: started.vm.pid(),
            },
        );
        if req.console == super::ConsoleMode::Attach {
            if let RunningVm::Firecracker(vm) = &started.vm {
                guard.follower = Some(console::follow(
                    vm.console_log_path().to_owned(),
                    tokio::io::stdout(),
                ));
            }
        }
        guard.live = Some(Live {
            vm: started.vm,
            listener: started.listener,
        });
        Ok(())
    }

    /// The guest's Hello (within the boot and Hello timeouts), then the
    /// job, its clock set now.
    async fn hand_over(
        &mut self,
        mut job: Job,
        stop: &mut StopSignal,
    ) -> Result<Conversation, RunError> {
        let limits = self.limits();
        let (live, _, _) = self.booted()?;
        let greeting = tokio::select! {
            r = conversation::greet(&live.listener, &limits) => r?,
            s = live.vm.exited() => {
                return Err(RunError::VmmExitedBeforeHello { status: status_text(s) })
            }
            _ = stop.above(StopLevel::Run) => return Err(RunError::StoppedBeforeJob),
        };
        notify(&self.progress, Progress::Hello);
        // The guest sets its clock from the job: the time of sending, not
        // of the request (the boot took a while).
        job.clock = WallClock::now();
        let conv = greeting.send_job(&job, limits).await?;
        notify(&self.progress, Progress::JobSent);
        Ok(conv)
    }

    /// The conversation's limits from the request's timeouts and cap.
    fn limits(&self) -> Limits {
        let t = &self.req.timeouts;
        Limits {
            accept_timeout: t.boot,
            hello_timeout: t.hello,
            write_timeout: t.write,
            end_slack: t.end_slack,
            max_output_bytes: self.req.max_output_bytes.unwrap_or(u64::MAX),
            ..Limits::default()
        }
    }

    /// The job's run: output to `sink`, runner events, the stop signal
    /// (cancel, then kill), the cancel deadline and the VMM's exit, up to
    /// the job's end. Records the conversation's summary either way.
    async fn supervise<S: OutputSink>(
        &mut self,
        mut conv: Conversation,
        sink: &mut S,
        stop: &mut StopSignal,
    ) -> Result<JobEnd, RunError> {
        let req = self.req;
        let t = &req.timeouts;
        let (live, st, progress) = self.booted()?;
        let canceller = conv.canceller();
        let mut level = StopLevel::Run;
        let mut cancel_by: Option<Instant> = None;
        let mut out = Output::new(sink);
        let ended = loop {
            tokio::select! {
                ev = conv.next_event() => match ev {
                    Ok(Some(Event::Output(o))) => out.write(o).await,
                    Ok(Some(Event::RunnerStarted(r))) => {
                        notify(progress, Progress::RunnerStarted { pid: r.pid });
                    }
                    Ok(Some(Event::RunnerExited(e))) => break Ok(JobEnd::Exited(e)),
                    Ok(Some(Event::GuestError(e))) => break Ok(JobEnd::GuestError(e)),
                    Ok(None) => break Err(ConversationError::Closed.into()),
                    Err(ConversationError::Closed) => break Err(closed(&mut live.vm).await),
                    Err(e) => break Err(e.into()),
                },
                s = live.vm.exited() => {
                    // What the guest sent before powering off may still be
                    // in flight.
                    break match drain(&mut conv, &mut out).await {
                        Some(end) => Ok(end),
                        None => Err(RunError::VmmExitedDuringJob { status: status_text(s) }),
                    };
                }
                l = stop.above(level) => {
                    level = l;
                    st.stop = l;
                    match l {
                        StopLevel::Cancel => {
                            cancel_by = Some(cancel(&canceller, req, st.id.as_deref()).await);
                        }
                        StopLevel::Kill => break Err(RunError::Killed),
                        StopLevel::Run => {}
                    }
                }
                _ = sleep_until(cancel_by) => {
                    break Err(RunError::CancelTimeout { after: req.cancel_grace + t.cancel_slack });
                }
            }
        };
        st.summary = Some(conv.summary().clone());
        if ended.is_ok() {
            notify(progress, Progress::JobEnded);
        }
        ended
    }

    /// The running VM `boot` put on the guard, with the run's record and
    /// the progress watcher beside it. The phases run in order, so `boot`
    /// always has: were it not, no job was sent, and the run says so.
    fn booted(&mut self) -> Result<(&mut Live, &mut RunState, &Notify), RunError> {
        let live = self.guard.as_mut().and_then(|g| g.live.as_mut());
        let live = live.ok_or(RunError::StoppedBeforeJob)?;
        Ok((live, &mut self.st, &self.progress))
    }

    /// Teardown, whatever `result` is: after the job's end the guest may
    /// power off by itself (within the exit timeout), after anything else
    /// the VMM is killed. Then the report.
    async fn finish(mut self, result: Result<JobEnd, RunError>, stop: &StopSignal) -> VmReport {
        self.st.stop = self.st.stop.max(stop.level());
        if let Err(e) = &result {
            // The report carries the error to the caller, who decides how
            // loud it is.
            tracing::info!(vm = self.st.id.as_deref(), error = %e, "VM run failed; tearing down");
        }
        let mut vmm_exit = None;
        let mut console_tail = String::new();
        let mut teardown = Ok(());
        if let Some(guard) = self.guard.take() {
            // After the job's end the guest powers off by itself; after
            // anything else there is nothing to wait for.
            let wait = result.is_ok().then_some(self.req.timeouts.exit);
            let id = guard.id.clone();
            let torn = guard.teardown(wait).await;
            self.marks.vmm_exited = torn.vmm_exited;
            vmm_exit = torn.vmm_exit;
            console_tail = torn.console_tail;
            if !torn.problems.is_empty() {
                teardown = Err(TeardownError {
                    id,
                    problems: torn.problems,
                });
            }
        }
        self.marks.done = Some(Instant::now());
        let st = self.st;
        let timing = Timing::compute(&self.marks, st.summary.as_ref());
        tracing::info!(event = %events::VM_DONE, vm = st.id.as_deref(), timing = %timing.render(), "VM done");
        VmReport {
            id: st.id,
            backend: self.launcher.backend.name(),
            detail: st.detail,
            cid: st.cid,
            result,
            stop: st.stop,
            summary: st.summary,
            timing,
            vmm_exit,
            console_tail,
            teardown,
        }
    }
}

/// The sink, and whether it still takes output.
struct Output<'a, S> {
    sink: &'a mut S,
    broken: bool,
}

impl<'a, S: OutputSink> Output<'a, S> {
    fn new(sink: &'a mut S) -> Self {
        Output {
            sink,
            broken: false,
        }
    }

    async fn write(&mut self, o: kiln_protocol::Output) {
        if self.broken {
            return;
        }
        if let Err(e) = self.sink.write(o.stream, &o.data).await {
            // E.g. `kiln run ... | head`: the job goes on, its output is dropped.
            tracing::warn!(error = %e, "the job's output sink failed; dropping further output");
            self.broken = true;
        }
    }
}

/// The channel closed during the job. Usually the VMM going away closed
/// it: say so when it did.
async fn closed(vm: &mut RunningVm) -> RunError {
    match tokio::time::timeout(CLOSED_VMM_GRACE, vm.exited()).await {
        Ok(s) => RunError::VmmExitedDuringJob {
            status: status_text(s),
        },
        Err(_) => ConversationError::Closed.into(),
    }
}

/// Sends the guest Cancel with the request's grace; returns by when the
/// job's end must have come.
async fn cancel(canceller: &Canceller, req: &VmRequest, vm: Option<&str>) -> Instant {
    tracing::info!(vm, grace = ?req.cancel_grace, "cancelling the job");
    if let Err(e) = canceller.cancel(req.cancel_grace).await {
        tracing::warn!(vm, error = %e, "sending Cancel failed");
    }
    Instant::now() + req.cancel_grace + req.timeouts.cancel_slack
}

/// Reads what the guest sent before its VMM exited, up to its last event.
async fn drain<S: OutputSink>(conv: &mut Conversation, out: &mut Output<'_, S>) -> Option<JobEnd> {
    let read = async {
        loop {
            match conv.next_event().await {
                Ok(Some(Event::Output(o))) => out.write(o).await,
                Ok(Some(Event::RunnerStarted(_))) => {}
                Ok(Some(Event::RunnerExited(e))) => return Some(JobEnd::Exited(e)),
                Ok(Some(Event::GuestError(e))) => return Some(JobEnd::GuestError(e)),
                Ok(None) | Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(DRAIN, read).await.ok().flatten()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn status_text(s: Result<std::process::ExitStatus, BackendError>) -> String {
    match s {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon runs many VMs on a multi-threaded runtime: the run must be
    /// a `Send` future. Checked at compile time.
    #[allow(dead_code)]
    fn run_is_send(launcher: &Launcher, req: VmRequest) {
        fn send<T: Send>(_: T) {}
        send(launcher.run(
            req,
            &mut super::super::CollectSink::default(),
            StopSignal::never(),
            None,
        ));
    }
}
