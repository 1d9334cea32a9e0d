//! The host's architecture and what it runs: its own architecture's
//! guests natively (under KVM, when KVM runs guests), another one's only
//! emulated by QEMU's TCG, when that architecture's QEMU is installed.

use super::{Finding, Level};
use crate::vmm::qemu::tools;
use crate::vmm::Arch;

/// The "arch" line: `kvm_ok` is the KVM check's verdict, `emulator` the
/// other architecture's QEMU where one was found.
pub fn check_arch(host: Arch, kvm_ok: bool, emulator: Option<&std::path::Path>) -> Finding {
    let other = match host {
        Arch::X86_64 => Arch::Aarch64,
        Arch::Aarch64 => Arch::X86_64,
    };
    let native = if kvm_ok {
        format!("{} guests natively (KVM)", host.name())
    } else {
        format!("{} guests only under TCG (no usable KVM)", host.name())
    };
    let emulated = match emulator {
        Some(q) => format!(
            "{} guests emulated by {} (slow: for testing images; pools need emulate = true)",
            other.name(),
            q.display()
        ),
        None => format!(
            "{} guests not at all (no {}-guest QEMU installed)",
            other.name(),
            other.name()
        ),
    };
    let detail = format!("host {}: runs {native}; {emulated}", host.name());
    if kvm_ok {
        Finding::ok("arch", detail)
    } else {
        Finding::problem(
            "arch",
            Level::Warn,
            detail,
            "see the kvm line: with KVM, this host's own architecture runs natively",
        )
    }
}

/// The QEMU that emulates the other architecture, if installed.
pub fn find_emulator(host: Arch) -> Option<std::path::PathBuf> {
    let cfg = crate::vmm::qemu::QemuConfig::default();
    let other = match host {
        Arch::X86_64 => Arch::Aarch64,
        Arch::Aarch64 => Arch::X86_64,
    };
    let (program, tool) = cfg.program(other);
    tools::find(tool, program, &[]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn says_what_runs_natively_and_what_is_emulated() {
        let f = check_arch(
            Arch::X86_64,
            true,
            Some(Path::new("/usr/bin/qemu-system-aarch64")),
        );
        assert_eq!(f.level, Level::Ok);
        assert!(f.detail.starts_with("host x86_64"), "{}", f.detail);
        assert!(f.detail.contains("x86_64 guests natively"), "{}", f.detail);
        assert!(
            f.detail
                .contains("aarch64 guests emulated by /usr/bin/qemu-system-aarch64"),
            "{}",
            f.detail
        );
        let f = check_arch(Arch::Aarch64, false, None);
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.detail.contains("aarch64 guests only under TCG"),
            "{}",
            f.detail
        );
        assert!(
            f.detail.contains("x86_64 guests not at all"),
            "{}",
            f.detail
        );
    }
}
