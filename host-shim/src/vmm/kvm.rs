//! `/dev/kvm`: whether the device opens and answers the KVM API version
//! both backends need. It says nothing about whether KVM can run a guest
//! (nested KVM often opens and then aborts every guest): QEMU's
//! accelerator probe ([`super::qemu::accel`]) boots one for that.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `KVM_GET_API_VERSION`: `_IO(KVMIO, 0x00)`; every KVM since 2.6.22 answers 12.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// The only KVM API version there is.
pub const KVM_API_VERSION: libc::c_int = 12;

/// A KVM device that opens and answers [`KVM_API_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmDevice {
    pub path: PathBuf,
    pub version: libc::c_int,
}

impl std::fmt::Display for KvmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} opens, API version {} (QEMU still probes whether KVM can run the guest)",
            self.path.display(),
            self.version
        )
    }
}

/// Why the KVM device is no use.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} answers KVM API version {version}, expected {KVM_API_VERSION}", path.display())]
    Version { path: PathBuf, version: libc::c_int },
}

/// Opens `device` read-write and asks its API version.
pub fn check(device: &Path) -> Result<KvmDevice, KvmError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|source| KvmError::Open {
            path: device.to_owned(),
            source,
        })?;
    // SAFETY: the fd is open for the duration of the call and this ioctl takes no argument.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Err(KvmError::Version {
            path: device.to_owned(),
            version,
        });
    }
    Ok(KvmDevice {
        path: device.to_owned(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_that_cannot_open_says_so() {
        let e = check(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(e, KvmError::Open { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("cannot open /nonexistent/kvm: "),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_is_not_kvm_answers_no_api_version() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = check(f.path()).unwrap_err();
        assert!(matches!(e, KvmError::Version { version: -1, .. }), "{e:?}");
    }

    #[test]
    fn an_opening_device_reads_as_the_doctor_printed_it() {
        let d = KvmDevice {
            path: "/dev/kvm".into(),
            version: KVM_API_VERSION,
        };
        assert_eq!(
            d.to_string(),
            "/dev/kvm opens, API version 12 (QEMU still probes whether KVM can run the guest)"
        );
    }
}
