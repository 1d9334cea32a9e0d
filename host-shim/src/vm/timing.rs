//! Where one VM's time went.
//!
//! Host phases are measured on the host's monotonic clock. Guest phases
//! come from kiln-init's `CLOCK_BOOTTIME` stamps (time since the guest
//! kernel started), so they need no clock sync:
//!
//! - prepare: VM directory, CID, scratch disk.
//! - VMM start: the backend starting the VMM (QEMU and vhost-device-vsock,
//!   or the jail, the jailer and Firecracker's configuration).
//! - pre-kernel: from the VMM's start to the guest kernel's first
//!   instruction (VMM set-up, firmware, loading the kernel). Estimated: the
//!   host's time until the guest connected, minus the guest's clock then.
//! - kernel: until kiln-init's first instruction (`InitStart`).
//! - kiln-init: `InitStart` to `RunnerSpawned`, minus the wait for the host.
//! - handshake: the wait for the host, `ChannelOpen` to `JobReceived`.
//! - job: the command, spawn to exit, as the guest measured it.
//! - shutdown: from the job's reported end until the VMM exited.
//! - teardown: removing everything.
//!
//! The guest is untrusted: its stamps are used only for these numbers, and
//! stamps out of order are ignored.

use std::fmt::Write;
use std::time::Duration;

use kiln_protocol::{BootPhase, PhaseStamp};
use tokio::time::Instant;

use crate::conversation::Summary;

/// Instants the layer records as a VM goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marks {
    pub start: Instant,
    pub prepared: Option<Instant>,
    pub vmm_started: Option<Instant>,
    pub vmm_exited: Option<Instant>,
    pub done: Option<Instant>,
}

impl Marks {
    pub fn new() -> Self {
        Marks {
            start: Instant::now(),
            prepared: None,
            vmm_started: None,
            vmm_exited: None,
            done: None,
        }
    }
}

/// One VM's phases; `None` for a phase the VM never reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    pub prepare: Option<Duration>,
    pub vmm_start: Option<Duration>,
    pub pre_kernel: Option<Duration>,
    pub kernel: Option<Duration>,
    pub init: Option<Duration>,
    pub handshake: Option<Duration>,
    pub job: Option<Duration>,
    pub shutdown: Option<Duration>,
    pub teardown: Option<Duration>,
    pub total: Duration,
}

fn between(a: Option<Instant>, b: Option<Instant>) -> Option<Duration> {
    b?.checked_duration_since(a?)
}

/// The guest's stamp of `phase`, if it reported one.
fn stamp(phases: &[PhaseStamp], phase: BootPhase) -> Option<u64> {
    phases.iter().find(|p| p.phase == phase).map(|p| p.at_ns)
}

impl Timing {
    pub(crate) fn compute(marks: &Marks, summary: Option<&Summary>) -> Timing {
        let end = marks.done.unwrap_or_else(Instant::now);
        let mut t = Timing {
            prepare: between(Some(marks.start), marks.prepared),
            vmm_start: between(marks.prepared, marks.vmm_started),
            teardown: between(marks.vmm_exited, marks.done),
            total: end.saturating_duration_since(marks.start),
            ..Timing::default()
        };
        let Some(s) = summary else { return t };
        t.shutdown = between(s.host.ended, marks.vmm_exited);
        t.job = s
            .exit
            .as_ref()
            .map(|e| Duration::from_millis(e.duration_ms));
        let phases = s.phases();
        let ordered = phases.windows(2).all(|w| w[0].at_ns <= w[1].at_ns);
        if !ordered {
            tracing::warn!("the guest's boot stamps are out of order; ignoring them");
            return t;
        }
        let init_start = stamp(&phases, BootPhase::InitStart);
        let channel = stamp(&phases, BootPhase::ChannelOpen);
        let received = stamp(&phases, BootPhase::JobReceived);
        let spawned = stamp(&phases, BootPhase::RunnerSpawned);
        t.kernel = init_start.map(Duration::from_nanos);
        let wait = match (channel, received) {
            (Some(c), Some(r)) => r.checked_sub(c),
            _ => None,
        };
        t.handshake = wait.map(Duration::from_nanos);
        t.init = match (init_start, spawned, wait) {
            (Some(i), Some(s), Some(w)) => s.checked_sub(i).and_then(|d| d.checked_sub(w)),
            _ => None,
        }
        .map(Duration::from_nanos);
        // The guest's clock when it connected, against the host's time
        // from the VMM's start to accepting that connection.
        t.pre_kernel = match (between(marks.vmm_started, s.host.accepted), channel) {
            (Some(host), Some(c)) => Some(host.saturating_sub(Duration::from_nanos(c))),
            _ => None,
        };
        t
    }

