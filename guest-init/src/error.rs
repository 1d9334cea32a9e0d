//! Errors. Every module returns its own typed error; `main` wraps each boot
//! step's error in a [`Fatal`] that names the step, which is what the host
//! gets in `GuestMessage::Error` (`what`, `detail`).

use std::fmt::Display;
use std::io;

/// A failed system call or file operation, and what it was about.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct SysError {
    /// What was being done, with the path or value involved.
    pub action: String,
    #[source]
    pub source: io::Error,
}

/// Attaches what was being done to a low-level error.
pub trait OrSys<T> {
    fn or_sys(self, action: impl FnOnce() -> String) -> Result<T, SysError>;
}

impl<T, E: Into<io::Error>> OrSys<T> for Result<T, E> {
    fn or_sys(self, action: impl FnOnce() -> String) -> Result<T, SysError> {
        self.map_err(|e| SysError {
            action: action(),
            source: e.into(),
        })
    }
}

/// An error that ends the VM: which boot step failed and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct Fatal {
    pub what: String,
    pub detail: String,
}

impl Fatal {
    pub fn new(what: impl Into<String>, detail: impl Display) -> Self {
        Fatal {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// Names the boot step a module's error happened in.
pub trait Step<T> {
    fn step(self, what: &str) -> Result<T, Fatal>;
}

impl<T, E: Display> Step<T> for Result<T, E> {
    fn step(self, what: &str) -> Result<T, Fatal> {
        self.map_err(|e| Fatal::new(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_error_names_action_and_errno() {
        let r: Result<(), nix::Error> = Err(nix::Error::ENOENT);
        let e = r
            .or_sys(|| "mount /dev/vda on /run/kiln/base".into())
            .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("mount /dev/vda on /run/kiln/base: "), "{s}");
        assert!(s.contains("No such file"), "{s}");
        assert_eq!(e.source.raw_os_error(), Some(libc::ENOENT));
        let f = Err::<(), _>(e).step("build root").unwrap_err();
        assert_eq!(f.what, "build root");
        assert!(f.detail.contains("/dev/vda"));
    }
}
