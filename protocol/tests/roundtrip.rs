//! Every message survives encode → decode, through both codecs; and no
//! input, however broken, makes the decoder panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kiln_protocol::{
    blocking, frame, BootPhase, Cancel, CommandSpec, EnvVar, ExitStatus, FrameError, GuestError,
    GuestMessage, Hello, HostMessage, Ipv4Config, Ipv6Config, Job, NetworkConfig, Output,
    PhaseStamp, Rlimit, RlimitResource, RunnerExited, RunnerStarted, StopCause, Stream, UserSpec,
    WallClock, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use proptest::prelude::*;

fn phase() -> impl Strategy<Value = BootPhase> {
    prop_oneof![
        Just(BootPhase::InitStart),
        Just(BootPhase::Mounted),
        Just(BootPhase::ModulesLoaded),
        Just(BootPhase::RootReady),
        Just(BootPhase::CgroupsReady),
        Just(BootPhase::ChannelOpen),
        Just(BootPhase::JobReceived),
        Just(BootPhase::JobConfigured),
        Just(BootPhase::RunnerSpawned),
    ]
}

fn stamps() -> impl Strategy<Value = Vec<PhaseStamp>> {
    prop::collection::vec(
        (phase(), any::<u64>()).prop_map(|(phase, at_ns)| PhaseStamp { phase, at_ns }),
        0..10,
    )
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![
        any::<i32>().prop_map(ExitStatus::Code),
        any::<i32>().prop_map(ExitStatus::Signal)
    ]
}

fn guest_message() -> impl Strategy<Value = GuestMessage> {
    prop_oneof![
        (any::<u32>(), ".*", ".*", stamps()).prop_map(|(v, iv, kr, boot)| {
            GuestMessage::Hello(Hello {
                protocol_version: v,
                init_version: iv,
                kernel_release: kr,
                boot,
            })
        }),
        (any::<u32>(), stamps())
            .prop_map(|(pid, phases)| GuestMessage::RunnerStarted(RunnerStarted { pid, phases })),
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..4096)).prop_map(|(err, data)| {
            GuestMessage::Output(Output {
                stream: if err { Stream::Stderr } else { Stream::Stdout },
                data,
            })
        }),
        (
            exit_status(),
            any::<u64>(),
            prop::option::of(prop_oneof![
                Just(StopCause::Cancelled),
                Just(StopCause::Deadline),
                Just(StopCause::CtrlAltDel)
            ])
        )
            .prop_map(|(status, duration_ms, stopped_by)| {
                GuestMessage::RunnerExited(RunnerExited {
                    status,
                    duration_ms,
                    stopped_by,
                })
            }),
        (".*", ".*").prop_map(|(what, detail)| GuestMessage::Error(GuestError { what, detail })),
    ]
}

fn job() -> impl Strategy<Value = Job> {
    let net = prop::option::of(
        (
            prop::option::of((any::<u32>(), 0u8..=32, prop::option::of(any::<u32>()))),
            prop::option::of((any::<u128>(), 0u8..=128, prop::option::of(any::<u128>()))),
            prop::option::of(68u32..=65535),
        )
            .prop_map(|(v4, v6, mtu)| NetworkConfig {
                ipv4: v4.map(|(a, p, g)| Ipv4Config {
                    address: Ipv4Addr::from(a),
                    prefix_len: p,
                    gateway: g.map(Ipv4Addr::from),
                }),
                ipv6: v6.map(|(a, p, g)| Ipv6Config {
                    address: Ipv6Addr::from(a),
                    prefix_len: p,
                    gateway: g.map(Ipv6Addr::from),
                }),
                mtu,
            }),
    );
    (
        ("[a-z/]{1,20}", prop::collection::vec("[^\x00]*", 0..5)),
        prop::collection::vec(("[A-Z_]{1,10}", "[^\x00]*"), 0..5),
        (
            "[a-z]{1,8}",
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u32>(), 0..4),
        ),
        "[a-z]{1,10}",
        prop::collection::vec(any::<[u8; 4]>(), 0..3),
        net,
        (any::<i64>(), 0u32..1_000_000_000),
        prop::collection::vec(any::<u8>(), 32..64),
        prop::collection::vec((any::<u64>(), any::<u64>()), 0..3),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(cmd, env, user, host, dns, network, clock, entropy, rl, (deadline_ms, grace_ms))| {
                Job {
                    protocol_version: PROTOCOL_VERSION,
                    command: CommandSpec {
                        program: cmd.0,
                        args: cmd.1,
                    },
                    env: env.into_iter().map(|(n, v)| EnvVar::new(n, v)).collect(),
                    user: UserSpec {
                        name: user.0,
                        uid: user.1,
                        gid: user.2,
                        groups: user.3,
                        home: "/home/x".into(),
                    },
                    workdir: "/tmp".into(),
                    hostname: host,
                    dns: dns.into_iter().map(IpAddr::from).collect(),
                    network,
                    clock: WallClock {
                        secs: clock.0,
                        nanos: clock.1,
                    },
                    entropy,
                    rlimits: rl
                        .into_iter()
                        .map(|(a, b)| Rlimit {
                            resource: RlimitResource::NoFile,
                            soft: a.min(b),
                            hard: a.max(b),
                        })
                        .collect(),
                    deadline_ms,
                    grace_ms,
                }
            },
        )
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        job().prop_map(|j| HostMessage::Job(Box::new(j))),
        any::<u64>().prop_map(|grace_ms| HostMessage::Cancel(Cancel { grace_ms })),
    ]
}

