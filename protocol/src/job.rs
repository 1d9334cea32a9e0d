//! The job the host hands a guest, and the checks both sides run on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The environment variable the actions runner reads its JIT config from.
/// Passing it this way keeps the secret out of every `/proc/*/cmdline`.
pub const JIT_CONFIG_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";

/// A fresh VM has next to no entropy; the host must send at least this much.
pub const MIN_ENTROPY_BYTES: usize = 32;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Must stay the first field: read before the rest is decoded.
    pub protocol_version: u32,
    pub command: CommandSpec,
    /// Set for the command on top of HOME, USER, LOGNAME, PATH and
    /// XDG_RUNTIME_DIR, which the guest derives from `user`.
    pub env: Vec<EnvVar>,
    pub user: UserSpec,
    /// Absolute; created and owned by the user if missing.
    pub workdir: String,
    pub hostname: String,
    pub dns: Vec<IpAddr>,
    /// eth0's settings; `None` leaves eth0 alone.
    pub network: Option<NetworkConfig>,
    /// The host's wall clock when it sent the job.
    pub clock: WallClock,
    /// Credited to the guest's entropy pool; at least [`MIN_ENTROPY_BYTES`].
    pub entropy: Vec<u8>,
    pub rlimits: Vec<Rlimit>,
    /// How long the command may run, counted from when the guest receives
    /// the job. Then it is stopped like a `Cancel`.
    pub deadline_ms: u64,
    /// SIGTERM to SIGKILL, for the deadline and for Ctrl-Alt-Del.
    pub grace_ms: u64,
}

impl std::fmt::Debug for Job {
    // Hand-written so the environment's values (the JIT config among them)
    // and the entropy seed can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("protocol_version", &self.protocol_version)
            .field("command", &self.command)
            .field("env", &self.env)
            .field("user", &self.user)
            .field("workdir", &self.workdir)
            .field("hostname", &self.hostname)
            .field("dns", &self.dns)
            .field("network", &self.network)
            .field("clock", &self.clock)
            .field("entropy_len", &self.entropy.len())
            .field("rlimits", &self.rlimits)
            .field("deadline_ms", &self.deadline_ms)
            .field("grace_ms", &self.grace_ms)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Absolute path, or a name looked up in the job's PATH.
    pub program: String,
    pub args: Vec<String>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

impl EnvVar {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        EnvVar {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl std::fmt::Debug for EnvVar {
    // Values may be secrets: only their length is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<{} bytes>", self.name, self.value.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub ipv4: Option<Ipv4Config>,
    pub ipv6: Option<Ipv6Config>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Config {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Config {
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv6Addr>,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WallClock {
    pub secs: i64,
    pub nanos: u32,
}

impl WallClock {
    /// The current time of the machine this runs on.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RlimitResource {
    NoFile,
    NProc,
    Core,
    Stack,
    MemLock,
    FileSize,
}

/// What makes a [`Job`] unusable. Each names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job speaks protocol version {got}, this side speaks {want}")]
    Version { got: u32, want: u32 },
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} contains a NUL byte")]
    Nul { field: &'static str },
    #[error("{field} must be an absolute path, got {value:?}")]
    NotAbsolute { field: &'static str, value: String },
    #[error("environment variable name {name:?} is not valid (empty, or contains '=')")]
    EnvName { name: String },
    #[error("hostname {value:?} is not a valid host name (RFC 1123, at most 64 bytes)")]
    Hostname { value: String },
    #[error("entropy seed has {got} bytes, at least {min} are needed")]
    Entropy { got: usize, min: usize },
    #[error("{field} prefix length {value} is larger than {max}")]
    Prefix {
        field: &'static str,
        value: u8,
        max: u8,
    },
    #[error("MTU {value} is outside 68..=65535")]
    Mtu { value: u32 },
    #[error("rlimit {resource:?}: soft limit {soft} is above hard limit {hard}")]
    Rlimit {
        resource: RlimitResource,
        soft: u64,
        hard: u64,
    },
    #[error("clock nanoseconds {value} is not below one second")]
    Clock { value: u32 },
}

impl Job {
    /// Checks everything the guest relies on before it acts on the job.
    /// Both sides run it: the host before sending, the guest after receiving.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.protocol_version != crate::PROTOCOL_VERSION {
            return Err(JobError::Version {
                got: self.protocol_version,
                want: crate::PROTOCOL_VERSION,
            });
        }
        non_empty("command.program", &self.command.program)?;
        no_nul("command.program", &self.command.program)?;
        for a in &self.command.args {
            no_nul("command.args", a)?;
        }
        for v in &self.env {
            if v.name.is_empty() || v.name.contains('=') {
                return Err(JobError::EnvName {
                    name: v.name.clone(),
                });
            }
            no_nul("env name", &v.name)?;
            no_nul("env value", &v.value)?;
        }
        non_empty("user.name", &self.user.name)?;
        no_nul("user.name", &self.user.name)?;
        absolute("user.home", &self.user.home)?;
        absolute("workdir", &self.workdir)?;
        if !valid_hostname(&self.hostname) {
            return Err(JobError::Hostname {
                value: self.hostname.clone(),
            });
        }
        if self.entropy.len() < MIN_ENTROPY_BYTES {
            return Err(JobError::Entropy {
                got: self.entropy.len(),
                min: MIN_ENTROPY_BYTES,
            });
        }
        if self.clock.nanos >= 1_000_000_000 {
            return Err(JobError::Clock {
                value: self.clock.nanos,
            });
        }
        if let Some(net) = &self.network {
            if let Some(v4) = &net.ipv4 {
                prefix("network.ipv4", v4.prefix_len, 32)?;
            }
            if let Some(v6) = &net.ipv6 {
                prefix("network.ipv6", v6.prefix_len, 128)?;
            }
            if let Some(mtu) = net.mtu {
                if !(68..=65535).contains(&mtu) {
                    return Err(JobError::Mtu { value: mtu });
                }
            }
        }
        for r in &self.rlimits {
            if r.soft > r.hard {
                return Err(JobError::Rlimit {
                    resource: r.resource,
                    soft: r.soft,
                    hard: r.hard,
                });
            }
        }
        Ok(())
    }
}

fn non_empty(field: &'static str, v: &str) -> Result<(), JobError> {
    if v.is_empty() {
        Err(JobError::Empty { field })
    } else {
        Ok(())
    }
}

fn no_nul(field: &'static str, v: &str) -> Result<(), JobError> {
    if v.contains('\0') {
        Err(JobError::Nul { field })
    } else {
        Ok(())
    }
}

fn absolute(field: &'static str, v: &str) -> Result<(), JobError> {
    no_nul(field, v)?;
    if v.starts_with('/') {
        Ok(())
    } else {
        Err(JobError::NotAbsolute {
            field,
            value: v.to_owned(),
        })
    }
}

fn prefix(field: &'static str, value: u8, max: u8) -> Result<(), JobError> {
    if value > max {
        Err(JobError::Prefix { field, value, max })
    } else {
        Ok(())
    }
}

/// RFC 1123 labels, dot-separated, at most 64 bytes (the kernel's limit).
pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Job {
        Job {
            protocol_version: crate::PROTOCOL_VERSION,
            command: CommandSpec {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "true".into()],
            },
            env: vec![EnvVar::new(JIT_CONFIG_ENV, "c2VjcmV0")],
            user: UserSpec {
                name: "runner".into(),
                uid: 1001,
                gid: 1001,
                groups: vec![],
                home: "/home/runner".into(),
            },
            workdir: "/home/runner".into(),
            hostname: "kiln-vm-1".into(),
            dns: vec![],
            network: None,
            clock: WallClock::now(),
            entropy: vec![7; 32],
            rlimits: vec![],
            deadline_ms: 60_000,
            grace_ms: 5_000,
        }
    }

