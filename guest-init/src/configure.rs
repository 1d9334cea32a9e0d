//! Applies the host's view of the world from the `Job`: clock, entropy,
//! names, DNS, network and resource limits.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;

use kiln_protocol::{Job, NetworkConfig, Rlimit, RlimitResource};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

use crate::console::say;
use crate::error::{OrSys, SysError};
use crate::netlink::{self, Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("network interface {0} does not exist (is its driver, e.g. virtio_net, loaded?)")]
    NoInterface(&'static str),
}

/// CI jobs open many files; used when the job sets no `NoFile` limit.
const DEFAULT_NOFILE: Rlimit = Rlimit {
    resource: RlimitResource::NoFile,
    soft: 65_536,
    hard: 1_048_576,
};

pub fn apply(job: &Job) -> Result<(), ConfigError> {
    set_clock(job)?;
    add_entropy(&job.entropy)?;
    nix::unistd::sethostname(&job.hostname)
        .or_sys(|| format!("set hostname {:?}", job.hostname))?;
    write_etc("/etc/hostname", &format!("{}\n", job.hostname))?;
    write_etc("/etc/hosts", &render_hosts(&job.hostname))?;
    write_etc("/etc/resolv.conf", &render_resolv(&job.dns))?;
    network(job.network.as_ref())?;
    rlimits(&job.rlimits)?;
    Ok(())
}

fn set_clock(job: &Job) -> Result<(), SysError> {
    let ts = TimeSpec::new(job.clock.secs as _, i64::from(job.clock.nanos) as _);
    clock_settime(ClockId::CLOCK_REALTIME, ts)
        .or_sys(|| format!("set the clock to {} s", job.clock.secs))
}

/// Credits the seed to the kernel's pool (RNDADDENTROPY on /dev/urandom):
/// a fresh VM has too little entropy for TLS to GitHub.
fn add_entropy(seed: &[u8]) -> Result<(), SysError> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    let bits = i32::try_from(seed.len() * 8).unwrap_or(i32::MAX);
    let len = i32::try_from(seed.len()).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(seed);
    // Keep the u32 buf[] whole.
    while info.len() % 4 != 0 {
        info.push(0);
    }
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .or_sys(|| "open /dev/urandom".into())?;
    let request = nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>());
    // SAFETY: `info` is a complete rand_pool_info of buf_size bytes that
    // outlives the call; the kernel only reads it.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&urandom),
            request as _,
            info.as_ptr(),
        )
    };
    nix::errno::Errno::result(rc)
        .map(drop)
        .or_sys(|| format!("credit {} bytes of entropy (RNDADDENTROPY)", seed.len()))
}

pub fn render_hosts(hostname: &str) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let names = if short == hostname {
        hostname.to_owned()
    } else {
        format!("{hostname} {short}")
    };
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
}

pub fn render_resolv(dns: &[IpAddr]) -> String {
    let mut out = String::from("# written by kiln-init from the job\n");
    for ip in dns {
        let _ = writeln!(out, "nameserver {ip}");
    }
    out
}

/// Writes a file under /etc atomically (a resolv.conf symlink into a
/// missing /run/systemd is replaced, not followed). A read-only root is
/// the image's choice: the image's own file stays, with a console note.
fn write_etc(path: &str, content: &str) -> Result<(), SysError> {
    let p = Path::new(path);
    let tmp = p.with_file_name(format!(
        ".{}.kiln-init",
        p.file_name().and_then(|n| n.to_str()).unwrap_or("tmp")
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        // No fsync: the VM's disks die with it, so durability buys
        // nothing, and three syncs cost ~25 ms of boot under emulation.
        f.write_all(content.as_bytes())?;
        std::fs::rename(&tmp, p)
    })();
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            say!("{path} not written: the root is read-only");
            Ok(())
        }
        r => r.or_sys(|| format!("write {path}")),
    }
}

/// Brings `lo` up. It needs nothing from the job, so the boot does it
/// early, beside the module loads.
pub fn loopback() -> Result<(), ConfigError> {
    let mut nl = Netlink::open()?;
    let lo = if_index("lo")?;
    let seq = nl.next_seq();
    nl.request("bring lo up", &netlink::link_up(seq, lo, None), seq)?;
    Ok(())
}

