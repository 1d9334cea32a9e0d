//! The Firecracker backend end to end against the fake jailer
//! (`src/bin/fake-jailer`), which builds the jail the real one would,
//! chroots into it as the VM's uid, and serves the API socket checking
//! every request against Firecracker's API specification.
//!
//! Needs root, like the real jailer (chroot, chown, setuid).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln::vmm::firecracker::api::ApiError;
use kiln::vmm::firecracker::{config, Firecracker, FirecrackerError, FirecrackerSettings};
use kiln::vmm::VmSpec;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::AsyncBufReadExt;

const SECRET: &str = "jit-config-secret-7f3a9c";
const UID_BASE: u32 = 910_000;

struct Rig {
    dir: TempDir,
    backend: Firecracker,
    record: PathBuf,
    firecracker: PathBuf,
}

/// The tests run one at a time, so that counting this process's file
/// descriptors and children means something; `None` (test skipped) when
/// not root.
async fn exclusive_root() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the jailer (and its stand-in) needs root");
        return None;
    }
    Some(SERIAL.lock().await)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Processes whose parent is this test process (zombies included).
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// A fake jailer configured by `conf` (merged over the defaults), a dummy
/// Firecracker binary, images, and a cgroup root in a temporary directory.
fn rig(conf: Value) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["bin", "jails", "cgroup", "images"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let jailer = d.join("bin/jailer");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fake-jailer"), &jailer).unwrap();
    let mut full = json!({
        "spec": Path::new(env!("CARGO_MANIFEST_DIR")).join("data/firecracker-api.yaml"),
        "record": d.join("record.jsonl"),
        "cgroup_root": d.join("cgroup"),
        "console_bytes": 100_000,
    });
    for (k, v) in conf.as_object().unwrap() {
        full[k] = v.clone();
    }
    std::fs::write(d.join("bin/jailer.json"), full.to_string()).unwrap();
    let firecracker = d.join("bin/firecracker");
    std::fs::write(&firecracker, b"not really firecracker").unwrap();
    std::fs::set_permissions(&firecracker, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode) in [("vmlinux", 0o644), ("rootfs.ext4", 0o644)] {
        let p = d.join("images").join(name);
        std::fs::write(&p, name.as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut settings = FirecrackerSettings::new(&jailer, &firecracker);
    settings.chroot_base = d.join("jails");
    settings.cgroup_root = d.join("cgroup");
    settings.uid_range = UID_BASE..=UID_BASE + 9;
    settings.uid_lease_dir = d.join("uids");
    settings.api_socket_timeout = Duration::from_secs(5);
    settings.api_request_timeout = Duration::from_secs(5);
    settings.kill_timeout = Duration::from_secs(5);
    let backend = Firecracker::new(settings).unwrap();
    Rig {
        record: d.join("record.jsonl"),
        firecracker,
        backend,
        dir,
    }
}

impl Rig {
    fn spec(&self, id: &str) -> VmSpec {
        let vm_dir = self.dir.path().join("vms").join(id);
        std::fs::create_dir_all(&vm_dir).unwrap();
        let scratch = vm_dir.join("scratch.ext4");
        std::fs::write(&scratch, vec![0u8; 4096]).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o600)).unwrap();
        VmSpec {
            id: id.to_owned(),
            dir: vm_dir,
            kernel: self.dir.path().join("images/vmlinux"),
            arch: kiln::vmm::Arch::host(),
            initrd: None,
            base_image: Some(self.dir.path().join("images/rootfs.ext4")),
            scratch_disk: Some(scratch),
            kernel_args: vec!["kiln.modules=virtio_blk".into()],
            vcpus: 2,
            memory_mib: 512,
            guest_cid: 3,
            net: None,
            console_limit_bytes: 4096,
        }
    }

    fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    fn fake_pid(&self) -> u32 {
        let argv = self.events_of("argv");
        u32::try_from(argv[0]["pid"].as_u64().unwrap()).unwrap()
    }

    /// Nothing of VM `id` is left: jail, cgroup, process, uid.
    fn assert_all_gone(&self, id: &str, pid: u32) {
        let jail = self.dir.path().join("jails/firecracker").join(id);
        assert!(!jail.exists(), "{} left behind", jail.display());
        let cgroup = self.dir.path().join("cgroup/kiln").join(id);
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
        assert_eq!(self.backend.uids_in_use(), 0);
    }
}

