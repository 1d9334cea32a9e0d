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

/// The aarch64 QEMU: `virt` machines, under KVM on an arm64 host, emulated elsewhere.
pub const QEMU_AARCH64: Tool = Tool {
    name: "qemu-system-aarch64",
    install: "apt-get install qemu-system-arm",
};

pub const VHOST_VSOCK: Tool = Tool {
    name: "vhost-device-vsock",
    install: "cargo install --root /usr/local vhost-device-vsock",
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

/// [`find`] for a confined VM, whose uid must be able to run the tool:
/// the first candidate that every user may run (the file and every
/// directory above it executable by others). `/root/.cargo/bin`, where
/// `cargo install` puts tools for root, is not.
pub fn find_for_everyone(
    tool: Tool,
    program: &Path,
    extra: &[PathBuf],
) -> Result<PathBuf, QemuError> {
    let candidates: Vec<PathBuf> = if program.components().count() > 1 {
        vec![program.to_owned()]
    } else {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .chain(extra.iter().cloned())
            .map(|d| d.join(program))
            .collect()
    };
    let found: Vec<&PathBuf> = candidates.iter().filter(|p| is_executable(p)).collect();
    if let Some(p) = found.iter().find(|p| blocker(p).is_none()) {
        return Ok((*p).clone());
    }
    match found.first() {
        Some(p) => Err(QemuError::NotForEveryone {
            tool: tool.name,
            path: (*p).clone(),
            blocker: blocker(p).unwrap_or_default(),
            install: tool.install,
        }),
        None => find(tool, program, extra),
    }
}

/// The first of `p` and the directories above it that others may not
/// execute (search), if any.
fn blocker(p: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    p.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| {
            std::fs::metadata(a)
                .map(|m| m.permissions().mode() & 0o001 == 0)
                .unwrap_or(true)
        })
        .map(Path::to_path_buf)
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
    #[test]
    fn a_tool_behind_a_private_directory_is_not_for_everyone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("private");
        std::fs::create_dir(&private).expect("mkdir");
        let tool = private.join("vhost-device-vsock");
        std::fs::write(&tool, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let err = find_for_everyone(VHOST_VSOCK, &tool, &[]).expect_err("private");
        let msg = err.to_string();
        assert!(
            msg.contains(&private.display().to_string()) && msg.contains("--root /usr/local"),
            "{msg}"
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).expect("chmod");
        // Every directory above the tempdir (/tmp, /) is searchable by all.
        assert_eq!(
            find_for_everyone(VHOST_VSOCK, &tool, &[]).expect("shared"),
            tool
        );
    }

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
        assert!(
            msg.contains("cargo install --root /usr/local vhost-device-vsock"),
            "{msg}"
        );
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
