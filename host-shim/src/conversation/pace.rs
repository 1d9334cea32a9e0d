//! Paces the frames read from one guest: at most a set number a second on
//! average, with bursts of up to one second's worth (a generic cell rate
//! algorithm: each frame books the next slot).
//!
//! A guest that sends faster is not refused: the host stops reading until
//! the next slot, so the guest's writes block, its pipes fill, and
//! kiln-init's next reads return bigger chunks. Whatever the guest sends,
//! the host's work per VM stays bounded by the rate, not by the guest.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct Pace {
    /// Time booked per frame.
    interval: Duration,
    /// How far ahead of now bookings may run: the burst.
    tolerance: Duration,
    /// When the next frame would be due if frames came at the steady rate.
    due: Instant,
}

impl Pace {
    /// `per_sec` frames a second (at least 1), from `now`.
    pub(super) fn new(per_sec: u32, now: Instant) -> Pace {
        let per_sec = per_sec.max(1);
        let interval = Duration::from_secs(1) / per_sec;
        Pace {
            interval,
            tolerance: interval * (per_sec - 1),
            due: now,
        }
    }

    /// Books a slot for the next frame and returns when it may be read:
    /// `now` while within the burst, later once the guest outran the rate.
    pub(super) fn admit(&mut self, now: Instant) -> Instant {
        let at = self
            .due
            .checked_sub(self.tolerance)
            .map_or(now, |earliest| earliest.max(now));
        self.due = self.due.max(at) + self.interval;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_steady_rate() {
        let t0 = Instant::now();
        let mut p = Pace::new(10, t0);
        for _ in 0..10 {
            assert_eq!(p.admit(t0), t0, "within the burst");
        }
        assert_eq!(p.admit(t0), t0 + Duration::from_millis(100));
        assert_eq!(p.admit(t0), t0 + Duration::from_millis(200));
    }

    #[test]
    fn quiet_time_refills_the_burst_but_never_beyond_it() {
        let t0 = Instant::now();
        let mut p = Pace::new(10, t0);
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(p.admit(later), later);
        }
        assert!(
            p.admit(later) > later,
            "a minute of silence buys no more than one burst"
        );
    }

    #[test]
    fn frames_at_the_rate_never_wait() {
        let t0 = Instant::now();
        let mut p = Pace::new(1000, t0);
        for i in 0..5000 {
            let now = t0 + Duration::from_millis(i);
            assert_eq!(p.admit(now), now);
        }
    }
}
