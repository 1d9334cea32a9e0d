//! KVM or TCG.
//!
//! `/dev/kvm` existing and opening is not enough: on a nested,
//! paravirtualised KVM a stock guest kernel aborts QEMU ("failed to set
//! MSR") or hangs. So `auto` boots the guest kernel itself once under KVM,
//! without an initrd and with `panic=-1`: it prints its banner, fails to
//! mount a root, panics and reboots, and QEMU (`-no-reboot`) exits 0. That
//! takes well under a second where KVM works. Anything else (an error exit,
//! no banner, no exit within the probe timeout) means TCG.
//!
//! The answer is remembered per process, and, when a cache file is given,
//! per host boot (keyed on `/proc/sys/kernel/random/boot_id` and the QEMU
//! and kernel files), so only the first VM after a reboot pays for it.
//! `KILN_ACCEL=kvm|tcg` skips the probe; `KILN_ACCEL=auto` is the default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{tail, Machine, QemuError};
use crate::vmm::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model: the host's own under KVM, everything TCG emulates
    /// otherwise. On aarch64, TCG's pointer authentication uses QEMU's own
    /// cheap hash instead of emulating the QARMA cipher, which otherwise
    /// costs a large share of every emulated function call.
    pub fn cpu_model(self, machine: Machine) -> &'static str {
        match (self, machine) {
            (Accel::Kvm, _) => "host",
            (Accel::Tcg, Machine::Virt) => "max,pauth-impdef=on",
            (Accel::Tcg, _) => "max",
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub const ENV: &'static str = "KILN_ACCEL";

    /// `KILN_ACCEL`, or `auto` when unset or empty.
    pub fn from_env() -> Result<Self, QemuError> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(AccelChoice::Auto),
        }
    }
}

impl FromStr for AccelChoice {
    type Err = QemuError;
    fn from_str(s: &str) -> Result<Self, QemuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(QemuError::BadAccel {
                value: s.to_owned(),
            }),
        }
    }
}

/// The accelerator to use, and why, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

/// Everything the probe depends on.
#[derive(Debug, Clone)]
pub struct Probe {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub machine: Machine,
    pub kvm_device: PathBuf,
    pub timeout: Duration,
    /// Remembers the answer across processes until the host reboots.
    pub cache_file: Option<PathBuf>,
}

/// The accelerator for a guest of `guest`'s architecture when that is not
/// the host's: TCG, the only one that emulates another CPU; asking for KVM
/// is an error.
pub fn foreign(choice: AccelChoice, guest: Arch) -> Result<AccelDecision, QemuError> {
    let host = Arch::host();
    match choice {
        AccelChoice::Kvm => Err(QemuError::KvmForeign { guest, host }),
        AccelChoice::Auto | AccelChoice::Tcg => Ok(AccelDecision {
            accel: Accel::Tcg,
            reason: format!(
                "emulated: an {guest} guest on an {host} host runs under TCG, many times slower \
                 than under KVM (for testing images; run {guest} jobs on an {guest} host)"
            ),
        }),
    }
}

pub async fn decide(choice: AccelChoice, probe: &Probe) -> Result<AccelDecision, QemuError> {
    match choice {
        AccelChoice::Tcg => Ok(AccelDecision {
            accel: Accel::Tcg,
            reason: format!("{}=tcg", AccelChoice::ENV),
        }),
        AccelChoice::Kvm => match open_kvm(&probe.kvm_device) {
            Ok(()) => Ok(AccelDecision {
                accel: Accel::Kvm,
                reason: format!("{}=kvm (not probed)", AccelChoice::ENV),
            }),
            Err(reason) => Err(QemuError::KvmUnavailable { reason }),
        },
        AccelChoice::Auto => {
            if let Err(reason) = open_kvm(&probe.kvm_device) {
                return Ok(AccelDecision {
                    accel: Accel::Tcg,
                    reason,
                });
            }
            let key = ProbeKey::of(probe);
            let cell = {
                let mut memo = memo().lock().unwrap_or_else(|p| p.into_inner());
                memo.entry(key.clone()).or_default().clone()
            };
            let decision = cell
                .get_or_init(|| async {
                    if let Some(d) = probe
                        .cache_file
                        .as_deref()
                        .and_then(|f| read_cache(f, &key))
                    {
                        return d;
                    }
                    let d = run_probe(probe).await;
                    if let Some(f) = &probe.cache_file {
                        write_cache(f, &key, &d);
                    }
                    d
                })
                .await;
            Ok(decision.clone())
        }
    }
}

