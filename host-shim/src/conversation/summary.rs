//! What one conversation amounted to: the guest's boot phases, the job's
//! start and end, output volume, and when each step happened on the host.

use kiln_protocol::{GuestError, Hello, PhaseStamp, RunnerExited, RunnerStarted, Stream};
use tokio::time::Instant;

use super::Event;

/// More boot phases than kiln-init has are dropped.
pub(super) const MAX_PHASES: usize = 64;

/// When each step happened, on the host's monotonic clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStamps {
    pub accepted: Option<Instant>,
    pub hello: Option<Instant>,
    pub job_sent: Option<Instant>,
    pub runner_started: Option<Instant>,
    pub ended: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub hello: Hello,
    pub runner: Option<RunnerStarted>,
    pub exit: Option<RunnerExited>,
    pub guest_error: Option<GuestError>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub host: HostStamps,
}

impl Summary {
    pub(super) fn new(hello: Hello, host: HostStamps) -> Summary {
        Summary {
            hello,
            runner: None,
            exit: None,
            guest_error: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            host,
        }
    }

    pub(super) fn record(&mut self, event: &Event) {
        match event {
            Event::RunnerStarted(s) => {
                self.runner = Some(s.clone());
                self.host.runner_started = Some(Instant::now());
            }
            Event::Output(o) => match o.stream {
                Stream::Stdout => self.stdout_bytes += o.data.len() as u64,
                Stream::Stderr => self.stderr_bytes += o.data.len() as u64,
            },
            Event::RunnerExited(e) => {
                self.exit = Some(e.clone());
                self.host.ended = Some(Instant::now());
            }
            Event::GuestError(e) => {
                self.guest_error = Some(e.clone());
                self.host.ended = Some(Instant::now());
            }
        }
    }

    /// Every boot and job-setup phase the guest reported, in order
    /// (guest `CLOCK_BOOTTIME`, nanoseconds since its kernel started).
    pub fn phases(&self) -> Vec<PhaseStamp> {
        let mut p = self.hello.boot.clone();
        if let Some(r) = &self.runner {
            p.extend(r.phases.iter().copied());
        }
        p
    }
}

/// Cuts guest-supplied text to `max` bytes (on a character boundary). The
/// memory goes too: a cut string is reallocated at its new length (the
/// decoder sized it by what the guest sent, up to a whole frame).
pub(super) fn bound_text(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
        s.shrink_to_fit();
    }
    s
}

/// Keeps the first [`MAX_PHASES`] stamps, and only their memory: a frame
/// of 500 000 stamps decodes into about 8 MiB.
pub(super) fn bound_phases(mut phases: Vec<PhaseStamp>) -> Vec<PhaseStamp> {
    if phases.len() > MAX_PHASES {
        phases.truncate(MAX_PHASES);
        phases.shrink_to_fit();
    }
    phases
}

pub(super) fn bound_hello(mut h: Hello, max_text: usize) -> Hello {
    h.init_version = bound_text(h.init_version, max_text);
    h.kernel_release = bound_text(h.kernel_release, max_text);
    h.boot = bound_phases(h.boot);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_a_char_boundary() {
        assert_eq!(bound_text("héllo".into(), 2), "h…");
        assert_eq!(bound_text("short".into(), 10), "short");
    }
}
