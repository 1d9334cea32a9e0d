//! Firecracker's hybrid vsock, host side: the guest's vsock is a Unix socket
//! on the host (see `shared/reference/firecracker.md`). Firecracker and
//! `vhost-device-vsock` speak the same protocol, so this code serves both
//! VMM backends.
//!
//! - [`listener`]: guest to host. A guest dialling CID 2 port P makes the VMM
//!   connect to `<uds>_P`; [`HybridListener`] must be bound there before the
//!   VM starts.
//! - [`connect`]: host to guest. `CONNECT <port>\n`, then an `OK ...` line,
//!   then the stream is the guest's socket.

pub mod connect;
pub mod listener;

pub use connect::{connect, ConnectError, ConnectOptions};
pub use listener::{HybridListener, ListenerError};

/// The longest path a Unix socket address can hold (`sun_path`, with its NUL).
pub const MAX_UDS_PATH: usize = 107;
