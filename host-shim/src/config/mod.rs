//! `kiln serve`'s config file (TOML): parse, validate, read the secrets.
//!
//! - [`file`] — the file as written (serde, unknown keys refused).
//! - [`pool`] — [`Pool`]: one VM size and image, and which jobs it takes.
//! - [`host`] — [`HostCapacity`]: what this host gives VMs at once, and its defaults.
//! - [`network`] — `[network]` and each pool's network, allowlist and proxy.
//! - [`secret_file`] — secrets from files that only their owner can read.
//! - [`error`] — [`ConfigError`]: the file, the key and what to fix.
//!
//! Relative paths in the file are relative to the file's directory.

mod error;
mod file;
mod host;
mod network;
mod pool;
mod secret_file;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{ConfigError, ConfigErrorKind};
pub use host::{HostCapacity, HostFacts, DEFAULT_MEMORY_PERCENT};
pub use network::{NetworkSettings, PoolNetwork, Proxy};
pub use pool::Pool;

use crate::duration::parse_duration;
use crate::github::scope::RunnerScope;
use crate::logs::LogFormat;
use crate::secret::Secret;
use file::{RawConfig, RawGithub, RawPool};
use secret_file::{read_secret, Trim};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/kiln/config.toml";
pub const DEFAULT_API_URL: &str = "https://api.github.com";
pub const DEFAULT_IMAGE: &str = "/var/lib/kiln/image";
pub const DEFAULT_RUNNER_GROUP_ID: u64 = 1;
pub const DEFAULT_SCRATCH_GIB: u64 = 20;
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How long a pool's runner may wait for a job before its VM is stopped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How often the reconciler asks GitHub for jobs no webhook brought.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// Re-runs per workflow run after infrastructure failures.
pub const DEFAULT_MAX_RETRIES: u32 = 1;
/// Queued jobs beyond this are refused (503) so a flood of webhooks cannot
/// grow memory without limit.
pub const DEFAULT_MAX_QUEUED: usize = 10_000;

/// A validated config: every secret read, every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub listen: SocketAddr,
    pub webhook_secret: Secret,
    pub max_queued: usize,
    /// The VMM: Firecracker (the default) or QEMU, only when asked for.
    pub backend: crate::vm::BackendChoice,
    /// kiln serve's own log lines: text (the default) or JSON.
    pub log_format: LogFormat,
    pub github: GithubConfig,
    pub host: HostCapacity,
    pub network: NetworkSettings,
    /// In file order: a job goes to the first pool that accepts it.
    pub pools: Vec<Arc<Pool>>,
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// Without a trailing slash: `https://api.github.com`, `https://HOST/api/v3`.
    pub api_url: String,
    pub app_id: u64,
    /// PEM; parsed by the GitHub client.
    pub private_key: Secret,
    pub scope: RunnerScope,
    pub runner_group_id: u64,
    /// How often GitHub is asked for queued jobs no webhook brought.
    pub reconcile_interval: Duration,
    /// Re-runs per workflow run after infrastructure failures (0: none).
    pub max_retries: u32,
}

impl Config {
    /// Reads and validates `path`, with this machine's CPUs and RAM as the
    /// `[host]` defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |kind| ConfigError {
            path: path.to_path_buf(),
            kind,
        };
        let facts = HostFacts::detect().map_err(err)?;
        Self::load_with_host(path, &facts)
    }

    /// [`Config::load`] with given host facts (tests, and hosts whose
    /// defaults come from elsewhere).
    pub fn load_with_host(path: &Path, facts: &HostFacts) -> Result<Self, ConfigError> {
        let err = |kind| ConfigError {
            path: path.to_path_buf(),
            kind,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|source| err(ConfigErrorKind::Read { source }))?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| {
            err(ConfigErrorKind::Syntax {
                message: e.to_string().trim_end().to_string(),
            })
        })?;
        validate(raw, path, facts).map_err(err)
    }

    /// The first pool that accepts a job asking for `labels`.
    pub fn pool_for(&self, labels: &[String]) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.accepts(labels))
    }
}

