//! The one place that calls waitpid: every zombie is PID 1's to reap, and
//! the runner's status is taken when its pid comes up, so no other wait
//! can steal it.

use kiln_protocol::ExitStatus;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// The watched process's status, if it was among the reaped.
    pub watched: Option<ExitStatus>,
    /// How many processes were reaped.
    pub count: usize,
    /// False once no child at all is left (so no process but PID 1).
    pub children_left: bool,
}

/// Reaps every exited child without blocking.
pub fn reap(watch: Option<Pid>) -> Reaped {
    let mut r = Reaped {
        children_left: true,
        ..Reaped::default()
    };
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => {
                // ECHILD: nobody is left.
                r.children_left = false;
                break;
            }
        };
        r.count += 1;
        if Some(pid) == watch {
            r.watched = Some(status);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The only test that creates child processes: `reap(-1)` takes them all.
    #[allow(clippy::zombie_processes)] // reap() is what waits for them
    #[test]
    fn reaps_orphans_and_keeps_the_watched_status() {
        // Orphans come back to this test process as if it were PID 1.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes integer arguments only (no
        // pointer for the kernel to read or write) and changes nothing in
        // this process's memory: it only makes orphaned descendants its
        // children.
        let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(subreaper, 0);
        let reap_until_none = |watch: Pid| -> (Option<ExitStatus>, usize) {
            let (mut status, mut count) = (None, 0);
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                let r = reap(Some(watch));
                count += r.count;
                status = status.or(r.watched);
                if !r.children_left {
                    return (status, count);
                }
                assert!(Instant::now() < until, "children never all exited");
                std::thread::sleep(Duration::from_millis(20));
            }
        };

        let killed = std::process::Command::new("/bin/sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .expect("spawn sh");
        let (status, count) = reap_until_none(Pid::from_raw(killed.id() as i32));
        assert_eq!(status, Some(ExitStatus::Signal(9)));
        assert_eq!(count, 1);

        let child = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "for i in 1 2 3 4 5; do (sleep 0.2; exit 0) & done; exit 3",
            ])
            .spawn()
            .expect("spawn sh");
        let (status, count) = reap_until_none(Pid::from_raw(child.id() as i32));
        assert_eq!(status, Some(ExitStatus::Code(3)));
        assert_eq!(count, 6, "sh and its 5 orphans");
    }
}
