//! What can be wrong with a config file. Every problem names the key it is
//! about (a path such as `pool[1].memory_mib`), where that key's value is in
//! the file (line and column, see [`super::locate`]) and what to write
//! instead; a [`ConfigError`] holds every problem validation found.

use std::fmt;
use std::path::PathBuf;

/// A config file that cannot be used: [`ConfigError::path`] is the file,
/// [`ConfigError::first`] its first problem in file order and
/// [`ConfigError::more`] the others. Displays as one line per problem,
/// `FILE:LINE:COL: KEY: PROBLEM`, like a compiler.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    /// Boxed: a `Result<Config, ConfigError>` stays small.
    pub first: Box<Problem>,
    pub more: Vec<Problem>,
}

/// One problem: what is wrong ([`Problem::kind`]) and where.
#[derive(Debug)]
pub struct Problem {
    /// Line and column (1-based) of the value at fault, when the file has it.
    pub at: Option<Position>,
    pub kind: ConfigErrorKind,
}

/// A place in the file, both 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl ConfigError {
    /// A file with one problem and no position (it could not be read).
    pub(crate) fn single(path: PathBuf, kind: ConfigErrorKind) -> Self {
        Self {
            path,
            first: Box::new(Problem { at: None, kind }),
            more: Vec::new(),
        }
    }

    /// The first problem's kind.
    pub fn kind(&self) -> &ConfigErrorKind {
        &self.first.kind
    }

    /// Every problem, in file order.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        std::iter::once(&*self.first).chain(&self.more)
    }

    /// How many problems the file has.
    pub fn count(&self) -> usize {
        1 + self.more.len()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:", self.path.display())?;
            if let Some(at) = p.at {
                write!(f, "{}:{}:", at.line, at.column)?;
            }
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

// Every problem's cause is in its message: none is exposed as a source.
impl std::error::Error for ConfigError {}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.key() {
            Some(key) => write!(f, "{key}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// What is wrong. Variants about a key carry its path (`key`), which
/// [`ConfigErrorKind::key`] returns and [`Problem`] prints before the
/// message; the messages themselves do not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    #[error("cannot read it: {error} (point --config at the file)")]
    Read { error: std::io::Error },
    /// TOML syntax, a wrong type, an unknown or a missing key: the
    /// parser's message; its position is the problem's.
    #[error("{message}")]
    Syntax { message: String },
    #[error("cannot read secret file {}: {error}", file.display())]
    SecretUnreadable {
        key: String,
        file: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "secret file {file} is readable by group or others (mode {mode:03o}): run `chmod 600 {file}`",
        file = file.display()
    )]
    SecretExposed {
        key: String,
        file: PathBuf,
        mode: u32,
    },
    #[error("secret file {} is empty: put the secret in it", file.display())]
    SecretEmpty { key: String, file: PathBuf },
    #[error("no [[pool]]: add at least one, e.g. [[pool]] name = \"small\" labels = [\"self-hosted\", \"linux\"] vcpus = 2 memory_mib = 4096")]
    NoPools,
    #[error("pool {name:?} is defined twice: give each [[pool]] its own name")]
    DuplicatePool { key: String, name: String },
    #[error("pool {pool:?}: labels is empty: list the runs-on labels this pool serves, e.g. [\"self-hosted\", \"linux\", \"x64\"]")]
    EmptyLabels { key: String, pool: String },
    #[error("pool {pool:?}: labels has an empty label: remove it")]
    BlankLabel { key: String, pool: String },
    #[error(
        "pool {pool:?}: vcpus = {vcpus}: use 1 or an even number up to 32 (Firecracker's limit)"
    )]
    BadVcpus {
        key: String,
        pool: String,
        vcpus: u32,
    },
    #[error(
        "pool {pool:?}: {what} = {wants} is more than the host gives all VMs together ([host] {what} = {host}): lower the pool's {what} or raise [host] {what}"
    )]
    PoolTooBig {
        key: String,
        pool: String,
        what: &'static str,
        wants: u64,
        host: u64,
    },
    #[error("set exactly one of org, repo or enterprise (found {})", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    Scope {
        key: String,
        found: Vec<&'static str>,
    },
    #[error("{value:?} is not owner/name: use owner/name, e.g. \"acme/widgets\"")]
    BadRepo { key: String, value: String },
    #[error("{value:?}: {problem}")]
    BadDuration {
        key: String,
        value: String,
        problem: String,
    },
    #[error("{problem}")]
    BadValue { key: String, problem: String },
    #[error("cannot find out this host's {what}: {error}; set [host] {key} in the config")]
    HostFacts {
        what: &'static str,
        key: &'static str,
        error: std::io::Error,
    },
}

impl ConfigErrorKind {
    pub(crate) fn bad_value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::BadValue {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The path of the key the problem is about (`github.app_id`,
    /// `pool[0].labels`), when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::SecretUnreadable { key, .. }
            | Self::SecretExposed { key, .. }
            | Self::SecretEmpty { key, .. }
            | Self::DuplicatePool { key, .. }
            | Self::EmptyLabels { key, .. }
            | Self::BlankLabel { key, .. }
            | Self::BadVcpus { key, .. }
            | Self::PoolTooBig { key, .. }
            | Self::Scope { key, .. }
            | Self::BadRepo { key, .. }
            | Self::BadDuration { key, .. }
            | Self::BadValue { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax { .. } | Self::NoPools | Self::HostFacts { .. } => {
                None
            }
        }
    }
}

/// Problems found while validating, each a [`ConfigErrorKind`] with its
/// key: validation goes on past one so that `kiln config check` reports
/// them all. A `?` on a `Result<_, ConfigErrorKind>` also works (it stops
/// there), for checks that make later ones meaningless.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<ConfigErrorKind>);

impl Problems {
    /// The value, or `None` with the problem noted.
    pub(crate) fn take<T>(&mut self, result: Result<T, ConfigErrorKind>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    pub(crate) fn push(&mut self, kind: ConfigErrorKind) {
        self.0.push(kind);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigErrorKind> for Problems {
    fn from(kind: ConfigErrorKind) -> Self {
        Self(vec![kind])
    }
}
