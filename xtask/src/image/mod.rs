//! `cargo xtask image`: bakes the guest image directory — `rootfs.ext4`,
//! the kernel and initramfs, and `manifest.json` — from the recipe in
//! `rootfs/`.
//!
//! Steps: load the recipe; pick the mirror from the host's apt
//! configuration; `mmdebstrap` a Debian root into a staging directory; lay
//! the recipe's files, the accounts, kiln-init and the actions runner into
//! it; `mkfs.ext4 -d` it; then move the artifacts into the output directory
//! and write the manifest last. A failed build leaves the output directory
//! as it was.

pub mod accounts;
pub mod cache;
pub mod customize;
pub mod debootstrap;
pub mod digest;
pub mod ext4;
pub mod manifest;
pub mod mirror;
pub mod progress;
pub mod recipe;
pub mod rootpath;
pub mod runner;
pub mod scratch;
pub mod skeleton;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use accounts::Accounts;
use manifest::{Artifact, Component, Manifest};
use progress::Progress;

/// The Debian release the guest runs.
pub const SUITE: &str = "bookworm";
pub const ROOTFS: &str = "rootfs.ext4";
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd";

#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("runner")
        .required(true)
        .multiple(true)
        .args(["runner_tarball", "runner_version", "no_runner"])
))]
pub struct Args {
    /// The guest's architecture: amd64 (x86_64) or arm64 (aarch64); default:
    /// the host's. Another architecture's root is installed through
    /// qemu-user-static (binfmt_misc), and its VMs run emulated here.
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    pub arch: Option<String>,
    /// Output directory (default: <workspace>/target/kiln-image).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Install the actions runner from this release tarball.
    #[arg(long, value_name = "PATH")]
    pub runner_tarball: Option<PathBuf>,
    /// Download this actions runner release from GitHub (sha256-checked);
    /// with --runner-tarball, the version that tarball holds.
    #[arg(long, value_name = "V")]
    pub runner_version: Option<String>,
    /// No actions runner: a test image.
    #[arg(long, conflicts_with_all = ["runner_tarball", "runner_version"])]
    pub no_runner: bool,
    /// Give the runner password-less sudo in every VM (otherwise only when
    /// the Job adds the sudo group).
    #[arg(long)]
    pub sudo: bool,
    /// Image size in MiB (default: the content plus headroom).
    #[arg(long, value_name = "N")]
    pub size_mib: Option<u64>,
    /// Debian mirror to build from (default: the host's apt configuration).
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Recipe directory (default: <workspace>/rootfs).
    #[arg(long, value_name = "DIR")]
    pub recipe: Option<PathBuf>,
    /// kiln-init binary to install as /sbin/init.
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// Guest kernel to ship in the image directory.
    #[arg(long, value_name = "PATH", requires = "initrd")]
    pub kernel: Option<PathBuf>,
    /// Initramfs to ship in the image directory.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Rebuild even when the recipe and inputs are unchanged.
    #[arg(long)]
    pub force: bool,
}

/// Modules the image's initramfs carries for Debian's cloud kernel: every
/// virtio transport either VMM uses, the disks, the overlay root, the NIC,
/// and what rootless podman needs (TUN for slirp4netns/pasta, FUSE). The
/// host picks which to load with `kiln.modules=`; the root has no
/// `/lib/modules`, so anything a job needs must be loaded at boot.
impl Args {
    /// `cargo xtask image --no-runner --out DIR`: the image tests and the
    /// demo boot (no actions runner, everything else as in production).
    pub fn test_image(out: PathBuf) -> Args {
        Args {
            arch: None,
            out: Some(out),
            runner_tarball: None,
            runner_version: None,
            no_runner: true,
            sudo: false,
            size_mib: None,
            mirror: None,
            recipe: None,
            init: None,
            kernel: None,
            initrd: None,
            force: false,
        }
    }
}

pub const CLOUD_KERNEL_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_blk",
    "overlay",
    "failover",
    "net_failover",
    "virtio_net",
    "tun",
    "fuse",
    "virtio_rng",
];

/// Where the image's kernel and initramfs come from.
#[derive(Debug, Clone)]
pub enum KernelInput {
    /// Debian's cloud kernel (fetched by [`crate::guest_kernel`]) and an
    /// initramfs with kiln-init and [`CLOUD_KERNEL_MODULES`].
    DebianCloud(crate::guest_kernel::GuestKernel),
    /// `--kernel` and `--initrd` as given.
    Given { kernel: PathBuf, initrd: PathBuf },
}

