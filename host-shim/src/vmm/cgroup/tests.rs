use std::os::unix::process::CommandExt;

use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct\\040x rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn hierarchies_are_read_from_mountinfo() {
    let m = parse_mountinfo(HYBRID);
    assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
    assert_eq!(m.v1_cpu.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu")));
    assert_eq!(
        m.v1_memory.as_deref(),
        Some(Path::new("/sys/fs/cgroup/memory"))
    );
    let unified = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
    let m = parse_mountinfo(unified);
    assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
    assert_eq!(m.v1_cpu, None);
    assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
    assert_eq!(unescape("/x\\04"), "/x\\04");
}

#[test]
fn parents_must_be_plain_relative_names() {
    for bad in ["", "/abs", "../up", "a/../b"] {
        let err = VmCgroup::create(&CgroupSettings::new(bad), "x", LIMITS).expect_err(bad);
        assert!(matches!(err, CgroupError::BadParent { .. }), "{bad}: {err}");
    }
}

#[test]
fn without_cgroup_v2_the_error_says_how_to_mount_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mountinfo = dir.path().join("mountinfo");
    std::fs::write(&mountinfo, "22 27 0:21 / /proc rw - proc proc rw\n").expect("write");
    let settings = CgroupSettings {
        parent: "kiln".into(),
        mountinfo,
    };
    let err = VmCgroup::create(&settings, "x", LIMITS).expect_err("no v2");
    assert!(err.to_string().contains("mount -t cgroup2"), "{err}");
}

const LIMITS: Limits = Limits {
    cpus: 1,
    memory_bytes: 300 << 20,
};

/// Removes the test's parent cgroup in every hierarchy, also on failure.
struct ParentGuard(String);

impl Drop for ParentGuard {
    fn drop(&mut self) {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let m = parse_mountinfo(&text);
        for root in [m.v2, m.v1_cpu, m.v1_memory].into_iter().flatten() {
            let _ = std::fs::remove_dir(root.join(&self.0));
        }
    }
}

fn can_manage_cgroups() -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root = nix::unistd::geteuid().is_root();
    if !root || parse_mountinfo(&text).v2.is_none() {
        eprintln!("skipped: needs root and a cgroup v2 hierarchy");
        return false;
    }
    true
}

#[test]
fn a_process_joins_before_exec_and_remove_kills_it() {
    if !can_manage_cgroups() {
        return;
    }
    let parent = format!("kiln-test-{}", std::process::id());
    let _guard = ParentGuard(parent.clone());
    let cg = VmCgroup::create(&CgroupSettings::new(&parent), "vm-a", LIMITS).expect("create");
    let dirs: Vec<PathBuf> = cg.dirs().map(Path::to_path_buf).collect();
    assert!(
        dirs.iter().all(|d| d.ends_with(format!("{parent}/vm-a"))),
        "{dirs:?}"
    );
    let joiner = cg.joiner();
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("300");
    // SAFETY: the closure only makes `write` system calls (Joiner::join).
    unsafe {
        cmd.pre_exec(move || joiner.join());
    }
    let mut child = cmd.spawn().expect("spawn sleep");
    let pid = child.id();
    let procs = std::fs::read_to_string(dirs[0].join("cgroup.procs")).expect("procs");
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        membership.contains(&format!("{parent}/vm-a")),
        "{membership}"
    );
    assert_memory_limit(&cg, &dirs);

    // The same id again is refused, and leaves the first alone.
    let again = VmCgroup::create(&CgroupSettings::new(&parent), "vm-a", LIMITS);
    assert!(
        matches!(again, Err(CgroupError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert!(dirs.iter().all(|d| d.exists()));

    cg.remove().expect("remove");
    let status = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}

/// The memory limit is in v2's `memory.max` or, on a hybrid host, v1's
/// `memory.limit_in_bytes`, unless no hierarchy has the controller.
fn assert_memory_limit(cg: &VmCgroup, dirs: &[PathBuf]) {
    let want = LIMITS.memory_bytes.to_string();
    let found = dirs.iter().find_map(|d| {
        ["memory.max", "memory.limit_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
    });
    match found {
        Some(v) => assert_eq!(v.trim(), want),
        None => assert!(cg.unapplied().contains(&"memory"), "{:?}", cg.unapplied()),
    }
}

#[test]
fn dropping_removes_the_cgroups() {
    if !can_manage_cgroups() {
        return;
    }
    let parent = format!("kiln-test-drop-{}", std::process::id());
    let _guard = ParentGuard(parent.clone());
    let cg = VmCgroup::create(&CgroupSettings::new(&parent), "vm-b", LIMITS).expect("create");
    let dirs: Vec<PathBuf> = cg.dirs().map(Path::to_path_buf).collect();
    assert!(!dirs.is_empty());
    drop(cg);
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}
