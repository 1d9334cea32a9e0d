//! The network lab's own tests (no VM): every site answers from the `host`
//! namespace and from a stand-in for a VM's namespace routed through it (no
//! policy: so a drop in the VM tests is the policy's doing), the servers
//! log what they saw, `host_leftovers` finds what Kiln could leave, and a
//! lab leaves nothing once dropped, even from a panicking test.
//!
//! Skipped, with a message, when not root.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use kiln_vm_tests::netlab::{self, dns, Hit, Lab, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The leak test counts this process's fds and threads: it runs alone.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn lab_or_skip() -> Option<Lab> {
    if let Some(why) = netlab::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(Lab::new().expect("building the lab"))
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Everything a client in the current thread's namespace should reach:
/// both web servers, both resolvers, the LAN host's ports, over IPv4 and
/// IPv6.
fn reach_every_site() -> anyhow::Result<()> {
    for ip in [IpAddr::from(netlab::INET), netlab::INET6.into()] {
        let got = netlab::http_get(addr(ip, 80))?;
        assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
        assert!(
            got.ends_with(&format!("\r\n\r\n{}", netlab::INET_BODY)),
            "{got}"
        );
    }
    for server in [
        IpAddr::from(netlab::RESOLVER),
        netlab::RESOLVER6.into(),
        netlab::OTHER_RESOLVER.into(),
    ] {
        let a = netlab::dns_query(server, netlab::DNS_NAME, dns::TYPE_A)?;
        assert_eq!(a.rcode, dns::RCODE_NOERROR);
        assert_eq!(a.addrs, vec![IpAddr::from(netlab::INET)]);
        let aaaa = netlab::dns_query(server, "Example.Test.", dns::TYPE_AAAA)?;
        assert_eq!(aaaa.addrs, vec![IpAddr::from(netlab::INET6)]);
    }
    let nx = netlab::dns_query(netlab::RESOLVER.into(), "nowhere.test", dns::TYPE_A)?;
    assert_eq!((nx.rcode, nx.addrs.len()), (dns::RCODE_NXDOMAIN, 0));
    for ip in [IpAddr::from(netlab::LAN_HOST), netlab::LAN_HOST6.into()] {
        for port in netlab::LAN_PORTS {
            let got = netlab::read_line(addr(ip, port))?;
            assert_eq!(got, format!("{}\n", netlab::lan_line(port)));
        }
    }
    for ip in [IpAddr::from(netlab::METADATA), netlab::METADATA6.into()] {
        let got = netlab::http_get(addr(ip, 80))?;
        assert!(got.ends_with(netlab::METADATA_BODY), "{got}");
    }
    Ok(())
}

/// Who the servers saw, by site, as IPv4 and IPv6 addresses.
struct Peers {
    inet: [IpAddr; 2],
    lan: [IpAddr; 2],
    meta: [IpAddr; 2],
}

impl Peers {
    /// A client in the `host` namespace: its address on each link.
    fn host() -> Peers {
        Peers {
            inet: [netlab::UPLINK.into(), netlab::UPLINK6.into()],
            lan: [netlab::LAN_GATEWAY.into(), netlab::LAN_GATEWAY6.into()],
            meta: [netlab::META_GATEWAY.into(), netlab::META_GATEWAY6.into()],
        }
    }

