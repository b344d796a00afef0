//! The research loop end to end: the real binary on a fixture experiment with
//! real child processes, a real sled lineage, read back through the CLI.

mod common;

use common::{group_alive, pid_alive, str_of, Dir};
use serde_json::Value;

const TERMINAL: [&str; 4] = ["kept", "discarded", "failed", "interrupted"];

fn mode(t: &Value) -> &str {
    t["config"]["fault.mode"].as_str().unwrap()
}

#[test]
fn every_trial_ends_and_the_incumbent_is_the_best_kept_score() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(2, &[("x", "search"), ("fault", "fault")]);
    let out = dir.ratchet_ok(&["run", "--trials", "12"]);
    assert!(out.contains("done: 12 trial(s)"), "{out}");

    let trials = dir.trials();
    assert_eq!(trials.len(), 12, "{trials:#?}");
    for t in &trials {
        assert!(
            TERMINAL.contains(&str_of(t, "status")),
            "non-terminal trial {t:#}"
        );
        assert!(t["history"].as_array().unwrap().len() >= 2);
    }
    // The train command printed loss=-1000; only the eval's number may be the score.
    assert!(trials.iter().all(|t| t["score"].as_f64() != Some(-1000.0)));
    // The budget reached the train command.
    for t in trials.iter().filter(|t| !t["train"].is_null()) {
        assert_eq!(
            t["train"]["metrics"]["budget_secs"].as_f64(),
            Some(1.0),
            "{t:#}"
        );
    }

    let kept: Vec<&Value> = trials
        .iter()
        .filter(|t| str_of(t, "status") == "kept")
        .collect();
    assert!(!kept.is_empty());
    let best = kept
        .iter()
        .map(|t| t["score"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    let inc: Value = serde_json::from_str(&dir.ratchet_ok(&["lineage", "best", "--json"])).unwrap();
    assert_eq!(inc["score"].as_f64(), Some(best));
    // A ratchet: each keep beats every keep before it.
    let scores: Vec<f64> = kept.iter().map(|t| t["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[1] < w[0]), "{scores:?}");
    // Nothing but a clean run is ever kept.
    assert!(kept.iter().all(|t| mode(t) == "none"));

    // Never more train processes alive at once than slots.
    let spans: Vec<(u64, u64)> = trials
        .iter()
        .filter(|t| !t["train"].is_null())
        .map(|t| {
            let s = t["train"]["started_ms"].as_u64().unwrap();
            (s, s + t["train"]["duration_ms"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(spans.len(), 12);
    let most = spans
        .iter()
        .map(|&(a, _)| spans.iter().filter(|&&(s, e)| s <= a && a < e).count())
        .max()
        .unwrap();
    assert_eq!(
        most, 2,
        "2 slots must run 2 trials at once, never more: {spans:?}"
    );
    // Every configuration measured once.
    let mut configs: Vec<String> = trials.iter().map(|t| t["config"].to_string()).collect();
    configs.sort();
    configs.dedup();
    assert_eq!(configs.len(), 12);
}

#[test]
fn failure_regions_get_their_labels_and_process_groups_die() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(2, &[("fault", "fault")]);
    // No trial budget: the fault specialist runs out of unmeasured values and the run ends.
    let out = dir.ratchet_ok(&["run"]);
    let trials = dir.trials();
    assert_eq!(trials.len(), 5, "baseline + 4 faults: {out}\n{trials:#?}");
    let by_mode = |m: &str| {
        trials
            .iter()
            .find(|t| mode(t) == m)
            .unwrap_or_else(|| panic!("no trial with mode {m}"))
    };

    assert_eq!(str_of(by_mode("none"), "status"), "kept");
    let crash = by_mode("crash");
    assert_eq!(
        (str_of(crash, "status"), str_of(crash, "label")),
        ("failed", "crash")
    );
    assert!(
        str_of(crash, "detail").contains("exit status 3"),
        "{crash:#}"
    );
    assert_eq!(str_of(by_mode("nan"), "label"), "diverged");
    assert_eq!(str_of(by_mode("nometric"), "label"), "metric_missing");

    let hang = by_mode("hang");
    assert_eq!(str_of(hang, "label"), "budget_overrun", "{hang:#}");
    assert_eq!(hang["train"]["timed_out"], true);
    let pgid = hang["pgid"]
        .as_i64()
        .expect("the process group is recorded");
    assert!(
        !group_alive(pgid),
        "process group {pgid} of the hung trial survived"
    );
    let trial_dir = std::path::PathBuf::from(str_of(hang, "trial_dir"));
    let grandchild: i64 = std::fs::read_to_string(trial_dir.join("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !pid_alive(grandchild),
        "grandchild {grandchild} survived the timeout"
    );

    // Logs are captured per trial.
    let stderr = std::fs::read_to_string(
        trial_dir
            .parent()
            .unwrap()
            .join(format!("{:06}", crash["id"].as_u64().unwrap()))
            .join("train.stderr"),
    )
    .unwrap();
    assert!(stderr.contains("crashing on purpose"), "{stderr}");
}

#[test]
fn lineage_survives_a_restart_and_ids_continue() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    let piped = dir.ratchet_ok(&["run", "--trials", "3"]);
    assert!(
        !piped.contains(" elapsed") && !piped.contains('\r'),
        "no status line when stdout is not a terminal:\n{piped}"
    );
    let first = dir.trials();
    dir.ratchet_ok(&["run", "--trials", "2"]);
    let all = dir.trials();
    assert_eq!(all.len(), 5);
    assert_eq!(&all[..3], &first[..], "history changed across the restart");
    let ids: Vec<u64> = all.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        all.iter()
            .filter(|t| str_of(t, "specialist") == "baseline")
            .count(),
        1,
        "the baseline ran twice"
    );
    // The second run proposes against the incumbent the first one left.
    let inc: Value = serde_json::from_str(&dir.ratchet_ok(&["lineage", "best", "--json"])).unwrap();
    assert!(all[3]["parent"].as_u64().is_some());
    assert!(all[3]["parent"].as_u64().unwrap() <= inc["trial"].as_u64().unwrap());

    let show = dir.ratchet_ok(&["lineage", "show", "2"]);
    assert!(
        show.contains("hypothesis:") && show.contains("history:"),
        "{show}"
    );
    let table = dir.ratchet_ok(&["lineage", "list"]);
    assert_eq!(table.lines().count(), 6, "{table}");
}

/// Starts `ratchet run --trials 1` on a fixture whose baseline hangs, and
/// returns once that trial's processes are running.
fn start_hanging_run(dir: &Dir) -> std::process::Child {
    dir.specialists(1, &[("x", "search")]);
    dir.write(
        "experiment/recipe.toml",
        "[search]\nx = 5.5\n\n[fault]\nmode = \"hang\"\n",
    );
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &exp.replace("timeout_secs = 2", "timeout_secs = 60"),
    );
    run_until_the_hang_starts(dir, "1", "the trial never started")
}

/// Starts `ratchet run --trials <trials>` and waits for trial 1's hanging
/// grandchild to write its pid.
fn run_until_the_hang_starts(dir: &Dir, trials: &str, what: &str) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .args(["run", "--trials", trials])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = dir.path().join("lineage/trials/000001/grandchild.pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
fn sigterm_stops_the_run_kills_the_trial_and_records_it() {
    let dir = Dir::with_fixture("faulty");
    let mut child = start_hanging_run(&dir);
    let marker = dir.path().join("lineage/trials/000001/grandchild.pid");
    let grandchild: i64 = std::fs::read_to_string(marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let trials = dir.trials();
    let t = &trials[0];
    assert_eq!(
        (str_of(t, "status"), str_of(t, "label")),
        ("interrupted", "interrupted")
    );
    assert!(
        !pid_alive(grandchild),
        "the trial's grandchild survived SIGTERM of ratchet"
    );
}

#[test]
fn a_killed_ratchet_leaves_nothing_running_and_runs_the_trial_again_at_the_next_start() {
    let dir = Dir::with_fixture("faulty");
    let mut child = start_hanging_run(&dir);
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();

    let before = dir.trials();
    assert_eq!(str_of(&before[0], "status"), "running");
    assert_eq!(before[0]["attempt"].as_u64(), Some(1));
    let pgid = before[0]["pgid"].as_i64().unwrap();
    assert!(
        group_alive(pgid),
        "the orphaned trial should still be running before recovery"
    );

    // The next start kills the orphan and runs the trial again (attempt 2).
    let marker = dir.path().join("lineage/trials/000001/grandchild.pid");
    std::fs::remove_file(&marker).unwrap();
    let again = run_until_the_hang_starts(&dir, "0", "the recovered trial never started again");
    assert!(
        !group_alive(pgid),
        "recovery left the orphaned process group {pgid} alive"
    );
    let pid = nix::unistd::Pid::from_raw(again.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut again = again;
    again.wait().unwrap();
    let after = dir.trials();
    assert_eq!(after.len(), 1, "recovery re-runs the trial, it adds none");
    assert_eq!(
        (str_of(&after[0], "status"), after[0]["attempt"].as_u64()),
        ("interrupted", Some(2))
    );
    assert_ne!(after[0]["pgid"].as_i64(), Some(pgid));
}

#[test]
fn the_size_and_quality_gates_label_trials_and_keep_their_scores() {
    // The fixture's eval prints artifact_bytes=10 and the baseline scores 6.75.
    for (gate, label) in [
        ("max_artifact_bytes = 5", "size_failure"),
        ("min_quality = 1.0", "gate_miss"),
    ] {
        let dir = Dir::with_fixture("faulty");
        dir.specialists(1, &[("x", "search")]);
        let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
        dir.write(
            "experiment/experiment.toml",
            &format!("{exp}\n[gates]\n{gate}\n"),
        );
        dir.ratchet_ok(&["run", "--trials", "1"]);
        let t = &dir.trials()[0];
        assert_eq!(str_of(t, "label"), label, "{t:#}");
        assert_eq!(t["score"].as_f64(), Some(6.75), "{t:#}");
        let best = dir.ratchet(&["lineage", "best"]);
        assert!(
            !best.status.success(),
            "a failed trial is never the incumbent"
        );
    }
}

#[test]
fn on_a_terminal_the_run_keeps_a_live_status_line_under_its_events() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    // script(1) runs ratchet on a pseudo-terminal and copies what it drew.
    let cmd = format!("{} run --trials 3", env!("CARGO_BIN_EXE_ratchet"));
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        // Log lines on the same terminal, around the status line.
        .env("RATCHET_LOG", "info")
        .current_dir(dir.path())
        .output()
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("done: 3 trial(s)"), "{text}");
    for want in ["/3 trials", " elapsed", "incumbent #1 "] {
        assert!(
            text.contains(want),
            "the status line lacks {want:?}:\n{text}"
        );
    }
    // Event lines are still printed whole, above the status line.
    assert!(text.contains("#2 "), "{text}");
    // A log line never lands on the status line: each starts a line, or
    // follows the escape sequences that cleared the status line.
    let stamp = regex::Regex::new(r"(?:\x1b\[2m)?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z").unwrap();
    let escape_end = regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]$").unwrap();
    let mut logs = 0;
    for m in stamp.find_iter(&text) {
        logs += 1;
        let before = &text[..m.start()];
        assert!(
            before.is_empty()
                || before.ends_with('\n')
                || before.ends_with('\r')
                || escape_end.is_match(before),
            "a log line drawn onto the status line: {:?}",
            &before[before.len().saturating_sub(120)..]
        );
    }
    assert!(logs > 3, "no log lines on the terminal:\n{text}");
}
