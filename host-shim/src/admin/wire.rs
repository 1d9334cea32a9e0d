//! What the admin socket sends, shared by the server and `kiln ps`.

use serde::{Deserialize, Serialize};

use crate::job::board::Row;

/// `GET /v1/ps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ps {
    /// Jobs holding a VM's capacity, then (with `all`) finished ones.
    pub jobs: Vec<Row>,
    /// Jobs waiting for capacity, oldest first.
    pub queued: Vec<Queued>,
    pub capacity: Capacity,
}

/// A job waiting for capacity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    pub job_id: u64,
    pub run_id: u64,
    pub repository: String,
    pub pool: String,
    /// Seconds since its webhook (or the reconciler, or the restart) queued it.
    pub age_secs: f64,
}

/// The host's capacity for VMs and what of it is in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    pub vcpus: u32,
    pub vcpus_used: u32,
    pub memory_mib: u64,
    pub memory_mib_used: u64,
}

/// `POST /v1/jobs/{id}/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelAnswer {
    pub job_id: u64,
    /// `stopping` (its VM is being stopped), `dequeued` (it was waiting),
    /// `already_over` or `unknown`.
    pub result: String,
}
