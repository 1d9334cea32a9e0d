//! Debian's cloud kernel for test VMs, fetched without installing anything:
//! the versioned package is resolved from the `linux-image-cloud-<arch>`
//! metapackage, `apt-get download`ed into a cache directory and unpacked
//! there with `dpkg -x`. A second call finds the unpacked tree and returns
//! at once (one `apt-cache` call to learn the current version).
//!
//! Another architecture's kernel (`arm64` on an x86 host) is the same
//! package with `:arm64` appended, which apt finds once the host has
//! `dpkg --add-architecture arm64` and an `apt-get update`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The metapackage that always depends on the current cloud kernel for Debian architecture `arch`, qualified with `:arch`
/// when that is not the host's (apt's name for a foreign package).
pub fn metapackage(arch: &str) -> String {
    qualified(&format!("linux-image-cloud-{arch}"), arch)
}

fn qualified(package: &str, arch: &str) -> String {
    if arch == crate::image::host_debian_arch() {
        package.to_owned()
    } else {
        format!("{package}:{arch}")
    }
}

/// Overrides where downloads and unpacked trees are kept.
pub const CACHE_ENV: &str = "KILN_CACHE";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// `uname -r` in the guest, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestKernelError {
    #[error("`{program}` could not run ({source}); the test kernel comes from Debian's packages, so this needs apt (Debian or Ubuntu)")]
    NoApt {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("apt knows no package {package}: run `apt-get update` first, and for another architecture's kernel `dpkg --add-architecture <arch>` before it ({detail})")]
    UnknownPackage { package: String, detail: String },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{package} unpacked into {root} but has no {missing}")]
    Layout {
        package: String,
        root: PathBuf,
        missing: String,
    },
}

/// `$KILN_CACHE`, or `<workspace>/target/kiln-cache`.
pub fn default_cache_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => workspace.join("target").join("kiln-cache"),
    }
}

/// The host's current cloud kernel, downloaded and unpacked under `cache` if not already.
pub fn fetch(cache: &Path) -> Result<GuestKernel, GuestKernelError> {
    fetch_for(cache, crate::image::host_debian_arch())
}

