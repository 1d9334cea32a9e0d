//! Host tools the VM tests need beyond QEMU and vhost-device-vsock (whose
//! absence `kiln::vmm::qemu` reports itself).

use std::path::PathBuf;

pub struct HostTool {
    pub program: &'static str,
    pub install: &'static str,
}

pub const BUSYBOX: HostTool = HostTool {
    program: "busybox",
    install: "apt-get install busybox-static",
};
pub const MKFS_EXT4: HostTool = HostTool {
    program: "mkfs.ext4",
    install: "apt-get install e2fsprogs",
};
pub const DEBUGFS: HostTool = HostTool {
    program: "debugfs",
    install: "apt-get install e2fsprogs",
};

/// Finds `tool` in `PATH` (plus the sbin directories, which a non-login
/// root shell may lack), or says how to install it.
pub fn require(tool: &HostTool) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool.program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is missing; install it with `{}`",
                tool.program,
                tool.install
            )
        })
}

/// busybox must be static: it runs in a guest without a libc.
pub fn static_busybox() -> anyhow::Result<PathBuf> {
    let p = require(&BUSYBOX)?;
    let bytes = std::fs::read(&p)?;
    // A dynamic ELF names its interpreter in a PT_INTERP segment; the
    // string is the cheapest reliable tell.
    if bytes.windows(14).any(|w| w == b"/lib64/ld-linu") {
        anyhow::bail!(
            "{} is dynamically linked; the guest needs the static one: `{}`",
            p.display(),
            BUSYBOX.install
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_install_command() {
        let tool = HostTool {
            program: "kiln-no-such-tool",
            install: "apt-get install kiln-no-such-package",
        };
        let err = require(&tool).expect_err("missing").to_string();
        assert!(err.contains("kiln-no-such-tool"), "{err}");
        assert!(
            err.contains("apt-get install kiln-no-such-package"),
            "{err}"
        );
    }
}
