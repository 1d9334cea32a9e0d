//! One Firecracker VM's life: jail, jailer, configuration over the API,
//! `InstanceStart`, exit, and a teardown that removes everything, also when
//! any step failed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::api::ApiClient;
use super::console::{copy_to_end, copy_until_stopped, BoundedLog};
use super::jailer::{cgroup_dir, jailer_args, JailLayout};
use super::models::{ActionType, ApiRequest, InstanceActionInfo};
use super::{config, resources, FirecrackerError, FirecrackerSettings};
use crate::vmm::uid_pool::{UidLease, UidPool};
use crate::vmm::VmSpec;
use crate::vsock::HybridListener;

/// The serial console, in the VM's directory.
pub const CONSOLE_LOG: &str = "console.log";
/// Firecracker's own log and stderr (the jailer's errors land here too).
pub const VMM_LOG: &str = "firecracker.log";

/// How long the copies of Firecracker's output may take to finish once it
/// is gone (they end at end of file; this bounds a stuck write).
const COPY_GRACE: Duration = Duration::from_secs(2);
/// How much of the end of Firecracker's log (with the jailer's stderr) an
/// error carries.
const SAID_BYTES: u64 = 2048;
/// How often teardown retries removing a cgroup whose processes are dying.
const CGROUP_RMDIR_TRIES: u32 = 100;
const CGROUP_RMDIR_PAUSE: Duration = Duration::from_millis(20);

/// How long starting took, for timing summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartTimings {
    /// From preparing the jail until the jailer was spawned.
    pub jail_ready: Duration,
    /// From spawning the jailer until Firecracker's API socket answered.
    pub api_ready: Duration,
    /// From spawning the jailer until `InstanceStart` was acknowledged.
    pub instance_started: Duration,
}

/// A started VM. Call [`FirecrackerVm::teardown`] when done; dropping it
/// without does a best-effort cleanup and logs a warning.
#[derive(Debug)]
pub struct FirecrackerVm {
    id: String,
    layout: JailLayout,
    cgroup_dir: PathBuf,
    vsock_uds: PathBuf,
    guest_listener: Option<HybridListener>,
    guest_listener_path: PathBuf,
    console_log: PathBuf,
    vmm_log: PathBuf,
    api: ApiClient,
    child: Option<Child>,
    pid: Option<u32>,
    exit: Option<ExitStatus>,
    copies: Vec<JoinHandle<()>>,
    log_fifo_stop: Option<oneshot::Sender<()>>,
    kill_timeout: Duration,
    lease: Option<UidLease>,
    /// The Firecracker binary's file name: names the jail and the pid file.
    exec_name: String,
    timings: StartTimings,
    torn_down: bool,
}

/// Boots `spec` through the jailer. On any error everything made so far is
/// removed before the error is returned.
pub(crate) async fn start(
    settings: &FirecrackerSettings,
    exec_name: &str,
    uids: &UidPool,
    spec: &VmSpec,
) -> Result<FirecrackerVm, FirecrackerError> {
    spec.validate()?;
    let layout = JailLayout::new(&settings.chroot_base, exec_name, &spec.id);
    let cgroup = cgroup_dir(settings, &spec.id);
    resources::check_socket_path(&layout.api_socket())?;
    if cgroup.exists() {
        // Someone else's: never adopt (or later remove) it.
        return Err(FirecrackerError::AlreadyExists {
            path: cgroup,
            id: spec.id.clone(),
        });
    }
    std::fs::create_dir_all(&spec.dir).map_err(|source| FirecrackerError::Io {
        action: "creating the VM directory",
        path: spec.dir.clone(),
        source,
    })?;
    let lease = uids.acquire()?;
    resources::create_jail(&layout, &spec.id)?;
    // From here on the jail is ours, and the VM value cleans it up.
    let mut vm = FirecrackerVm {
        id: spec.id.clone(),
        vsock_uds: layout.host_path(config::VSOCK_UDS),
        guest_listener: None,
        guest_listener_path: resources::guest_listener_path(&layout, kiln_protocol::VSOCK_PORT),
        console_log: spec.dir.join(CONSOLE_LOG),
        vmm_log: spec.dir.join(VMM_LOG),
        api: ApiClient::new(layout.api_socket(), settings.api_request_timeout),
        layout,
        cgroup_dir: cgroup,
        child: None,
        pid: None,
        exit: None,
        copies: Vec::new(),
        log_fifo_stop: None,
        kill_timeout: settings.kill_timeout,
        lease: Some(lease),
        exec_name: exec_name.to_owned(),
        timings: StartTimings::default(),
        torn_down: false,
    };
    match vm.boot(settings, spec).await {
        Ok(()) => Ok(vm),
        Err(e) => {
            tracing::warn!(vm = %spec.id, error = %e, "Firecracker VM failed to start; tearing down");
            if let Err(t) = vm.cleanup().await {
                tracing::error!(vm = %spec.id, error = %t, "teardown after a failed start");
            }
            Err(e)
        }
    }
}

