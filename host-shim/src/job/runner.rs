//! What a job's VM runs: the runner's name and the [`Job`] kiln-init gets.
//! Pure, so the rules that matter (the JIT config only in the environment,
//! sudo only when the pool allows it, the deadline) are unit-tested.

use std::time::Duration;

use kiln_protocol::{CommandSpec, EnvVar, Job, UserSpec, WallClock, JIT_CONFIG_ENV};

use crate::secret::Secret;
use crate::vm::ImageUser;

/// Where `cargo xtask image` installs the actions runner (see
/// `xtask/src/image/runner.rs`). It reads its JIT config from
/// [`JIT_CONFIG_ENV`], so nothing secret is in its argv.
pub const RUNNER_COMMAND: &str = "/opt/actions-runner/run.sh";
/// The runner's work directory, relative to its install directory.
pub const WORK_FOLDER: &str = "_work";
/// GitHub's limit for runner names.
pub const MAX_RUNNER_NAME: usize = 64;
/// Hex digits of randomness at the end of a runner name.
pub const SUFFIX_LEN: usize = 6;

/// `kiln-<pool>-<job id>-<suffix>`: unique among the scope's runners
/// (`suffix` is random), and readable in GitHub's runner list. The pool's
/// name is shortened when the whole would pass [`MAX_RUNNER_NAME`].
pub fn runner_name(pool: &str, job_id: u64, suffix: &str) -> String {
    let tail = format!("-{job_id}-{suffix}");
    let room = MAX_RUNNER_NAME.saturating_sub("kiln-".len() + tail.len());
    // Pool names are ASCII (config validation), so byte slicing is safe;
    // `get` keeps it safe should that ever change.
    let pool = pool.get(..room.min(pool.len())).unwrap_or("pool");
    format!("kiln-{pool}{tail}")
}

