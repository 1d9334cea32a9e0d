//! Copies a sparse file as a sparse file: a reflink where the filesystem
//! shares blocks (XFS, btrfs), else only its data ranges, found with
//! SEEK_DATA/SEEK_HOLE. A fresh ext4 of 40 GiB is a few MiB of metadata
//! spread over the file; copying only those takes milliseconds.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// How `dst` got `src`'s contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloned {
    /// The filesystem shares the blocks (copy-on-write).
    Reflink,
    /// The data ranges were copied; holes stay holes.
    Sparse,
}

/// Makes the empty `dst` a copy of `src`, holes included.
pub fn clone_sparse(src: &File, dst: &File) -> io::Result<Cloned> {
    // SAFETY: FICLONE takes the source fd as its argument; both fds are
    // open for the whole call.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        return Ok(Cloned::Reflink);
    }
    let meta = src.metadata()?;
    let ranges = data_ranges(src, meta.len())?;
    let data: u64 = ranges.iter().map(|(_, n)| n).sum();
    let allocated = meta.blocks() * 512;
    if !reports_holes(data, allocated) {
        return Err(io::Error::other(format!(
            "the filesystem does not report holes ({data} bytes of data for {allocated} \
             allocated): a copy would write every byte"
        )));
    }
    dst.set_len(meta.len())?;
    let mut buf = Vec::new();
    for (off, n) in ranges {
        copy_range(src, dst, off, n, &mut buf)?;
    }
    Ok(Cloned::Sparse)
}

/// The file's data ranges (offset, length), from SEEK_DATA/SEEK_HOLE.
fn data_ranges(src: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let end = i64::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    let mut ranges = Vec::new();
    let mut pos: i64 = 0;
    while pos < end {
        let data = match lseek(src, pos, Whence::SeekData) {
            Ok(off) => off,
            // No data after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src, data, Whence::SeekHole)?.min(end);
        ranges.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    Ok(ranges)
}

/// Whether SEEK_DATA found about what the file has allocated. A
/// filesystem without hole support calls the whole file data: a sparse
/// 40 GiB template would be copied as 40 GiB.
fn reports_holes(data: u64, allocated: u64) -> bool {
    data <= allocated.saturating_mul(2).max(allocated + (16 << 20))
}

/// Copies `len` bytes at `off`, in the kernel where it can.
fn copy_range(src: &File, dst: &File, off: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut from = (off + done) as i64;
        let mut to = from;
        let want = usize::try_from(len - done).unwrap_or(usize::MAX);
        match nix::fcntl::copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
            Ok(0) => return Err(io::Error::other("source ended early")),
            Ok(n) => done += n as u64,
            // Across filesystems, or a kernel without it: copy by hand.
            Err(Errno::EXDEV | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EINVAL) => {
                return copy_by_hand(src, dst, off + done, len - done, buf)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_by_hand(src: &File, dst: &File, off: u64, len: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(1 << 20, 0);
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(buf.len(), |l| l.min(buf.len()));
        src.read_exact_at(&mut buf[..n], off + done)?;
        dst.write_all_at(&buf[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn rw(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("open")
    }

    #[test]
    fn data_is_copied_and_holes_stay_holes() {
        let d = tempfile::tempdir().expect("tempdir");
        let src_path = d.path().join("src");
        let src = File::create(&src_path).expect("create");
        let size = 8u64 << 30;
        src.set_len(size).expect("len");
        // Data at the start, in the middle and at the very end.
        src.write_all_at(b"start", 0).expect("w");
        src.write_all_at(&[7u8; 100_000], 3 << 30).expect("w");
        src.write_all_at(b"end", size - 3).expect("w");
        src.sync_all().expect("sync");
        let src = File::open(&src_path).expect("open");
        let dst_path = d.path().join("dst");
        let dst = rw(&dst_path);
        clone_sparse(&src, &dst).expect("clone");
        let m = dst.metadata().expect("meta");
        assert_eq!(m.len(), size);
        assert!(
            m.blocks() * 512 < 16 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        let read = |off: u64, n: usize| {
            let mut b = vec![0u8; n];
            dst.read_exact_at(&mut b, off).expect("read");
            b
        };
        assert_eq!(read(0, 5), b"start");
        assert_eq!(read(3 << 30, 100_000), vec![7u8; 100_000]);
        assert_eq!(read(size - 3, 3), b"end");
        // A hole reads back as zeros.
        assert_eq!(read(1 << 30, 4096), vec![0u8; 4096]);
        // Writes to the copy leave the source alone.
        dst.write_all_at(b"CHANGED", 0).expect("w");
        let mut b = [0u8; 5];
        src.read_exact_at(&mut b, 0).expect("r");
        assert_eq!(&b, b"start");
    }

    #[test]
    fn a_filesystem_without_holes_is_caught() {
        // ext4's template: a few MiB of data, about as much allocated.
        assert!(reports_holes(3 << 20, 3 << 20));
        assert!(reports_holes(0, 0));
        assert!(reports_holes(20 << 20, 12 << 20));
        // The whole 40 GiB reported as data for 3 MiB allocated.
        assert!(!reports_holes(40 << 30, 3 << 20));
        assert!(!reports_holes(1 << 30, 0));
    }

    #[test]
    fn by_hand_copies_exactly_the_range() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = rw(&d.path().join("a"));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        src.write_all_at(&data, 0).expect("w");
        let dst = rw(&d.path().join("b"));
        dst.set_len(data.len() as u64).expect("len");
        let mut buf = Vec::new();
        copy_by_hand(&src, &dst, 1000, 2_500_000, &mut buf).expect("copy");
        let mut got = vec![0u8; data.len()];
        dst.read_exact_at(&mut got, 0).expect("r");
        assert_eq!(&got[1000..2_501_000], &data[1000..2_501_000]);
        assert!(got[..1000].iter().all(|b| *b == 0));
        assert!(got[2_501_000..].iter().all(|b| *b == 0));
    }
}
