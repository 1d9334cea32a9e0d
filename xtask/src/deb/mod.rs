//! `cargo xtask deb`: a Debian package of the host side, built with
//! `dpkg-deb --build --root-owner-group` (nothing to install beyond dpkg).
//!
//! - [`layout`] — what goes where, with which mode: `/usr/bin/kiln`, the
//!   unit, the example config as a conffile, the docs, the directories the
//!   unit expects, the maintainer scripts.
//! - [`control`] — `DEBIAN/control`: version, architecture and `Depends`
//!   read from the built binary itself (its ELF machine, the shared
//!   libraries it links and the glibc symbol versions it needs).
//! - [`install_check`] — `--install-check`: `dpkg -i` the package, run the
//!   installed `kiln --version` and `kiln doctor`, check the files and
//!   their modes, and `dpkg --purge` it again, also when a check fails.

pub mod control;
pub mod install_check;
pub mod layout;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The cargo profile `kiln` is built with.
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// Where the .deb goes [default: <target dir>/deb].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Then install it with dpkg -i, check the installed files and
    /// `kiln doctor`, and purge it (root; refuses on a host that already
    /// has a kiln installed).
    #[arg(long)]
    pub install_check: bool,
}

pub fn run(args: Args) -> Result<()> {
    let deb = build(&args)?;
    println!("{}", deb.display());
    if args.install_check {
        install_check::run(&deb)?;
    }
    Ok(())
}

/// Builds `kiln`, lays the package out and packs it; returns the .deb.
pub fn build(args: &Args) -> Result<PathBuf> {
    let root = crate::workspace_root();
    let target = target_dir(&root);
    let binary = build_kiln(&root, &target, &args.profile)?;
    let out = args.out.clone().unwrap_or_else(|| target.join("deb"));
    let meta = control::Meta::of(&binary)?;
    let staging = out.join(format!("kiln_{}_{}", meta.version, meta.arch));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the old {}", staging.display()))?;
    }
    layout::stage(&root, &binary, &staging)?;
    control::write(&staging, &meta)?;
    let deb = out.join(format!("kiln_{}_{}.deb", meta.version, meta.arch));
    let mut pack = Command::new("dpkg-deb");
    pack.args(["--build", "--root-owner-group"]);
    if args.profile != "release" {
        // A debug build's binary is ~170 MB of debug info: xz would take
        // a minute over a package that is installed once and purged.
        pack.args(["-Zgzip", "-z1"]);
    }
    let status = pack
        .arg(&staging)
        .arg(&deb)
        .status()
        .context("cannot run dpkg-deb (apt-get install dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb --build {} failed ({status})", staging.display());
    }
    Ok(deb)
}

/// `CARGO_TARGET_DIR`, or the workspace's `target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

/// `cargo build -p kiln --profile PROFILE`; the binary's path.
fn build_kiln(root: &Path, target: &Path, profile: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "--package",
            "kiln",
            "--bin",
            "kiln",
            "--profile",
            profile,
        ])
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of kiln ({profile}) failed ({status})");
    }
    // Cargo's directory for the dev profile is `debug`.
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(target.join(dir).join("kiln"))
}
