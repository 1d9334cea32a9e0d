//! The clean-up against fabricated leftovers of a crashed daemon, in temp
//! directories and a cgroup parent of the test's own. The parts that make
//! cgroups and network namespaces need root and are skipped otherwise.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::*;
use crate::net::netns::NetNs;
use crate::vm::dirs::RuntimeDirs;
use crate::vmm::cgroup::{CgroupSettings, Limits, VmCgroup};

/// A fresh random VM id.
fn new_id() -> String {
    let mut bytes = [0u8; 6];
    crate::random::fill(&mut bytes);
    format!("kiln-{}", hex::encode(bytes))
}

/// A host layout in a temp dir, with a cgroup parent of its own that is
/// removed (with whatever is below it) on drop, as is the netns mount.
struct TestHost {
    root: tempfile::TempDir,
    layout: HostLayout,
}

impl TestHost {
    fn new(tag: &str) -> TestHost {
        let root = tempfile::tempdir().expect("tempdir");
        let p = root.path();
        let mut layout = HostLayout::new(
            RuntimeDirs::new(p.join("run"), p.join("disks")),
            p.join("netns"),
            CgroupSettings::new(format!("kiln-test-{tag}-{}", std::process::id())),
        );
        layout.jails = Some(JailBase {
            chroot_base: p.join("jails"),
            exec_name: "firecracker".into(),
        });
        // Never the machine's own links.
        layout.host_links = false;
        layout.dirs.ensure().expect("dirs");
        TestHost { root, layout }
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        let dir = self.layout.dirs.vms().join(id);
        std::fs::create_dir_all(&dir).expect("vm dir");
        std::fs::write(dir.join("console.log"), "boot").expect("console");
        dir
    }

