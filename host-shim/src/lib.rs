//! `kiln`: the host side of Kiln. Every GitHub Actions job in a fresh microVM.
//!
//! - [`vmm`] — backends that boot one VM (QEMU, Firecracker through its jailer).

pub mod vmm;