/// Everything a build depends on, resolved.
#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    pub recipe_dir: PathBuf,
    pub mirrors: mirror::Mirrors,
    pub arch: String,
    pub init: PathBuf,
    pub runner: Option<RunnerInput>,
    pub kernel: KernelInput,
    pub sudo: bool,
    pub size_mib: Option<u64>,
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct RunnerInput {
    pub tarball: PathBuf,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "cargo xtask image must run as root: mmdebstrap installs as root and the image keeps \
         the root's owners and setuid bits (try: sudo -E cargo xtask image ...)"
    )]
    NotRoot,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Recipe(#[from] recipe::RecipeError),
    #[error(transparent)]
    Skeleton(#[from] skeleton::SkeletonError),
    #[error(transparent)]
    Mirror(#[from] mirror::MirrorError),
    #[error(transparent)]
    Bootstrap(#[from] debootstrap::BootstrapError),
    #[error(transparent)]
    Customize(#[from] customize::CustomizeError),
    #[error(transparent)]
    Accounts(#[from] accounts::AccountsError),
    #[error(transparent)]
    Runner(#[from] runner::RunnerError),
    #[error(transparent)]
    Ext4(#[from] ext4::Ext4Error),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Digest(#[from] digest::DigestError),
    #[error(transparent)]
    Kmod(#[from] crate::kmod::KmodError),
    #[error(transparent)]
    Initramfs(#[from] crate::initramfs::InitramfsError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}

/// Debian's name for the architecture this runs on.
pub fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

/// `--arch`: Debian's names, or the kernel's for the same thing.
pub fn parse_arch(s: &str) -> Result<String, String> {
    match s {
        "amd64" | "x86_64" => Ok("amd64".into()),
        "arm64" | "aarch64" => Ok("arm64".into()),
        _ => Err(format!(
            "{s:?} is not an architecture Kiln bakes: use amd64 (x86_64) or arm64 (aarch64)"
        )),
    }
}

/// kiln-init's Rust target for Debian architecture `arch`.
pub fn init_target(arch: &str) -> &'static str {
    match arch {
        "arm64" => "aarch64-unknown-linux-musl",
        _ => crate::guest_init::X86_64_TARGET,
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/kiln-image"));
    let mirrors = match &args.mirror {
        Some(url) => mirror::Mirrors::from_url(url)?,
        None => mirror::Mirrors::from_host(Path::new("/etc/apt"))?,
    };
    let arch = args
        .arch
        .clone()
        .unwrap_or_else(|| host_debian_arch().to_owned());
    let runner = match (&args.runner_tarball, &args.runner_version) {
        (Some(t), given) => Some(RunnerInput {
            version: runner::tarball_version(t, given.as_deref())?,
            tarball: t.clone(),
        }),
        (None, Some(v)) => {
            let step = Progress::new().step(&format!("download actions runner {v}"));
            let cache = root.join("target/kiln-cache/runner");
            let tarball = runner::download(v, &arch, &cache)?;
            step.done(&tarball.display().to_string());
            Some(RunnerInput {
                tarball,
                version: v.clone(),
            })
        }
        (None, None) => None,
    };
    let init = match args.init.clone() {
        Some(p) => p,
        None => {
            let step = Progress::new().step("build kiln-init");
            let p = crate::guest_init::build(&root, init_target(&arch))?;
            step.done(&p.display().to_string());
            p
        }
    };
    let kernel = match args.kernel.clone().zip(args.initrd.clone()) {
        Some((kernel, initrd)) => KernelInput::Given { kernel, initrd },
        None => {
            let step = Progress::new().step(&format!("fetch Debian's {arch} cloud kernel"));
            let cache = crate::guest_kernel::default_cache_dir(&root);
            let k = crate::guest_kernel::fetch_for(&cache, &arch)?;
            step.done(&k.package);
            KernelInput::DebianCloud(k)
        }
    };
    let opts = Options {
        out,
        recipe_dir: args.recipe.clone().unwrap_or_else(|| root.join("rootfs")),
        mirrors,
        arch,
        init,
        runner,
        kernel,
        sudo: args.sudo,
        size_mib: args.size_mib,
        force: args.force,
    };
    let outcome = build(&opts, &Progress::new())?;
    let m = &outcome.manifest;
    let size = m.artifacts.get(ROOTFS).map_or(0, |a| a.size);
    eprintln!(
        "{} {} ({} MiB image, {} MiB of files, {} packages{}) in {:.1} s",
        if outcome.rebuilt {
            "built"
        } else {
            "up to date:"
        },
        opts.out.display(),
        size >> 20,
        m.rootfs.content_bytes >> 20,
        m.packages.len(),
        m.runner
            .as_ref()
            .map(|r| format!(", runner {}", r.version))
            .unwrap_or_default(),
        outcome.seconds
    );
    Ok(())
}

pub struct Outcome {
    pub manifest: Manifest,
    /// False when the cache said the image was up to date.
    pub rebuilt: bool,
    pub seconds: f64,
}

/// The whole build. On error the output directory is as it was before.
pub fn build(opts: &Options, progress: &Progress) -> Result<Outcome, ImageError> {
    let started = std::time::Instant::now();
    let recipe = recipe::Recipe::load(&opts.recipe_dir)?;
    let accounts = Accounts::default();
    let init_sha = digest::sha256_file(&opts.init)?;
    let runner_sha = match &opts.runner {
        Some(r) => Some(digest::sha256_file(&r.tarball)?),
        None => None,
    };
    let kernel_key = match &opts.kernel {
        KernelInput::Given { kernel, initrd } => format!(
            "given {} {}",
            digest::sha256_file(kernel)?,
            digest::sha256_file(initrd)?
        ),
        KernelInput::DebianCloud(k) => format!(
            "debian {} {} {}",
            k.package,
            digest::sha256_file(&k.vmlinuz)?,
            CLOUD_KERNEL_MODULES.join(",")
        ),
    };

    let mut key = cache::Key::new();
    recipe.hash_into(key.hasher())?;
    key.add("suite", SUITE);
    key.add("arch", &opts.arch);
    key.add("sources", opts.mirrors.apt_lines(SUITE).join("\n"));
    key.add(
        "size_mib",
        opts.size_mib.map(|s| s.to_string()).unwrap_or_default(),
    );
    key.add("sudo", if opts.sudo { "always" } else { "group" });
    key.add("accounts", format!("{accounts:?}"));
    key.add("kiln-init", &init_sha);
    if let (Some(r), Some(sha)) = (&opts.runner, &runner_sha) {
        key.add("runner", format!("{} {sha}", r.version));
    }
    key.add("kernel", &kernel_key);
    let key = key.finish();

    if !opts.force {
        if let Some(manifest) = cache::up_to_date(&opts.out, &key) {
            return Ok(Outcome {
                manifest,
                rebuilt: false,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
        != 0
    {
        return Err(ImageError::NotRoot);
    }

    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    // Staging beside the output (same filesystem, so artifacts move in by
    // rename); removed with everything in it on any failure.
    let staging = tempfile::Builder::new()
        .prefix(".kiln-image-build.")
        .tempdir_in(&opts.out)
        .map_err(io(&opts.out))?;
    let root = staging.path().join("root");

    let step = progress.step("mmdebstrap");
    debootstrap::Bootstrap {
        suite: SUITE,
        arch: &opts.arch,
        mirrors: &opts.mirrors,
        packages: &recipe.packages,
    }
    .run(&root, &staging.path().join("mmdebstrap.log"), &step)?;
    step.done(&format!("{} packages requested", recipe.packages.len()));

    let step = progress.step("customize root");
    let laid = customize::lay_files(&root, &recipe)?;
    accounts.create(&root)?;
    customize::clear_host_leftovers(&root)?;
    customize::install_init(&root, &opts.init)?;
    if opts.sudo {
        customize::always_sudo(&root, &accounts)?;
    }
    let runner = match (&opts.runner, runner_sha) {
        (Some(r), Some(sha)) => {
            step.message(&format!("actions runner {}", r.version));
            runner::install(&root, &r.tarball, accounts.uid, accounts.gid)?;
            Some(Component {
                version: r.version.clone(),
                sha256: sha,
            })
        }
        _ => None,
    };
    let kiln_init = Component {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        sha256: init_sha,
    };
    write_image_info(&root, &key, &kiln_init, runner.as_ref())?;
    customize::check(&root)?;
    let status_path = root.join("var/lib/dpkg/status");
    let status = std::fs::read_to_string(&status_path).map_err(io(&status_path))?;
    let packages = manifest::installed_packages(&status);
    step.done(&format!(
        "{laid} recipe files, {} packages installed",
        packages.len()
    ));

    skeleton::build(&root, &staging.path().join(skeleton::DIR))?;

    let step = progress.step("mkfs.ext4");
    let usage = ext4::usage(&root)?;
    let size_mib = opts.size_mib.unwrap_or_else(|| ext4::auto_size_mib(usage));
    let staged_rootfs = staging.path().join(ROOTFS);
    ext4::make_image(
        &root,
        &staged_rootfs,
        usage,
        &ext4::Ext4Options {
            size_mib,
            label: "kiln-root".into(),
            uuid: cache::uuid_from(&key),
        },
    )?;
    step.done(&format!(
        "{size_mib} MiB for {} MiB of files",
        usage.bytes >> 20
    ));

    let step = progress.step("manifest");
    let mut staged: Vec<(String, PathBuf)> = vec![(ROOTFS.into(), staged_rootfs)];
    let kernel_info = stage_kernel(opts, staging.path(), &mut staged)?;
    let mut artifacts = BTreeMap::new();
    for (name, path) in &staged {
        let size = std::fs::metadata(path).map_err(io(path))?.len();
        artifacts.insert(
            name.clone(),
            Artifact {
                size,
                sha256: digest::sha256_file(path)?,
            },
        );
    }
    let manifest = Manifest {
        format: manifest::FORMAT,
        recipe_hash: key,
        built_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        suite: SUITE.into(),
        arch: opts.arch.clone(),
        mirrors: opts.mirrors.urls().iter().map(|s| s.to_string()).collect(),
        artifacts,
        rootfs: manifest::RootfsInfo {
            content_bytes: usage.bytes,
            files: usage.inodes,
            image_bytes: size_mib << 20,
        },
        kiln_init,
        runner,
        kernel: kernel_info,
        accounts,
        sudo: if opts.sudo { "always" } else { "group" }.into(),
        packages,
    };
    // Commit: the manifest goes first so a crash in between leaves a
    // directory without one (incomplete), never one whose manifest lies.
    let manifest_path = opts.out.join(manifest::FILE_NAME);
    match std::fs::remove_file(&manifest_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&manifest_path)(e)),
        _ => {}
    }
    for (name, path) in &staged {
        let dst = opts.out.join(name);
        std::fs::rename(path, &dst).map_err(io(&dst))?;
    }
    // A directory cannot be renamed over a non-empty one: the old skeleton
    // goes first (the image is incomplete, without a manifest, until the
    // manifest is written below).
    let skel = opts.out.join(skeleton::DIR);
    match std::fs::remove_dir_all(&skel) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&skel)(e)),
        _ => {}
    }
    let staged_skel = staging.path().join(skeleton::DIR);
    std::fs::rename(&staged_skel, &skel).map_err(io(&skel))?;
    manifest.write(&manifest_path)?;
    step.done("");
    drop(staging);
    Ok(Outcome {
        manifest,
        rebuilt: true,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Puts the kernel and initramfs into `staging` and lists them in `staged`.
fn stage_kernel(
    opts: &Options,
    staging: &Path,
    staged: &mut Vec<(String, PathBuf)>,
) -> Result<Option<manifest::KernelInfo>, ImageError> {
    let kernel_dst = staging.join(KERNEL);
    let initrd_dst = staging.join(INITRD);
    let info = match &opts.kernel {
        KernelInput::Given { kernel, initrd } => {
            std::fs::copy(kernel, &kernel_dst).map_err(io(&kernel_dst))?;
            std::fs::copy(initrd, &initrd_dst).map_err(io(&initrd_dst))?;
            None
        }
        KernelInput::DebianCloud(k) => {
            std::fs::copy(&k.vmlinuz, &kernel_dst).map_err(io(&kernel_dst))?;
            let resolved = crate::kmod::resolve(&k.modules_dir, CLOUD_KERNEL_MODULES)?;
            let builtin = k.modules_dir.join("modules.builtin");
            let fs = crate::initramfs::guest(&crate::initramfs::GuestContents {
                init: opts.init.clone(),
                kernel_release: k.release.clone(),
                modules: resolved.modules.clone(),
                modules_builtin: builtin.is_file().then_some(builtin),
                busybox: None,
            })?;
            fs.write_file(&initrd_dst)?;
            Some(manifest::KernelInfo {
                release: k.release.clone(),
                modules: resolved.modules.iter().map(|m| m.name.clone()).collect(),
            })
        }
    };
    staged.push((KERNEL.into(), kernel_dst));
    staged.push((INITRD.into(), initrd_dst));
    Ok(info)
}

/// `/etc/kiln/image`: what the guest (and a person in it) can read about the
/// image it runs, without the host's manifest.
fn write_image_info(
    root: &Path,
    key: &str,
    init: &Component,
    runner: Option<&Component>,
) -> Result<(), ImageError> {
    let text = format!(
        "KILN_IMAGE_RECIPE={key}\nKILN_INIT_VERSION={}\nKILN_INIT_SHA256={}\nACTIONS_RUNNER_VERSION={}\n",
        init.version,
        init.sha256,
        runner.map_or("none", |r| r.version.as_str()),
    );
    customize::write_file(root, Path::new("etc/kiln/image"), text.as_bytes(), 0o644)?;
    Ok(())
}
