//! A fake guest on the other end of the listener's Unix socket.

use std::path::PathBuf;
use std::time::Duration;

use kiln_protocol::tokio_codec::{read_message, read_opening, write_message};
use kiln_protocol::{
    BootPhase, CommandSpec, ExitStatus, GuestMessage, Hello, HostMessage, Job, Output, PhaseStamp,
    RunnerExited, RunnerStarted, Stream, UserSpec, WallClock, PROTOCOL_VERSION, VSOCK_PORT,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::*;

fn job() -> Job {
    Job {
        protocol_version: PROTOCOL_VERSION,
        command: CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "true".into()],
        },
        env: vec![],
        user: UserSpec {
            name: "runner".into(),
            uid: 1001,
            gid: 1001,
            groups: vec![],
            home: "/home/runner".into(),
        },
        workdir: "/home/runner".into(),
        hostname: "kiln-test".into(),
        dns: vec![],
        network: None,
        clock: WallClock::now(),
        entropy: vec![1; 32],
        rlimits: vec![],
        deadline_ms: 5_000,
        grace_ms: 1_000,
    }
}

fn hello(version: u32) -> GuestMessage {
    GuestMessage::Hello(Hello {
        protocol_version: version,
        init_version: "0.1.0".into(),
        kernel_release: "6.1.0-test".into(),
        boot: vec![PhaseStamp {
            phase: BootPhase::InitStart,
            at_ns: 1_000,
        }],
    })
}

fn quick() -> Limits {
    Limits {
        accept_timeout: Duration::from_secs(5),
        hello_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_secs(2),
        end_slack: Duration::from_secs(5),
        max_output_bytes: 1 << 20,
        max_text: 256,
        max_frames_per_sec: 4096,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    listener: HybridListener,
    path: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = HybridListener::bind(&dir.path().join("v.sock"), VSOCK_PORT).expect("bind");
    let path = listener.path().to_owned();
    Setup {
        _dir: dir,
        listener,
        path,
    }
}

async fn dial(path: &std::path::Path) -> UnixStream {
    UnixStream::connect(path).await.expect("guest connect")
}

#[tokio::test]
async fn full_job_round_trip() {
    let s = setup();
    let guest = tokio::spawn({
        let path = s.path.clone();
        async move {
            let mut g = dial(&path).await;
            write_message(&mut g, &hello(PROTOCOL_VERSION))
                .await
                .expect("hello");
            let HostMessage::Job(job) = read_opening::<_, HostMessage>(&mut g).await.expect("job")
            else {
                panic!("not a job")
            };
            write_message(
                &mut g,
                &GuestMessage::RunnerStarted(RunnerStarted {
                    pid: 7,
                    phases: vec![PhaseStamp {
                        phase: BootPhase::RunnerSpawned,
                        at_ns: 5_000,
                    }],
                }),
            )
            .await
            .expect("started");
            for (stream, data) in [(Stream::Stdout, "out\n"), (Stream::Stderr, "error!\n")] {
                write_message(
                    &mut g,
                    &GuestMessage::Output(Output {
                        stream,
                        data: data.into(),
                    }),
                )
                .await
                .expect("output");
            }
            // The host's cancel arrives while the job runs.
            let cancel: HostMessage = read_message(&mut g).await.expect("cancel");
            write_message(
                &mut g,
                &GuestMessage::RunnerExited(RunnerExited {
                    status: ExitStatus::Signal(15),
                    duration_ms: 3,
                    stopped_by: Some(kiln_protocol::StopCause::Cancelled),
                }),
            )
            .await
            .expect("exited");
            (job, cancel)
        }
    });
    let greeting = greet(&s.listener, &quick()).await.expect("greet");
    assert_eq!(greeting.hello().kernel_release, "6.1.0-test");
    let mut original = job();
    original.clock.secs -= 3600;
    let mut conv = greeting.send_job(&original, quick()).await.expect("send");
    let mut events = Vec::new();
    while let Some(ev) = conv.next_event().await.expect("event") {
        if let Event::Output(o) = &ev {
            if o.stream == Stream::Stderr {
                conv.canceller()
                    .cancel(Duration::from_millis(1500))
                    .await
                    .expect("cancel");
            }
        }
        events.push(ev);
    }
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(&events[0], Event::RunnerStarted(r) if r.pid == 7));
    assert!(matches!(&events[3], Event::RunnerExited(e) if e.status == ExitStatus::Signal(15)));
    let (sent_job, cancel) = guest.await.expect("guest");
    assert_eq!(*sent_job, job_with_clock(&original, sent_job.clock));
    // The clock is the time of sending, not of building the job.
    assert!(
        sent_job.clock.secs > original.clock.secs,
        "{:?}",
        sent_job.clock
    );
    assert_eq!(
        cancel,
        HostMessage::Cancel(kiln_protocol::Cancel { grace_ms: 1500 })
    );
    let sum = conv.into_summary();
    assert_eq!((sum.stdout_bytes, sum.stderr_bytes), (4, 7));
    assert_eq!(
        sum.phases().iter().map(|p| p.phase).collect::<Vec<_>>(),
        [BootPhase::InitStart, BootPhase::RunnerSpawned]
    );
    assert!(sum.host.ended >= sum.host.runner_started);
}