    /// A client at `v4` and `v6` whose traffic is not translated.
    fn everywhere(v4: IpAddr, v6: IpAddr) -> Peers {
        Peers {
            inet: [v4, v6],
            lan: [v4, v6],
            meta: [v4, v6],
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peers(hits: &[Hit]) -> Vec<IpAddr> {
    hits.iter().map(|h| h.peer.ip()).collect()
}

/// What [`reach_every_site`] leaves in the logs.
fn assert_logged(lab: &Lab, want: &Peers) {
    let [v4, v6] = want.inet;
    let http = lab.http_requests();
    assert_eq!(peers(&http), vec![v4, v6], "{http:#?}");
    assert!(
        http.iter().all(|h| h.detail == "GET / HTTP/1.0"),
        "{http:#?}"
    );
    let resolver = lab.dns_queries(netlab::RESOLVER);
    let questions: Vec<&str> = resolver.iter().map(|h| h.detail.as_str()).collect();
    assert_eq!(
        questions,
        ["example.test A", "example.test AAAA", "nowhere.test A"]
    );
    assert_eq!(peers(&resolver), vec![v4; 3]);
    assert_eq!(peers(&lab.dns_queries(netlab::RESOLVER6)), vec![v6; 2]);
    assert_eq!(lab.dns_queries(netlab::OTHER_RESOLVER).len(), 2);
    assert_eq!(lab.dns_queries(netlab::OTHER_RESOLVER6).len(), 0);
    for port in netlab::LAN_PORTS {
        let hits = lab.lan_connections(port);
        assert_eq!(peers(&hits), want.lan.to_vec(), "port {port}: {hits:#?}");
    }
    assert_eq!(peers(&lab.meta_requests()), want.meta.to_vec());
}

#[test]
fn the_host_reaches_every_site() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab_or_skip() else { return };
    lab.in_host(reach_every_site).unwrap();
    assert_logged(&lab, &Peers::host());
    let host = lab
        .in_host(|| {
            Ok([
                netlab::read_sysctl("net/ipv4/ip_forward")?,
                netlab::read_sysctl("net/ipv6/conf/all/forwarding")?,
                netlab::read_sysctl("net/ipv4/conf/all/rp_filter")?,
                netlab::read_sysctl("net/ipv4/conf/up0/rp_filter")?,
                netlab::read_sysctl("net/ipv6/conf/default/accept_dad")?,
            ])
        })
        .unwrap();
    assert_eq!(host, ["1", "1", "0", "0", "1"]);
    let inet = lab
        .in_site(Site::Inet, || {
            Ok([
                netlab::read_sysctl("net/ipv4/ip_forward")?,
                netlab::read_sysctl("net/ipv6/conf/all/forwarding")?,
            ])
        })
        .unwrap();
    assert_eq!(inet, ["0", "0"]);
    lab.assert_clean_host();
}

#[test]
fn command_in_host_runs_in_the_host_namespace() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab_or_skip() else { return };
    let out = lab
        .command_in_host("ip")
        .args(["-o", "address", "show", "dev", netlab::UPLINK_IF])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/24", netlab::UPLINK)), "{text}");
    // The mount namespace is this process's: /run/netns is the same.
    let out = lab
        .command_in_host("ls")
        .arg("/run/netns")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&lab.netns_name(Site::Host)), "{text}");
}

#[test]
fn block_on_in_host_keeps_tasks_threads_and_children_in_the_host() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab_or_skip() else { return };
    let host = lab.host_netns_path();
    assert!(!netlab::in_netns_now(&host).unwrap());
    let here = move || netlab::in_netns_now(&host).unwrap();
    let (on, spawned, blocking, child, body) = lab
        .block_on_in_host(async move {
            let on = here();
            let task = here.clone();
            let spawned = tokio::spawn(async move { task() }).await.unwrap();
            let blocking = tokio::task::spawn_blocking(here).await.unwrap();
            let child = tokio::process::Command::new("ip")
                .args(["link", "show", "dev", netlab::UPLINK_IF])
                .output()
                .await
                .unwrap()
                .status
                .success();
            let mut stream = tokio::net::TcpStream::connect((netlab::INET, 80))
                .await
                .unwrap();
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            let mut body = String::new();
            stream.read_to_string(&mut body).await.unwrap();
            (on, spawned, blocking, child, body)
        })
        .unwrap();
    assert_eq!((on, spawned, blocking, child), (true, true, true, true));
    assert!(body.ends_with(netlab::INET_BODY), "{body}");
}

