//! Named network namespaces, made the way `ip netns add` makes them, so
//! operators see each VM's with `ip netns list` and the jailer joins one by
//! path (`--netns /run/netns/<name>`).
//!
//! A namespace is made on a thread of its own: `unshare(CLONE_NEWNET)` moves
//! only the calling thread, never the daemon's other threads (a tokio
//! worker must never change namespace). The thread then bind-mounts its
//! namespace on `/run/netns/<name>`, which keeps it alive after the thread
//! ends, and runs what must be made inside (the tap, a netlink socket:
//! both belong to the namespace they are created in) before it exits.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {path} exists already (left by a crashed Kiln? `ip netns del {name}` removes it)")]
    Exists { name: String, path: PathBuf },
    #[error("the namespace thread for {name} panicked")]
    Thread { name: String },
}

/// A named network namespace, alive until [`NetNs::delete`] (or until
/// the last process in it exits after that).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    /// Held open so the namespace can be joined (QEMU's `setns` before
    /// exec) without a path lookup.
    file: File,
}

impl NetNs {
    /// Makes namespace `name` under `dir` and runs `inside` in it, on the
    /// namespace's own thread, before returning. On error nothing is left.
    pub fn create<T, E, F>(dir: &Path, name: &str, inside: F) -> Result<(NetNs, T), CreateError<E>>
    where
        F: FnOnce() -> Result<T, E> + Send,
        T: Send,
        E: Send,
    {
        prepare_dir(dir).map_err(CreateError::Netns)?;
        let path = dir.join(name);
        std::thread::scope(|s| {
            s.spawn(|| create_on_this_thread(name, &path, inside))
                .join()
                .unwrap_or_else(|_| {
                    Err(CreateError::Netns(NetnsError::Thread {
                        name: name.to_owned(),
                    }))
                })
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` in this namespace, on a thread of its own.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Io {
                    action: "joining the network namespace",
                    path: self.path.clone(),
                    source: e.into(),
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Thread {
                    name: self.name.clone(),
                })
            })
        })
    }

    /// Removes the name. The kernel frees the namespace, and every tap and
    /// veth end inside it, once no process and no open file holds it.
    pub fn delete(self) -> Result<(), NetnsError> {
        let NetNs { path, file, .. } = self;
        drop(file);
        remove_mount(&path)
    }
}

/// What went wrong making a namespace: the namespace itself, or the work
/// done inside it.
#[derive(Debug)]
pub enum CreateError<E> {
    Netns(NetnsError),
    Inside(E),
}

fn create_on_this_thread<T, E>(
    name: &str,
    path: &Path,
    inside: impl FnOnce() -> Result<T, E>,
) -> Result<(NetNs, T), CreateError<E>> {
    let io = |action, source: io::Error| {
        CreateError::Netns(NetnsError::Io {
            action,
            path: path.to_owned(),
            source,
        })
    };
    // The mount point, as `ip netns add` makes it: an empty file.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(CreateError::Netns(NetnsError::Exists {
                name: name.to_owned(),
                path: path.to_owned(),
            }))
        }
        Err(e) => return Err(io("creating", e)),
    }
    let made = (|| {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| io("unsharing the network namespace for", e.into()))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| io("bind-mounting the namespace on", e.into()))?;
        let file = File::open(path).map_err(|e| io("opening", e))?;
        Ok(NetNs {
            name: name.to_owned(),
            path: path.to_owned(),
            file,
        })
    })();
    let ns = match made {
        Ok(ns) => ns,
        Err(e) => {
            let _ = remove_mount(path);
            return Err(e);
        }
    };
    match inside() {
        Ok(t) => Ok((ns, t)),
        Err(e) => {
            if let Err(d) = ns.delete() {
                tracing::warn!(error = %d, "removing a namespace after a failed setup");
            }
            Err(CreateError::Inside(e))
        }
    }
}

/// `/run/netns`, a shared mount as iproute2 makes it, so a namespace made
/// later is seen by mount namespaces made earlier.
fn prepare_dir(dir: &Path) -> Result<(), NetnsError> {
    let io = |action, source: io::Error| NetnsError::Io {
        action,
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, shared, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one, then shared.
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| io("bind-mounting on itself", e.into()))?;
            mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
                .map_err(|e| io("making a shared mount of", e.into()))
        }
        Err(e) => Err(io("making a shared mount of", e.into())),
    }
}

/// Unmounts and removes a namespace's name; a name already gone is fine.
fn remove_mount(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetnsError::Io {
                action: "unmounting",
                path: path.to_owned(),
                source: e.into(),
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Io {
            action: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Deletes the namespace named by `path` if it exists (for clean-up of
/// what a crashed process left).
pub fn delete_path(path: &Path) -> Result<(), NetnsError> {
    remove_mount(path)
}
