//! `kiln`: the host side of Kiln. Every GitHub Actions job in a fresh microVM.
//!
//! - [`conversation`] — the exchange with one guest's kiln-init: Hello, Job, events, Cancel.
//! - [`doctor`] — `kiln doctor`: what this host lacks, and how to fix it.
//! - [`vmm`] — backends that boot one VM (QEMU, Firecracker through its jailer).
//! - [`vsock`] — Firecracker's hybrid vsock, host side: listeners and the CONNECT client.

pub mod conversation;
pub mod doctor;
pub mod vmm;
pub mod vsock;
