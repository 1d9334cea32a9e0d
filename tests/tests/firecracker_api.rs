//! Every request the Firecracker backend sends is checked against
//! Firecracker's API specification (`tests/data/firecracker-api.yaml`), and
//! the checker itself is shown to catch misspelled, missing, mistyped and
//! out-of-range fields.
#![allow(clippy::unwrap_used)]

#[path = "../src/bin/fake-jailer/openapi.rs"]
mod openapi;

use std::path::{Path, PathBuf};

use kiln::vmm::firecracker::config;
use kiln::vmm::firecracker::models::{ActionType, ApiRequest, InstanceActionInfo};
use kiln::vmm::VmSpec;
use openapi::ApiSpec;
use serde_json::{json, Value};

fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/firecracker-api.yaml")
}

fn api() -> ApiSpec {
    ApiSpec::load(&spec_path()).unwrap()
}

fn base_spec() -> VmSpec {
    VmSpec {
        id: "vm-1".into(),
        dir: "/tmp/kiln/vm-1".into(),
        kernel: "/img/vmlinux".into(),
        arch: kiln::vmm::Arch::host(),
        initrd: None,
        base_image: None,
        scratch_disk: None,
        kernel_args: vec![],
        vcpus: 1,
        memory_mib: 128,
        guest_cid: 3,
        net: None,
        console_limit_bytes: 1 << 20,
    }
}

/// Every combination of the optional parts of a VM, at the edges of the
/// allowed sizes.
fn sample_specs() -> Vec<VmSpec> {
    let mut out = Vec::new();
    for bits in 0..16u32 {
        for (vcpus, memory_mib, guest_cid) in [(1, 128, 3), (2, 2048, 4), (32, 65536, u32::MAX)] {
            let mut s = base_spec();
            s.id = format!("vm-{bits}-{vcpus}");
            if bits & 1 != 0 {
                s.initrd = Some("/img/initrd".into());
            }
            if bits & 2 != 0 {
                s.base_image = Some("/img/rootfs.ext4".into());
            }
            if bits & 4 != 0 {
                s.scratch_disk = Some("/tmp/kiln/vm-1/scratch.ext4".into());
            }
            if bits & 8 != 0 {
                s.net = Some(kiln::vmm::NetAttach {
                    netns: "/run/netns/kiln-x".into(),
                    tap: "kiln-tap7".into(),
                });
                s.kernel_args = vec!["kiln.modules=virtio_net".into(), "kiln.debug".into()];
            }
            s.vcpus = vcpus;
            s.memory_mib = memory_mib;
            s.guest_cid = guest_cid;
            s.validate().unwrap();
            out.push(s);
        }
    }
    out
}

fn all_requests() -> Vec<ApiRequest> {
    let mut out: Vec<ApiRequest> = sample_specs().iter().flat_map(config::requests).collect();
    out.push(ApiRequest::Action(InstanceActionInfo {
        action_type: ActionType::SendCtrlAltDel,
    }));
    out
}

#[test]
fn every_request_the_backend_sends_matches_the_spec() {
    let api = api();
    let requests = all_requests();
    assert!(requests.len() > 300, "{}", requests.len());
    for r in &requests {
        let body = r.body();
        if let Err(problems) = api.check(r.method(), &r.path(), Some(&body)) {
            panic!("{} {} {body}: {problems:?}", r.method(), r.path());
        }
    }
    // Every kind of request Kiln sends was among them.
    let mut paths: Vec<String> = requests.iter().map(ApiRequest::path).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths,
        [
            "/actions",
            "/boot-source",
            "/drives/rootfs",
            "/drives/scratch",
            "/logger",
            "/machine-config",
            "/network-interfaces/eth0",
            "/vsock",
        ]
    );
}

#[test]
fn boot_args_always_carry_console_reboot_and_panic() {
    for s in sample_specs() {
        let args = config::boot_args(&s);
        let words: Vec<&str> = args.split(' ').collect();
        for needed in ["console=ttyS0", "reboot=k", "panic=1"] {
            assert!(words.contains(&needed), "{args}");
        }
    }
}

/// Mutating any real request by misspelling or dropping a required field
/// makes the checker fail: it cannot pass everything.
#[test]
fn every_misspelled_or_missing_field_of_real_requests_is_caught() {
    let api = api();
    let mut mutations = 0;
    for r in all_requests() {
        let Value::Object(fields) = r.body() else {
            panic!("body is not an object");
        };
        for name in fields.keys() {
            let mut misspelled = fields.clone();
            let value = misspelled.remove(name).unwrap();
            misspelled.insert(format!("{name}x"), value);
            let err = api
                .check("PUT", &r.path(), Some(&Value::Object(misspelled)))
                .expect_err(&format!("{} with {name} misspelled passed", r.path()));
            assert!(
                err.iter()
                    .any(|p| p.contains(&format!("unknown field {name}x"))),
                "{err:?}"
            );
            mutations += 1;
        }
    }
    assert!(mutations > 500, "{mutations}");
    // Dropping each required field.
    for (path, body, required) in [
        (
            "/boot-source",
            json!({"kernel_image_path": "k"}),
            vec!["kernel_image_path"],
        ),
        (
            "/drives/d",
            json!({"drive_id": "d", "is_root_device": false, "path_on_host": "p", "is_read_only": true}),
            vec!["drive_id", "is_root_device"],
        ),
        (
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
            vec!["vcpu_count", "mem_size_mib"],
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0"}),
            vec!["iface_id", "host_dev_name"],
        ),
        (
            "/vsock",
            json!({"guest_cid": 3, "uds_path": "v.sock"}),
            vec!["guest_cid", "uds_path"],
        ),
        (
            "/actions",
            json!({"action_type": "InstanceStart"}),
            vec!["action_type"],
        ),
    ] {
        api.check("PUT", path, Some(&body)).unwrap();
        for field in required {
            let mut b = body.clone();
            b.as_object_mut().unwrap().remove(field);
            let err = api.check("PUT", path, Some(&b)).unwrap_err();
            assert!(
                err.iter()
                    .any(|p| p.contains(&format!("required field {field} is missing"))),
                "{path} without {field}: {err:?}"
            );
        }
    }
}