fn validate(raw: RawConfig, path: &Path, facts: &HostFacts) -> Result<Config, ConfigErrorKind> {
    let base = path.parent().unwrap_or(Path::new("."));
    let webhook_secret = read_secret(
        "webhook_secret_file",
        &base.join(&raw.webhook_secret_file),
        Trim::TrailingNewline,
    )?;
    let max_queued = raw.max_queued.unwrap_or(DEFAULT_MAX_QUEUED);
    if max_queued == 0 {
        return Err(ConfigErrorKind::bad_value(
            "max_queued",
            "is 0: no job could ever wait; use e.g. 10000 (the default)",
        ));
    }
    let backend = backend(raw.backend)?;
    let log_format = match raw.log_format.as_deref() {
        None => LogFormat::default(),
        Some(v) => LogFormat::parse("log_format", v)
            .map_err(|e| ConfigErrorKind::bad_value("log_format", e.problem()))?,
    };
    let github = github(raw.github, base)?;
    let defaults = facts.default_capacity();
    let host = HostCapacity {
        vcpus: raw
            .host
            .as_ref()
            .and_then(|h| h.vcpus)
            .unwrap_or(defaults.vcpus),
        memory_mib: raw
            .host
            .as_ref()
            .and_then(|h| h.memory_mib)
            .unwrap_or(defaults.memory_mib),
    };
    if host.vcpus == 0 || host.memory_mib == 0 {
        return Err(ConfigErrorKind::bad_value(
            "host",
            "vcpus and memory_mib must be more than 0 (leave them out for all CPUs and 80% of RAM)",
        ));
    }
    let network = network::settings(raw.network)?;
    if raw.pool.is_empty() {
        return Err(ConfigErrorKind::NoPools);
    }
    let mut names = HashSet::new();
    let mut pools = Vec::with_capacity(raw.pool.len());
    for p in raw.pool {
        if !names.insert(p.name.clone()) {
            return Err(ConfigErrorKind::DuplicatePool { name: p.name });
        }
        pools.push(Arc::new(pool(p, base, &host)?));
    }
    Ok(Config {
        source: path.to_path_buf(),
        listen: raw.listen,
        webhook_secret,
        max_queued,
        backend,
        log_format,
        github,
        host,
        network,
        pools,
    })
}

/// A daemon runs what the operator chose: Firecracker unless QEMU is
/// named, and never a silent fallback (`auto` is `kiln run`'s).
fn backend(raw: Option<String>) -> Result<crate::vm::BackendChoice, ConfigErrorKind> {
    use crate::vm::BackendChoice;
    match raw.as_deref() {
        None | Some("firecracker") => Ok(BackendChoice::Firecracker),
        Some("qemu") => Ok(BackendChoice::Qemu),
        Some(other) => Err(ConfigErrorKind::bad_value(
            "backend",
            format!("{other:?} is not \"firecracker\" (the default) or \"qemu\" (development hosts without Firecracker); kiln serve never picks one by itself"),
        )),
    }
}

fn github(raw: RawGithub, base: &Path) -> Result<GithubConfig, ConfigErrorKind> {
    let api_url = raw.api_url.unwrap_or_else(|| DEFAULT_API_URL.to_string());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(ConfigErrorKind::bad_value(
            "github.api_url",
            format!("{api_url:?} is not an http(s) URL: use https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server"),
        ));
    }
    if raw.app_id == 0 {
        return Err(ConfigErrorKind::bad_value(
            "github.app_id",
            "is 0: use the App ID from the GitHub App's settings page",
        ));
    }
    let private_key = read_secret(
        "github.private_key_file",
        &base.join(&raw.private_key_file),
        Trim::Nothing,
    )?;
    let scope = scope(raw.org, raw.repo, raw.enterprise)?;
    Ok(GithubConfig {
        api_url: api_url.trim_end_matches('/').to_string(),
        app_id: raw.app_id,
        private_key,
        scope,
        runner_group_id: raw.runner_group_id.unwrap_or(DEFAULT_RUNNER_GROUP_ID),
        reconcile_interval: pool_duration(
            "github.reconcile_interval",
            raw.reconcile_interval,
            DEFAULT_RECONCILE_INTERVAL,
            "\"60s\"",
        )?,
        max_retries: raw.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
    })
}

