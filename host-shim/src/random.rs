//! Random bytes from the kernel (`getrandom(2)`): for VM ids, CID picks and
//! the entropy seed each guest gets with its job.

use std::io;

/// Fills `buf` from the kernel's CSPRNG. Blocks only before the host's own
/// pool is initialised, early in its boot.
pub fn try_fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable
        // slice; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Like [`try_fill`] for values that only need to differ (ids, where an
/// exclusive create decides anyway): falls back to the clock and pid.
pub fn fill(buf: &mut [u8]) {
    if try_fill(buf).is_ok() {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (seed >> ((i % 16) * 8)) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_differently_each_time() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        try_fill(&mut a).expect("getrandom");
        try_fill(&mut b).expect("getrandom");
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }
}
