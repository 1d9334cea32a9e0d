//! `cargo xtask bench`: Kiln's benchmarks, each beside its baseline in the
//! same run, written to `BENCHMARKS.md` and `bench/results.json`.
//!
//! - [`boot`] — 1. boot to runner, kiln-init against systemd.
//! - [`disk`] — 2. per-VM disk, Kiln's scratch disk against copying.
//! - [`webhook`] — 3. webhook ingestion, `kiln serve` against a minimal
//!   axum server (no VM).
//! - [`churn`] — 4. VMs back to back, and what they leave behind.
//! - [`memory`] — 5. kiln-init's and the host side's memory.
//! - [`network`] — 6. the VM network: set-up and teardown per VM, and boots
//!   with the network on and off, in a throwaway network namespace.
//! - [`scaleset`] — 7. job sources: a job handed over to runner exec
//!   through the scale-set queue, beside the webhook path.
//!
//! Support: [`images`] (the bench image and the systemd path's initramfs),
//! [`probe`] (the stand-in runner), [`vmkit`] (VM set-up shared by the
//! benchmarks), [`machine`] (what the figures ran on), [`stats`],
//! [`results`] (the JSON schema) and [`render`] (the Markdown).
//!
//! Nothing here runs in CI's test command; only the unit tests of the
//! statistics, parsing and rendering do.

pub mod boot;
pub mod churn;
pub mod disk;
pub mod images;
pub mod machine;
pub mod memory;
pub mod network;
pub mod probe;
pub mod render;
pub mod results;
pub mod scaleset;
pub mod stats;
pub mod vmkit;
pub mod webhook;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::ValueEnum;

use results::{BackendInfo, Results, Webhook, SCHEMA};
use vmkit::Kit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Boot,
    Disk,
    Churn,
    Memory,
    Webhook,
    Network,
    ScaleSet,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Runs per figure.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub runs: usize,
    /// Smoke mode: one run per figure and 3 churn VMs (about a minute once
    /// the bench image exists); writes under target/kiln-bench/.
    #[arg(long)]
    pub quick: bool,
    /// VMs in the churn benchmark [default: 10, --quick: 3].
    #[arg(long, value_name = "N")]
    pub churn_vms: Option<usize>,
    /// VM networks made and removed in a row by the network benchmark
    /// (quick too: about 20 ms each).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub net_vms: usize,
    /// Requests per webhook throughput run [default: 30000, --quick: 10000].
    #[arg(long, value_name = "N")]
    pub webhook_requests: Option<usize>,
    /// Seconds per webhook latency run, at 1000 requests/s [default: 5,
    /// --quick: 2].
    #[arg(long, value_name = "S")]
    pub webhook_seconds: Option<u32>,
    /// Jobs per path in the scale-set benchmark [default: --runs, --quick: 2].
    #[arg(long, value_name = "N")]
    pub scale_set_runs: Option<usize>,
    /// Only these benchmarks (comma-separated); writes under
    /// target/kiln-bench/ unless --md/--json say otherwise.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub only: Vec<Which>,
    /// vCPUs per VM.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub vcpus: u32,
    /// Guest memory per VM.
    #[arg(long, value_name = "MiB", default_value_t = 1024)]
    pub memory: u32,
    /// Where to write the Markdown [default: BENCHMARKS.md at the
    /// workspace root for a full run, else target/kiln-bench/BENCHMARKS.md].
    #[arg(long, value_name = "PATH")]
    pub md: Option<PathBuf>,
    /// Where to write the JSON [default: bench/results.json for a full
    /// run, else target/kiln-bench/results.json].
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Add ARG to every guest's kernel command line, on every path (for
    /// experiments such as `--kernel-arg quiet`; recorded in the results).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub kernel_args: Vec<String>,
    /// Leave out the bench's own measurement settings (`tsc=reliable`):
    /// guests then boot with exactly kiln's command line, and their
    /// clock moves in 4 ms steps under TCG.
    #[arg(long)]
    pub plain_cmdline: bool,
    /// Skip the `kiln run` and `kiln serve` memory figures (they build
    /// kiln in release mode, and the fake GitHub API).
    #[arg(long)]
    pub no_kiln_run: bool,
    /// Boot only Debian's cloud kernel, not also Kiln's production kernel
    /// (which `cargo xtask kernel` builds, once, if it is missing).
    #[arg(long)]
    pub no_built_kernel: bool,
    /// Build the bench image, the probe and the systemd initramfs, then stop.
    #[arg(long)]
    pub prepare: bool,
    /// Rebuild the bench image even when it is up to date.
    #[arg(long)]
    pub force_image: bool,
    /// Only render the Markdown from an existing results JSON.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["prepare", "only", "quick"])]
    pub render: Option<PathBuf>,
}

