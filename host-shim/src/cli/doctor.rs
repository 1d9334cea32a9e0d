//! `kiln doctor`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::doctor::{diagnose_with_kvm, probe_kvm, DoctorConfig, Level};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The image directory `cargo xtask image` wrote.
    #[arg(long, value_name = "DIR", default_value = "target/kiln-image")]
    pub image: PathBuf,
    /// The address pool VMs' /30 links come from (`pool` in [network]):
    /// checked against the host's addresses and routes.
    #[arg(long, value_name = "CIDR", default_value = crate::net::DEFAULT_POOL4)]
    pub net_pool: ipnet::Ipv4Net,
}

pub fn main(args: DoctorArgs) -> ExitCode {
    let mut cfg = DoctorConfig {
        image_dir: args.image,
        ..Default::default()
    };
    cfg.net.pool4 = args.net_pool;
    // The probe boots the image's kernel under KVM, and shares its cached
    // answer with `kiln run`.
    let cache = crate::vm::RuntimeDirs::from_env()
        .ok()
        .map(|d| d.runtime.join("accel-probe"));
    let kernel = cfg.image_dir.join(crate::vm::image::KERNEL);
    let kvm = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(probe_kvm(
            &cfg.kvm_device,
            std::path::Path::new(&cfg.qemu),
            &kernel,
            cache,
        )),
        Err(_) => crate::doctor::check_kvm(&cfg.kvm_device),
    };
    let report = diagnose_with_kvm(&cfg, kvm);
    print!("{}", report.render());
    if report.worst() == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
