//! The reconciler's share of an installation's rate limit: at most `per_hour`
//! counted requests in any sliding hour. 304 answers are free and not spent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

/// Counted requests of the last hour, oldest first.
#[derive(Debug, Clone)]
pub struct Budget {
    per_hour: u32,
    spent: VecDeque<Instant>,
}

impl Budget {
    pub fn new(per_hour: u32) -> Self {
        Self {
            per_hour,
            spent: VecDeque::new(),
        }
    }

    pub fn per_hour(&self) -> u32 {
        self.per_hour
    }

    /// Whether one more counted request fits at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        self.spent.len() < self.per_hour as usize
    }

    /// Records a counted request at `now`.
    pub fn spend(&mut self, now: Instant) {
        self.forget_before(now);
        self.spent.push_back(now);
    }

    /// Counted requests in the hour up to `now`.
    pub fn spent(&mut self, now: Instant) -> u32 {
        self.forget_before(now);
        u32::try_from(self.spent.len()).unwrap_or(u32::MAX)
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&first) = self.spent.front() {
            if now.saturating_duration_since(first) < HOUR {
                break;
            }
            self.spent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_stops_at_the_bound_and_an_hour_later_frees_it() {
        let start = Instant::now();
        let mut budget = Budget::new(2);
        assert!(budget.allows(start));
        budget.spend(start);
        budget.spend(start + Duration::from_secs(600));
        assert!(!budget.allows(start + Duration::from_secs(601)));
        assert_eq!(budget.spent(start + Duration::from_secs(601)), 2);
        // The first request leaves the window an hour after it was made.
        assert!(budget.allows(start + HOUR));
        assert_eq!(budget.spent(start + HOUR), 1);
        assert_eq!(budget.spent(start + HOUR + Duration::from_secs(600)), 0);
    }
}