fn problems(path: &str, body: Value) -> Vec<String> {
    api().check("PUT", path, Some(&body)).unwrap_err()
}

#[test]
fn misspelled_field_fails() {
    let p = problems("/boot-source", json!({"kernel_image_pat": "kernel"}));
    assert!(
        p.iter()
            .any(|p| p.contains("unknown field kernel_image_pat")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("required field kernel_image_path is missing")),
        "{p:?}"
    );
}

#[test]
fn wrong_types_fail() {
    let p = problems(
        "/machine-config",
        json!({"vcpu_count": "2", "mem_size_mib": 128.5}),
    );
    assert!(
        p.iter()
            .any(|p| p.contains("body.vcpu_count: expected an integer")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("body.mem_size_mib: expected an integer")),
        "{p:?}"
    );
    let p = problems(
        "/drives/d",
        json!({"drive_id": "d", "is_root_device": "false", "is_read_only": 1, "path_on_host": 5}),
    );
    assert_eq!(p.len(), 3, "{p:?}");
    let p = problems("/vsock", json!([3, "v.sock"]));
    assert!(p.iter().any(|p| p.contains("expected an object")), "{p:?}");
}

#[test]
fn enums_and_bounds_are_enforced() {
    let p = problems("/actions", json!({"action_type": "Start"}));
    assert!(
        p.iter().any(|p| p.contains("\"Start\" is not one of")),
        "{p:?}"
    );
    let p = problems(
        "/drives/d",
        json!({"drive_id": "d", "is_root_device": false, "cache_type": "unsafe"}),
    );
    assert!(p.iter().any(|p| p.contains("body.cache_type")), "{p:?}");
    let p = problems("/vsock", json!({"guest_cid": 2, "uds_path": "v.sock"}));
    assert!(p.iter().any(|p| p.contains("below the minimum 3")), "{p:?}");
    let p = problems(
        "/machine-config",
        json!({"vcpu_count": 33, "mem_size_mib": 128}),
    );
    assert!(
        p.iter().any(|p| p.contains("above the maximum 32")),
        "{p:?}"
    );
    let p = problems(
        "/machine-config",
        json!({"vcpu_count": 0, "mem_size_mib": 128}),
    );
    assert!(p.iter().any(|p| p.contains("below the minimum 1")), "{p:?}");
}

#[test]
fn nested_references_are_followed() {
    // Drive.rate_limiter -> RateLimiter.bandwidth -> TokenBucket.
    let base = json!({"drive_id": "d", "is_root_device": false});
    let with = |limiter: Value| {
        let mut b = base.clone();
        b["rate_limiter"] = limiter;
        b
    };
    api()
        .check(
            "PUT",
            "/drives/d",
            Some(&with(json!({"bandwidth": {"size": 1, "refill_time": 100}}))),
        )
        .unwrap();
    let p = problems("/drives/d", with(json!({"bandwidth": {"size": 1}})));
    assert!(
        p.iter()
            .any(|p| p.contains("body.rate_limiter.bandwidth: required field refill_time")),
        "{p:?}"
    );
    let p = problems(
        "/drives/d",
        with(json!({"bandwith": {"size": 1, "refill_time": 1}})),
    );
    assert!(
        p.iter().any(|p| p.contains("unknown field bandwith")),
        "{p:?}"
    );
}

#[test]
fn unknown_paths_methods_and_mismatched_ids_fail() {
    let api = api();
    let body = json!({"kernel_image_path": "k"});
    let p = api.check("PUT", "/boot_source", Some(&body)).unwrap_err();
    assert!(p[0].contains("not a path of the API"), "{p:?}");
    let p = api
        .check("DELETE", "/boot-source", Some(&body))
        .unwrap_err();
    assert!(p[0].contains("DELETE is not allowed"), "{p:?}");
    let p = api.check("PUT", "/boot-source", None).unwrap_err();
    assert!(p[0].contains("needs a body"), "{p:?}");
    let p = api
        .check(
            "PUT",
            "/drives/a",
            Some(&json!({"drive_id": "b", "is_root_device": false})),
        )
        .unwrap_err();
    assert!(p[0].contains("differs from the body"), "{p:?}");
    // GET without a body is fine where the spec has it.
    api.check("GET", "/machine-config", None).unwrap();
}

/// The copy in this repository is the shared reference, when that is at
/// hand (CI runs with `shared/` beside the clone).
#[test]
fn spec_copy_matches_the_shared_reference() {
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/firecracker-api.yaml");
    let Ok(reference) = std::fs::read_to_string(&reference) else {
        eprintln!("{} not found; comparison skipped", reference.display());
        return;
    };
    let copy = std::fs::read_to_string(spec_path()).unwrap();
    let body: String = copy
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body, reference,
        "tests/data/firecracker-api.yaml differs from the shared reference"
    );
}