/// A stand-in for a VM's namespace behind a `kv-` veth, routed (no NAT, no
/// policy) through the host: every site answers, and sees the VM's own
/// address; masquerading on the uplink makes it the host's.
#[test]
fn a_namespace_routed_through_the_host_reaches_every_site() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab_or_skip() else { return };
    let vm = lab.add_netns("vm").unwrap();
    let vm_name = vm.file_name().unwrap().to_string_lossy().into_owned();
    let host = lab.netns_name(Site::Host);
    lab.ip_batch(
        &host,
        &format!("link add kv-t0 type veth peer name eth0 netns {vm_name}\n"),
    )
    .unwrap();
    // As Kiln should: without DAD the host's link-local address is usable
    // at once, and with it the host resolves the VM's IPv6 neighbour.
    lab.in_host(|| netlab::write_sysctls(&[("net/ipv6/conf/kv-t0/accept_dad", "0")]))
        .unwrap();
    lab.ip_batch(
        &host,
        "address add 10.200.0.1/30 dev kv-t0
address add fd00:200::1/64 dev kv-t0 nodad
link set kv-t0 up
",
    )
    .unwrap();
    lab.ip_batch(
        &vm_name,
        "address add 10.200.0.2/30 dev eth0
address add fd00:200::2/64 dev eth0 nodad
link set eth0 up
route add default via 10.200.0.1 dev eth0
route add default via fd00:200::1 dev eth0
",
    )
    .unwrap();
    netlab::in_netns(&vm, reach_every_site).unwrap();
    assert_logged(
        &lab,
        &Peers::everywhere(ip("10.200.0.2"), ip("fd00:200::2")),
    );

    nft_in_host(
        &lab,
        "table ip kl-test { chain post { type nat hook postrouting priority srcnat; oifname \"up0\" masquerade; }; }",
    );
    netlab::in_netns(&vm, || netlab::http_get(addr(netlab::INET, 80))).unwrap();
    let last = lab.http_requests().pop().unwrap();
    assert_eq!(last.peer.ip(), IpAddr::from(netlab::UPLINK), "masqueraded");

    let left = lab.host_leftovers();
    assert_eq!(left, ["link kv-t0", "table ip kl-test"], "{left:?}");
    nft_in_host(&lab, "delete table ip kl-test");
    lab.ip_batch(&host, "link del kv-t0\n").unwrap();
    lab.assert_clean_host();
}

#[test]
fn in_a_netns_dir_of_kilns_own_every_entry_is_a_leftover() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(lab.host_leftovers_in(dir.path()), Vec::<String>::new());
    let vm = dir.path().join("vm-1");
    std::fs::write(&vm, "").unwrap();
    assert_eq!(
        lab.host_leftovers_in(dir.path()),
        [vm.display().to_string()]
    );
}

fn nft_in_host(lab: &Lab, ruleset: &str) {
    let out = lab.command_in_host("nft").arg(ruleset).output().unwrap();
    assert!(out.status.success(), "nft {ruleset}: {out:?}");
}

#[test]
fn an_added_name_listener_answers_and_logs() {
    let _shared = EXCLUSIVE.read().unwrap_or_else(PoisonError::into_inner);
    let Some(lab) = lab_or_skip() else { return };
    let at = addr(netlab::INET, 2222);
    lab.serve_name(Site::Inet, at, "inet 2222").unwrap();
    let got = lab.in_host(|| netlab::read_line(at)).unwrap();
    assert_eq!(got, "inet 2222\n");
    let hits = lab.hits_on(at);
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].peer.ip(), IpAddr::from(netlab::UPLINK));
    assert!(lab.http_requests().is_empty());
}

/// Threads of this process named like the lab's servers, once the count
/// is `want` or a second has passed: a joined thread may still be listed
/// for a moment while the kernel finishes its exit.
fn lab_threads_settled(want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let n = lab_threads();
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Threads of this process named like the lab's servers.
fn lab_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with(netlab::serve::THREAD_PREFIX))
        })
        .count()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn namespaces_named(prefix: &str) -> Vec<String> {
    netlab::netns_entries()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn a_dropped_lab_leaves_nothing_even_after_a_panic() {
    let _alone = EXCLUSIVE.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(why) = netlab::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    // Alone: no other test's lab is left.
    assert_eq!(lab_threads_settled(0), 0);
    let fds = open_fds();

    let lab = Lab::new().unwrap();
    let prefix = lab.prefix().to_owned();
    assert!(prefix.starts_with("kl-"), "{prefix}");
    lab.add_netns("extra").unwrap();
    assert_eq!(namespaces_named(&prefix).len(), 5);
    assert_eq!(lab_threads(), 3);
    drop(lab);
    assert_eq!(namespaces_named(&prefix), Vec::<String>::new());
    assert_eq!((open_fds(), lab_threads_settled(0)), (fds, 0));

    let panicked = std::panic::catch_unwind(|| {
        let lab = Lab::new().unwrap();
        let prefix = lab.prefix().to_owned();
        lab.in_host(|| netlab::http_get(addr(netlab::INET, 80)))
            .unwrap();
        panic!("{prefix}");
    });
    let payload = panicked.expect_err("the closure panics");
    let prefix = payload.downcast_ref::<String>().unwrap();
    assert_eq!(namespaces_named(prefix), Vec::<String>::new());
    assert_eq!((open_fds(), lab_threads_settled(0)), (fds, 0));
}
