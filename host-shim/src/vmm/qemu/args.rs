//! QEMU's command line and the guest kernel's, built from a [`VmSpec`].
//! Pure functions, so every flag is checked by unit tests.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::accel::Accel;
use super::QemuError;
use crate::vmm::{Arch, VmSpec};

/// The QEMU machine type. `microvm` boots faster and has only virtio-mmio
/// devices; `q35` is a PC with PCI, for kernels without virtio-mmio. `virt`
/// is the aarch64 one (PCI devices, a PL011 console): chosen by the guest's
/// architecture, never by the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Machine {
    #[default]
    Microvm,
    Q35,
    Virt,
}

impl Machine {
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
            Machine::Virt => "virt",
        }
    }

    /// The machine for a guest of `arch` when the config asks for
    /// `configured` (an x86 machine type): aarch64 has only `virt`.
    pub fn for_arch(configured: Machine, arch: Arch) -> Machine {
        match arch {
            Arch::Aarch64 => Machine::Virt,
            Arch::X86_64 => configured,
        }
    }

    /// QEMU's `-machine` value, without the memory backend. `virt` takes the
    /// newest interrupt controller the accelerator offers (a KVM host's own
    /// GIC version, GICv3 under TCG): the default GICv2 is missing on many
    /// arm64 servers.
    pub fn qemu_machine(self) -> &'static str {
        match self {
            Machine::Virt => "virt,gic-version=max",
            other => other.name(),
        }
    }

    /// The guest kernel's serial console: the 8250 UART on x86, the PL011 on `virt`.
    pub fn console(self) -> &'static str {
        match self {
            Machine::Virt => "console=ttyAMA0",
            _ => "console=ttyS0",
        }
    }

    /// How the guest kernel resets the machine, which with `-no-reboot`
    /// ends QEMU. `microvm` has no i8042, so the usual `reboot=k` spins in
    /// the keyboard controller wait loop (about 4 s under TCG) before it
    /// falls back; its ACPI reset register (the GED device) is immediate.
    /// q35 has an i8042, so `reboot=k` as everywhere else.
    pub fn reboot_arg(self) -> &'static str {
        match self {
            Machine::Microvm => "reboot=a",
            // On aarch64 the reset is PSCI's whatever this says.
            Machine::Q35 | Machine::Virt => "reboot=k",
        }
    }

    fn device(self, kind: &str) -> String {
        match self {
            Machine::Microvm => format!("{kind}-device"),
            Machine::Q35 | Machine::Virt => format!("{kind}-pci"),
        }
    }

    /// Modules a modular guest kernel (Debian's cloud kernel) must load, in
    /// order, for what `spec` attaches. A kernel with these built in needs none.
    pub fn guest_modules(self, spec: &VmSpec) -> Vec<&'static str> {
        let mut m = vec!["virtio_ring", "virtio"];
        match self {
            Machine::Microvm => m.push("virtio_mmio"),
            Machine::Q35 | Machine::Virt => m.extend([
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
            ]),
        }
        // kiln-init starts the loads in this order as far as dependencies
        // allow, and builds the root as soon as its disks and overlayfs are
        // in: those first, then vsock, which it needs only after the root.
        if spec.base_image.is_some() || spec.scratch_disk.is_some() {
            m.push("virtio_blk");
        }
        if spec.scratch_disk.is_some() {
            m.push("overlay");
        }
        m.extend([
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ]);
        if spec.base_image.is_some() {
            // A job image runs rootless podman, whose networking (slirp4netns,
            // pasta) opens /dev/net/tun; the image has no /lib/modules to load
            // it from later, so kiln-init loads it from the initramfs at boot.
            m.push("tun");
        }
        if spec.net.is_some() {
            m.extend(["failover", "net_failover", "virtio_net"]);
        }
        m
    }
}

impl FromStr for Machine {
    type Err = QemuError;
    fn from_str(s: &str) -> Result<Self, QemuError> {
        match s {
            "microvm" => Ok(Machine::Microvm),
            "q35" => Ok(Machine::Q35),
            _ => Err(QemuError::BadMachine {
                value: s.to_owned(),
            }),
        }
    }
}

/// Where a VM's files live inside its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// vhost-device-vsock's control socket; QEMU connects to it.
    pub vhost_socket: PathBuf,
    /// The hybrid-vsock socket: host-to-guest CONNECTs go here, and guest
    /// connections to port P arrive at `<vsock_uds>_P`.
    pub vsock_uds: PathBuf,
    pub console_log: PathBuf,
}

