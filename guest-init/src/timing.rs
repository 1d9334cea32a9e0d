//! Boot-phase timestamps on `CLOCK_BOOTTIME`, i.e. since the kernel started.

use kiln_protocol::{BootPhase, PhaseStamp};
use nix::time::{clock_gettime, ClockId};

#[derive(Debug, Default)]
pub struct Timeline {
    stamps: Vec<PhaseStamp>,
}

impl Timeline {
    pub fn new() -> Self {
        Timeline::default()
    }

    pub fn mark(&mut self, phase: BootPhase) {
        self.stamps.push(PhaseStamp {
            phase,
            at_ns: boottime_ns(),
        });
    }

    /// A phase another thread reached at `at_ns`, kept in time order with
    /// the others.
    pub fn mark_at(&mut self, phase: BootPhase, at_ns: u64) {
        let i = self.stamps.partition_point(|s| s.at_ns <= at_ns);
        self.stamps.insert(i, PhaseStamp { phase, at_ns });
    }

    /// Every phase so far, in order.
    pub fn all(&self) -> Vec<PhaseStamp> {
        self.stamps.clone()
    }

    /// The phases from `first` on (for `RunnerStarted`).
    pub fn from(&self, first: BootPhase) -> Vec<PhaseStamp> {
        let start = self
            .stamps
            .iter()
            .position(|s| s.phase == first)
            .unwrap_or(self.stamps.len());
        self.stamps[start..].to_vec()
    }
}

pub fn boottime_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_ordered_and_sliceable() {
        let mut t = Timeline::new();
        t.mark(BootPhase::InitStart);
        t.mark(BootPhase::JobReceived);
        t.mark(BootPhase::RunnerSpawned);
        let all = t.all();
        assert_eq!(all.len(), 3);
        assert!(all.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        assert!(all[0].at_ns > 0);
        let tail = t.from(BootPhase::JobReceived);
        assert_eq!(
            tail.iter().map(|s| s.phase).collect::<Vec<_>>(),
            vec![BootPhase::JobReceived, BootPhase::RunnerSpawned]
        );
        assert!(t.from(BootPhase::ChannelOpen).is_empty());
    }

    #[test]
    fn a_stamp_from_another_thread_goes_in_time_order() {
        let mut t = Timeline::new();
        t.mark(BootPhase::InitStart);
        let early = boottime_ns();
        t.mark(BootPhase::ModulesLoaded);
        t.mark_at(BootPhase::CgroupsReady, early);
        let phases: Vec<_> = t.all().iter().map(|s| s.phase).collect();
        assert_eq!(
            phases,
            [
                BootPhase::InitStart,
                BootPhase::CgroupsReady,
                BootPhase::ModulesLoaded
            ]
        );
        t.mark_at(BootPhase::ChannelOpen, u64::MAX);
        assert_eq!(
            t.all().last().map(|s| s.phase),
            Some(BootPhase::ChannelOpen)
        );
    }
}
