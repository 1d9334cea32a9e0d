//! Kernel settings a job expects from a distribution's defaults, which no
//! systemd-sysctl applies in a Kiln VM.

use std::path::Path;

use crate::error::{OrSys, SysError};

/// `/proc/sys` path (relative) and value.
pub const SETTINGS: &[(&str, &str)] = &[
    // ICMP echo sockets for every group: `ping` without setuid bits or
    // CAP_NET_RAW (systemd's 50-default.conf sets the same).
    ("net/ipv4/ping_group_range", "0 2147483647"),
    // Rootless podman publishes ports below 1024 (`-p 80:80`, a job's
    // `services:`) from the runner's uid, as Docker does as root.
    ("net/ipv4/ip_unprivileged_port_start", "0"),
];

pub fn apply() -> Result<(), SysError> {
    apply_under(Path::new("/proc/sys"))
}

pub fn apply_under(root: &Path) -> Result<(), SysError> {
    for (key, value) in SETTINGS {
        let path = root.join(key);
        std::fs::write(&path, value).or_sys(|| format!("set {} to {value:?}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_each_setting_and_names_a_missing_one() {
        let tmp = std::env::temp_dir().join(format!("kiln-init-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("net/ipv4")).unwrap();
        apply_under(&tmp).unwrap();
        for (key, value) in SETTINGS {
            assert_eq!(std::fs::read_to_string(tmp.join(key)).unwrap(), *value);
        }
        let e = apply_under(&tmp.join("missing")).unwrap_err();
        assert!(e.to_string().contains("ping_group_range"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