impl Layout {
    pub fn of(dir: &Path) -> Layout {
        Layout {
            vhost_socket: dir.join("vhost.sock"),
            vsock_uds: dir.join("v.sock"),
            console_log: dir.join("console.log"),
        }
    }
}

/// In which order QEMU attaches the disks. kiln-init finds them by their
/// filesystems' UUIDs, so either works; tests attach them scratch first to
/// prove that the guest does not rely on probe order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskOrder {
    /// The base image, then the scratch disk (`vda`, `vdb`).
    #[default]
    BaseFirst,
    /// The scratch disk, then the base image.
    ScratchFirst,
}

/// The block devices in attach order; the guest names them vda, vdb, ...
/// in that order as a rule (checked for microvm and q35 with QEMU 7.2 and
/// Linux 6.1), but not always when virtio_blk loads as a module beside
/// others: kiln-init is told each disk's UUID (see [`kernel_cmdline`]).
fn disks(spec: &VmSpec, order: DiskOrder) -> Vec<Disk<'_>> {
    let mut d = Vec::new();
    if let Some(p) = &spec.base_image {
        d.push(Disk {
            id: "base",
            path: p,
            read_only: true,
            arg: "kiln.root",
        });
    }
    if let Some(p) = &spec.scratch_disk {
        d.push(Disk {
            id: "scratch",
            path: p,
            read_only: false,
            arg: "kiln.scratch",
        });
    }
    if order == DiskOrder::ScratchFirst {
        d.reverse();
    }
    d
}

struct Disk<'a> {
    id: &'static str,
    path: &'a Path,
    read_only: bool,
    arg: &'static str,
}

/// The guest kernel's command line. Never holds secrets: `spec.kernel_args`
/// is validated, and nothing else here comes from a job. kiln-init is told
/// each disk by its ext4 UUID (read from the file now), or by device name
/// where the disk has none of its own ([`crate::disk::guest_refs`]).
pub fn kernel_cmdline(
    spec: &VmSpec,
    machine: Machine,
    accel: Accel,
    tsc_khz: Option<u64>,
    order: DiskOrder,
) -> String {
    let mut args: Vec<String> = [machine.console(), machine.reboot_arg(), "panic=1"]
        .map(String::from)
        .to_vec();
    if let (Accel::Tcg, Some(khz)) = (accel, tsc_khz) {
        args.push(format!("tsc_early_khz={khz}"));
    }
    let disks = disks(spec, order);
    let named: Vec<(&Path, String)> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| (d.path, format!("/dev/vd{}", char::from(b'a' + i as u8))))
        .collect();
    let refs = crate::disk::guest_refs(&named);
    for ((disk, (_, dev)), guest_ref) in disks.iter().zip(&named).zip(refs) {
        if disk.id == "base" && spec.initrd.is_none() {
            // No initramfs: a kernel with its drivers built in mounts the
            // base image as / itself (as under Firecracker; built-in
            // drivers probe the disks in attach order), and kiln-init uses
            // that root as the overlay's lower layer.
            args.push(format!("root={dev}"));
            args.push("ro".to_owned());
        } else {
            args.push(format!("{}={guest_ref}", disk.arg));
        }
    }
    args.extend(spec.kernel_args.iter().cloned());
    args.join(" ")
}

/// QEMU's argv (without the program name).
pub fn qemu_args(
    spec: &VmSpec,
    machine: Machine,
    accel: Accel,
    tsc_khz: Option<u64>,
    layout: &Layout,
    order: DiskOrder,
) -> Result<Vec<OsString>, QemuError> {
    let mut a = Args::default();
    let mem = format!("{}M", spec.memory_mib);
    a.flag("-no-user-config")
        .flag("-nodefaults")
        .flag("-nographic")
        .flag("-no-reboot")
        .opt("-name", &spec.id)
        .opt(
            "-machine",
            format!("{},memory-backend=mem", machine.qemu_machine()),
        )
        .opt("-accel", accel.as_str())
        .opt("-cpu", accel.cpu_model(machine))
        .opt("-smp", spec.vcpus.to_string())
        .opt("-m", &mem)
        // vhost-user needs guest memory the daemon can map: a shared memfd.
        .opt(
            "-object",
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        )
        .opt(
            "-chardev",
            join(&[
                "socket,id=vsock,path=".as_ref(),
                &escape(&layout.vhost_socket),
            ]),
        )
        .opt(
            "-device",
            format!("{},chardev=vsock", machine.device("vhost-user-vsock")),
        );
    for disk in disks(spec, order) {
        // The scratch disk is thrown away with the VM: the guest's flushes
        // need not reach the host's disk (Firecracker's `Unsafe` cache).
        let mode = if disk.read_only {
            ",readonly=on"
        } else {
            ",cache=unsafe"
        };
        a.opt(
            "-drive",
            join(&[
                format!("id={},format=raw,if=none{mode},file=", disk.id).as_ref(),
                &escape(disk.path),
            ]),
        )
        .opt(
            "-device",
            format!("{},drive={}", machine.device("virtio-blk"), disk.id),
        );
    }
    if let Some(net) = &spec.net {
        let tap = &net.tap;
        if tap.is_empty()
            || tap.len() > 15
            || !tap
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(QemuError::BadTap { name: tap.clone() });
        }
        a.opt(
            "-netdev",
            // vhost=off: vhost-net is a KVM accelerator that needs
            // /dev/vhost-net; QEMU runs in the VM's namespace, where the tap is.
            format!("tap,id=net0,ifname={tap},script=no,downscript=no,vhost=off"),
        )
        .opt(
            "-device",
            format!("{},netdev=net0", machine.device("virtio-net")),
        );
    }
    a.opt("-kernel", escape_free(&spec.kernel));
    if let Some(initrd) = &spec.initrd {
        a.opt("-initrd", escape_free(initrd));
    }
    a.opt(
        "-append",
        kernel_cmdline(spec, machine, accel, tsc_khz, order),
    )
    // The console goes to QEMU's stdout, a pipe the console task drains.
    .opt("-serial", "stdio");
    Ok(a.0)
}