fn open_kvm(device: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map(drop)
        .map_err(|e| format!("cannot open {}: {e}", device.display()))
}

type Memo = Mutex<HashMap<ProbeKey, Arc<tokio::sync::OnceCell<AccelDecision>>>>;

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// Identifies one probe's inputs: files by path, size and mtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey(String);

impl ProbeKey {
    fn of(p: &Probe) -> ProbeKey {
        let key = format!(
            "{} {} {}",
            file_id(&p.qemu),
            file_id(&p.kernel),
            p.machine.name()
        );
        // One entry per line, fields split by tabs: neither may occur inside.
        ProbeKey(key.replace(['\t', '\n'], "?"))
    }
}

fn file_id(p: &Path) -> String {
    let meta = std::fs::metadata(p).ok();
    let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}:{len}:{mtime}", p.display())
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

const CACHE_MAGIC: &str = "kiln-accel-v2";

/// The cache file: a magic line, the boot id, then `key<TAB>accel<TAB>reason`
/// lines. Entries from another boot are worthless and ignored.
fn cache_entries(file: &Path) -> Vec<(String, Accel, String)> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let mut lines = text.lines();
    if lines.next() != Some(CACHE_MAGIC) || lines.next().map(str::to_owned) != boot_id() {
        return Vec::new();
    }
    lines
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let (key, accel, reason) = (f.next()?, f.next()?, f.next()?);
            let accel = match accel {
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                _ => return None,
            };
            Some((key.to_owned(), accel, reason.to_owned()))
        })
        .collect()
}

fn read_cache(file: &Path, key: &ProbeKey) -> Option<AccelDecision> {
    cache_entries(file)
        .into_iter()
        .find(|(k, _, _)| *k == key.0)
        .map(|(_, accel, reason)| AccelDecision {
            accel,
            reason: format!("{reason} (cached in {})", file.display()),
        })
}