fn network(net: Option<&NetworkConfig>) -> Result<(), ConfigError> {
    let Some(net) = net else {
        return Ok(());
    };
    let mut nl = Netlink::open()?;
    let eth0 = if_index("eth0")?;
    let seq = nl.next_seq();
    nl.request("bring eth0 up", &netlink::link_up(seq, eth0, net.mtu), seq)?;
    let v4 = net.ipv4.as_ref().map(|c| {
        (
            IpAddr::V4(c.address),
            c.prefix_len,
            c.gateway.map(IpAddr::V4),
        )
    });
    let v6 = net.ipv6.as_ref().map(|c| {
        (
            IpAddr::V6(c.address),
            c.prefix_len,
            c.gateway.map(IpAddr::V6),
        )
    });
    for (addr, prefix, gateway) in v4.into_iter().chain(v6) {
        let seq = nl.next_seq();
        nl.request(
            &format!("add {addr}/{prefix} to eth0"),
            &netlink::add_address(seq, eth0, addr, prefix),
            seq,
        )?;
        if let Some(gw) = gateway {
            let onlink = !same_prefix(addr, gw, prefix);
            let seq = nl.next_seq();
            nl.request(
                &format!("add default route via {gw} on eth0"),
                &netlink::default_route(seq, eth0, gw, onlink),
                seq,
            )?;
        }
    }
    Ok(())
}

/// Whether `b` lies in `a/prefix`.
pub fn same_prefix(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            // Link-local gateways are always on the link.
            if b.segments()[0] & 0xffc0 == 0xfe80 {
                return true;
            }
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

fn if_index(name: &'static str) -> Result<u32, ConfigError> {
    nix::net::if_::if_nametoindex(name).map_err(|_| ConfigError::NoInterface(name))
}

/// Set on PID 1 and so inherited by the job. Raising hard limits needs
/// CAP_SYS_RESOURCE, which PID 1 has and the job will not.
fn rlimits(limits: &[Rlimit]) -> Result<(), SysError> {
    let mut all = limits.to_vec();
    if !all.iter().any(|r| r.resource == RlimitResource::NoFile) {
        all.push(DEFAULT_NOFILE);
    }
    for r in all {
        let res = match r.resource {
            RlimitResource::NoFile => Resource::RLIMIT_NOFILE,
            RlimitResource::NProc => Resource::RLIMIT_NPROC,
            RlimitResource::Core => Resource::RLIMIT_CORE,
            RlimitResource::Stack => Resource::RLIMIT_STACK,
            RlimitResource::MemLock => Resource::RLIMIT_MEMLOCK,
            RlimitResource::FileSize => Resource::RLIMIT_FSIZE,
        };
        setrlimit(res, r.soft as _, r.hard as _)
            .or_sys(|| format!("set rlimit {:?} to {}/{}", r.resource, r.soft, r.hard))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn hosts_names_the_vm() {
        let h = render_hosts("kiln-1.ci.example");
        assert!(h.contains("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.contains("127.0.1.1\tkiln-1.ci.example kiln-1\n"), "{h}");
        assert!(h.contains("::1\tlocalhost"), "{h}");
        assert!(render_hosts("vm").contains("127.0.1.1\tvm\n"));
    }

    #[test]
    fn resolv_lists_each_server() {
        let r = render_resolv(&[
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        ]);
        assert!(
            r.ends_with("nameserver 10.0.0.1\nnameserver fd00::1\n"),
            "{r}"
        );
        assert!(!render_resolv(&[]).contains("nameserver"));
    }

    #[test]
    fn prefixes() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_prefix(a("10.0.0.2"), a("10.0.0.1"), 24));
        assert!(!same_prefix(a("10.0.1.2"), a("10.0.0.1"), 24));
        assert!(same_prefix(a("10.0.1.2"), a("10.9.0.1"), 0));
        assert!(!same_prefix(a("10.0.0.2"), a("10.0.0.1"), 32));
        assert!(same_prefix(a("fd00::2"), a("fd00::1"), 64));
        assert!(same_prefix(a("fd00::2"), a("fe80::1"), 64));
        assert!(!same_prefix(a("fd00::2"), a("fd01::1"), 64));
        assert!(!same_prefix(a("fd00::2"), a("10.0.0.1"), 8));
    }
}
