//! Why [`super::Jobs`] cannot start. Each names what to fix; `kiln serve`
//! stops with it before it takes a webhook.

use std::path::PathBuf;

use crate::github::GithubError;
use crate::vm::cid::CidError;
use crate::vm::dirs::DirsError;
use crate::vm::{BackendError, ImageError};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Jail {
        source: crate::vmm::firecracker::FirecrackerError,
    },
    #[error("the VMs' network: {0} (or set network = \"none\" on every pool)")]
    Network(crate::net::NetError),
    #[error("pool {pool:?}: {source} (or point the pool's `image` in {} at an image directory)", config.display())]
    Image {
        pool: String,
        config: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("pool {pool:?} has sudo = true, but {} names no accounts.sudo_gid: rebuild the image with `cargo xtask image`, or set sudo = false", manifest.display())]
    NoSudoGroup { pool: String, manifest: PathBuf },
    #[error("pool {pool:?} has sudo = false, but its image {} was built with --sudo (\"sudo\": \"always\" in {}), so every job would get sudo: rebuild the image without --sudo (`cargo xtask image`), point the pool at another image, or set sudo = true", image.display(), manifest.display())]
    SudoAlways {
        pool: String,
        image: PathBuf,
        manifest: PathBuf,
    },
    #[error("pool {pool:?}: its image {} is {image_arch} and this host {host_arch}, so its VMs would be emulated (many times slower): set emulate = true on the pool to allow that (for testing images), or bake the image for this host (`cargo xtask image --arch {}`)", image.display(), host_arch.debian())]
    ForeignArch {
        pool: String,
        image: PathBuf,
        image_arch: crate::vmm::Arch,
        host_arch: crate::vmm::Arch,
    },
    #[error("pool {pool:?}: its image is {image_arch}, which only QEMU emulates, and the backend is Firecracker: set backend = \"qemu\" or remove the pool")]
    EmulatedOnFirecracker {
        pool: String,
        image_arch: crate::vmm::Arch,
    },
    #[error("pool {pool:?}: memory_mib = {memory_mib} is more than a VM can have")]
    Memory { pool: String, memory_mib: u64 },
    #[error("GitHub App client: {0}")]
    Github(#[source] GithubError),
    #[error(transparent)]
    Journal(#[from] crate::store::StoreError),
    #[error("VM directories: {0}")]
    Dirs(#[from] DirsError),
    #[error("guest CIDs: {0}")]
    Cid(#[from] CidError),
    #[error("the VM backend: {0} (kiln serve runs the configured `backend`, Firecracker by default, and never falls back: install Firecracker and its jailer, or set backend = \"qemu\" on a development host)")]
    Backend(#[from] BackendError),
    #[error("job log directory {}: {source} (set KILN_STATE_DIR to a writable directory)", dir.display())]
    Logs {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{var}={value:?} must be an absolute path")]
    NotAbsolute { var: &'static str, value: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{select_backend, BackendChoice, BackendOptions};

    /// A host without Firecracker: serve's default backend fails with the
    /// fix, and nothing falls back to QEMU.
    #[tokio::test]
    async fn a_missing_firecracker_is_an_error_with_the_fix_not_a_fallback() {
        let mut opts =
            BackendOptions::from_env(BackendChoice::Firecracker, "/nonexistent/vmlinux".into())
                .expect("options");
        opts.firecracker.jailer = "/nonexistent/jailer".into();
        opts.firecracker.firecracker = "/nonexistent/firecracker".into();
        let err = SetupError::from(select_backend(&opts).await.expect_err("no Firecracker"));
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/jailer"), "{msg}");
        assert!(msg.contains("backend = \"qemu\""), "{msg}");
    }
}
