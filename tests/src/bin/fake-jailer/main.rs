//! A stand-in for Firecracker's `jailer` and the Firecracker it `exec`s, for
//! hosts where Firecracker cannot run (no usable KVM, no binary). Test-only.
//!
//! It reads what to do from `<argv[0]>.json` (the test puts a symlink named
//! like the jailer and this file beside it), then behaves like the real pair
//! as far as Kiln can observe:
//!
//! - parses the jailer's arguments with its rules (known flags only, `--id`
//!   of letters, digits and hyphens, `--cgroup file=value`);
//! - builds `<chroot base>/<exec file name>/<id>/root`, copies the exec file
//!   in, creates the cgroup directory `<cgroup_root>/<parent>/<id>` (the
//!   root comes from the JSON file: tests use a plain directory, and the
//!   values the jailer would write are recorded instead of written);
//! - chroots into the jail and drops to `--uid`/`--gid`, so every path and
//!   permission Kiln prepared is used the way Firecracker would use it;
//! - serves the API socket, checking each body against the API
//!   specification (`openapi.rs`) and answering 204, or 400 with a
//!   `fault_message` as Firecracker does; it opens the files, the logger
//!   FIFO and the vsock socket each request names;
//! - on `InstanceStart` acts as a guest: writes serial output to stdout,
//!   dials the host through `<uds_path>_1024`, then exits (a guest that
//!   rebooted) or hangs (to be killed).
//!
//! Everything it sees is appended as JSON lines to the record file.

mod openapi;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

use openapi::ApiSpec;

/// What the test wants from this run.
#[derive(Debug, Deserialize)]
struct Conf {
    /// The API specification to check requests against.
    spec: PathBuf,
    /// Where to append the JSON-lines record.
    record: PathBuf,
    /// Stands in for the cgroup v2 mount point.
    cgroup_root: PathBuf,
    /// After `InstanceStart`: "exit" (default) or "hang".
    #[serde(default)]
    on_start: Option<String>,
    #[serde(default)]
    exit_code: u8,
    /// Answer 400 to this request path, as Firecracker does to a request
    /// it cannot carry out.
    #[serde(default)]
    reject_path: Option<String>,
    /// Bytes of "serial console" to write after `InstanceStart`.
    #[serde(default)]
    console_bytes: usize,
    /// Fail like a jailer that cannot set up the jail: before the socket.
    #[serde(default)]
    die_before_socket: bool,
    /// Print this on stderr and exit 1 where the cgroup is set up, like the
    /// real jailer on a host whose cgroup v2 lacks a controller
    /// ("Controller cpu is unavailable").
    #[serde(default)]
    cgroup_failure: Option<String>,
    /// Record a pid other than its own in `firecracker.pid`, like a jailer
    /// run through a wrapper or with `--new-pid-ns`.
    #[serde(default)]
    wrong_pid_file: bool,
}

/// The jailer's arguments, parsed with its rules.
#[derive(Debug, Default)]
struct JailerArgs {
    single: BTreeMap<String, String>,
    cgroups: Vec<(String, String)>,
    resource_limits: Vec<String>,
    flags: Vec<String>,
    firecracker: Vec<String>,
}

const SINGLE: &[&str] = &[
    "id",
    "exec-file",
    "uid",
    "gid",
    "chroot-base-dir",
    "netns",
    "cgroup-version",
    "parent-cgroup",
];
const FLAGS: &[&str] = &["daemonize", "new-pid-ns"];

