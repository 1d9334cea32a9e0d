//! Puts a VM's files into its jail before the jailer runs: kernel, initramfs
//! and base image hard-linked, the scratch disk owned by the jail's uid, the
//! guest-to-host vsock listener, and the FIFO that carries Firecracker's own
//! log.
//!
//! Files are hard-linked, never copied: a copy of a base image or a 40 GiB
//! scratch disk across filesystems would cost gigabytes of I/O per VM
//! (holes included). A chroot base on another filesystem than the images
//! and disks is refused, at start ([`check_same_filesystem`]) and per VM.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::config;
use super::jailer::JailLayout;
use super::FirecrackerError;
use crate::vmm::VmSpec;
use crate::vsock::HybridListener;

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> FirecrackerError + 'a {
    move |source| FirecrackerError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), FirecrackerError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(io_err("changing the owner of", path))
}

fn chmod(path: &Path, mode: u32) -> Result<(), FirecrackerError> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(io_err("changing the mode of", path))
}

/// Creates `<instance dir>/root`. An existing instance directory belongs to
/// a running VM or to one that was not cleaned up: it is never reused.
pub(crate) fn create_jail(layout: &JailLayout, id: &str) -> Result<(), FirecrackerError> {
    let parent = layout
        .instance_dir()
        .parent()
        .ok_or_else(|| FirecrackerError::Io {
            action: "finding the parent of",
            path: layout.instance_dir().to_owned(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
    fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    match fs::create_dir(layout.instance_dir()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(FirecrackerError::AlreadyExists {
                path: layout.instance_dir().to_owned(),
                id: id.to_owned(),
            })
        }
        Err(e) => return Err(io_err("creating", layout.instance_dir())(e)),
    }
    fs::create_dir(layout.root()).map_err(io_err("creating", layout.root()))
}

/// Hard-links `src` to `dst`; another filesystem is an error that says
/// what to move.
fn link(src: &Path, dst: &Path) -> Result<(), FirecrackerError> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(FirecrackerError::OtherFilesystem {
            file: src.to_owned(),
            jail: dst.to_owned(),
        }),
        Err(e) => Err(io_err("hard-linking into the jail", src)(e)),
    }
}

/// Fails unless every path in `paths` is on the filesystem of `chroot_base`
/// (which must exist): what `kiln serve` checks at start for its images
/// and disk directory.
pub fn check_same_filesystem(chroot_base: &Path, paths: &[&Path]) -> Result<(), FirecrackerError> {
    let dev = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.dev())
            .map_err(io_err("inspecting", p))
    };
    let base = dev(chroot_base)?;
    for p in paths {
        if dev(p)? != base {
            return Err(FirecrackerError::OtherFilesystem {
                file: p.to_path_buf(),
                jail: chroot_base.to_owned(),
            });
        }
    }
    Ok(())
}

/// A read-only file for the VM. A hard link shares the original's owner and
/// mode, so the jailed uid can read it only if everyone may.
fn place_read_only(src: &Path, dst: &Path, uid: u32) -> Result<(), FirecrackerError> {
    link(src, dst)?;
    let meta = fs::metadata(dst).map_err(io_err("reading the mode of", dst))?;
    if meta.mode() & 0o004 == 0 && meta.uid() != uid {
        return Err(FirecrackerError::NotReadable {
            path: src.to_owned(),
        });
    }
    Ok(())
}

/// Lays the VM's files into the jail root under the names the API requests
/// use ([`config`]).
pub(crate) fn place_files(
    layout: &JailLayout,
    spec: &VmSpec,
    uid: u32,
    gid: u32,
) -> Result<(), FirecrackerError> {
    place_read_only(&spec.kernel, &layout.host_path(config::KERNEL), uid)?;
    if let Some(initrd) = &spec.initrd {
        place_read_only(initrd, &layout.host_path(config::INITRD), uid)?;
    }
    if let Some(base) = &spec.base_image {
        place_read_only(base, &layout.host_path(config::BASE_IMAGE), uid)?;
    }
    if let Some(scratch) = &spec.scratch_disk {
        // The scratch disk is this VM's alone, so the shared inode can be
        // handed to the jail's uid: Firecracker opens it read-write.
        let dst = layout.host_path(config::SCRATCH_DISK);
        link(scratch, &dst)?;
        chown(&dst, uid, gid)?;
        chmod(&dst, 0o600)?;
    }
    Ok(())
}

