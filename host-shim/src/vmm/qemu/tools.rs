//! Finding the external programs the QEMU backend runs, with an error that
//! says how to install a missing one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::QemuError;

/// An external program and how to get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub name: &'static str,
    pub install: &'static str,
}

pub const QEMU: Tool = Tool {
    name: "qemu-system-x86_64",
    install: "apt-get install qemu-system-x86",
};

pub const VHOST_VSOCK: Tool = Tool {
    name: "vhost-device-vsock",
    install: "cargo install vhost-device-vsock",
};

/// Resolves `program` (a bare name searched in `PATH` and then in `extra`,
/// or a path used as is) to an executable file.
pub fn find(tool: Tool, program: &Path, extra: &[PathBuf]) -> Result<PathBuf, QemuError> {
    if program.components().count() > 1 {
        return if is_executable(program) {
            Ok(program.to_owned())
        } else {
            Err(QemuError::ToolMissing {
                tool: tool.name,
                searched: program.display().to_string(),
                install: tool.install,
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path_var)
        .chain(extra.iter().cloned())
        .collect();
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| QemuError::ToolMissing {
            tool: tool.name,
            searched: join_dirs(&dirs),
            install: tool.install,
        })
}

/// Where `cargo install` puts binaries, which is often not on `PATH` for
/// services and test runners.
pub fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    let joined: OsString = std::env::join_paths(dirs).unwrap_or_default();
    joined.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_tool_names_the_install_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = find(
            VHOST_VSOCK,
            Path::new("kiln-no-such-program"),
            &[dir.path().to_owned()],
        )
        .expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("cargo install vhost-device-vsock"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn finds_executables_in_extra_dirs_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("kiln-fake-tool");
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        let err = find(QEMU, Path::new("kiln-fake-tool"), &[dir.path().to_owned()])
            .expect_err("not executable yet");
        assert!(err.to_string().contains("apt-get install qemu-system-x86"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let found =
            find(QEMU, Path::new("kiln-fake-tool"), &[dir.path().to_owned()]).expect("found");
        assert_eq!(found, p);
        assert_eq!(find(QEMU, &p, &[]).expect("by path"), p);
    }
}
