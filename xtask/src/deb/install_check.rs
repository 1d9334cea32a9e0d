//! `cargo xtask deb --install-check`: the package installs, the installed
//! `kiln` runs, and it purges cleanly. As root, on a host without another
//! kiln (refused otherwise: nothing of the host's is overwritten); the
//! package is purged when the check ends, also when a step fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{bail, ensure, Context, Result};

use super::layout::{BINARY, CONFIG, DIRS, FILES};

/// Installs `deb`, checks it, purges it.
pub fn run(deb: &Path) -> Result<()> {
    refuse_unless_clean_host()?;
    let installed = Installed;
    eprintln!("==> dpkg -i {}", deb.display());
    let out = run_ok(Command::new("dpkg").arg("-i").arg(deb))?;
    let said = String::from_utf8_lossy(&out.stdout);
    eprint!("{said}");
    ensure!(
        said.contains("the service is NOT started") && said.contains("cargo xtask image"),
        "the postinst did not say the service is not started and how to bake the image"
    );
    check_not_started()?;
    check_files()?;
    check_version()?;
    check_doctor()?;
    drop(installed);
    check_purged()?;
    eprintln!("==> the package installs, runs and purges");
    Ok(())
}

/// Purges the package when dropped, whatever happened before.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        eprintln!("==> dpkg --purge kiln");
        match Command::new("dpkg").args(["--purge", "kiln"]).status() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("dpkg --purge kiln failed ({s}): remove it by hand"),
            Err(e) => eprintln!("cannot run dpkg --purge kiln ({e}): remove it by hand"),
        }
    }
}

fn refuse_unless_clean_host() -> Result<()> {
    ensure!(
        crate::is_root(),
        "--install-check installs a package: run it as root"
    );
    let known = Command::new("dpkg-query")
        .args(["-W", "kiln"])
        .output()
        .context("cannot run dpkg-query")?;
    ensure!(
        !known.status.success(),
        "a kiln package is installed on this host already: --install-check would remove it; run it on a host without one"
    );
    for path in [BINARY, CONFIG] {
        ensure!(
            !Path::new(path).exists(),
            "{path} exists already: --install-check would overwrite it; run it on a host without one"
        );
    }
    Ok(())
}

/// Every file and directory at its place with its mode, owned by root,
/// and the config a conffile.
fn check_files() -> Result<()> {
    for (path, mode) in FILES.iter().chain(DIRS) {
        let meta = std::fs::metadata(path).with_context(|| format!("{path} is not installed"))?;
        let found = meta.permissions().mode() & 0o7777;
        ensure!(
            found == *mode,
            "{path} has mode {found:04o}, not {mode:04o}"
        );
        ensure!(
            meta.uid() == 0 && meta.gid() == 0,
            "{path} is owned by {}:{}, not root:root",
            meta.uid(),
            meta.gid()
        );
    }
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "kiln"]))?;
    ensure!(
        String::from_utf8_lossy(&conffiles.stdout).contains(CONFIG),
        "{CONFIG} is not a conffile"
    );
    Ok(())
}

/// The postinst started nothing: no kiln process runs the installed binary.
fn check_not_started() -> Result<()> {
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let exe = entry?.path().join("exe");
        if std::fs::read_link(&exe).is_ok_and(|p| p == Path::new(BINARY)) {
            bail!(
                "{BINARY} is running after dpkg -i ({}): the postinst must not start it",
                exe.display()
            );
        }
    }
    Ok(())
}

fn check_version() -> Result<()> {
    let out = run_ok(Command::new(BINARY).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("kiln {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        text.trim() == want,
        "{BINARY} --version says {text:?}, not {want:?}"
    );
    Ok(())
}

/// The installed `kiln doctor --config` runs and reports: on a build host
/// the example config's secret files are missing, so the config fails at
/// its line and the App's key is not checked; exit 1 (a failure found) is
/// expected, anything else is not.
fn check_doctor() -> Result<()> {
    let out = Command::new(BINARY)
        .args(["doctor", "--config", CONFIG])
        .current_dir("/")
        .output()
        .context("cannot run the installed kiln doctor")?;
    let report = String::from_utf8_lossy(&out.stdout);
    eprint!("{report}");
    ensure!(
        matches!(out.status.code(), Some(0 | 1)),
        "kiln doctor ended with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |tag: &str, name: &str, text: &str| {
        report
            .lines()
            .any(|l| l.starts_with(&format!("[{tag}] {name}")) && l.contains(text))
    };
    let secret_line = secret_file_line(CONFIG)?;
    let config_at = format!("{CONFIG}:{secret_line}:");
    let config_ok = has("ok  ", "config", CONFIG);
    ensure!(
        config_ok
            || has(
                "FAIL",
                "config",
                &format!("{config_at}23: webhook_secret_file: cannot read secret file")
            ),
        "the doctor's report has no config line at {config_at}23 naming the missing webhook secret"
    );
    ensure!(
        config_ok || has("warn", "github app", "not checked"),
        "the doctor's report does not say the App's key was not checked"
    );
    ensure!(
        has("ok  ", "state dir", "/var/lib/kiln")
            || has("FAIL", "state dir", "/var/lib/kiln")
            || has("warn", "state dir", "/var/lib/kiln"),
        "the doctor's report has no state dir line for /var/lib/kiln"
    );
    Ok(())
}

/// The line of `webhook_secret_file =` in the installed config.
fn secret_file_line(config: &str) -> Result<usize> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {config}"))?;
    text.lines()
        .position(|l| l.starts_with("webhook_secret_file = "))
        .map(|i| i + 1)
        .with_context(|| format!("{config} has no webhook_secret_file line"))
}

/// Nothing the package installed is left (the directories may stay when
/// something else put files in them).
fn check_purged() -> Result<()> {
    for (path, _) in FILES {
        ensure!(
            !Path::new(path).exists(),
            "{path} is still there after dpkg --purge"
        );
    }
    let known = Command::new("dpkg-query").args(["-W", "kiln"]).output()?;
    ensure!(
        !known.status.success(),
        "dpkg still knows kiln after --purge"
    );
    Ok(())
}

fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
