//! Benchmark 6, the VM network: what each VM's network costs the host, and
//! what it adds to a boot.
//!
//! Everything runs in a throwaway network namespace the benchmark makes,
//! standing in for the host: `kbench-<pid>-host`, whose uplink `up0` is a
//! veth to a second namespace, `kbench-<pid>-inet` (203.0.113.1, TEST-NET-3),
//! through which its default route goes. Kiln's table, forwarding, links
//! and addresses are made there, never in the host's own namespace, and
//! both namespaces are deleted at the end, also when a step fails. A run
//! that was killed leaves them behind; the next run deletes them.
//!
//! - **Set-up and teardown per VM**: `net-churn` (tests/src/bin, release
//!   build) under `nsenter --net=`, which makes and removes VM networks
//!   back to back without VMs — `kiln::net`'s whole per-VM path, timed per
//!   VM — and lists what was left. Medians, p90 and max over the run, and
//!   the first against the last VMs' medians (growth).
//! - **Boot to runner, network on and off**: kiln-init boots of the bench
//!   image through `kiln::vm::Launcher`, exactly as the boot benchmark's,
//!   alternating a VM without a network and one with
//!   `network: Some(NetRequest::default())` on a launcher
//!   `.with_network(Network::start(..))`. They run in the same process, on
//!   a thread that joined the bench's namespace with a Tokio runtime of its
//!   own (its workers and blocking threads, and the `nft` and QEMU they
//!   start, are born in the namespace): the boot benchmark's own code and
//!   phase stamps, rather than `kiln run`'s one-line summary, so every
//!   phase shows where the network's cost lands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use kiln::net::netns::{self, CreateError, NetNs};
use kiln::net::{NetConfig, NetRequest, Network};

use super::boot::{self, Acc, KilnRun};
use super::results::{NetBoot, NetChurn, NetPhase, NetworkResults, Target};
use super::stats::Stat;
use super::vmkit::{with_retries, Kit};

/// What every bench namespace's name starts with: `kbench-<pid>-<site>`.
const NS_PREFIX: &str = "kbench-";
/// The stand-in host's uplink, its address, and the far end's.
pub const UPLINK_IF: &str = "up0";
const UPLINK_ADDR: &str = "203.0.113.2/24";
const GATEWAY: &str = "203.0.113.1";
const GATEWAY_ADDR: &str = "203.0.113.1/24";
/// The resolver VMs are given (nothing answers there: no VM here resolves).
pub const RESOLVER: &str = "203.0.113.53";
/// VMs compared at each end of the churn for growth.
pub const WINDOW: usize = 20;
/// Set-up plus teardown per VM: the target.
pub const TARGET_MS: f64 = 20.0;
/// The last VMs' median may exceed the first ones' by this factor before
/// it counts as growth (a shared 2-core machine moves by that much).
pub const GROWTH_TOLERANCE: f64 = 1.2;

/// What one VM's network set-up and teardown do, for BENCHMARKS.md.
const COVERS: &[&str] = &[
    "set-up (`Network::attach`): an address slot (a /30) leased from the pool, a network namespace `kiln-<id>` with the tap inside, a veth pair to it, the host's end up with its gateway address, both ends of the wire up and a tc redirect each way, and the VM's elements (its address, resolvers) added to `table inet kiln` in one `nft -f -` transaction, beside the links",
    "teardown (`Network::detach`): the VM's elements removed (one nft transaction), the host end's addresses flushed, the namespace's name removed (the kernel frees it, its tap and veth pair in the background), the address slot given back",
    "not included: `Network::start` (once per process: checks, `table inet kiln` installed)",
];

#[derive(Debug, Clone)]
pub struct Settings {
    /// VM networks made and removed in a row.
    pub vms: usize,
    /// Boots of each (network off, on), after one warm-up of each; 0: none.
    pub boot_runs: usize,
}

/// The tools the namespaces need.
struct Tools {
    ip: PathBuf,
    nsenter: PathBuf,
}

fn find_tool(name: &str, install: &str) -> anyhow::Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("the network benchmark needs `{name}`: {install}"))
}

/// The bench's two namespaces, deleted when dropped.
pub struct BenchNet {
    tools: Tools,
    host: Option<NetNs>,
    inet: Option<NetNs>,
}

