//! The VM's network end to end: `kiln run` inside a lab namespace standing
//! in for the host (`netlab`: an "internet" at 203.0.113.1 with HTTP and
//! DNS, a LAN host at 10.99.0.5, a metadata service at 169.254.169.254, all
//! genuinely routable from the host), a real QEMU VM, and the checks the
//! job runs from inside. A drop is confirmed by the policy's counters and by
//! the target's own log of who reached it, not only by a timeout. No test
//! packet leaves the lab's namespaces.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use kiln_vm_tests::layer;
use kiln_vm_tests::netlab::{self, Lab};
use tempfile::TempDir;

fn image() -> &'static Path {
    static IMAGE: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, dir) = IMAGE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = layer::minimal_image_dir(tmp.path())
            .unwrap_or_else(|e| panic!("building a test image: {e:#}"));
        (tmp, dir)
    });
    dir
}

fn kiln() -> &'static Path {
    static KILN: OnceLock<PathBuf> = OnceLock::new();
    KILN.get_or_init(|| layer::kiln_binary().unwrap_or_else(|e| panic!("{e:#}")))
}

fn skip() -> bool {
    if let Some(why) = netlab::unavailable() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

/// `kiln run` in the lab's host namespace, with its own runtime directory.
fn kiln_run(lab: &Lab, runtime: &Path, flags: &[&str], script: &str) -> std::process::Command {
    let mut c = lab.command_in_host(kiln());
    c.arg("run")
        .arg("--image")
        .arg(image())
        .args([
            "--backend",
            "qemu",
            "--cpus",
            "1",
            "--memory",
            "512",
            "--disk",
            "1",
        ])
        .args(flags)
        .args(["--", "sh", "-c", script])
        .env("KILN_RUNTIME_DIR", runtime.join("run"))
        .env("KILN_DISK_DIR", runtime.join("disks"));
    c
}

/// The checks a job runs: `PASS name` or `FAIL name` per line.
const CHECKS: &str = r#"
c() { n=$1; shift; if "$@" >/tmp/out 2>&1; then echo "PASS $n"; else echo "FAIL $n"; sed "s/^/  | /" /tmp/out; fi; }
ip -o -4 addr show dev eth0 | sed 's/^/ADDR /'
gw=$(ip route | sed -n 's/^default via \([0-9.]*\).*/\1/p')
echo "GW $gw"
c resolve nslookup example.test
# busybox-static's wget crashes in static glibc's resolver: resolve with
# nslookup, then speak HTTP through nc.
ip=$(nslookup example.test | sed -n 's/^Address:* *\([0-9.]*\)$/\1/p' | grep -v '^203.0.113.53$' | tail -1)
echo "RESOLVED $ip"
c web sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $ip 80 | grep -q 'hello from the internet'"
c lan_allowed sh -c 'nc -w 3 10.99.0.5 8080 </dev/null | grep -q 8080'
c lan_other_port nc -w 2 10.99.0.5 8081
c metadata sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 169.254.169.254 80 | grep -q hello"
c gateway nc -w 2 "$gw" 22
c uplink nc -w 2 203.0.113.2 22
c other_resolver timeout 3 nslookup example.test 203.0.113.54
echo CHECKS-DONE
"#;

fn lines(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verdict(stdout: &str, name: &str) -> Option<bool> {
    stdout.lines().find_map(|l| match l.split_once(' ') {
        Some(("PASS", n)) if n == name => Some(true),
        Some(("FAIL", n)) if n == name => Some(false),
        _ => None,
    })
}

/// `nft -s list table inet other` in the lab's host namespace (`-s`:
/// without counter values, which the VM's own packets move).
fn other_table(lab: &Lab) -> String {
    let out = lab
        .command_in_host("nft")
        .args(["-s", "list", "table", "inet", "other"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_vm_reaches_the_internet_and_its_resolver_and_nothing_else() {
    if skip() {
        return;
    }
    let lab = Lab::new().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    // A table of someone else's: Kiln must leave it exactly as it was.
    let made = lab
        .command_in_host("nft")
        .args([
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"table inet other {\n chain c {\n type filter hook forward priority 10; policy accept;\n counter\n }\n}\n")?;
            c.wait()
        })
        .unwrap();
    assert!(made.success());
    let before = other_table(&lab);

    // Watch the counters while the job runs (the table goes with kiln run).
    let script = format!("{CHECKS}\nsleep 3\n");
    let mut child = kiln_run(
        &lab,
        runtime.path(),
        &["--dns", "203.0.113.53", "--allow", "10.99.0.5:8080"],
        &script,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let counters = poll_counters_until_exit(&lab, &mut child);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = lines(&out);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}\ncounters: {counters:?}");
    assert!(out.status.success(), "{ctx}");
    assert!(
        stdout.contains("ADDR ") && stdout.contains("10.200."),
        "{ctx}"
    );
    for (name, reached) in [
        ("resolve", true),
        ("web", true),
        ("lan_allowed", true),
        ("lan_other_port", false),
        ("metadata", false),
        ("gateway", false),
        ("uplink", false),
        ("other_resolver", false),
    ] {
        assert_eq!(verdict(&stdout, name), Some(reached), "{name}: {ctx}");
    }
    // The targets saw what the job saw.
    assert!(lab.lan_connections(8081).is_empty(), "{ctx}");
    assert_eq!(lab.lan_connections(8080).len(), 1, "{ctx}");
    assert!(lab.meta_requests().is_empty(), "{ctx}");
    assert!(lab.dns_queries(netlab::OTHER_RESOLVER).is_empty(), "{ctx}");
    assert!(!lab.dns_queries(netlab::RESOLVER).is_empty(), "{ctx}");
    let web = lab.http_requests();
    assert!(!web.is_empty(), "{ctx}");
    // Masqueraded: the internet sees the host's uplink address, not the VM's.
    assert!(
        web.iter()
            .all(|h| h.peer.ip() == IpAddr::V4(netlab::UPLINK)),
        "{web:?}"
    );
    // The drops were the policy's.
    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert!(count("private") >= 2, "{ctx}");
    assert!(count("to_host") >= 2, "{ctx}");
    assert!(count("dns_blocked") >= 1, "{ctx}");

    // Nothing of the VM is left, the kiln table is gone, the other is untouched.
    let vm = stderr
        .split_whitespace()
        .find(|w| w.starts_with("kiln-"))
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    assert_eq!(other_table(&lab), before);
    let dropped = lab
        .command_in_host("nft")
        .args(["delete", "table", "inet", "other"])
        .status()
        .unwrap();
    assert!(dropped.success());
    let mut left = ours(&lab, Some(&vm));
    for _ in 0..30 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = ours(&lab, Some(&vm));
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Reads `table inet kiln`'s named counters in the lab's host namespace
/// until the child exits; returns the last reading.
fn poll_counters_until_exit(
    lab: &Lab,
    child: &mut std::process::Child,
) -> std::collections::BTreeMap<String, u64> {
    let mut last = std::collections::BTreeMap::new();
    loop {
        let out = lab
            .command_in_host("nft")
            .args(["-j", "list", "counters", "table", "inet", "kiln"])
            .output()
            .unwrap();
        if out.status.success() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                let mut now = std::collections::BTreeMap::new();
                for item in v["nftables"].as_array().into_iter().flatten() {
                    if let Some(c) = item.get("counter") {
                        if let (Some(n), Some(p)) = (c["name"].as_str(), c["packets"].as_u64()) {
                            now.insert(n.to_owned(), p);
                        }
                    }
                }
                if !now.is_empty() {
                    last = now;
                }
            }
        }
        if child.try_wait().unwrap().is_some() {
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn network_none_leaves_only_lo() {
    if skip() {
        return;
    }
    let lab = Lab::new().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let out = kiln_run(
        &lab,
        runtime.path(),
        &["--network", "none"],
        "ip -o link | sed 's/^[0-9]*: \\([^:@]*\\).*/LINK \\1/'",
    )
    .output()
    .unwrap();
    let (stdout, stderr) = lines(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let links: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("LINK "))
        .collect();
    assert_eq!(links, ["lo"], "{stdout}\n{stderr}");
    // No table was made for a VM without a network.
    let t = lab
        .command_in_host("nft")
        .args(["list", "table", "inet", "kiln"])
        .output()
        .unwrap();
    assert!(!t.status.success());
}

#[test]
fn bad_network_settings_fail_before_a_vm_with_what_to_fix() {
    if skip() {
        return;
    }
    let lab = Lab::new().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    for (flags, expect) in [
        // The lab's uplink subnet.
        (&["--net-pool", "203.0.113.0/24"][..], "overlaps"),
        (&["--net-pool", "10.201.0.0/30"][..], "/29 or larger"),
        (&["--uplink", "nosuch0"][..], "nosuch0"),
        (&["--allow", "10.0.0.0/33"][..], "10.0.0.0/33"),
    ] {
        let out = kiln_run(&lab, runtime.path(), flags, "true")
            .output()
            .unwrap();
        let (stdout, stderr) = lines(&out);
        assert_eq!(
            out.status.code(),
            Some(if flags[0] == "--allow" { 2 } else { 125 }),
            "{flags:?}: {stdout}\n{stderr}"
        );
        assert!(stderr.contains(expect), "{flags:?}: {stderr}");
    }
    assert!(ours(&lab, None).is_empty(), "{:?}", ours(&lab, None));
}

/// What [`Lab::host_leftovers`] finds, less other tests' VM namespaces
/// (`/run/netns` is shared by the tests running beside this one).
fn ours(lab: &Lab, vm: Option<&str>) -> Vec<String> {
    lab.host_leftovers()
        .into_iter()
        .filter(|l| !l.contains("/run/netns/") || vm.is_some_and(|v| l.contains(v)))
        .collect()
}

/// A VM network whose setup fails at each of its steps leaves nothing:
/// no namespace, link, address, policy element or address lease. Each
/// failure is a real condition, not an injected one: every address in
/// use, a namespace or a host link already under the VM's name, the
/// policy table gone.
#[test]
fn a_setup_failure_at_each_step_leaves_nothing() {
    use kiln::net::{NetConfig, NetRequest, Network, VmIfNames};
    if skip() {
        return;
    }
    let lab = Lab::new().unwrap();
    let run = tempfile::tempdir().unwrap();
    let netns_dir = tempfile::tempdir().unwrap();
    let leases = run.path().join("addrs");
    let cfg = NetConfig {
        // Two VMs' worth of addresses.
        pool4: "10.203.0.0/29".parse().unwrap(),
        dns: vec![IpAddr::V4(netlab::RESOLVER)],
        run_dir: run.path().to_owned(),
        netns_dir: netns_dir.path().to_owned(),
        ..NetConfig::defaults(run.path())
    };
    let leftovers = |lab: &Lab| -> Vec<String> {
        let mut left = lab.host_leftovers_in(netns_dir.path());
        left.retain(|l| !l.starts_with("table inet kiln"));
        if let Ok(dir) = std::fs::read_dir(&leases) {
            left.extend(dir.flatten().map(|e| format!("lease {:?}", e.file_name())));
        }
        left
    };
    lab.block_on_in_host(async {
        let network = Network::start(&cfg).await.unwrap();
        let req = NetRequest::default();
        let id = |n: u8| format!("kiln-00000000aa{n:02x}");

        // Step 1: every address in use.
        let a = network.attach(&id(1), &req).await.unwrap();
        let b = network.attach(&id(2), &req).await.unwrap();
        let e = network
            .attach(&id(3), &req)
            .await
            .expect_err("pool exhausted");
        assert!(e.to_string().contains("no free VM address slot"), "{e}");
        assert!(network.detach(a).await.is_empty());
        assert!(network.detach(b).await.is_empty());

        // Step 2: the namespace's name is taken.
        let taken = netns_dir.path().join(id(4));
        std::fs::write(&taken, "").unwrap();
        let e = network
            .attach(&id(4), &req)
            .await
            .expect_err("netns exists");
        assert!(e.to_string().contains("exists already"), "{e}");
        std::fs::remove_file(&taken).unwrap();

        // Step 3: the host's end of the veth pair is taken.
        let host_if = VmIfNames::of(&id(5)).host;
        let made = tokio::process::Command::new("ip")
            .args([
                "link", "add", &host_if, "type", "veth", "peer", "name", "kx-taken",
            ])
            .status()
            .await
            .unwrap();
        assert!(made.success());
        let e = network.attach(&id(5), &req).await.expect_err("link exists");
        assert!(e.to_string().contains(&host_if), "{e}");
        let gone = tokio::process::Command::new("ip")
            .args(["link", "del", &host_if])
            .status()
            .await
            .unwrap();
        assert!(gone.success());

        // Step 6: the policy table is gone (fail closed).
        let deleted = tokio::process::Command::new("nft")
            .args(["delete", "table", "inet", "kiln"])
            .status()
            .await
            .unwrap();
        assert!(deleted.success());
        let e = network.attach(&id(6), &req).await.expect_err("no table");
        assert!(e.to_string().contains("table"), "{e}");
        assert!(network.check().await.is_err());
        network.stop().await.unwrap();
    })
    .unwrap();
    // The kernel frees the namespaces' links in the background.
    let mut left = leftovers(&lab);
    for _ in 0..30 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = leftovers(&lab);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Two VMs at once cannot reach each other: B's connection to A's
/// address is dropped and counted as VM to VM.
#[test]
fn two_vms_at_once_cannot_reach_each_other() {
    if skip() {
        return;
    }
    let lab = Lab::new().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let listener = "ip -o -4 addr show dev eth0 | sed 's/.* inet \\([0-9.]*\\).*/ADDR \\1/'; \
                    (nc -l -p 9000 -e echo reached &) ; sleep 25";
    let mut a = kiln_run(&lab, runtime.path(), &["--dns", "203.0.113.53"], listener)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A's address, from its first line.
    let mut out = std::io::BufReader::new(a.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("ADDR ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    let probe = format!(
        "if nc -w 3 {addr} 9000 </dev/null | grep -q reached; then echo REACHED; else echo BLOCKED; fi"
    );
    let mut b = kiln_run(&lab, runtime.path(), &["--dns", "203.0.113.53"], &probe)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let counters = poll_counters_until_exit(&lab, &mut b);
    let b_out = b.wait_with_output().unwrap();
    // SIGINT, as a person's Ctrl-C: kiln run cancels the job and tears
    // its VM down (a SIGKILL would leave the VM to its orphaned VMM).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = a.wait();
    let (stdout, stderr) = lines(&b_out);
    assert!(stdout.contains("BLOCKED"), "{stdout}\n{stderr}");
    assert!(
        counters.get("vm_to_vm").copied().unwrap_or(0) >= 1,
        "{counters:?}\n{stdout}\n{stderr}"
    );
}

/// With an IPv6 prefix: the VM's address comes from it, is routed (the
/// internet sees the VM's own address, no NAT66), and the IPv6 ways to
/// private places — unique local, NAT64's prefix — are dropped as private.
#[test]
fn ipv6_is_routed_to_the_internet_and_nothing_private() {
    if skip() {
        return;
    }
    let lab = Lab::new().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let script = r#"
c() { n=$1; shift; if "$@" >/tmp/out 2>&1; then echo "PASS $n"; else echo "FAIL $n"; sed "s/^/  | /" /tmp/out; fi; }
ip -o -6 addr show dev eth0 scope global | sed 's/.* inet6 \([0-9a-f:]*\).*/ADDR6 \1/'
c web6 sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 2001:db8:1::1 80 | grep -q 'hello from the internet'"
c lan6 nc -w 2 fd00:99::5 8080
c nat64 nc -w 2 64:ff9b::a63:5 8080
c v4mapped nc -w 2 ::ffff:10.99.0.5 8080
c meta6 nc -w 2 fd00:ec2::254 80
echo CHECKS-DONE
sleep 3
"#;
    let mut child = kiln_run(
        &lab,
        runtime.path(),
        &["--dns", "203.0.113.53", "--net-pool6", "2001:db8:ff::/64"],
        script,
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let counters = poll_counters_until_exit(&lab, &mut child);
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = lines(&out);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}\ncounters: {counters:?}");
    assert!(out.status.success(), "{ctx}");
    let addr6: std::net::Ipv6Addr = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ADDR6 "))
        .unwrap_or_else(|| panic!("no IPv6 address: {ctx}"))
        .parse()
        .unwrap();
    assert_eq!(addr6.segments()[..4], [0x2001, 0xdb8, 0xff, 0], "{ctx}");
    for (name, reached) in [
        ("web6", true),
        ("lan6", false),
        ("nat64", false),
        ("v4mapped", false),
        ("meta6", false),
    ] {
        assert_eq!(verdict(&stdout, name), Some(reached), "{name}: {ctx}");
    }
    // Routed: the internet saw the VM's own address.
    let web: Vec<_> = lab
        .http_requests()
        .into_iter()
        .filter(|h| h.local.ip() == IpAddr::V6(netlab::INET6))
        .collect();
    assert!(
        !web.is_empty() && web.iter().all(|h| h.peer.ip() == IpAddr::V6(addr6)),
        "{web:?}\n{ctx}"
    );
    assert!(lab.lan_connections(8080).is_empty(), "{ctx}");
    assert!(lab.meta_requests().is_empty(), "{ctx}");
    assert!(counters.get("private").copied().unwrap_or(0) >= 3, "{ctx}");
}
