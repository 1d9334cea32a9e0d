//! `kiln serve`'s config file (TOML): parse, validate, read the secrets.
//!
//! - [`file`] — the file as written (serde, unknown keys refused).
//! - [`pool`] — [`Pool`]: one VM size and image, and which jobs it takes.
//! - [`host`] — [`HostCapacity`]: what this host gives VMs at once, and its defaults.
//! - [`admin`] — `[admin]`: the metrics listener.
//! - [`network`] — `[network]` and each pool's network, allowlist and proxy.
//! - [`secret_file`] — secrets from files that only their owner can read.
//! - [`tls`] — `[tls]`: plain HTTP, certificate files, or ACME.
//! - [`error`] — [`ConfigError`]: every problem, with its key, where it is and what to fix.
//! - [`locate`] — a key's line and column in the file.
//!
//! Relative paths in the file are relative to the file's directory.

mod admin;
mod error;
mod file;
mod host;
mod locate;
mod network;
mod pool;
mod secret_file;
mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use admin::{AdminSettings, DEFAULT_ADMIN_LISTEN};
use error::Problems;
pub use error::{ConfigError, ConfigErrorKind, Position, Problem};
pub use host::{HostCapacity, HostFacts, DEFAULT_MEMORY_PERCENT};
pub use network::{NetworkSettings, PoolNetwork, Proxy};
pub use pool::{JobSource, Pool};
pub use tls::{AcmeSettings, TlsSettings, DEFAULT_ACME_DIRECTORY};

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
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// `None` when every pool takes its jobs from a scale set and no
    /// `webhook_secret_file` is set: then no webhook port is opened.
    pub webhook_secret: Option<Secret>,
    pub max_queued: usize,
    /// The VMM: Firecracker (the default) or QEMU, only when asked for.
    pub backend: crate::vm::BackendChoice,
    /// kiln serve's own log lines: text (the default) or JSON.
    pub log_format: LogFormat,
    pub github: GithubConfig,
    pub host: HostCapacity,
    pub network: NetworkSettings,
    /// The metrics listener.
    pub admin: AdminSettings,
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
        let facts = HostFacts::detect().map_err(|kind| ConfigError::single(path.into(), kind))?;
        Self::load_with_host(path, &facts)
    }

    /// [`Config::load`] with given host facts (tests, and hosts whose
    /// defaults come from elsewhere). The error holds every problem found,
    /// each with the line and column of the value at fault.
    pub fn load_with_host(path: &Path, facts: &HostFacts) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::single(path.into(), ConfigErrorKind::Read { error }))?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| syntax_error(path, &text, &e))?;
        validate(raw, path, facts).map_err(|problems| located(path, &text, problems))
    }

    /// The first pool that accepts a job asking for `labels`.
    pub fn pool_for(&self, labels: &[String]) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.accepts(labels))
    }
}

/// The parser's error, at the position it names.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        path: path.to_path_buf(),
        first: Box::new(Problem {
            at: e.span().map(|s| locate::position(text, s.start)),
            kind: ConfigErrorKind::Syntax {
                message: e.message().trim_end().to_string(),
            },
        }),
        more: Vec::new(),
    }
}

/// Validation's problems, each at its key's position, in file order (those
/// without a position first).
fn located(path: &Path, text: &str, problems: Problems) -> ConfigError {
    let locator = locate::Locator::new(text);
    let mut all: Vec<Problem> = problems
        .0
        .into_iter()
        .map(|kind| Problem {
            at: kind.key().and_then(|k| locator.find(k)),
            kind,
        })
        .collect();
    all.sort_by_key(|p| p.at);
    let mut all = all.into_iter();
    let first = all.next().unwrap_or(Problem {
        at: None,
        kind: ConfigErrorKind::bad_value("", "invalid (no problem recorded)"),
    });
    ConfigError {
        path: path.to_path_buf(),
        first: Box::new(first),
        more: all.collect(),
    }
}