proptest! {
    #[test]
    fn guest_messages_round_trip(m in guest_message()) {
        let bytes = frame::encode(&m).unwrap();
        let back: GuestMessage = blocking::read_message(&mut bytes.as_slice()).unwrap();
        prop_assert_eq!(&back, &m);
        let (back2, used) = frame::decode_from_slice::<GuestMessage>(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back2, m);
    }

    #[test]
    fn host_messages_round_trip(m in host_message()) {
        let bytes = frame::encode(&m).unwrap();
        let back: HostMessage = blocking::read_message(&mut bytes.as_slice()).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn generated_jobs_validate(j in job()) {
        prop_assert_eq!(j.validate(), Ok(()));
        let m = HostMessage::Job(Box::new(j));
        let bytes = frame::encode(&m).unwrap();
        let back: HostMessage = blocking::read_opening(&mut bytes.as_slice()).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn every_truncation_is_an_error(m in host_message(), cut_frac in 0.0f64..1.0) {
        let bytes = frame::encode(&m).unwrap();
        let cut = ((bytes.len() as f64) * cut_frac) as usize;
        let r = blocking::read_message::<_, HostMessage>(&mut &bytes[..cut]);
        match r {
            Err(FrameError::Closed) => prop_assert_eq!(cut, 0),
            Err(FrameError::Truncated { .. }) => prop_assert!(cut > 0),
            other => prop_assert!(false, "cut {} of {}: {:?}", cut, bytes.len(), other),
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = blocking::read_message::<_, GuestMessage>(&mut bytes.as_slice());
        let _ = blocking::read_message::<_, HostMessage>(&mut bytes.as_slice());
        let _ = blocking::read_opening::<_, GuestMessage>(&mut bytes.as_slice());
        let _ = frame::decode_from_slice::<HostMessage>(&bytes);
    }

    #[test]
    fn random_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 1..512)) {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        let _ = blocking::read_message::<_, GuestMessage>(&mut f.as_slice());
        let _ = blocking::read_opening::<_, HostMessage>(&mut f.as_slice());
    }
}

#[test]
fn oversized_frame_is_refused_without_reading_it() {
    let mut f = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&[0; 16]);
    let err = blocking::read_message::<_, GuestMessage>(&mut f.as_slice()).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
}

#[test]
fn hello_from_another_version_names_both() {
    let hello = GuestMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        init_version: "9.9.9".into(),
        kernel_release: "x".into(),
        boot: vec![],
    });
    let bytes = frame::encode(&hello).unwrap();
    let err = blocking::read_opening::<_, GuestMessage>(&mut bytes.as_slice()).unwrap_err();
    let s = err.to_string();
    assert!(
        s.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{s}"
    );
    assert!(s.contains(&format!("version {PROTOCOL_VERSION}")), "{s}");
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn tokio_codec_reads_what_blocking_wrote_and_back() {
    use kiln_protocol::tokio_codec;
    let m = HostMessage::Cancel(Cancel { grace_ms: 42 });
    let mut buf = Vec::new();
    blocking::write_message(&mut buf, &m).unwrap();
    let back: HostMessage = tokio_codec::read_message(&mut buf.as_slice())
        .await
        .unwrap();
    assert_eq!(back, m);

    let g = GuestMessage::Error(GuestError {
        what: "w".into(),
        detail: "d".into(),
    });
    let mut out = Vec::new();
    tokio_codec::write_message(&mut out, &g).await.unwrap();
    let back: GuestMessage = blocking::read_message(&mut out.as_slice()).unwrap();
    assert_eq!(back, g);
    let closed = tokio_codec::read_message::<_, GuestMessage>(&mut &out[..0]).await;
    assert!(matches!(closed, Err(FrameError::Closed)));
}
