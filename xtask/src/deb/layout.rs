//! The package's files, each with its mode (dpkg-deb keeps the staging
//! tree's modes; `--root-owner-group` makes everything root:root).
//!
//! The unit is `examples/systemd/kiln.service` with `ExecStart` pointing
//! at `/usr/bin/kiln` (the example's is `/usr/local/bin/kiln`, for a
//! binary installed by hand); the config is `examples/config.toml`, mode
//! 0640 in a 0750 `/etc/kiln`: it names the secret files (which go beside
//! it, mode 0600) but holds none.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The example unit's `ExecStart` binary, and the package's.
const EXAMPLE_BINARY: &str = "/usr/local/bin/kiln";
pub const BINARY: &str = "/usr/bin/kiln";
pub const UNIT: &str = "/lib/systemd/system/kiln.service";
pub const CONFIG: &str = "/etc/kiln/config.toml";
pub const DOC: &str = "/usr/share/doc/kiln";

/// Directories and their modes: the config's, and those the unit's
/// StateDirectory= and CacheDirectory= name (0700, as the unit makes them).
pub const DIRS: &[(&str, u32)] = &[
    ("/etc/kiln", 0o750),
    ("/var/lib/kiln", 0o700),
    ("/var/cache/kiln", 0o700),
];

/// Files and their modes, for the install check.
pub const FILES: &[(&str, u32)] = &[
    (BINARY, 0o755),
    (UNIT, 0o644),
    (CONFIG, 0o640),
    ("/usr/share/doc/kiln/README.md", 0o644),
    ("/usr/share/doc/kiln/copyright", 0o644),
];

/// Writes the package tree (without DEBIAN/control) under `staging`.
pub fn stage(root: &Path, binary: &Path, staging: &Path) -> Result<()> {
    for (dir, mode) in DIRS {
        make_dir(staging, dir, *mode)?;
    }
    copy(binary, staging, BINARY, 0o755)?;
    let unit_text = read(&root.join("examples/systemd/kiln.service"))?;
    put(staging, UNIT, &unit(&unit_text)?, 0o644)?;
    copy(&root.join("examples/config.toml"), staging, CONFIG, 0o640)?;
    copy(
        &root.join("README.md"),
        staging,
        "/usr/share/doc/kiln/README.md",
        0o644,
    )?;
    put(staging, "/usr/share/doc/kiln/copyright", COPYRIGHT, 0o644)?;
    put(staging, "/DEBIAN/conffiles", &format!("{CONFIG}\n"), 0o644)?;
    put(staging, "/DEBIAN/postinst", POSTINST, 0o755)?;
    put(staging, "/DEBIAN/postrm", POSTRM, 0o755)?;
    Ok(())
}

/// The example unit with the package's binary in `ExecStart`.
fn unit(example: &str) -> Result<String> {
    let from = format!("ExecStart={EXAMPLE_BINARY} ");
    if !example.lines().any(|l| l.starts_with(&from)) {
        bail!("examples/systemd/kiln.service has no line starting {from:?}: update xtask/src/deb/layout.rs to the unit's ExecStart");
    }
    Ok(example.replace(&from, &format!("ExecStart={BINARY} ")))
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kiln
Source: https://github.com/kiln-ci/kiln

Files: *
Copyright: The Kiln authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is
 in /usr/share/common-licenses/Apache-2.0.
";

/// Configure: reload systemd's units, start nothing (the config needs
/// editing first) and say what to do.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
    cat <<'EOT'
kiln is installed; the service is NOT started. Before `systemctl enable --now kiln`:
  1. Edit /etc/kiln/config.toml: github.app_id, org/repo/enterprise, the pools.
  2. Put the App's webhook secret in /etc/kiln/webhook-secret and its private
     key in /etc/kiln/app-key.pem, both `chmod 600`.
  3. Bake the guest image from Kiln's source tree (as root), with the
     newest actions runner (github.com/actions/runner/releases):
       cargo xtask image --runner-version X.Y.Z --out /var/lib/kiln/image
  4. Check: kiln config check /etc/kiln/config.toml
            kiln doctor --config /etc/kiln/config.toml
EOT
fi
exit 0
"#;

/// Remove: reload systemd's units. Purge leaves the state directory (the
/// journal, job logs, the image) and any secrets in /etc/kiln to the
/// operator; dpkg removes what it installed.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
"#;

fn target(staging: &Path, path: &str) -> std::path::PathBuf {
    staging.join(path.trim_start_matches('/'))
}

fn make_dir(staging: &Path, path: &str, mode: u32) -> Result<()> {
    let dir = target(staging, path);
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    set_mode(&dir, mode)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn copy(from: &Path, staging: &Path, to: &str, mode: u32) -> Result<()> {
    let dest = target(staging, to);
    parent(&dest)?;
    std::fs::copy(from, &dest)
        .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    set_mode(&dest, mode)
}

fn put(staging: &Path, to: &str, text: &str, mode: u32) -> Result<()> {
    let dest = target(staging, to);
    parent(&dest)?;
    std::fs::write(&dest, text).with_context(|| format!("writing {}", dest.display()))?;
    set_mode(&dest, mode)
}

/// The parent directories, 0755 (the package's own are set by [`DIRS`]).
fn parent(path: &Path) -> Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        set_mode(dir, 0o755)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_packaged_binary() {
        let example = read(&crate::workspace_root().join("examples/systemd/kiln.service"))
            .expect("example unit");
        let packaged = unit(&example).expect("ExecStart found");
        assert!(
            packaged.contains("\nExecStart=/usr/bin/kiln serve --config /etc/kiln/config.toml\n"),
            "{packaged}"
        );
        assert!(!packaged.contains("ExecStart=/usr/local/bin/kiln"));
        assert!(unit("[Service]\nExecStart=/opt/kiln serve\n").is_err());
    }
}
