//! The egress policy (`kiln::net::policy`) against the real `nft` and
//! kernel, inside network namespaces the tests create; nothing touches the
//! machine's own namespace or tables.
//!
//! A namespace here is anonymous: a thread unshares one, keeps a handle of
//! it and exits. The handle (held by [`Netns`], by the `Nft` running in it,
//! and by every socket made inside) is the namespace's only reference, so it
//! and everything in it — links, addresses, routes, tables — vanish when the
//! test's values are dropped, also when an assertion fails and the test
//! unwinds, or when the test process is killed. Being anonymous, they need
//! no unique names; links are created inside them and may be named alike
//! in parallel tests.
//!
//! The tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `setns`), `nft` and
//! `ip`; without root they print why and pass.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::net::nft::Nft;
use kiln::net::policy::{Allow, DropCounters, Policy, PolicyConfig, PolicyError, VmRules, TABLE};
use nix::sched::{setns, unshare, CloneFlags};

/// How long a connection the policy drops is waited for (drops are silent).
const DROP_WAIT: Duration = Duration::from_millis(800);
/// How long a connection the policy allows may take (a few ms in practice).
const CONNECT_WAIT: Duration = Duration::from_secs(3);

fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    eprintln!("skipped: needs root (network namespaces, nftables)");
    true
}

/// An anonymous network namespace, alive while this (or anything made in it) is.
struct Netns {
    file: Arc<File>,
}

impl Netns {
    fn new() -> Netns {
        let file = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net")
        })
        .join()
        .expect("namespace thread");
        let ns = Netns {
            file: Arc::new(file),
        };
        ns.ip("link set lo up");
        ns
    }

    /// A path to this namespace other processes can open (`ip … netns PATH`).
    fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }

    fn nft(&self) -> Nft {
        Nft::in_netns(self.file.clone()).expect("nft is installed (apt-get install nftables)")
    }

    /// Runs `f` on a thread that joined this namespace (sockets made there stay in it).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&*self.file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in namespace")
        })
    }

    /// Runs `program args` in this namespace; its stdout. Panics with its stderr on failure.
    fn cmd(&self, program: &str, args: &[&str]) -> String {
        let fd = self.file.as_raw_fd();
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: between fork and exec the closure makes one raw setns(2)
        // call (async-signal-safe, no allocation, no locks) on a descriptor
        // `self` keeps open across the spawn.
        unsafe {
            command.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            });
        }
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ip(&self, args: &str) {
        self.cmd("ip", &args.split_whitespace().collect::<Vec<_>>());
    }

    fn nft_text(&self, args: &str) -> String {
        self.cmd("nft", &args.split_whitespace().collect::<Vec<_>>())
    }

    fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }

    /// A veth pair: `name` here, `peer` (always `eth0`) in `other`.
    fn veth(&self, name: &str, other: &Netns) {
        self.ip(&format!(
            "link add {name} type veth peer name eth0 netns {}",
            other.path()
        ));
        self.ip(&format!("link set {name} up"));
        other.ip("link set eth0 up");
    }
}

fn config(ipv6: bool) -> PolicyConfig {
    PolicyConfig {
        uplinks: vec!["up0".into()],
        vm_ifname_prefix: "kv-".into(),
        ipv6,
        nat66: false,
    }
}

fn vm_rules(ifname: &str, ipv4: [u8; 4]) -> VmRules {
    VmRules {
        ifname: ifname.into(),
        ipv4: Some(Ipv4Addr::from(ipv4)),
        ipv6: None,
        dns: vec![],
        allow: vec![],
    }
}

fn allow(s: &str) -> Allow {
    s.parse().expect(s)
}

#[test]
fn every_config_variant_loads_and_installs_idempotently() {
    if skip_unless_root() {
        return;
    }
    for (ipv6, nat66) in [(false, false), (true, false), (true, true), (false, true)] {
        let ns = Netns::new();
        let cfg = PolicyConfig {
            ipv6,
            nat66,
            ..config(true)
        };
        let policy = Policy::new(ns.nft(), cfg).expect("valid config");
        assert!(!policy.is_installed().expect("list"));
        policy.install().expect("first install");
        policy.install().expect("second install");
        assert!(policy.is_installed().expect("list"));
        let counters = policy.counters().expect("counters");
        assert_eq!(counters, DropCounters::default());
    }
}

