//! The Prometheus text format (0.0.4) from OpenMetrics text, for scrapers
//! and tools that ask for it (`promtool check metrics`, an `Accept` without
//! `application/openmetrics-text`). The two differ where Kiln's output
//! does: a counter's `# HELP`/`# TYPE` name the family in OpenMetrics
//! (`kiln_x`) but the sample in Prometheus text (`kiln_x_total`), and
//! Prometheus text has no `# UNIT` and no `# EOF`.

/// The content type of [`to_prometheus_text`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text as Prometheus text.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's `# HELP`, held until its `# TYPE` says whether the name
    // takes `_total`.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if kind == "counter" { "_total" } else { "" };
            match help.take() {
                Some(h) if h.0 == name => flush_help(&mut out, Some(h), suffix),
                other => flush_help(&mut out, other, ""),
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        flush_help(&mut out, help.take(), "");
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_units_and_eof_go() {
        let om = "# HELP kiln_a Jobs.\n# TYPE kiln_a counter\nkiln_a_total{pool=\"x\"} 1\n\
                  # HELP kiln_b_seconds Time.\n# TYPE kiln_b_seconds histogram\n# UNIT kiln_b_seconds seconds\n\
                  kiln_b_seconds_sum 0.5\nkiln_b_seconds_count 1\n\
                  # HELP kiln_c Now.\n# TYPE kiln_c gauge\nkiln_c 3\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP kiln_a_total Jobs.\n# TYPE kiln_a_total counter\nkiln_a_total{pool=\"x\"} 1\n\
             # HELP kiln_b_seconds Time.\n# TYPE kiln_b_seconds histogram\n\
             kiln_b_seconds_sum 0.5\nkiln_b_seconds_count 1\n\
             # HELP kiln_c Now.\n# TYPE kiln_c gauge\nkiln_c 3\n"
        );
    }
}