fn parse_args(args: &[String]) -> Result<JailerArgs> {
    let mut out = JailerArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            out.firecracker = it.cloned().collect();
            break;
        }
        let Some(name) = arg.strip_prefix("--") else {
            bail!("unexpected argument {arg:?}");
        };
        if FLAGS.contains(&name) {
            out.flags.push(name.to_owned());
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("--{name} needs a value"))?
            .clone();
        match name {
            "cgroup" => {
                let parts: Vec<&str> = value.split('=').collect();
                if parts.len() != 2 || parts[1].is_empty() || !parts[0].contains('.') {
                    bail!("invalid cgroup argument {value:?}: want <controller>.<file>=<value>");
                }
                out.cgroups.push((parts[0].to_owned(), parts[1].to_owned()));
            }
            "resource-limit" => out.resource_limits.push(value),
            n if SINGLE.contains(&n) => {
                if out.single.insert(n.to_owned(), value).is_some() {
                    bail!("--{n} given twice");
                }
            }
            _ => bail!("found argument --{name} which wasn't expected"),
        }
    }
    for required in ["id", "exec-file", "uid", "gid"] {
        if !out.single.contains_key(required) {
            bail!("missing required argument --{required}");
        }
    }
    Ok(out)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Appends JSON lines to the record file (opened before the chroot).
#[derive(Clone)]
struct Recorder(Arc<Mutex<File>>);

impl Recorder {
    fn write(&self, event: Value) {
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A test reading the record will notice a missing line.
        let _ = writeln!(file, "{event}");
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fake-jailer: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<u8> {
    let argv: Vec<String> = std::env::args().collect();
    let argv0 = argv.first().context("no argv[0]")?;
    let conf_path = format!("{argv0}.json");
    let conf: Conf = serde_json::from_slice(
        &fs::read(&conf_path).with_context(|| format!("reading {conf_path}"))?,
    )
    .with_context(|| format!("parsing {conf_path}"))?;
    let record_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&conf.record)
        .with_context(|| format!("opening {}", conf.record.display()))?;
    let recorder = Recorder(Arc::new(Mutex::new(record_file)));
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    recorder.write(json!({"event": "argv", "argv": argv, "env": env, "pid": std::process::id()}));

    let args = parse_args(&argv[1..])?;
    let id = &args.single["id"];
    if !valid_id(id) {
        bail!("invalid instance id {id:?}");
    }
    let uid: u32 = args.single["uid"].parse().context("--uid")?;
    let gid: u32 = args.single["gid"].parse().context("--gid")?;
    let version = args
        .single
        .get("cgroup-version")
        .map(String::as_str)
        .unwrap_or("1");
    if !args.cgroups.is_empty() && version != "2" {
        bail!("this host has cgroup v2 only; got --cgroup-version {version}");
    }
    let exec_file = fs::canonicalize(&args.single["exec-file"]).context("--exec-file")?;
    if !exec_file.is_file() {
        bail!("{} is not a file", exec_file.display());
    }
    let exec_name = exec_file.file_name().context("exec file name")?.to_owned();
    if !exec_name.to_string_lossy().contains("firecracker") {
        bail!("the filename of --exec-file must contain \"firecracker\": {exec_name:?}");
    }
    let base = args
        .single
        .get("chroot-base-dir")
        .map(String::as_str)
        .unwrap_or("/srv/jailer");
    let base = fs::canonicalize(base).with_context(|| format!("--chroot-base-dir {base}"))?;
    let jail = base.join(&exec_name).join(id).join("root");
    fs::create_dir_all(&jail).with_context(|| format!("creating {}", jail.display()))?;
    fs::copy(&exec_file, jail.join(&exec_name)).context("copying the exec file into the jail")?;

    let parent = args
        .single
        .get("parent-cgroup")
        .cloned()
        .unwrap_or_else(|| exec_name.to_string_lossy().into_owned());
    if let Some(message) = &conf.cgroup_failure {
        eprint!("{message}");
        return Ok(1);
    }
    if !args.cgroups.is_empty() {
        let dir = conf.cgroup_root.join(&parent).join(id);
        fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        for (file, value) in &args.cgroups {
            recorder.write(json!({"event": "cgroup", "dir": dir, "file": file, "value": value}));
        }
    }
    if let Some(netns) = args.single.get("netns") {
        File::open(netns).with_context(|| format!("opening netns {netns}"))?;
    }
    if conf.die_before_socket {
        bail!("failing before the API socket, as the test asked");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root, like the real jailer");
    }

    // The folders the jailer hands to the jailed uid.
    for dir in ["", "dev", "run"] {
        let path = jail.join(dir);
        fs::create_dir_all(&path)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))?;
    }
    let spec = ApiSpec::load(&conf.spec).map_err(anyhow::Error::msg)?;

    nix::unistd::chroot(&jail).context("chroot")?;
    nix::unistd::chdir("/").context("chdir")?;
    // As the jailer does just before it execs Firecracker in place.
    let pid = std::process::id() + u32::from(conf.wrong_pid_file);
    fs::write(
        format!("/{}.pid", exec_name.to_string_lossy()),
        pid.to_string(),
    )?;
    nix::unistd::setgroups(&[]).context("setgroups")?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(gid)).context("setgid")?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).context("setuid")?;
    recorder.write(json!({"event": "jailed", "uid": uid, "gid": gid}));

    let api_sock = args
        .firecracker
        .iter()
        .position(|a| a == "--api-sock")
        .and_then(|i| args.firecracker.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "/run/firecracker.socket".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(PathBuf::from(api_sock), spec, conf, recorder))
}