fn write_cache(file: &Path, key: &ProbeKey, d: &AccelDecision) {
    let Some(boot) = boot_id() else { return };
    let mut text = format!("{CACHE_MAGIC}\n{boot}\n");
    for (k, accel, reason) in cache_entries(file) {
        if k != key.0 {
            text.push_str(&format!("{k}\t{}\t{reason}\n", accel.as_str()));
        }
    }
    let reason = d.reason.replace(['\t', '\n'], " ");
    text.push_str(&format!("{}\t{}\t{reason}\n", key.0, d.accel.as_str()));
    // Written aside and renamed, so a concurrent reader sees all or nothing.
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let result = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = result {
        tracing::warn!(file = %file.display(), error = %e, "could not cache the KVM probe's answer");
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Bytes the probe keeps of QEMU's stderr for the reason.
const PROBE_STDERR: usize = 2048;
const BANNER: &[u8] = b"Linux version";

async fn run_probe(p: &Probe) -> AccelDecision {
    let tcg = |reason: String| AccelDecision {
        accel: Accel::Tcg,
        reason: format!("KVM cannot run the guest kernel: {reason}"),
    };
    let started = Instant::now();
    let mut cmd = Command::new(&p.qemu);
    cmd.args(["-no-user-config", "-nodefaults", "-nographic", "-no-reboot"])
        .args(["-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256M"])
        .args([
            "-M",
            p.machine.qemu_machine(),
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(&p.kernel)
        .arg("-append")
        .arg(format!(
            "{} panic=-1 {}",
            p.machine.console(),
            p.machine.reboot_arg()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return tcg(format!("could not run {}: {e}", p.qemu.display())),
    };
    let banner = child
        .stdout
        .take()
        .map(|o| tokio::spawn(scan_for(o, BANNER)));
    let stderr = child.stderr.take().map(|e| tail::spawn(e, PROBE_STDERR));
    let status = tokio::time::timeout(p.timeout, child.wait()).await;
    if status.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let saw_banner = match banner {
        Some(t) => t.await.unwrap_or(false),
        None => false,
    };
    let stderr = match stderr {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    let elapsed = started.elapsed();
    match status {
        Err(_) => tcg(format!(
            "a KVM boot did not finish within {:?}{}",
            p.timeout,
            if saw_banner {
                ""
            } else {
                " and printed no kernel banner"
            }
        )),
        Ok(Err(e)) => tcg(format!("waiting for the probe failed: {e}")),
        Ok(Ok(s)) if s.success() && saw_banner => AccelDecision {
            accel: Accel::Kvm,
            reason: format!("a probe boot under KVM took {} ms", elapsed.as_millis()),
        },
        Ok(Ok(s)) => tcg(format!(
            "a probe boot under KVM ended with {s}{}: {}",
            if saw_banner { "" } else { ", no kernel banner" },
            first_line(&stderr)
        )),
    }
}

fn first_line(s: &str) -> &str {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no error output")
}

/// True once `needle` went by; reads to the end either way so QEMU never
/// blocks on the pipe.
async fn scan_for<R: AsyncRead + Unpin>(mut r: R, needle: &[u8]) -> bool {
    let mut found = false;
    let mut window: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return found,
            Ok(n) => {
                if found {
                    continue;
                }
                window.extend_from_slice(&buf[..n]);
                found = window.windows(needle.len()).any(|w| w == needle);
                // Keep only what could still start a match.
                let keep = needle.len().saturating_sub(1).min(window.len());
                window.drain(..window.len() - keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    fn probe(dir: &Path, qemu: PathBuf) -> Probe {
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"kernel").expect("kernel");
        // Any file that opens read-write stands in for /dev/kvm.
        let kvm = dir.join("kvm");
        std::fs::write(&kvm, b"").expect("kvm");
        Probe {
            qemu,
            kernel,
            machine: Machine::Microvm,
            kvm_device: kvm,
            timeout: Duration::from_secs(5),
            cache_file: Some(dir.join("accel-cache")),
        }
    }

    #[test]
    fn parses_choices() {
        assert_eq!("TCG".parse::<AccelChoice>().expect("tcg"), AccelChoice::Tcg);
        assert_eq!("kvm".parse::<AccelChoice>().expect("kvm"), AccelChoice::Kvm);
        let err = "hvf".parse::<AccelChoice>().expect_err("bad");
        assert!(err.to_string().contains("KILN_ACCEL") && err.to_string().contains("hvf"));
    }

    #[test]
    fn a_foreign_guest_is_emulated_and_never_kvm() {
        let other = match Arch::host() {
            Arch::X86_64 => Arch::Aarch64,
            Arch::Aarch64 => Arch::X86_64,
        };
        let d = foreign(AccelChoice::Auto, other).expect("auto");
        assert_eq!(d.accel, Accel::Tcg);
        assert!(
            d.reason.contains("emulated") && d.reason.contains(other.name()),
            "{}",
            d.reason
        );
        assert_eq!(
            foreign(AccelChoice::Tcg, other).expect("tcg").accel,
            Accel::Tcg
        );
        let err = foreign(AccelChoice::Kvm, other).expect_err("kvm");
        let msg = err.to_string();
        assert!(
            msg.contains(other.name()) && msg.contains(Arch::host().name()),
            "{msg}"
        );
        assert_eq!(Accel::Tcg.cpu_model(Machine::Virt), "max,pauth-impdef=on");
        assert_eq!(Accel::Tcg.cpu_model(Machine::Microvm), "max");
        assert_eq!(Accel::Kvm.cpu_model(Machine::Virt), "host");
    }

    #[tokio::test]
    async fn unopenable_kvm_device_means_tcg_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = probe(dir.path(), PathBuf::from("/nonexistent/qemu"));
        p.kvm_device = dir.path().join("no-kvm");
        let d = decide(AccelChoice::Auto, &p).await.expect("decide");
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("no-kvm"), "{}", d.reason);
        let err = decide(AccelChoice::Kvm, &p).await.expect_err("forced kvm");
        assert!(err.to_string().contains("no-kvm"), "{err}");
    }

    #[tokio::test]
    async fn a_qemu_that_aborts_under_kvm_means_tcg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let qemu = script(
            dir.path(),
            "qemu-abort",
            "echo 'qemu: error: failed to set MSR 0x10a to 0x69' >&2; exit 134",
        );
        let d = decide(AccelChoice::Auto, &probe(dir.path(), qemu))
            .await
            .expect("decide");
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("failed to set MSR"), "{}", d.reason);
    }

    #[tokio::test]
    async fn a_hanging_probe_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let qemu = script(
            dir.path(),
            "qemu-hang",
            "echo 'Linux version 6.1'; exec sleep 30",
        );
        let mut p = probe(dir.path(), qemu);
        p.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let d = decide(AccelChoice::Auto, &p).await.expect("decide");
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("did not finish"), "{}", d.reason);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_booting_probe_means_kvm_and_is_cached_per_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let count = dir.path().join("runs");
        let qemu = script(
            dir.path(),
            "qemu-ok",
            &format!(
                "echo run >> {}; echo '[    0.000000] Linux version 6.1.0'; exit 0",
                count.display()
            ),
        );
        let p = probe(dir.path(), qemu);
        let d = decide(AccelChoice::Auto, &p).await.expect("decide");
        assert_eq!(d.accel, Accel::Kvm, "{}", d.reason);
        // Same process: memoised.
        decide(AccelChoice::Auto, &p).await.expect("again");
        // Another process (simulated by reading the file directly) reuses it too.
        let cached =
            read_cache(p.cache_file.as_deref().expect("file"), &ProbeKey::of(&p)).expect("cached");
        assert_eq!(cached.accel, Accel::Kvm);
        assert!(cached.reason.contains("cached"), "{}", cached.reason);
        let runs = std::fs::read_to_string(&count).expect("runs");
        assert_eq!(runs.lines().count(), 1);
        // Another machine type is probed once and cached beside the first.
        let q35 = Probe {
            machine: Machine::Q35,
            ..p.clone()
        };
        decide(AccelChoice::Auto, &q35).await.expect("q35");
        let file = p.cache_file.as_deref().expect("file");
        assert!(read_cache(file, &ProbeKey::of(&p)).is_some());
        assert!(read_cache(file, &ProbeKey::of(&q35)).is_some());
        let runs = std::fs::read_to_string(&count).expect("runs");
        assert_eq!(runs.lines().count(), 2);
    }

    #[tokio::test]
    async fn exit_zero_without_a_banner_is_not_kvm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let qemu = script(dir.path(), "qemu-silent", "exit 0");
        let d = decide(AccelChoice::Auto, &probe(dir.path(), qemu))
            .await
            .expect("decide");
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("no kernel banner"), "{}", d.reason);
    }

    #[tokio::test]
    async fn banner_split_across_reads_is_found() {
        let (mut tx, rx) = tokio::io::duplex(4);
        let t = tokio::spawn(scan_for(rx, b"Linux version"));
        use tokio::io::AsyncWriteExt;
        tx.write_all(b"xxLinux ver").await.expect("w");
        tx.write_all(b"sion 6").await.expect("w");
        drop(tx);
        assert!(t.await.expect("join"));
    }
}
