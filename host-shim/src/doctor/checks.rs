//! The individual checks, each taking the path or binary it inspects so
//! tests can point them at a temporary directory.

use std::path::Path;
use std::process::Command;

use super::{Finding, Level};
use crate::vmm::kvm::{self, KvmError};

/// [`crate::vmm::kvm::check`] as a finding: whether `device` opens and
/// answers the KVM API version.
pub fn check_kvm(device: &Path) -> Finding {
    match kvm::check(device) {
        Ok(d) => Finding::ok("kvm", d.to_string()),
        Err(e @ KvmError::Open { .. }) => Finding::problem(
            "kvm",
            Level::Warn,
            e.to_string(),
            "enable virtualisation (VT-x/AMD-V, or nested virtualisation on a cloud VM) and load kvm_intel or kvm_amd; without KVM only QEMU with TCG works, slowly",
        ),
        Err(e @ KvmError::Version { .. }) => Finding::problem(
            "kvm",
            Level::Warn,
            e.to_string(),
            "use a host kernel with a working KVM module",
        ),
    }
}

/// [`check_kvm`], then, where `/dev/kvm` answers, whether KVM can run a
/// guest at all: QEMU's probe boots `kernel` under KVM (see
/// [`crate::vmm::qemu::accel`]; the answer is cached in `cache` until the
/// host reboots). Nested, paravirtualised KVM often opens fine and then
/// aborts every guest.
pub async fn probe_kvm(
    device: &Path,
    qemu: &Path,
    kernel: &Path,
    cache: Option<std::path::PathBuf>,
) -> Finding {
    use crate::vmm::qemu::{accel, tools, Accel, AccelChoice, Machine};
    let opened = check_kvm(device);
    if opened.level != Level::Ok {
        return opened;
    }
    let not_probed = |why: String| Finding {
        detail: format!("{}; not probed: {why}", opened.detail),
        ..opened.clone()
    };
    if !kernel.is_file() {
        return not_probed(format!("no guest kernel at {}", kernel.display()));
    }
    // Another architecture's kernel says nothing about this host's KVM.
    let image_arch = kernel
        .parent()
        .and_then(|dir| crate::vm::Image::open(dir).ok())
        .map(|img| img.boot.arch);
    if let Some(arch) = image_arch.filter(|a| !a.is_native()) {
        return not_probed(format!(
            "the image is {arch}, which KVM on this {} host cannot run",
            crate::vmm::Arch::host()
        ));
    }
    let host = crate::vmm::Arch::host();
    let (_, tool) = crate::vmm::qemu::QemuConfig::default().program(host);
    let qemu = match tools::find(tool, qemu, &[]) {
        Ok(q) => q,
        Err(e) => return not_probed(e.to_string()),
    };
    let probe = accel::Probe {
        qemu,
        kernel: kernel.to_owned(),
        machine: Machine::for_arch(Machine::Microvm, host),
        kvm_device: device.to_owned(),
        timeout: std::time::Duration::from_secs(10),
        cache_file: cache,
    };
    match accel::decide(AccelChoice::Auto, &probe).await {
        Ok(d) if d.accel == Accel::Kvm => Finding::ok(
            "kvm",
            format!("{} runs guests ({})", device.display(), d.reason),
        ),
        Ok(d) => Finding::problem(
            "kvm",
            Level::Warn,
            format!("{} opens, but {}", device.display(), d.reason),
            "Firecracker needs a KVM that runs guests; QEMU falls back to TCG (slow). On a cloud VM use a bare-metal or nested-virtualisation instance type",
        ),
        Err(e) => not_probed(e.to_string()),
    }
}

/// Runs `binary args` and reports the first line it prints.
pub fn check_tool(
    name: &'static str,
    binary: &str,
    args: &[&str],
    missing: Level,
    fix: &str,
) -> Finding {
    match Command::new(binary).args(args).output() {
        Ok(out) if out.status.success() => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            let first = String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            Finding::ok(name, first)
        }
        Ok(out) => Finding::problem(
            name,
            missing,
            format!("`{binary} {}` failed ({})", args.join(" "), out.status),
            fix,
        ),
        Err(e) => Finding::problem(name, missing, format!("`{binary}` not runnable: {e}"), fix),
    }
}

/// The files `cargo xtask image` writes and `kiln run` boots.
pub const IMAGE_FILES: [&str; 4] = ["rootfs.ext4", "vmlinuz", "initrd", "manifest.json"];

pub fn check_image(dir: &Path) -> Finding {
    let missing: Vec<&str> = IMAGE_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        Finding::ok("image", format!("{} is complete", dir.display()))
    } else {
        Finding::problem(
            "image",
            Level::Fail,
            format!("{} lacks {}", dir.display(), missing.join(", ")),
            "run `cargo xtask image` (or pass --image DIR)",
        )
    }
}

/// The controllers a VM's cgroup uses (the jailer writes `cpu.max` and
/// `memory.max`; `pids` bounds a fork bomb of a broken VMM).
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The jailer's default parent cgroup (`FirecrackerSettings::parent_cgroup`).
const PARENT_CGROUP: &str = "kiln";