/// What to do once a request has been answered.
enum Next {
    Nothing,
    StartGuest,
    GracefulStop,
}

/// What one fake Firecracker has been told so far.
struct State {
    spec: ApiSpec,
    conf: Conf,
    recorder: Recorder,
    boot_source: bool,
    started: bool,
    vsock_uds: Option<String>,
    /// Kept open, as Firecracker keeps its devices.
    held: Vec<File>,
    vsock_listener: Option<std::os::unix::net::UnixListener>,
}

async fn serve(api_sock: PathBuf, spec: ApiSpec, conf: Conf, recorder: Recorder) -> Result<u8> {
    let listener = tokio::net::UnixListener::bind(&api_sock)
        .with_context(|| format!("binding {}", api_sock.display()))?;
    let state = Arc::new(Mutex::new(State {
        spec,
        conf,
        recorder,
        boot_source: false,
        started: false,
        vsock_uds: None,
        held: Vec::new(),
        vsock_listener: None,
    }));
    loop {
        let (stream, _) = listener.accept().await?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, Arc::clone(&state)));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                Some(format!("reading the body: {e}")),
            ))
        }
    };
    let parsed: Result<Option<Value>, String> = if body.is_empty() {
        Ok(None)
    } else {
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("invalid JSON: {e}"))
    };
    let mut next = Next::Nothing;
    let outcome = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = parsed.and_then(|body| {
            if body.is_some() && content_type.as_deref() != Some("application/json") {
                return Err(format!(
                    "content type {content_type:?} is not application/json"
                ));
            }
            st.apply(&method, &path, body.as_ref(), &mut next)
        });
        let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        st.recorder.write(json!({
            "event": "request", "method": method, "path": path, "body": body_json,
            "status": if outcome.is_ok() { 204 } else { 400 },
            "fault": outcome.as_ref().err(),
        }));
        outcome
    };
    match next {
        Next::Nothing => {}
        Next::StartGuest => {
            tokio::spawn(run_guest(Arc::clone(&state)));
        }
        Next::GracefulStop => {
            let recorder = state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .recorder
                .clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                recorder.write(json!({"event": "exit", "code": 0, "why": "ctrl-alt-del"}));
                std::process::exit(0);
            });
        }
    }
    Ok(match outcome {
        Ok(()) => answer(StatusCode::NO_CONTENT, None),
        Err(fault) => answer(StatusCode::BAD_REQUEST, Some(fault)),
    })
}