impl BenchNet {
    /// Makes and wires both namespaces (see the module docs).
    pub fn new() -> anyhow::Result<BenchNet> {
        let tools = Tools {
            ip: find_tool("ip", "apt-get install iproute2")?,
            nsenter: find_tool("nsenter", "apt-get install util-linux")?,
        };
        find_tool("nft", "apt-get install nftables")?;
        sweep_stale();
        let pid = std::process::id();
        let mut net = BenchNet {
            tools,
            host: None,
            inet: None,
        };
        net.host = Some(make_netns(&format!("{NS_PREFIX}{pid}-host"))?);
        net.inet = Some(make_netns(&format!("{NS_PREFIX}{pid}-inet"))?);
        let inet = net.name(&net.inet)?.to_owned();
        let host = net.name(&net.host)?.to_owned();
        net.ip_batch(
            &host,
            &format!(
                "link set lo up\n\
                 link add {UPLINK_IF} type veth peer name eth0 netns {inet}\n\
                 address add {UPLINK_ADDR} dev {UPLINK_IF}\n\
                 link set {UPLINK_IF} up\n"
            ),
        )?;
        net.ip_batch(
            &inet,
            &format!("link set lo up\naddress add {GATEWAY_ADDR} dev eth0\nlink set eth0 up\n"),
        )?;
        net.ip_batch(
            &host,
            &format!("route add default via {GATEWAY} dev {UPLINK_IF}\n"),
        )?;
        Ok(net)
    }