    #[test]
    fn sample_is_valid() {
        assert_eq!(sample().validate(), Ok(()));
    }

    #[test]
    fn debug_never_shows_env_values_or_entropy() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("c2VjcmV0"), "{s}");
        assert!(s.contains(JIT_CONFIG_ENV), "{s}");
        assert!(s.contains("entropy_len: 32"), "{s}");
    }

    type Case = (fn(&mut Job), &'static str);

    #[test]
    fn rejects_each_bad_field() {
        let cases: Vec<Case> = vec![
            (|j| j.protocol_version = 9, "version 9"),
            (|j| j.command.program.clear(), "command.program is empty"),
            (|j| j.command.args.push("a\0b".into()), "NUL"),
            (|j| j.env.push(EnvVar::new("A=B", "x")), "\"A=B\""),
            (
                |j| j.user.home = "home".into(),
                "user.home must be an absolute",
            ),
            (|j| j.workdir = "rel".into(), "workdir must be an absolute"),
            (|j| j.hostname = "-bad".into(), "\"-bad\""),
            (|j| j.hostname = "a".repeat(65), "hostname"),
            (|j| j.entropy.truncate(31), "31 bytes"),
            (|j| j.clock.nanos = 1_000_000_000, "nanoseconds"),
            (
                |j| {
                    j.network = Some(NetworkConfig {
                        ipv4: Some(Ipv4Config {
                            address: Ipv4Addr::new(10, 0, 0, 2),
                            prefix_len: 33,
                            gateway: None,
                        }),
                        ipv6: None,
                        mtu: None,
                    })
                },
                "prefix length 33",
            ),
            (
                |j| {
                    j.network = Some(NetworkConfig {
                        ipv4: None,
                        ipv6: None,
                        mtu: Some(10),
                    })
                },
                "MTU 10",
            ),
            (
                |j| {
                    j.rlimits.push(Rlimit {
                        resource: RlimitResource::NoFile,
                        soft: 10,
                        hard: 5,
                    })
                },
                "soft limit 10",
            ),
        ];
        for (mutate, needle) in cases {
            let mut j = sample();
            mutate(&mut j);
            let err = j.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("a"));
        assert!(valid_hostname("kiln-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a..b"));
        assert!(!valid_hostname("a_b"));
        assert!(!valid_hostname("a-"));
    }
}
