//! `ratchet bench loop`: the real research loop on its generated no-op
//! experiment, with the timing probes on.

mod common;

use common::{str_of, Dir};

/// The figures of a line, in order: words that are numbers (`12.5` of
/// `12.5 ms`, `3.2` of `3.2%,`), not names like `p50`.
fn numbers(line: &str) -> Vec<f64> {
    line.split_whitespace()
        .map(|w| w.trim_end_matches(['%', ',', ';', ':']))
        .filter_map(|w| w.parse::<f64>().ok())
        .collect()
}

#[test]
fn bench_loop_runs_the_loop_and_accounts_for_every_trial_and_all_slot_time() {
    let dir = Dir::with_fixture("noisy");
    let work = dir.path().join("loop");
    let out = dir.ratchet_ok(&[
        "bench",
        "loop",
        "--trials",
        "40",
        "--keep",
        "--dir",
        work.to_str().unwrap(),
    ]);
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
    };

    // What the bench counted is what lineage holds: every trial finished.
    let trials = dir.trials_in(&work.join("lineage"));
    assert!(trials.len() >= 40, "{out}");
    for t in &trials {
        assert!(
            ["kept", "discarded", "failed"].contains(&str_of(t, "status")),
            "{t:#}"
        );
    }
    let outcomes: f64 = numbers(line("outcomes:")).iter().sum();
    assert_eq!(outcomes as usize, trials.len(), "{out}");
    assert!(
        trials
            .iter()
            .any(|t| str_of(t, "status") == "kept" && t["specialist"] != "baseline"),
        "the bowl has improvements to keep: {out}"
    );

    // Every stage was timed, and ratchet's own time is more than nothing.
    for stage in [
        "propose",
        "record",
        "dispatch",
        "reap",
        "evaluate",
        "child processes",
    ] {
        let n = numbers(line(stage));
        assert_eq!(n.len(), 3, "{stage}: {out}");
    }
    for stage in [
        "propose",
        "record",
        "dispatch",
        "evaluate",
        "child processes",
    ] {
        assert!(numbers(line(stage))[0] > 0.0, "{stage} took no time: {out}");
    }
    let overhead = numbers(line("orchestration per trial"));
    assert!(overhead[0] > 0.0 && overhead[0] <= overhead[1], "{out}");

    // Busy, starved, held and idle slot time add up to all of it.
    let slot = numbers(line("slot time:"));
    let shares: f64 = slot[1..].iter().sum();
    assert!((shares - 100.0).abs() < 0.5, "{slot:?}: {out}");
    assert!(slot[1] > 0.0, "no busy slot time: {out}");
}
