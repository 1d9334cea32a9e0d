//! The scale sets of the pools that take their jobs from GitHub's runner
//! scale-set queue (`source = "scale-set"`): one per pool, all sharing one
//! [`ScaleSetClient`] (one admin token for the scope). The listener
//! ([`crate::serve`]) registers each and learns its id; the job's task
//! mints its runner from it and deletes the runner through it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Pool;
use crate::github::scaleset::ScaleSetClient;
use crate::github::{GithubApp, GithubError, JitConfig, RunnerScope};

/// Runner records of scale-set runners carry `scale-set:<name>` as their
/// scope: they are deleted through the scale set, not the REST API.
pub const SCOPE_PREFIX: &str = "scale-set:";

/// One pool's scale set.
pub struct ScaleSetPool {
    /// The scale set's name at GitHub.
    pub name: String,
    pub pool: Arc<Pool>,
    pub client: Arc<ScaleSetClient>,
    /// GitHub's id of the scale set; 0 until the listener registered it.
    id: AtomicU64,
}

impl ScaleSetPool {
    /// GitHub's id, once registered.
    pub fn id(&self) -> Option<u64> {
        Some(self.id.load(Ordering::Acquire)).filter(|&id| id != 0)
    }

    /// The listener registered (or found again) the scale set as `id`.
    pub fn set_id(&self, id: u64) {
        self.id.store(id, Ordering::Release);
    }

    /// The scope string of its runners' records.
    pub fn record_scope(&self) -> String {
        format!("{SCOPE_PREFIX}{}", self.name)
    }

    /// A JIT config for runner `name` from the scale set.
    pub async fn jit(&self, name: &str, work_folder: &str) -> Result<JitConfig, GithubError> {
        let Some(id) = self.id() else {
            return Err(GithubError::InvalidRequest {
                what: "scale-set JIT runner request",
                problem: format!("scale set {:?} is not registered yet", self.name),
            });
        };
        self.client.generate_jit(id, name, work_folder).await
    }
}

/// Every scale-set pool, by pool name; empty when no pool has one.
pub fn for_pools(
    pools: &[Arc<Pool>],
    github: &Arc<GithubApp>,
    scope: &RunnerScope,
) -> HashMap<String, Arc<ScaleSetPool>> {
    let mut client = None;
    let mut out = HashMap::new();
    for pool in pools {
        let Some(name) = pool.source.scale_set() else {
            continue;
        };
        let client = client
            .get_or_insert_with(|| Arc::new(ScaleSetClient::new(Arc::clone(github), scope.clone())))
            .clone();
        out.insert(
            pool.name.clone(),
            Arc::new(ScaleSetPool {
                name: name.to_owned(),
                pool: Arc::clone(pool),
                client,
                id: AtomicU64::new(0),
            }),
        );
    }
    out
}
