//! Room for scratch disks on the host. A scratch disk is sparse: it costs
//! what its job writes, up to its size. So that no job can fill the host's
//! disk (and with it the other VMs' disks, the logs, the state), a new disk
//! is made only when the disk directory's free space covers, beyond a
//! reserve, the new disk's whole size and what every disk already made may
//! still grow by.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The reserve's share of the disk directory's filesystem, and its cap.
const RESERVE_PERCENT: u64 = 5;
const RESERVE_MAX: u64 = 2 << 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error("not enough disk space in {dir} for a {want} MiB scratch disk: {free} MiB free, of which {held} MiB may still be written by the {disks} scratch disks in use and {reserve} MiB are kept in reserve; wait for a VM to end, free space, or lower the pool's scratch_gib")]
    NoRoom {
        dir: PathBuf,
        want: u64,
        free: u64,
        held: u64,
        reserve: u64,
        disks: usize,
    },
    #[error("reading the free space of {dir}: {detail}")]
    Statvfs { dir: PathBuf, detail: String },
}

/// The scratch disks alive on this host (shared by every VM of a process).
#[derive(Debug, Clone, Default)]
pub struct Budget {
    disks: Arc<Mutex<Vec<(PathBuf, u64)>>>,
}

/// Room held for one disk until dropped.
#[derive(Debug)]
pub struct Held {
    disks: Arc<Mutex<Vec<(PathBuf, u64)>>>,
    path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks.retain(|(p, _)| p != &self.path);
    }
}

impl Budget {
    /// Holds room for a `size`-byte disk at `path` in `dir`, or says why not.
    pub fn hold(&self, dir: &Path, path: &Path, size: u64) -> Result<Held, BudgetError> {
        let (free, total) = free_space(dir)?;
        let reserve = (total / 100 * RESERVE_PERCENT).min(RESERVE_MAX);
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        // What the disks in use may still write: their size less what they
        // hold already (which `free` has counted).
        let held: u64 = disks
            .iter()
            .map(|(p, size)| size.saturating_sub(allocated(p)))
            .sum();
        if free < reserve.saturating_add(held).saturating_add(size) {
            return Err(BudgetError::NoRoom {
                dir: dir.to_owned(),
                want: size >> 20,
                free: free >> 20,
                held: held >> 20,
                reserve: reserve >> 20,
                disks: disks.len(),
            });
        }
        disks.push((path.to_owned(), size));
        Ok(Held {
            disks: Arc::clone(&self.disks),
            path: path.to_owned(),
        })
    }
}

/// Bytes free for unprivileged writers (root's own reserve is not the
/// VMs'), and the filesystem's size.
fn free_space(dir: &Path) -> Result<(u64, u64), BudgetError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| BudgetError::Statvfs {
        dir: dir.to_owned(),
        detail: e.to_string(),
    })?;
    let unit = st.fragment_size();
    Ok((
        st.blocks_available().saturating_mul(unit),
        st.blocks().saturating_mul(unit),
    ))
}

/// Bytes `path` occupies on its filesystem (0 before it exists).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .map(|m| m.blocks().saturating_mul(512))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_in_use_hold_their_whole_size_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, total) = free_space(dir.path()).expect("statvfs");
        let reserve = (total / 100 * RESERVE_PERCENT).min(RESERVE_MAX);
        let room = free - reserve;
        let budget = Budget::default();
        // Most of the room, then more than what is left of it.
        let a = budget
            .hold(dir.path(), &dir.path().join("a"), room / 4 * 3)
            .expect("fits");
        let err = budget
            .hold(dir.path(), &dir.path().join("b"), room / 2)
            .expect_err("does not fit beside a");
        assert!(matches!(err, BudgetError::NoRoom { disks: 1, .. }), "{err}");
        assert!(err.to_string().contains("scratch_gib"), "{err}");
        drop(a);
        let b = budget
            .hold(dir.path(), &dir.path().join("b"), room / 2)
            .expect("fits once a is gone");
        drop(b);
    }
}