pub(crate) fn check_socket_path(path: &Path) -> Result<(), FirecrackerError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(FirecrackerError::SocketPathTooLong {
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

/// The Unix socket where Firecracker forwards the guest's connections to
/// host port `port`: `<jail root>/v.sock_<port>`.
pub(crate) fn guest_listener_path(layout: &JailLayout, port: u32) -> PathBuf {
    crate::vsock::listener::port_path(&layout.host_path(config::VSOCK_UDS), port)
}

/// Binds the guest-to-host listener, owned by the jail's uid so that the
/// jailed Firecracker may connect to it. It must exist before the guest
/// boots: Firecracker resets a guest's connection at once when nothing
/// listens.
pub(crate) fn bind_guest_listener(
    layout: &JailLayout,
    port: u32,
    uid: u32,
    gid: u32,
) -> Result<HybridListener, FirecrackerError> {
    let uds = layout.host_path(config::VSOCK_UDS);
    check_socket_path(&uds)?;
    let listener = HybridListener::bind(&uds, port)?;
    chown(listener.path(), uid, gid)?;
    chmod(listener.path(), 0o600)?;
    Ok(listener)
}

/// Makes the FIFO Firecracker's logger writes to and opens its read end.
/// Kiln opens it read-write: a FIFO's reader sees end of file whenever no
/// writer has it open, and Firecracker opens it only at `PUT /logger`.
pub(crate) fn open_log_fifo(
    layout: &JailLayout,
    uid: u32,
    gid: u32,
) -> Result<tokio::net::unix::pipe::Receiver, FirecrackerError> {
    let path = layout.host_path(config::VMM_LOG_FIFO);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io_err("creating the log FIFO", &path)(io::Error::from(e)))?;
    chown(&path, uid, gid)?;
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(io_err("opening the log FIFO", &path))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn long_socket_paths_are_refused_with_the_path() {
        let long = PathBuf::from(format!("/{}", "s".repeat(120)));
        match check_socket_path(&long) {
            Err(FirecrackerError::SocketPathTooLong { len: 121, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(check_socket_path(Path::new("/srv/jailer/firecracker/x/root/v.sock_1024")).is_ok());
    }

    #[test]
    fn second_jail_with_the_same_id_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let layout = JailLayout::new(base.path(), "firecracker", "vm-1");
        create_jail(&layout, "vm-1").unwrap();
        assert!(layout.root().is_dir());
        match create_jail(&layout, "vm-1") {
            Err(FirecrackerError::AlreadyExists { path, id }) => {
                assert_eq!(path, layout.instance_dir());
                assert_eq!(id, "vm-1");
            }
            other => panic!("{other:?}"),
        }
    }

    /// /dev/shm is a tmpfs; the temporary directory is not (it is where
    /// jails and disks live on a real host). Skipped where both are one.
    #[test]
    fn a_jail_on_another_filesystem_is_refused_not_copied_into() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let disk = tempfile::tempdir_in("/var/tmp").unwrap();
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        if dev(shm.path()) == dev(disk.path()) {
            eprintln!("skipped: /dev/shm and /var/tmp are one filesystem here");
            return;
        }
        let src = disk.path().join("scratch.ext4");
        let f = fs::File::create(&src).unwrap();
        f.set_len(1 << 30).unwrap();
        let dst = shm.path().join("scratch.ext4");
        match link(&src, &dst) {
            Err(FirecrackerError::OtherFilesystem { file, jail }) => {
                assert_eq!(file, src);
                assert_eq!(jail, dst);
            }
            other => panic!("{other:?}"),
        }
        assert!(!dst.exists(), "nothing copied");
        let err = check_same_filesystem(shm.path(), &[disk.path()]).unwrap_err();
        assert!(err.to_string().contains("chroot_base"), "{err}");
        check_same_filesystem(disk.path(), &[&src]).unwrap();
    }

    #[test]
    fn private_files_are_refused_when_hard_linked() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux");
        fs::write(&src, b"kernel").unwrap();
        fs::set_permissions(&src, Permissions::from_mode(0o600)).unwrap();
        let err = place_read_only(&src, &dir.path().join("kernel"), 4242).unwrap_err();
        assert!(
            matches!(err, FirecrackerError::NotReadable { ref path } if path == &src),
            "{err}"
        );
        fs::set_permissions(&src, Permissions::from_mode(0o644)).unwrap();
        place_read_only(&src, &dir.path().join("kernel2"), 4242).unwrap();
        assert_eq!(
            fs::metadata(&src).unwrap().ino(),
            fs::metadata(dir.path().join("kernel2")).unwrap().ino()
        );
    }
}