/// The current cloud kernel for Debian architecture `arch` (`amd64`, `arm64`).
pub fn fetch_for(cache: &Path, arch: &str) -> Result<GuestKernel, GuestKernelError> {
    let package = resolve_package(&metapackage(arch))?;
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let kernels = cache.join("kernel");
    let root = kernels.join(&package);
    if let Ok(k) = locate(&package, &release, &root) {
        return Ok(k);
    }
    std::fs::create_dir_all(&kernels).map_err(io(&kernels))?;
    // Unpacked aside and renamed into place, so a concurrent or interrupted
    // run never leaves a half tree where a complete one is expected.
    let work = kernels.join(format!(".tmp-{package}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let result = download_and_unpack(&qualified(&package, arch), &work);
    let result = result.and_then(|()| {
        match std::fs::rename(work.join("root"), &root) {
            Ok(()) => Ok(()),
            // Another process finished first; its tree is as good as ours.
            Err(_) if root.is_dir() => Ok(()),
            Err(e) => Err(GuestKernelError::Io {
                path: root.clone(),
                source: e,
            }),
        }
    });
    let _ = std::fs::remove_dir_all(&work);
    result?;
    locate(&package, &release, &root)
}

fn resolve_package(metapackage: &str) -> Result<String, GuestKernelError> {
    let out = Command::new("apt-cache")
        .args(["depends", metapackage])
        .output()
        .map_err(|source| GuestKernelError::NoApt {
            program: "apt-cache",
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match parse_depends(&stdout) {
        Some(p) if out.status.success() => Ok(p),
        _ => Err(GuestKernelError::UnknownPackage {
            package: metapackage.to_owned(),
            detail: format!(
                "apt-cache depends {metapackage}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
}

/// The versioned image package in `apt-cache depends` output, without the
/// `:arch` apt adds for a foreign architecture's.
fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .map(|l| l.trim().trim_start_matches('|'))
        .filter_map(|l| l.strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains(['<', '>', ' ']))
        .map(|p| p.split(':').next().unwrap_or(p).to_owned())
}

fn download_and_unpack(package: &str, work: &Path) -> Result<(), GuestKernelError> {
    let out = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(work)
        .output()
        .map_err(|source| GuestKernelError::NoApt {
            program: "apt-get",
            source,
        })?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if detail.contains("Unable to locate") || detail.contains("No packages found") {
            return Err(GuestKernelError::UnknownPackage {
                package: package.to_owned(),
                detail,
            });
        }
        return Err(GuestKernelError::Command {
            command: format!("apt-get download {package}"),
            detail,
        });
    }
    let deb = std::fs::read_dir(work)
        .map_err(io(work))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| GuestKernelError::Command {
            command: format!("apt-get download {package}"),
            detail: format!("no .deb appeared in {}", work.display()),
        })?;
    let root = work.join("root");
    let out = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .output()
        .map_err(|source| GuestKernelError::NoApt {
            program: "dpkg",
            source,
        })?;
    if !out.status.success() {
        return Err(GuestKernelError::Command {
            command: format!("dpkg -x {} {}", deb.display(), root.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Finds the kernel and modules in an unpacked package (merged-/usr or not).
fn locate(package: &str, release: &str, root: &Path) -> Result<GuestKernel, GuestKernelError> {
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    let missing = |what: String| GuestKernelError::Layout {
        package: package.to_owned(),
        root: root.to_owned(),
        missing: what,
    };
    if !vmlinuz.is_file() {
        return Err(missing(format!("boot/vmlinuz-{release}")));
    }
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(release))
        .find(|d| d.is_dir())
        .ok_or_else(|| missing(format!("lib/modules/{release}")))?;
    Ok(GuestKernel {
        package: package.to_owned(),
        release: release.to_owned(),
        vmlinuz,
        modules_dir,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GuestKernelError + '_ {
    move |source| GuestKernelError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_versioned_package() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let alt = "x\n |Depends: linux-image-6.1.0-9-cloud-amd64\n  Depends: <virtual>\n";
        assert_eq!(
            parse_depends(alt).as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
        assert_eq!(parse_depends("E: No packages found\n"), None);
        let foreign =
            "linux-image-cloud-arm64:arm64\n  Depends: linux-image-6.1.0-57-cloud-arm64:arm64\n";
        assert_eq!(
            parse_depends(foreign).as_deref(),
            Some("linux-image-6.1.0-57-cloud-arm64")
        );
    }

    #[test]
    fn a_foreign_metapackage_is_qualified() {
        let host = crate::image::host_debian_arch();
        assert_eq!(metapackage(host), format!("linux-image-cloud-{host}"));
        let other = if host == "arm64" { "amd64" } else { "arm64" };
        assert_eq!(
            metapackage(other),
            format!("linux-image-cloud-{other}:{other}")
        );
    }

    #[test]
    fn locates_both_layouts_and_names_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let err = locate("linux-image-x", "x", root).expect_err("empty");
        assert!(err.to_string().contains("boot/vmlinuz-x"), "{err}");
        std::fs::create_dir_all(root.join("boot")).expect("boot");
        std::fs::write(root.join("boot/vmlinuz-x"), b"k").expect("kernel");
        let err = locate("linux-image-x", "x", root).expect_err("no modules");
        assert!(err.to_string().contains("lib/modules/x"), "{err}");
        std::fs::create_dir_all(root.join("usr/lib/modules/x")).expect("modules");
        let k = locate("linux-image-x", "x", root).expect("found");
        assert_eq!(k.modules_dir, root.join("usr/lib/modules/x"));
    }

    #[test]
    fn cache_dir_honours_the_override() {
        // Only reads the variable: safe alongside other tests.
        let ws = Path::new("/ws");
        let expected = match std::env::var_os(CACHE_ENV) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from("/ws/target/kiln-cache"),
        };
        assert_eq!(default_cache_dir(ws), expected);
    }
}
