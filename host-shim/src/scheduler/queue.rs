//! The scheduler's bookkeeping, without tasks or locks: which jobs wait in
//! what order, what the running ones hold, and which job may start next.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::QueuedJob;
use crate::config::{HostCapacity, Pool};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    #[error("{limit} jobs are queued already (max_queued); refusing more")]
    QueueFull { limit: usize },
    #[error("job {job_id} is queued already")]
    AlreadyQueued { job_id: u64 },
    #[error("pool {pool:?} is not one the scheduler was made with")]
    UnknownPool { pool: String },
    #[error("pool {pool:?} needs more vCPUs or memory than the host gives all VMs together")]
    NeverFits { pool: String },
    #[error("the scheduler is shutting down")]
    Closed,
}

/// What the scheduler holds right now: for tests, logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub queued: usize,
    pub running: usize,
    pub vcpus_used: u32,
    pub memory_mib_used: u64,
    pub capacity: HostCapacity,
    /// In config order.
    pub pools: Vec<PoolSnapshot>,
    /// Totals since start.
    pub started: u64,
    pub finished: u64,
    /// Removed from the queue by a `completed` webhook before they started.
    pub cancelled: u64,
}

/// A pool's share of the host: see [`Queue::room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Its jobs running or queued.
    pub held: u64,
    /// How many more could start now.
    pub more: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub name: String,
    pub queued: usize,
    pub running: u32,
    pub max_vms: Option<u32>,
}

impl Snapshot {
    pub fn pool(&self, name: &str) -> Option<&PoolSnapshot> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// A started job's claim on capacity; give it back to [`Queue::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    pool: usize,
}

pub(crate) struct Queue {
    capacity: HostCapacity,
    max_queued: usize,
    pools: Vec<Slot>,
    by_name: HashMap<String, usize>,
    /// Queued job id -> (pool index, arrival number).
    queued: HashMap<u64, (usize, u64)>,
    next_seq: u64,
    vcpus_used: u32,
    memory_mib_used: u64,
    running: usize,
    started: u64,
    finished: u64,
    cancelled: u64,
}

struct Slot {
    pool: Arc<Pool>,
    /// Arrival number -> job: the first entry is the pool's oldest.
    waiting: BTreeMap<u64, QueuedJob>,
    running: u32,
}

impl Slot {
    fn below_max(&self) -> bool {
        self.pool.max_vms.is_none_or(|max| self.running < max)
    }
}