/// Makes the `-netdev` of an argv from [`qemu_args`] use the tap open at
/// `fd` (inherited by QEMU) instead of opening the tap by name, for a
/// QEMU that may not open `/dev/net/tun`.
pub fn tap_by_fd(argv: &mut [OsString], fd: std::os::fd::RawFd) {
    let mut after_netdev = false;
    for a in argv.iter_mut() {
        if after_netdev {
            let value = a.to_string_lossy();
            let rewired: Vec<String> = value
                .split(',')
                .map(|part| match part.split_once('=') {
                    Some(("ifname", _)) => format!("fd={fd}"),
                    _ => part.to_owned(),
                })
                .filter(|part| !part.starts_with("script=") && !part.starts_with("downscript="))
                .collect();
            *a = rewired.join(",").into();
        }
        after_netdev = a == "-netdev";
    }
}

/// Rewires `-serial stdio` in an argv from [`qemu_args`] to the terminal
/// for interactive use: raw mode without signals (Ctrl-C reaches the
/// guest), multiplexed so that Ctrl-A x quits QEMU.
pub fn attach_terminal(argv: &mut Vec<OsString>) {
    if let Some(i) = argv
        .windows(2)
        .position(|w| w[0] == "-serial" && w[1] == "stdio")
    {
        argv.splice(
            i..i + 2,
            [
                "-chardev",
                "stdio,id=con,mux=on,signal=off",
                "-serial",
                "chardev:con",
            ]
            .map(OsString::from),
        );
    }
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, f: &str) -> &mut Self {
        self.0.push(f.into());
        self
    }
    fn opt(&mut self, f: &str, v: impl Into<OsString>) -> &mut Self {
        self.0.push(f.into());
        self.0.push(v.into());
        self
    }
}

fn join(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}

