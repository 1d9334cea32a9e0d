//! [`AdminError`]: why the admin listener or socket cannot be opened, or
//! why `kiln ps`/`logs`/`cancel` cannot reach `kiln serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen for metrics on {addr}: {source} (set [admin] listen to a free address, or \"off\")")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("another kiln serve answers on {}: stop it, or give this one its own KILN_RUNTIME_DIR", path.display())]
    InUse { path: PathBuf },
    #[error("cannot make the admin socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach kiln serve at {}: {source} (is it running, and are you root?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kiln serve's admin socket {}: {problem}", path.display())]
    Exchange { path: PathBuf, problem: String },
    #[error("{message}")]
    Refused { status: u16, message: String },
}
