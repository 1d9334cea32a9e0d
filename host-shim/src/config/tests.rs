use std::os::unix::fs::PermissionsExt;

use super::*;

const FACTS: HostFacts = HostFacts {
    cpus: 8,
    memory_mib: 20_000,
};

const POOL: &str = r#"
[[pool]]
name = "small"
labels = ["self-hosted", "linux", "x64", "kiln-small"]
vcpus = 2
memory_mib = 4096
"#;

/// A directory with 0600 secret files `webhook-secret` and `app-key.pem`.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        let dir = Dir(tempfile::tempdir().expect("tempdir"));
        dir.secret("webhook-secret", "s3cret\n");
        dir.secret(
            "app-key.pem",
            "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY-----\n",
        );
        dir
    }

    fn secret(&self, name: &str, content: &str) {
        let path = self.0.path().join(name);
        std::fs::write(&path, content).expect("write secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    fn load(&self, text: &str) -> Result<Config, ConfigError> {
        let path = self.0.path().join("config.toml");
        std::fs::write(&path, text).expect("write config");
        Config::load_with_host(&path, &FACTS)
    }

    /// The config with `github` lines replacing the default `org = "acme"`
    /// and `rest` appended (pools, host).
    fn config(github: &str, rest: &str) -> String {
        format!(
            "webhook_secret_file = \"webhook-secret\"\n\n[github]\napp_id = 123\nprivate_key_file = \"app-key.pem\"\n{github}\n{rest}"
        )
    }

    fn err(&self, text: &str) -> (ConfigErrorKind, String) {
        let e = self.load(text).expect_err("config must be refused");
        let msg = e.to_string();
        assert!(msg.contains("config.toml"), "message names the file: {msg}");
        assert_eq!(e.count(), 1, "one problem: {msg}");
        (e.first.kind, msg)
    }
}

#[test]
fn full_example_with_defaults() {
    let dir = Dir::new();
    let c = dir
        .load(&Dir::config("org = \"acme\"", POOL))
        .expect("valid config");
    assert_eq!(c.listen, "0.0.0.0:8080".parse().expect("addr"));
    assert_eq!(
        c.webhook_secret.as_ref().map(|s| s.expose()),
        Some("s3cret"),
        "trailing newline trimmed"
    );
    assert!(
        c.github.private_key.expose().ends_with("-----\n"),
        "PEM kept as is"
    );
    assert_eq!(c.github.api_url, DEFAULT_API_URL);
    assert_eq!(c.github.app_id, 123);
    assert_eq!(c.github.runner_group_id, 1);
    assert_eq!(c.github.scope, RunnerScope::Org { org: "acme".into() });
    assert_eq!(c.max_queued, DEFAULT_MAX_QUEUED);
    assert_eq!(
        c.host,
        HostCapacity {
            vcpus: 8,
            memory_mib: 16_000
        }
    );
    let p = &c.pools[0];
    assert_eq!(p.name, "small");
    assert_eq!((p.vcpus, p.memory_mib, p.scratch_gib), (2, 4096, 20));
    assert_eq!(p.image, Path::new(DEFAULT_IMAGE));
    assert_eq!(p.job_timeout, Duration::from_secs(6 * 3600));
    assert_eq!(p.idle_timeout, Duration::from_secs(600));
    assert_eq!((p.sudo, p.max_vms, p.max_retries), (false, None, None));
    assert_eq!(c.github.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
    assert_eq!(c.github.max_retries, DEFAULT_MAX_RETRIES);
    let job = vec!["self-hosted".to_string(), "KILN-SMALL".to_string()];
    assert_eq!(c.pool_for(&job).map(|p| p.name.as_str()), Some("small"));
    assert!(c.pool_for(&["gpu".to_string()]).is_none());
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug redacts secrets"
    );
}