/// A path inside a QEMU `key=value,...` option: commas are doubled.
fn escape(p: &Path) -> OsString {
    let bytes = p.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// `-kernel` and `-initrd` take a plain file name, not an option list.
fn escape_free(p: &Path) -> OsString {
    p.as_os_str().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "t-1".into(),
            dir: "/run/kiln/t-1".into(),
            kernel: "/k/vmlinuz".into(),
            arch: Arch::X86_64,
            initrd: Some("/k/initrd.cpio".into()),
            base_image: None,
            scratch_disk: None,
            kernel_args: vec!["kiln.modules=virtio,vsock".into()],
            vcpus: 2,
            memory_mib: 512,
            guest_cid: 3,
            net: None,
            console_limit_bytes: 1 << 20,
        }
    }

    fn strings(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn microvm_tcg_command_line() {
        let s = spec();
        let args = strings(
            &qemu_args(
                &s,
                Machine::Microvm,
                Accel::Tcg,
                Some(2_600_000),
                &Layout::of(&s.dir),
                DiskOrder::BaseFirst,
            )
            .expect("args"),
        );
        for f in ["-nographic", "-no-reboot", "-nodefaults", "-no-user-config"] {
            assert!(args.iter().any(|a| a == f), "{f} missing: {args:?}");
        }
        assert_eq!(value_of(&args, "-machine"), ["microvm,memory-backend=mem"]);
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert_eq!(value_of(&args, "-cpu"), ["max"]);
        assert_eq!(value_of(&args, "-smp"), ["2"]);
        assert_eq!(value_of(&args, "-m"), ["512M"]);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(
            value_of(&args, "-chardev"),
            ["socket,id=vsock,path=/run/kiln/t-1/vhost.sock"]
        );
        assert_eq!(
            value_of(&args, "-device"),
            ["vhost-user-vsock-device,chardev=vsock"]
        );
        assert_eq!(value_of(&args, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(value_of(&args, "-initrd"), ["/k/initrd.cpio"]);
        assert_eq!(value_of(&args, "-serial"), ["stdio"]);
        assert_eq!(
            value_of(&args, "-append"),
            ["console=ttyS0 reboot=a panic=1 tsc_early_khz=2600000 kiln.modules=virtio,vsock"]
        );
    }

    #[test]
    fn an_aarch64_guest_gets_virt_with_pci_devices_and_the_pl011() {
        let mut s = spec();
        s.arch = Arch::Aarch64;
        s.base_image = Some("/img/rootfs.ext4".into());
        // The config's x86 machine type does not apply to aarch64.
        let machine = Machine::for_arch(Machine::Microvm, s.arch);
        assert_eq!(machine, Machine::Virt);
        let args = strings(
            &qemu_args(
                &s,
                machine,
                Accel::Tcg,
                None,
                &Layout::of(&s.dir),
                DiskOrder::BaseFirst,
            )
            .expect("args"),
        );
        assert_eq!(
            value_of(&args, "-machine"),
            ["virt,gic-version=max,memory-backend=mem"]
        );
        assert_eq!(value_of(&args, "-cpu"), ["max,pauth-impdef=on"]);
        assert_eq!(
            value_of(&args, "-device"),
            [
                "vhost-user-vsock-pci,chardev=vsock",
                "virtio-blk-pci,drive=base"
            ]
        );
        let append = value_of(&args, "-append");
        assert!(append[0].starts_with("console=ttyAMA0 "), "{append:?}");
        assert!(!append[0].contains("tsc_early_khz"), "{append:?}");
        let modules = machine.guest_modules(&s);
        assert!(modules.contains(&"virtio_pci"), "{modules:?}");
        assert!(!modules.contains(&"virtio_mmio"), "{modules:?}");
        assert_eq!(Machine::for_arch(Machine::Q35, Arch::X86_64), Machine::Q35);
    }

    #[test]
    fn q35_kvm_with_disks_and_tap() {
        let mut s = spec();
        s.base_image = Some("/img/base,v1.ext4".into());
        s.scratch_disk = Some("/run/kiln/t-1/scratch.ext4".into());
        s.net = Some(crate::vmm::NetAttach {
            netns: "/run/netns/kiln-x".into(),
            tap: "kiln-tap0".into(),
        });
        s.initrd = None;
        let args = strings(
            &qemu_args(
                &s,
                Machine::Q35,
                Accel::Kvm,
                Some(2_600_000),
                &Layout::of(&s.dir),
                DiskOrder::BaseFirst,
            )
            .expect("args"),
        );
        assert_eq!(value_of(&args, "-cpu"), ["host"]);
        assert_eq!(value_of(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(
            value_of(&args, "-drive"),
            [
                "id=base,format=raw,if=none,readonly=on,file=/img/base,,v1.ext4",
                "id=scratch,format=raw,if=none,cache=unsafe,file=/run/kiln/t-1/scratch.ext4"
            ]
        );
        assert_eq!(
            value_of(&args, "-device"),
            [
                "vhost-user-vsock-pci,chardev=vsock",
                "virtio-blk-pci,drive=base",
                "virtio-blk-pci,drive=scratch",
                "virtio-net-pci,netdev=net0"
            ]
        );
        assert_eq!(
            value_of(&args, "-netdev"),
            ["tap,id=net0,ifname=kiln-tap0,script=no,downscript=no,vhost=off"]
        );
        let mut by_fd: Vec<OsString> = args.iter().map(OsString::from).collect();
        tap_by_fd(&mut by_fd, 7);
        let by_fd = strings(&by_fd);
        assert_eq!(value_of(&by_fd, "-netdev"), ["tap,id=net0,fd=7,vhost=off"]);
        assert_eq!(by_fd.len(), args.len());
        assert!(value_of(&args, "-initrd").is_empty());
        // KVM: no TSC hint; disks named in attach order.
        assert_eq!(
            value_of(&args, "-append"),
            ["console=ttyS0 reboot=k panic=1 root=/dev/vda ro kiln.scratch=/dev/vdb kiln.modules=virtio,vsock"]
        );
    }

    #[test]
    fn with_an_initramfs_kiln_init_mounts_the_base() {
        let mut s = spec();
        s.base_image = Some("/b.ext4".into());
        s.initrd = Some("/initrd".into());
        let line = kernel_cmdline(&s, Machine::Microvm, Accel::Tcg, None, DiskOrder::BaseFirst);
        assert!(line.contains("kiln.root=/dev/vda"), "{line}");
        assert!(!line.contains("root=/dev/vda ro"), "{line}");
    }

    #[test]
    fn ext4_disks_are_named_by_uuid_in_either_order() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut s = spec();
        let (base, scratch) = (d.path().join("base.ext4"), d.path().join("scratch.ext4"));
        crate::disk::create_scratch(&base, crate::disk::MIN_SIZE).expect("base");
        crate::disk::create_scratch(&scratch, crate::disk::MIN_SIZE).expect("scratch");
        let uuid = |p: &Path| {
            let h = hex::encode(crate::disk::ext4_uuid(p).expect("uuid"));
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        };
        s.base_image = Some(base.clone());
        s.scratch_disk = Some(scratch.clone());
        let want_root = format!("kiln.root=UUID={}", uuid(&base));
        let want_scratch = format!("kiln.scratch=UUID={}", uuid(&scratch));
        for order in [DiskOrder::BaseFirst, DiskOrder::ScratchFirst] {
            let args = strings(
                &qemu_args(
                    &s,
                    Machine::Microvm,
                    Accel::Tcg,
                    None,
                    &Layout::of(&s.dir),
                    order,
                )
                .expect("args"),
            );
            let line = value_of(&args, "-append")[0];
            assert!(line.contains(&want_root), "{line}");
            assert!(line.contains(&want_scratch), "{line}");
            assert!(!line.contains("/dev/vd"), "{line}");
            let drives = value_of(&args, "-drive");
            let first = if order == DiskOrder::BaseFirst {
                "id=base"
            } else {
                "id=scratch"
            };
            assert!(drives[0].starts_with(first), "{order:?}: {drives:?}");
        }
    }

    #[test]
    fn terminal_console_replaces_the_log_pipe() {
        let s = spec();
        let mut argv = qemu_args(
            &s,
            Machine::Microvm,
            Accel::Tcg,
            None,
            &Layout::of(&s.dir),
            DiskOrder::BaseFirst,
        )
        .expect("args");
        attach_terminal(&mut argv);
        let args = strings(&argv);
        assert_eq!(value_of(&args, "-serial"), ["chardev:con"]);
        assert_eq!(
            value_of(&args, "-chardev"),
            [
                "socket,id=vsock,path=/run/kiln/t-1/vhost.sock",
                "stdio,id=con,mux=on,signal=off"
            ]
        );
    }

    #[test]
    fn scratch_alone_is_vda() {
        let mut s = spec();
        s.scratch_disk = Some("/s.ext4".into());
        let line = kernel_cmdline(&s, Machine::Microvm, Accel::Tcg, None, DiskOrder::BaseFirst);
        assert!(line.contains("kiln.scratch=/dev/vda"), "{line}");
        assert!(!line.contains("kiln.root"), "{line}");
    }

    #[test]
    fn bad_tap_names_are_refused() {
        let mut s = spec();
        s.net = Some(crate::vmm::NetAttach {
            netns: "/run/netns/kiln-x".into(),
            tap: "tap,id=x".into(),
        });
        let err = qemu_args(
            &s,
            Machine::Microvm,
            Accel::Tcg,
            None,
            &Layout::of(&s.dir),
            DiskOrder::BaseFirst,
        )
        .expect_err("bad tap");
        assert!(err.to_string().contains("tap,id=x"), "{err}");
    }

    #[test]
    fn module_lists_follow_the_devices() {
        let mut s = spec();
        assert_eq!(
            Machine::Microvm.guest_modules(&s),
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        s.scratch_disk = Some("/s".into());
        let q = Machine::Q35.guest_modules(&s);
        assert!(q.contains(&"virtio_pci") && q.contains(&"virtio_blk") && q.contains(&"overlay"));
        assert!(!q.contains(&"virtio_mmio"));
        assert!(!q.contains(&"tun"), "no job image, no tun");
        s.base_image = Some("/b".into());
        let m = Machine::Microvm.guest_modules(&s);
        assert!(m.contains(&"tun"));
        // What the root needs comes first: kiln-init starts loads in this
        // order and builds the root before it needs vsock.
        let pos = |name| m.iter().position(|x| *x == name).expect("listed");
        assert!(pos("virtio_blk") < pos("vsock") && pos("overlay") < pos("vsock"));
    }
}
