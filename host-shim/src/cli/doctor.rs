//! `kiln doctor [--config FILE]`: the host's checks (see [`crate::doctor`]),
//! the state directory's, and with a config file also that it loads and
//! that GitHub takes the App's key. Exit 1 when any check fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::doctor::{
    check_app, check_config, check_state_dir, diagnose_with_kvm, probe_kvm, DoctorConfig, Finding,
    Level,
};

/// Used for the image when neither --image nor a config names one.
const DEFAULT_IMAGE_DIR: &str = "target/kiln-image";

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The image directory `cargo xtask image` wrote [default: the config's
    /// first pool's image, else target/kiln-image].
    #[arg(long, value_name = "DIR")]
    pub image: Option<PathBuf>,
    /// The address pool VMs' /30 links come from (`pool` in [network]):
    /// checked against the host's addresses and routes [default: the
    /// config's, else 10.200.0.0/16].
    #[arg(long, value_name = "CIDR")]
    pub net_pool: Option<ipnet::Ipv4Net>,
    /// `kiln serve`'s config file: check that it loads and that GitHub
    /// takes the App's key (when the network reaches GitHub).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn main(args: DoctorArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln doctor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (config_findings, config) = match &args.config {
        Some(path) => {
            let (mut findings, config) = check_config(path);
            findings.push(rt.block_on(app_finding(config.as_ref())));
            (findings, config)
        }
        None => (Vec::new(), None),
    };
    let cfg = doctor_config(&args, config.as_ref());
    // The probe boots the image's kernel under KVM, and shares its cached
    // answer with `kiln run`.
    let cache = crate::vm::RuntimeDirs::from_env()
        .ok()
        .map(|d| d.runtime.join("accel-probe"));
    let kernel = cfg.image_dir.join(crate::vm::image::KERNEL);
    let kvm = rt.block_on(probe_kvm(
        &cfg.kvm_device,
        Path::new(&cfg.qemu),
        &kernel,
        cache,
    ));
    let mut report = diagnose_with_kvm(&cfg, kvm);
    report.findings.extend(state_findings());
    report.findings.extend(config_findings);
    print!("{}", report.render());
    if report.worst() == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What the host checks look at: the flags, else the config's values.
fn doctor_config(args: &DoctorArgs, config: Option<&Config>) -> DoctorConfig {
    let mut cfg = DoctorConfig {
        image_dir: args
            .image
            .clone()
            .or_else(|| {
                config
                    .and_then(|c| c.pools.first())
                    .map(|p| p.image.clone())
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_DIR)),
        ..Default::default()
    };
    if let Some(pool) = args.net_pool.or_else(|| config.map(|c| c.network.pool4)) {
        cfg.net.pool4 = pool;
    }
    cfg
}

/// The state directory `kiln serve` would use.
fn state_findings() -> Vec<Finding> {
    match crate::job::state_dir_from_env() {
        Ok(dir) => check_state_dir(&dir),
        Err(e) => vec![Finding::problem(
            "state dir",
            Level::Fail,
            e.to_string(),
            "set KILN_STATE_DIR to an absolute path, or unset it",
        )],
    }
}

/// The App's key, when the config loaded.
async fn app_finding(config: Option<&Config>) -> Finding {
    match config {
        Some(c) => check_app(&c.github.api_url, c.github.app_id, &c.github.private_key).await,
        None => Finding::problem(
            "github app",
            Level::Warn,
            "not checked: the config does not load",
            "fix the config (see above), then run kiln doctor --config again",
        ),
    }
}