impl Queue {
    pub(crate) fn new(capacity: HostCapacity, pools: &[Arc<Pool>], max_queued: usize) -> Self {
        Self {
            capacity,
            max_queued,
            by_name: pools
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), i))
                .collect(),
            pools: pools
                .iter()
                .map(|p| Slot {
                    pool: Arc::clone(p),
                    waiting: BTreeMap::new(),
                    running: 0,
                })
                .collect(),
            queued: HashMap::new(),
            next_seq: 0,
            vcpus_used: 0,
            memory_mib_used: 0,
            running: 0,
            started: 0,
            finished: 0,
            cancelled: 0,
        }
    }

    pub(crate) fn enqueue(&mut self, job: QueuedJob) -> Result<(), EnqueueError> {
        let &pool = self
            .by_name
            .get(&job.pool.name)
            .ok_or_else(|| EnqueueError::UnknownPool {
                pool: job.pool.name.clone(),
            })?;
        let p = &self.pools[pool].pool;
        if p.vcpus > self.capacity.vcpus || p.memory_mib > self.capacity.memory_mib {
            return Err(EnqueueError::NeverFits {
                pool: p.name.clone(),
            });
        }
        if self.queued.contains_key(&job.job_id) {
            return Err(EnqueueError::AlreadyQueued { job_id: job.job_id });
        }
        if self.queued.len() >= self.max_queued {
            return Err(EnqueueError::QueueFull {
                limit: self.max_queued,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued.insert(job.job_id, (pool, seq));
        self.pools[pool].waiting.insert(seq, job);
        Ok(())
    }

    /// Pool `name`'s share of the host now: the jobs it holds (running and
    /// queued) plus how many more of its VMs could start at once, after
    /// every queued job of every pool took its place (what a scale set
    /// tells GitHub it can hold). `None` for an unknown pool.
    pub(crate) fn room(&self, name: &str) -> Option<Room> {
        let &index = self.by_name.get(name)?;
        let (mut vcpus, mut memory) = (u64::from(self.vcpus_used), self.memory_mib_used);
        for s in &self.pools {
            let waiting = s.waiting.len() as u64;
            vcpus += waiting * u64::from(s.pool.vcpus);
            memory += waiting * s.pool.memory_mib;
        }
        let mine = &self.pools[index];
        let free_vcpus = u64::from(self.capacity.vcpus).saturating_sub(vcpus);
        let free_memory = self.capacity.memory_mib.saturating_sub(memory);
        let host_room = (free_vcpus / u64::from(mine.pool.vcpus.max(1)))
            .min(free_memory / mine.pool.memory_mib.max(1));
        let held = u64::from(mine.running) + mine.waiting.len() as u64;
        let pool_room = mine
            .pool
            .max_vms
            .map_or(u64::MAX, |max| u64::from(max).saturating_sub(held));
        Some(Room {
            held,
            more: host_room.min(pool_room),
        })
    }

    /// Takes a still-queued job out (its `completed` arrived first).
    pub(crate) fn cancel(&mut self, job_id: u64) -> Option<QueuedJob> {
        let (pool, seq) = self.queued.remove(&job_id)?;
        let job = self.pools[pool].waiting.remove(&seq);
        if job.is_some() {
            self.cancelled += 1;
        }
        job
    }

    /// The next job to start, with its capacity reserved; `None` while the
    /// oldest startable job does not fit the host (see the module's order).
    pub(crate) fn start_next(&mut self) -> Option<(QueuedJob, Claim)> {
        let (pool, seq) = self
            .pools
            .iter()
            .enumerate()
            .filter(|(_, s)| s.below_max())
            .filter_map(|(i, s)| s.waiting.keys().next().map(|&seq| (i, seq)))
            .min_by_key(|&(_, seq)| seq)?;
        let slot = &mut self.pools[pool];
        let fits = self.vcpus_used + slot.pool.vcpus <= self.capacity.vcpus
            && self.memory_mib_used + slot.pool.memory_mib <= self.capacity.memory_mib;
        if !fits {
            return None;
        }
        let job = slot.waiting.remove(&seq)?;
        slot.running += 1;
        self.vcpus_used += slot.pool.vcpus;
        self.memory_mib_used += slot.pool.memory_mib;
        self.queued.remove(&job.job_id);
        self.running += 1;
        self.started += 1;
        Some((job, Claim { pool }))
    }

    pub(crate) fn release(&mut self, claim: Claim) {
        let slot = &mut self.pools[claim.pool];
        slot.running = slot.running.saturating_sub(1);
        self.vcpus_used = self.vcpus_used.saturating_sub(slot.pool.vcpus);
        self.memory_mib_used = self.memory_mib_used.saturating_sub(slot.pool.memory_mib);
        self.running = self.running.saturating_sub(1);
        self.finished += 1;
    }

    /// Empties the queue (shutdown); running jobs keep their claims.
    /// The queued jobs in arrival order (copies).
    pub(crate) fn waiting(&self) -> Vec<QueuedJob> {
        let mut jobs: Vec<(u64, &QueuedJob)> = self
            .pools
            .iter()
            .flat_map(|s| s.waiting.iter().map(|(seq, job)| (*seq, job)))
            .collect();
        jobs.sort_by_key(|(seq, _)| *seq);
        jobs.into_iter().map(|(_, job)| job.clone()).collect()
    }

    pub(crate) fn drain(&mut self) -> Vec<QueuedJob> {
        self.queued.clear();
        let mut jobs: Vec<(u64, QueuedJob)> = self
            .pools
            .iter_mut()
            .flat_map(|s| std::mem::take(&mut s.waiting))
            .collect();
        jobs.sort_by_key(|(seq, _)| *seq);
        jobs.into_iter().map(|(_, job)| job).collect()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.len()
    }

    pub(crate) fn running(&self) -> usize {
        self.running
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            queued: self.queued.len(),
            running: self.running,
            vcpus_used: self.vcpus_used,
            memory_mib_used: self.memory_mib_used,
            capacity: self.capacity,
            pools: self
                .pools
                .iter()
                .map(|s| PoolSnapshot {
                    name: s.pool.name.clone(),
                    queued: s.waiting.len(),
                    running: s.running,
                    max_vms: s.pool.max_vms,
                })
                .collect(),
            started: self.started,
            finished: self.finished,
            cancelled: self.cancelled,
        }
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
