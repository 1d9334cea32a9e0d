//! Installs the Debian root with `mmdebstrap`, and turns its failures into
//! messages that name the cause.
//!
//! Another architecture's root (arm64 on an x86 host) needs the host to run
//! its binaries (maintainer scripts run in the root): qemu-user-static
//! registered with binfmt_misc. `arch-test` says whether it can, before
//! mmdebstrap starts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::mirror::Mirrors;
use super::progress::Step;

/// What to install.
#[derive(Debug, Clone)]
pub struct Bootstrap<'a> {
    pub suite: &'a str,
    /// Debian architecture name (`amd64`, `arm64`).
    pub arch: &'a str,
    pub mirrors: &'a Mirrors,
    pub packages: &'a [String],
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("mmdebstrap is not installed (apt-get install mmdebstrap): {0}")]
    Missing(std::io::Error),
    #[error("cannot reach the Debian mirror {mirrors}: {detail} (check the URL and the network, or pass --mirror URL)")]
    MirrorUnreachable { mirrors: String, detail: String },
    #[error("package(s) not found in {suite} on {mirrors}: {} (fix rootfs/packages.txt)", names.join(", "))]
    PackageNotFound {
        names: Vec<String>,
        suite: String,
        mirrors: String,
    },
    #[error("mmdebstrap failed ({status}); last lines of {log}:\n{tail}")]
    Failed {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("this host cannot run {arch} binaries, which installing an {arch} root needs ({detail}): \
             `apt-get install qemu-user-static binfmt-support arch-test`, and if binfmt_misc is not \
             mounted, `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && update-binfmts --enable`")]
    ForeignArch { arch: String, detail: String },
    #[error("cannot write the mmdebstrap log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Bootstrap<'_> {
    /// Installs into `root`, which must not exist or be empty. The full log
    /// goes to `log`.
    pub fn run(&self, root: &Path, log: &Path, step: &Step) -> Result<(), BootstrapError> {
        if self.arch != super::host_debian_arch() {
            can_run(self.arch)?;
        }
        let log_err = |source| BootstrapError::Log {
            path: log.to_owned(),
            source,
        };
        let mut log_file = std::fs::File::create(log).map_err(log_err)?;
        let stdout = log_file.try_clone().map_err(log_err)?;
        let mut cmd = Command::new("mmdebstrap");
        cmd.arg("--variant=minbase")
            .arg(format!("--architectures={}", self.arch))
            .arg("--format=directory")
            // Everything the guest needs is listed: no surprise extras (such
            // as fuse-overlayfs, which podman recommends).
            .arg("--aptopt=APT::Install-Recommends \"false\"")
            // Documentation is dead weight in a CI guest; copyright files
            // stay as the licences require. These also stay in effect for
            // packages a job installs later.
            .arg("--dpkgopt=path-exclude=/usr/share/man/*")
            .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
            .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
            .arg(format!("--include={}", self.packages.join(",")))
            .arg(self.suite)
            .arg(root)
            .args(self.mirrors.apt_lines(self.suite))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(BootstrapError::Missing)?;
        let mut text = String::new();
        if let Some(stderr) = child.stderr.take() {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                writeln!(log_file, "{line}").map_err(log_err)?;
                if let Some(info) = line.strip_prefix("I: ") {
                    step.message(info);
                }
                text.push_str(&line);
                text.push('\n');
            }
        }
        let status = child.wait().map_err(log_err)?;
        if status.success() {
            return Ok(());
        }
        Err(self.classify(status, &text, log))
    }

    fn classify(&self, status: std::process::ExitStatus, log: &str, path: &Path) -> BootstrapError {
        let mirrors = self.mirrors.urls().join(", ");
        let missing = missing_packages(log);
        if !missing.is_empty() {
            return BootstrapError::PackageNotFound {
                names: missing,
                suite: self.suite.to_owned(),
                mirrors,
            };
        }
        if let Some(detail) = unreachable_detail(log) {
            return BootstrapError::MirrorUnreachable { mirrors, detail };
        }
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        BootstrapError::Failed {
            status,
            log: path.to_owned(),
            tail,
        }
    }
}

/// Whether this host runs `arch`'s binaries (`arch-test ARCH`).
pub fn can_run(arch: &str) -> Result<(), BootstrapError> {
    let fail = |detail: String| BootstrapError::ForeignArch {
        arch: arch.to_owned(),
        detail,
    };
    let out = Command::new("arch-test")
        .arg(arch)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("arch-test: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stdout);
    Err(fail(format!("arch-test: {}", said.trim())))
}

/// Names apt could not find: `E: Unable to locate package X` and
/// `E: Package 'X' has no installation candidate`.
pub fn missing_packages(log: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in log.lines() {
        let name = line
            .split("Unable to locate package ")
            .nth(1)
            .map(str::trim)
            .or_else(|| {
                line.split("E: Package '")
                    .nth(1)
                    .filter(|_| line.contains("has no installation candidate"))
                    .and_then(|r| r.split('\'').next())
            });
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_owned());
            }
        }
    }
    names
}

/// apt's own words for a mirror it could not use, when that is why the
/// build failed.
pub fn unreachable_detail(log: &str) -> Option<String> {
    const SIGNS: &[&str] = &[
        "Could not connect to",
        "Failed to fetch",
        "Temporary failure resolving",
        "Could not resolve",
        "Connection failed",
        "Connection timed out",
        "Unable to connect to",
        "No route to host",
    ];
    let hit = log.lines().find(|l| SIGNS.iter().any(|s| l.contains(s)))?;
    Some(
        hit.trim()
            .trim_start_matches("E: ")
            .trim_start_matches("Err:")
            .trim()
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_packages_in_apt_output() {
        let log = "Reading package lists...\nE: Unable to locate package kiln-nope\n\
                   E: Package 'oldpkg' has no installation candidate\n\
                   E: Unable to locate package kiln-nope\n";
        assert_eq!(missing_packages(log), ["kiln-nope", "oldpkg"]);
        assert!(missing_packages("I: all fine\n").is_empty());
    }

    #[test]
    fn recognises_an_unreachable_mirror() {
        let log = "Err:1 http://127.0.0.1:9 bookworm InRelease\n  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n";
        let d = unreachable_detail(log).expect("detected");
        assert!(d.contains("Connection refused"), "{d}");
        assert!(unreachable_detail("E: dpkg was interrupted\n").is_none());
    }
}
