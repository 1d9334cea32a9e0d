//! A pool: one VM size and image for the jobs whose `runs-on` labels it serves.

use std::path::PathBuf;
use std::time::Duration;

/// One `[[pool]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// The labels this pool's runners register with; kept as written.
    pub labels: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The per-VM scratch disk (sparse: costs what the job writes).
    pub scratch_gib: u64,
    /// The directory `cargo xtask image` writes.
    pub image: PathBuf,
    /// Whether the job's user may use sudo in the VM.
    pub sudo: bool,
    /// At most this many of the pool's VMs at once; `None`: only the host limits it.
    pub max_vms: Option<u32>,
    pub job_timeout: Duration,
    /// A runner that has not taken a job this long after it started is
    /// stopped and its registration deleted.
    pub idle_timeout: Duration,
    /// Re-runs per workflow run after infrastructure failures for this
    /// pool's jobs; `None`: `github.max_retries`.
    pub max_retries: Option<u32>,
    /// Whether the pool may run an image of another architecture than the
    /// host's, emulated (QEMU's TCG: many times slower; for testing images).
    /// Without it such a pool is refused at start-up.
    pub emulate: bool,
    /// Whether the pool's VMs have a network.
    pub network: super::PoolNetwork,
    /// Extra destinations, the proxy's among them.
    pub allow: Vec<crate::net::Allow>,
    pub proxy: Option<super::Proxy>,
    /// Where the pool's jobs come from.
    pub source: JobSource,
}

/// Where a pool's jobs come from (`source` in the config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JobSource {
    /// GitHub App `workflow_job` webhooks; runners registered with REST
    /// `generate-jitconfig` (`source = "webhook"`, the default).
    #[default]
    Webhook,
    /// The runner scale set `name`'s message queue, long-polled over
    /// outbound HTTPS; runners minted from the scale set
    /// (`source = "scale-set"`). Webhooks, when configured, only inform.
    ScaleSet { name: String },
}

impl JobSource {
    /// The scale set's name, for a scale-set pool.
    pub fn scale_set(&self) -> Option<&str> {
        match self {
            JobSource::ScaleSet { name } => Some(name),
            JobSource::Webhook => None,
        }
    }
}

impl Pool {
    /// Whether a job asking for `job_labels` (its `runs-on`) can run here:
    /// every label it asks for is one of the pool's, case-insensitively (as
    /// GitHub matches runner labels). A job that asks for nothing matches
    /// no pool: taking it would run jobs meant for other runners.
    pub fn accepts(&self, job_labels: &[String]) -> bool {
        !job_labels.is_empty()
            && job_labels.iter().all(|want| {
                self.labels
                    .iter()
                    .any(|have| have.eq_ignore_ascii_case(want))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(labels: &[&str]) -> Pool {
        Pool {
            name: "p".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            vcpus: 2,
            memory_mib: 2048,
            scratch_gib: 20,
            image: "/img".into(),
            sudo: false,
            max_vms: None,
            job_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_retries: None,
            emulate: false,
            network: Default::default(),
            allow: Vec::new(),
            proxy: None,
            source: JobSource::Webhook,
        }
    }

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_asked_label_must_be_in_the_pool_case_insensitively() {
        let p = pool(&["self-hosted", "linux", "x64", "kiln-small"]);
        assert!(p.accepts(&labels(&["self-hosted"])));
        assert!(p.accepts(&labels(&["Self-Hosted", "Linux", "kiln-small"])));
        assert!(!p.accepts(&labels(&["self-hosted", "gpu"])));
        assert!(!p.accepts(&labels(&["ubuntu-latest"])));
        assert!(!p.accepts(&[]));
    }
}