#[tokio::test]
async fn launch_configure_start_exit_teardown() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    // The shim's environment may hold the runner's JIT config; none of it
    // may reach the jailer.
    std::env::set_var("ACTIONS_RUNNER_INPUT_JITCONFIG", SECRET);
    let rig = rig(json!({}));
    let spec = rig.spec("fc-e2e-1");
    let mut vm = rig.backend.start(&spec).await.unwrap();
    let pid = vm.pid().unwrap();
    assert_eq!(pid, rig.fake_pid(), "the jailer's pid is Firecracker's");
    let jail = rig.dir.path().join("jails/firecracker/fc-e2e-1/root");
    assert_eq!(vm.jail_root(), jail);
    assert_eq!(vm.vsock_uds_path(), jail.join("v.sock"));
    assert_eq!(vm.guest_listener_path(), jail.join("v.sock_1024"));
    assert_eq!(vm.console_log_path(), spec.dir.join("console.log"));
    let jail_uid = vm.uid().unwrap();
    assert!((UID_BASE..=UID_BASE + 9).contains(&jail_uid), "{jail_uid}");
    let t = vm.start_timings();
    assert!(
        t.api_ready > Duration::ZERO && t.instance_started >= t.api_ready,
        "{t:?}"
    );

    // The "guest" dials the host through the listener bound before start.
    let listener = vm.take_guest_listener().unwrap();
    assert_eq!(listener.path(), jail.join("v.sock_1024"));
    let stream = listener.accept(Duration::from_secs(10)).await.unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stream)
        .read_line(&mut line)
        .await
        .unwrap();
    assert_eq!(line, "hello from the fake guest\n");
    // Firecracker made its vsock socket inside the jail.
    assert!(jail.join("v.sock").exists());

    let status = tokio::time::timeout(Duration::from_secs(10), vm.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "a guest that rebooted");
    vm.teardown().await.unwrap();
    rig.assert_all_gone("fc-e2e-1", pid);

    // The jailer's argv, exactly.
    let argv = rig.events_of("argv");
    assert_eq!(argv.len(), 1);
    let args: Vec<&str> = argv[0]["argv"].as_array().unwrap()[1..]
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let uid = jail_uid.to_string();
    let base = rig.dir.path().join("jails");
    let memory = ((512u64 + 64) << 20).to_string();
    assert_eq!(
        args,
        [
            "--id",
            "fc-e2e-1",
            "--exec-file",
            rig.firecracker.to_str().unwrap(),
            "--uid",
            &uid,
            "--gid",
            &uid,
            "--chroot-base-dir",
            base.to_str().unwrap(),
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            "kiln",
            "--cgroup",
            "cpu.max=200000 100000",
            "--cgroup",
            &format!("memory.max={memory}"),
            "--",
            "--api-sock",
            "/run/firecracker.socket",
        ]
    );
    assert_eq!(
        argv[0]["env"],
        json!([]),
        "the jailer's environment is empty"
    );
    let cgroups: Vec<(String, String)> = rig
        .events_of("cgroup")
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        cgroups,
        [
            ("cpu.max".to_owned(), "200000 100000".to_owned()),
            ("memory.max".to_owned(), memory)
        ]
    );
    assert_eq!(rig.events_of("jailed")[0]["uid"], jail_uid);

    // The requests, in order, each accepted, each exactly what config built.
    let requests = rig.events_of("request");
    let expected = config::requests(&spec);
    assert_eq!(requests.len(), expected.len());
    for (got, want) in requests.iter().zip(&expected) {
        assert_eq!(got["method"], "PUT");
        assert_eq!(got["path"], want.path());
        assert_eq!(got["body"], want.body());
        assert_eq!(got["status"], 204, "{got}");
    }
    let order: Vec<&str> = requests
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "/logger",
            "/machine-config",
            "/boot-source",
            "/drives/rootfs",
            "/drives/scratch",
            "/vsock",
            "/actions"
        ]
    );
    assert!(rig.events_of("guest_dial")[0]["error"].is_null());
    assert_eq!(rig.events_of("exit")[0]["code"], 0);

    // The serial console was bounded; Firecracker's log came through the FIFO.
    let console = std::fs::read(spec.dir.join("console.log")).unwrap();
    assert!(console.starts_with(b"fake guest: serial console line\n"));
    assert_eq!(
        &console[4096..],
        b"\n[kiln: output beyond 4096 bytes dropped]\n".as_slice()
    );
    let vmm_log = std::fs::read_to_string(spec.dir.join("firecracker.log")).unwrap();
    assert!(
        vmm_log.contains("fake-firecracker: logger ready"),
        "{vmm_log:?}"
    );

    // No secret anywhere the jailer or Firecracker could see.
    let record = std::fs::read_to_string(&rig.record).unwrap();
    assert!(!record.contains(SECRET));
}

