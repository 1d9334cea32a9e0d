//! kiln-probe: the stand-in for the actions runner in `cargo xtask bench`.
//!
//! A static musl binary without dependencies, built by the bench with
//! `rustc` alone (see `bench::probe`). Its first act is to read
//! `CLOCK_BOOTTIME`: the moment the "runner" got control after its exec,
//! on the same clock kiln-init stamps its boot phases with.
//!
//! - `kiln-probe`: prints one report line (below) on stdout.
//! - `kiln-probe --vsock PORT`: also sends that line to the host (CID 2) on
//!   `PORT`, so a host without kiln-init learns when the guest got there,
//!   with ` sent_ns=N` added: the clock just before connecting, which the
//!   host pairs with the moment it accepts.
//! - `kiln-probe --stamp NAME`: prints `kiln-stamp NAME at_ns=N`, for the
//!   steps of a shell-script initramfs.
//!
//! The report line: `kiln-probe at_ns=N pid=P pid1=COMM pid1_rss_kib=R
//! pid1_hwm_kib=H`: PID 1's resident memory as the runner starts.

use std::io::Write;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// `struct sockaddr_vm` from `<linux/vm_sockets.h>`.
#[repr(C)]
struct SockaddrVm {
    svm_family: u16,
    svm_reserved1: u16,
    svm_port: u32,
    svm_cid: u32,
    svm_flags: u8,
    svm_zero: [u8; 3],
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
}

const CLOCK_BOOTTIME: i32 = 7;
const AF_VSOCK: i32 = 40;
const SOCK_STREAM_CLOEXEC: i32 = 1 | 0o2000000;
const HOST_CID: u32 = 2;

fn boottime_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { clock_gettime(CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// `VmRSS` and `VmHWM` (KiB) and the name of a process, from its `status`.
fn status_of(text: &str) -> (String, u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
    };
    let kib = |name: &str| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    let comm = field("Name:").unwrap_or_default();
    (comm, kib("VmRSS:"), kib("VmHWM:"))
}

fn report_line(at_ns: u64, pid: u32, pid1_status: &str) -> String {
    let (comm, rss, hwm) = status_of(pid1_status);
    let comm: String = comm
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!(
        "kiln-probe at_ns={at_ns} pid={pid} pid1={comm} pid1_rss_kib={rss} pid1_hwm_kib={hwm}\n"
    )
}

fn send_vsock(port: u32, line: &str) -> std::io::Result<()> {
    // SAFETY: plain syscall wrappers; the fd is owned by `file` below.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let addr = SockaddrVm {
        svm_family: AF_VSOCK as u16,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: HOST_CID,
        svm_flags: 0,
        svm_zero: [0; 3],
    };
    let len = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    if unsafe { connect(fd, &addr, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    file.write_all(line.as_bytes())
}

fn main() {
    let at_ns = boottime_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    if let [flag, name] = args.as_slice() {
        if flag == "--stamp" {
            let _ = writeln!(out, "kiln-stamp {name} at_ns={at_ns}");
            return;
        }
    }
    let status = std::fs::read_to_string("/proc/1/status").unwrap_or_default();
    let line = report_line(at_ns, std::process::id(), &status);
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    if let [flag, port] = args.as_slice() {
        if flag == "--vsock" {
            let sent = port
                .parse::<u32>()
                .map_err(std::io::Error::other)
                .and_then(|p| {
                    let msg = format!("{} sent_ns={}\n", line.trim_end(), boottime_ns());
                    send_vsock(p, &msg)
                });
            if let Err(e) = sent {
                let _ = writeln!(std::io::stderr(), "kiln-probe: vsock: {e}");
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_reads_pid1_status() {
        let status = "Name:\tkiln-init\nUmask:\t0022\nVmHWM:\t     700 kB\nVmRSS:\t     632 kB\n";
        assert_eq!(
            report_line(1234, 77, status),
            "kiln-probe at_ns=1234 pid=77 pid1=kiln-init pid1_rss_kib=632 pid1_hwm_kib=700\n"
        );
        assert_eq!(
            report_line(1, 2, ""),
            "kiln-probe at_ns=1 pid=2 pid1= pid1_rss_kib=0 pid1_hwm_kib=0\n"
        );
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ns();
        let b = boottime_ns();
        assert!(a > 0 && b >= a);
    }
}