#[test]
fn the_table_changes_only_by_elements_and_other_tables_stay_untouched() {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::new();
    let nft = ns.nft();
    nft.apply(
        "table inet other {\n  chain c { type filter hook forward priority 10; counter; }\n}\n",
    )
    .expect("the other table");
    let other = || ns.nft_text("list table inet other");
    let other_before = other();

    let policy = Policy::new(nft, config(true)).expect("config");
    let vm = VmRules {
        ipv6: Some("2001:db8:200::2".parse().expect("v6")),
        dns: vec![
            "10.0.0.2".parse().expect("v4"),
            "fd00::53".parse().expect("v6"),
        ],
        allow: vec![allow("10.99.0.5/32:5000"), allow("fd00:99::/64")],
        ..vm_rules("kv-0123456789ab", [10, 200, 0, 2])
    };

    // Fails closed: no table, no VM.
    let err = policy.add_vm(&vm).expect_err("no table yet");
    assert!(matches!(err, PolicyError::NotInstalled { .. }), "{err}");
    // Removing from a missing table: nothing to remove.
    policy.remove_vm(&vm).expect("no table: Ok");

    policy.install().expect("install");
    policy.install().expect("install again");
    let kiln = || ns.nft_text(&format!("list table inet {TABLE}"));
    let empty = kiln();
    assert_eq!(other(), other_before);

    policy.add_vm(&vm).expect("add_vm");
    policy.add_vm(&vm).expect("add_vm again changes nothing");
    let with_vm = kiln();
    for (set, element) in [
        ("vm4", "\"kv-0123456789ab\" . 10.200.0.2"),
        ("vm6", "\"kv-0123456789ab\" . 2001:db8:200::2"),
        ("dns4", "\"kv-0123456789ab\" . 10.0.0.2"),
        ("dns6", "\"kv-0123456789ab\" . fd00::53"),
        ("allow4", "\"kv-0123456789ab\" . 10.99.0.5 . 5000"),
        ("allow6", "\"kv-0123456789ab\" . fd00:99::/64 . 0-65535"),
    ] {
        let listed = ns.nft_text(&format!("list set inet {TABLE} {set}"));
        assert!(listed.contains(element), "{set}: {listed}");
    }
    assert_eq!(
        strip_elements(&with_vm),
        strip_elements(&empty),
        "add_vm changed more than elements"
    );
    assert_eq!(other(), other_before);

    policy.remove_vm(&vm).expect("remove_vm");
    assert_eq!(kiln(), empty, "remove_vm left something behind");
    assert_eq!(other(), other_before);

    // Its elements are gone now: a distinguishable error, nothing deleted.
    let err = policy.remove_vm(&vm).expect_err("already removed");
    assert!(matches!(err, PolicyError::VmNotPresent { .. }), "{err}");

    let mut took = Duration::ZERO;
    const ROUNDS: u32 = 50;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        policy.add_vm(&vm).expect("add_vm");
        policy.remove_vm(&vm).expect("remove_vm");
        took += start.elapsed();
    }
    eprintln!(
        "add_vm + remove_vm: {:?} on average over {ROUNDS} rounds",
        took / ROUNDS
    );
    assert_eq!(kiln(), empty);

    policy.remove().expect("remove");
    assert!(!policy.is_installed().expect("list"));
    policy.remove().expect("remove again: Ok");
    let err = policy.counters().expect_err("no table, no counters");
    assert!(matches!(err, PolicyError::NoCounters), "{err}");
    assert_eq!(other(), other_before);
    let err = policy.add_vm(&vm).expect_err("table removed");
    assert!(matches!(err, PolicyError::NotInstalled { .. }), "{err}");
}

/// A table listing without its sets' `elements = { … }` (which may span lines).
fn strip_elements(listing: &str) -> String {
    let mut out = String::new();
    let mut in_elements = false;
    for line in listing.lines() {
        if line.trim_start().starts_with("elements = {") {
            in_elements = true;
        }
        if !in_elements {
            out.push_str(line);
            out.push('\n');
        }
        if in_elements && line.trim_end().ends_with('}') {
            in_elements = false;
        }
    }
    out
}

/// The namespaces of the packet tests: `host` runs the policy; `vm` and
/// `vm2` are VMs behind `kv-test0` / `kv-test1`; `inet` is the internet
/// behind the uplink `up0`; `lan` (10.99.0.5) is a private network behind
/// `lan0`, routable from the host, so "unreachable" means "dropped".
struct Lab {
    host: Netns,
    vm: Netns,
    vm2: Netns,
    inet: Netns,
    lan: Netns,
}

