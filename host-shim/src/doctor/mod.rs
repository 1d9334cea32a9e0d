//! `kiln doctor`: checks the host for everything Kiln needs and says what
//! to do about each missing piece.
//!
//! - [`arch`] — the host's architecture: what runs natively, what only emulated;
//! - [`checks`] — KVM, the VMMs, the image, cgroups;
//! - [`net`] — what VMs' networks need (nftables, tun, an uplink, resolvers,
//!   a free address pool) and what would defeat them (another firewall's
//!   forward policy);
//! - [`state`] — `kiln serve`'s state directory and journal;
//! - [`config`] — with `--config`: the config file loads;
//! - [`github_app`] — with `--config`: GitHub takes the App's key.

pub mod arch;
mod checks;
pub mod config;
pub mod github_app;
pub mod net;
pub mod state;

use std::path::PathBuf;

pub use arch::check_arch;
pub use checks::{check_cgroup, check_image, check_kvm, check_tool, probe_kvm};
pub use config::check_config;
pub use github_app::check_app;
pub use net::{check_network, NetCheckConfig};
pub use state::check_state_dir;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Kiln works, with less (e.g. TCG instead of KVM, no Firecracker).
    Warn,
    /// Kiln cannot run jobs until this is fixed.
    Fail,
}

/// One line of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub name: &'static str,
    pub level: Level,
    /// What was found: a version, a path, an error.
    pub detail: String,
    /// What to do about it, when it is not Ok.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            name,
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn problem(
        name: &'static str,
        level: Level,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            name,
            level,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Where the doctor looks.
#[derive(Debug, Clone)]
pub struct DoctorConfig {
    pub image_dir: PathBuf,
    pub kvm_device: PathBuf,
    pub cgroup_root: PathBuf,
    pub qemu: String,
    pub firecracker: String,
    pub jailer: String,
    /// What the network checks look at.
    pub net: NetCheckConfig,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            image_dir: PathBuf::from("target/kiln-image"),
            kvm_device: PathBuf::from("/dev/kvm"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            qemu: format!("qemu-system-{}", std::env::consts::ARCH),
            firecracker: "firecracker".to_owned(),
            jailer: "jailer".to_owned(),
            net: NetCheckConfig::default(),
        }
    }
}

/// Runs every check. The result also says which backends can run jobs.
pub fn diagnose(cfg: &DoctorConfig) -> Report {
    diagnose_with_kvm(cfg, check_kvm(&cfg.kvm_device))
}

/// Like [`diagnose`], with the KVM finding made by the caller (e.g.
/// [`probe_kvm`], which boots the guest kernel under KVM).
pub fn diagnose_with_kvm(cfg: &DoctorConfig, kvm: Finding) -> Report {
    let qemu = check_tool(
        "qemu",
        &cfg.qemu,
        &["--version"],
        Level::Warn,
        "apt-get install qemu-system-x86 (qemu-system-arm on aarch64)",
    );
    let vhost = check_tool(
        "vhost-device-vsock",
        "vhost-device-vsock",
        &["--version"],
        Level::Warn,
        "cargo install --locked vhost-device-vsock",
    );
    let fc = check_tool(
        "firecracker",
        &cfg.firecracker,
        &["--version"],
        Level::Warn,
        "install the firecracker binary from a Firecracker release into /usr/local/bin",
    );
    let jailer = check_tool(
        "jailer",
        &cfg.jailer,
        &["--version"],
        Level::Warn,
        "install the jailer binary from the same Firecracker release into /usr/local/bin",
    );
    let qemu_usable = qemu.level == Level::Ok && vhost.level == Level::Ok;
    let fc_usable = fc.level == Level::Ok && jailer.level == Level::Ok && kvm.level == Level::Ok;
    let mut backends = Vec::new();
    if fc_usable {
        backends.push("firecracker");
    }
    if qemu_usable {
        backends.push("qemu");
    }
    let backend = if backends.is_empty() {
        Finding::problem(
            "backend",
            Level::Fail,
            "no VMM can run jobs",
            "install QEMU and vhost-device-vsock (see above), or Firecracker and its jailer on a host with KVM",
        )
    } else {
        Finding::ok("backend", format!("usable: {}", backends.join(", ")))
    };
    let host = crate::vmm::Arch::host();
    let arch = check_arch(
        host,
        kvm.level == Level::Ok,
        arch::find_emulator(host).as_deref(),
    );
    let mut findings = vec![
        arch,
        kvm,
        qemu,
        vhost,
        fc,
        jailer,
        backend,
        check_image(&cfg.image_dir),
        check_cgroup(&cfg.cgroup_root),
    ];
    findings.extend(check_network(&cfg.net));
    Report { findings }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst level found.
    pub fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Human-readable, one line per check and an indented fix under each problem.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            out.push_str(&format!("[{tag}] {:<20} {}\n", f.name, f.detail));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("       {:<20} fix: {fix}\n", ""));
            }
        }
        out
    }
}