fn scope(
    org: Option<String>,
    repo: Option<String>,
    enterprise: Option<String>,
) -> Result<RunnerScope, ConfigErrorKind> {
    let found: Vec<&'static str> = [
        ("org", org.is_some()),
        ("repo", repo.is_some()),
        ("enterprise", enterprise.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if found.len() != 1 {
        return Err(ConfigErrorKind::Scope { found });
    }
    let plain_name = |key: &str, value: String| {
        if value.is_empty() || value.contains('/') || value.contains(char::is_whitespace) {
            Err(ConfigErrorKind::bad_value(
                key,
                format!("{value:?} is not an account name: use the name as in its github.com URL"),
            ))
        } else {
            Ok(value)
        }
    };
    if let Some(org) = org {
        return Ok(RunnerScope::Org {
            org: plain_name("github.org", org)?,
        });
    }
    if let Some(enterprise) = enterprise {
        return Ok(RunnerScope::Enterprise {
            enterprise: plain_name("github.enterprise", enterprise)?,
        });
    }
    let value = repo.unwrap_or_default();
    match value.split_once('/') {
        Some((owner, name))
            if !owner.is_empty()
                && !name.is_empty()
                && !name.contains('/')
                && !value.contains(char::is_whitespace) =>
        {
            Ok(RunnerScope::Repo {
                owner: owner.to_string(),
                repo: name.to_string(),
            })
        }
        _ => Err(ConfigErrorKind::BadRepo { value }),
    }
}

fn pool(raw: RawPool, base: &Path, host: &HostCapacity) -> Result<Pool, ConfigErrorKind> {
    let name = raw.name;
    let valid_name = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(ConfigErrorKind::bad_value(
            "pool.name",
            format!("{name:?}: use 1 to 32 letters, digits, '-' or '_' (it goes into runner and VM names)"),
        ));
    }
    if raw.labels.is_empty() {
        return Err(ConfigErrorKind::EmptyLabels { pool: name });
    }
    if raw.labels.iter().any(|l| l.trim().is_empty()) {
        return Err(ConfigErrorKind::BlankLabel { pool: name });
    }
    // Firecracker's rule (see vmm::spec): 1 or an even count up to 32.
    if !(raw.vcpus == 1 || (raw.vcpus.is_multiple_of(2) && (2..=32).contains(&raw.vcpus))) {
        return Err(ConfigErrorKind::BadVcpus {
            pool: name,
            vcpus: raw.vcpus,
        });
    }
    let key = |k: &str| format!("pool {name:?}: {k}");
    if raw.memory_mib < 128 {
        return Err(ConfigErrorKind::bad_value(
            key("memory_mib"),
            format!(
                "{} MiB is too little to boot a runner: use at least 2048",
                raw.memory_mib
            ),
        ));
    }
    let scratch_gib = raw.scratch_gib.unwrap_or(DEFAULT_SCRATCH_GIB);
    if scratch_gib == 0 {
        return Err(ConfigErrorKind::bad_value(
            key("scratch_gib"),
            "is 0: the VM's writable layer and /home live there; use e.g. 20",
        ));
    }
    for (k, wants, has) in [
        ("vcpus", u64::from(raw.vcpus), u64::from(host.vcpus)),
        ("memory_mib", raw.memory_mib, host.memory_mib),
    ] {
        if wants > has {
            return Err(ConfigErrorKind::PoolTooBig {
                pool: name,
                key: k,
                wants,
                host: has,
            });
        }
    }
    let job_timeout = pool_duration(
        &key("job_timeout"),
        raw.job_timeout,
        DEFAULT_JOB_TIMEOUT,
        "6h",
    )?;
    let idle_timeout = pool_duration(
        &key("idle_timeout"),
        raw.idle_timeout,
        DEFAULT_IDLE_TIMEOUT,
        "10m",
    )?;
    let (network, allow, proxy) = network::pool_network(&name, raw.network, raw.allow, raw.proxy)?;
    Ok(Pool {
        network,
        allow,
        proxy,
        labels: raw.labels,
        vcpus: raw.vcpus,
        memory_mib: raw.memory_mib,
        scratch_gib,
        image: base.join(raw.image.unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE))),
        sudo: raw.sudo.unwrap_or(false),
        max_vms: raw.max_vms,
        job_timeout,
        idle_timeout,
        max_retries: raw.max_retries,
        name,
    })
}

/// A pool's duration key: `default` when absent; more than 0 (`example`
/// says what to write instead).
fn pool_duration(
    key: &str,
    value: Option<String>,
    default: Duration,
    example: &str,
) -> Result<Duration, ConfigErrorKind> {
    let Some(text) = value else {
        return Ok(default);
    };
    match parse_duration(&text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ConfigErrorKind::BadDuration {
            key: key.to_owned(),
            value: text,
            problem: format!("must be more than 0, e.g. {example}"),
        }),
        Err(problem) => Err(ConfigErrorKind::BadDuration {
            key: key.to_owned(),
            value: text,
            problem,
        }),
    }
}

#[cfg(test)]
mod tests;
