//! `[daemon]` stop rules: a real daemon process on the faulty fixture stops
//! by itself when a rule fires, drains, exits 0 and leaves every trial
//! with one outcome.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{daemon_log, start_daemon, stderr, str_of, wait_for, Dir};

const TERMINAL: [&str; 4] = ["kept", "discarded", "failed", "interrupted"];

fn config(dir: &Dir, specialists: &[(&str, &str)], rules: &str) {
    let mut text = format!(
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 1\nseed = 1\n\
         drain_timeout_secs = 10\n{rules}"
    );
    for (name, surface) in specialists {
        text.push_str(&format!(
            "\n[[specialist]]\nname = \"{name}\"\nsurface = \"{surface}\"\nkind = \"search\"\n"
        ));
    }
    dir.write("specialists.toml", &text);
}

/// The daemon's exit status, waiting at most `secs`; a daemon still running
/// then is killed and fails the test.
fn exits_within(mut child: Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not stop by itself within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_consistent(dir: &Dir) -> Vec<serde_json::Value> {
    let trials = dir.trials();
    for t in &trials {
        assert!(
            TERMINAL.contains(&str_of(t, "status")),
            "every trial has its outcome after a stop: {t:#}"
        );
    }
    trials
}

#[test]
fn no_keep_for_a_grace_period_stops_the_daemon() {
    // The fault surface's values all fail (crash, hang, NaN, no metric):
    // after the baseline no trial is kept.
    let dir = Dir::with_fixture("faulty");
    config(
        &dir,
        &[("fault", "fault")],
        "stop_when_no_keep_for = \"8s\"\n",
    );
    let started = Instant::now();
    let child = start_daemon(&dir, &[]);
    // While it runs, `status` answers without a stop.
    let status = wait_for("the daemon to answer", 30, || {
        let out = dir.ratchet(&["status"]);
        out.status.success().then(|| common::stdout(&out))
    });
    assert!(!status.contains("stopping:"), "{status}");
    let code = exits_within(child, 120);
    assert_eq!(code.code(), Some(0), "{}", daemon_log(&dir));
    let log = daemon_log(&dir);
    assert!(
        log.contains("a stop rule fired")
            && log.contains("stop_when_no_keep_for = \"8s\": no trial was kept for that long"),
        "the log says which rule fired: {log}"
    );
    assert!(started.elapsed() >= Duration::from_secs(8));
    let trials = assert_consistent(&dir);
    let kept: Vec<_> = trials
        .iter()
        .filter(|t| str_of(t, "status") == "kept")
        .collect();
    assert_eq!(kept.len(), 1, "the baseline alone: {trials:#?}");
    assert_eq!(str_of(kept[0], "specialist"), "baseline");
    assert!(
        trials.len() >= 2,
        "the fault specialist's trials ran in the grace period"
    );
}

#[test]
fn the_trial_cap_stops_the_daemon_once_its_trials_are_decided_and_holds_across_a_restart() {
    let dir = Dir::with_fixture("faulty");
    config(&dir, &[("x", "search")], "stop_after_trials = 4\n");
    let code = exits_within(start_daemon(&dir, &[]), 120);
    assert_eq!(code.code(), Some(0), "{}", daemon_log(&dir));
    assert!(
        daemon_log(&dir).contains("stop_after_trials = 4: lineage holds 4 trials"),
        "{}",
        daemon_log(&dir)
    );
    assert_eq!(assert_consistent(&dir).len(), 4);

    // Started again on the same lineage, it asks for nothing and stops.
    let code = exits_within(start_daemon(&dir, &[]), 60);
    assert_eq!(code.code(), Some(0), "{}", daemon_log(&dir));
    assert_eq!(assert_consistent(&dir).len(), 4, "no trial past the cap");
}

#[test]
fn a_stop_rule_that_is_not_a_duration_is_refused() {
    let dir = Dir::with_fixture("faulty");
    config(
        &dir,
        &[("x", "search")],
        "stop_after = \"two days\"\nstop_when_no_keep_for = \"0s\"\nstop_after_trials = 0\n",
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for want in [
        "daemon.stop_after: \"two days\" is not a duration",
        "daemon.stop_when_no_keep_for: must be longer than zero",
        "daemon.stop_after_trials: must be at least 1",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    config(
        &dir,
        &[("x", "search")],
        "stop_after = \"1h 30m\"\nstop_when_no_keep_for = \"6h\"\nstop_after_trials = 500\n",
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