fn job_with_clock(j: &Job, clock: WallClock) -> Job {
    Job { clock, ..j.clone() }
}

#[tokio::test]
async fn wrong_version_names_both() {
    let s = setup();
    let path = s.path.clone();
    tokio::spawn(async move {
        let mut g = dial(&path).await;
        write_message(&mut g, &hello(PROTOCOL_VERSION + 6))
            .await
            .expect("hello");
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let err = greet(&s.listener, &quick()).await.expect_err("mismatch");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("version {}", PROTOCOL_VERSION + 6))
            && msg.contains(&format!("version {PROTOCOL_VERSION}")),
        "{msg}"
    );
}

#[tokio::test]
async fn silent_guest_times_out_at_hello() {
    let s = setup();
    let path = s.path.clone();
    tokio::spawn(async move {
        let _g = dial(&path).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let err = greet(&s.listener, &quick()).await.expect_err("silent");
    assert!(
        matches!(err, ConversationError::HelloTimeout { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_job_is_never_sent() {
    let s = setup();
    let path = s.path.clone();
    let guest = tokio::spawn(async move {
        let mut g = dial(&path).await;
        write_message(&mut g, &hello(PROTOCOL_VERSION))
            .await
            .expect("hello");
        read_opening::<_, HostMessage>(&mut g).await
    });
    let greeting = greet(&s.listener, &quick()).await.expect("greet");
    let mut bad = job();
    bad.workdir = "relative".into();
    let err = greeting
        .send_job(&bad, quick())
        .await
        .err()
        .expect("invalid");
    assert!(err.to_string().contains("workdir"), "{err}");
    // The greeting (and its stream) was dropped: the guest sees EOF, no job.
    let got = guest.await.expect("guest");
    assert!(matches!(got, Err(FrameError::Closed)), "{got:?}");
}

async fn after_job(bytes: Vec<u8>, limits: Limits) -> ConversationError {
    let s = setup();
    let path = s.path.clone();
    tokio::spawn(async move {
        let mut g = dial(&path).await;
        write_message(&mut g, &hello(PROTOCOL_VERSION))
            .await
            .expect("hello");
        let _job: HostMessage = read_opening(&mut g).await.expect("job");
        g.write_all(&bytes).await.expect("write");
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    let mut conv = greet(&s.listener, &limits)
        .await
        .expect("greet")
        .send_job(&job(), limits)
        .await
        .expect("send");
    loop {
        match conv.next_event().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("conversation ended without an error"),
            Err(e) => return e,
        }
    }
}

#[tokio::test]
async fn garbage_frame_ends_the_conversation() {
    let err = after_job(vec![0, 0, 0, 3, 0xee, 0xee, 0xee], quick()).await;
    assert!(matches!(err, ConversationError::Frame(_)), "{err}");
    assert!(err.to_string().starts_with("malformed frame"), "{err}");
}

#[tokio::test]
async fn oversized_frame_header_is_refused() {
    let err = after_job(u32::MAX.to_be_bytes().to_vec(), quick()).await;
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
}

#[tokio::test]
async fn eof_before_the_end_is_an_error() {
    let s = setup();
    let path = s.path.clone();
    tokio::spawn(async move {
        let mut g = dial(&path).await;
        write_message(&mut g, &hello(PROTOCOL_VERSION))
            .await
            .expect("hello");
        let _job: HostMessage = read_opening(&mut g).await.expect("job");
    });
    let mut conv = greet(&s.listener, &quick())
        .await
        .expect("greet")
        .send_job(&job(), quick())
        .await
        .expect("send");
    let err = conv.next_event().await.expect_err("closed");
    assert!(matches!(err, ConversationError::Closed), "{err}");
    assert!(conv.next_event().await.expect("done").is_none());
}

#[tokio::test]
async fn a_silent_job_hits_the_deadline() {
    let s = setup();
    let path = s.path.clone();
    tokio::spawn(async move {
        let mut g = dial(&path).await;
        write_message(&mut g, &hello(PROTOCOL_VERSION))
            .await
            .expect("hello");
        let _job: HostMessage = read_opening(&mut g).await.expect("job");
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let limits = Limits {
        end_slack: Duration::from_millis(100),
        ..quick()
    };
    let mut j = job();
    j.deadline_ms = 100;
    j.grace_ms = 100;
    let started = std::time::Instant::now();
    let mut conv = greet(&s.listener, &limits)
        .await
        .expect("greet")
        .send_job(&j, limits)
        .await
        .expect("send");
    let err = conv.next_event().await.expect_err("deadline");
    assert!(matches!(err, ConversationError::Deadline { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// After its Hello, a guest whose PID 1 was taken over dials the host again
/// and again: none of these connections may wait in the listener's backlog.
/// The conversation itself goes on.
#[tokio::test]
async fn extra_connections_after_the_greeting_are_refused_at_once() {
    let s = setup();
    let path = s.path.clone();
    let guest = tokio::spawn(async move {
        let mut g = dial(&path).await;
        write_message(&mut g, &hello(PROTOCOL_VERSION))
            .await
            .expect("hello");
        let _job: HostMessage = read_opening(&mut g).await.expect("job");
        let (refused, open) = storm(&path, 1000).await;
        write_message(
            &mut g,
            &GuestMessage::RunnerStarted(RunnerStarted {
                pid: 7,
                phases: vec![],
            }),
        )
        .await
        .expect("started");
        write_message(
            &mut g,
            &GuestMessage::RunnerExited(RunnerExited {
                status: ExitStatus::Code(0),
                duration_ms: 1,
                stopped_by: None,
            }),
        )
        .await
        .expect("exited");
        (refused, open)
    });
    let mut conv = greet(&s.listener, &quick())
        .await
        .expect("greet")
        .send_job(&job(), quick())
        .await
        .expect("send");
    let mut events = 0;
    while conv.next_event().await.expect("event").is_some() {
        events += 1;
    }
    assert_eq!(events, 2);
    let (refused, open) = guest.await.expect("guest");
    assert_eq!(
        (refused, open),
        (1000, 0),
        "every extra connection is refused, none is left open"
    );
}

/// Dials `path` `n` times, keeping what connects; returns how many dials
/// were refused and how many connections were still open a second later
/// (a dial the backlog cannot take counts as open: it is waiting).
async fn storm(path: &std::path::Path, n: usize) -> (usize, usize) {
    use tokio::io::AsyncReadExt;
    let mut refused = 0;
    let mut open = 0;
    let mut connected = Vec::new();
    for _ in 0..n {
        match UnixStream::connect(path).await {
            Ok(c) => connected.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(_) => open += 1,
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    for mut c in connected {
        let mut byte = [0u8; 1];
        match tokio::time::timeout_at(deadline, c.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) | Err(_) => open += 1,
        }
    }
    (refused, open)
}

/// A guest that floods empty `Output` frames is stopped at the first one.
#[tokio::test]
async fn a_flood_of_empty_output_frames_ends_with_a_protocol_error_within_a_second() {
    let s = setup();
    let path = s.path.clone();
    tokio::spawn(async move {
        let mut g = dial(&path).await;
        write_message(&mut g, &hello(PROTOCOL_VERSION))
            .await
            .expect("hello");
        let _job: HostMessage = read_opening(&mut g).await.expect("job");
        let started = GuestMessage::RunnerStarted(RunnerStarted {
            pid: 7,
            phases: vec![],
        });
        write_message(&mut g, &started).await.expect("started");
        let empty = GuestMessage::Output(Output {
            stream: Stream::Stdout,
            data: vec![],
        });
        // Until the host hangs up.
        while write_message(&mut g, &empty).await.is_ok() {}
    });
    let mut conv = greet(&s.listener, &quick())
        .await
        .expect("greet")
        .send_job(&job(), quick())
        .await
        .expect("send");
    let sent = std::time::Instant::now();
    let err = loop {
        match conv.next_event().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the conversation ended without an error"),
            Err(e) => break e,
        }
    };
    let took = sent.elapsed();
    assert!(
        matches!(&err, ConversationError::Protocol(what) if what.contains("empty Output")),
        "{err}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

fn stamps(n: usize) -> Vec<PhaseStamp> {
    vec![
        PhaseStamp {
            phase: BootPhase::InitStart,
            at_ns: 1,
        };
        n
    ]
}

/// What the guest sizes is cut to a bound, and so is the memory it took:
/// a Hello of 500 000 boot stamps (one frame) decodes into about 8 MiB.
#[tokio::test]
async fn guest_sized_vectors_and_texts_keep_only_their_bounded_capacity() {
    let s = setup();
    let path = s.path.clone();
    tokio::spawn(async move {
        let mut g = dial(&path).await;
        let huge = GuestMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            init_version: "v".repeat(20_000),
            kernel_release: "k".repeat(20_000),
            boot: stamps(500_000),
        });
        write_message(&mut g, &huge).await.expect("hello");
        let _job: HostMessage = read_opening(&mut g).await.expect("job");
        let started = GuestMessage::RunnerStarted(RunnerStarted {
            pid: 7,
            phases: stamps(500_000),
        });
        write_message(&mut g, &started).await.expect("started");
        let error = GuestMessage::Error(kiln_protocol::GuestError {
            what: "w".repeat(400_000),
            detail: "d".repeat(400_000),
        });
        write_message(&mut g, &error).await.expect("error");
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let limits = quick();
    let greeting = greet(&s.listener, &limits).await.expect("greet");
    let hello = greeting.hello();
    let max_text = limits.max_text + '…'.len_utf8();
    assert_eq!(hello.boot.len(), summary::MAX_PHASES);
    assert!(
        hello.boot.capacity() <= summary::MAX_PHASES,
        "boot stamps keep room for {}",
        hello.boot.capacity()
    );
    for text in [&hello.init_version, &hello.kernel_release] {
        assert!(text.capacity() <= max_text, "{}", text.capacity());
    }
    let mut conv = greeting.send_job(&job(), limits).await.expect("send");
    let Some(Event::RunnerStarted(started)) = conv.next_event().await.expect("started") else {
        panic!("expected RunnerStarted");
    };
    assert_eq!(started.phases.len(), summary::MAX_PHASES);
    assert!(
        started.phases.capacity() <= summary::MAX_PHASES,
        "{}",
        started.phases.capacity()
    );
    let Some(Event::GuestError(e)) = conv.next_event().await.expect("error") else {
        panic!("expected the guest's error");
    };
    for text in [&e.what, &e.detail] {
        assert!(text.capacity() <= max_text, "{}", text.capacity());
    }
}
