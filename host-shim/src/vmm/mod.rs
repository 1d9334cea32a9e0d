//! Virtual machine monitors. Each backend starts one VM from a [`VmSpec`],
//! and the rest of the shim cannot tell them apart.
//!
//! - `qemu`: development, CI, hosts without Firecracker.
//! - `firecracker`: production, always through the jailer.

pub mod firecracker;
pub mod qemu;
pub mod spec;

pub use spec::{NetAttach, VmSpec, VmSpecError};
