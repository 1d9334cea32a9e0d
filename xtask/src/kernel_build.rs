//! `cargo xtask kernel`: the production guest kernel, everything built in,
//! from a kernel source tree (Debian's `linux-source-6.1` by default) and
//! the config fragments in `kernel/`.
//!
//! `make allnoconfig`, then `scripts/kconfig/merge_config.sh` with
//! `microvm.fragment`, `kiln.fragment` and the architecture's fragment,
//! then `make olddefconfig`, then a check that every option a fragment set
//! survived (a dependency can silently switch one off), then the build.

pub mod kconfig;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::image::progress::Progress;
use crate::image::workspace_root;

/// Debian's kernel source package and where it puts the tarball.
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// Also `amd64`, Debian's name (as `cargo xtask image --arch` takes).
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    /// Also `arm64`. The output is the uncompressed `Image`, the format
    /// Firecracker boots on aarch64 (it takes no vmlinux or bzImage there).
    #[value(name = "aarch64", alias = "arm64")]
    Aarch64,
}

impl Arch {
    fn host() -> Self {
        if std::env::consts::ARCH == "aarch64" {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// The kernel's ARCH=.
    fn make_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "arm64",
        }
    }
    /// The make target and the file it produces, relative to the build dir.
    fn image(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("vmlinux", "vmlinux"),
            Arch::Aarch64 => ("Image", "arch/arm64/boot/Image"),
        }
    }
    fn cross_compile(self) -> Option<&'static str> {
        (self != Arch::host()).then_some(match self {
            Arch::X86_64 => "x86_64-linux-gnu-",
            Arch::Aarch64 => "aarch64-linux-gnu-",
        })
    }
    fn cross_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "gcc-x86-64-linux-gnu",
            Arch::Aarch64 => "gcc-aarch64-linux-gnu",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kernel source tree (default: Debian's linux-source-6.1, unpacked
    /// under target/kiln-kernel/src).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Arch::host())]
    pub arch: Arch,
    /// Output directory (default: target/kiln-kernel/<arch>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Stop after the merged .config is checked (seconds, not minutes).
    #[arg(long)]
    pub config_only: bool,
    /// Parallel make jobs (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

impl Args {
    /// The defaults, for `arch`.
    pub fn for_arch(arch: Arch) -> Args {
        Args {
            source: None,
            arch,
            out: None,
            config_only: false,
            jobs: None,
        }
    }
}

/// Where [`run`] puts the kernel image by default.
pub fn image_path(workspace: &Path, arch: Arch) -> PathBuf {
    let (_, produced) = arch.image();
    default_out(workspace, arch).join(produced.rsplit('/').next().unwrap_or(produced))
}

fn default_out(workspace: &Path, arch: Arch) -> PathBuf {
    workspace.join("target/kiln-kernel").join(arch.name())
}

pub fn run(args: Args) -> Result<()> {
    let ws = workspace_root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&ws, args.arch));
    let progress = Progress::new();
    ensure_tools(args.arch, args.config_only)?;
    let source = match &args.source {
        Some(s) => s.clone(),
        None => debian_source(&ws.join("target/kiln-kernel/src"), &progress)?,
    };
    if !source.join("scripts/kconfig/merge_config.sh").is_file() {
        bail!(
            "{} is not a kernel source tree (no scripts/kconfig/merge_config.sh)",
            source.display()
        );
    }
    let build = out.join("build");
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    let fragments: Vec<PathBuf> = ["microvm.fragment", "kiln.fragment"]
        .iter()
        .map(|f| ws.join("kernel").join(f))
        .chain(std::iter::once(
            ws.join("kernel")
                .join(format!("{}.fragment", args.arch.name())),
        ))
        .collect();

    let step = progress.step("configure");
    // A config-only run for another architecture works with the host's
    // compiler; a build configures with the cross compiler it will use.
    let cross = !args.config_only;
    let config = configure(&source, &build, args.arch, cross, &fragments)?;
    step.done(&config.display().to_string());
    if args.config_only {
        std::fs::copy(&config, out.join("config"))?;
        eprintln!("config checked: {}", out.join("config").display());
        return Ok(());
    }

    let (target, produced) = args.arch.image();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let step = progress.step(&format!("make -j{jobs} {target}"));
    let mut cmd = make(&source, &build, args.arch, true);
    cmd.arg(format!("-j{jobs}")).arg(target);
    run_streaming(&mut cmd, |line| step.message(line)).context("building the kernel")?;
    step.done("");
    let image = out.join(produced.rsplit('/').next().unwrap_or(produced));
    std::fs::copy(build.join(produced), &image).with_context(|| {
        format!(
            "copying {} to {}",
            build.join(produced).display(),
            image.display()
        )
    })?;
    std::fs::copy(&config, out.join("config"))?;
    eprintln!("kernel: {}", image.display());
    Ok(())
}

