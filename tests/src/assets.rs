//! What every test VM boots: Debian's cloud kernel, kiln-init and an
//! initramfs with busybox, built once per test process and cached across
//! processes (`$KILN_CACHE`, default `<workspace>/target/kiln-cache`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use kiln::vmm::qemu::Machine;
use kiln::vmm::VmSpec;
use xtask::guest_kernel::{self, GuestKernel};
use xtask::initramfs::{self, GuestContents, Initramfs};
use xtask::{guest_init, kmod};

use crate::job::RUNNER_UID;
use crate::prereq;

pub struct Assets {
    pub workspace: PathBuf,
    pub cache: PathBuf,
    pub kernel: GuestKernel,
    pub init: PathBuf,
    pub initrd: PathBuf,
    pub busybox: PathBuf,
}

/// Built on first use; a failure is reported to every test that asks.
pub fn get() -> anyhow::Result<&'static Assets> {
    static ASSETS: OnceLock<Result<Assets, String>> = OnceLock::new();
    ASSETS
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("preparing the test VM assets failed: {e}"))
}

pub fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// Every module a test VM may need, on either machine type.
pub fn module_names() -> Vec<&'static str> {
    let spec = VmSpec {
        id: "x".into(),
        dir: PathBuf::new(),
        kernel: PathBuf::new(),
        arch: kiln::vmm::Arch::host(),
        initrd: None,
        base_image: Some(PathBuf::new()),
        scratch_disk: Some(PathBuf::new()),
        kernel_args: Vec::new(),
        vcpus: 1,
        memory_mib: 128,
        guest_cid: 3,
        // With a network device, so the initramfs carries its driver.
        net: Some(kiln::vmm::NetAttach {
            netns: PathBuf::new(),
            tap: "x".into(),
        }),
        console_limit_bytes: 0,
    };
    let mut names = Machine::Microvm.guest_modules(&spec);
    for m in Machine::Q35.guest_modules(&spec) {
        if !names.contains(&m) {
            names.push(m);
        }
    }
    names
}

fn build() -> anyhow::Result<Assets> {
    let started = std::time::Instant::now();
    let workspace = workspace();
    let cache = guest_kernel::default_cache_dir(&workspace);
    let busybox = prereq::static_busybox()?;
    let kernel = guest_kernel::fetch(&cache).context("getting Debian's cloud kernel")?;
    let init =
        guest_init::build(&workspace, guest_init::X86_64_TARGET).context("building kiln-init")?;
    let resolved = kmod::resolve(&kernel.modules_dir, &module_names())
        .context("resolving the guest's kernel modules")?;
    let builtin = kernel.modules_dir.join("modules.builtin");
    let mut fs = initramfs::guest(&GuestContents {
        init: init.clone(),
        kernel_release: kernel.release.clone(),
        modules: resolved.modules,
        modules_builtin: builtin.is_file().then_some(builtin),
        busybox: Some(busybox.clone()),
    })?;
    add_accounts(&mut fs)?;
    let initrd = cache.join("vm-tests").join("initramfs.cpio");
    fs.write_file(&initrd)?;
    eprintln!(
        "kiln-vm-tests: kernel {}, kiln-init {}, initramfs {} ready in {:.1} s",
        kernel.release,
        init.display(),
        initrd.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Assets {
        workspace,
        cache,
        kernel,
        init,
        initrd,
        busybox,
    })
}

/// `root` and `runner` (uid and gid 1001, home `/home/runner`).
pub fn add_accounts(fs: &mut Initramfs) -> anyhow::Result<()> {
    fs.file(
        "etc/passwd",
        0o644,
        format!(
            "root:x:0:0:root:/root:/bin/sh\nrunner:x:{RUNNER_UID}:{RUNNER_UID}:runner:/home/runner:/bin/sh\n"
        ),
    )?;
    fs.file(
        "etc/group",
        0o644,
        format!("root:x:0:\nrunner:x:{RUNNER_UID}:\n"),
    )?;
    fs.dir("home/runner", 0o755)?;
    fs.chown("home/runner", RUNNER_UID, RUNNER_UID)?;
    Ok(())
}

/// The kernel arguments that make kiln-init load what `spec` needs.
pub fn modules_arg(machine: Machine, spec: &VmSpec) -> String {
    format!("kiln.modules={}", machine.guest_modules(spec).join(","))
}
