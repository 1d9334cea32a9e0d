//! The job's lifetime, on one thread: a poll() over the signalfd (SIGCHLD,
//! SIGINT, SIGTERM), the host channel, the job's stdout and stderr, and the
//! next timer (deadline or SIGKILL). Nothing here blocks for long.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use kiln_protocol::{
    ExitStatus, GuestError, GuestMessage, HostMessage, Job, Output, RunnerExited, StopCause,
    Stream, MAX_OUTPUT_CHUNK,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

use crate::channel::{Channel, Fill, Inbox};
use crate::console::{self, say};
use crate::error::{OrSys, SysError};
use crate::reaper;
use crate::runner::Runner;

/// How long the runner may take to die after SIGKILL before PID 1 gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// After the runner exits, how long to collect output still in the pipes.
const DRAIN_TIME: Duration = Duration::from_millis(200);

/// The signals PID 1 takes through the signalfd. Blocked from the first
/// instruction on; children get an empty mask from std's spawn.
pub fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

pub fn block_signals() -> Result<(), SysError> {
    signal_set()
        .thread_block()
        .or_sys(|| "block SIGCHLD, SIGINT and SIGTERM".into())
}

struct Pipe {
    stream: Stream,
    file: File,
}

struct Stop {
    cause: StopCause,
    kill_at: Instant,
    killed_at: Option<Instant>,
}

struct Supervisor<'a> {
    chan: &'a mut Channel,
    /// False once a write to the host failed.
    chan_ok: bool,
    /// False after EOF or a bad frame from the host.
    read_host: bool,
    inbox: Inbox,
    pipes: Vec<Pipe>,
    runner: Pid,
    status: Option<ExitStatus>,
    deadline: Instant,
    grace: Duration,
    stop: Option<Stop>,
    debug: bool,
}

