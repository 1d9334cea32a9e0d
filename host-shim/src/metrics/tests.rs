use super::*;

/// The sample line `name{labels} value` of `text`, if any.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn events_move_their_series() {
    let m = Metrics::new();
    m.job_received("small");
    m.job_received("small");
    m.job_started("small");
    m.job_finished("small", JobResult::Succeeded);
    m.job_finished("small", JobResult::VmFailed);
    m.github_answer("POST", 201, Some(4990));
    m.github_answer("POST", 201, None);
    m.github_error("timeout");
    m.boot_phase("kernel", Duration::from_millis(300));
    m.reconcile_pass(Some(3));
    m.reconcile_pass(None);
    let t = m.encode();
    assert_eq!(
        value(&t, "kiln_jobs_received_total{pool=\"small\"}"),
        Some(2.0),
        "{t}"
    );
    assert_eq!(
        value(&t, "kiln_jobs_started_total{pool=\"small\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            "kiln_jobs_finished_total{pool=\"small\",result=\"vm_failed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            "kiln_github_requests_total{method=\"POST\",status=\"201\"}"
        ),
        Some(2.0)
    );
    // The last answer without the header leaves the gauge as it was.
    assert_eq!(value(&t, "kiln_github_rate_limit_remaining"), Some(4990.0));
    assert_eq!(
        value(&t, "kiln_boot_phase_seconds_count{phase=\"kernel\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            "kiln_boot_phase_seconds_bucket{le=\"0.512\",phase=\"kernel\"}"
        )
        .or_else(|| value(
            &t,
            "kiln_boot_phase_seconds_bucket{phase=\"kernel\",le=\"0.512\"}"
        )),
        Some(1.0),
        "{t}"
    );
    assert_eq!(value(&t, "kiln_reconcile_jobs_found_total"), Some(3.0));
    assert_eq!(
        value(&t, "kiln_reconcile_passes_total{result=\"failed\"}"),
        Some(1.0)
    );
    assert!(t.ends_with("# EOF\n"), "{t}");
}

#[test]
fn scheduler_samples_set_gauges() {
    let m = Metrics::new();
    let sample = |queued, running, used| {
        let pools = [("small", queued, running)];
        m.sample_scheduler(&SchedulerSample {
            pools: &pools,
            vcpus: 8,
            vcpus_used: used,
            memory_mib: 1024,
            memory_mib_used: 512,
        });
    };
    sample(5, 2, 4);
    sample(3, 1, 2);
    let t = m.encode();
    assert_eq!(value(&t, "kiln_jobs_queued{pool=\"small\"}"), Some(3.0));
    assert_eq!(value(&t, "kiln_vms_running{pool=\"small\"}"), Some(1.0));
    assert_eq!(value(&t, "kiln_capacity_vcpus_in_use"), Some(2.0));
    assert_eq!(
        value(&t, "kiln_capacity_memory_bytes"),
        Some(1024.0 * 1048576.0)
    );
}

#[test]
fn egress_counters_advance_by_what_nft_counted_and_survive_a_reset() {
    let m = Metrics::new();
    m.sample_egress([("private", 10), ("spoofed", 0)]);
    m.sample_egress([("private", 15), ("spoofed", 2)]);
    // The table was made anew: nft counts from zero again.
    m.sample_egress([("private", 4), ("spoofed", 2)]);
    let t = m.encode();
    assert_eq!(
        value(&t, "kiln_egress_packets_total{category=\"private\"}"),
        Some(19.0),
        "{t}"
    );
    assert_eq!(
        value(&t, "kiln_egress_packets_total{category=\"spoofed\"}"),
        Some(2.0)
    );
}

#[test]
fn known_pools_show_zeros_before_their_first_job() {
    let m = Metrics::new();
    m.know_pools(["small", "big"]);
    let t = m.encode();
    assert_eq!(
        value(&t, "kiln_jobs_started_total{pool=\"big\"}"),
        Some(0.0),
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            "kiln_jobs_finished_total{pool=\"small\",result=\"no_vm\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &t,
            "kiln_jobs_cancelled_total{pool=\"small\",by=\"operator\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn scale_set_series_follow_the_listener() {
    let m = Metrics::new();
    m.scale_set_message("kiln-a", false, &[("assigned", 2), ("completed", 1)]);
    m.scale_set_message("kiln-a", true, &[("assigned", 1)]);
    m.scale_set_recovery("kiln-a", "session_gone");
    m.scale_set_capacity("kiln-a", 3);
    m.scale_set_session("kiln-a", true);
    let t = m.encode();
    for (series, want) in [
        (
            "kiln_scale_set_messages_total{scale_set=\"kiln-a\",kind=\"new\"}",
            1.0,
        ),
        (
            "kiln_scale_set_messages_total{scale_set=\"kiln-a\",kind=\"replayed\"}",
            1.0,
        ),
        (
            "kiln_scale_set_jobs_total{scale_set=\"kiln-a\",event=\"assigned\"}",
            3.0,
        ),
        (
            "kiln_scale_set_jobs_total{scale_set=\"kiln-a\",event=\"completed\"}",
            1.0,
        ),
        (
            "kiln_scale_set_recoveries_total{scale_set=\"kiln-a\",problem=\"session_gone\"}",
            1.0,
        ),
        ("kiln_scale_set_capacity{scale_set=\"kiln-a\"}", 3.0),
        ("kiln_scale_set_session{scale_set=\"kiln-a\"}", 1.0),
    ] {
        assert_eq!(value(&t, series), Some(want), "{series}\n{t}");
    }
    m.scale_set_session("kiln-a", false);
    assert_eq!(
        value(&m.encode(), "kiln_scale_set_session{scale_set=\"kiln-a\"}"),
        Some(0.0)
    );
}
