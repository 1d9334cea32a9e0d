//! Kiln's wire protocol: what crosses the VM wall, and how it is framed.
//!
//! A frame is a 4-byte big-endian length followed by a postcard-encoded
//! message. The guest dials the host (CID [`HOST_CID`], port [`VSOCK_PORT`]),
//! sends [`GuestMessage::Hello`], and the host answers with
//! [`HostMessage::Job`]. Both first messages carry [`PROTOCOL_VERSION`].
//!
//! Everything the host reads from a guest is untrusted: decoding never
//! panics, never allocates more than [`MAX_FRAME_LEN`] for one frame, and
//! reports what was wrong.

pub mod blocking;
pub mod frame;
pub mod job;
pub mod message;
#[cfg(feature = "tokio")]
pub mod tokio_codec;

pub use frame::{FrameError, MAX_FRAME_LEN};
pub use job::{
    CommandSpec, EnvVar, Ipv4Config, Ipv6Config, Job, JobError, NetworkConfig, Rlimit,
    RlimitResource, UserSpec, WallClock, JIT_CONFIG_ENV, MIN_ENTROPY_BYTES,
};
pub use message::{
    BootPhase, Cancel, ExitStatus, GuestError, GuestMessage, Hello, HostMessage, Output,
    PhaseStamp, RunnerExited, RunnerStarted, StopCause, Stream,
};

/// Bumped on every incompatible change to any message.
pub const PROTOCOL_VERSION: u32 = 2;

/// The host's vsock context id, as seen from a guest.
pub const HOST_CID: u32 = 2;

/// The port the guest dials on the host. With hybrid vsock the host listens
/// on the Unix socket `<uds_path>_1024`.
pub const VSOCK_PORT: u32 = 1024;

/// The largest `Output` payload a guest sends in one frame.
pub const MAX_OUTPUT_CHUNK: usize = 32 * 1024;