#[test]
fn everything_set_explicitly() {
    let dir = Dir::new();
    let text = r#"
listen = "127.0.0.1:9000"
webhook_secret_file = "webhook-secret"
max_queued = 50

[github]
api_url = "https://ghe.example.com/api/v3/"
app_id = 7
private_key_file = "app-key.pem"
repo = "acme/widgets"
runner_group_id = 3

[host]
vcpus = 4
memory_mib = 8192

[[pool]]
name = "big"
labels = ["self-hosted", "kiln-big"]
vcpus = 4
memory_mib = 8192
scratch_gib = 80
image = "images/big"
sudo = true
max_vms = 1
job_timeout = "1h30m"
"#;
    let c = dir.load(text).expect("valid config");
    assert_eq!(c.listen, "127.0.0.1:9000".parse().expect("addr"));
    assert_eq!(c.max_queued, 50);
    assert_eq!(c.github.api_url, "https://ghe.example.com/api/v3");
    assert_eq!(
        c.github.scope,
        RunnerScope::Repo {
            owner: "acme".into(),
            repo: "widgets".into()
        }
    );
    assert_eq!(c.github.runner_group_id, 3);
    assert_eq!(
        c.host,
        HostCapacity {
            vcpus: 4,
            memory_mib: 8192
        }
    );
    let p = &c.pools[0];
    assert_eq!(
        p.image,
        dir.0.path().join("images/big"),
        "relative to the config's directory"
    );
    assert_eq!((p.sudo, p.max_vms, p.scratch_gib), (true, Some(1), 80));
    assert_eq!(p.job_timeout, Duration::from_secs(5400));

    let ent = dir
        .load(&Dir::config("enterprise = \"acme-inc\"", POOL))
        .expect("enterprise scope");
    assert_eq!(
        ent.github.scope,
        RunnerScope::Enterprise {
            enterprise: "acme-inc".into()
        }
    );
}

#[test]
fn missing_and_unreadable_config_file() {
    let dir = Dir::new();
    let path = dir.0.path().join("nope.toml");
    let e = Config::load_with_host(&path, &FACTS).expect_err("no file");
    assert!(matches!(e.kind(), ConfigErrorKind::Read { .. }));
    assert!(e.to_string().contains("nope.toml"), "{e}");
}

#[test]
fn missing_secret_file() {
    let dir = Dir::new();
    std::fs::remove_file(dir.0.path().join("webhook-secret")).expect("rm");
    let (kind, msg) = dir.err(&Dir::config("org = \"acme\"", POOL));
    assert!(
        matches!(kind, ConfigErrorKind::SecretUnreadable { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("webhook_secret_file") && msg.contains("webhook-secret"),
        "{msg}"
    );

    let dir = Dir::new();
    std::fs::remove_file(dir.0.path().join("app-key.pem")).expect("rm");
    let (_, msg) = dir.err(&Dir::config("org = \"acme\"", POOL));
    assert!(
        msg.contains("github.private_key_file") && msg.contains("app-key.pem"),
        "{msg}"
    );
}

#[test]
fn secret_readable_by_others_says_chmod_600() {
    for mode in [0o640, 0o604, 0o644] {
        let dir = Dir::new();
        let key = dir.0.path().join("app-key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let (kind, msg) = dir.err(&Dir::config("org = \"acme\"", POOL));
        assert!(
            matches!(kind, ConfigErrorKind::SecretExposed { .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("run `chmod 600 {}`", key.display())),
            "{msg}"
        );
        assert!(msg.contains(&format!("{mode:03o}")), "{msg}");
    }
}

#[test]
fn empty_secret_file() {
    let dir = Dir::new();
    dir.secret("webhook-secret", "\n");
    let (kind, msg) = dir.err(&Dir::config("org = \"acme\"", POOL));
    assert!(matches!(kind, ConfigErrorKind::SecretEmpty { .. }), "{msg}");
    assert!(msg.contains("is empty"), "{msg}");
}

#[test]
fn no_pools() {
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", ""));
    assert!(matches!(kind, ConfigErrorKind::NoPools), "{msg}");
    assert!(msg.contains("add at least one"), "{msg}");
}

#[test]
fn duplicate_pool_names() {
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &format!("{POOL}{POOL}")));
    assert!(
        matches!(kind, ConfigErrorKind::DuplicatePool { ref name, .. } if name == "small"),
        "{msg}"
    );
    assert!(msg.contains("\"small\" is defined twice"), "{msg}");
}