const VM: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const VM_SPOOF: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 99);
const VM_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const VM2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 6);
const UPLINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const INET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const LAN: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 5);
/// Public (not in deny4), but routed by the host through `lan0`, no uplink.
const BEHIND_LAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            host: Netns::new(),
            vm: Netns::new(),
            vm2: Netns::new(),
            inet: Netns::new(),
            lan: Netns::new(),
        };
        // IPv4 only: no router solicitations or MLD reports to count as to_host.
        for ns in [&lab.host, &lab.vm, &lab.vm2, &lab.inet, &lab.lan] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        }
        let host = &lab.host;
        host.veth("kv-test0", &lab.vm);
        host.veth("kv-test1", &lab.vm2);
        host.veth("up0", &lab.inet);
        host.veth("lan0", &lab.lan);
        host.ip("addr add 10.200.0.1/30 dev kv-test0");
        host.ip("addr add 10.200.0.5/30 dev kv-test1");
        host.ip("addr add 203.0.113.2/24 dev up0");
        host.ip("addr add 10.99.0.1/24 dev lan0");
        host.ip("route add 198.51.100.0/24 via 10.99.0.5");
        // Forwarding on, and no reverse-path filter: the policy alone must stop spoofing.
        host.sysctl("net.ipv4.ip_forward", "1");
        for conf in ["all", "default", "kv-test0", "kv-test1", "up0", "lan0"] {
            host.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0");
        }
        lab.vm.ip("addr add 10.200.0.2/30 dev eth0");
        lab.vm.ip("addr add 10.200.0.99/32 dev eth0");
        lab.vm.ip("route add default via 10.200.0.1");
        lab.vm2.ip("addr add 10.200.0.6/30 dev eth0");
        lab.vm2.ip("route add default via 10.200.0.5");
        lab.inet.ip("addr add 203.0.113.1/24 dev eth0");
        // Only so that `inbound` connections reach the host at all.
        lab.inet.ip("route add 10.200.0.0/16 via 203.0.113.2");
        lab.lan.ip("addr add 10.99.0.5/24 dev eth0");
        lab.lan.ip("addr add 198.51.100.7/32 dev eth0");
        lab.lan.ip("route add default via 10.99.0.1");
        lab
    }
}

fn listen_tcp(ns: &Netns, port: u16) -> TcpListener {
    ns.run(|| TcpListener::bind(("0.0.0.0", port)))
        .expect("listen")
}

fn listen_udp(ns: &Netns, port: u16) -> UdpSocket {
    let socket = ns
        .run(|| UdpSocket::bind(("0.0.0.0", port)))
        .expect("bind udp");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    socket
}

/// A TCP connection from `ns` to `to:port`.
fn connect(ns: &Netns, to: Ipv4Addr, port: u16, wait: Duration) -> io::Result<TcpStream> {
    ns.run(|| TcpStream::connect_timeout(&SocketAddr::from((to, port)), wait))
}

/// Asserts the connection succeeds; the peer address the listener saw.
fn connects(ns: &Netns, to: Ipv4Addr, port: u16, listener: &TcpListener) -> IpAddr {
    let stream = connect(ns, to, port, CONNECT_WAIT)
        .unwrap_or_else(|e| panic!("connecting to {to}:{port}: {e}"));
    let peer = accept_within(listener, CONNECT_WAIT).expect("the listener got the connection");
    drop(stream);
    peer.ip()
}

/// Asserts the connection is dropped: it times out (a refusal would mean it arrived).
fn dropped(ns: &Netns, to: Ipv4Addr, port: u16) {
    match connect(ns, to, port, DROP_WAIT) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("connection to {to}:{port} was not dropped: {other:?}"),
    }
}

