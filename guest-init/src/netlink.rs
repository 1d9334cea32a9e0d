//! Just enough rtnetlink to bring links up and give eth0 its address,
//! routes and MTU, without an `ip` binary in the image: three message
//! kinds, each acknowledged by the kernel.

use std::net::IpAddr;

use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use std::os::fd::{AsRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_F_NODAD: u8 = 0x02;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;
const IFF_UP: u32 = 0x1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(Errno),
    #[error("{what}: kernel says {errno}")]
    Refused { what: String, errno: Errno },
    #[error("{what}: no acknowledgement from the kernel")]
    NoAck { what: String },
}

/// A request being built: header, fixed part, attributes.
#[derive(Debug, Clone)]
pub struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        Request { buf }
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn bytes(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// RTM_NEWLINK: up, and optionally a new MTU.
pub fn link_up(seq: u32, index: u32, mtu: Option<u32>) -> Vec<u8> {
    let mut r = Request::new(RTM_NEWLINK, 0, seq);
    r.buf.push(libc::AF_UNSPEC as u8); // ifi_family
    r.buf.push(0);
    r.buf.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    r.buf.extend_from_slice(&index.to_ne_bytes()); // ifi_index
    r.buf.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    r.buf.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    if let Some(mtu) = mtu {
        r = r.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    r.bytes()
}

/// RTM_NEWADDR, replacing an existing identical address.
pub fn add_address(seq: u32, index: u32, addr: IpAddr, prefix_len: u8) -> Vec<u8> {
    let mut r = Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq);
    r.buf.push(family(addr));
    r.buf.push(prefix_len);
    // IPv6: usable at once, no duplicate address detection wait.
    r.buf.push(if addr.is_ipv6() { IFA_F_NODAD } else { 0 });
    r.buf.push(RT_SCOPE_UNIVERSE);
    r.buf.extend_from_slice(&index.to_ne_bytes());
    let bytes = octets(addr);
    r = r.attr(IFA_LOCAL, &bytes).attr(IFA_ADDRESS, &bytes);
    if let IpAddr::V4(v4) = addr {
        if prefix_len < 31 {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let bcast = u32::from(v4) | host_bits;
            r = r.attr(IFA_BROADCAST, &bcast.to_be_bytes());
        }
    }
    r.bytes()
}

/// RTM_NEWROUTE: the default route via `gateway` on link `index`.
/// `onlink` when the gateway lies outside the link's prefix.
pub fn default_route(seq: u32, index: u32, gateway: IpAddr, onlink: bool) -> Vec<u8> {
    let mut r = Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq);
    r.buf.push(family(gateway));
    r.buf.extend_from_slice(&[0, 0, 0]); // dst_len, src_len, tos
    r.buf.push(RT_TABLE_MAIN);
    r.buf.push(RTPROT_BOOT);
    r.buf.push(RT_SCOPE_UNIVERSE);
    r.buf.push(RTN_UNICAST);
    let flags = if onlink { RTNH_F_ONLINK } else { 0 };
    r.buf.extend_from_slice(&flags.to_ne_bytes());
    r = r
        .attr(RTA_GATEWAY, &octets(gateway))
        .attr(RTA_OIF, &index.to_ne_bytes());
    r.bytes()
}