/// cgroup v2 with the controllers a VM's limits use, available at the root,
/// delegated to child cgroups (`cgroup.subtree_control`), and present in
/// Kiln's parent cgroup when it exists. A missing one is named: the real
/// jailer then fails with "Controller cpu is unavailable".
pub fn check_cgroup(root: &Path) -> Finding {
    let path = root.join("cgroup.controllers");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return Finding::problem(
                "cgroup v2",
                Level::Warn,
                format!("cannot read {}: {e} (no unified cgroup hierarchy)", path.display()),
                "the Firecracker backend's jailer needs cgroup v2: boot the host with systemd.unified_cgroup_hierarchy=1",
            )
        }
    };
    let lacking = lacking_in(&text);
    if !lacking.is_empty() {
        return Finding::problem(
            "cgroup v2",
            Level::Warn,
            format!("controllers {} are not available", lacking.join(", ")),
            "enable them in the parent's cgroup.subtree_control; without them VM limits are not enforced and the jailer fails (\"Controller cpu is unavailable\")",
        );
    }
    let subtree = root.join("cgroup.subtree_control");
    let parent = root.join(PARENT_CGROUP).join("cgroup.controllers");
    let not_delegated = std::fs::read_to_string(&subtree)
        .map(|t| lacking_in(&t))
        .unwrap_or_default();
    let not_in_parent = std::fs::read_to_string(&parent)
        .map(|t| lacking_in(&t))
        .unwrap_or_default();
    let (missing, where_) = if !not_delegated.is_empty() {
        (not_delegated, subtree.display().to_string())
    } else if !not_in_parent.is_empty() {
        (not_in_parent, parent.display().to_string())
    } else {
        return Finding::ok(
            "cgroup v2",
            format!(
                "controllers: {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        );
    };
    let plus: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    Finding::problem(
        "cgroup v2",
        Level::Warn,
        format!(
            "controllers {} are missing from {where_}: the jailer fails (\"Controller {} is unavailable\") and VM limits are not enforced",
            missing.join(", "),
            missing[0]
        ),
        format!(
            "run: echo '{}' > {} (and the same in {}/cgroup.subtree_control when that cgroup exists)",
            plus.join(" "),
            subtree.display(),
            root.join(PARENT_CGROUP).display()
        ),
    )
}

/// The needed controllers a `cgroup.controllers` or `cgroup.subtree_control`
/// text does not list.
fn lacking_in(text: &str) -> Vec<&'static str> {
    let have: Vec<&str> = text.split_whitespace().collect();
    CONTROLLERS
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_fix() {
        let f = check_tool(
            "x",
            "/nonexistent/kiln-tool",
            &["--version"],
            Level::Warn,
            "install x",
        );
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("/nonexistent/kiln-tool"), "{}", f.detail);
        assert_eq!(f.fix.as_deref(), Some("install x"));
    }

    #[test]
    fn present_tool_reports_its_first_line() {
        let f = check_tool("sh", "sh", &["-c", "echo v1.2; echo more"], Level::Fail, "");
        assert_eq!(f.level, Level::Ok);
        assert_eq!(f.detail, "v1.2");
    }

    #[test]
    fn failing_tool_is_a_problem() {
        let f = check_tool("sh", "sh", &["-c", "exit 3"], Level::Fail, "fix it");
        assert_eq!(f.level, Level::Fail);
        assert!(f.detail.contains("exit status: 3"), "{}", f.detail);
    }

    #[test]
    fn image_lists_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        let f = check_image(dir.path());
        assert_eq!(f.level, Level::Fail);
        assert!(
            f.detail.contains("rootfs.ext4, initrd, manifest.json"),
            "{}",
            f.detail
        );
        for name in IMAGE_FILES {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(check_image(dir.path()).level, Level::Ok);
    }

    #[test]
    fn cgroup_v1_or_missing_controllers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_cgroup(dir.path()).level, Level::Warn);
        std::fs::write(dir.path().join("cgroup.controllers"), "cpuset cpu io\n").unwrap();
        let f = check_cgroup(dir.path());
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("memory, pids"), "{}", f.detail);
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(check_cgroup(dir.path()).level, Level::Ok);
        // Available at the root, but not handed to child cgroups: the
        // real jailer's "Controller cpu is unavailable".
        std::fs::write(dir.path().join("cgroup.subtree_control"), "memory pids\n").unwrap();
        let f = check_cgroup(dir.path());
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.detail.contains("controllers cpu are missing"),
            "{}",
            f.detail
        );
        assert!(
            f.detail.contains("Controller cpu is unavailable"),
            "{}",
            f.detail
        );
        assert!(
            f.fix.as_deref().unwrap_or("").contains("echo '+cpu'"),
            "{:?}",
            f.fix
        );
        std::fs::write(
            dir.path().join("cgroup.subtree_control"),
            "cpu memory pids\n",
        )
        .unwrap();
        assert_eq!(check_cgroup(dir.path()).level, Level::Ok);
        // Kiln's parent cgroup made before cpu was delegated lacks it.
        std::fs::create_dir(dir.path().join("kiln")).unwrap();
        std::fs::write(dir.path().join("kiln/cgroup.controllers"), "cpu\n").unwrap();
        let f = check_cgroup(dir.path());
        assert!(
            f.detail.contains("memory, pids are missing"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("kiln/cgroup.controllers"), "{}", f.detail);
    }

    #[tokio::test]
    async fn the_probe_needs_an_open_kvm_and_a_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let f = probe_kvm(
            Path::new("/nonexistent/kvm"),
            Path::new("qemu-system-x86_64"),
            &dir.path().join("vmlinuz"),
            None,
        )
        .await;
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("/nonexistent/kvm"), "{}", f.detail);
        // A file that opens but does not answer the KVM API is never
        // probed with.
        let fake = dir.path().join("kvm");
        std::fs::write(&fake, b"").unwrap();
        let f = probe_kvm(
            &fake,
            Path::new("qemu-system-x86_64"),
            &dir.path().join("vmlinuz"),
            None,
        )
        .await;
        assert_eq!(f.level, Level::Warn);
        assert!(f.detail.contains("API version"), "{}", f.detail);
    }

    #[test]
    fn kvm_that_cannot_open_is_a_warning() {
        let f = check_kvm(Path::new("/nonexistent/kvm"));
        assert_eq!(f.level, Level::Warn);
        assert!(f.fix.is_some());
    }
}