impl FirecrackerVm {
    async fn boot(
        &mut self,
        settings: &FirecrackerSettings,
        spec: &VmSpec,
    ) -> Result<(), FirecrackerError> {
        let (uid, gid) = self
            .lease
            .as_ref()
            .map(|l| (l.uid(), l.gid()))
            .ok_or(FirecrackerError::NoProcess)?;
        let preparing = Instant::now();
        let args = jailer_args(settings, spec, uid, gid)?;
        resources::place_files(&self.layout, spec, uid, gid)?;
        self.guest_listener = Some(resources::bind_guest_listener(
            &self.layout,
            kiln_protocol::VSOCK_PORT,
            uid,
            gid,
        )?);

        let log_err = |path: &Path| {
            let path = path.to_owned();
            move |source| FirecrackerError::Io {
                action: "creating the log",
                path,
                source,
            }
        };
        let vmm_log = BoundedLog::create(&self.vmm_log, settings.vmm_log_limit_bytes)
            .await
            .map_err(log_err(&self.vmm_log))?;
        let console = BoundedLog::create(&self.console_log, spec.console_limit_bytes)
            .await
            .map_err(log_err(&self.console_log))?;
        let fifo = resources::open_log_fifo(&self.layout, uid, gid)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        self.log_fifo_stop = Some(stop_tx);
        self.copies.push(tokio::spawn(copy_until_stopped(
            fifo,
            Arc::clone(&vmm_log),
            stop_rx,
        )));

        let mut command = Command::new(&settings.jailer);
        command
            .args(&args)
            // Nothing of the shim's environment (it may hold the runner's
            // JIT config) reaches the jailer or Firecracker.
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the shim's terminal is the
            // shim's to handle, with an orderly teardown.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| FirecrackerError::Spawn {
            path: settings.jailer.clone(),
            source,
        })?;
        let spawned = Instant::now();
        self.timings.jail_ready = spawned - preparing;
        self.pid = child.id();
        if let Some(stdout) = child.stdout.take() {
            self.copies.push(tokio::spawn(copy_to_end(stdout, console)));
        }
        if let Some(stderr) = child.stderr.take() {
            self.copies.push(tokio::spawn(copy_to_end(stderr, vmm_log)));
        }
        self.child = Some(child);
        tracing::info!(vm = %self.id, pid = ?self.pid, uid, jail = %self.layout.root().display(), "jailer started");

        self.wait_for_api(settings.api_socket_timeout).await?;
        self.timings.api_ready = spawned.elapsed();
        self.check_pid_file()?;
        for request in config::requests(spec) {
            self.api.send(&request).await?;
        }
        self.timings.instance_started = spawned.elapsed();
        tracing::info!(
            vm = %self.id,
            pid = ?self.pid,
            jail_ms = self.timings.jail_ready.as_millis() as u64,
            api_ms = self.timings.api_ready.as_millis() as u64,
            start_ms = self.timings.instance_started.as_millis() as u64,
            "Firecracker VM started"
        );
        Ok(())
    }

    /// Waits until the API socket accepts connections, or Firecracker exits,
    /// or `timeout` passes.
    async fn wait_for_api(&mut self, timeout: Duration) -> Result<(), FirecrackerError> {
        let deadline = Instant::now() + timeout;
        let socket = self.layout.api_socket();
        let mut pause = Duration::from_millis(2);
        loop {
            let pid = self.pid.unwrap_or(0);
            let child = self.child.as_mut().ok_or(FirecrackerError::NoProcess)?;
            if let Some(status) = child
                .try_wait()
                .map_err(|source| FirecrackerError::Wait { pid, source })?
            {
                self.exit = Some(status);
                // Gone: its output is complete once the copies end.
                for problem in self.finish_logs().await {
                    tracing::warn!(vm = %self.id, problem, "Firecracker's logs");
                }
                return Err(FirecrackerError::ExitedEarly {
                    status,
                    said: log_tail(&self.vmm_log, SAID_BYTES),
                });
            }
            if UnixStream::connect(&socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(FirecrackerError::ApiSocketTimeout {
                    path: socket,
                    after: timeout,
                    said: log_tail(&self.vmm_log, SAID_BYTES),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Stops the copy of Firecracker's log and waits (bounded) for the
    /// copies of its output to end; what went wrong, if anything.
    async fn finish_logs(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(stop) = self.log_fifo_stop.take() {
            // The copy may have ended already; then nobody listens.
            let _ = stop.send(());
        }
        for copy in self.copies.drain(..) {
            let abort = copy.abort_handle();
            if tokio::time::timeout(COPY_GRACE, copy).await.is_err() {
                abort.abort();
                problems.push("a log copy did not finish; aborted it".to_owned());
            }
        }
        problems
    }

    /// The jailer records Firecracker's pid in `firecracker.pid` in the
    /// jail (current versions always, older ones only with `--new-pid-ns`).
    /// Kiln waits for and kills the process it spawned, so the two must be
    /// the same process; a missing file (an older jailer) is fine. The file
    /// is in a directory the jailed uid owns, so it is read bounded and
    /// trusted no further than this comparison.
    fn check_pid_file(&self) -> Result<(), FirecrackerError> {
        use std::io::Read;
        let path = self.layout.host_path(&format!("{}.pid", self.exec_name));
        let mut text = String::new();
        match std::fs::File::open(&path) {
            Ok(f) => {
                if let Err(source) = f.take(32).read_to_string(&mut text) {
                    return Err(FirecrackerError::Io {
                        action: "reading",
                        path,
                        source,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(FirecrackerError::Io {
                    action: "opening",
                    path,
                    source,
                })
            }
        }
        let spawned = self.pid.unwrap_or(0);
        if text.trim().parse::<u32>().ok() == Some(spawned) {
            return Ok(());
        }
        Err(FirecrackerError::PidMismatch {
            path,
            recorded: text.trim().chars().filter(char::is_ascii_graphic).collect(),
            spawned,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Firecracker's pid on the host (the jailer `exec`s into it).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The uid and gid the VM runs as.
    pub fn uid(&self) -> Option<u32> {
        self.lease.as_ref().map(UidLease::uid)
    }

    /// The hybrid-vsock socket for host-to-guest connections (`CONNECT <port>`).
    pub fn vsock_uds_path(&self) -> &Path {
        &self.vsock_uds
    }

    /// Where the guest's connections to host port [`kiln_protocol::VSOCK_PORT`]
    /// arrive: `<vsock_uds_path>_1024`, bound before the VM started.
    pub fn guest_listener_path(&self) -> &Path {
        &self.guest_listener_path
    }

    /// The listener at [`Self::guest_listener_path`]; `None` once taken.
    pub fn take_guest_listener(&mut self) -> Option<HybridListener> {
        self.guest_listener.take()
    }

    /// The guest's serial console, at most `console_limit_bytes` of it.
    pub fn console_log_path(&self) -> &Path {
        &self.console_log
    }

    /// Firecracker's own log and stderr.
    pub fn vmm_log_path(&self) -> &Path {
        &self.vmm_log
    }

    pub fn jail_root(&self) -> &Path {
        self.layout.root()
    }

    pub fn cgroup_dir(&self) -> &Path {
        &self.cgroup_dir
    }

    pub fn start_timings(&self) -> StartTimings {
        self.timings
    }

    /// The exit status, if Firecracker has exited and been waited for.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Waits for Firecracker to exit (the guest rebooted, panicked, or the
    /// VM was killed). Cancel-safe: wrap it in a timeout and [`Self::kill`]
    /// when that expires.
    pub async fn wait(&mut self) -> Result<ExitStatus, FirecrackerError> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let pid = self.pid.unwrap_or(0);
        let child = self.child.as_mut().ok_or(FirecrackerError::NoProcess)?;
        let status = child
            .wait()
            .await
            .map_err(|source| FirecrackerError::Wait { pid, source })?;
        self.exit = Some(status);
        tracing::info!(vm = %self.id, pid, %status, "Firecracker exited");
        Ok(status)
    }

    /// Sends SIGKILL to Firecracker and waits (bounded) until it is gone.
    pub async fn kill(&mut self) -> Result<ExitStatus, FirecrackerError> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let pid = self.pid.unwrap_or(0);
        let child = self.child.as_mut().ok_or(FirecrackerError::NoProcess)?;
        child
            .start_kill()
            .map_err(|source| FirecrackerError::Wait { pid, source })?;
        tracing::info!(vm = %self.id, pid, "sent SIGKILL to Firecracker");
        let after = self.kill_timeout;
        tokio::time::timeout(after, self.wait())
            .await
            .map_err(|_| FirecrackerError::KillTimeout { pid, after })?
    }

    /// Asks the guest to stop gracefully (x86 only; needs the guest's i8042
    /// keyboard). Follow with a bounded [`Self::wait`] and [`Self::kill`].
    pub async fn send_ctrl_alt_del(&self) -> Result<(), FirecrackerError> {
        let request = ApiRequest::Action(InstanceActionInfo {
            action_type: ActionType::SendCtrlAltDel,
        });
        Ok(self.api.send(&request).await?)
    }

    /// Kills Firecracker if it still runs, then removes the jail directory
    /// and the cgroup and returns the uid. The VM's directory (with the
    /// console log) is left to the caller. Every step is tried even when
    /// one fails.
    pub async fn teardown(mut self) -> Result<(), FirecrackerError> {
        self.cleanup().await
    }

    async fn cleanup(&mut self) -> Result<(), FirecrackerError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems: Vec<String> = Vec::new();
        let mut process_gone = true;
        if self.child.is_some() && self.exit.is_none() {
            if let Err(e) = self.kill().await {
                process_gone = false;
                problems.push(e.to_string());
            }
        }
        self.child = None;
        self.guest_listener = None;
        problems.extend(self.finish_logs().await);
        if let Err(e) = remove_tree(self.layout.instance_dir()) {
            problems.push(e);
        }
        if let Err(e) = remove_cgroup(&self.cgroup_dir).await {
            problems.push(e);
        }
        match self.lease.take() {
            Some(lease) if !process_gone => {
                // A Firecracker that survived SIGKILL still runs as this uid:
                // never hand it to another VM.
                tracing::error!(vm = %self.id, uid = lease.uid(), "keeping the uid out of the pool");
                std::mem::forget(lease);
            }
            _ => {}
        }
        if problems.is_empty() {
            tracing::info!(vm = %self.id, "Firecracker VM torn down");
            Ok(())
        } else {
            Err(FirecrackerError::Teardown {
                id: self.id.clone(),
                problems: problems.join("; "),
            })
        }
    }
}

impl Drop for FirecrackerVm {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        tracing::warn!(vm = %self.id, "Firecracker VM dropped without teardown; cleaning up what can be cleaned now");
        if let Some(child) = self.child.as_mut() {
            if self.exit.is_none() {
                let _ = child.start_kill();
            }
        }
        if let Some(stop) = self.log_fifo_stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = remove_tree(self.layout.instance_dir()) {
            tracing::warn!(vm = %self.id, error = %e, "jail left behind");
        }
        // Firecracker may not have died yet; the cgroup then stays until the
        // start-up reconciliation removes it.
        if let Err(e) = kill_cgroup(&self.cgroup_dir) {
            tracing::debug!(vm = %self.id, error = %e, "cgroup.kill");
        }
        if let Err(e) = std::fs::remove_dir(&self.cgroup_dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(vm = %self.id, cgroup = %self.cgroup_dir.display(), error = %e, "cgroup left behind");
            }
        }
    }
}

fn remove_tree(path: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

/// Kills every process in the cgroup (Linux 5.14+). The file is opened,
/// never created: in a directory that is not a cgroup nothing happens.
fn kill_cgroup(dir: &Path) -> io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))?
        .write_all(b"1")
}

/// Removes the VM's cgroup. A cgroup can be removed only once its processes
/// are gone: when it is busy, `cgroup.kill` (Linux 5.14+) kills whatever is
/// left and the removal is retried for a while.
async fn remove_cgroup(dir: &Path) -> Result<(), String> {
    for attempt in 0..CGROUP_RMDIR_TRIES {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if attempt == 0 {
                    if let Err(e) = kill_cgroup(dir) {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cgroup.kill failed");
                    }
                }
                tokio::time::sleep(CGROUP_RMDIR_PAUSE).await;
            }
            Err(e) => return Err(format!("removing cgroup {}: {e}", dir.display())),
        }
    }
    Err(format!(
        "removing cgroup {}: still busy after killing its processes",
        dir.display()
    ))
}
/// The last `max` bytes of `path`, on one line: newlines become ` / `,
/// other control characters (escape sequences a jailed process could
/// write) `?`. "(nothing)" for an empty or unreadable file.
fn log_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        f.take(max).read_to_end(&mut bytes)
    });
    if let Err(e) = read {
        return format!("(nothing: reading {}: {e})", path.display());
    }
    let said = sanitise(&String::from_utf8_lossy(&bytes));
    if said.is_empty() {
        "(nothing)".to_owned()
    } else {
        said
    }
}

/// One line of printable text.
fn sanitise(text: &str) -> String {
    text.trim()
        .lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn a_log_tail_is_bounded_and_one_printable_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("firecracker.log");
        let mut text = "x".repeat(5000);
        text.push_str("\nController cpu is unavailable\x1b[2J\r\n");
        std::fs::write(&log, &text).unwrap();
        let said = log_tail(&log, 100);
        assert!(
            said.ends_with("x / Controller cpu is unavailable?[2J"),
            "{said}"
        );
        assert!(said.len() <= 100 + 3, "{}", said.len());
        assert!(!said.chars().any(char::is_control), "{said:?}");
        std::fs::write(&log, b"").unwrap();
        assert_eq!(log_tail(&log, 100), "(nothing)");
        assert!(log_tail(&dir.path().join("gone"), 100).starts_with("(nothing: reading"));
    }
}
