//! Guest CIDs, unique on the host across processes.
//!
//! A CID is held by an exclusive `flock` on `<cids>/<cid>`. The lock dies
//! with its holder, so a crashed shim never strands a CID. Releasing
//! unlinks the file while still holding the lock; a process that opened the
//! old file just before may then get the lock on an unlinked inode, so every
//! lock is checked to still be the file at that path before it counts.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::lease::{Lease, LeaseDir, LeaseError};

/// CIDs handed out by default: above the reserved ones (0-2) and anything
/// a person picks by hand for experiments.
pub const DEFAULT_RANGE: RangeInclusive<u32> = 1000..=0x7fff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum CidError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("CID range {start}..={end} is unusable: CIDs 0 to 2 are reserved")]
    BadRange { start: u32, end: u32 },
}

/// Hands out CIDs from a range, coordinating through lock files in `dir`.
#[derive(Debug, Clone)]
pub struct CidAllocator {
    leases: LeaseDir,
}

/// A CID held until dropped.
#[derive(Debug)]
pub struct CidLease {
    cid: u32,
    lease: Lease,
}

impl CidAllocator {
    pub fn new(dir: impl Into<PathBuf>, range: RangeInclusive<u32>) -> Result<Self, CidError> {
        if *range.start() < 3 || range.is_empty() {
            return Err(CidError::BadRange {
                start: *range.start(),
                end: *range.end(),
            });
        }
        let wide = u64::from(*range.start())..=u64::from(*range.end());
        Ok(CidAllocator {
            leases: LeaseDir::new("guest CID", dir, wide),
        })
    }

    /// Leases a free CID (see [`LeaseDir::lease`]).
    pub fn lease(&self) -> Result<CidLease, CidError> {
        let lease = self.leases.lease()?;
        // The range is u32, so every number in it is.
        let cid = u32::try_from(lease.number()).unwrap_or(u32::MAX);
        Ok(CidLease { cid, lease })
    }
}

impl CidLease {
    pub fn cid(&self) -> u32 {
        self.cid
    }

    pub fn path(&self) -> &Path {
        self.lease.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The lock files' semantics are `crate::lease`'s tests.
    #[test]
    fn cids_come_from_the_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let alloc = CidAllocator::new(dir.path().join("cids"), 3..=10).expect("alloc");
        let leases: Vec<CidLease> = (0..8).map(|_| alloc.lease().expect("lease")).collect();
        let mut cids: Vec<u32> = leases.iter().map(CidLease::cid).collect();
        cids.sort_unstable();
        assert_eq!(cids, (3..=10).collect::<Vec<_>>());
        let err = alloc.lease().expect_err("exhausted");
        assert!(err.to_string().contains("no free guest CID"), "{err}");
    }

    #[test]
    fn reserved_cids_are_refused() {
        assert!(matches!(
            CidAllocator::new("/tmp", 2..=9),
            Err(CidError::BadRange { .. })
        ));
    }
}
