//! Request bodies of Firecracker's API, mirroring `firecracker-api.yaml`
//! (Swagger definitions of the same names). Firecracker rejects unknown
//! fields, so optional fields are left out rather than sent as `null`; tests
//! check every request against the specification.

use serde::{Deserialize, Serialize};

/// `PUT /boot-source` (definition `BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `PUT /drives/{drive_id}` (definition `Drive`, virtio-block flavour).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub is_root_device: bool,
    pub path_on_host: String,
    pub is_read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CacheType {
    /// Guest flushes are not passed to the host: right for throw-away disks.
    Unsafe,
    Writeback,
}

/// `PUT /machine-config` (definition `MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    /// Off: SMT siblings share caches, which tenant VMs must not.
    pub smt: bool,
}

/// `PUT /network-interfaces/{iface_id}` (definition `NetworkInterface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `PUT /vsock` (definition `Vsock`). `uds_path` is inside the jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `PUT /logger` (definition `Logger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logger {
    pub log_path: String,
    pub level: LogLevel,
    pub show_level: bool,
    pub show_log_origin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

/// `PUT /actions` (definition `InstanceActionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionType {
    InstanceStart,
    /// x86 only: a graceful-stop request to the guest's PID 1.
    SendCtrlAltDel,
    FlushMetrics,
}

/// The body of Firecracker's error answers (definition `Error`).
#[derive(Debug, Clone, Deserialize)]
pub struct ApiFault {
    #[serde(default)]
    pub fault_message: Option<String>,
}

/// One request to the API socket. All of Kiln's requests are `PUT`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    Logger(Logger),
    MachineConfig(MachineConfiguration),
    BootSource(BootSource),
    Drive(Drive),
    NetworkInterface(NetworkInterface),
    Vsock(Vsock),
    Action(InstanceActionInfo),
}

impl ApiRequest {
    pub fn method(&self) -> &'static str {
        "PUT"
    }

    /// The request path. Drive and interface ids come from Kiln itself
    /// (fixed names), never from a user, so they need no escaping.
    pub fn path(&self) -> String {
        match self {
            Self::Logger(_) => "/logger".to_owned(),
            Self::MachineConfig(_) => "/machine-config".to_owned(),
            Self::BootSource(_) => "/boot-source".to_owned(),
            Self::Drive(d) => format!("/drives/{}", d.drive_id),
            Self::NetworkInterface(n) => format!("/network-interfaces/{}", n.iface_id),
            Self::Vsock(_) => "/vsock".to_owned(),
            Self::Action(_) => "/actions".to_owned(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        // Serializing these plain structs of strings, integers, booleans and
        // unit enums to a `Value` cannot fail.
        let value = match self {
            Self::Logger(b) => serde_json::to_value(b),
            Self::MachineConfig(b) => serde_json::to_value(b),
            Self::BootSource(b) => serde_json::to_value(b),
            Self::Drive(b) => serde_json::to_value(b),
            Self::NetworkInterface(b) => serde_json::to_value(b),
            Self::Vsock(b) => serde_json::to_value(b),
            Self::Action(b) => serde_json::to_value(b),
        };
        value.unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;

    #[test]
    fn optional_fields_are_left_out_not_null() {
        let b = ApiRequest::BootSource(BootSource {
            kernel_image_path: "kernel".into(),
            boot_args: None,
            initrd_path: None,
        });
        assert_eq!(b.body(), json!({"kernel_image_path": "kernel"}));
        let d = ApiRequest::Drive(Drive {
            drive_id: "scratch".into(),
            is_root_device: false,
            path_on_host: "scratch.ext4".into(),
            is_read_only: false,
            cache_type: Some(CacheType::Unsafe),
        });
        assert_eq!(d.path(), "/drives/scratch");
        assert_eq!(d.body()["cache_type"], "Unsafe");
        let a = ApiRequest::Action(InstanceActionInfo {
            action_type: ActionType::SendCtrlAltDel,
        });
        assert_eq!(a.body(), json!({"action_type": "SendCtrlAltDel"}));
    }
}
