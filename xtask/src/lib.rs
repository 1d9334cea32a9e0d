//! Build automation behind `cargo xtask`, also used by the VM tests to get
//! a guest kernel, kiln-init and an initramfs.
//!
//! - [`ci`] — the test command CI and the README run.
//! - [`guest_init`] — build kiln-init statically for the guest.
//! - [`guest_kernel`] — Debian's cloud kernel, fetched into a cache.
//! - [`kmod`] — which modules a guest needs, dependencies first.
//! - [`initramfs`] — a newc cpio with kiln-init and modules.
//! - [`image`] — `cargo xtask image`: the guest rootfs.
//! - [`kernel_build`] — `cargo xtask kernel`: the production kernel.

pub mod ci;
pub mod guest_init;
pub mod guest_kernel;
pub mod image;
pub mod initramfs;
pub mod kernel_build;
pub mod kmod;