    fn scratch(&self, id: &str) -> PathBuf {
        let path = self.layout.dirs.scratch_path(id).expect("scratch path");
        std::fs::write(&path, "ext4").expect("scratch");
        path
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Ok(parents) = crate::vmm::cgroup::parent_dirs(&self.layout.cgroup) {
            for p in parents {
                let _ = crate::vmm::cgroup::kill_and_remove(&p);
            }
        }
        if self.layout.netns_dir.exists() {
            let _ = nix::mount::umount2(&self.layout.netns_dir, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = self.root.path();
    }
}

fn is_root(what: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped {what}: needs root");
    }
    root
}

fn sleep_in(dir: &Path) -> Child {
    Command::new("sleep")
        .arg("300")
        .current_dir(dir)
        .spawn()
        .expect("spawn sleep")
}

fn assert_killed(child: &mut Child) {
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

fn record(id: &str, dir: PathBuf) -> VmRecord {
    VmRecord {
        id: id.to_owned(),
        pool: "default".into(),
        job_id: None,
        dir,
        vmm_pid: None,
        vmm_start_ticks: None,
        cid: None,
        uid: None,
        netns: None,
        links: Vec::new(),
        scratch: None,
        jail: None,
        cgroup: None,
        created_unix: 0,
    }
}

#[tokio::test]
async fn everything_a_crashed_vm_left_is_removed_and_its_processes_killed() {
    if !is_root("the crashed VM's clean-up") {
        return;
    }
    let host = TestHost::new("crash");
    let layout = &host.layout;
    let id = new_id();
    let vm_dir = host.vm_dir(&id);
    let scratch = host.scratch(&id);

    // What is never a VM's: the templates and a directory of another name.
    let templates = layout.dirs.templates();
    std::fs::create_dir_all(&templates).expect("templates");
    std::fs::write(templates.join("base.ext4"), "t").expect("template");
    let stranger = layout.dirs.vms().join("not-a-kiln-id");
    std::fs::create_dir_all(&stranger).expect("stranger");
    std::fs::write(stranger.join("keep"), "k").expect("keep");

    // The VMM the journal names, working in the VM dir as confined QEMU does.
    let mut vmm = sleep_in(&vm_dir);
    let vmm_id = ProcessId::of(vmm.id()).expect("vmm");

    // A helper that names the VM dir on its command line, as an unconfined
    // QEMU names its sockets, working elsewhere.
    let mut naming = Command::new("sh")
        .args(["-c", "while :; do sleep 0.1; done", "sh"])
        .arg(vm_dir.join("qemu.sock"))
        .current_dir(host.root.path())
        .spawn()
        .expect("spawn sh");

    // A cgroup with a process in it, left as a crash leaves it.
    let cg = VmCgroup::create(
        &layout.cgroup,
        &id,
        Limits {
            cpus: 1,
            memory_bytes: 256 << 20,
        },
    )
    .expect("cgroup");
    let cgroup_dirs: Vec<PathBuf> = cg.dirs().map(Path::to_path_buf).collect();
    let joiner = cg.joiner();
    let mut in_cgroup = Command::new("sleep");
    in_cgroup.arg("300");
    // SAFETY: the closure only makes `write` system calls (Joiner::join).
    unsafe {
        in_cgroup.pre_exec(move || joiner.join());
    }
    let mut in_cgroup = in_cgroup.spawn().expect("spawn sleep in the cgroup");
    std::mem::forget(cg);

    // A jail and a network namespace.
    let jail = layout
        .jails
        .as_ref()
        .map(|j| j.dir().join(&id))
        .expect("jails");
    std::fs::create_dir_all(jail.join("root/run")).expect("jail");
    std::fs::write(jail.join("root/kernel"), "k").expect("jail file");
    let (ns, ()) =
        NetNs::create(&layout.netns_dir, &id, || Ok::<(), std::io::Error>(())).expect("netns");
    let ns_path = ns.path().to_owned();
    // Dropped, not deleted: the name stays, as after a crash.
    drop(ns);

    // The owner's lock file, its owner dead.
    let owners = layout.dirs.owners();
    std::fs::create_dir_all(&owners).expect("owners");
    std::fs::write(owners.join(&id), "").expect("owner file");

    let mut rec = record(&id, vm_dir.clone());
    rec.vmm_pid = Some(vmm_id.pid);
    rec.vmm_start_ticks = Some(vmm_id.start_ticks);
    rec.scratch = Some(scratch.clone());

    let report = reconcile_host(layout, &[rec]).await;

    assert_eq!(report.vms.len(), 1, "{report:?}");
    let vm = &report.vms[0];
    assert_eq!(vm.id, id);
    assert!(report.is_clean(), "{report:?}");
    assert!(vm.killed.contains(&vmm_id), "{vm:?}");
    assert_killed(&mut vmm);
    assert_killed(&mut in_cgroup);
    assert_killed(&mut naming);
    for gone in [&vm_dir, &scratch, &jail, &ns_path, &owners.join(&id)] {
        assert!(
            gone.symlink_metadata().is_err(),
            "{} is left",
            gone.display()
        );
    }
    assert!(
        cgroup_dirs.iter().all(|d| !d.exists()),
        "{cgroup_dirs:?} left"
    );
    assert!(templates.join("base.ext4").exists());
    assert!(stranger.join("keep").exists());
    assert_eq!(report.cleaned_ids().collect::<Vec<_>>(), vec![id.as_str()]);
}

#[tokio::test]
async fn a_vm_a_live_process_owns_is_left_alone() {
    let host = TestHost::new("owned");
    let layout = &host.layout;
    let id = new_id();
    let _owner = VmOwner::claim(&layout.dirs.owners(), &id).expect("claim");
    let vm_dir = host.vm_dir(&id);
    let scratch = host.scratch(&id);
    let mut vmm = sleep_in(&vm_dir);
    let vmm_id = ProcessId::of(vmm.id()).expect("vmm");
    let mut rec = record(&id, vm_dir.clone());
    rec.vmm_pid = Some(vmm_id.pid);
    rec.vmm_start_ticks = Some(vmm_id.start_ticks);
    // A CID lease file a dead process left, and one held.
    let cids = crate::lease::LeaseDir::new("guest CID", layout.dirs.cids(), 3..=100);
    let held = cids.try_take(43).expect("lease").expect("free");
    std::fs::write(layout.dirs.cids().join("42"), "").expect("stale lease");

    let report = reconcile_host(layout, &[rec]).await;

    assert_eq!(report.stale_leases, 1, "{report:?}");
    assert!(!layout.dirs.cids().join("42").exists());
    assert!(held.path().exists());
    assert!(report.vms.is_empty(), "{report:?}");
    assert!(vmm_id.is_same_alive());
    assert!(vm_dir.join("console.log").exists());
    assert!(scratch.exists());
    assert!(is_owned(&layout.dirs.owners(), &id));
    vmm.kill().expect("kill");
    let _ = vmm.wait();
}

#[tokio::test]
async fn a_journal_pid_that_started_at_another_time_is_not_killed() {
    let host = TestHost::new("reused");
    let layout = &host.layout;
    let id = new_id();
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let mut other = sleep_in(elsewhere.path());
    let other_id = ProcessId::of(other.id()).expect("other");
    // The journal's paths are not the VM's: they are never touched.
    let important = elsewhere.path().join("important");
    std::fs::create_dir(&important).expect("mkdir");
    let mut rec = record(&id, important.clone());
    rec.vmm_pid = Some(other_id.pid);
    rec.vmm_start_ticks = Some(other_id.start_ticks + 1);
    rec.scratch = Some(elsewhere.path().join("disk.ext4"));
    std::fs::write(elsewhere.path().join("disk.ext4"), "d").expect("disk");

    let report = reconcile_host(layout, &[rec]).await;

    assert_eq!(report.vms.len(), 1, "{report:?}");
    assert!(report.vms[0].killed.is_empty(), "{report:?}");
    assert!(other_id.is_same_alive(), "a reused pid was killed");
    assert!(important.exists());
    assert!(elsewhere.path().join("disk.ext4").exists());
    other.kill().expect("kill");
    let _ = other.wait();
}

#[test]
fn vm_ids_are_kiln_and_twelve_lowercase_hex_digits() {
    assert!(is_vm_id("kiln-0123456789ab"));
    for bad in [
        "kiln-0123456789a",
        "kiln-0123456789abc",
        "kiln-0123456789AB",
        "kiln-0123456789ag",
        "not-a-kiln-id",
        "kiln-",
        "templates",
        "kiln-0123456789ab.ext4",
    ] {
        assert!(!is_vm_id(bad), "{bad}");
    }
}

#[test]
fn host_veth_ends_name_vm_ids() {
    let names: Vec<String> = [
        "lo",
        "eth0",
        "kv-0123456789ab",
        "kv-0123456789",
        "kt-ffffffffffff",
        "kv-ABCDEF012345",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        ids_of_host_links(&names),
        vec!["kiln-0123456789ab".to_owned()]
    );
}

#[test]
fn net_and_firecracker_add_their_places() {
    let dirs = RuntimeDirs::new("/run/kiln", "/var/lib/kiln/scratch");
    let mut fc = crate::vmm::firecracker::FirecrackerSettings::new("/j", "/f");
    fc.cgroup_root = PathBuf::from("/sys/fs/cgroup/unified");
    fc.uid_lease_dir = PathBuf::from("/run/kiln-fc/uids");
    let mut net = crate::net::NetConfig::defaults(Path::new("/run/kiln"));
    net.netns_dir = PathBuf::from("/run/other-netns");
    let layout = HostLayout::new(dirs, "/run/netns", CgroupSettings::new("kiln"))
        .with_net(&net)
        .with_firecracker(&fc, "firecracker-v1.9");
    assert_eq!(layout.netns_dir, PathBuf::from("/run/other-netns"));
    assert!(layout
        .lease_dirs
        .contains(&PathBuf::from("/run/kiln/net/addrs")));
    assert_eq!(
        layout.jails.as_ref().map(JailBase::dir),
        Some(fc.chroot_base.join("firecracker-v1.9"))
    );
    assert_eq!(
        layout.extra_cgroup_parents,
        vec![PathBuf::from("/sys/fs/cgroup/unified/kiln")]
    );
    assert!(layout.lease_dirs.contains(&PathBuf::from("/run/kiln/cids")));
    assert!(layout
        .lease_dirs
        .contains(&PathBuf::from("/run/kiln-fc/uids")));
    assert!(layout.host_links);
}

#[test]
fn only_the_vms_own_link_names_are_removed() {
    let id = "kiln-0123456789ab";
    let journal = [
        "kt-0123456789ab".to_owned(),
        "eth0".to_owned(),
        "kv-ffffffffffff".to_owned(),
        "kv-0123456789ab".to_owned(),
    ];
    assert_eq!(
        scan::link_names(id, &journal),
        vec!["kv-0123456789ab".to_owned(), "kt-0123456789ab".to_owned()]
    );
}

/// Host links, in a throw-away namespace standing in for the host's: the
/// test runs on a thread that entered it, never in the machine's own.
#[test]
fn leftover_host_links_are_found_and_removed() {
    if !is_root("the host links' clean-up") {
        return;
    }
    let mut host = TestHost::new("links");
    host.layout.host_links = true;
    let fake_host_dir = host.root.path().join("fake-host-ns");
    let (fake_host, ()) = NetNs::create(&fake_host_dir, "host", || Ok::<(), std::io::Error>(()))
        .expect("throw-away namespace");
    let with_ns = new_id();
    let only_link = new_id();
    let (vm_ns, ()) = NetNs::create(&host.layout.netns_dir, &with_ns, || {
        Ok::<(), std::io::Error>(())
    })
    .expect("vm netns");
    let layout = host.layout.clone();
    let outcome = fake_host
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(links_in_fake_host(&layout, vm_ns, &with_ns, &only_link))
        })
        .expect("run in the throw-away namespace");
    let _ = fake_host.delete();
    let _ = nix::mount::umount2(&fake_host_dir, nix::mount::MntFlags::MNT_DETACH);
    outcome.unwrap_or_else(|e| panic!("{e}"));
}

