//! `DEBIAN/control`, from the built binary: the version is the
//! workspace's, the architecture the binary's ELF machine, and `Depends`
//! the packages owning the shared libraries it links (`ldd`, `dpkg -S`),
//! libc6 at least the newest `GLIBC_x.y` symbol version it needs, plus
//! the host tools kiln runs (nft, mkfs.ext4).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use object::{Architecture, Object, ObjectSection};

/// Host tools `kiln` runs: nftables for the VMs' egress policy, e2fsprogs
/// for the scratch disks.
const TOOL_DEPENDS: &[&str] = &["nftables", "e2fsprogs"];

/// What the control file says that depends on the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub version: String,
    /// Debian's name: amd64, arm64.
    pub arch: String,
    pub depends: Vec<String>,
    pub installed_kib: u64,
}

impl Meta {
    pub fn of(binary: &Path) -> Result<Self> {
        let data =
            std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
        let elf = object::File::parse(&*data)
            .with_context(|| format!("{} is not an ELF file", binary.display()))?;
        let arch = debian_arch(elf.architecture())?;
        let glibc = newest_glibc(&elf);
        let mut depends: Vec<String> = library_packages(binary)?
            .into_iter()
            .map(|p| match (&*p, &glibc) {
                ("libc6", Some(v)) => format!("libc6 (>= {v})"),
                _ => p,
            })
            .collect();
        depends.extend(TOOL_DEPENDS.iter().map(|t| t.to_string()));
        Ok(Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            arch: arch.to_owned(),
            depends,
            // The binary dominates; the rest is a few KiB.
            installed_kib: (data.len() as u64).div_ceil(1024) + 64,
        })
    }
}

/// Debian's architecture name for an ELF machine.
fn debian_arch(arch: Architecture) -> Result<&'static str> {
    Ok(match arch {
        Architecture::X86_64 => "amd64",
        Architecture::Aarch64 => "arm64",
        other => bail!("no Debian architecture for {other:?}: build kiln for x86_64 or aarch64"),
    })
}

/// The newest `GLIBC_x.y` the binary's dynamic string table names (its
/// symbol version needs), e.g. "2.34".
fn newest_glibc(elf: &object::File<'_>) -> Option<String> {
    let dynstr = elf.section_by_name(".dynstr")?.data().ok()?;
    dynstr
        .split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok()?.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let nums: Option<Vec<u32>> = v.split('.').map(|n| n.parse().ok()).collect();
            Some((nums?, v.to_owned()))
        })
        .max()
        .map(|(_, v)| v)
}

/// The Debian packages holding the shared libraries `binary` links.
fn library_packages(binary: &Path) -> Result<BTreeSet<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    if !out.status.success() {
        // A static binary: nothing to depend on.
        return Ok(BTreeSet::new());
    }
    let mut packages = BTreeSet::new();
    for lib in libraries(&String::from_utf8_lossy(&out.stdout)) {
        packages.insert(owner(&lib)?);
    }
    Ok(packages)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` -> the path.
fn libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| l.split_once("=>")?.1.split_whitespace().next())
        .filter(|p| p.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

/// The package owning `path` (`dpkg -S`; /lib and /usr/lib are one on
/// merged-/usr hosts, so both spellings are asked).
fn owner(path: &str) -> Result<String> {
    let usr = format!("/usr{path}");
    for candidate in [path, usr.as_str()] {
        let out = Command::new("dpkg")
            .args(["-S", candidate])
            .output()
            .context("cannot run dpkg -S")?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(pkg) = text.lines().next().and_then(|l| l.split(':').next()) {
                return Ok(pkg.trim().to_owned());
            }
        }
    }
    bail!("no Debian package owns {path} (which kiln links): build on a Debian host")
}

/// Writes `DEBIAN/control` under `staging`.
pub fn write(staging: &Path, meta: &Meta) -> Result<()> {
    let path = staging.join("DEBIAN/control");
    std::fs::write(&path, text(meta)).with_context(|| format!("writing {}", path.display()))
}

fn text(meta: &Meta) -> String {
    format!(
        "\
Package: kiln
Version: {version}
Architecture: {arch}
Maintainer: Kiln maintainers <kiln@kiln-ci.invalid>
Installed-Size: {size}
Depends: {depends}
Suggests: qemu-system-x86 | qemu-system-arm
Section: admin
Priority: optional
Homepage: https://github.com/kiln-ci/kiln
Description: every GitHub Actions job in a fresh microVM
 kiln serve takes a GitHub App's workflow_job webhooks and runs each queued
 job in a fresh Firecracker (or QEMU) microVM, registered as a just-in-time
 runner. The service is installed but not started: edit
 /etc/kiln/config.toml, bake the guest image, then enable kiln.service.
",
        version = meta.version,
        arch = meta.arch,
        size = meta.installed_kib,
        depends = meta.depends.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let ldd = "\tlinux-vdso.so.1 (0x00007f)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            libraries(ldd),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6"
            ]
        );
    }

    #[test]
    fn this_binary_has_a_debian_arch_and_a_glibc_floor() {
        let me = std::env::current_exe().expect("test binary");
        let meta = Meta::of(&me).expect("meta");
        assert!(["amd64", "arm64"].contains(&meta.arch.as_str()), "{meta:?}");
        let libc = meta
            .depends
            .iter()
            .find(|d| d.starts_with("libc6 (>= 2."))
            .unwrap_or_else(|| panic!("libc6 with a version: {meta:?}"));
        assert!(libc.ends_with(')'), "{libc}");
        assert!(text(&meta).contains(&format!("Architecture: {}\n", meta.arch)));
    }
}
