//! The jailer's command line and the jail it builds.
//!
//! Kiln runs the jailer without `--daemonize` and without `--new-pid-ns`:
//! the jailer then sets up the chroot, cgroup and namespace and `exec`s
//! Firecracker in place, so the child Kiln spawned *is* Firecracker. Its exit
//! status reaches `wait()`, SIGKILL goes to a process Kiln has not reaped yet
//! (no pid-reuse race), and its stdout (the guest's serial console) is the
//! pipe Kiln reads. With `--new-pid-ns` the jailer exits right after cloning,
//! Firecracker is re-parented to init, its exit status is lost and it could
//! only be killed by a pid read from `firecracker.pid`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{FirecrackerError, FirecrackerSettings};
use crate::vmm::VmSpec;

/// Firecracker's API socket, as an absolute path inside the jail (the
/// jailer's default; passed explicitly so the two cannot drift apart).
pub const API_SOCKET_IN_JAIL: &str = "/run/firecracker.socket";

/// The cgroup v2 `cpu.max` period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The paths of one VM's jail on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailLayout {
    instance_dir: PathBuf,
    root: PathBuf,
}

impl JailLayout {
    /// `<chroot_base>/<exec_name>/<id>/root`, as the jailer builds it.
    pub fn new(chroot_base: &Path, exec_name: &str, id: &str) -> Self {
        let instance_dir = chroot_base.join(exec_name).join(id);
        let root = instance_dir.join("root");
        Self { instance_dir, root }
    }

    /// `<chroot_base>/<exec_name>/<id>`: removed whole at teardown.
    pub fn instance_dir(&self) -> &Path {
        &self.instance_dir
    }

    /// The jail's `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of a path inside the jail, given relative to its root
    /// (as Firecracker's API requests give them).
    pub fn host_path(&self, in_jail: &str) -> PathBuf {
        self.root.join(in_jail.trim_start_matches('/'))
    }

    pub fn api_socket(&self) -> PathBuf {
        self.host_path(API_SOCKET_IN_JAIL)
    }
}

/// The VM's cgroup: `<cgroup_root>/<parent_cgroup>/<id>`, made by the jailer.
pub fn cgroup_dir(settings: &FirecrackerSettings, id: &str) -> PathBuf {
    settings.cgroup_root.join(&settings.parent_cgroup).join(id)
}

/// The cgroup v2 files the jailer writes: the VM may use `vcpus` whole CPUs
/// and its memory plus the configured overhead.
pub fn cgroup_limits(spec: &VmSpec, memory_overhead_mib: u32) -> Vec<(&'static str, String)> {
    let quota = u64::from(spec.vcpus) * CPU_PERIOD_US;
    let memory_bytes = (u64::from(spec.memory_mib) + u64::from(memory_overhead_mib)) << 20;
    vec![
        ("cpu.max", format!("{quota} {CPU_PERIOD_US}")),
        ("memory.max", memory_bytes.to_string()),
    ]
}

/// The jailer's rule for `--id`: 1 to 64 ASCII letters, digits or hyphens.
/// The id also becomes a directory name and a cgroup name, so nothing else
/// may pass.
pub fn check_id(id: &str) -> Result<(), FirecrackerError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FirecrackerError::Spec(crate::vmm::VmSpecError::BadId {
            id: id.to_owned(),
        }))
    }
}

