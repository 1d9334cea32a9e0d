//! `vhost-device-vsock`: the vhost-user daemon that gives a QEMU guest a
//! vsock device with Firecracker's hybrid-vsock Unix socket on the host side.
//! One daemon per VM, started before QEMU (QEMU connects to its socket at
//! start) and killed after QEMU has exited.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::confine::Confined;
use super::{tail, QemuError};

/// How much of the daemon's output is kept for error messages.
const STDERR_TAIL: usize = 8 * 1024;

pub struct VhostVsock {
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl VhostVsock {
    /// Starts the daemon and waits until its vhost-user socket exists.
    /// Confined, it runs as the VM's uid in the VM's directory and cgroup.
    pub(super) async fn start(
        binary: &Path,
        guest_cid: u32,
        socket: &Path,
        uds_path: &Path,
        timeout: Duration,
        confined: Option<&Confined>,
    ) -> Result<VhostVsock, QemuError> {
        let vm_arg = match confined {
            Some(c) => vm_arg(guest_cid, &c.local(socket), &c.local(uds_path))?,
            None => vm_arg(guest_cid, socket, uds_path)?,
        };
        let mut command = Command::new(binary);
        crate::vmm::bare_environment(&mut command);
        if let Some(c) = confined {
            c.apply(&mut command, false);
        }
        let mut child = command
            .arg("--vm")
            .arg(&vm_arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // A Ctrl-C at the shim's terminal is the shim's to handle.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                what: "vhost-device-vsock",
                binary: binary.to_owned(),
                source,
            })?;
        let stderr = child.stderr.take().map(|e| tail::spawn(e, STDERR_TAIL));
        let mut daemon = VhostVsock { child, stderr };
        let deadline = Instant::now() + timeout;
        loop {
            if socket.exists() {
                tracing::debug!(socket = %socket.display(), guest_cid, "vhost-device-vsock ready");
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait().map_err(|source| QemuError::Wait {
                what: "vhost-device-vsock",
                source,
            })? {
                let stderr = daemon.stderr_tail().await;
                return Err(QemuError::VhostExited {
                    socket: socket.to_owned(),
                    status: status.to_string(),
                    stderr,
                });
            }
            if Instant::now() >= deadline {
                daemon.stop().await;
                return Err(QemuError::VhostTimeout {
                    socket: socket.to_owned(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the daemon (it has nothing to flush) and reaps it; returns the
    /// end of what it printed.
    pub async fn stop(&mut self) -> String {
        if let Err(e) = self.child.start_kill() {
            // Already reaped, or gone: either way nothing is left to kill.
            tracing::debug!(error = %e, "vhost-device-vsock already gone");
        }
        if let Err(e) = self.child.wait().await {
            tracing::warn!(error = %e, "could not reap vhost-device-vsock");
        }
        self.stderr_tail().await
    }

    async fn stderr_tail(&mut self) -> String {
        match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        }
    }
}

/// `guest-cid=N,socket=S,uds-path=U`. The daemon splits on commas and has
/// no escape for them, so a path holding one is refused.
fn vm_arg(guest_cid: u32, socket: &Path, uds_path: &Path) -> Result<String, QemuError> {
    let s = plain_path(socket)?;
    let u = plain_path(uds_path)?;
    Ok(format!("guest-cid={guest_cid},socket={s},uds-path={u}"))
}

fn plain_path(p: &Path) -> Result<&str, QemuError> {
    match p.to_str() {
        Some(s) if !s.contains(',') && !s.contains('=') => Ok(s),
        _ => Err(QemuError::UnusablePath {
            path: PathBuf::from(p),
            why: "vhost-device-vsock needs UTF-8 paths without ',' or '='",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_argument_format() {
        let a = vm_arg(7, Path::new("/t/vm/vhost.sock"), Path::new("/t/vm/v.sock")).expect("arg");
        assert_eq!(
            a,
            "guest-cid=7,socket=/t/vm/vhost.sock,uds-path=/t/vm/v.sock"
        );
        let err = vm_arg(7, Path::new("/t/a,b"), Path::new("/t/v.sock")).expect_err("comma");
        assert!(err.to_string().contains("/t/a,b"), "{err}");
    }

    fn fake_daemon(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.join("fake-vhost");
        std::fs::write(&fake, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        fake
    }

    #[tokio::test]
    async fn a_daemon_that_dies_early_is_reported_with_its_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = fake_daemon(dir.path(), "echo 'bad guest cid' >&2; exit 3");
        let err = VhostVsock::start(
            &fake,
            3,
            &dir.path().join("vhost.sock"),
            &dir.path().join("v.sock"),
            Duration::from_secs(5),
            None,
        )
        .await
        .err()
        .expect("must fail");
        let msg = err.to_string();
        assert!(msg.contains("bad guest cid") && msg.contains("3"), "{msg}");
    }

    #[tokio::test]
    async fn a_daemon_that_never_listens_times_out_and_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = fake_daemon(dir.path(), "exec sleep 30");
        let err = VhostVsock::start(
            &fake,
            3,
            &dir.path().join("vhost.sock"),
            &dir.path().join("v.sock"),
            Duration::from_millis(100),
            None,
        )
        .await
        .err()
        .expect("must time out");
        assert!(matches!(err, QemuError::VhostTimeout { .. }), "{err}");
    }
}
