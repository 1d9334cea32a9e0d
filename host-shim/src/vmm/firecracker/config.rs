//! The API requests that configure and start one VM, derived from its
//! [`VmSpec`]. Paths are relative to the jail's root, where
//! [`super::resources`] puts the files under the names below.

use super::models::{
    ActionType, ApiRequest, BootSource, CacheType, Drive, InstanceActionInfo, LogLevel, Logger,
    MachineConfiguration, NetworkInterface, Vsock,
};
use crate::vmm::VmSpec;

/// File names inside the jail.
pub const KERNEL: &str = "kernel";
pub const INITRD: &str = "initrd";
pub const BASE_IMAGE: &str = "rootfs.ext4";
pub const SCRATCH_DISK: &str = "scratch.ext4";
/// The hybrid-vsock socket; the guest's connections to host port P arrive
/// on `v.sock_P`.
pub const VSOCK_UDS: &str = "v.sock";
/// A FIFO Kiln reads, so Firecracker's own log is bounded and kept apart
/// from the guest-controlled serial console.
pub const VMM_LOG_FIFO: &str = "firecracker.log";

/// Drive ids (they appear in the request paths).
pub const BASE_DRIVE_ID: &str = "rootfs";
pub const SCRATCH_DRIVE_ID: &str = "scratch";
pub const NET_IFACE_ID: &str = "eth0";

/// Always on the command line: the serial console, `reboot=k` so the
/// guest's reboot ends the Firecracker process, `panic=1` so a panic (PID 1
/// dying included) does too, and Firecracker's i8042 settings that skip
/// probing devices it does not emulate (the keyboard stays for Ctrl-Alt-Del).
pub const FIXED_BOOT_ARGS: &[&str] = &[
    "console=ttyS0",
    "reboot=k",
    "panic=1",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
];

/// The guest's device name of the `index`-th virtio block device.
fn block_device(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index).unwrap_or(25).min(25));
    format!("/dev/vd{letter}")
}

