//! `kiln doctor --config FILE`: the config loads as `kiln serve` loads it;
//! each problem is a finding, at its line and column as `kiln config
//! check` prints it.

use std::path::Path;

use super::{Finding, Level};
use crate::config::Config;

/// The findings about the config at `path`, and the config when it loads.
pub fn check_config(path: &Path) -> (Vec<Finding>, Option<Config>) {
    match Config::load(path) {
        Ok(c) => {
            let pools: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
            let detail = format!(
                "{} loads: runners in {}, pools {}",
                path.display(),
                c.github.scope,
                pools.join(", ")
            );
            (vec![Finding::ok("config", detail)], Some(c))
        }
        Err(e) => {
            let fix = format!(
                "edit {}; `kiln config check {}` lists every problem",
                path.display(),
                path.display()
            );
            // One finding per problem: Display gives one line each.
            let findings = e
                .to_string()
                .lines()
                .map(|line| Finding::problem("config", Level::Fail, line, fix.clone()))
                .collect();
            (findings, None)
        }
    }
}
