//! Makes and removes VM networks in a row, without VMs: `kiln::net`'s
//! whole per-VM path (address slot, namespace with its tap, veth pair, the
//! host's end, the tc wire, the policy elements) and its teardown, timed.
//! For the network tests and `cargo xtask bench`, which run it inside a
//! network namespace of their own (`nsenter --net=/run/netns/NAME`): it
//! changes the namespace it runs in (nft table, links, forwarding).
//!
//! `net-churn --count N --pool CIDR --dns IP [--uplink IF]` prints one JSON
//! object: each VM's setup and teardown in microseconds, and what was left
//! in the namespace afterwards (links, namespaces, policy elements).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use kiln::net::{NetConfig, NetRequest, Network};

/// The policy's sets that hold one entry per VM.
const PER_VM_SETS: [&str; 6] = ["vm4", "vm6", "dns4", "dns6", "allow4", "allow6"];

struct Args {
    count: usize,
    cfg: NetConfig,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut count = 10;
    let mut cfg = NetConfig::defaults(&std::env::temp_dir().join("kiln-net-churn"));
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--count" => count = value()?.parse()?,
            "--pool" => cfg.pool4 = value()?.parse()?,
            "--dns" => cfg.dns.push(value()?.parse::<IpAddr>()?),
            "--uplink" => cfg.uplinks.push(value()?),
            "--run-dir" => cfg.run_dir = value()?.into(),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(Args { count, cfg })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(churn(args))
}

async fn churn(args: Args) -> anyhow::Result<()> {
    let network = Arc::new(Network::start(&args.cfg).await?);
    let mut setup = Vec::with_capacity(args.count);
    let mut teardown = Vec::with_capacity(args.count);
    let req = NetRequest::default();
    for _ in 0..args.count {
        let mut raw = [0u8; 6];
        kiln::random::fill(&mut raw);
        let id = format!("kiln-{}", hex(&raw));
        let t = Instant::now();
        let vm = network.attach(&id, &req).await?;
        setup.push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        let problems = network.detach(vm).await;
        teardown.push(t.elapsed().as_micros() as u64);
        if !problems.is_empty() {
            bail!("teardown of {id}: {}", problems.join("; "));
        }
    }
    // Policy elements are removed in the background, and the kernel frees
    // namespaces, and the links in them, in the background too.
    network.settle().await;
    let mut leftovers = leftovers(&network).await?;
    for _ in 0..30 {
        if leftovers.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        leftovers = self::leftovers(&network).await?;
    }
    network.stop().await?;
    let out = serde_json::json!({
        "setup_us": setup,
        "teardown_us": teardown,
        "leftovers": leftovers,
    });
    println!("{out}");
    Ok(())
}

/// What a VM network could leave behind: `kv-` links here, `kiln-`
/// namespaces, elements in the policy's per-VM sets.
async fn leftovers(network: &Network) -> anyhow::Result<Vec<String>> {
    let mut left = Vec::new();
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            if name.starts_with(kiln::net::HOST_IF_PREFIX) {
                left.push(format!("link {name}"));
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir(kiln::net::netns::NETNS_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("kiln-") {
                left.push(format!("namespace {name}"));
            }
        }
    }
    for set in PER_VM_SETS {
        let out = std::process::Command::new("nft")
            .args(["list", "set", "inet", kiln::net::policy::TABLE, set])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("elements") {
            left.push(format!("nft set {set}: {}", text.trim()));
        }
    }
    let _ = network;
    Ok(left)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