/// Runs until the runner exits; returns what to report.
pub fn run(
    chan: &mut Channel,
    runner: Runner,
    job: &Job,
    received: Instant,
    debug: bool,
) -> Result<RunnerExited, SysError> {
    let sigfd = SignalFd::with_flags(
        &signal_set(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
    .or_sys(|| "create signalfd".into())?;
    let mut s = Supervisor {
        chan,
        chan_ok: true,
        read_host: true,
        inbox: Inbox::default(),
        pipes: vec![
            pipe(Stream::Stdout, runner.stdout),
            pipe(Stream::Stderr, runner.stderr),
        ],
        runner: runner.pid,
        status: None,
        deadline: received + Duration::from_millis(job.deadline_ms),
        grace: Duration::from_millis(job.grace_ms),
        stop: None,
        debug,
    };
    while s.status.is_none() {
        s.turn(&sigfd)?;
    }
    s.drain();
    let status = s.status.unwrap_or(ExitStatus::Code(-1));
    Ok(RunnerExited {
        status,
        duration_ms: u64::try_from(runner.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        stopped_by: s.stop.map(|st| st.cause),
    })
}

/// One read of at most [`MAX_OUTPUT_CHUNK`] bytes: one `Output` frame.
/// `None` at EOF (or on an error, which ends the stream the same way).
fn read_chunk(file: &mut File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
    loop {
        match file.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
}

fn pipe(stream: Stream, fd: OwnedFd) -> Pipe {
    Pipe {
        stream,
        file: File::from(fd),
    }
}

impl Supervisor<'_> {
    /// One poll() and what it reported.
    fn turn(&mut self, sigfd: &SignalFd) -> Result<(), SysError> {
        let timeout = self
            .next_timer()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let (sig_ready, host_ready, pipes_ready) = {
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            if self.read_host {
                fds.push(PollFd::new(self.chan.fd(), PollFlags::POLLIN));
            }
            for p in &self.pipes {
                fds.push(PollFd::new(p.file.as_fd(), PollFlags::POLLIN));
            }
            let t = match timeout {
                // Round up so a timer is never polled early in a busy loop.
                Some(d) => {
                    PollTimeout::try_from(d.as_millis().saturating_add(1).min(60_000) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            match poll(&mut fds, t) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e).or_sys(|| "poll".into()),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let sig = ready(&fds[0]);
            let mut i = 1;
            let host = if self.read_host {
                i += 1;
                ready(&fds[1])
            } else {
                false
            };
            let pipes: Vec<bool> = fds[i..].iter().map(ready).collect();
            (sig, host, pipes)
        };
        // Output first: what the job printed precedes its exit.
        for (i, ready) in pipes_ready.iter().enumerate().rev() {
            if *ready {
                self.forward(i);
            }
        }
        if sig_ready {
            self.signals(sigfd);
        }
        if host_ready {
            self.host();
        }
        self.timers()
    }

    fn next_timer(&self) -> Option<Instant> {
        match &self.stop {
            None => Some(self.deadline),
            Some(Stop {
                killed_at: None,
                kill_at,
                ..
            }) => Some(*kill_at),
            Some(Stop {
                killed_at: Some(at),
                ..
            }) => Some(*at + KILL_TIMEOUT),
        }
    }

    fn timers(&mut self) -> Result<(), SysError> {
        let now = Instant::now();
        if self.stop.is_none() && now >= self.deadline {
            say!("the job's deadline passed");
            self.begin_stop(StopCause::Deadline, self.grace);
        }
        if let Some(stop) = &mut self.stop {
            match stop.killed_at {
                None if now >= stop.kill_at => {
                    say!("grace period over: SIGKILL to every process");
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    stop.killed_at = Some(now);
                }
                Some(at) if now >= at + KILL_TIMEOUT => {
                    return Err(SysError {
                        action: format!(
                            "wait for the job (pid {}) to die after SIGKILL",
                            self.runner
                        ),
                        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// SIGTERM to every process but PID 1 now, SIGKILL after `grace`. A
    /// second request can only bring the SIGKILL closer.
    fn begin_stop(&mut self, cause: StopCause, grace: Duration) {
        let kill_at = Instant::now() + grace;
        match &mut self.stop {
            Some(stop) => stop.kill_at = stop.kill_at.min(kill_at),
            None => {
                say!(
                    "stopping the job ({cause:?}): SIGTERM now, SIGKILL in {} ms",
                    grace.as_millis()
                );
                let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
                self.stop = Some(Stop {
                    cause,
                    kill_at,
                    killed_at: None,
                });
            }
        }
    }

    fn signals(&mut self, sigfd: &SignalFd) {
        let mut child = false;
        while let Ok(Some(info)) = sigfd.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => child = true,
                Ok(Signal::SIGINT) => self.begin_stop(StopCause::CtrlAltDel, self.grace),
                Ok(other) => say!("ignoring {other} sent to PID 1 by pid {}", info.ssi_pid),
                Err(_) => {}
            }
        }
        // SIGCHLDs coalesce: one may stand for many exits. reap() takes
        // every zombie there is.
        if child {
            let r = reaper::reap(Some(self.runner));
            if let Some(st) = r.watched {
                self.status = Some(st);
            }
        }
    }

    fn host(&mut self) {
        match self.inbox.fill(self.chan.fd()) {
            Ok(Fill::Data) => {}
            Ok(Fill::Eof) => {
                say!("the host closed the channel");
                self.read_host = false;
                self.begin_stop(StopCause::Cancelled, self.grace);
                return;
            }
            Err(e) => {
                self.host_broke("read from the host", e.to_string());
                return;
            }
        }
        loop {
            match self.inbox.next_message() {
                Ok(None) => break,
                Ok(Some(HostMessage::Cancel(c))) => {
                    self.begin_stop(StopCause::Cancelled, Duration::from_millis(c.grace_ms))
                }
                Ok(Some(HostMessage::Job(_))) => {
                    self.host_broke("read host message", "a second Job".into());
                    break;
                }
                Err(e) => {
                    self.host_broke("read host message", e.to_string());
                    break;
                }
            }
        }
    }

    /// The host sent something unreadable: say so, stop listening, stop
    /// the job.
    fn host_broke(&mut self, what: &str, detail: String) {
        say!("{what}: {detail}");
        self.read_host = false;
        self.send(&GuestMessage::Error(GuestError {
            what: what.into(),
            detail,
        }));
        self.begin_stop(StopCause::Cancelled, self.grace);
    }

    /// Reads what pipe `i` has (one chunk) and sends it; closes it at EOF.
    fn forward(&mut self, i: usize) {
        let Some(buf) = read_chunk(&mut self.pipes[i].file) else {
            self.pipes.remove(i);
            return;
        };
        if self.debug {
            console::echo(&buf);
        }
        let stream = self.pipes[i].stream;
        self.send(&GuestMessage::Output(Output { stream, data: buf }));
    }

    /// Output still in the pipes once the runner is gone. Processes it left
    /// behind may hold the pipes open, so this stops when nothing is ready
    /// or after [`DRAIN_TIME`].
    fn drain(&mut self) {
        let until = Instant::now() + DRAIN_TIME;
        while !self.pipes.is_empty() && Instant::now() < until {
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd<'_>> = self
                    .pipes
                    .iter()
                    .map(|p| PollFd::new(p.file.as_fd(), PollFlags::POLLIN))
                    .collect();
                if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                    break;
                }
                fds.iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect()
            };
            for (i, r) in ready.iter().enumerate().rev() {
                if *r {
                    self.forward(i);
                }
            }
        }
    }

    fn send(&mut self, msg: &GuestMessage) {
        if !self.chan_ok {
            return;
        }
        if let Err(e) = self.chan.send(msg) {
            say!("send to the host: {e}");
            self.chan_ok = false;
            // Nobody is listening: finish the job quickly.
            self.begin_stop(StopCause::Cancelled, self.grace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn output_is_cut_into_frames_of_at_most_the_chunk_size() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || File::from(w).write_all(&data).unwrap())
        };
        let mut r = File::from(r);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(chunk) = read_chunk(&mut r) {
            assert!(!chunk.is_empty() && chunk.len() <= MAX_OUTPUT_CHUNK);
            got.extend_from_slice(&chunk);
            frames += 1;
        }
        writer.join().unwrap();
        assert_eq!(got, data);
        assert!(frames >= data.len().div_ceil(MAX_OUTPUT_CHUNK));
    }
}