/// Makes VM `with_ns`'s veth pair (host end here, peer in `vm_ns`, which
/// is then left as a crash leaves it) and a lone `kv-` pair of VM
/// `only_link`, cleans up, and checks that no `kv-` link is left.
async fn links_in_fake_host(
    layout: &HostLayout,
    vm_ns: NetNs,
    with_ns: &str,
    only_link: &str,
) -> Result<(), String> {
    use crate::net::attach::VmIfNames;
    use crate::net::link::Netlink;
    let nl = Netlink::open(&tokio::runtime::Handle::current()).map_err(|e| e.to_string())?;
    let here = std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
    let a = VmIfNames::of(with_ns);
    let b = VmIfNames::of(only_link);
    nl.add_veth(&a.host, &a.peer, vm_ns.file())
        .await
        .map_err(|e| e.to_string())?;
    nl.add_veth(&b.host, &b.peer, &here)
        .await
        .map_err(|e| e.to_string())?;
    drop(vm_ns);

    let report = reconcile_host(layout, &[]).await;

    let ids: Vec<&str> = report.vms.iter().map(|r| r.id.as_str()).collect();
    if !report.is_clean() || !ids.contains(&with_ns) || !ids.contains(&only_link) {
        return Err(format!("{report:?}"));
    }
    let lone = report.vms.iter().find(|r| r.id == only_link);
    if !lone.is_some_and(|r| r.removed.contains(&format!("link {}", b.host))) {
        return Err(format!("the lone link was not removed: {report:?}"));
    }
    // The kernel frees a namespace's links a moment after its last user.
    for _ in 0..100 {
        let names = nl.names().await.map_err(|e| e.to_string())?;
        if !names.iter().any(|n| n.starts_with("kv-")) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err("a kv- link is left".into())
}
