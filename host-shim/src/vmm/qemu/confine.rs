//! A confined QEMU (what `kiln serve` runs): the VM's QEMU and its
//! vhost-device-vsock run as an unprivileged uid of their own, leased per
//! VM like a Firecracker jail's ([`crate::vmm::UidPool`], the same range
//! and lock files, so no two VMs of either backend share one), with
//! `no_new_privs`, in a cgroup of their own with the VM's CPU and memory
//! limits ([`crate::vmm::cgroup`]), and QEMU under its seccomp filter
//! ([`SANDBOX`]). Their environment is empty but for `PATH` as always.
//!
//! The uid reaches only what the VM needs, and nothing on the way to it:
//! - the VM directory is the processes' working directory (entered as
//!   root before the uid changes) and is handed to the uid, so the vhost
//!   and vsock sockets are named relative to it, whatever the modes of
//!   the directories above;
//! - the kernel, initrd and disks are opened by kiln and named to QEMU as
//!   `/proc/self/fd/N`, so only the files' own modes count: the scratch
//!   disk is handed to the uid, the shared read-only files must be
//!   readable by others (as for Firecracker's jail);
//! - `/dev/kvm` through its group (Debian's `kvm`), when KVM is used.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::{Accel, QemuError};
use crate::vmm::cgroup::{CgroupSettings, Limits, VmCgroup};
use crate::vmm::firecracker::FirecrackerSettings;
use crate::vmm::{UidLease, UidPool, VmSpec};

/// QEMU's seccomp filter with every deny option: no obsolete system calls,
/// no setuid or capabilities, no fork or exec, no scheduler or affinity
/// changes.
pub const SANDBOX: [&str; 2] = [
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
];

/// QEMU's memory beyond the guest's: its own heap, device state, I/O
/// buffers.
pub const MEMORY_OVERHEAD_MIB: u32 = 256;

/// Under TCG, the most its translation cache may take (QEMU's default
/// `tb-size` on 64-bit hosts).
pub const TCG_CACHE_MIB: u32 = 1024;

/// How `kiln serve` confines QEMU VMs.
#[derive(Debug, Clone)]
pub struct Confinement {
    pub uids: UidPool,
    pub cgroup: CgroupSettings,
}

impl Confinement {
    /// The uids and cgroup parent Firecracker's jails use: one range and
    /// one set of lock files for both backends.
    pub fn like_jails(fc: &FirecrackerSettings) -> Self {
        Confinement {
            uids: UidPool::new(&fc.uid_lease_dir, fc.uid_range.clone()),
            cgroup: CgroupSettings::new(fc.parent_cgroup.clone()),
        }
    }
}

/// One VM's confinement: its uid, cgroup and open files. The cgroup (and
/// every process left in it) goes when this is dropped or
/// [`Confined::remove`]d, the uid lease with it.
pub(super) struct Confined {
    dir: PathBuf,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    cgroup: Option<VmCgroup>,
    /// Open until QEMU has started: it reads them by `/proc/self/fd/N`,
    /// and the tap by its descriptor.
    files: Vec<File>,
    /// The VM's tap, attached by kiln in the VM's namespace: the uid may
    /// not open `/dev/net/tun` (mode 0600 on some hosts).
    tap_fd: Option<RawFd>,
    _lease: UidLease,
}

impl Confined {
    /// Leases a uid, hands it the VM directory and the scratch disk, opens
    /// the files QEMU reads and makes the cgroup. Returns the spec as
    /// QEMU sees it: the files as `/proc/self/fd/N`, the directory as `.`.
    pub fn prepare(
        how: &Confinement,
        spec: &VmSpec,
        accel: Accel,
        kvm_device: &Path,
    ) -> Result<(Confined, VmSpec), QemuError> {
        let lease = how.uids.acquire()?;
        let (uid, gid) = (lease.uid(), lease.gid());
        let groups = match accel {
            Accel::Kvm => kvm_groups(kvm_device)?,
            Accel::Tcg => Vec::new(),
        };
        let mut c = Confined {
            dir: spec.dir.clone(),
            uid,
            gid,
            groups,
            cgroup: None,
            files: Vec::new(),
            tap_fd: None,
            _lease: lease,
        };
        let mut seen = spec.clone();
        seen.dir = PathBuf::from(".");
        seen.kernel = c.open_shared("guest kernel", &spec.kernel)?;
        seen.initrd = match &spec.initrd {
            Some(p) => Some(c.open_shared("initrd", p)?),
            None => None,
        };
        seen.base_image = match &spec.base_image {
            Some(p) => Some(c.open_shared("base image", p)?),
            None => None,
        };
        seen.scratch_disk = match &spec.scratch_disk {
            Some(p) => {
                chown(p, uid, gid)?;
                Some(c.open(p, true)?)
            }
            None => None,
        };
        if let Some(net) = &spec.net {
            let tap = open_tap(&net.netns, &net.tap)?;
            c.tap_fd = Some(tap.as_raw_fd());
            c.files.push(tap);
        }
        c.hand_over_dir()?;
        let memory_mib = spec.memory_mib
            + MEMORY_OVERHEAD_MIB
            + if accel == Accel::Tcg {
                TCG_CACHE_MIB
            } else {
                0
            };
        let limits = Limits {
            cpus: spec.vcpus,
            memory_bytes: u64::from(memory_mib) << 20,
        };
        let cgroup = VmCgroup::create(&how.cgroup, &spec.id, limits)?;
        if !cgroup.unapplied().is_empty() {
            tracing::warn!(vm = %spec.id, missing = ?cgroup.unapplied(), "no cgroup controller on this host carries these VM limits; the VM's own size bounds it");
        }
        c.cgroup = Some(cgroup);
        Ok((c, seen))
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The descriptor QEMU is to use for its tap, if the VM has one.
    pub fn tap_fd(&self) -> Option<RawFd> {
        self.tap_fd
    }

    /// The VM's cgroup v2 directory.
    pub fn cgroup_dir(&self) -> Option<&Path> {
        self.cgroup.as_ref().and_then(VmCgroup::dir)
    }

    /// `path` (in the VM directory) as the confined processes name it.
    pub fn local(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.dir) {
            Ok(rest) => Path::new(".").join(rest),
            Err(_) => path.to_owned(),
        }
    }

