//! `kiln serve` over HTTPS, as a binary: certificate files reloaded
//! without a restart, the TLS handshake under the connection limits, and
//! ACME for real against Pebble (Let's Encrypt's test CA, Debian package
//! `pebble`) validating by TLS-ALPN-01 on Kiln's own listener.
//!
//! Everything runs on 127.0.0.1 ports of this machine (no namespace or
//! firewall changes); every process started here is killed, and every
//! file removed, when its guard drops, also when an assertion fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use kiln::logs::events;
use kiln::logs::read::LogLine;

mod common;
use common::{
    closed_by, config_dir, port_of, queued_body, signed, stderr_lines, wait_for_event, Reaped,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// The name Kiln's certificates are for (Pebble's DNS answers 127.0.0.1).
const DOMAIN: &str = "kiln.example.com";

/// `kiln serve`'s config with `listen` and `tls` filled in. The GitHub API
/// URL points at a closed port: no test talks to the real GitHub.
fn config(listen: &str, tls: &str) -> String {
    format!(
        r#"
listen = "{listen}"
webhook_secret_file = "webhook-secret"
log_format = "json"
backend = "qemu"

# The metrics listener is not needed here (and 9464 may be taken).
[admin]
listen = "off"

[github]
api_url = "http://127.0.0.1:1"
app_id = 1
private_key_file = "key.pem"
org = "acme"

[host]
vcpus = 2
memory_mib = 4096

{tls}

[[pool]]
name = "small"
labels = ["self-hosted", "kiln-small"]
vcpus = 2
memory_mib = 2048
image = "image"
network = "none"
"#
    )
}

/// A directory with the secrets and image `kiln serve` checks at start
/// (no VM boots here) and `config.toml`.
fn dir_with_config(listen: &str, tls: &str) -> tempfile::TempDir {
    config_dir(0o600, &config(listen, tls))
}

fn write_secret(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A child process killed and reaped when dropped.
/// A running `kiln serve` and its stderr lines.
struct Kiln {
    child: Reaped,
    lines: mpsc::Receiver<String>,
}

impl Kiln {
    fn start(dir: &Path, fd_limit: Option<u64>) -> Self {
        let config = dir.join("config.toml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env("KILN_LOG", "info")
            .env("KILN_STATE_DIR", dir.join("state"))
            .env("KILN_RUNTIME_DIR", dir.join("run"))
            .env("KILN_DISK_DIR", dir.join("disks"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(limit) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the child only calls
            // setrlimit(2), which is async-signal-safe, and builds its
            // io::Error from an errno without allocating.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn kiln serve");
        let lines = stderr_lines(&mut child);
        Self {
            child: Reaped(child),
            lines,
        }
    }

    /// The first event `name` on kiln serve's stderr, within `within`.
    fn wait_for(&self, name: &str, within: Duration) -> LogLine {
        wait_for_event(&self.lines, name, within)
    }

    /// SIGTERM, and its exit.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.0.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.wait_for(events::SERVE_STOPPED, Duration::from_secs(20));
        let status = self.child.0.wait().expect("wait");
        assert!(status.success(), "{status:?}");
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the tests use it at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A port free for both UDP and TCP (a DNS server takes both).
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A test CA that signs leaf certificates.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("keygen");
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("self-sign CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for `names` (DNS names or IP addresses).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let key = rcgen::KeyPair::generate().expect("keygen");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

/// A TLS client trusting only `roots_pem`. Without session resumption:
/// a resumed session reports the certificate of the session it resumes.
fn client(roots_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.expect("root PEM")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Sends `request` over TLS to 127.0.0.1:`port` as `name`, verifying the
/// server against `config`'s roots; the answer and the server's leaf.
fn https(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    name: &str,
    request: &str,
) -> Result<(String, CertificateDer<'static>), String> {
    let server_name = ServerName::try_from(name.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(Arc::clone(config), server_name)
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Err(e) = tls.read_to_end(&mut out) {
        // A peer that closes without close_notify: the answer is complete.
        if out.is_empty() {
            return Err(e.to_string());
        }
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no server certificate")?;
    Ok((String::from_utf8_lossy(&out).into_owned(), leaf))
}

fn signed_ping(delivery: &str) -> String {
    signed(DOMAIN, "ping", delivery, "{}")
}

/// A signed `queued` delivery of job `id` for the `small` pool.
fn signed_queued(delivery: &str, id: u64) -> String {
    signed(DOMAIN, "workflow_job", delivery, &queued_body(id))
}

fn tls_files_table() -> &'static str {
    "[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n"
}

fn write_pair(dir: &Path, pair: &(String, String)) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).expect("mkdir tls");
    // Written beside, renamed over: as certbot and friends replace them.
    for (name, content) in [("cert.pem", &pair.0), ("key.pem", &pair.1)] {
        let tmp = tls.join(format!("{name}.new"));
        write_secret(&tmp, content);
        std::fs::rename(&tmp, tls.join(name)).expect("rename");
    }
}

#[test]
fn replaced_certificate_files_are_served_without_a_restart() {
    let ca = Ca::new("files test CA");
    let a = ca.leaf(&[DOMAIN]);
    let b = ca.leaf(&[DOMAIN]);
    let dir = dir_with_config("127.0.0.1:0", tls_files_table());
    write_pair(dir.path(), &a);
    let kiln = Kiln::start(dir.path(), None);
    let port = port_of(&kiln.wait_for(events::SERVE_LISTENING, Duration::from_secs(30)));
    let client = client(&ca.pem());

    let (answer, leaf) = https(&client, port, DOMAIN, &signed_ping("files-1")).expect("HTTPS");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(leaf, der(&a.0), "cert A first");

    write_pair(dir.path(), &b);
    kiln.wait_for(events::TLS_RELOADED, Duration::from_secs(20));
    let (answer, leaf) = https(&client, port, DOMAIN, &signed_ping("files-2")).expect("HTTPS");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(leaf, der(&b.0), "cert B after the files were replaced");

    // A broken replacement keeps B, and the error names the file.
    let cert = dir.path().join("tls/cert.pem");
    std::fs::write(&cert, "not a certificate").expect("break the cert");
    let error = kiln.wait_for(events::TLS_RELOAD_FAILED, Duration::from_secs(20));
    let said = error.str("error").unwrap_or_default();
    assert!(said.contains(&cert.display().to_string()), "{said}");
    let (_, leaf) = https(&client, port, DOMAIN, &signed_ping("files-3")).expect("HTTPS");
    assert_eq!(leaf, der(&b.0), "B stays");
    kiln.stop();
}

#[test]
fn a_key_file_others_can_read_stops_it_with_chmod_600() {
    let ca = Ca::new("mode test CA");
    let dir = dir_with_config("127.0.0.1:0", tls_files_table());
    write_pair(dir.path(), &ca.leaf(&[DOMAIN]));
    let key = dir.path().join("tls/key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--config"])
        .arg(dir.path().join("config.toml"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run kiln serve");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("run `chmod 600 {}`", key.display())),
        "{stderr}"
    );
}

/// The handshake runs under the same limits as plain HTTP: with 100
/// connection slots (a 200 file limit), 300 clients that connect and send
/// nothing, or the first bytes of a ClientHello, neither keep a signed
/// delivery out nor stay open past the header timeout (10 s).
#[test]
fn idle_and_dribbling_tls_clients_neither_keep_a_delivery_out_nor_stay_open() {
    let ca = Ca::new("limits test CA");
    let dir = dir_with_config("127.0.0.1:0", tls_files_table());
    write_pair(dir.path(), &ca.leaf(&[DOMAIN]));
    let kiln = Kiln::start(dir.path(), Some(200));
    let limits = kiln.wait_for(events::SERVE_LIMITS, Duration::from_secs(30));
    assert_eq!(
        limits.u64("max_connections"),
        Some(100),
        "{:?}",
        limits.fields()
    );
    let port = port_of(&kiln.wait_for(events::SERVE_LISTENING, Duration::from_secs(30)));

    let opened = Instant::now();
    let crowd: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            if i % 2 == 1 {
                // A TLS record header and two bytes of a ClientHello.
                s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                    .expect("dribble");
            }
            s
        })
        .collect();
    let (answer, _) = https(&client(&ca.pem()), port, DOMAIN, &signed_ping("crowd-1"))
        .expect("a delivery past the crowd");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("pong"),
        "{answer}"
    );

    let deadline = opened + Duration::from_secs(15);
    let still_open = crowd
        .into_iter()
        .filter(|s| !closed_by(s, deadline))
        .count();
    assert_eq!(still_open, 0, "idle TLS connections still open 15 s on");
    kiln.stop();
}

// ---- ACME against Pebble ----

/// Pebble and its DNS server (pebble-challtestsrv answering 127.0.0.1 for
/// every name), killed when dropped.
struct Pebble {
    _dns: Reaped,
    _ca: Reaped,
    /// The ACME directory URL.
    directory: String,
    management_port: u16,
    /// Trusts Pebble's own HTTPS (API and management).
    api_client: Arc<rustls::ClientConfig>,
}

fn which(binary: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(binary);
    assert!(
        path.exists(),
        "{} is missing: run `apt-get install pebble` (Debian's package has pebble and pebble-challtestsrv; .ci/prereqs installs it)",
        path.display()
    );
    path
}

impl Pebble {
    /// Starts Pebble in `dir`, validating challenges on `kiln_port`.
    fn start(dir: &Path, kiln_port: u16) -> Self {
        let (pebble, challtestsrv) = (which("pebble"), which("pebble-challtestsrv"));
        // Pebble's API certificate: the Debian package ships none.
        let ca = Ca::new("Pebble API test CA");
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.join("api-ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.join("api-cert.pem"), cert).expect("write");
        write_secret(&dir.join("api-key.pem"), &key);

        let dns_port = free_dns_port();
        let dns = Command::new(challtestsrv)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("challtestsrv.log")).expect("log"))
            .spawn()
            .expect("start pebble-challtestsrv");
        let dns = Reaped(dns);

        let (api_port, management_port) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.join("api-cert.pem"),
            "privateKey": dir.join("api-key.pem"),
            "httpPort": kiln_port,
            "tlsPort": kiln_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let ca_process = Command::new(pebble)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random sleeps before validating; no nonces refused at random.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pebble.log")).expect("log"))
            .spawn()
            .expect("start pebble");
        let pebble = Self {
            _dns: dns,
            _ca: Reaped(ca_process),
            directory: format!("https://localhost:{api_port}/dir"),
            management_port,
            api_client: client(&ca.pem()),
        };
        pebble.wait_until_up(dir, api_port);
        pebble
    }

    fn wait_until_up(&self, dir: &Path, api_port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let request = "GET /dir HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        while Instant::now() < deadline {
            if let Ok((answer, _)) = https(&self.api_client, api_port, "localhost", request) {
                if answer.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default();
        panic!("Pebble's directory did not answer within 30 s; its log:\n{log}");
    }

    /// The root that issued Kiln's certificate, from the management API.
    fn issuing_root(&self) -> String {
        let request = "GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let (answer, _) = https(&self.api_client, self.management_port, "localhost", request)
            .expect("Pebble's management API");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        assert!(body.contains("BEGIN CERTIFICATE"), "{answer}");
        body.to_string()
    }
}

#[test]
fn acme_gets_a_certificate_from_pebble_and_a_restart_reuses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kiln_port = free_port();
    let pebble = Pebble::start(dir.path(), kiln_port);
    let tls = format!(
        "[tls.acme]\ndomains = [\"{DOMAIN}\"]\ncontact = [\"mailto:ops@example.com\"]\n\
         directory = \"{}\"\nca_roots = \"{}\"\n",
        pebble.directory,
        dir.path().join("api-ca.pem").display()
    );
    let kiln_dir = dir_with_config(&format!("127.0.0.1:{kiln_port}"), &tls);

    let kiln = Kiln::start(kiln_dir.path(), None);
    kiln.wait_for(events::SERVE_LISTENING, Duration::from_secs(30));
    let issued = kiln.wait_for(events::ACME_CERTIFICATE, Duration::from_secs(60));
    assert_eq!(issued.str("source"), Some("new"), "{:?}", issued.fields());
    let client = client(&pebble.issuing_root());
    let (answer, first) =
        https(&client, kiln_port, DOMAIN, &signed_queued("acme-1", 701)).expect("HTTPS");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");

    let acme = kiln_dir.path().join("state/acme");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&acme), 0o700);
    for f in ["account.json", "cert.pem", "key.pem"] {
        assert_eq!(mode(&acme.join(f)), 0o600, "{f}");
    }
    let stored = std::fs::read(acme.join("cert.pem")).expect("read cert.pem");
    // Killed, not stopped: the queued job would wait for the (absent) GitHub.
    drop(kiln);

    let kiln = Kiln::start(kiln_dir.path(), None);
    let reused = kiln.wait_for(events::ACME_CERTIFICATE, Duration::from_secs(30));
    assert_eq!(
        reused.str("source"),
        Some("stored"),
        "{:?}",
        reused.fields()
    );
    kiln.wait_for(events::SERVE_LISTENING, Duration::from_secs(30));
    let (answer, second) =
        https(&client, kiln_port, DOMAIN, &signed_queued("acme-2", 702)).expect("HTTPS");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(second, first, "the stored certificate, not a new one");
    assert_eq!(
        std::fs::read(acme.join("cert.pem")).expect("read cert.pem"),
        stored,
        "no new order"
    );
}
