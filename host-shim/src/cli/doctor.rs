//! `kiln doctor`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::doctor::{diagnose, DoctorConfig, Level};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The image directory `cargo xtask image` wrote.
    #[arg(long, value_name = "DIR", default_value = "target/kiln-image")]
    pub image: PathBuf,
}

pub fn main(args: DoctorArgs) -> ExitCode {
    let cfg = DoctorConfig {
        image_dir: args.image,
        ..Default::default()
    };
    let report = diagnose(&cfg);
    print!("{}", report.render());
    if report.worst() == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