fn has_key(args: &[String], key: &str) -> bool {
    args.iter().any(|a| {
        a == key
            || a.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

/// The kernel command line. Firecracker uses it verbatim (it replaces the
/// default line), adding only `root=/dev/vda ro` for a root drive.
///
/// Only the backend knows in which order it attaches the disks, so it names
/// them for kiln-init: `kiln.root` when an initramfs is the root and the base
/// image must be mounted as the lower layer (without an initramfs the kernel
/// mounts the base image as `/` itself: built-in drivers probe the disks in
/// attach order), and `kiln.scratch`. Each is named by its ext4 UUID where
/// it has one of its own ([`crate::disk::guest_refs`]): the guest may probe
/// the disks in either order. A key the caller already set is left alone.
pub fn boot_args(spec: &VmSpec) -> String {
    let mut args: Vec<String> = FIXED_BOOT_ARGS.iter().map(|s| (*s).to_owned()).collect();
    let attached: Vec<(&str, &std::path::Path)> = [
        ("kiln.root", spec.base_image.as_deref()),
        ("kiln.scratch", spec.scratch_disk.as_deref()),
    ]
    .into_iter()
    .filter_map(|(key, path)| path.map(|p| (key, p)))
    .collect();
    let named: Vec<(&std::path::Path, String)> = attached
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (*p, block_device(i)))
        .collect();
    let refs = crate::disk::guest_refs(&named);
    for ((key, _), guest_ref) in attached.iter().zip(refs) {
        let kernel_mounts_it = *key == "kiln.root" && spec.initrd.is_none();
        if !kernel_mounts_it && !has_key(&spec.kernel_args, key) {
            args.push(format!("{key}={guest_ref}"));
        }
    }
    args.extend(spec.kernel_args.iter().cloned());
    args.join(" ")
}

/// Every request, in the order they are sent; `InstanceStart` is last.
pub fn requests(spec: &VmSpec) -> Vec<ApiRequest> {
    let mut out = vec![
        // First, so that Firecracker's complaints about what follows are kept.
        ApiRequest::Logger(Logger {
            log_path: VMM_LOG_FIFO.to_owned(),
            level: LogLevel::Warning,
            show_level: true,
            show_log_origin: false,
        }),
        ApiRequest::MachineConfig(MachineConfiguration {
            vcpu_count: spec.vcpus,
            mem_size_mib: spec.memory_mib,
            smt: false,
        }),
        ApiRequest::BootSource(BootSource {
            kernel_image_path: KERNEL.to_owned(),
            boot_args: Some(boot_args(spec)),
            initrd_path: spec.initrd.as_ref().map(|_| INITRD.to_owned()),
        }),
    ];
    // The base image comes first so it is /dev/vda whichever way it is used.
    if spec.base_image.is_some() {
        out.push(ApiRequest::Drive(Drive {
            drive_id: BASE_DRIVE_ID.to_owned(),
            is_root_device: spec.initrd.is_none(),
            path_on_host: BASE_IMAGE.to_owned(),
            is_read_only: true,
            cache_type: None,
        }));
    }
    if spec.scratch_disk.is_some() {
        out.push(ApiRequest::Drive(Drive {
            drive_id: SCRATCH_DRIVE_ID.to_owned(),
            is_root_device: false,
            path_on_host: SCRATCH_DISK.to_owned(),
            is_read_only: false,
            // The disk is thrown away with the VM: guest flushes need not
            // reach the host's disk.
            cache_type: Some(CacheType::Unsafe),
        }));
    }
    if let Some(net) = &spec.net {
        out.push(ApiRequest::NetworkInterface(NetworkInterface {
            iface_id: NET_IFACE_ID.to_owned(),
            host_dev_name: net.tap.clone(),
            guest_mac: None,
        }));
    }
    out.push(ApiRequest::Vsock(Vsock {
        guest_cid: spec.guest_cid,
        uds_path: VSOCK_UDS.to_owned(),
    }));
    out.push(ApiRequest::Action(InstanceActionInfo {
        action_type: ActionType::InstanceStart,
    }));
    out
}

#[cfg(test)]
mod tests {

    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "vm-1".into(),
            dir: "/tmp/vm-1".into(),
            kernel: "/img/vmlinux".into(),
            arch: crate::vmm::Arch::host(),
            initrd: None,
            base_image: Some("/img/rootfs.ext4".into()),
            scratch_disk: Some("/tmp/vm-1/scratch.ext4".into()),
            kernel_args: vec!["kiln.debug".into()],
            vcpus: 2,
            memory_mib: 1024,
            guest_cid: 7,
            net: Some(crate::vmm::NetAttach {
                netns: "/run/netns/kiln-x".into(),
                tap: "kiln-tap0".into(),
            }),
            console_limit_bytes: 4096,
        }
    }

    #[test]
    fn boot_args_without_initrd_let_the_kernel_mount_the_base() {
        assert_eq!(
            boot_args(&spec()),
            "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
             kiln.scratch=/dev/vdb kiln.debug"
        );
    }

    #[test]
    fn boot_args_with_initrd_name_the_base_and_keep_callers_keys() {
        let mut s = spec();
        s.initrd = Some("/img/initrd".into());
        let args = boot_args(&s);
        assert!(
            args.contains(" kiln.root=/dev/vda kiln.scratch=/dev/vdb "),
            "{args}"
        );
        s.kernel_args = vec!["kiln.root=/dev/vdc".into()];
        let args = boot_args(&s);
        assert!(!args.contains("kiln.root=/dev/vda"), "{args}");
        assert!(
            args.ends_with("kiln.scratch=/dev/vdb kiln.root=/dev/vdc"),
            "{args}"
        );
        // Only the scratch disk: it is the first block device.
        s.base_image = None;
        s.kernel_args.clear();
        assert!(boot_args(&s).ends_with("kiln.scratch=/dev/vda"));
    }

    #[test]
    fn boot_args_name_ext4_disks_by_uuid() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec();
        let (base, scratch) = (d.path().join("base.ext4"), d.path().join("scratch.ext4"));
        crate::disk::create_scratch(&base, crate::disk::MIN_SIZE).unwrap();
        crate::disk::create_scratch(&scratch, crate::disk::MIN_SIZE).unwrap();
        s.base_image = Some(base.clone());
        s.scratch_disk = Some(scratch.clone());
        s.initrd = Some("/img/initrd".into());
        let args = boot_args(&s);
        for (key, disk) in [("kiln.root", &base), ("kiln.scratch", &scratch)] {
            let uuid = hex::encode(crate::disk::ext4_uuid(disk).unwrap());
            let want = format!("{key}=UUID={}-", &uuid[..8]);
            assert!(args.contains(&want), "{want} not in {args}");
        }
        assert!(!args.contains("/dev/vd"), "{args}");
    }

    #[test]
    fn request_order_and_paths() {
        let paths: Vec<String> = requests(&spec()).iter().map(ApiRequest::path).collect();
        assert_eq!(
            paths,
            [
                "/logger",
                "/machine-config",
                "/boot-source",
                "/drives/rootfs",
                "/drives/scratch",
                "/network-interfaces/eth0",
                "/vsock",
                "/actions",
            ]
        );
        let mut s = spec();
        s.base_image = None;
        s.scratch_disk = None;
        s.net = None;
        let paths: Vec<String> = requests(&s).iter().map(ApiRequest::path).collect();
        assert_eq!(
            paths,
            [
                "/logger",
                "/machine-config",
                "/boot-source",
                "/vsock",
                "/actions"
            ]
        );
    }

    #[test]
    fn root_device_only_without_initrd() {
        let root = |s: &VmSpec| {
            requests(s).into_iter().find_map(|r| match r {
                ApiRequest::Drive(d) if d.drive_id == BASE_DRIVE_ID => Some(d.is_root_device),
                _ => None,
            })
        };
        let mut s = spec();
        assert_eq!(root(&s), Some(true));
        s.initrd = Some("/img/initrd".into());
        assert_eq!(root(&s), Some(false));
    }
}
