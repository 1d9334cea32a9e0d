//! Pools and jobs for the scheduler's tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Pool;

use super::QueuedJob;

/// A pool named `name` whose only label is its name.
pub(crate) fn pool(name: &str, vcpus: u32, memory_mib: u64, max_vms: Option<u32>) -> Arc<Pool> {
    Arc::new(Pool {
        name: name.into(),
        labels: vec![name.into()],
        vcpus,
        memory_mib,
        scratch_gib: 20,
        image: "/img".into(),
        sudo: false,
        max_vms,
        job_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_retries: None,
        emulate: false,
        network: Default::default(),
        allow: Vec::new(),
        proxy: None,
        source: Default::default(),
    })
}

/// Job `id` asking for exactly `pool`'s labels.
pub(crate) fn job(id: u64, pool: &Arc<Pool>) -> QueuedJob {
    QueuedJob {
        delivery: format!("d{id}").into(),
        job_id: id,
        run_id: 1,
        installation_id: 1,
        repository: "acme/widgets".into(),
        labels: pool.labels.clone(),
        pool: Arc::clone(pool),
        received: Instant::now(),
    }
}
