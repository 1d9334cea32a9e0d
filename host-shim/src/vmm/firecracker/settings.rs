//! Host-wide settings of the Firecracker backend, checked once when the
//! backend is built so that a bad path fails at start-up, not at the first job.

use std::ops::RangeInclusive;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::FirecrackerError;

/// Where the binaries are, where jails and cgroups live, and the bounds on
/// every wait.
#[derive(Debug, Clone)]
pub struct FirecrackerSettings {
    /// The `jailer` binary, run as root.
    pub jailer: PathBuf,
    /// The `firecracker` binary; the jailer copies it into each jail. Its
    /// canonical file name names the jail directory.
    pub firecracker: PathBuf,
    /// The jailer's `--chroot-base-dir`: each VM's jail is
    /// `<chroot_base>/<firecracker file name>/<id>/root`. Put it on the same
    /// filesystem as the kernel and base image so they are hard-linked, not copied.
    pub chroot_base: PathBuf,
    /// Each VM runs as its own uid (gid = uid) taken from this range, which no
    /// other user on the host may use.
    pub uid_range: RangeInclusive<u32>,
    /// Where the uids' lock files are (`<runtime>/uids`), shared by every
    /// Kiln process on the host so none hands out a uid another holds.
    pub uid_lease_dir: PathBuf,
    /// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`). The jailer
    /// finds it in /proc/mounts by itself; Kiln needs it to remove the VM's
    /// cgroup at teardown.
    pub cgroup_root: PathBuf,
    /// The jailer's `--parent-cgroup`: VM cgroups are `<cgroup_root>/<parent_cgroup>/<id>`.
    pub parent_cgroup: String,
    /// Added to the guest memory for `memory.max`: the VMM's own memory and
    /// the page cache of its disk I/O.
    pub memory_overhead_mib: u32,
    /// How long the jailer may take until Firecracker's API socket answers.
    pub api_socket_timeout: Duration,
    /// How long one API request may take.
    pub api_request_timeout: Duration,
    /// How long Firecracker may take to die after SIGKILL before teardown
    /// reports it (a process stuck in the kernel cannot be killed sooner).
    pub kill_timeout: Duration,
    /// The most bytes of Firecracker's own log (and the jailer's stderr) kept.
    pub vmm_log_limit_bytes: u64,
}

impl FirecrackerSettings {
    /// Defaults for everything but the two binaries.
    pub fn new(jailer: impl Into<PathBuf>, firecracker: impl Into<PathBuf>) -> Self {
        Self {
            jailer: jailer.into(),
            firecracker: firecracker.into(),
            chroot_base: PathBuf::from("/srv/jailer"),
            uid_range: 900_000..=900_999,
            uid_lease_dir: PathBuf::from("/run/kiln/uids"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            parent_cgroup: "kiln".to_owned(),
            memory_overhead_mib: 64,
            api_socket_timeout: Duration::from_secs(5),
            api_request_timeout: Duration::from_secs(5),
            kill_timeout: Duration::from_secs(10),
            vmm_log_limit_bytes: 1 << 20,
        }
    }

    /// Checks the settings and resolves the name the jailer gives the jail
    /// directory (the canonical file name of the Firecracker binary).
    pub(crate) fn check(&self) -> Result<String, FirecrackerError> {
        let bad =
            |field: &'static str, problem: String| FirecrackerError::Settings { field, problem };
        if !self.jailer.is_file() {
            return Err(bad(
                "jailer",
                format!(
                    "{} is not a file; install Firecracker's jailer or fix the path",
                    self.jailer.display()
                ),
            ));
        }
        // The jailer canonicalizes --exec-file and names the jail after the
        // target's file name, so a symlink `firecracker -> firecracker-v1.x`
        // yields a `firecracker-v1.x/` jail directory.
        let exec = std::fs::canonicalize(&self.firecracker).map_err(|e| {
            bad(
                "firecracker",
                format!(
                    "{}: {e}; install Firecracker or fix the path",
                    self.firecracker.display()
                ),
            )
        })?;
        if !exec.is_file() {
            return Err(bad(
                "firecracker",
                format!("{} is not a file", exec.display()),
            ));
        }
        let exec_name = exec
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                bad(
                    "firecracker",
                    format!("{} has no UTF-8 file name", exec.display()),
                )
            })?
            .to_owned();
        if !exec_name.contains("firecracker") {
            return Err(bad(
                "firecracker",
                format!(
                    "{} is not named like Firecracker; the jailer only runs files whose name contains \"firecracker\"",
                    exec.display()
                ),
            ));
        }
        if !self.chroot_base.is_absolute() {
            return Err(bad(
                "chroot_base",
                format!("{} must be an absolute path", self.chroot_base.display()),
            ));
        }
        if !self.uid_lease_dir.is_absolute() {
            return Err(bad(
                "uid_lease_dir",
                format!("{} must be an absolute path", self.uid_lease_dir.display()),
            ));
        }
        if !self.cgroup_root.is_absolute() {
            return Err(bad(
                "cgroup_root",
                format!("{} must be an absolute path", self.cgroup_root.display()),
            ));
        }
        let parent = Path::new(&self.parent_cgroup);
        if self.parent_cgroup.is_empty()
            || !parent
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(bad(
                "parent_cgroup",
                format!(
                    "{:?} must be a relative path without `.` or `..`, like \"kiln\"",
                    self.parent_cgroup
                ),
            ));
        }
        if self.uid_range.is_empty() || *self.uid_range.start() == 0 {
            return Err(bad(
                "uid_range",
                format!(
                    "{:?} must be a non-empty range of unused uids above 0",
                    self.uid_range
                ),
            ));
        }
        Ok(exec_name)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn jail_name_comes_from_the_canonical_binary() {
        let dir = tempfile::tempdir().unwrap();
        let jailer = dir.path().join("jailer");
        std::fs::write(&jailer, b"").unwrap();
        let real = dir.path().join("firecracker-v1.12.0-x86_64");
        std::fs::write(&real, b"").unwrap();
        let link = dir.path().join("firecracker");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let settings = FirecrackerSettings::new(&jailer, &link);
        assert_eq!(settings.check().unwrap(), "firecracker-v1.12.0-x86_64");
    }

    #[test]
    fn bad_settings_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let jailer = dir.path().join("jailer");
        std::fs::write(&jailer, b"").unwrap();
        let fc = dir.path().join("firecracker");
        std::fs::write(&fc, b"").unwrap();
        let odd = dir.path().join("vmm");
        std::fs::write(&odd, b"").unwrap();
        let field = |s: FirecrackerSettings| match s.check() {
            Err(FirecrackerError::Settings { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(FirecrackerSettings::new(dir.path().join("nope"), &fc)),
            "jailer"
        );
        assert_eq!(
            field(FirecrackerSettings::new(&jailer, &odd)),
            "firecracker"
        );
        let mut s = FirecrackerSettings::new(&jailer, &fc);
        s.parent_cgroup = "../escape".into();
        assert_eq!(field(s), "parent_cgroup");
        let mut s = FirecrackerSettings::new(&jailer, &fc);
        s.uid_range = 0..=10;
        assert_eq!(field(s), "uid_range");
        let mut s = FirecrackerSettings::new(&jailer, &fc);
        s.chroot_base = "relative".into();
        assert_eq!(field(s), "chroot_base");
        assert!(FirecrackerSettings::new(&jailer, &fc).check().is_ok());
    }
}
