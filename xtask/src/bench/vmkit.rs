//! What every VM benchmark shares: the image, the QEMU backend, the
//! directories VMs are made in, and the jobs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use kiln::vm::{Backend, BootImage, Image, Launcher, RuntimeDirs, Timeouts, VmRequest};
use kiln::vmm::qemu::{Accel, QemuConfig};
use kiln_protocol::Job;

/// Scratch disk per VM, as `kiln run`'s default: sparse, so its size costs
/// nothing until the job writes.
pub const SCRATCH_BYTES: u64 = 20 << 30;

/// Measurement settings for every guest: under TCG on `microvm` the guest
/// kernel finds no clocksource but jiffies (the TSC fails its stability
/// check; there is no HPET, ACPI PM timer or kvmclock), so every
/// `CLOCK_BOOTTIME` stamp would move in 4 ms steps. `tsc=reliable` keeps
/// the TSC, which TCG derives from the host's clock: nanosecond stamps.
pub const KERNEL_ARGS: &[&str] = &["tsc=reliable"];

/// A boot takes 2 to 10 s under TCG here; a guest that has not reached its
/// runner by then has hung (seen: about one boot in 25 stops for good in
/// the early kernel under TCG).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Kit {
    pub image: Image,
    pub qemu: QemuConfig,
    pub dirs: RuntimeDirs,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Added to every VM's kernel command line, on both boot paths.
    pub kernel_args: Vec<String>,
    /// Where the last boot's console log of each path is kept, for diagnosis.
    pub console_dir: PathBuf,
    /// Removed with everything in it when the kit is dropped.
    runtime_root: PathBuf,
}

impl Kit {
    /// `runtime_root` must be short (VM sockets live below it) and is the
    /// bench's alone; scratch disks go to `disks` (a real disk, not tmpfs).
    pub fn new(
        image_dir: &Path,
        runtime_root: PathBuf,
        disks: PathBuf,
        accel_cache: PathBuf,
        console_dir: PathBuf,
        vcpus: u32,
        memory_mib: u32,
    ) -> anyhow::Result<Kit> {
        let image = Image::open(image_dir)?;
        let qemu = QemuConfig {
            accel_cache: Some(accel_cache),
            ..QemuConfig::from_env()?
        };
        if runtime_root.exists() {
            std::fs::remove_dir_all(&runtime_root)
                .with_context(|| format!("clearing {}", runtime_root.display()))?;
        }
        Ok(Kit {
            image,
            qemu,
            dirs: RuntimeDirs::new(runtime_root.join("run"), disks),
            vcpus,
            memory_mib,
            kernel_args: KERNEL_ARGS.iter().map(|s| s.to_string()).collect(),
            console_dir,
            runtime_root,
        })
    }

    pub fn launcher(&self) -> anyhow::Result<Launcher> {
        Ok(Launcher::new(
            Backend::Qemu(self.qemu.clone()),
            self.dirs.clone(),
        )?)
    }

    /// The accelerator QEMU will use, and why (runs the KVM probe once,
    /// cached for this host boot).
    pub async fn accel(&self) -> anyhow::Result<(Accel, String)> {
        let qemu =
            kiln::vmm::qemu::tools::find(kiln::vmm::qemu::tools::QEMU, &self.qemu.qemu, &[])?;
        let d = kiln::vmm::qemu::accel::decide(
            self.qemu.accel,
            &kiln::vmm::qemu::accel::Probe {
                qemu,
                kernel: self.image.boot.kernel.clone(),
                machine: self.qemu.machine,
                kvm_device: self.qemu.kvm_device.clone(),
                timeout: self.qemu.probe_timeout,
                cache_file: self.qemu.accel_cache.clone(),
            },
        )
        .await?;
        Ok((d.accel, d.reason))
    }

    /// CMD as the image's runner user, exactly as `kiln run` would send it.
    pub fn job(&self, command: &[&str]) -> anyhow::Result<Job> {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        kiln::cli::run::job_for(
            &command,
            &self.image.user,
            Duration::from_secs(120),
            Duration::from_secs(5),
        )
    }

    /// One VM with this kit's size and a fresh scratch disk.
    pub fn request(&self, job: Job) -> VmRequest {
        self.request_with(self.image.boot.clone(), job)
    }

    /// [`Kit::request`], booting `boot` (another kernel) instead of the
    /// image's own.
    pub fn request_with(&self, boot: BootImage, job: Job) -> VmRequest {
        VmRequest {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            scratch_bytes: Some(SCRATCH_BYTES),
            kernel_args: self.kernel_args.clone(),
            timeouts: Timeouts {
                boot: BOOT_TIMEOUT,
                ..Timeouts::default()
            },
            ..VmRequest::new(boot, job)
        }
    }

    pub fn runtime_root(&self) -> &Path {
        &self.runtime_root
    }
}

impl Drop for Kit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.runtime_root);
    }
}

/// Tries a VM run up to this many times: a boot that hangs (rare, under
/// TCG) is retried rather than ending the whole bench, and reported.
pub const ATTEMPTS: usize = 3;

/// Runs `f` until it succeeds, at most [`ATTEMPTS`] times; each failure
/// that is retried is added to `incidents` (and printed), so the results
/// say what happened.
pub async fn with_retries<T, F, Fut>(
    what: &str,
    incidents: &mut Vec<String>,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS => {
                let line = format!(
                    "{what}: attempt {attempt} failed and was retried: {}",
                    summary(&e)
                );
                eprintln!("{line}");
                incidents.push(line);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One line for an error that may carry a console log: its first line and
/// the console's last.
pub fn summary(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_owned();
    match lines.next_back() {
        Some(last) => format!("{first} … (console ended: {last})"),
        None => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_summary_keeps_the_cause_and_the_console_end() {
        let e = anyhow::anyhow!(
            "no Hello within 60s; console:\n[0.1] a\n\n[0.6] Switched to tsc-early\n"
        );
        assert_eq!(
            summary(&e),
            "no Hello within 60s; console: … (console ended: [0.6] Switched to tsc-early)"
        );
        assert_eq!(summary(&anyhow::anyhow!("plain")), "plain");
    }

    #[tokio::test]
    async fn retries_until_success_and_records_each_failure() {
        let mut incidents = Vec::new();
        let mut calls = 0;
        let v = with_retries("boot", &mut incidents, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    anyhow::bail!("hung {n}")
                }
                Ok(n)
            }
        })
        .await
        .expect("third attempt");
        assert_eq!(v, 3);
        assert_eq!(incidents.len(), 2);
        assert!(incidents[0].contains("attempt 1") && incidents[0].contains("hung 1"));
        let mut none = Vec::new();
        let err = with_retries("boot", &mut none, || async {
            anyhow::bail!("always") as anyhow::Result<()>
        })
        .await
        .expect_err("gives up");
        assert_eq!(err.to_string(), "always");
        assert_eq!(none.len(), ATTEMPTS - 1);
    }
}