fn family(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// The acknowledgement for `seq` in a reply: `Some(0)` for success,
/// `Some(errno)` for a refusal, `None` if the reply holds none.
pub fn find_ack(reply: &[u8], seq: u32) -> Option<i32> {
    let mut at = 0;
    while reply.len() >= at + 16 {
        let word = |o: usize| -> Option<[u8; 4]> { reply.get(o..o + 4)?.try_into().ok() };
        let len = u32::from_ne_bytes(word(at)?) as usize;
        let kind = u16::from_ne_bytes([reply[at + 4], reply[at + 5]]);
        let mseq = u32::from_ne_bytes(word(at + 8)?);
        if len < 16 || at + len > reply.len() {
            return None;
        }
        if kind == NLMSG_ERROR && mseq == seq && len >= 20 {
            let code = i32::from_ne_bytes(word(at + 16)?);
            return Some(-code);
        }
        at += (len + 3) & !3;
    }
    None
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(NetlinkError::Socket)?;
        Ok(Netlink { fd, seq: 0 })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    /// Sends one request and waits for its acknowledgement.
    pub fn request(&mut self, what: &str, msg: &[u8], seq: u32) -> Result<(), NetlinkError> {
        let refused = |errno| NetlinkError::Refused {
            what: what.to_owned(),
            errno,
        };
        sendto(
            self.fd.as_raw_fd(),
            msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(refused)?;
        let mut buf = vec![0u8; 16 * 1024];
        // The kernel answers synchronously; a few replies at most.
        for _ in 0..8 {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(refused)?;
            match find_ack(&buf[..n], seq) {
                Some(0) => return Ok(()),
                Some(code) => return Err(refused(Errno::from_raw(code))),
                None => continue,
            }
        }
        Err(NetlinkError::NoAck {
            what: what.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_ne_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    #[test]
    fn link_message_layout() {
        let m = link_up(7, 3, Some(1400));
        assert_eq!(m.len(), 16 + 16 + 8);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(u32_at(&m, 20), 3); // ifi_index
        assert_eq!(u32_at(&m, 24), IFF_UP);
        assert_eq!(u32_at(&m, 28), IFF_UP);
        assert_eq!((u16_at(&m, 32), u16_at(&m, 34)), (8, IFLA_MTU));
        assert_eq!(u32_at(&m, 36), 1400);
        assert_eq!(link_up(1, 1, None).len(), 32);
    }

    #[test]
    fn ipv4_address_has_local_address_and_broadcast() {
        let m = add_address(2, 5, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 24);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), 5);
        assert_eq!((u16_at(&m, 24), u16_at(&m, 26)), (8, IFA_LOCAL));
        assert_eq!(&m[28..32], &[10, 1, 2, 3]);
        assert_eq!(u16_at(&m, 34), IFA_ADDRESS);
        assert_eq!(u16_at(&m, 42), IFA_BROADCAST);
        assert_eq!(&m[44..48], &[10, 1, 2, 255]);
        // No broadcast on point-to-point prefixes.
        assert_eq!(
            add_address(2, 5, IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 32).len(),
            40
        );
    }

    #[test]
    fn ipv6_address_skips_dad() {
        let a = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        let m = add_address(3, 2, a, 64);
        assert_eq!(&m[16..19], &[libc::AF_INET6 as u8, 64, IFA_F_NODAD]);
        assert_eq!(u16_at(&m, 24), 20);
        assert_eq!(&m[28..44], &octets(a)[..]);
        assert_eq!(m.len(), 24 + 20 + 20);
    }

    #[test]
    fn route_message_layout() {
        let m = default_route(4, 2, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), true);
        assert_eq!(u16_at(&m, 4), RTM_NEWROUTE);
        assert_eq!(
            &m[16..24],
            &[
                libc::AF_INET as u8,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_BOOT,
                0,
                RTN_UNICAST
            ]
        );
        assert_eq!(u32_at(&m, 24), RTNH_F_ONLINK);
        assert_eq!(u16_at(&m, 30), RTA_GATEWAY);
        assert_eq!(&m[32..36], &[10, 0, 0, 1]);
        assert_eq!(u16_at(&m, 38), RTA_OIF);
        assert_eq!(u32_at(&m, 40), 2);
    }

    #[test]
    fn acks_are_found_by_sequence() {
        let mut reply = Vec::new();
        for (seq, code) in [(1u32, 0i32), (2, -libc::EEXIST)] {
            reply.extend_from_slice(&36u32.to_ne_bytes());
            reply.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            reply.extend_from_slice(&0u16.to_ne_bytes());
            reply.extend_from_slice(&seq.to_ne_bytes());
            reply.extend_from_slice(&0u32.to_ne_bytes());
            reply.extend_from_slice(&code.to_ne_bytes());
            reply.extend_from_slice(&[0u8; 16]);
        }
        assert_eq!(find_ack(&reply, 1), Some(0));
        assert_eq!(find_ack(&reply, 2), Some(libc::EEXIST));
        assert_eq!(find_ack(&reply, 3), None);
        assert_eq!(find_ack(&reply[..20], 1), None);
    }

    /// Real kernel round trip in a private network namespace: unshare()
    /// on a thread moves only that thread, so the host's network is untouched.
    #[test]
    fn configures_loopback_in_a_private_netns() {
        let r = std::thread::spawn(|| -> Result<bool, String> {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipping: unshare(CLONE_NEWNET) needs root: {e}");
                return Ok(false);
            }
            let mut nl = Netlink::open().map_err(|e| e.to_string())?;
            let seq = nl.next_seq();
            nl.request("lo up", &link_up(seq, 1, Some(65536)), seq)
                .map_err(|e| e.to_string())?;
            // TEST-NET-1, on lo of a namespace of its own: nothing leaves it.
            let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
            let seq = nl.next_seq();
            nl.request("addr", &add_address(seq, 1, a, 24), seq)
                .map_err(|e| e.to_string())?;
            // Again: replacing an existing address is not an error.
            let seq = nl.next_seq();
            nl.request("addr again", &add_address(seq, 1, a, 24), seq)
                .map_err(|e| e.to_string())?;
            // A refusal comes back as the kernel's errno.
            let seq = nl.next_seq();
            let err = nl
                .request("bad link", &link_up(seq, 9999, None), seq)
                .expect_err("no link 9999");
            assert!(
                err.to_string().contains("bad link: kernel says ENODEV"),
                "{err}"
            );
            // Traffic over lo proves it is up.
            let rx = std::net::UdpSocket::bind("192.0.2.9:0").map_err(|e| e.to_string())?;
            let tx = std::net::UdpSocket::bind("192.0.2.9:0").map_err(|e| e.to_string())?;
            tx.send_to(b"ping", rx.local_addr().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 8];
            rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let n = rx.recv(&mut buf).map_err(|e| e.to_string())?;
            assert_eq!(&buf[..n], b"ping");
            Ok(true)
        })
        .join()
        .expect("netns thread");
        r.expect("netlink round trip");
    }
}
