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

/// CPU clock ticks: the whole host's busy and total, and this process's
/// own plus its reaped children's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Ticks {
    busy: u64,
    total: u64,
    ours: u64,
}

/// `cpu` line of `/proc/stat`: (busy, total) ticks. Guest time is already
/// in user; iowait counts as idle.
fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let idle = get(3) + get(4);
    Some((busy, busy + idle))
}

/// utime + stime + cutime + cstime of a `/proc/<pid>/stat` line.
fn parse_own_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state is field 3, utime field 14 .. cstime field 17.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<i64>().ok())
            .unwrap_or(0)
    };
    u64::try_from(n(14) + n(15) + n(16) + n(17)).ok()
}

fn ticks() -> Ticks {
    let (busy, total) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .unwrap_or((0, 0));
    let ours = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_own_ticks(&t))
        .unwrap_or(0);
    Ticks { busy, total, ours }
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Measures how busy the host is while one benchmark runs. The bench's
/// children are counted once reaped, which every benchmark does before it
/// ends.
pub struct Meter {
    during: String,
    load1: f64,
    start: Ticks,
}

impl Meter {
    pub fn start(during: &str) -> Meter {
        Meter {
            during: during.to_owned(),
            load1: load1(),
            start: ticks(),
        }
    }

    pub fn finish(self) -> LoadSample {
        share(&self.during, self.load1, self.start, ticks())
    }
}

fn share(during: &str, load1: f64, a: Ticks, b: Ticks) -> LoadSample {
    let total = b.total.saturating_sub(a.total).max(1) as f64;
    let busy = b.busy.saturating_sub(a.busy) as f64;
    let ours = (b.ours.saturating_sub(a.ours) as f64).min(busy);
    LoadSample {
        during: during.to_owned(),
        load1_before: load1,
        others_cpu_pct: 100.0 * (busy - ours) / total,
        bench_cpu_pct: 100.0 * ours / total,
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

    #[test]
    fn cpu_shares_split_the_bench_from_the_rest() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        let own = "42 (xtask bench) S 1 42 42 0 -1 0 0 0 0 0 30 10 5 5 20 0";
        assert_eq!(parse_own_ticks(own), Some(50));
        let a = Ticks {
            busy: 100,
            total: 1000,
            ours: 10,
        };
        let b = Ticks {
            busy: 600,
            total: 2000,
            ours: 310,
        };
        let s = share("boot", 0.5, a, b);
        assert_eq!((s.others_cpu_pct, s.bench_cpu_pct), (20.0, 30.0));
    }
}
