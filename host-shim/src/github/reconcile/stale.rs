//! Stale registrations: runners in Kiln's scope whose name carries Kiln's
//! prefix (`kiln-<pool>-<job id>-<suffix>`, see
//! `serve::dispatch::runner::runner_name`), that GitHub shows `offline` and
//! not busy, and that the journal does not know, are deleted. A runner
//! without the prefix (someone else's), an online or busy one, or one Kiln
//! knows is never touched.
//!
//! `known(name)` must also cover runners being created: a JIT runner is
//! `offline` from `generate-jitconfig` until its VM's runner connects, so
//! the daemon journals the name before it registers the runner.
//!
//! Costs 1 counted request per 100 runners in scope plus one per deletion;
//! it is not conditional and not in the reconciler's budget: run it seldom
//! (every few minutes).

use crate::github::error::GithubError;
use crate::github::lists::Runner;
use crate::github::scope::RunnerScope;
use crate::github::GithubApp;

/// Every runner name Kiln makes starts with this.
pub const RUNNER_PREFIX: &str = "kiln-";

/// What a sweep did.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Runners deleted (or already gone when deleted).
    pub deleted: Vec<Runner>,
    /// Runners whose deletion failed, with the error; the sweep went on.
    pub failed: Vec<(Runner, GithubError)>,
    /// Runners listed in the scope.
    pub listed: usize,
}

/// Whether `runner` is a stale Kiln registration: `prefix`ed name, `offline`,
/// not busy, and not `known`.
pub fn is_stale(runner: &Runner, prefix: &str, known: impl Fn(&str) -> bool) -> bool {
    !prefix.is_empty()
        && runner.name.starts_with(prefix)
        && runner.status == "offline"
        && !runner.busy
        && !known(&runner.name)
}

/// Lists `scope`'s runners and deletes the stale ones ([`is_stale`] with
/// `prefix`, normally [`RUNNER_PREFIX`]). Errors only when the list cannot
/// be read.
pub async fn sweep_stale_runners(
    app: &GithubApp,
    installation_id: u64,
    scope: &RunnerScope,
    prefix: &str,
    known: impl Fn(&str) -> bool,
) -> Result<SweepReport, GithubError> {
    let runners = app.runners(installation_id, scope).await?;
    let mut report = SweepReport {
        listed: runners.len(),
        ..SweepReport::default()
    };
    for runner in runners {
        if !is_stale(&runner, prefix, &known) {
            continue;
        }
        match app.delete_runner(installation_id, scope, runner.id).await {
            Ok(()) => {
                tracing::info!(%scope, runner_id = runner.id, name = runner.name, "deleted a stale runner registration");
                report.deleted.push(runner);
            }
            Err(e) => {
                tracing::warn!(%scope, runner_id = runner.id, name = runner.name, error = %e, "cannot delete a stale runner registration");
                report.failed.push((runner, e));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(name: &str, status: &str, busy: bool) -> Runner {
        Runner {
            id: 1,
            name: name.into(),
            status: status.into(),
            busy,
        }
    }

    #[test]
    fn only_prefixed_offline_idle_unknown_runners_are_stale() {
        let unknown = |_: &str| false;
        assert!(is_stale(
            &runner("kiln-small-1-abc", "offline", false),
            RUNNER_PREFIX,
            unknown
        ));
        assert!(!is_stale(
            &runner("ci-box-1", "offline", false),
            RUNNER_PREFIX,
            unknown
        ));
        assert!(!is_stale(
            &runner("Kiln-small-1", "offline", false),
            RUNNER_PREFIX,
            unknown
        ));
        assert!(!is_stale(
            &runner("kiln-small-1-abc", "online", false),
            RUNNER_PREFIX,
            unknown
        ));
        assert!(!is_stale(
            &runner("kiln-small-1-abc", "offline", true),
            RUNNER_PREFIX,
            unknown
        ));
        assert!(!is_stale(
            &runner("kiln-small-1-abc", "offline", false),
            RUNNER_PREFIX,
            |n| n == "kiln-small-1-abc"
        ));
        assert!(!is_stale(
            &runner("anything", "offline", false),
            "",
            unknown
        ));
    }
}
