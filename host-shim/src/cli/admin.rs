//! `kiln ps`, `kiln logs` and `kiln cancel`: a running `kiln serve`'s jobs,
//! over its admin socket (`<runtime dir>/admin.sock`, root only; see
//! [`crate::admin`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::admin::client::AdminClient;
use crate::admin::wire::Ps;
use crate::admin::{socket_path, AdminError};
use crate::job::board::Stage;
use crate::vm::RuntimeDirs;

#[derive(clap::Args, Debug)]
pub struct SocketArg {
    /// kiln serve's admin socket (default: admin.sock in KILN_RUNTIME_DIR, or /run/kiln for root).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Also the jobs that finished lately.
    #[arg(long, short)]
    pub all: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// A job id or a VM id (as kiln ps shows them).
    #[arg(value_name = "JOB|VM")]
    pub id: String,
    /// Keep printing what the job writes until it is over.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The job id (as kiln ps shows it).
    #[arg(value_name = "JOB")]
    pub job_id: u64,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn ps(args: PsArgs) -> ExitCode {
    run("kiln ps", &args.socket, |client| async move {
        let ps = client.ps(args.all).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&ps)?);
        } else {
            print!("{}", table(&ps));
        }
        Ok(())
    })
}

pub fn logs(args: LogsArgs) -> ExitCode {
    run("kiln logs", &args.socket, |client| async move {
        let mut out = tokio::io::stdout();
        client.logs(&args.id, args.follow, &mut out).await?;
        Ok(())
    })
}

pub fn cancel(args: CancelArgs) -> ExitCode {
    run("kiln cancel", &args.socket, |client| async move {
        let answer = client.cancel(args.job_id).await?;
        let text = match answer.result.as_str() {
            "stopping" => "its runner is being stopped (SIGTERM, then SIGKILL after the grace); the VM goes when it has",
            "dequeued" => "it was waiting and is no longer queued here (GitHub keeps it queued)",
            "already_over" => "it was already over",
            other => other,
        };
        println!("job {}: {text}", answer.job_id);
        Ok(())
    })
}

/// Runs `f` with a client of the socket on a small runtime; errors are
/// printed after `what`.
fn run<F, Fut>(what: &str, socket: &SocketArg, f: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let result = socket_of(socket).and_then(|path| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(f(AdminClient::new(&path)))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<AdminError>() {
                Some(AdminError::Refused { message, .. }) => eprintln!("{what}: {message}"),
                _ => eprintln!("{what}: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn socket_of(arg: &SocketArg) -> anyhow::Result<PathBuf> {
    match &arg.socket {
        Some(p) => Ok(p.clone()),
        None => Ok(socket_path(&RuntimeDirs::from_env()?.runtime)),
    }
}

/// `kiln ps`'s table: running (and finished) jobs, then queued ones.
fn table(ps: &Ps) -> String {
    let mut rows = vec![[
        "JOB".to_owned(),
        "POOL".to_owned(),
        "REPOSITORY".to_owned(),
        "STATE".to_owned(),
        "AGE".to_owned(),
        "VM".to_owned(),
        "BOOT".to_owned(),
    ]];
    for j in &ps.jobs {
        let state = match (&j.outcome, j.cancelled, &j.waiting_for) {
            (Some(how), _, _) => format!("done: {how}"),
            (None, true, _) => format!("{} (cancelling)", stage_name(j.stage)),
            (None, false, Some(lacking)) if j.stage == Stage::Waiting => {
                format!("waiting for {lacking}")
            }
            (None, false, _) => stage_name(j.stage).to_owned(),
        };
        let boot: Vec<String> = j
            .milestones
            .iter()
            .map(|m| format!("{} {}", m.name, secs(m.ms as f64 / 1000.0)))
            .collect();
        rows.push([
            j.job_id.to_string(),
            j.pool.clone(),
            j.repository.clone(),
            state,
            age(j.age_secs),
            j.vm.clone().unwrap_or_else(|| "-".into()),
            boot.join(", "),
        ]);
    }
    for q in &ps.queued {
        rows.push([
            q.job_id.to_string(),
            q.pool.clone(),
            q.repository.clone(),
            "queued".into(),
            age(q.age_secs),
            "-".into(),
            String::new(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let c = &ps.capacity;
    out.push_str(&format!(
        "capacity: {}/{} vCPUs, {}/{} MiB in use; {} running, {} queued\n",
        c.vcpus_used,
        c.vcpus,
        c.memory_mib_used,
        c.memory_mib,
        ps.jobs.iter().filter(|j| j.outcome.is_none()).count(),
        ps.queued.len()
    ));
    out
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Checking => "checking",
        Stage::Registering => "registering",
        Stage::Booting => "booting",
        Stage::Waiting => "waiting",
        Stage::Running => "running",
        Stage::TearingDown => "tearing down",
        Stage::Done => "done",
    }
}

fn secs(s: f64) -> String {
    format!("{s:.2}s")
}

/// `42s`, `3m05s`, `2h10m`.
fn age(secs: f64) -> String {
    // Whole seconds are what a person reads.
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::wire::{Capacity, Queued};
    use crate::job::board::{Milestone, Row};

    #[test]
    fn the_table_shows_running_and_queued_jobs_with_their_boot() {
        let ps = Ps {
            jobs: vec![Row {
                job_id: 41,
                run_id: 1,
                repository: "acme/widgets".into(),
                pool: "small".into(),
                runner: "kiln-small-41-x".into(),
                stage: Stage::Running,
                started_unix: 0,
                age_secs: 125.4,
                vm: Some("kiln-abc".into()),
                milestones: vec![Milestone {
                    name: "runner_started".into(),
                    ms: 1500,
                }],
                log: None,
                outcome: None,
                cancelled: false,
                waiting_for: None,
            }],
            queued: vec![Queued {
                job_id: 42,
                run_id: 1,
                repository: "acme/widgets".into(),
                pool: "big".into(),
                age_secs: 3.0,
            }],
            capacity: Capacity {
                vcpus: 8,
                vcpus_used: 2,
                memory_mib: 8192,
                memory_mib_used: 1024,
            },
        };
        let t = table(&ps);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("JOB  POOL   REPOSITORY"), "{t}");
        assert!(
            lines[1].contains("running") && lines[1].contains("2m05s"),
            "{t}"
        );
        assert!(
            lines[1].contains("kiln-abc") && lines[1].ends_with("runner_started 1.50s"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("42") && lines[2].contains("queued"),
            "{t}"
        );
        assert_eq!(
            lines[3],
            "capacity: 2/8 vCPUs, 1024/8192 MiB in use; 1 running, 1 queued"
        );
    }

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(61.0), "1m01s");
        assert_eq!(age(7300.0), "2h01m");
    }
}
