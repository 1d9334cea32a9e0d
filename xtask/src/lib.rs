//! Build automation behind `cargo xtask`, also used by the VM tests to get
//! a guest kernel, kiln-init and an initramfs.
//!
//! - [`bench`] — `cargo xtask bench`: benchmarks beside their baselines.
//! - [`ci`] — the test command CI and the README run.
//! - [`deb`] — `cargo xtask deb`: the Debian package of `kiln`.
//! - [`demo`] — `cargo xtask demo`: the quick start, a job in a fresh microVM.
//! - [`guest_init`] — build kiln-init statically for the guest.
//! - [`guest_kernel`] — Debian's cloud kernel, fetched into a cache.
//! - [`kmod`] — which modules a guest needs, dependencies first.
//! - [`initramfs`] — a newc cpio with kiln-init and modules.
//! - [`image`] — `cargo xtask image`: the guest rootfs.
//! - [`kernel_build`] — `cargo xtask kernel`: the production kernel.

pub mod bench;
pub mod ci;
pub mod deb;
pub mod demo;
pub mod guest_init;
pub mod guest_kernel;
pub mod image;
pub mod initramfs;
pub mod kernel_build;
pub mod kmod;

/// The workspace's root directory (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    let xtask_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| xtask_dir.to_path_buf())
}

/// Whether this process runs as root (`/proc/self` belongs to the effective uid).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
