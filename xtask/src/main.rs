//! `cargo xtask <command>`: Kiln's build and test automation.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and image tasks for Kiln")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks beside their baselines; writes BENCHMARKS.md and bench/results.json.
    Bench(xtask::bench::Args),
    /// Everything CI checks: fmt, clippy, guest builds for x86_64 and aarch64, all tests.
    Ci(xtask::ci::Args),
    /// The Debian package: kiln, its unit, the example config (--install-check: install, check, purge).
    Deb(xtask::deb::Args),
    /// The quick start: install what the host lacks, bake the image, run a job in a microVM.
    Demo(xtask::demo::Args),
    /// Bake the guest image: rootfs, kernel, initramfs, manifest.
    Image(xtask::image::Args),
    /// Build the production guest kernel from kernel/ config fragments.
    Kernel(xtask::kernel_build::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bench(a) => xtask::bench::run(a),
        Command::Ci(a) => xtask::ci::run(a),
        Command::Deb(a) => xtask::deb::run(a),
        Command::Demo(a) => xtask::demo::run(a),
        Command::Image(a) => xtask::image::run(a),
        Command::Kernel(a) => xtask::kernel_build::run(a),
    }
}
