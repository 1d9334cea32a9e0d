//! The serial console: kiln-init's only log. Writes never fail loudly and
//! never panic (a panic in PID 1 takes the kernel down).

use std::fmt;
use std::io::Write;
use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;

/// Prints one line, prefixed with `kiln-init:`, to the console.
pub fn line(args: fmt::Arguments<'_>) {
    let text = format!("kiln-init: {args}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// `say!("...", ...)`: one console line.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::line(format_args!($($arg)*)) };
}
pub(crate) use say;

/// Copies job output to the console verbatim (for `kiln.debug`).
pub fn echo(data: &[u8]) {
    let _ = std::io::stdout().write_all(data);
}

/// The kernel hands init the console as fds 0-2 only if `/dev/console`
/// existed in the initial root. Without it, open it now that devtmpfs is up.
pub fn attach() {
    let stdout = std::io::stdout();
    if fcntl(&stdout, FcntlArg::F_GETFD).is_ok() {
        return;
    }
    let Ok(fd) = nix::fcntl::open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    ) else {
        return;
    };
    for target in 0..=2 {
        // SAFETY: dup2 on fds this process owns; 0-2 are free (checked above).
        unsafe { libc::dup2(fd.as_raw_fd(), target) };
    }
}