fn validate(raw: RawConfig, path: &Path, facts: &HostFacts) -> Result<Config, Problems> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems = Problems::default();
    let default_source = raw.source.clone();
    let webhook_secret = match &raw.webhook_secret_file {
        Some(file) => problems
            .take(read_secret(
                "webhook_secret_file",
                &base.join(file),
                Trim::TrailingNewline,
            ))
            .map(Some),
        None => Some(None),
    };
    let max_queued = raw.max_queued.unwrap_or(DEFAULT_MAX_QUEUED);
    if max_queued == 0 {
        problems.push(ConfigErrorKind::bad_value(
            "max_queued",
            "is 0: no job could ever wait; use e.g. 10000 (the default)",
        ));
    }
    let backend = problems.take(backend(raw.backend));
    let log_format = match raw.log_format.as_deref() {
        None => Some(LogFormat::default()),
        Some(v) => problems.take(
            LogFormat::parse("log_format", v)
                .map_err(|e| ConfigErrorKind::bad_value("log_format", e.problem())),
        ),
    };
    let github = github(raw.github, base, &mut problems);
    let host = problems.take(host(raw.host.as_ref(), facts));
    let network = network::settings(raw.network, &mut problems);
    let admin = problems.take(admin::settings(raw.admin));
    let tls = problems.take(tls::settings(raw.tls, base));
    let pools = pools(
        raw.pool,
        (base, default_source.as_deref()),
        host.as_ref(),
        &mut problems,
    );
    if let (Some(None), Some(pools)) = (&webhook_secret, &pools) {
        if let Some(p) = pools.iter().find(|p| p.source == JobSource::Webhook) {
            problems.push(ConfigErrorKind::bad_value(
                "webhook_secret_file",
                format!("is missing, and pool {:?} takes its jobs from webhooks: set it to a file holding the GitHub App's webhook secret, or set source = \"scale-set\"", p.name),
            ));
        }
    }
    let (
        Some(webhook_secret),
        Some(backend),
        Some(log_format),
        Some(github),
        Some(host),
        Some(network),
        Some(admin),
        Some(tls),
        Some(pools),
    ) = (
        webhook_secret,
        backend,
        log_format,
        github,
        host,
        network,
        admin,
        tls,
        pools,
    )
    else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        source: path.to_path_buf(),
        listen: raw.listen,
        tls,
        webhook_secret,
        max_queued,
        backend,
        log_format,
        github,
        host,
        network,
        admin,
        pools,
    })
}

/// `[host]`, defaults filled in from `facts`.
fn host(raw: Option<&file::RawHost>, facts: &HostFacts) -> Result<HostCapacity, ConfigErrorKind> {
    let defaults = facts.default_capacity();
    let host = HostCapacity {
        vcpus: raw.and_then(|h| h.vcpus).unwrap_or(defaults.vcpus),
        memory_mib: raw
            .and_then(|h| h.memory_mib)
            .unwrap_or(defaults.memory_mib),
    };
    for (key, zero) in [
        ("host.vcpus", host.vcpus == 0),
        ("host.memory_mib", host.memory_mib == 0),
    ] {
        if zero {
            return Err(ConfigErrorKind::bad_value(
                key,
                "is 0: must be more than 0 (leave vcpus and memory_mib out for all CPUs and 80% of RAM)",
            ));
        }
    }
    Ok(host)
}