/// allnoconfig + fragments + olddefconfig, then the survival check.
fn configure(
    source: &Path,
    build: &Path,
    arch: Arch,
    cross: bool,
    fragments: &[PathBuf],
) -> Result<PathBuf> {
    let mut reqs = Vec::new();
    for f in fragments {
        reqs.extend(kconfig::read_fragment(f)?);
    }
    run_quiet(make(source, build, arch, cross).arg("allnoconfig"))?;
    let config = build.join(".config");
    let mut merge = Command::new(source.join("scripts/kconfig/merge_config.sh"));
    merge
        .current_dir(source)
        .env("ARCH", arch.make_arch())
        .arg("-m")
        .arg("-O")
        .arg(build)
        .arg(&config)
        .args(fragments);
    run_quiet(&mut merge)?;
    run_quiet(make(source, build, arch, cross).arg("olddefconfig"))?;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    kconfig::verify(&reqs, &kconfig::parse_config(&text))?;
    Ok(config)
}

fn make(source: &Path, build: &Path, arch: Arch, cross: bool) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(source)
        .arg(format!("O={}", build.display()))
        .arg(format!("ARCH={}", arch.make_arch()));
    if let Some(prefix) = arch.cross_compile().filter(|_| cross) {
        cmd.arg(format!("CROSS_COMPILE={prefix}"));
    }
    cmd
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `cmd`, handing each output line to `each`, keeping the last lines
/// for the error.
fn run_streaming(cmd: &mut Command, each: impl Fn(&str)) -> Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut tail = std::collections::VecDeque::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            each(line.trim());
            tail.push_back(line);
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}); last output:\n{}",
            Vec::from(tail).join("\n")
        );
    }
    Ok(())
}

/// Build tools, installed with apt-get when missing and running as root.
fn ensure_tools(arch: Arch, config_only: bool) -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    let have = |bin: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for (bin, pkg) in [
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
    ] {
        if !have(bin) {
            missing.push(pkg);
        }
    }
    if !config_only {
        if !Path::new("/usr/include/gelf.h").exists() {
            missing.push("libelf-dev");
        }
        if !Path::new("/usr/include/openssl/ssl.h").exists() {
            missing.push("libssl-dev");
        }
        if let Some(cross) = arch.cross_compile() {
            if !have(&format!("{cross}gcc")) {
                missing.push(arch.cross_package());
            }
        }
    }
    apt_install(&missing)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing build dependencies; run: sudo apt-get install {}",
            packages.join(" ")
        );
    }
    eprintln!("installing {}", packages.join(" "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!(
            "apt-get install {} failed ({status}); try apt-get update first",
            packages.join(" ")
        );
    }
    Ok(())
}

/// Debian's kernel source, unpacked once under `dir`.
fn debian_source(dir: &Path, progress: &Progress) -> Result<PathBuf> {
    let tree = dir.join(SOURCE_PACKAGE);
    if tree.join("Makefile").is_file() {
        return Ok(tree);
    }
    if !Path::new(SOURCE_TARBALL).is_file() {
        apt_install(&[SOURCE_PACKAGE])?;
    }
    let step = progress.step(&format!("unpack {SOURCE_TARBALL}"));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack.")
        .tempdir_in(dir)?;
    run_quiet(
        Command::new("tar")
            .arg("-xf")
            .arg(SOURCE_TARBALL)
            .arg("-C")
            .arg(tmp.path()),
    )?;
    std::fs::rename(tmp.path().join(SOURCE_PACKAGE), &tree)
        .with_context(|| format!("{SOURCE_TARBALL} did not hold {SOURCE_PACKAGE}/"))?;
    step.done(&tree.display().to_string());
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn debian_names_pick_the_same_arch_and_arm64_builds_an_image() {
        assert_eq!(Arch::from_str("arm64", false), Ok(Arch::Aarch64));
        assert_eq!(Arch::from_str("aarch64", false), Ok(Arch::Aarch64));
        assert_eq!(Arch::from_str("amd64", false), Ok(Arch::X86_64));
        assert!(Arch::from_str("riscv64", false).is_err());
        assert_eq!(Arch::Aarch64.image(), ("Image", "arch/arm64/boot/Image"));
        assert_eq!(Arch::Aarch64.make_arch(), "arm64");
        if Arch::host() == Arch::X86_64 {
            assert_eq!(Arch::Aarch64.cross_compile(), Some("aarch64-linux-gnu-"));
            assert_eq!(Arch::Aarch64.cross_package(), "gcc-aarch64-linux-gnu");
        }
        let ws = Path::new("/ws");
        assert_eq!(
            image_path(ws, Arch::Aarch64),
            Path::new("/ws/target/kiln-kernel/aarch64/Image")
        );
    }
}