fn accept_within(listener: &TcpListener, wait: Duration) -> Option<SocketAddr> {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((_, peer)) => return Some(peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

/// Sends one datagram from `from` (bound to `source`) to `to:port`.
fn send_udp(ns: &Netns, source: Ipv4Addr, to: Ipv4Addr, port: u16) {
    ns.run(|| {
        let socket = UdpSocket::bind((source, 0)).expect("bind source");
        socket.send_to(b"kiln", (to, port)).expect("send");
    });
}

fn received(socket: &UdpSocket) -> Option<SocketAddr> {
    let mut buf = [0u8; 64];
    socket.recv_from(&mut buf).ok().map(|(_, from)| from)
}

/// Runs `action` and asserts which counters grew: exactly `grown`.
fn counting(policy: &Policy, grown: &[&str], action: impl FnOnce()) {
    let before = policy.counters().expect("counters");
    action();
    let after = policy.counters().expect("counters");
    for ((name, packets_before, _), (_, packets_after, _)) in before.iter().zip(after.iter()) {
        let expected = grown.contains(&name);
        assert_eq!(
            packets_after > packets_before,
            expected,
            "counter {name}: {packets_before} -> {packets_after}, expected it {}",
            if expected { "to grow" } else { "unchanged" }
        );
    }
}

#[test]
fn packets_from_a_vm_are_judged_as_designed() {
    if skip_unless_root() {
        return;
    }
    let lab = Lab::new();
    let inet_http = listen_tcp(&lab.inet, 8080);
    let inet_dns = listen_udp(&lab.inet, 53);
    let inet_udp = listen_udp(&lab.inet, 9999);
    let lan_5000 = listen_tcp(&lab.lan, 5000);
    let lan_5001 = listen_tcp(&lab.lan, 5001);
    let lan_dns = listen_udp(&lab.lan, 53);
    let behind_lan = listen_tcp(&lab.lan, 80);
    let host_ssh = listen_tcp(&lab.host, 2222);
    let vm2_http = listen_tcp(&lab.vm2, 8080);
    let vm_http = listen_tcp(&lab.vm, 8080);

    // Without the policy everything is reachable: the drops below are the policy's.
    assert_eq!(connects(&lab.vm, LAN, 5000, &lan_5000), IpAddr::V4(VM));
    assert_eq!(
        connects(&lab.vm, VM_GATEWAY, 2222, &host_ssh),
        IpAddr::V4(VM)
    );
    assert_eq!(connects(&lab.vm, VM2, 8080, &vm2_http), IpAddr::V4(VM));
    assert_eq!(
        connects(&lab.vm, BEHIND_LAN, 80, &behind_lan),
        IpAddr::V4(VM)
    );
    assert_eq!(connects(&lab.inet, VM, 8080, &vm_http), IpAddr::V4(INET));

    let policy = Policy::new(lab.host.nft(), config(false)).expect("config");
    policy.install().expect("install");
    let vm = VmRules {
        dns: vec![IpAddr::V4(LAN)],
        ..vm_rules("kv-test0", VM.octets())
    };
    policy.add_vm(&vm).expect("add vm");
    policy
        .add_vm(&vm_rules("kv-test1", VM2.octets()))
        .expect("add vm2");

    counting(&policy, &[], || {
        let peer = connects(&lab.vm, INET, 8080, &inet_http);
        assert_eq!(
            peer,
            IpAddr::V4(UPLINK),
            "masqueraded to the uplink address"
        );
    });
    counting(&policy, &["private"], || dropped(&lab.vm, LAN, 5000));
    counting(&policy, &["to_host"], || dropped(&lab.vm, VM_GATEWAY, 2222));
    counting(&policy, &["to_host"], || dropped(&lab.vm, UPLINK, 2222));
    counting(&policy, &["vm_to_vm"], || dropped(&lab.vm, VM2, 8080));
    counting(&policy, &["not_uplink"], || {
        dropped(&lab.vm, BEHIND_LAN, 80)
    });
    counting(&policy, &["inbound"], || dropped(&lab.inet, VM, 8080));
    counting(&policy, &["spoofed"], || {
        send_udp(&lab.vm, VM_SPOOF, INET, 9999);
        assert_eq!(received(&inet_udp), None, "spoofed datagram arrived");
    });
    counting(&policy, &["spoofed"], || {
        let spoofed = (VM_SPOOF, 0).into();
        let outcome = lab
            .vm
            .run(|| connect_from(spoofed, (INET, 8080).into(), DROP_WAIT));
        assert!(
            matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::TimedOut),
            "{outcome:?}"
        );
        assert_eq!(accept_within(&inet_http, Duration::ZERO), None);
    });
    counting(&policy, &[], || {
        send_udp(&lab.vm, VM, INET, 9999);
        assert_eq!(
            received(&inet_udp).map(|a| a.ip()),
            Some(IpAddr::V4(UPLINK))
        );
    });
    counting(&policy, &["dns_blocked"], || {
        send_udp(&lab.vm, VM, INET, 53);
        assert_eq!(
            received(&inet_dns),
            None,
            "DNS to a resolver not given arrived"
        );
    });
    counting(&policy, &["dns_allowed"], || {
        send_udp(&lab.vm, VM, LAN, 53);
        assert_eq!(received(&lan_dns).map(|a| a.ip()), Some(IpAddr::V4(VM)));
    });

    // Allowlisted: that port only, through any interface.
    policy.remove_vm(&vm).expect("remove vm");
    let allowed = VmRules {
        allow: vec![allow("10.99.0.5/32:5000")],
        ..vm.clone()
    };
    policy.add_vm(&allowed).expect("add vm with allowlist");
    counting(&policy, &["allowlisted"], || {
        assert_eq!(connects(&lab.vm, LAN, 5000, &lan_5000), IpAddr::V4(VM));
    });
    counting(&policy, &["private"], || dropped(&lab.vm, LAN, 5001));
    assert_eq!(accept_within(&lan_5001, Duration::ZERO), None);

    // Without its elements a VM sends nothing at all (fails closed).
    policy.remove_vm(&allowed).expect("remove vm");
    counting(&policy, &["spoofed"], || dropped(&lab.vm, INET, 8080));
}

/// IPv6 is routed (the internet sees the VM's own address), the VM may use
/// no other source, and the host answers its neighbour discovery only.
#[test]
fn ipv6_from_a_vm_is_routed_and_judged() {
    if skip_unless_root() {
        return;
    }
    let (host, vm, inet) = (Netns::new(), Netns::new(), Netns::new());
    for ns in [&host, &vm, &inet] {
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
    }
    host.veth("kv-test0", &vm);
    host.veth("up0", &inet);
    host.sysctl("net.ipv6.conf.all.forwarding", "1");
    host.ip("addr add 2001:db8:200::1/64 dev kv-test0 nodad");
    host.ip("addr add 2001:db8:1::2/64 dev up0 nodad");
    vm.ip("addr add 2001:db8:200::2/64 dev eth0 nodad");
    vm.ip("addr add 2001:db8:200::99/64 dev eth0 nodad");
    vm.ip("route add default via 2001:db8:200::1");
    inet.ip("addr add 2001:db8:1::1/64 dev eth0 nodad");
    inet.ip("route add 2001:db8:200::/64 via 2001:db8:1::2");

    let policy = Policy::new(host.nft(), config(true)).expect("config");
    policy.install().expect("install");
    let vm_v6: Ipv6Addr = "2001:db8:200::2".parse().expect("v6");
    policy
        .add_vm(&VmRules {
            ipv4: None,
            ipv6: Some(vm_v6),
            ..vm_rules("kv-test0", [0; 4])
        })
        .expect("add vm");

    let inet_http = inet.run(|| TcpListener::bind("[::]:8080")).expect("listen");
    let host_ssh = host.run(|| TcpListener::bind("[::]:2222")).expect("listen");
    let from_vm = |source: &str, to: &str, wait| {
        let source = source.parse().expect("source address");
        let to = to.parse().expect("destination address");
        vm.run(|| connect_from(source, to, wait))
    };

    let stream = from_vm("[2001:db8:200::2]:0", "[2001:db8:1::1]:8080", CONNECT_WAIT)
        .expect("VM to the internet over IPv6");
    let peer = accept_within(&inet_http, CONNECT_WAIT).expect("connection arrived");
    assert_eq!(peer.ip(), IpAddr::V6(vm_v6), "routed, not masqueraded");
    drop(stream);

    let spoofed_before = policy.counters().expect("counters").spoofed.packets;
    let outcome = from_vm("[2001:db8:200::99]:0", "[2001:db8:1::1]:8080", DROP_WAIT);
    assert!(
        matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::TimedOut),
        "{outcome:?}"
    );
    assert_eq!(accept_within(&inet_http, Duration::ZERO), None);
    assert!(policy.counters().expect("counters").spoofed.packets > spoofed_before);

    let to_host_before = policy.counters().expect("counters").to_host.packets;
    for host_address in ["[2001:db8:200::1]:2222", "[2001:db8:1::2]:2222"] {
        let outcome = from_vm("[2001:db8:200::2]:0", host_address, DROP_WAIT);
        assert!(
            matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::TimedOut),
            "{outcome:?}"
        );
    }
    assert_eq!(accept_within(&host_ssh, Duration::ZERO), None);
    assert!(policy.counters().expect("counters").to_host.packets > to_host_before);
}

/// A TCP connection from `source` (bound first: std cannot) to `to`,
/// waiting at most `wait`.
fn connect_from(source: SocketAddr, to: SocketAddr, wait: Duration) -> io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsFd;

    let family = match to {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(source))?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let timeout = PollTimeout::try_from(wait).expect("timeout fits");
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    if poll(&mut fds, timeout)? == 0 {
        return Err(io::ErrorKind::TimedOut.into());
    }
    match socket::getsockopt(&fd, sockopt::SocketError)? {
        0 => {}
        errno => return Err(io::Error::from_raw_os_error(errno)),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}
