//! Deliveries already handled, so a duplicate or a redelivery does not
//! queue a job twice: the last N delivery ids and (job id, action) pairs,
//! and the ids of the last N jobs GitHub said `completed`, so a `queued`
//! that arrives after its job's `completed` starts nothing.
//! Bounded, so a flood cannot grow it; an entry older than the last N is
//! forgotten (a duplicate that late is queued again; the scheduler still
//! refuses a job id that is queued already, and the job lifecycle
//! ([`crate::job`]) asks GitHub whether the job is still queued before it
//! registers a runner).

use std::borrow::Borrow;
use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

use crate::github::webhook::WorkflowJobAction;

/// Entries each set keeps.
pub const DEDUPE_ENTRIES: usize = 65_536;

/// A set that forgets its oldest entry beyond `capacity`.
#[derive(Debug)]
pub struct RecentSet<K> {
    capacity: usize,
    set: HashSet<K>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone> RecentSet<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn contains<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.set.contains(k)
    }

    /// Remembers `k`, forgetting the oldest entry when full.
    pub fn insert(&mut self, k: K) {
        if !self.set.insert(k.clone()) {
            return;
        }
        self.order.push_back(k);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Forgets `k`. Meant for an entry just inserted: it is looked for
    /// from the newest end.
    pub fn remove<Q>(&mut self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.set.remove(k) {
            if let Some(i) = self.order.iter().rposition(|x| x.borrow() == k) {
                self.order.remove(i);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// What the webhook handler has seen. Delivery ids are shared with the
/// queued job (`Arc<str>`): remembering one copies nothing.
#[derive(Debug)]
pub struct Seen {
    pub deliveries: RecentSet<Arc<str>>,
    pub jobs: RecentSet<(u64, WorkflowJobAction)>,
    /// Jobs a `completed` delivery was seen for.
    pub completed: RecentSet<u64>,
}

impl Seen {
    pub fn new(capacity: usize) -> Self {
        Self {
            deliveries: RecentSet::new(capacity),
            jobs: RecentSet::new(capacity),
            completed: RecentSet::new(capacity),
        }
    }

    /// Whether this delivery, or another with the same job and action, was handled.
    pub fn is_duplicate(&self, delivery: &str, job_id: u64, action: WorkflowJobAction) -> bool {
        self.deliveries.contains(delivery) || self.jobs.contains(&(job_id, action))
    }

    pub fn remember(&mut self, delivery: &Arc<str>, job_id: u64, action: WorkflowJobAction) {
        self.deliveries.insert(Arc::clone(delivery));
        self.jobs.insert((job_id, action));
        if action == WorkflowJobAction::Completed {
            self.completed.insert(job_id);
        }
    }

    /// Whether GitHub already said job `job_id` is over.
    pub fn is_completed(&self, job_id: u64) -> bool {
        self.completed.contains(&job_id)
    }

    /// Takes back [`Seen::remember`], for a delivery that was refused after
    /// all (so a redelivery is taken).
    pub fn forget(&mut self, delivery: &str, job_id: u64, action: WorkflowJobAction) {
        self.deliveries.remove(delivery);
        self.jobs.remove(&(job_id, action));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut s = RecentSet::new(3);
        for k in 1..=3 {
            s.insert(k);
        }
        s.insert(2);
        assert_eq!(s.len(), 3, "re-inserting does not grow it");
        s.insert(4);
        assert!(!s.contains(&1));
        assert!(s.contains(&2) && s.contains(&3) && s.contains(&4));
        for k in 5..1000 {
            s.insert(k);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.order.len(), 3);
    }

    #[test]
    fn forgetting_takes_back_a_remembered_delivery() {
        let mut seen = Seen::new(3);
        seen.remember(&"d1".into(), 1, WorkflowJobAction::Queued);
        seen.remember(&"d2".into(), 2, WorkflowJobAction::Queued);
        seen.forget("d2", 2, WorkflowJobAction::Queued);
        assert!(!seen.is_duplicate("d2", 2, WorkflowJobAction::Queued));
        assert!(seen.is_duplicate("d1", 1, WorkflowJobAction::Queued));
        assert_eq!(seen.deliveries.order.len(), 1, "no stale entry left behind");
        // Forgetting what was never there changes nothing.
        seen.forget("d9", 9, WorkflowJobAction::Queued);
        assert_eq!(seen.deliveries.len(), 1);
    }

    #[test]
    fn completed_jobs_are_remembered_within_the_bound() {
        let mut seen = Seen::new(2);
        seen.remember(&"d1".into(), 1, WorkflowJobAction::Completed);
        seen.remember(&"d2".into(), 2, WorkflowJobAction::Queued);
        assert!(seen.is_completed(1));
        assert!(!seen.is_completed(2), "queued is not completed");
        seen.remember(&"d3".into(), 3, WorkflowJobAction::Completed);
        seen.remember(&"d4".into(), 4, WorkflowJobAction::Completed);
        assert!(!seen.is_completed(1), "the oldest is forgotten");
        assert!(seen.is_completed(3) && seen.is_completed(4));
        assert_eq!(seen.completed.len(), 2);
    }

    #[test]
    fn duplicate_by_delivery_or_by_job_and_action() {
        let mut seen = Seen::new(10);
        seen.remember(&"d1".into(), 7, WorkflowJobAction::Queued);
        assert!(seen.is_duplicate("d1", 8, WorkflowJobAction::Completed));
        assert!(seen.is_duplicate("d2", 7, WorkflowJobAction::Queued));
        assert!(!seen.is_duplicate("d2", 7, WorkflowJobAction::Completed));
    }
}