fn answer(status: StatusCode, fault: Option<String>) -> Response<Full<Bytes>> {
    let body = match fault {
        Some(f) => Bytes::from(json!({"fault_message": f}).to_string()),
        None => Bytes::new(),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

fn open(path: &str, write: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| format!("cannot open {path:?} (as the jailed uid, inside the jail): {e}"))
}

impl State {
    fn apply(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        next: &mut Next,
    ) -> Result<(), String> {
        if self.conf.reject_path.as_deref() == Some(path) {
            return Err(format!("{path} refused, as the test asked"));
        }
        self.spec
            .check(method, path, body)
            .map_err(|problems| problems.join("; "))?;
        let body = body.cloned().unwrap_or(Value::Null);
        let action = body.get("action_type").and_then(Value::as_str);
        if self.started {
            // Only actions other than a second start work on a running VM.
            if path == "/actions" && action == Some("SendCtrlAltDel") {
                // The guest's PID 1 stops gracefully and reboots.
                *next = Next::GracefulStop;
                return Ok(());
            }
            if path == "/actions" && action == Some("FlushMetrics") {
                return Ok(());
            }
            return Err(
                "The requested operation is not supported after starting the microVM.".to_owned(),
            );
        }
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        match path {
            "/logger" => {
                if let Some(log_path) = text("log_path") {
                    // Firecracker opens its log non-blocking, so a FIFO
                    // without a reader fails here rather than hanging.
                    let mut file = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(&log_path)
                        .map_err(|e| format!("cannot open log {log_path:?}: {e}"))?;
                    let _ = writeln!(file, "fake-firecracker: logger ready");
                    self.held.push(file);
                }
            }
            "/boot-source" => {
                if let Some(kernel) = text("kernel_image_path") {
                    self.held.push(open(&kernel, false)?);
                }
                if let Some(initrd) = text("initrd_path") {
                    self.held.push(open(&initrd, false)?);
                }
                self.boot_source = true;
            }
            p if p.starts_with("/drives/") => {
                let read_only = body
                    .get("is_read_only")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if let Some(disk) = text("path_on_host") {
                    self.held.push(open(&disk, !read_only)?);
                }
            }
            "/vsock" => {
                let uds = text("uds_path").unwrap_or_default();
                let listener = std::os::unix::net::UnixListener::bind(&uds)
                    .map_err(|e| format!("cannot bind vsock socket {uds:?}: {e}"))?;
                self.vsock_listener = Some(listener);
                self.vsock_uds = Some(uds);
            }
            "/actions" if action == Some("InstanceStart") => {
                if !self.boot_source {
                    return Err("Cannot start microvm without kernel configuration.".to_owned());
                }
                self.started = true;
                *next = Next::StartGuest;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The "guest": serial output, a connection to the host, then reboot or hang.
async fn run_guest(state: Arc<Mutex<State>>) {
    // Let the 204 for InstanceStart go out first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (recorder, console_bytes, uds, hang, exit_code) = {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        (
            st.recorder.clone(),
            st.conf.console_bytes,
            st.vsock_uds.clone(),
            st.conf.on_start.as_deref() == Some("hang"),
            st.conf.exit_code,
        )
    };
    let line = b"fake guest: serial console line\n";
    let serial: Vec<u8> = line.iter().copied().cycle().take(console_bytes).collect();
    let written = std::io::stdout()
        .lock()
        .write_all(&serial)
        .and_then(|()| std::io::stdout().flush());
    recorder.write(json!({"event": "console", "bytes": console_bytes, "ok": written.is_ok()}));

    if let Some(uds) = uds {
        let target = format!("{uds}_{}", kiln_protocol::VSOCK_PORT);
        let dial = std::os::unix::net::UnixStream::connect(&target)
            .and_then(|mut s| s.write_all(b"hello from the fake guest\n"));
        recorder.write(json!({"event": "guest_dial", "path": target, "error": dial.err().map(|e| e.to_string())}));
    }
    if hang {
        recorder.write(json!({"event": "hanging"}));
        return;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    recorder.write(json!({"event": "exit", "code": exit_code}));
    std::process::exit(i32::from(exit_code));
}