    fn name<'a>(&self, ns: &'a Option<NetNs>) -> anyhow::Result<&'a str> {
        ns.as_ref()
            .map(NetNs::name)
            .context("the bench's namespace was deleted")
    }

    /// The stand-in host's namespace.
    pub fn host(&self) -> anyhow::Result<&NetNs> {
        self.host
            .as_ref()
            .context("the bench's namespace was deleted")
    }

    /// One line each on how the namespaces are set up.
    pub fn describe(&self) -> Vec<String> {
        vec![
            format!(
                "a network namespace standing in for the host (`{NS_PREFIX}<pid>-host`): its uplink `{UPLINK_IF}` ({UPLINK_ADDR}, MTU 1500) is a veth pair to a second namespace ({GATEWAY}), its default route goes through it; Kiln's table, forwarding, links and addresses are made there, never in the host's own namespace"
            ),
            format!(
                "address pool {}, the VMs' resolver {RESOLVER} (nothing answers there; no VM here resolves), IPv4 only; VM namespaces in /run/netns",
                kiln::net::DEFAULT_POOL4
            ),
            "both namespaces are deleted at the end (the kernel frees the links in them)".into(),
        ]
    }

    /// Link names in the stand-in host's namespace.
    fn host_links(&self) -> anyhow::Result<Vec<String>> {
        let name = self.name(&self.host)?;
        let out = Command::new(&self.tools.ip)
            .args(["-n", name, "-o", "link", "show"])
            .output()
            .with_context(|| format!("running {}", self.tools.ip.display()))?;
        if !out.status.success() {
            bail!(
                "ip -n {name} link show failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(link_names(&String::from_utf8_lossy(&out.stdout)))
    }

    fn ip_batch(&self, netns: &str, commands: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new(&self.tools.ip)
            .args(["-n", netns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.tools.ip.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(commands.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "ip -n {netns} -batch failed ({}): {}\ncommands:\n{commands}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Deletes both namespaces, and with them every link in them.
    pub fn delete(mut self) -> anyhow::Result<()> {
        self.delete_all()
    }

    fn delete_all(&mut self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        for ns in [self.host.take(), self.inet.take()].into_iter().flatten() {
            let name = ns.name().to_owned();
            if let Err(e) = ns.delete() {
                problems.push(format!("{name}: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(
                "deleting the bench's namespaces: {} (`ip netns del NAME` removes them)",
                problems.join("; ")
            )
        }
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        if let Err(e) = self.delete_all() {
            eprintln!("network: {e:#}");
        }
    }
}

/// A named namespace, as `ip netns add` makes it.
fn make_netns(name: &str) -> anyhow::Result<NetNs> {
    let made = NetNs::create(Path::new(netns::NETNS_DIR), name, || {
        Ok::<(), std::convert::Infallible>(())
    });
    match made {
        Ok((ns, ())) => Ok(ns),
        Err(CreateError::Netns(e)) => {
            Err(e).with_context(|| format!("making network namespace {name} (needs root)"))
        }
        Err(CreateError::Inside(never)) => match never {},
    }
}

/// The names in `ip -o link show`: `2: up0@if3: <...` -> `up0`.
fn link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// `net-churn`'s leftovers that are this run's: every one but the
/// `kiln-<id>` namespaces (named in /run/netns, which every Kiln on the
/// host shares) whose VM link `kv-<id>` is not in the bench's namespace.
/// Returns them and how many were another Kiln's.
fn own_leftovers(leftovers: Vec<String>, links: &[String]) -> (Vec<String>, usize) {
    let (ours, others): (Vec<String>, Vec<String>) =
        leftovers
            .into_iter()
            .partition(|l| match l.strip_prefix("namespace ") {
                Some(ns) => {
                    let host_if = kiln::net::VmIfNames::of(ns).host;
                    links.contains(&host_if)
                }
                None => true,
            });
    (ours, others.len())
}

/// Deletes the namespaces of bench runs whose process is gone.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir(netns::NETNS_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
        if !alive {
            eprintln!("network: deleting {name}, left by an earlier bench run");
            if let Err(err) = netns::delete_path(&e.path()) {
                eprintln!("network: {err}");
            }
        }
    }
}

/// The whole benchmark. `kit` and `kernel`: the VMs to boot (absent: the
/// boot figures are left out).
pub async fn run(
    churn_bin: &Path,
    work: &Path,
    vms: Option<(&Kit, String)>,
    settings: &Settings,
) -> anyhow::Result<NetworkResults> {
    if settings.vms < 2 * WINDOW {
        bail!(
            "--net-vms must be at least {} (the first and last {WINDOW} are compared)",
            2 * WINDOW
        );
    }
    let lab = BenchNet::new()?;
    let setup = lab.describe();
    let dir = work.join("net");
    let churn = tokio::task::block_in_place(|| churn(&lab, churn_bin, &dir, settings.vms))?;
    let boot = match vms {
        Some((kit, kernel)) if settings.boot_runs > 0 => Some(tokio::task::block_in_place(|| {
            boot_in(&lab, kit, kernel, settings.boot_runs, &dir)
        })?),
        _ => None,
    };
    lab.delete()?;
    let _ = std::fs::remove_dir_all(&dir);
    let targets = targets(&churn);
    Ok(NetworkResults {
        setup,
        churn,
        boot,
        targets,
    })
}

/// `net-churn`'s output.
#[derive(serde::Deserialize)]
struct ChurnOutput {
    setup_us: Vec<u64>,
    teardown_us: Vec<u64>,
    leftovers: Vec<String>,
}

fn churn(lab: &BenchNet, bin: &Path, dir: &Path, vms: usize) -> anyhow::Result<NetChurn> {
    let run_dir = dir.join("churn");
    let _ = std::fs::remove_dir_all(&run_dir);
    let host = lab.host()?;
    eprintln!("network: {vms} VM networks made and removed in a row (net-churn)");
    let out = Command::new(&lab.tools.nsenter)
        .arg(format!("--net={}", host.path().display()))
        .arg("--")
        .arg(bin)
        .args(["--count", &vms.to_string()])
        .args(["--pool", kiln::net::DEFAULT_POOL4])
        .args(["--dns", RESOLVER, "--uplink", UPLINK_IF])
        .arg("--run-dir")
        .arg(&run_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "net-churn failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let parsed: ChurnOutput = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "parsing net-churn's output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let ms = |v: &[u64]| -> Vec<f64> { v.iter().map(|us| *us as f64 / 1000.0).collect() };
    let setup = ms(&parsed.setup_us);
    let teardown = ms(&parsed.teardown_us);
    if setup.len() != vms || teardown.len() != vms {
        bail!(
            "net-churn timed {} set-ups and {} teardowns of {vms}",
            setup.len(),
            teardown.len()
        );
    }
    let (leftovers, others_ignored) = own_leftovers(parsed.leftovers, &lab.host_links()?);
    let both: Vec<f64> = setup.iter().zip(&teardown).map(|(s, t)| s + t).collect();
    let phases = vec![
        phase("set-up", "`Network::attach`", setup)?,
        phase("teardown", "`Network::detach`", teardown)?,
        phase(
            "set-up + teardown",
            "one VM's network, made and removed",
            both,
        )?,
    ];
    if let Some(total) = phases.last() {
        eprintln!(
            "network: set-up + teardown per VM: median {:.1} ms, p90 {:.1} ms, max {:.1} ms; first {WINDOW} {:.1} ms, last {WINDOW} {:.1} ms; left: {}",
            total.stat.median,
            total.p90,
            total.stat.max,
            total.first_median,
            total.last_median,
            if leftovers.is_empty() {
                "nothing".to_owned()
            } else {
                leftovers.join("; ")
            }
        );
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(NetChurn {
        vms,
        window: WINDOW,
        covers: COVERS.iter().map(|s| (*s).to_owned()).collect(),
        phases,
        leftovers,
        others_ignored,
    })
}

/// Nearest-rank percentile `p` (0..=100) of `samples`; NaN for none.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn phase(name: &str, what: &str, samples: Vec<f64>) -> anyhow::Result<NetPhase> {
    let median = |v: &[f64]| Stat::of(v).map_or(f64::NAN, |s| s.median);
    let n = samples.len();
    let window = WINDOW.min(n);
    Ok(NetPhase {
        name: name.to_owned(),
        what: what.to_owned(),
        p90: percentile(&samples, 90.0),
        first_median: median(&samples[..window]),
        last_median: median(&samples[n - window..]),
        stat: Stat::of(&samples).with_context(|| format!("no {name} figures"))?,
    })
}

/// The churn's targets: under [`TARGET_MS`] per VM, and no growth.
pub fn targets(c: &NetChurn) -> Vec<Target> {
    let Some(total) = c.phases.iter().find(|p| p.name == "set-up + teardown") else {
        return Vec::new();
    };
    let verdict = |ok: bool| if ok { "met" } else { "not met" }.to_owned();
    let growth = total.last_median / total.first_median;
    let clean = c.leftovers.is_empty();
    vec![
        Target {
            what: "VM network set-up + teardown per VM (host side, no VM)".into(),
            goal: format!("under {TARGET_MS:.0} ms on the 2-core machine"),
            measured: format!(
                "{} ms median, p90 {} ms, max {} ms over {} VMs",
                super::render::ms(total.stat.median),
                super::render::ms(total.p90),
                super::render::ms(total.stat.max),
                c.vms
            ),
            verdict: verdict(total.stat.median < TARGET_MS),
            note: "the median VM; the max is the slowest single one (a host hiccup shows there)"
                .into(),
        },
        Target {
            what: format!("no growth over {} VMs in a row", c.vms),
            goal: format!(
                "the last {w} VMs' median within {GROWTH_TOLERANCE:.1}x the first {w}'s, nothing left behind",
                w = c.window
            ),
            measured: format!(
                "{} ms -> {} ms ({growth:.2}x); left behind: {}",
                super::render::ms(total.first_median),
                super::render::ms(total.last_median),
                if clean {
                    "nothing".to_owned()
                } else {
                    format!("{} item(s)", c.leftovers.len())
                }
            ),
            verdict: verdict(growth <= GROWTH_TOLERANCE && clean),
            note: "set-up + teardown; leftovers: `kv-` links, `kiln-` namespaces, per-VM policy set elements".into(),
        },
    ]
}

/// One side of the boot comparison.
#[derive(Default)]
struct Side {
    acc: Acc,
    request: Vec<f64>,
    teardown: Vec<f64>,
}

impl Side {
    fn add(&mut self, r: &KilnRun) {
        self.acc.add(
            &r.phases,
            r.total,
            r.init_share,
            r.modules,
            r.prepare,
            &r.report,
        );
        self.request.push(r.prepare + r.total);
        self.teardown.push(r.teardown);
    }
}

/// The boots, on a thread of the bench's host namespace with a runtime of
/// its own; Ctrl-C there stops them and tears their VMs down.
fn boot_in(
    lab: &BenchNet,
    kit: &Kit,
    kernel: String,
    runs: usize,
    dir: &Path,
) -> anyhow::Result<NetBoot> {
    let mut cfg = NetConfig::defaults(&dir.join("boot"));
    cfg.uplinks = vec![UPLINK_IF.to_owned()];
    cfg.dns = vec![RESOLVER.parse().context("the bench's resolver")?];
    let host = lab.host()?;
    host.run_in(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting a runtime in the bench's namespace")?;
        rt.block_on(async {
            tokio::select! {
                r = boots(kit, kernel, runs, &cfg) => r,
                s = super::interrupted() => Err(anyhow::anyhow!("{s}: stopped; the running VMs were torn down")),
            }
        })
    })
    .context("joining the bench's namespace")?
}

async fn boots(kit: &Kit, kernel: String, runs: usize, cfg: &NetConfig) -> anyhow::Result<NetBoot> {
    let network = Arc::new(
        Network::start(cfg)
            .await
            .context("starting VM networking in the bench's namespace")?,
    );
    let launcher = kit.launcher()?.with_network(network.clone());
    let measured = measure_boots(kit, &launcher, kernel, runs).await;
    let stopped = network.stop().await;
    let r = measured?;
    stopped.context("removing the egress policy from the bench's namespace")?;
    Ok(r)
}

async fn measure_boots(
    kit: &Kit,
    launcher: &kiln::vm::Launcher,
    kernel: String,
    runs: usize,
) -> anyhow::Result<NetBoot> {
    let image = &kit.image.boot;
    let mut incidents = Vec::new();
    let once = |net: bool| {
        let tag = if net { "net-on" } else { "net-off" };
        boot::kiln_once_with(kit, launcher, image, tag, net.then(NetRequest::default))
    };
    eprintln!("network: warm-up boots with the network off and on (not counted)");
    for net in [false, true] {
        with_retries(
            &format!("network-{} warm-up boot", on_off(net)),
            &mut incidents,
            || once(net),
        )
        .await?;
    }
    let (mut off, mut on) = (Side::default(), Side::default());
    for i in 1..=runs {
        // Which goes first alternates, so neither always follows the other.
        let order = if i % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for net in order {
            let r = with_retries(
                &format!("network-{} boot {i}", on_off(net)),
                &mut incidents,
                || once(net),
            )
            .await?;
            if net {
                on.add(&r);
            } else {
                off.add(&r);
            }
        }
        let last = |s: &Side| s.request.last().copied().unwrap_or(f64::NAN);
        eprintln!(
            "network boot {i}/{runs}: request to runner exec: off {:.0} ms, on {:.0} ms",
            last(&off),
            last(&on)
        );
    }
    let stat = |v: &[f64], what: &str| Stat::of(v).with_context(|| format!("no {what} figures"));
    let includes = boot::kiln_includes(true);
    Ok(NetBoot {
        kernel,
        off_request_to_runner: stat(&off.request, "request to runner")?,
        on_request_to_runner: stat(&on.request, "request to runner")?,
        off_teardown: stat(&off.teardown, "teardown")?,
        on_teardown: stat(&on.teardown, "teardown")?,
        off: off
            .acc
            .finish("network off", boot::KILN_PHASES, includes.clone())?,
        on: on.acc.finish("network on", boot::KILN_PHASES, includes)?,
        incidents,
    })
}

fn on_off(net: bool) -> &'static str {
    if net {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_kilns_namespaces_are_not_the_benchs_leftovers() {
        let links = link_names(
            "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noop\n\
             2: up0@if2: <BROADCAST,UP> mtu 1500\n\
             9: kv-0123456789ab@if3: <BROADCAST> mtu 1500\n",
        );
        assert_eq!(links, ["lo", "up0", "kv-0123456789ab"]);
        let (ours, others) = own_leftovers(
            vec![
                "namespace kiln-0123456789ab".into(),
                "namespace kiln-ffffffffffff".into(),
                "link kv-aaaaaaaaaaaa".into(),
                "nft set vm4: elements".into(),
            ],
            &links,
        );
        assert_eq!(
            ours,
            [
                "namespace kiln-0123456789ab",
                "link kv-aaaaaaaaaaaa",
                "nft set vm4: elements"
            ]
        );
        assert_eq!(others, 1);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert!(percentile(&[], 90.0).is_nan());
    }

    fn churn_of(samples: Vec<f64>, leftovers: Vec<String>) -> NetChurn {
        NetChurn {
            vms: samples.len(),
            window: WINDOW,
            covers: vec![],
            phases: vec![phase("set-up + teardown", "x", samples).expect("phase")],
            leftovers,
            others_ignored: 0,
        }
    }

    #[test]
    fn growth_compares_the_first_and_last_vms() {
        // Flat at 10 ms: met twice.
        let flat = churn_of(vec![10.0; 200], vec![]);
        let p = &flat.phases[0];
        assert_eq!((p.first_median, p.last_median, p.p90), (10.0, 10.0, 10.0));
        let t = targets(&flat);
        assert!(t.iter().all(|t| t.verdict == "met"), "{t:?}");
        // Growing from 10 to 30 ms: the median is under 20 ms, the growth
        // target is not met.
        let growing: Vec<f64> = (0..200).map(|i| 10.0 + f64::from(i) / 10.0).collect();
        let g = churn_of(growing, vec![]);
        assert!(g.phases[0].last_median > 2.0 * g.phases[0].first_median);
        let t = targets(&g);
        assert_eq!(t[0].verdict, "met");
        assert_eq!(t[1].verdict, "not met");
        // Flat but leaving things behind: not met either.
        let t = targets(&churn_of(vec![10.0; 200], vec!["link kv-1".into()]));
        assert_eq!(t[1].verdict, "not met");
        assert!(t[1].measured.contains("1 item(s)"), "{t:?}");
        // Slow: the 20 ms target is not met.
        let t = targets(&churn_of(vec![25.0; 200], vec![]));
        assert_eq!(t[0].verdict, "not met");
    }
}