/// The jailer's arguments (without the program itself) for one VM.
pub fn jailer_args(
    settings: &FirecrackerSettings,
    spec: &VmSpec,
    uid: u32,
    gid: u32,
) -> Result<Vec<OsString>, FirecrackerError> {
    check_id(&spec.id)?;
    let mut args: Vec<OsString> = Vec::with_capacity(24);
    let mut push = |flag: &str, value: OsString| {
        args.push(flag.into());
        args.push(value);
    };
    push("--id", spec.id.clone().into());
    push("--exec-file", settings.firecracker.clone().into_os_string());
    push("--uid", uid.to_string().into());
    push("--gid", gid.to_string().into());
    push(
        "--chroot-base-dir",
        settings.chroot_base.clone().into_os_string(),
    );
    // The jailer defaults to cgroup v1; Kiln's hosts are cgroup v2 only.
    push("--cgroup-version", "2".into());
    push("--parent-cgroup", settings.parent_cgroup.clone().into());
    for (file, value) in cgroup_limits(spec, settings.memory_overhead_mib) {
        push("--cgroup", format!("{file}={value}").into());
    }
    if let Some(net) = &spec.net {
        push("--netns", net.netns.clone().into_os_string());
    }
    args.push("--".into());
    args.push("--api-sock".into());
    args.push(API_SOCKET_IN_JAIL.into());
    Ok(args)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "job-42".into(),
            dir: "/var/lib/kiln/vms/job-42".into(),
            kernel: "/var/lib/kiln/image/vmlinux".into(),
            arch: crate::vmm::Arch::host(),
            initrd: None,
            base_image: Some("/var/lib/kiln/image/rootfs.ext4".into()),
            scratch_disk: Some("/var/lib/kiln/vms/job-42/scratch.ext4".into()),
            kernel_args: vec!["kiln.modules=virtio_blk".into()],
            vcpus: 2,
            memory_mib: 2048,
            guest_cid: 3,
            net: None,
            console_limit_bytes: 1 << 20,
        }
    }

    #[test]
    fn argv_is_exactly_what_the_jailer_expects() {
        let settings = FirecrackerSettings::new("/usr/bin/jailer", "/usr/bin/firecracker");
        let mut s = spec();
        s.net = Some(crate::vmm::NetAttach {
            netns: "/run/netns/kiln-0123456789ab".into(),
            tap: "kt-0123456789ab".into(),
        });
        let args = jailer_args(&settings, &s, 900_007, 900_007).unwrap();
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--id",
                "job-42",
                "--exec-file",
                "/usr/bin/firecracker",
                "--uid",
                "900007",
                "--gid",
                "900007",
                "--chroot-base-dir",
                "/srv/jailer",
                "--cgroup-version",
                "2",
                "--parent-cgroup",
                "kiln",
                "--cgroup",
                "cpu.max=200000 100000",
                "--cgroup",
                "memory.max=2214592512",
                "--netns",
                "/run/netns/kiln-0123456789ab",
                "--",
                "--api-sock",
                "/run/firecracker.socket",
            ]
        );
    }

    #[test]
    fn no_netns_flag_without_a_network_and_limits_follow_the_spec() {
        let settings = FirecrackerSettings::new("/j", "/f");
        let mut s = spec();
        s.vcpus = 1;
        s.memory_mib = 128;
        let args = jailer_args(&settings, &s, 1, 1).unwrap();
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert!(!args.contains(&"--netns"));
        assert!(args.contains(&"cpu.max=100000 100000"));
        assert!(args.contains(&"memory.max=201326592"));
        // Kernel arguments and paths of disks never reach the jailer's argv.
        assert!(!args
            .iter()
            .any(|a| a.contains("kiln.") || a.contains("ext4")));
    }

    #[test]
    fn ids_are_checked_before_they_become_paths() {
        let settings = FirecrackerSettings::new("/j", "/f");
        for bad in ["", "../etc", "a/b", "with space", "ünï", &"x".repeat(65)] {
            let mut s = spec();
            s.id = bad.to_owned();
            assert!(
                jailer_args(&settings, &s, 1, 1).is_err(),
                "{bad:?} accepted"
            );
        }
        let mut s = spec();
        s.id = "A-1".repeat(21);
        assert!(jailer_args(&settings, &s, 1, 1).is_ok());
    }

    #[test]
    fn layout_matches_the_jailers() {
        let l = JailLayout::new(Path::new("/srv/jailer"), "firecracker", "job-42");
        assert_eq!(
            l.instance_dir(),
            Path::new("/srv/jailer/firecracker/job-42")
        );
        assert_eq!(l.root(), Path::new("/srv/jailer/firecracker/job-42/root"));
        assert_eq!(
            l.api_socket(),
            Path::new("/srv/jailer/firecracker/job-42/root/run/firecracker.socket")
        );
        assert_eq!(l.host_path("v.sock"), l.root().join("v.sock"));
        let settings = FirecrackerSettings::new("/j", "/f");
        assert_eq!(
            cgroup_dir(&settings, "job-42"),
            Path::new("/sys/fs/cgroup/kiln/job-42")
        );
    }
}
