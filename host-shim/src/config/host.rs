//! What this host gives to VMs at once: `[host]`, defaulting to all CPUs
//! and 80% of RAM (the rest stays for the host, the VMMs' own overhead and
//! the page cache the shared base image lives in).

use super::error::ConfigErrorKind;

/// The host's total budget for running VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// What the machine has, for the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// Share of RAM given to VMs when `[host] memory_mib` is not set.
pub const DEFAULT_MEMORY_PERCENT: u64 = 80;

impl HostFacts {
    /// Reads this machine's CPU count and RAM (`/proc/meminfo`).
    pub fn detect() -> Result<Self, ConfigErrorKind> {
        let cpus = std::thread::available_parallelism()
            .map_err(|source| ConfigErrorKind::HostFacts {
                what: "CPU count",
                key: "vcpus",
                error: source,
            })?
            .get();
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|source| {
            ConfigErrorKind::HostFacts {
                what: "memory size",
                key: "memory_mib",
                error: source,
            }
        })?;
        let memory_mib = mem_total_mib(&meminfo).ok_or_else(|| ConfigErrorKind::HostFacts {
            what: "memory size",
            key: "memory_mib",
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MemTotal line in /proc/meminfo",
            ),
        })?;
        Ok(Self {
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
            memory_mib,
        })
    }

    pub(crate) fn default_capacity(&self) -> HostCapacity {
        HostCapacity {
            vcpus: self.cpus,
            memory_mib: self.memory_mib * DEFAULT_MEMORY_PERCENT / 100,
        }
    }
}

/// `MemTotal:       24596428 kB` -> MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(kib / 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let text = "MemTotal:       24596428 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_mib(text), Some(24019));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_mib("MemTotal: 12 pages\n"), None);
    }

    #[test]
    fn defaults_are_all_cpus_and_80_percent_of_ram() {
        let facts = HostFacts {
            cpus: 16,
            memory_mib: 10_000,
        };
        assert_eq!(
            facts.default_capacity(),
            HostCapacity {
                vcpus: 16,
                memory_mib: 8_000
            }
        );
        let here = HostFacts::detect().expect("this host has /proc/meminfo");
        assert!(here.cpus >= 1 && here.memory_mib > 0, "{here:?}");
    }
}