#[tokio::test]
async fn hung_vm_is_killed_on_timeout_and_torn_down() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"on_start": "hang"}));
    let spec = rig.spec("fc-hang");
    let mut vm = rig.backend.start(&spec).await.unwrap();
    let pid = vm.pid().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), vm.wait())
            .await
            .is_err(),
        "the hung VM exited by itself"
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let status = vm.kill().await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    vm.teardown().await.unwrap();
    rig.assert_all_gone("fc-hang", pid);
    assert_eq!(rig.events_of("hanging").len(), 1);
    assert!(rig.events_of("exit").is_empty());
}

#[tokio::test]
async fn teardown_alone_kills_a_running_vm() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"on_start": "hang"}));
    let vm = rig.backend.start(&rig.spec("fc-td")).await.unwrap();
    let pid = vm.pid().unwrap();
    vm.teardown().await.unwrap();
    rig.assert_all_gone("fc-td", pid);
}

#[tokio::test]
async fn rejected_request_fails_start_and_leaves_nothing() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"reject_path": "/drives/scratch"}));
    let spec = rig.spec("fc-reject");
    let err = rig.backend.start(&spec).await.unwrap_err();
    match &err {
        FirecrackerError::Api(ApiError::Rejected {
            uri, status, fault, ..
        }) => {
            assert_eq!(uri, "/drives/scratch");
            assert_eq!(status.as_u16(), 400);
            assert!(fault.contains("refused, as the test asked"), "{fault}");
        }
        other => panic!("{other:?}"),
    }
    rig.assert_all_gone("fc-reject", rig.fake_pid());
    let paths: Vec<String> = rig
        .events_of("request")
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths.last().unwrap(), "/drives/scratch");
    assert!(
        !paths.contains(&"/actions".to_owned()),
        "started despite the error"
    );
    // The VM's directory (logs) stays for the caller.
    assert!(spec.dir.join("firecracker.log").exists());
}

#[tokio::test]
async fn jailer_failing_early_is_reported_with_its_log_and_cleaned_up() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"die_before_socket": true}));
    let spec = rig.spec("fc-early");
    let err = rig.backend.start(&spec).await.unwrap_err();
    match &err {
        FirecrackerError::ExitedEarly { status, said } => {
            assert_eq!(status.code(), Some(1));
            assert!(said.contains("failing before the API socket"), "{said:?}");
        }
        other => panic!("{other:?}"),
    }
    // The error names no file (the VM layer's teardown deletes them).
    assert!(!err.to_string().contains("firecracker.log"), "{err}");
    // The fake made the cgroup before failing: teardown removed it.
    rig.assert_all_gone("fc-early", rig.fake_pid());
}

/// The real jailer on a host whose cgroup v2 lacks the cpu controller
/// prints this and exits 1; the error must say so itself, printable.
#[tokio::test]
async fn a_jailer_missing_a_cgroup_controller_is_quoted_in_the_error() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(
        json!({"cgroup_failure": "2026-12-03T12:00:00 [anonymous-instance:main] Controller cpu is unavailable\x1b[0m\n"}),
    );
    let spec = rig.spec("fc-cgroup");
    let err = rig.backend.start(&spec).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FirecrackerError::ExitedEarly { .. }), "{msg}");
    assert!(msg.contains("Controller cpu is unavailable?[0m"), "{msg}");
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    assert!(!msg.contains("firecracker.log"), "{msg}");
}

#[tokio::test]
async fn an_existing_jail_is_never_reused_or_removed() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({}));
    let other = rig.dir.path().join("jails/firecracker/fc-busy/root");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("marker"), b"someone else's").unwrap();
    let err = rig.backend.start(&rig.spec("fc-busy")).await.unwrap_err();
    assert!(
        matches!(err, FirecrackerError::AlreadyExists { .. }),
        "{err}"
    );
    assert!(other.join("marker").exists());
    assert!(rig.events().is_empty(), "the jailer ran");
    assert_eq!(rig.backend.uids_in_use(), 0);
}

#[tokio::test]
async fn concurrent_vms_get_distinct_uids_and_jails() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"on_start": "hang", "console_bytes": 0}));
    let mut vms = Vec::new();
    for i in 0..3 {
        vms.push(
            rig.backend
                .start(&rig.spec(&format!("fc-many-{i}")))
                .await
                .unwrap(),
        );
    }
    let mut uids: Vec<u32> = vms.iter().map(|v| v.uid().unwrap()).collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), 3);
    assert_eq!(rig.backend.uids_in_use(), 3);
    let pids: Vec<u32> = vms.iter().map(|v| v.pid().unwrap()).collect();
    for vm in vms {
        vm.teardown().await.unwrap();
    }
    for (i, pid) in pids.into_iter().enumerate() {
        rig.assert_all_gone(&format!("fc-many-{i}"), pid);
    }
}

