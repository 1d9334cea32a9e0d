//! The messages each side sends.
//!
//! Variant order is part of the wire format: postcard encodes an enum as its
//! variant index. The first variant of each enum ([`GuestMessage::Hello`],
//! [`HostMessage::Job`]) opens the conversation and starts with the protocol
//! version, so a peer of another version is recognised before its message
//! is decoded (see [`crate::frame::decode_first`]).

use serde::{Deserialize, Serialize};

use crate::job::Job;

/// Guest (kiln-init) to host (kiln).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// Always first. The guest is up and waits for its job.
    Hello(Hello),
    /// The job's command was spawned.
    RunnerStarted(RunnerStarted),
    /// A chunk of the job's stdout or stderr: 1 to `MAX_OUTPUT_CHUNK` bytes
    /// (the host ends the job on an empty one).
    Output(Output),
    /// The job's command ended; the guest powers off next.
    RunnerExited(RunnerExited),
    /// Something failed in the guest; it powers off next.
    Error(GuestError),
}

/// Host to guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Always first: what to run.
    Job(Box<Job>),
    /// Stop the job gracefully: SIGTERM, `grace_ms`, then SIGKILL.
    Cancel(Cancel),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must stay the first field: read before the rest is decoded.
    pub protocol_version: u32,
    /// kiln-init's crate version.
    pub init_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Boot phases so far, in the order they completed.
    pub boot: Vec<PhaseStamp>,
}

/// When a phase of the guest's boot or job setup completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseStamp {
    pub phase: BootPhase,
    /// `CLOCK_BOOTTIME` in nanoseconds: time since the guest kernel started.
    pub at_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BootPhase {
    /// kiln-init's first instruction.
    InitStart,
    /// `/proc`, `/sys`, `/dev` and `/run` mounted: what the boot needs
    /// first (the other mounts are made beside the module loads).
    Mounted,
    /// Every kernel module from `kiln.modules=` loaded. The loads run in
    /// the background from `Mounted` on, beside the root's work; kiln-init
    /// waits for them all before it dials the host.
    ModulesLoaded,
    /// The overlay root is in place (or none was asked for).
    RootReady,
    /// cgroup delegation, kernel parameters and the loopback interface set
    /// up (the boot work that needs no module). Variants keep their
    /// declaration order: postcard encodes the index.
    CgroupsReady,
    /// The vsock connection to the host is open.
    ChannelOpen,
    /// The `Job` frame was read.
    JobReceived,
    /// Clock, entropy, hostname, DNS and network applied.
    JobConfigured,
    /// The job's command was spawned (just before its exec).
    RunnerSpawned,
    /// The root's disks and overlayfs are there: what the root waited
    /// for, while the other modules may still be loading.
    RootDevicesReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerStarted {
    /// The command's pid inside the guest.
    pub pid: u32,
    /// `JobReceived`, `JobConfigured` and `RunnerSpawned`.
    pub phases: Vec<PhaseStamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub stream: Stream,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Output {
    // Job output can be large and is the job's business: logs say how much, not what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("stream", &self.stream)
            .field("len", &self.data.len())
            .finish()
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Why the guest stopped the job before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCause {
    /// The host sent `Cancel`.
    Cancelled,
    /// The job's deadline passed.
    Deadline,
    /// SIGINT to PID 1: the VMM's Ctrl-Alt-Del.
    CtrlAltDel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerExited {
    pub status: ExitStatus,
    /// From spawn to exit.
    pub duration_ms: u64,
    /// Set when the guest stopped the job; `None` when it ended by itself.
    pub stopped_by: Option<StopCause>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestError {
    /// What the guest was doing, e.g. "decode job" or "spawn runner".
    pub what: String,
    /// The error itself.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    pub grace_ms: u64,
}

/// The first message of each direction, which carries the protocol version.
pub trait Opening {
    /// Name used in errors, e.g. "Hello".
    const NAME: &'static str;
    /// The version this message carries, if it is the opening one.
    fn opening_version(&self) -> Option<u32>;
}

impl Opening for GuestMessage {
    const NAME: &'static str = "Hello";
    fn opening_version(&self) -> Option<u32> {
        match self {
            GuestMessage::Hello(h) => Some(h.protocol_version),
            _ => None,
        }
    }
}

impl Opening for HostMessage {
    const NAME: &'static str = "Job";
    fn opening_version(&self) -> Option<u32> {
        match self {
            HostMessage::Job(j) => Some(j.protocol_version),
            _ => None,
        }
    }
}
