//! The machine the figures come from, and how busy it was.

use std::path::Path;
use std::process::Command;

use super::results::{LoadSample, MachineInfo};

pub fn describe(disk_dir: &Path) -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let vhost = kiln::vmm::qemu::tools::find(
        kiln::vmm::qemu::tools::VHOST_VSOCK,
        Path::new(kiln::vmm::qemu::tools::VHOST_VSOCK.name),
        &kiln::vmm::qemu::tools::cargo_bin_dirs(),
    )
    .map(|p| first_line(&p.to_string_lossy(), &["--version"]))
    .unwrap_or_else(|e| format!("not found ({e})"));
    MachineInfo {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
        memory_gib: field(&meminfo, "MemTotal")
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        os: os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default(),
        qemu: first_line("qemu-system-x86_64", &["--version"]),
        vhost_device_vsock: vhost,
        disk_fs: {
            let dir = disk_dir.to_string_lossy();
            first_line("findmnt", &["-n", "-o", "SOURCE,FSTYPE", "--target", &dir])
        },
    }
}

/// `name: value` from /proc files.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_owned())
    })
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

pub fn load(before: &str) -> LoadSample {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut parts = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    LoadSample {
        before: before.to_owned(),
        load1: parts.next().unwrap_or(0.0),
        load5: parts.next().unwrap_or(0.0),
        load15: parts.next().unwrap_or(0.0),
    }
}

/// The checkout's commit, `-dirty` when it has uncommitted changes.
pub fn git_revision(workspace: &Path) -> Option<String> {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(field(info, "model name").as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(
            field("MemTotal:       24608812 kB\n", "MemTotal").as_deref(),
            Some("24608812 kB")
        );
        assert_eq!(field(info, "nope"), None);
    }
}