#[tokio::test]
async fn ctrl_alt_del_stops_the_guest_gracefully() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"on_start": "hang", "console_bytes": 0}));
    let mut vm = rig.backend.start(&rig.spec("fc-cad")).await.unwrap();
    let pid = vm.pid().unwrap();
    vm.send_ctrl_alt_del().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), vm.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    vm.teardown().await.unwrap();
    rig.assert_all_gone("fc-cad", pid);
    let last = rig.events_of("request").pop().unwrap();
    assert_eq!(last["body"], json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(last["status"], 204);
}

#[tokio::test]
async fn dropping_a_vm_without_teardown_still_cleans_up() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"on_start": "hang", "console_bytes": 0}));
    let vm = rig.backend.start(&rig.spec("fc-drop")).await.unwrap();
    let pid = vm.pid().unwrap();
    drop(vm);
    // SIGKILL was sent at drop; tokio reaps the child in the background.
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..200 {
        if !proc_dir.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    rig.assert_all_gone("fc-drop", pid);
}

#[tokio::test]
async fn a_pid_file_naming_another_process_fails_the_start() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let rig = rig(json!({"wrong_pid_file": true}));
    let err = rig.backend.start(&rig.spec("fc-pid")).await.unwrap_err();
    match &err {
        FirecrackerError::PidMismatch {
            path,
            recorded,
            spawned,
        } => {
            assert!(
                path.ends_with("fc-pid/root/firecracker.pid"),
                "{}",
                path.display()
            );
            assert_eq!(*spawned, rig.fake_pid());
            assert_eq!(recorded, &(spawned + 1).to_string());
        }
        other => panic!("{other:?}"),
    }
    rig.assert_all_gone("fc-pid", rig.fake_pid());
    // It failed before configuring anything.
    assert!(rig.events_of("request").is_empty());
}

/// Many VMs, some made to fail at different steps: afterwards no jail,
/// cgroup, uid, child process or file descriptor is left.
#[tokio::test]
async fn many_vms_failing_at_different_steps_leak_nothing() {
    let Some(_serial) = exclusive_root().await else {
        return;
    };
    let modes = [
        json!({"console_bytes": 20_000}),
        json!({"on_start": "hang", "console_bytes": 0}),
        json!({"reject_path": "/vsock"}),
        json!({"reject_path": "/logger"}),
        json!({"die_before_socket": true}),
        json!({"wrong_pid_file": true}),
    ];
    let rigs: Vec<Rig> = modes.iter().map(|m| rig(m.clone())).collect();
    // Tokio opens its SIGCHLD pipe at the first spawn, once per process:
    // spawn once before counting.
    let warm_up = rigs[0]
        .backend
        .start(&rigs[0].spec("fc-leak-warm-up"))
        .await
        .unwrap();
    warm_up.teardown().await.unwrap();
    let fds_before = open_fds();
    let mut pids = Vec::new();
    for round in 0..3 {
        for (i, rig) in rigs.iter().enumerate() {
            let id = format!("fc-leak-{round}-{i}");
            match rig.backend.start(&rig.spec(&id)).await {
                Ok(mut vm) => {
                    pids.push((i, id, vm.pid().unwrap()));
                    if tokio::time::timeout(Duration::from_millis(300), vm.wait())
                        .await
                        .is_err()
                    {
                        vm.kill().await.unwrap();
                    }
                    vm.teardown().await.unwrap();
                }
                Err(e) => {
                    assert!(i >= 2, "mode {i} failed: {e}");
                }
            }
        }
    }
    assert_eq!(pids.len(), 6, "{pids:?}");
    for (i, id, pid) in &pids {
        rigs[*i].assert_all_gone(id, *pid);
    }
    for (i, rig) in rigs.iter().enumerate() {
        for round in 0..3 {
            let id = format!("fc-leak-{round}-{i}");
            assert!(!rig.dir.path().join("jails/firecracker").join(&id).exists());
            assert!(!rig.dir.path().join("cgroup/kiln").join(&id).exists());
        }
        assert_eq!(rig.backend.uids_in_use(), 0);
    }
    assert_eq!(children(), Vec::<u32>::new(), "child processes left");
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
}
