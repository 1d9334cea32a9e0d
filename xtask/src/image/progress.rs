//! Progress for the long steps: a spinner on a terminal, plain lines
//! otherwise (CI logs).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    tty: bool,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Starts a step; finish it with [`Step::done`]. A step dropped without
    /// `done` (an error path) clears its spinner.
    pub fn step(&self, name: &str) -> Step {
        let bar = if self.tty {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
            {
                bar.set_style(style);
            }
            bar.set_prefix(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("==> {name}");
            None
        };
        Step {
            name: name.to_owned(),
            started: Instant::now(),
            bar,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Step {
    name: String,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl Step {
    /// A status line from the tool doing the work: the spinner's message on
    /// a terminal, an indented line otherwise.
    pub fn message(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(line.to_owned()),
            None => eprintln!("    {line}"),
        }
    }

    pub fn done(mut self, summary: &str) -> Duration {
        let took = self.started.elapsed();
        let line = format!("{} ({:.1} s) {summary}", self.name, took.as_secs_f64());
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("  ✓ {line}");
        took
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
