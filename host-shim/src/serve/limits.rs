//! What an unauthenticated client may cost `kiln serve`: connections,
//! time, and buffered bytes. The webhook port faces the internet, and
//! until a delivery's signature is checked, anyone can be on the other end.
//!
//! The defaults are documented in host-shim/README.md; keep both in step.

use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Connections and their timers ([`super::http`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once. One more makes the oldest connection that
    /// never sent a signed delivery go (see [`super::conns`]): a crowd of
    /// idle clients cannot keep GitHub out.
    pub max_connections: usize,
    /// A request's head (request line and headers) must arrive within
    /// this, counted from the connection being ready for it: accepted, or
    /// done with its previous answer. Also ends idle keep-alive connections.
    pub header_timeout: Duration,
    /// A connection on which no byte moved either way for this long is
    /// closed, whatever it was doing (e.g. a client that reads no answers).
    pub idle_timeout: Duration,
    /// Largest request head; beyond it the answer is 431.
    pub max_head_bytes: usize,
    /// hyper's read buffer per connection (at least 8 KiB).
    pub read_buffer_bytes: usize,
}

/// Connections beyond this are never needed: GitHub sends a few at a time.
pub const MAX_CONNECTIONS: usize = 1024;

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_head_bytes: 16 * 1024,
            read_buffer_bytes: 64 * 1024,
        }
    }
}

impl HttpLimits {
    /// The defaults, with at most half of `fd_limit` file descriptors for
    /// connections: the other half stays for the jobs (VMM pipes, sockets,
    /// disks, logs).
    pub fn for_fd_limit(fd_limit: u64) -> Self {
        let half = usize::try_from(fd_limit / 2).unwrap_or(usize::MAX);
        Self {
            max_connections: MAX_CONNECTIONS.min(half).max(1),
            ..Self::default()
        }
    }
}

/// Reading the bodies of deliveries whose signature cannot be checked yet
/// ([`super::body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body read (413 beyond). A `workflow_job` delivery is about
    /// 6 to 10 KiB; only `workflow_job` and `ping` bodies are read.
    pub max_bytes: usize,
    /// Body bytes held by all unverified deliveries together, counted as
    /// they arrive (a slow sender holds only what it sent). When a body
    /// needs more, the oldest other unverified upload is closed.
    pub budget_bytes: usize,
    /// How long a delivery may wait for room in the budget (then 503).
    pub wait: Duration,
    /// How long its body may take to arrive (then 408).
    pub read_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            budget_bytes: 32 * 1024 * 1024,
            wait: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything [`super::Server`] bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerLimits {
    pub http: HttpLimits,
    pub body: BodyLimits,
}

/// `RLIMIT_NOFILE` could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("cannot read the open-files limit (RLIMIT_NOFILE): {0}")]
    Read(#[source] nix::errno::Errno),
    #[error("cannot raise the open-files limit (RLIMIT_NOFILE) from {soft} to its hard limit {hard}: {source}; kiln serve goes on with {soft} (raise `LimitNOFILE=` in its systemd unit, or `ulimit -n`)")]
    Raise {
        soft: u64,
        hard: u64,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Raises the soft limit on open files to the hard one (Linux's default
/// soft limit, 1024, is what about a thousand idle connections exhausted)
/// and returns the soft limit now in force.
pub fn raise_fd_limit() -> Result<u64, FdLimitError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(FdLimitError::Read)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| FdLimitError::Raise {
        soft,
        hard,
        source,
    })?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_at_most_half_of_the_fd_limit() {
        assert_eq!(HttpLimits::for_fd_limit(200).max_connections, 100);
        assert_eq!(
            HttpLimits::for_fd_limit(1 << 20).max_connections,
            MAX_CONNECTIONS
        );
        assert_eq!(HttpLimits::for_fd_limit(1).max_connections, 1);
    }
}