#[test]
fn empty_or_blank_labels() {
    let pool = POOL.replace(r#"["self-hosted", "linux", "x64", "kiln-small"]"#, "[]");
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
    assert!(matches!(kind, ConfigErrorKind::EmptyLabels { .. }), "{msg}");
    assert!(msg.contains("pool \"small\": labels is empty"), "{msg}");

    let pool = POOL.replace(r#""x64""#, r#"" ""#);
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
    assert!(matches!(kind, ConfigErrorKind::BlankLabel { .. }), "{msg}");
}

#[test]
fn pool_bigger_than_the_host() {
    let pool = POOL.replace("vcpus = 2", "vcpus = 16");
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
    assert!(
        matches!(
            kind,
            ConfigErrorKind::PoolTooBig {
                what: "vcpus",
                wants: 16,
                host: 8,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("[host] vcpus = 8"), "{msg}");

    let rest = format!("[host]\nmemory_mib = 2048\n{POOL}");
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &rest));
    assert!(
        matches!(
            kind,
            ConfigErrorKind::PoolTooBig {
                what: "memory_mib",
                wants: 4096,
                host: 2048,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("lower the pool's memory_mib or raise [host] memory_mib"),
        "{msg}"
    );
}

#[test]
fn odd_vcpus() {
    let pool = POOL.replace("vcpus = 2", "vcpus = 3");
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
    assert!(
        matches!(kind, ConfigErrorKind::BadVcpus { vcpus: 3, .. }),
        "{msg}"
    );
}

#[test]
fn exactly_one_scope() {
    let (kind, msg) = Dir::new().err(&Dir::config("", POOL));
    assert!(matches!(kind, ConfigErrorKind::Scope { .. }), "{msg}");
    assert!(
        msg.contains("exactly one of org, repo or enterprise (found none)"),
        "{msg}"
    );

    let (_, msg) = Dir::new().err(&Dir::config(
        "org = \"acme\"\nrepo = \"acme/widgets\"",
        POOL,
    ));
    assert!(msg.contains("(found org, repo)"), "{msg}");
}

#[test]
fn repo_must_be_owner_slash_name() {
    for bad in [
        "widgets",
        "acme/",
        "/widgets",
        "acme/widgets/x",
        "acme/wid gets",
    ] {
        let (kind, msg) = Dir::new().err(&Dir::config(&format!("repo = {bad:?}"), POOL));
        assert!(
            matches!(kind, ConfigErrorKind::BadRepo { .. }),
            "{bad}: {msg}"
        );
        assert!(msg.contains("use owner/name"), "{msg}");
    }
    let (_, msg) = Dir::new().err(&Dir::config("org = \"acme/x\"", POOL));
    assert!(msg.contains("github.org"), "{msg}");
}

#[test]
fn job_timeout_must_parse() {
    let pool = format!("{POOL}job_timeout = \"6 hours\"\n");
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
    assert!(matches!(kind, ConfigErrorKind::BadDuration { .. }), "{msg}");
    assert!(
        msg.contains("pool[0].job_timeout") && msg.contains("not a duration"),
        "{msg}"
    );

    let pool = format!("{POOL}job_timeout = \"0s\"\n");
    let (_, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
    assert!(msg.contains("more than 0"), "{msg}");
}

#[test]
fn reconciling_and_re_runs_are_configured_per_daemon_and_per_pool() {
    let pool = format!("{POOL}max_retries = 0\n");
    let github = "org = \"acme\"\nreconcile_interval = \"90s\"\nmax_retries = 2";
    let c = Dir::new()
        .load(&Dir::config(github, &pool))
        .expect("valid config");
    assert_eq!(c.github.reconcile_interval, Duration::from_secs(90));
    assert_eq!(c.github.max_retries, 2);
    assert_eq!(c.pools[0].max_retries, Some(0));
    let (kind, msg) = Dir::new().err(&Dir::config(
        "org = \"acme\"\nreconcile_interval = \"0s\"",
        POOL,
    ));
    assert!(matches!(kind, ConfigErrorKind::BadDuration { .. }), "{msg}");
    assert!(msg.contains("github.reconcile_interval"), "{msg}");
}

#[test]
fn idle_timeout_parses_and_must_be_more_than_0() {
    let pool = format!("{POOL}idle_timeout = \"90s\"\n");
    let c = Dir::new()
        .load(&Dir::config("org = \"acme\"", &pool))
        .expect("valid config");
    assert_eq!(c.pools[0].idle_timeout, Duration::from_secs(90));
    for (bad, want) in [("0m", "more than 0, e.g. 10m"), ("soon", "not a duration")] {
        let pool = format!("{POOL}idle_timeout = \"{bad}\"\n");
        let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
        assert!(matches!(kind, ConfigErrorKind::BadDuration { .. }), "{msg}");
        assert!(
            msg.contains("pool[0].idle_timeout") && msg.contains(want),
            "{bad}: {msg}"
        );
    }
}

#[test]
fn unknown_and_missing_keys_are_syntax_errors_naming_the_key() {
    let pool = format!("{POOL}vcpu = 4\n");
    let (kind, msg) = Dir::new().err(&Dir::config("org = \"acme\"", &pool));
    assert!(matches!(kind, ConfigErrorKind::Syntax { .. }), "{msg}");
    assert!(msg.contains("unknown field `vcpu`"), "{msg}");

    let text = Dir::config("org = \"acme\"", POOL).replace("app_id = 123\n", "");
    let (_, msg) = Dir::new().err(&text);
    assert!(msg.contains("missing field `app_id`"), "{msg}");

    let (_, msg) = Dir::new().err(&format!(
        "webhook_secret = \"inline\"\n{}",
        Dir::config("org = \"acme\"", POOL)
    ));
    assert!(msg.contains("unknown field `webhook_secret`"), "{msg}");
}

#[test]
fn other_bad_values() {
    let cases = [
        (
            Dir::config("org = \"acme\"", &POOL.replace("\"small\"", "\"sm all\""))[..].to_string(),
            "pool[0].name",
        ),
        (
            format!("max_queued = 0\n{}", Dir::config("org = \"acme\"", POOL)),
            "max_queued",
        ),
        (
            Dir::config("org = \"acme\"\napi_url = \"api.github.com\"", POOL),
            "github.api_url",
        ),
        (
            Dir::config("org = \"acme\"", POOL).replace("app_id = 123", "app_id = 0"),
            "github.app_id",
        ),
        (
            Dir::config("org = \"acme\"", &format!("[host]\nvcpus = 0\n{POOL}")),
            "host.vcpus",
        ),
        (
            Dir::config(
                "org = \"acme\"",
                &POOL.replace("memory_mib = 4096", "memory_mib = 64"),
            ),
            "memory_mib",
        ),
        (
            Dir::config("org = \"acme\"", &format!("{POOL}scratch_gib = 0\n")),
            "scratch_gib",
        ),
    ];
    for (text, key) in cases {
        let (kind, msg) = Dir::new().err(&text);
        assert!(
            matches!(kind, ConfigErrorKind::BadValue { .. }),
            "{key}: {msg}"
        );
        assert!(msg.contains(key), "{key}: {msg}");
    }
}

#[test]
fn the_backend_is_firecracker_unless_qemu_is_named() {
    use crate::vm::BackendChoice;
    let dir = Dir::new();
    let c = dir
        .load(&Dir::config("org = \"acme\"", POOL))
        .expect("valid config");
    assert_eq!(c.backend, BackendChoice::Firecracker);
    let qemu = format!(
        "backend = \"qemu\"\n{}",
        Dir::config("org = \"acme\"", POOL)
    );
    assert_eq!(dir.load(&qemu).expect("qemu").backend, BackendChoice::Qemu);
    let auto = format!(
        "backend = \"auto\"\n{}",
        Dir::config("org = \"acme\"", POOL)
    );
    let (_, msg) = dir.err(&auto);
    assert!(
        msg.contains("\"auto\"") && msg.contains("never picks"),
        "{msg}"
    );
}

/// Validation goes on past the first problem: three different value
/// errors are all reported, in file order, each at its value's line and
/// column and under its key's path.
#[test]
fn every_value_error_is_reported_at_its_line_and_column() {
    let text = "\
webhook_secret_file = \"webhook-secret\"

[github]
app_id = 123
private_key_file = \"app-key.pem\"
org = \"acme\"
reconcile_interval = \"soon\"

[[pool]]
name = \"small\"
labels = [\"self-hosted\"]
vcpus = 2
memory_mib = 4096

[[pool]]
name = \"big\"
labels = [\"self-hosted\", \"big\"]
vcpus = 3
memory_mib =   64
";
    let e = Dir::new().load(text).expect_err("three problems");
    let found: Vec<(String, Option<Position>)> = e
        .problems()
        .map(|p| (p.kind.key().unwrap_or("").to_string(), p.at))
        .collect();
    let at = |line, column| Some(Position { line, column });
    assert_eq!(
        found,
        [
            ("github.reconcile_interval".to_string(), at(7, 22)),
            ("pool[1].vcpus".to_string(), at(18, 9)),
            ("pool[1].memory_mib".to_string(), at(19, 16)),
        ],
        "{e}"
    );
    let msg = e.to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 3, "{msg}");
    let file = e.path.display().to_string();
    assert!(
        lines[0].starts_with(&format!(
            "{file}:7:22: github.reconcile_interval: \"soon\": "
        )),
        "{msg}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:18:9: pool[1].vcpus: "))
            && lines[1].contains("use 1 or an even number"),
        "{msg}"
    );
    assert!(
        lines[2].starts_with(&format!("{file}:19:16: pool[1].memory_mib: "))
            && lines[2].contains("use at least 2048"),
        "{msg}"
    );
}

/// A syntax error has the parser's position too.
#[test]
fn a_syntax_error_has_its_line_and_column() {
    let text = Dir::config("org = \"acme\"", &format!("{POOL}vcpu = 4\n"));
    let e = Dir::new().load(&text).expect_err("unknown key");
    let line = text.lines().position(|l| l == "vcpu = 4").expect("line") + 1;
    assert_eq!(e.first.at, Some(Position { line, column: 1 }), "{e}");
    assert!(matches!(e.kind(), ConfigErrorKind::Syntax { .. }), "{e}");
}
#[test]
fn the_log_format_is_text_unless_json_is_named() {
    let dir = Dir::new();
    let with = |line: &str| format!("{line}\n{}", Dir::config("org = \"acme\"", POOL));
    let c = dir.load(&with("")).expect("valid config");
    assert_eq!(c.log_format, LogFormat::Text);
    let c = dir.load(&with("log_format = \"json\"")).expect("json");
    assert_eq!(c.log_format, LogFormat::Json);
    let (kind, msg) = dir.err(&with("log_format = \"jsonl\""));
    assert!(matches!(kind, ConfigErrorKind::BadValue { .. }), "{msg}");
    assert!(
        msg.contains(
            "log_format: \"jsonl\" is not a log format: use \"text\" (the default) or \"json\""
        ),
        "{msg}"
    );
}

#[test]
fn pools_take_jobs_from_webhooks_unless_a_scale_set_is_named() {
    let dir = Dir::new();
    let c = dir
        .load(&Dir::config("org = \"acme\"", POOL))
        .expect("valid");
    assert_eq!(c.pools[0].source, JobSource::Webhook);
    // The daemon's default, with the scale set named after pool and host.
    let c = dir
        .load(&format!(
            "source = \"scale-set\"\n{}",
            Dir::config("org = \"acme\"", POOL)
        ))
        .expect("valid");
    let name = c.pools[0].source.scale_set().expect("a scale set");
    assert!(
        name.starts_with("kiln-small-") && name.len() > "kiln-small-".len(),
        "{name}"
    );
    // A pool's own source and name win.
    let own = format!("{POOL}source = \"scale-set\"\nscale_set = \"arm-fleet\"\n");
    let c = dir
        .load(&Dir::config("org = \"acme\"", &own))
        .expect("valid");
    assert_eq!(
        c.pools[0].source,
        JobSource::ScaleSet {
            name: "arm-fleet".into()
        }
    );
}

#[test]
fn a_daemon_of_scale_sets_needs_no_webhook_secret() {
    let dir = Dir::new();
    let without_secret = |rest: &str| {
        format!(
            "[github]\napp_id = 123\nprivate_key_file = \"app-key.pem\"\norg = \"acme\"\n{rest}"
        )
    };
    let scale_set_pool = format!("{POOL}source = \"scale-set\"\n");
    let c = dir
        .load(&without_secret(&scale_set_pool))
        .expect("valid without a webhook secret");
    assert!(c.webhook_secret.is_none());
    let (kind, msg) = dir.err(&without_secret(POOL));
    assert_eq!(kind.key(), Some("webhook_secret_file"), "{msg}");
    assert!(
        msg.contains("source = \"scale-set\""),
        "says what to do: {msg}"
    );
}

#[test]
fn bad_sources_and_scale_set_names_say_what_to_write() {
    let dir = Dir::new();
    let (kind, msg) = dir.err(&Dir::config(
        "org = \"acme\"",
        &format!("{POOL}source = \"queue\"\n"),
    ));
    assert_eq!(kind.key(), Some("pool[0].source"), "{msg}");
    assert!(msg.contains("\"scale-set\""), "{msg}");
    let (kind, msg) = dir.err(&Dir::config(
        "org = \"acme\"",
        &format!("{POOL}scale_set = \"x\"\n"),
    ));
    assert_eq!(kind.key(), Some("pool[0].scale_set"), "{msg}");
    assert!(msg.contains("add source = \"scale-set\""), "{msg}");
    let (kind, msg) = dir.err(&Dir::config(
        "org = \"acme\"",
        &format!("{POOL}source = \"scale-set\"\nscale_set = \"has space\"\n"),
    ));
    assert_eq!(kind.key(), Some("pool[0].scale_set"), "{msg}");
    let (kind, msg) = dir.err(&format!(
        "source = \"nope\"\n{}",
        Dir::config("org = \"acme\"", POOL)
    ));
    assert_eq!(kind.key(), Some("source"), "{msg}");
}

#[test]
fn emulate_is_off_unless_a_pool_says_so() {
    let c = Dir::new()
        .load(&Dir::config("org = \"acme\"", POOL))
        .expect("valid config");
    assert!(!c.pools[0].emulate);
    let pool = format!("{POOL}emulate = true\n");
    let c = Dir::new()
        .load(&Dir::config("org = \"acme\"", &pool))
        .expect("valid config");
    assert!(c.pools[0].emulate);
}