impl Args {
    fn runs(&self) -> usize {
        if self.quick {
            1
        } else {
            self.runs
        }
    }

    fn wants(&self, w: Which) -> bool {
        self.only.is_empty() || self.only.contains(&w)
    }

    /// Whether any benchmark that boots VMs (or needs the bench image) runs.
    fn wants_vms(&self) -> bool {
        [
            Which::Boot,
            Which::Disk,
            Which::Churn,
            Which::Memory,
            Which::Network,
            Which::ScaleSet,
        ]
        .into_iter()
        .any(|w| self.wants(w))
    }

    /// A full run: every benchmark, N runs.
    fn full(&self) -> bool {
        !self.quick && self.only.is_empty()
    }

    fn outputs(&self, root: &Path, work: &Path) -> (PathBuf, PathBuf) {
        let (md, json) = if self.full() {
            (root.join("BENCHMARKS.md"), root.join("bench/results.json"))
        } else {
            (work.join("BENCHMARKS.md"), work.join("results.json"))
        };
        (
            self.md.clone().unwrap_or(md),
            self.json.clone().unwrap_or(json),
        )
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let work = root.join("target/kiln-bench");
    if let Some(json) = &args.render {
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let r: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
        let md = args
            .md
            .clone()
            .unwrap_or_else(|| root.join("BENCHMARKS.md"));
        write(&md, &render::render(&r))?;
        eprintln!("wrote {}", md.display());
        return Ok(());
    }
    let runs = args.runs();
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let churn_vms = args.churn_vms.unwrap_or(if args.quick { 3 } else { 10 });
    if churn_vms == 0 {
        bail!("--churn-vms must be at least 1");
    }

    let vms = if args.wants_vms() || args.prepare {
        Some(prepare_vms(&args, &root, &work)?)
    } else {
        None
    };
    if args.prepare {
        return Ok(());
    }
    // Built before anything is measured, so the compile does not overlap.
    let kiln_run = args.wants(Which::Memory) && !args.no_kiln_run;
    let webhook_bins = args.wants(Which::Webhook);
    let scale_set = args.wants(Which::ScaleSet);
    let scale_set_runs = args
        .scale_set_runs
        .unwrap_or(if args.quick { 2 } else { runs });
    if scale_set && scale_set_runs == 0 {
        bail!("--scale-set-runs must be at least 1");
    }
    let mut release = Vec::new();
    if kiln_run || webhook_bins || scale_set {
        release.push(("kiln", "kiln"));
    }
    if webhook_bins {
        release.push(("xtask", "kiln-bench-http"));
    }
    if args.wants(Which::Network) {
        release.push(("kiln-vm-tests", "net-churn"));
    }
    let release_dir = if release.is_empty() {
        None
    } else {
        Some(memory::build_release(&root, &release)?)
    };
    let kiln_binary = release_dir
        .as_ref()
        .filter(|_| kiln_run)
        .map(|d| d.join("kiln"));
    let fake_github = if kiln_binary.is_some() || scale_set {
        Some(memory::build_fake_github(&root)?)
    } else {
        None
    };
    let serve_bins = match (&kiln_binary, &fake_github) {
        (Some(kiln), Some(fake)) => Some(memory::serve::Binaries {
            kiln: kiln.clone(),
            fake_github: fake.clone(),
        }),
        _ => None,
    };
    let scale_set_bins = match (&release_dir, &fake_github) {
        (Some(dir), Some(fake)) if scale_set => Some(memory::serve::Binaries {
            kiln: dir.join("kiln"),
            fake_github: fake.clone(),
        }),
        _ => None,
    };
    let webhook_settings = webhook::Settings {
        runs,
        requests: args
            .webhook_requests
            .unwrap_or(if args.quick { 10_000 } else { 30_000 }),
        connections: 32,
        rate: 1000,
        rate_seconds: args
            .webhook_seconds
            .unwrap_or(if args.quick { 2 } else { 5 }),
        warmup: if args.quick { 1_000 } else { 2_000 },
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bench = async {
        let backend = match &vms {
            Some(v) => Some(v.backend().await?),
            None => None,
        };
        let label = backend
            .as_ref()
            .map_or_else(|| "no VM".to_owned(), |b| b.label.clone());
        let mut load = Vec::new();
        let boot = match &vms {
            Some(v) if args.wants(Which::Boot) => {
                let meter = machine::Meter::start("boot");
                let mut kernels = vec![boot::BootKernel::debian(
                    &v.kit,
                    &v.img.kernel.release,
                    v.initrd.clone(),
                )?];
                if let Some(b) = &v.built_in {
                    kernels.push(boot::BootKernel::built_in(
                        &v.kit,
                        b.vmlinux.clone(),
                        b.initrd.clone(),
                    )?);
                }
                let r = boot::run(&v.kit, &kernels, runs, &label).await?;
                load.push(meter.finish());
                Some(r)
            }
            _ => None,
        };
        let disk = match &vms {
            Some(v) if args.wants(Which::Disk) => {
                let meter = machine::Meter::start("disk");
                let rootfs = v.img.dir.join(crate::image::ROOTFS);
                let skeleton = v.img.dir.join(crate::image::skeleton::DIR);
                let dir = work.join("disk-bench");
                let r = tokio::task::block_in_place(|| disk::run(&dir, &rootfs, &skeleton, runs))?;
                load.push(meter.finish());
                Some(r)
            }
            _ => None,
        };
        let webhook = match &release_dir {
            Some(dir) if args.wants(Which::Webhook) => {
                let meter = machine::Meter::start("webhook");
                let bins = webhook::Binaries {
                    kiln: dir.join("kiln"),
                    http: dir.join("kiln-bench-http"),
                };
                let r = webhook::run(&bins, &work, webhook_settings).await?;
                load.push(meter.finish());
                Some(Webhook::Measured(Box::new(r)))
            }
            _ => None,
        };
        let churn = match &vms {
            Some(v) if args.wants(Which::Churn) => {
                let meter = machine::Meter::start("churn");
                let r = churn::run(&v.kit, churn_vms).await?;
                load.push(meter.finish());
                Some(r)
            }
            _ => None,
        };
        let memory = match &vms {
            Some(v) if args.wants(Which::Memory) => {
                let meter = machine::Meter::start("memory");
                let (rss, hwm, systemd) = match &boot {
                    Some(b) => (
                        b.kiln.pid1_rss_kib.clone(),
                        b.kiln.pid1_hwm_kib.clone(),
                        Some(b.systemd.pid1_rss_kib.clone()),
                    ),
                    None => {
                        let (r, h) = boot::kiln_pid1_memory(&v.kit, runs).await?;
                        (r, h, None)
                    }
                };
                let inputs = memory::Inputs {
                    kiln_init: &v.img.kiln_init,
                    kiln_init_rss: rss,
                    kiln_init_hwm: hwm,
                    systemd_rss: systemd,
                    kiln_binary: kiln_binary.clone(),
                    serve: serve_bins.clone(),
                    work: &work,
                };
                let r = memory::run(&v.kit, runs, inputs).await?;
                load.push(meter.finish());
                Some(r)
            }
            _ => None,
        };
        let network = match &release_dir {
            Some(dir) if args.wants(Which::Network) => {
                let meter = machine::Meter::start("network");
                let settings = network::Settings {
                    vms: args.net_vms,
                    boot_runs: runs,
                };
                let boot = vms.as_ref().map(|v| {
                    (
                        &v.kit,
                        format!("Debian's cloud kernel {} (modular)", v.img.kernel.release),
                    )
                });
                let r = network::run(&dir.join("net-churn"), &work, boot, &settings).await?;
                load.push(meter.finish());
                Some(r)
            }
            _ => None,
        };
        let scale_set = match (&vms, &scale_set_bins) {
            (Some(v), Some(bins)) => {
                let meter = machine::Meter::start("scale set");
                let r = scaleset::run(&v.kit, bins, &work, scale_set_runs).await?;
                load.push(meter.finish());
                Some(r)
            }
            _ => None,
        };
        anyhow::Ok(Results {
            schema: SCHEMA,
            generated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            command: command_line(),
            mode: if args.full() {
                "full"
            } else if args.quick {
                "quick"
            } else {
                "partial"
            }
            .into(),
            runs,
            git: machine::git_revision(&root),
            machine: machine::describe(vms.as_ref().map_or(&work, |v| &v.kit.dirs.disks)),
            backend,
            load,
            boot,
            disk,
            churn,
            memory,
            webhook,
            network,
            scale_set,
        })
    };
    // On Ctrl-C or SIGTERM the benchmark's future is dropped, which kills
    // and removes its VMs, instead of the process dying with them running.
    let results = rt.block_on(async {
        tokio::select! {
            r = bench => r,
            s = interrupted() => Err(anyhow::anyhow!("{s}: stopped; the running VMs were torn down")),
        }
    })?;
    drop(vms);

    let (md, json) = args.outputs(&root, &work);
    write(&json, &serde_json::to_string_pretty(&results)?)?;
    write(&md, &render::render(&results))?;
    eprintln!("bench: wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// What the VM benchmarks share: the bench image, the VM kit, the systemd
/// path's initramfs, and the production kernel's boot when it is built.
struct VmSetup {
    kit: Kit,
    img: images::BenchImage,
    initrd: PathBuf,
    built_in: Option<BuiltIn>,
}

/// Kiln's production kernel, and the systemd path's initramfs for it (no
/// modules: everything is built in).
struct BuiltIn {
    vmlinux: PathBuf,
    initrd: PathBuf,
}

impl VmSetup {
    /// The backend every VM figure is labelled with (probes KVM once).
    async fn backend(&self) -> anyhow::Result<BackendInfo> {
        let kit = &self.kit;
        let (accel, reason) = kit.accel().await?;
        let accel_name = accel.as_str().to_uppercase();
        Ok(BackendInfo {
            label: format!("QEMU {accel_name}"),
            vmm: "QEMU".into(),
            accel: accel_name,
            machine: kit.qemu.machine.name().into(),
            accel_reason: reason,
            vcpus: kit.vcpus,
            memory_mib: kit.memory_mib,
            guest_kernel: self.img.kernel.release.clone(),
            extra_kernel_args: kit.kernel_args.clone(),
        })
    }
}

fn prepare_vms(args: &Args, root: &Path, work: &Path) -> anyhow::Result<VmSetup> {
    eprintln!("bench: preparing the probe, the bench image and the systemd initramfs");
    let arch_target = match crate::image::host_debian_arch() {
        "arm64" => "aarch64-unknown-linux-musl",
        _ => crate::guest_init::X86_64_TARGET,
    };
    let probe = probe::build(&work.join("probe"), arch_target)?;
    let img = images::bench_image(root, work, &probe, args.force_image)?;
    let busybox = images::find_busybox()?;
    // Short: VM sockets live below it (Unix socket paths are limited).
    let runtime = PathBuf::from(format!("/tmp/kiln-bench-{}", std::process::id()));
    let mut kit = Kit::new(
        &img.dir,
        runtime,
        work.join("disks"),
        work.join("accel-probe"),
        work.to_path_buf(),
        args.vcpus,
        args.memory,
    )?;
    if args.plain_cmdline {
        kit.kernel_args.clear();
    }
    kit.kernel_args.extend(args.kernel_args.iter().cloned());
    let initrd = work.join("systemd-initrd");
    let modules = boot::modules_for(&kit, &kiln::vm::Backend::Qemu(kit.qemu.clone()));
    let names: Vec<&str> = modules.iter().map(String::as_str).collect();
    images::systemd_initramfs(&img.kernel, &names, &probe, &busybox, &initrd)?;
    let built_in = if args.no_built_kernel || !args.wants(Which::Boot) {
        None
    } else {
        let vmlinux = production_kernel(root)?;
        let initrd = work.join("systemd-initrd-built-in");
        images::systemd_initramfs(&img.kernel, &[], &probe, &busybox, &initrd)?;
        Some(BuiltIn { vmlinux, initrd })
    };
    if args.prepare {
        eprintln!(
            "bench: prepared {} (image {}), {}{}",
            probe.display(),
            img.dir.display(),
            initrd.display(),
            built_in
                .as_ref()
                .map(|b| format!(", {} and {}", b.vmlinux.display(), b.initrd.display()))
                .unwrap_or_default()
        );
    }
    Ok(VmSetup {
        kit,
        img,
        initrd,
        built_in,
    })
}

/// Kiln's production guest kernel, built by `cargo xtask kernel` (about
/// 10 minutes on two cores) if it is not there yet.
fn production_kernel(root: &Path) -> anyhow::Result<PathBuf> {
    let arch = match crate::image::host_debian_arch() {
        "arm64" => crate::kernel_build::Arch::Aarch64,
        _ => crate::kernel_build::Arch::X86_64,
    };
    let vmlinux = crate::kernel_build::image_path(root, arch);
    if !vmlinux.is_file() {
        eprintln!(
            "bench: building the production kernel {} (`cargo xtask kernel`, about 10 minutes on two cores; --no-built-kernel skips its boot figures)",
            vmlinux.display()
        );
        crate::kernel_build::run(crate::kernel_build::Args::for_arch(arch))
            .context("building the production kernel")?;
    }
    Ok(vmlinux)
}

/// Resolves on the first SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted (SIGINT)",
        _ = term.recv() => "terminated (SIGTERM)",
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().collect();
    let rest = args
        .iter()
        .position(|a| a == "bench")
        .map(|i| args[i + 1..].join(" "))
        .unwrap_or_default();
    format!("cargo xtask bench {rest}").trim_end().to_owned()
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
