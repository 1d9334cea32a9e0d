//! What can go wrong with a Firecracker VM, each error naming the path or
//! value involved and, where there is one, what to do about it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use super::api::ApiError;
use crate::vmm::VmSpecError;

#[derive(Debug, thiserror::Error)]
pub enum FirecrackerError {
    #[error(transparent)]
    Spec(#[from] VmSpecError),
    #[error("Firecracker setting `{field}`: {problem}")]
    Settings {
        field: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Uid(#[from] crate::vmm::UidError),
    #[error("{path} already exists: VM {id:?} is running or was not cleaned up; remove it or use another id")]
    AlreadyExists { path: PathBuf, id: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not readable by the jail's uid and is hard-linked with its mode: make it world-readable (chmod o+r)")]
    NotReadable { path: PathBuf },
    #[error("{file} is on another filesystem than the jail {jail}: Firecracker's files are hard-linked into the jail, never copied (a copy of a disk costs gigabytes per VM); put the jailer's chroot base (`chroot_base`) on the filesystem of the images and the scratch disks")]
    OtherFilesystem { file: PathBuf, jail: PathBuf },
    #[error("socket path {path} is {len} bytes, more than the 107 Unix sockets allow: shorten the chroot base or the VM id")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("starting the jailer {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `said`: the end of what the jailer and Firecracker wrote (stderr and
    /// Firecracker's log), bounded and without control characters, as the
    /// files themselves go with the VM's teardown.
    #[error("Firecracker exited with {status} before its API socket answered; the jailer and Firecracker said: {said}")]
    ExitedEarly { status: ExitStatus, said: String },
    #[error("Firecracker's API socket {path} did not answer within {after:?}; the jailer and Firecracker said: {said}")]
    ApiSocketTimeout {
        path: PathBuf,
        after: Duration,
        said: String,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Listener(#[from] crate::vsock::ListenerError),
    #[error("waiting for Firecracker (pid {pid}): {source}")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("Firecracker (pid {pid}) was still alive {after:?} after SIGKILL")]
    KillTimeout { pid: u32, after: Duration },
    #[error("{path} names pid {recorded}, but the jailer Kiln started is pid {spawned}: run the jailer itself (no wrapper, no --new-pid-ns or --daemonize) so that Kiln can wait for and kill Firecracker")]
    PidMismatch {
        path: PathBuf,
        recorded: String,
        spawned: u32,
    },
    #[error("the VM has no Firecracker process")]
    NoProcess,
    #[error("teardown of VM {id:?} left something behind: {problems}")]
    Teardown { id: String, problems: String },
}
