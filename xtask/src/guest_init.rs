//! Builds kiln-init, the guest's PID 1, as a static musl binary.
//!
//! It uses its own target directory (`<workspace>/target/guest`): the VM
//! tests call this from inside `cargo test`, whose cargo holds the lock on
//! the outer target directory for as long as the tests run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's target on x86_64 hosts.
pub const X86_64_TARGET: &str = "x86_64-unknown-linux-musl";

#[derive(Debug, thiserror::Error)]
pub enum GuestInitError {
    #[error("could not run {cargo}: {source}")]
    Spawn {
        cargo: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Rust target {target} is not installed: run `rustup target add {target}`")]
    MissingTarget { target: String },
    #[error("building kiln-init for {target} failed:\n{stderr}")]
    Build { target: String, stderr: String },
    #[error("cargo reported success but {path} does not exist")]
    NoBinary { path: PathBuf },
}

/// Where the guest build's artifacts go.
pub fn target_dir(workspace: &Path) -> PathBuf {
    workspace.join("target").join("guest")
}

/// The cargo profile kiln-init is built with (the workspace's Cargo.toml
/// says why it differs from `release`).
pub const GUEST_PROFILE: &str = "guest";

/// Builds kiln-init with [`GUEST_PROFILE`] for `target` and returns the binary's path.
pub fn build(workspace: &Path, target: &str) -> Result<PathBuf, GuestInitError> {
    // Inside `cargo test`, CARGO names the cargo that runs us: use the same one.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = target_dir(workspace);
    let out = Command::new(&cargo)
        .args([
            "build",
            "--profile",
            GUEST_PROFILE,
            "--quiet",
            "-p",
            "kiln-init",
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace)
        // The outer build's settings are not meant for the guest.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|source| GuestInitError::Spawn {
            cargo: cargo.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            return Err(GuestInitError::MissingTarget {
                target: target.to_owned(),
            });
        }
        return Err(GuestInitError::Build {
            target: target.to_owned(),
            stderr: tail(&stderr, 6000),
        });
    }
    let path = target_dir
        .join(target)
        .join(GUEST_PROFILE)
        .join("kiln-init");
    if path.is_file() {
        Ok(path)
    } else {
        Err(GuestInitError::NoBinary { path })
    }
}

fn tail(s: &str, max: usize) -> String {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(super::tail("abcdef", 3), "def");
        assert_eq!(super::tail("aé", 1), "");
        assert_eq!(super::tail("ab", 10), "ab");
    }
}