/// Whether `name` is shaped as [`runner_name`] makes them for pool `pool`
/// (its name possibly shortened): the start-up sweep deletes only those,
/// so that another host's runners (a scale set's, say) are left alone.
pub fn is_named_for(name: &str, pool: &str) -> bool {
    let Some(rest) = name.strip_prefix("kiln-") else {
        return false;
    };
    let mut parts = rest.rsplitn(3, '-');
    let (Some(suffix), Some(job), Some(named_pool)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    suffix.len() == SUFFIX_LEN
        && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        && !job.is_empty()
        && job.bytes().all(|b| b.is_ascii_digit())
        && !named_pool.is_empty()
        && pool.starts_with(named_pool)
}

/// [`SUFFIX_LEN`] random hex digits.
pub fn random_suffix() -> std::io::Result<String> {
    let mut bytes = [0u8; SUFFIX_LEN / 2];
    crate::vm::random::try_fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The guest's hostname: the runner's name where RFC 1123 allows it
/// (pool names may hold `_`, host names may not).
pub fn hostname_for(runner: &str) -> String {
    runner
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Everything about a runner's job that is not secret.
#[derive(Debug, Clone)]
pub struct RunnerSpec {
    /// The program to start; [`RUNNER_COMMAND`] in production.
    pub command: String,
    pub user: ImageUser,
    /// Added to the user's groups: the image's `kiln-sudo` gid when the
    /// pool has `sudo = true`, else `None`.
    pub sudo_gid: Option<u32>,
    pub hostname: String,
    /// How long the runner may run (the pool's `job_timeout`).
    pub deadline: Duration,
    /// SIGTERM to SIGKILL at the deadline.
    pub grace: Duration,
}

/// The [`Job`] that starts the runner. The JIT config goes into
/// [`JIT_CONFIG_ENV`] and nowhere else: not argv, not the hostname, not the
/// kernel command line (the VM layer never puts the job there).
pub fn runner_job(spec: &RunnerSpec, jit_config: &Secret, entropy: Vec<u8>) -> Job {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Job {
        protocol_version: kiln_protocol::PROTOCOL_VERSION,
        command: CommandSpec {
            program: spec.command.clone(),
            args: Vec::new(),
        },
        env: vec![EnvVar::new(JIT_CONFIG_ENV, jit_config.expose())],
        user: UserSpec {
            name: spec.user.name.clone(),
            uid: spec.user.uid,
            gid: spec.user.gid,
            groups: spec.sudo_gid.into_iter().collect(),
            home: spec.user.home.clone(),
        },
        workdir: spec.user.home.clone(),
        hostname: spec.hostname.clone(),
        dns: Vec::new(),
        network: None,
        clock: WallClock::now(),
        entropy,
        rlimits: Vec::new(),
        deadline_ms: ms(spec.deadline),
        grace_ms: ms(spec.grace),
    }
}

/// A pool's proxy for the job: both spellings, as tools read either.
/// Loopback stays direct.
pub fn proxy_env(url: &str) -> Vec<EnvVar> {
    let no_proxy = "localhost,127.0.0.1,::1";
    vec![
        EnvVar::new("HTTP_PROXY", url),
        EnvVar::new("HTTPS_PROXY", url),
        EnvVar::new("http_proxy", url),
        EnvVar::new("https_proxy", url),
        EnvVar::new("NO_PROXY", no_proxy),
        EnvVar::new("no_proxy", no_proxy),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_names_are_recognised_per_pool() {
        let name = runner_name("small", 1234, "a1b2c3");
        assert!(is_named_for(&name, "small"));
        assert!(!is_named_for(&name, "big"));
        assert!(!is_named_for("kiln-small-hostA-12-a1b2c3x", "small"));
        assert!(!is_named_for("kiln-small-x-a1b2c3", "small"));
        assert!(!is_named_for("runner-small-1-a1b2c3", "small"));
        let long = "p".repeat(60);
        assert!(is_named_for(&runner_name(&long, 99, "a1b2c3"), &long));
    }

    #[test]
    fn runner_names_are_bounded_and_readable() {
        assert_eq!(runner_name("small", 42, "a1b2c3"), "kiln-small-42-a1b2c3");
        let long_pool = "p".repeat(32);
        let name = runner_name(&long_pool, u64::MAX, "a1b2c3");
        assert!(name.len() <= MAX_RUNNER_NAME, "{name} ({})", name.len());
        assert!(name.starts_with("kiln-ppp") && name.ends_with("-18446744073709551615-a1b2c3"));
        // A typical id keeps the whole pool name.
        let name = runner_name(&long_pool, 31_415_926_535, "a1b2c3");
        assert_eq!(name, format!("kiln-{long_pool}-31415926535-a1b2c3"));
        assert!(name.len() <= MAX_RUNNER_NAME);
    }

    #[test]
    fn suffixes_are_random_hex() {
        let a = random_suffix().expect("random");
        let b = random_suffix().expect("random");
        assert_eq!(a.len(), SUFFIX_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn hostnames_are_valid_even_for_pools_with_underscores() {
        let h = hostname_for(&runner_name("big_gpu", 7, "00ff00"));
        assert_eq!(h, "kiln-big-gpu-7-00ff00");
        assert!(kiln_protocol::job::valid_hostname(&h));
    }

    fn spec(sudo_gid: Option<u32>) -> RunnerSpec {
        RunnerSpec {
            command: RUNNER_COMMAND.into(),
            user: ImageUser::default(),
            sudo_gid,
            hostname: "kiln-small-1-abcdef".into(),
            deadline: Duration::from_secs(6 * 3600),
            grace: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_jit_config_is_only_in_the_environment() {
        let secret = "eyJzZWNyZXQiOiJqaXQtY29uZmlnIn0=";
        let job = runner_job(&spec(None), &Secret::new(secret), vec![1; 64]);
        job.validate().expect("valid job");
        assert_eq!(job.env, vec![EnvVar::new(JIT_CONFIG_ENV, secret)]);
        assert_eq!(job.command.program, RUNNER_COMMAND);
        assert!(job.command.args.is_empty());
        // Nowhere else in the job, and not in its Debug form.
        let mut rest = job.clone();
        rest.env.clear();
        let encoded = serde_json::to_string(&rest).expect("encode");
        assert!(!encoded.contains(secret), "{encoded}");
        assert!(!format!("{job:?}").contains(secret));
    }

    #[test]
    fn runs_as_the_image_user_with_sudo_only_when_asked() {
        let job = runner_job(&spec(None), &Secret::new("x"), vec![1; 64]);
        assert_eq!((job.user.uid, job.user.gid), (1001, 1001));
        assert_eq!(job.user.name, "runner");
        assert!(job.user.groups.is_empty());
        assert_eq!(job.workdir, "/home/runner");
        let job = runner_job(&spec(Some(1100)), &Secret::new("x"), vec![1; 64]);
        assert_eq!(job.user.groups, [1100]);
    }

    #[test]
    fn deadline_and_grace_are_the_pools() {
        let job = runner_job(&spec(None), &Secret::new("x"), vec![1; 64]);
        assert_eq!(job.deadline_ms, 6 * 3600 * 1000);
        assert_eq!(job.grace_ms, 30_000);
        assert_eq!(job.hostname, "kiln-small-1-abcdef");
    }
}
