//! What can be wrong with a config file. Every message names the file, the
//! key and what to do about it.

use std::path::PathBuf;

/// A config file that cannot be used: [`ConfigError::path`] is the file,
/// [`ConfigError::kind`] the problem.
#[derive(Debug, thiserror::Error)]
#[error("config {}: {kind}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub kind: ConfigErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    #[error("cannot read it: {source} (point --config at the file)")]
    Read { source: std::io::Error },
    /// TOML syntax, a wrong type, an unknown or a missing key: the parser's
    /// message carries the line and the key.
    #[error("{message}")]
    Syntax { message: String },
    #[error("{key}: cannot read secret file {}: {source}", file.display())]
    SecretUnreadable {
        key: String,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{key}: secret file {file} is readable by group or others (mode {mode:03o}): run `chmod 600 {file}`",
        file = file.display()
    )]
    SecretExposed {
        key: String,
        file: PathBuf,
        mode: u32,
    },
    #[error("{key}: secret file {} is empty: put the secret in it", file.display())]
    SecretEmpty { key: String, file: PathBuf },
    #[error("no [[pool]]: add at least one, e.g. [[pool]] name = \"small\" labels = [\"self-hosted\", \"linux\"] vcpus = 2 memory_mib = 4096")]
    NoPools,
    #[error("pool {name:?} is defined twice: give each [[pool]] its own name")]
    DuplicatePool { name: String },
    #[error("pool {pool:?}: labels is empty: list the runs-on labels this pool serves, e.g. [\"self-hosted\", \"linux\", \"x64\"]")]
    EmptyLabels { pool: String },
    #[error("pool {pool:?}: labels has an empty label: remove it")]
    BlankLabel { pool: String },
    #[error(
        "pool {pool:?}: vcpus = {vcpus}: use 1 or an even number up to 32 (Firecracker's limit)"
    )]
    BadVcpus { pool: String, vcpus: u32 },
    #[error(
        "pool {pool:?}: {key} = {wants} is more than the host gives all VMs together ([host] {key} = {host}): lower the pool's {key} or raise [host] {key}"
    )]
    PoolTooBig {
        pool: String,
        key: &'static str,
        wants: u64,
        host: u64,
    },
    #[error("github: set exactly one of org, repo or enterprise (found {})", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    Scope { found: Vec<&'static str> },
    #[error("github.repo = {value:?}: use owner/name, e.g. \"acme/widgets\"")]
    BadRepo { value: String },
    #[error("{key} = {value:?}: {problem}")]
    BadDuration {
        key: String,
        value: String,
        problem: String,
    },
    #[error("{key}: {problem}")]
    BadValue { key: String, problem: String },
    #[error("cannot find out this host's {what}: {source}; set [host] {key} in the config")]
    HostFacts {
        what: &'static str,
        key: &'static str,
        source: std::io::Error,
    },
}

impl ConfigErrorKind {
    pub(crate) fn bad_value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::BadValue {
            key: key.into(),
            problem: problem.into(),
        }
    }
}