    /// Makes `command` start in the VM directory, in the cgroup, as the
    /// uid; with `files`, QEMU inherits the files it names by fd.
    pub fn apply(&self, command: &mut Command, files: bool) {
        command.current_dir(&self.dir);
        let joiner = self.cgroup.as_ref().map(VmCgroup::joiner);
        let fds: Vec<RawFd> = if files {
            self.files.iter().map(AsRawFd::as_raw_fd).collect()
        } else {
            Vec::new()
        };
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only system calls (write, fcntl, setgroups, setgid,
        // setuid, prctl) on values moved in before the fork; it allocates
        // nothing. The fds stay open in the parent (`self.files`) until
        // QEMU has started.
        unsafe {
            command.pre_exec(move || {
                if let Some(j) = &joiner {
                    j.join()?;
                }
                for fd in &fds {
                    check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
                }
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                Ok(())
            });
        }
    }

    /// QEMU has its own descriptors now.
    pub fn close_files(&mut self) {
        self.files.clear();
    }

    /// Kills whatever is left in the VM's cgroup and removes it.
    pub fn remove(mut self) {
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "removing the VM's cgroup");
            }
        }
    }

    /// A shared read-only file: must be readable by others.
    fn open_shared(&mut self, what: &'static str, path: &Path) -> Result<PathBuf, QemuError> {
        let meta = std::fs::metadata(path).map_err(|source| io("reading", path, source))?;
        if meta.mode() & 0o004 == 0 {
            return Err(QemuError::NotReadable {
                what,
                path: path.to_owned(),
            });
        }
        self.open(path, false)
    }

    fn open(&mut self, path: &Path, write: bool) -> Result<PathBuf, QemuError> {
        let file = File::options()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|source| io("opening", path, source))?;
        let named = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        self.files.push(file);
        Ok(named)
    }

    /// The VM directory and the sockets kiln bound in it (the guest
    /// listeners, which vhost-device-vsock connects to) go to the uid.
    fn hand_over_dir(&self) -> Result<(), QemuError> {
        chown(&self.dir, self.uid, self.gid)?;
        let entries =
            std::fs::read_dir(&self.dir).map_err(|source| io("reading", &self.dir, source))?;
        for entry in entries.flatten() {
            let is_socket = entry
                .file_type()
                .map(|t| std::os::unix::fs::FileTypeExt::is_socket(&t))
                .unwrap_or(false);
            if is_socket {
                chown(&entry.path(), self.uid, self.gid)?;
            }
        }
        Ok(())
    }
}

/// Attaches to tap `name` in the namespace at `netns`, on a thread of its
/// own (a tap is found in the namespace of the thread that opens
/// `/dev/net/tun`).
fn open_tap(netns: &Path, name: &str) -> Result<File, QemuError> {
    let ns = File::open(netns).map_err(|source| io("opening", netns, source))?;
    let tap = name.to_owned();
    let attached = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `ns` is an open network namespace file; setns moves
            // only this thread, which ends right after the attach.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::net::tap::attach(&tap)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the tap thread panicked")))
    });
    attached.map_err(|source| QemuError::Io {
        action: "attaching to the VM's tap in",
        path: netns.join(name),
        source,
    })
}

/// The supplementary group that opens `/dev/kvm` for an unprivileged uid.
fn kvm_groups(device: &Path) -> Result<Vec<libc::gid_t>, QemuError> {
    let meta = std::fs::metadata(device).map_err(|source| io("reading", device, source))?;
    let mode = meta.mode();
    if mode & 0o006 == 0o006 {
        Ok(Vec::new())
    } else if mode & 0o060 == 0o060 && meta.gid() != 0 {
        Ok(vec![meta.gid()])
    } else {
        Err(QemuError::KvmNotShared {
            device: device.to_owned(),
            mode: mode & 0o777,
        })
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), QemuError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|source| io("handing to the VM's uid", path, source))
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> QemuError {
    QemuError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_for_others_needs_no_group_and_a_private_kvm_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").expect("write");
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert_eq!(kvm_groups(&dev).expect("open to all"), Vec::<u32>::new());
        std::os::unix::fs::chown(&dev, None, Some(4242)).expect("chgrp");
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o660)).expect("chmod");
        assert_eq!(kvm_groups(&dev).expect("group"), vec![4242]);
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = kvm_groups(&dev).expect_err("private");
        assert!(err.to_string().contains("chmod 660"), "{err}");
    }

    #[test]
    fn paths_in_the_vm_directory_are_named_relative_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = UidPool::new(dir.path().join("uids"), 100_300..=100_309);
        let c = Confined {
            dir: PathBuf::from("/run/kiln/vms/abc"),
            uid: 1,
            gid: 1,
            groups: vec![],
            cgroup: None,
            files: vec![],
            tap_fd: None,
            _lease: pool.acquire().expect("lease"),
        };
        assert_eq!(
            c.local(Path::new("/run/kiln/vms/abc/vhost.sock")),
            Path::new("./vhost.sock")
        );
        assert_eq!(
            c.local(Path::new("/elsewhere/x")),
            Path::new("/elsewhere/x")
        );
    }
}
