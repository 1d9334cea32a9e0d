//! `kiln`: the host side of Kiln. Every GitHub Actions job in a fresh microVM.
//!
//! - [`cli`] — the `kiln` command line: `run`, `doctor`.
//! - [`conversation`] — the exchange with one guest's kiln-init: Hello, Job, events, Cancel.
//! - [`disk`] — per-VM scratch disks.
//! - [`doctor`] — `kiln doctor`: what this host lacks, and how to fix it.
//! - [`vm`] — one VM's life, the same for both backends: start, job, teardown.
//! - [`vmm`] — backends that boot one VM (QEMU, Firecracker through its jailer).
//! - [`vsock`] — Firecracker's hybrid vsock, host side: listeners and the CONNECT client.

pub mod cli;
pub mod conversation;
pub mod disk;
pub mod doctor;
pub mod vm;
pub mod vmm;
pub mod vsock;