/// Every `[[pool]]`, in file order; `None` when one has a problem. Without
/// a valid `[host]` the pools' sizes are not compared with it.
fn pools(
    raw: Vec<RawPool>,
    (base, default_source): (&Path, Option<&str>),
    host: Option<&HostCapacity>,
    problems: &mut Problems,
) -> Option<Vec<Arc<Pool>>> {
    if raw.is_empty() {
        problems.push(ConfigErrorKind::NoPools);
        return None;
    }
    let mut names = HashSet::new();
    let mut pools = Vec::with_capacity(raw.len());
    let mut all_valid = true;
    for (index, p) in raw.into_iter().enumerate() {
        if !names.insert(p.name.clone()) {
            problems.push(ConfigErrorKind::DuplicatePool {
                key: format!("pool[{index}].name"),
                name: p.name.clone(),
            });
            all_valid = false;
        }
        match pool(p, index, (base, default_source), host, problems) {
            Some(p) => pools.push(Arc::new(p)),
            None => all_valid = false,
        }
    }
    all_valid.then_some(pools)
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

fn github(raw: RawGithub, base: &Path, problems: &mut Problems) -> Option<GithubConfig> {
    let api_url = raw.api_url.unwrap_or_else(|| DEFAULT_API_URL.to_string());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        problems.push(ConfigErrorKind::bad_value(
            "github.api_url",
            format!("{api_url:?} is not an http(s) URL: use https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise Server"),
        ));
    }
    if raw.app_id == 0 {
        problems.push(ConfigErrorKind::bad_value(
            "github.app_id",
            "is 0: use the App ID from the GitHub App's settings page",
        ));
    }
    let private_key = problems.take(read_secret(
        "github.private_key_file",
        &base.join(&raw.private_key_file),
        Trim::Nothing,
    ));
    let scope = problems.take(scope(raw.org, raw.repo, raw.enterprise));
    let reconcile_interval = problems.take(positive_duration(
        "github.reconcile_interval",
        raw.reconcile_interval,
        DEFAULT_RECONCILE_INTERVAL,
        "\"60s\"",
    ));
    Some(GithubConfig {
        api_url: api_url.trim_end_matches('/').to_string(),
        app_id: raw.app_id,
        private_key: private_key?,
        scope: scope?,
        runner_group_id: raw.runner_group_id.unwrap_or(DEFAULT_RUNNER_GROUP_ID),
        reconcile_interval: reconcile_interval?,
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
        // Several: point at the second, the one to remove or keep.
        let key = found
            .get(1)
            .map_or("github".to_string(), |k| format!("github.{k}"));
        return Err(ConfigErrorKind::Scope { key, found });
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
        _ => Err(ConfigErrorKind::BadRepo {
            key: "github.repo".into(),
            value,
        }),
    }
}

/// `[[pool]]` number `index`; `None` with its problems noted. `host`:
/// what the pool's size is compared with, when valid.
fn pool(
    raw: RawPool,
    index: usize,
    (base, default_source): (&Path, Option<&str>),
    host: Option<&HostCapacity>,
    problems: &mut Problems,
) -> Option<Pool> {
    let before = problems.0.len();
    let key = |k: &str| format!("pool[{index}].{k}");
    let name = raw.name;
    let valid_name = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        problems.push(ConfigErrorKind::bad_value(
            key("name"),
            format!("{name:?}: use 1 to 32 letters, digits, '-' or '_' (it goes into runner and VM names)"),
        ));
    }
    if raw.labels.is_empty() {
        problems.push(ConfigErrorKind::EmptyLabels {
            key: key("labels"),
            pool: name.clone(),
        });
    }
    if raw.labels.iter().any(|l| l.trim().is_empty()) {
        problems.push(ConfigErrorKind::BlankLabel {
            key: key("labels"),
            pool: name.clone(),
        });
    }
    // Firecracker's rule (see vmm::spec): 1 or an even count up to 32.
    if !(raw.vcpus == 1 || (raw.vcpus.is_multiple_of(2) && (2..=32).contains(&raw.vcpus))) {
        problems.push(ConfigErrorKind::BadVcpus {
            key: key("vcpus"),
            pool: name.clone(),
            vcpus: raw.vcpus,
        });
    }
    if raw.memory_mib < 128 {
        problems.push(ConfigErrorKind::bad_value(
            key("memory_mib"),
            format!(
                "{} MiB is too little to boot a runner: use at least 2048",
                raw.memory_mib
            ),
        ));
    }
    let scratch_gib = raw.scratch_gib.unwrap_or(DEFAULT_SCRATCH_GIB);
    if scratch_gib == 0 {
        problems.push(ConfigErrorKind::bad_value(
            key("scratch_gib"),
            "is 0: the VM's writable layer and /home live there; use e.g. 20",
        ));
    }
    if let Some(host) = host {
        fits(&name, index, (raw.vcpus, raw.memory_mib), host, problems);
    }
    let job_timeout = problems.take(positive_duration(
        &key("job_timeout"),
        raw.job_timeout,
        DEFAULT_JOB_TIMEOUT,
        "6h",
    ));
    let idle_timeout = problems.take(positive_duration(
        &key("idle_timeout"),
        raw.idle_timeout,
        DEFAULT_IDLE_TIMEOUT,
        "10m",
    ));
    let net = problems.take(network::pool_network(
        &format!("pool[{index}]"),
        raw.network,
        raw.allow,
        raw.proxy,
    ));
    let source = problems.take(source(
        &key,
        (
            raw.source.as_deref().or(default_source),
            raw.source.is_some(),
        ),
        raw.scale_set,
        &name,
    ));
    let (network, allow, proxy) = net?;
    if problems.0.len() > before {
        return None;
    }
    Some(Pool {
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
        job_timeout: job_timeout?,
        idle_timeout: idle_timeout?,
        max_retries: raw.max_retries,
        source: source?,
        emulate: raw.emulate.unwrap_or(false),
        name,
    })
}