    /// One line: the main phases, then the rest in parentheses.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let list = |parts: &[(&str, Option<Duration>)]| {
            let items: Vec<String> = parts
                .iter()
                .filter_map(|(name, d)| d.map(|d| format!("{name} {}", secs(d))))
                .collect();
            items.join(", ")
        };
        let main = list(&[
            ("VMM start", self.vmm_start),
            ("kernel", self.kernel),
            ("kiln-init", self.init),
            ("job", self.job),
        ]);
        let rest = list(&[
            ("prepare", self.prepare),
            ("pre-kernel", self.pre_kernel),
            ("handshake", self.handshake),
            ("shutdown", self.shutdown),
            ("teardown", self.teardown),
        ]);
        let _ = write!(out, "{} total", secs(self.total));
        if !main.is_empty() {
            let _ = write!(out, ": {main}");
        }
        if !rest.is_empty() {
            let _ = write!(out, " ({rest})");
        }
        out
    }

    /// The phases in the order they happen, for checks that they add up.
    pub fn phases(&self) -> [(&'static str, Option<Duration>); 9] {
        [
            ("prepare", self.prepare),
            ("vmm_start", self.vmm_start),
            ("pre_kernel", self.pre_kernel),
            ("kernel", self.kernel),
            ("init", self.init),
            ("handshake", self.handshake),
            ("job", self.job),
            ("shutdown", self.shutdown),
            ("teardown", self.teardown),
        ]
    }
}

fn secs(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::HostStamps;
    use kiln_protocol::{ExitStatus, Hello, RunnerExited, RunnerStarted};

    fn ps(phase: BootPhase, ms: u64) -> PhaseStamp {
        PhaseStamp {
            phase,
            at_ns: ms * 1_000_000,
        }
    }

    fn summary(boot: Vec<PhaseStamp>, job: Vec<PhaseStamp>, host: HostStamps) -> Summary {
        Summary {
            hello: Hello {
                protocol_version: kiln_protocol::PROTOCOL_VERSION,
                init_version: "t".into(),
                kernel_release: "t".into(),
                boot,
            },
            runner: Some(RunnerStarted {
                pid: 10,
                phases: job,
            }),
            exit: Some(RunnerExited {
                status: ExitStatus::Code(0),
                duration_ms: 40,
                stopped_by: None,
            }),
            guest_error: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            host,
        }
    }

    #[test]
    fn phases_from_host_marks_and_guest_stamps() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + Duration::from_millis(ms));
        let marks = Marks {
            start: t0,
            prepared: at(20),
            vmm_started: at(120),
            vmm_exited: at(2300),
            done: at(2350),
        };
        let host = HostStamps {
            accepted: at(1920),
            hello: at(1921),
            job_sent: at(1922),
            runner_started: at(1990),
            ended: at(2040),
        };
        let s = summary(
            vec![
                ps(BootPhase::InitStart, 1500),
                ps(BootPhase::Mounted, 1510),
                ps(BootPhase::ChannelOpen, 1700),
            ],
            vec![
                ps(BootPhase::JobReceived, 1710),
                ps(BootPhase::JobConfigured, 1730),
                ps(BootPhase::RunnerSpawned, 1760),
            ],
            host,
        );
        let t = Timing::compute(&marks, Some(&s));
        let ms = Duration::from_millis;
        assert_eq!(t.prepare, Some(ms(20)));
        assert_eq!(t.vmm_start, Some(ms(100)));
        assert_eq!(t.kernel, Some(ms(1500)));
        assert_eq!(t.handshake, Some(ms(10)));
        // 1760 - 1500 - 10 (the wait for the host).
        assert_eq!(t.init, Some(ms(250)));
        assert_eq!(t.job, Some(ms(40)));
        // Host: 1800 ms from VMM start to accept; guest clock then 1700 ms.
        assert_eq!(t.pre_kernel, Some(ms(100)));
        assert_eq!(t.shutdown, Some(ms(260)));
        assert_eq!(t.teardown, Some(ms(50)));
        assert_eq!(t.total, ms(2350));
        let line = t.render();
        assert!(
            line.starts_with(
                "2.35 s total: VMM start 0.10 s, kernel 1.50 s, kiln-init 0.25 s, job 0.04 s ("
            ),
            "{line}"
        );
    }

    #[test]
    fn out_of_order_guest_stamps_are_ignored() {
        let marks = Marks::new();
        let s = summary(
            vec![
                ps(BootPhase::InitStart, 900),
                ps(BootPhase::ChannelOpen, 100),
            ],
            vec![],
            HostStamps::default(),
        );
        let t = Timing::compute(&marks, Some(&s));
        assert_eq!((t.kernel, t.init, t.handshake), (None, None, None));
    }

    #[test]
    fn a_vm_that_never_started_has_only_host_phases() {
        let t0 = Instant::now();
        let marks = Marks {
            start: t0,
            prepared: Some(t0 + Duration::from_millis(5)),
            vmm_started: None,
            vmm_exited: None,
            done: Some(t0 + Duration::from_millis(9)),
        };
        let t = Timing::compute(&marks, None);
        assert_eq!(t.prepare, Some(Duration::from_millis(5)));
        assert_eq!(t.vmm_start, None);
        assert_eq!(t.render(), "9.0 ms total (prepare 5.0 ms)");
    }
}
