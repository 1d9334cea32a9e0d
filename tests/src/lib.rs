//! The VM test harness: boots real VMs with QEMU, Debian's cloud kernel and
//! kiln-init, through the same host-shim code (`kiln::vmm::qemu`,
//! `kiln::vsock`, `kiln::conversation`) that runs jobs in production.
//!
//! - [`prereq`] — what the host must have, and how to install what it lacks.
//! - [`assets`] — kiln-init, kernel and initramfs, built once per process.
//! - [`daemon`] — `kiln serve`, the binary: config, start, log, signed deliveries.
//! - [`job`] — jobs for test payloads (busybox `sh -c` as `runner`).
//! - [`events`] — `kiln serve`'s JSON log lines, found by event name and fields.
//! - [`disk`] — ext4 base and scratch images, read back without mounting.
//! - [`fake_github`] — a fake GitHub API for the GitHub App client's tests
//!   and `kiln serve`'s end-to-end tests.
//! - [`fake_broker`] — a fake of GitHub's runner scale-set service (scale
//!   sets, message sessions, the long-polled job queue, JIT runners), for
//!   the scale-set listener's tests and bench.
//! - [`github_schema`] — GitHub's schemas, which the fake's requests and
//!   answers are checked against.
//! - [`vm`] — [`TestVm::boot`]: one VM, one job, everything it produced.
//! - [`payload`] — a static hello-world ELF per architecture, for containers.
//! - [`netlab`] — throwaway network namespaces standing in for the host,
//!   the internet, a private LAN and the metadata service, for the network
//!   tests.
//!
//! Nothing is skipped: a missing prerequisite fails the test with the
//! command that installs it. (Tests that need root, such as the network
//! lab's, say so and return when not root.)

pub mod assets;
pub mod daemon;
pub mod disk;
pub mod events;
pub mod fake_broker;
pub mod fake_github;
pub mod github_schema;
pub mod job;
pub mod layer;
pub mod netlab;
pub mod payload;
pub mod prereq;
pub mod vm;

pub use job::shell_job;
pub use vm::{BakedImage, BootOptions, CancelWhen, Opening, Outcome, TestVm};
