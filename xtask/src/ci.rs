//! The one test command, `cargo xtask ci`: what the README tells people to
//! run and what `.ci/run` calls after installing prerequisites. Without
//! `--no-vm` (as root, like the VM tests) it also installs the .deb
//! (`cargo xtask deb --install-check`) and purges it again.
//!
//! arm64: `kiln` is cross-built for `aarch64-unknown-linux-gnu`, and the VM
//! tests include `tests/tests/arm64.rs`, which bakes the arm64 image once
//! (`target/kiln-image-arm64`, rebuilt only when its inputs change, like the
//! x86 one) and runs its jobs under TCG; `xtask/tests/image_build.rs`
//! builds arm64 images too.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where kiln-init's static builds go; the VM tests' harness builds there too.
const GUEST_TARGET_DIR: &str = "target/guest";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Skip the tests that boot VMs (formatting, lints, builds and unit tests only).
    #[arg(long)]
    pub no_vm: bool,
}

/// One step of the pipeline: a name for the log, and the command.
struct Step {
    name: &'static str,
    args: Vec<&'static str>,
    /// Run with the guest's own target dir, shared with the VM tests'
    /// nested build of kiln-init so nothing is compiled twice.
    guest_target_dir: bool,
    env: &'static [(&'static str, &'static str)],
}

/// The cross toolchain for `kiln` on aarch64: ring and rusqlite's bundled
/// SQLite compile C, and the binary links with glibc's aarch64 build
/// (Debian's `gcc-aarch64-linux-gnu`).
const AARCH64_GNU_ENV: &[(&str, &str)] = &[
    ("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc"),
    (
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    ),
];

fn steps(args: &Args) -> Vec<Step> {
    let step = |name, a: &[&'static str], guest_target_dir| Step {
        name,
        args: a.to_vec(),
        guest_target_dir,
        env: &[],
    };
    let mut s = vec![
        step("format", &["fmt", "--all", "--", "--check"], false),
        step(
            "lints",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            false,
        ),
        step(
            "kiln-init for x86_64 (static musl)",
            &[
                "build",
                "--package",
                "kiln-init",
                "--profile",
                "guest",
                "--target",
                "x86_64-unknown-linux-musl",
            ],
            true,
        ),
        step(
            "kiln-init for aarch64 (static musl)",
            &[
                "build",
                "--package",
                "kiln-init",
                "--profile",
                "guest",
                "--target",
                "aarch64-unknown-linux-musl",
            ],
            true,
        ),
        Step {
            env: AARCH64_GNU_ENV,
            ..step(
                "kiln for aarch64 (cross-built with gcc-aarch64-linux-gnu)",
                &[
                    "build",
                    "--package",
                    "kiln",
                    "--bins",
                    "--target",
                    "aarch64-unknown-linux-gnu",
                ],
                false,
            )
        },
        step(
            "fuzz targets compile",
            &["check", "--manifest-path", "fuzz/Cargo.toml"],
            false,
        ),
    ];
    if args.no_vm {
        s.push(step(
            "unit tests",
            &["test", "--workspace", "--exclude", "kiln-vm-tests"],
            false,
        ));
    } else {
        s.push(step(
            "all tests, VMs included",
            &["test", "--workspace"],
            false,
        ));
        // The .deb with the kiln the tests just built (the packaging is the
        // same for a release build, which would cost minutes of LTO here):
        // dpkg -i, the installed kiln --version and kiln doctor, dpkg --purge.
        s.push(step(
            "the .deb installs, runs and purges",
            &[
                "run",
                "--package",
                "xtask",
                "--",
                "deb",
                "--profile",
                "dev",
                "--install-check",
            ],
            false,
        ));
    }
    s
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for step in steps(&args) {
        eprintln!("==> {}: cargo {}", step.name, step.args.join(" "));
        let mut cmd = Command::new(&cargo);
        cmd.args(&step.args).current_dir(&root);
        cmd.envs(step.env.iter().copied());
        if step.guest_target_dir {
            cmd.env("CARGO_TARGET_DIR", root.join(GUEST_TARGET_DIR));
        }
        let status = cmd
            .status()
            .with_context(|| format!("could not run cargo for step {:?}", step.name))?;
        if !status.success() {
            bail!("step {:?} failed ({status})", step.name);
        }
    }
    eprintln!("==> all CI steps passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kiln_is_cross_built_for_aarch64_with_the_cross_gcc() {
        let all = steps(&Args { no_vm: true });
        let cross: Vec<&Step> = all
            .iter()
            .filter(|s| s.args.contains(&"aarch64-unknown-linux-gnu"))
            .collect();
        assert_eq!(cross.len(), 1);
        let s = cross[0];
        assert_eq!(s.args[..3], ["build", "--package", "kiln"]);
        for var in [
            "CC_aarch64_unknown_linux_gnu",
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        ] {
            assert!(
                s.env
                    .iter()
                    .any(|(k, v)| *k == var && *v == "aarch64-linux-gnu-gcc"),
                "{var} missing"
            );
        }
    }
}
