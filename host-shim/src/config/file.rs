//! The TOML file as written, before validation. Unknown keys are errors:
//! a typo must not silently fall back to a default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub webhook_secret_file: Option<PathBuf>,
    /// Where jobs come from, for pools that do not say: `webhook` or `scale-set`.
    pub source: Option<String>,
    pub max_queued: Option<usize>,
    pub backend: Option<String>,
    pub log_format: Option<String>,
    pub github: RawGithub,
    pub host: Option<RawHost>,
    pub network: Option<RawNetwork>,
    pub admin: Option<super::admin::RawAdmin>,
    pub tls: Option<super::tls::RawTls>,
    #[serde(default)]
    pub pool: Vec<RawPool>,
}

/// `[network]`: the VMs' networks, host-wide.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub pool: Option<String>,
    pub pool6: Option<String>,
    pub uplinks: Option<Vec<String>>,
    pub mtu: Option<u32>,
    pub dns: Option<Vec<String>>,
}

/// One `[[pool.allow]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    pub cidr: String,
    pub port: Option<u16>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGithub {
    pub api_url: Option<String>,
    pub app_id: u64,
    pub private_key_file: PathBuf,
    pub org: Option<String>,
    pub repo: Option<String>,
    pub enterprise: Option<String>,
    pub runner_group_id: Option<u64>,
    pub reconcile_interval: Option<String>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: String,
    pub labels: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub scratch_gib: Option<u64>,
    pub image: Option<PathBuf>,
    pub sudo: Option<bool>,
    pub max_vms: Option<u32>,
    pub job_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_retries: Option<u32>,
    pub emulate: Option<bool>,
    pub network: Option<String>,
    #[serde(default)]
    pub allow: Vec<RawAllow>,
    pub proxy: Option<String>,
    pub source: Option<String>,
    pub scale_set: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