/// A pool's `source` (`default` when it names none) and `scale_set`: the
/// scale set's name defaults to `kiln-<pool>-<host name>`, so that each
/// host registers its own.
fn source(
    key: &dyn Fn(&str) -> String,
    (value, own): (Option<&str>, bool),
    scale_set: Option<String>,
    pool: &str,
) -> Result<JobSource, ConfigErrorKind> {
    let at = if own {
        key("source")
    } else {
        "source".to_owned()
    };
    match value {
        None | Some("webhook") => match scale_set {
            Some(_) => Err(ConfigErrorKind::bad_value(
                key("scale_set"),
                "names a scale set, but the pool takes its jobs from webhooks: add source = \"scale-set\" or remove it",
            )),
            None => Ok(JobSource::Webhook),
        },
        Some("scale-set") => {
            let name = match scale_set {
                Some(name) => name,
                None => format!("kiln-{pool}-{}", host_name()),
            };
            let valid = !name.is_empty()
                && name.len() <= 100
                && !name.chars().any(|c| c.is_control() || c.is_whitespace());
            if valid {
                Ok(JobSource::ScaleSet { name })
            } else {
                Err(ConfigErrorKind::bad_value(
                    key("scale_set"),
                    format!("{name:?} is not a scale set name: use up to 100 characters without spaces"),
                ))
            }
        }
        Some(other) => Err(ConfigErrorKind::bad_value(
            at,
            format!("{other:?} is not \"webhook\" (the default) or \"scale-set\" (GitHub's runner scale-set queue: no public endpoint needed)"),
        )),
    }
}

/// This host's name up to the first dot, for scale-set names.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .and_then(|h| h.split('.').next().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

/// A pool no bigger than what the host gives all VMs together.
fn fits(
    name: &str,
    index: usize,
    (vcpus, memory_mib): (u32, u64),
    host: &HostCapacity,
    problems: &mut Problems,
) {
    for (what, wants, has) in [
        ("vcpus", u64::from(vcpus), u64::from(host.vcpus)),
        ("memory_mib", memory_mib, host.memory_mib),
    ] {
        if wants > has {
            problems.push(ConfigErrorKind::PoolTooBig {
                key: format!("pool[{index}].{what}"),
                pool: name.to_string(),
                what,
                wants,
                host: has,
            });
        }
    }
}

/// A duration key: `default` when absent; more than 0 (`example` says
/// what to write instead).
fn positive_duration(
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
