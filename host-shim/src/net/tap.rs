//! Persistent tap devices, made with the tun driver's ioctls (rtnetlink
//! cannot create taps: the driver refuses `RTM_NEWLINK`).
//!
//! A tap belongs to the network namespace of the thread that opened
//! `/dev/net/tun`, so callers run this inside the VM's namespace (see
//! [`super::netns::NetNs::create`]). The device is made persistent and the
//! file closed: the VMM attaches to it by name later (Firecracker) or is
//! started inside the namespace and opens it itself (QEMU), or is handed a
//! descriptor attached to it ([`attach`], a confined QEMU).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Makes tap `name` in the calling thread's network namespace, with the
/// flags both VMMs attach with (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
/// `owner`: the only uid that may attach without CAP_NET_ADMIN; `None`
/// lets any process that can open `/dev/net/tun` in this namespace attach
/// (the namespace is the VM's alone).
pub fn create_persistent(name: &str, owner: Option<u32>) -> io::Result<()> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let fd = tun.as_raw_fd();
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: `fd` is an open /dev/net/tun; TUNSETIFF reads a whole
    // `ifreq`, which `ifr` is, alive for the call.
    check(unsafe { libc::ioctl(fd, libc::TUNSETIFF as _, &ifr) })?;
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER takes the uid by value; `fd` is attached.
        check(unsafe { libc::ioctl(fd, libc::TUNSETOWNER as _, libc::c_ulong::from(uid)) })?;
    }
    // SAFETY: TUNSETPERSIST takes a flag by value; `fd` is attached.
    check(unsafe { libc::ioctl(fd, libc::TUNSETPERSIST as _, 1 as libc::c_ulong) })?;
    Ok(())
}

/// Attaches to the existing tap `name` in the calling thread's network
/// namespace, with the flags it was made with, and returns the file: a
/// VMM that cannot open `/dev/net/tun` itself (a confined QEMU) is handed
/// this descriptor.
pub fn attach(name: &str) -> io::Result<std::fs::File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: `tun` is an open /dev/net/tun; TUNSETIFF reads a whole
    // `ifreq`, which `ifr` is, alive for the call.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &ifr) })?;
    Ok(tun)
}

/// An `ifreq` naming `name` (at most 15 bytes, no NUL).
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1 to 15 bytes"),
        ));
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of
    // integers and pointers); all zeroes is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded() {
        assert!(ifreq("kt-0123456789ab").is_ok());
        assert!(ifreq("kt-0123456789abc").is_err());
        assert!(ifreq("").is_err());
        assert!(ifreq("a\0b").is_err());
    }
}
