//! CPU architectures: the host's, and the one a guest image is built for.
//! A guest of the host's own architecture can run under KVM (QEMU or
//! Firecracker); another architecture's runs only under QEMU's emulation
//! (TCG), many times slower: for testing images, never chosen silently.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("architecture {value:?} is not one of amd64 (x86_64), arm64 (aarch64)")]
pub struct ArchError {
    pub value: String,
}

impl Arch {
    /// The architecture this kiln was built for, and so runs on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The kernel's name (`uname -m`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name, as an image's manifest records it.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Whether guests of this architecture run natively (under KVM) here.
    pub fn is_native(self) -> bool {
        self == Arch::host()
    }
}

impl Default for Arch {
    fn default() -> Self {
        Arch::host()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ArchError;
    /// Debian's names and the kernel's alike.
    fn from_str(s: &str) -> Result<Self, ArchError> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Aarch64),
            _ => Err(ArchError {
                value: s.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_names_parse_and_the_host_is_native() {
        assert_eq!("arm64".parse::<Arch>(), Ok(Arch::Aarch64));
        assert_eq!("aarch64".parse::<Arch>(), Ok(Arch::Aarch64));
        assert_eq!("amd64".parse::<Arch>(), Ok(Arch::X86_64));
        let err = "riscv64".parse::<Arch>().expect_err("unknown");
        assert!(err.to_string().contains("riscv64"), "{err}");
        assert!(Arch::host().is_native());
        let other = match Arch::host() {
            Arch::X86_64 => Arch::Aarch64,
            Arch::Aarch64 => Arch::X86_64,
        };
        assert!(!other.is_native());
        assert_eq!(Arch::Aarch64.debian(), "arm64");
    }
}
