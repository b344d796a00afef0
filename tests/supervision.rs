//! Supervision, exercised for real: a specialist that fails (its inbox is
//! replaced by a plain file, so reading it fails, and so does creating it
//! again at each restart) is restarted with a growing backoff while the
//! daemon goes on; once the inbox is back, the restarted specialist's
//! proposal runs, recorded once, and no trial is lost or duplicated. The
//! executor and the evaluator, whose every fault from outside is a trial's
//! outcome, go on through the worst one (the repository taken away).

mod common;

use common::{live_status, start_daemon, str_of, terminate, wait_for, wait_up, Dir};
use serde_json::{json, Value};

fn events(dir: &Dir) -> Vec<Value> {
    let out = dir.ratchet_ok(&["lineage", "events", "--json"]);
    out.lines()
        .map(|l| serde_json::from_str(l).expect("an event per line"))
        .collect()
}

fn proposer_errors(dir: &Dir) -> Vec<Value> {
    events(dir)
        .into_iter()
        .filter(|e| str_of(e, "kind") == "proposer_error" && str_of(e, "subject") == "hand")
        .collect()
}

/// Every trial reached exactly one outcome in its history.
fn one_outcome_each(trials: &[Value]) {
    for t in trials {
        let terminal = t["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| {
                ["kept", "discarded", "failed", "interrupted"].contains(&str_of(h, "status"))
            })
            .count();
        assert_eq!(terminal, 1, "one outcome per trial: {t:#}");
    }
}

#[test]
fn a_failing_specialist_is_restarted_with_backoff_and_loses_nothing() {
    let dir = Dir::with_fixture("noisy");
    // The baseline's own run sleeps, so the inbox can be broken before the
    // specialist is first asked.
    dir.write(
        "experiment/recipe.toml",
        "[s]\na = 0.0\nb = 0.0\nc = 0.0\nlucky = false\nslow = 2.0\n",
    );
    dir.manual(1, &[]);
    let inbox = dir.path().join("lineage/inbox/hand");
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);
    assert!(inbox.is_dir(), "the specialist made its inbox at start");
    std::fs::remove_dir_all(&inbox).unwrap();
    std::fs::write(&inbox, "not a directory").unwrap();

    // Asked once the baseline is settled, the specialist fails; each
    // restart fails again (its inbox cannot be made) after a longer wait.
    let failed = wait_for("three failures of the specialist", 60, || {
        let e = proposer_errors(&dir);
        (e.len() >= 3).then_some(e)
    });
    let at: Vec<u64> = failed
        .iter()
        .map(|e| e["at_ms"].as_u64().unwrap())
        .collect();
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[0] >= 900 && gaps[1] >= 1900 && gaps[1] > gaps[0],
        "backoff of 1 s, then 2 s: gaps {gaps:?} ms"
    );
    assert!(
        str_of(&failed[0], "detail").contains("inbox"),
        "the failure says why: {:#}",
        failed[0]
    );
    // Meanwhile the daemon answers.
    assert!(
        live_status(&dir).is_some(),
        "the daemon went down with its specialist"
    );

    // The inbox back, with a proposal: the next restart takes it.
    std::fs::remove_file(&inbox).unwrap();
    let proposal = json!({
        "hypothesis": "after the restarts: a = 1",
        "edits": [{"kind": "set", "values": {"s.a": 1.0}}],
    });
    dir.write("lineage/inbox/hand/p1.json", &proposal.to_string());
    let trials = wait_for("the restarted specialist's trial to settle", 120, || {
        let s = live_status(&dir)?;
        let t = dir.trials();
        let done = t.iter().any(|t| {
            str_of(t, "hypothesis").starts_with("after the restarts")
                && ["kept", "discarded", "failed"].contains(&str_of(t, "status"))
        });
        (done && s["live"]["lineage"]["active"].as_u64()? == 0).then_some(t)
    });
    assert_eq!(terminate(child).code(), Some(0));

    let ours: Vec<&Value> = trials
        .iter()
        .filter(|t| str_of(t, "hypothesis").starts_with("after the restarts"))
        .collect();
    assert_eq!(ours.len(), 1, "the proposal is recorded once: {trials:#?}");
    assert_eq!(str_of(ours[0], "status"), "kept", "{:#}", ours[0]);
    assert_eq!(str_of(&trials[0], "specialist"), "baseline");
    one_outcome_each(&trials);
    assert!(
        dir.path().join("lineage/inbox/hand/done").is_dir(),
        "the restarted specialist made its inbox again"
    );
}

/// The executor and the evaluator have no failure an experiment can cause:
/// every fault from outside is a trial's outcome. Exercised with the worst
/// one, the experiment's git repository taken away under a running daemon:
/// a trial proposed meanwhile cannot be committed and is recorded failed,
/// saying why; no actor stops or restarts; once the repository is back the
/// next trial is measured and kept as usual.
#[test]
fn a_repository_gone_under_the_daemon_fails_a_trial_not_an_actor() {
    let dir = Dir::with_fixture("noisy");
    dir.manual(1, &[]);
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);
    wait_for("the baseline to be kept", 120, || {
        let t = dir.trials();
        (t.len() == 1 && str_of(&t[0], "status") == "kept").then_some(())
    });
    let git = dir.path().join("experiment/.git");
    let away = dir.path().join("experiment/.git-away");
    assert!(git.is_dir(), "ratchet made the experiment's repository");
    std::fs::rename(&git, &away).unwrap();

    let propose = |name: &str, hypothesis: &str, key: &str| {
        let proposal = json!({
            "hypothesis": hypothesis,
            "edits": [{"kind": "set", "values": {key: 1.0}}],
        });
        // Whole or not at all: the inbox is looked at every second.
        let part = dir.write(
            &format!("lineage/inbox/hand/{name}.part"),
            &proposal.to_string(),
        );
        std::fs::rename(&part, part.with_extension("json")).unwrap();
    };
    let settled = |hypothesis: &str| {
        let t = dir.trials();
        let ours = t
            .iter()
            .find(|t| str_of(t, "hypothesis") == hypothesis)?
            .clone();
        let status = str_of(&ours, "status").to_string();
        ["kept", "discarded", "failed", "interrupted"]
            .contains(&status.as_str())
            .then_some(ours)
    };
    propose("p1", "without a repository: a = 1", "s.a");
    let lost = wait_for("the trial proposed without a repository", 60, || {
        settled("without a repository: a = 1")
    });
    assert_eq!(str_of(&lost, "status"), "failed", "{lost:#}");
    assert!(
        str_of(&lost, "detail").contains("provenance"),
        "the failure says the commit could not be made: {lost:#}"
    );
    assert!(live_status(&dir).is_some(), "the daemon answers");

    std::fs::rename(&away, &git).unwrap();
    propose("p2", "with the repository back: c = 1", "s.c");
    let kept = wait_for("the trial proposed with the repository back", 120, || {
        settled("with the repository back: c = 1")
    });
    assert_eq!(str_of(&kept, "status"), "kept", "{kept:#}");
    let log = common::daemon_log(&dir);
    assert_eq!(terminate(child).code(), Some(0));
    for stopped in ["executor stopped", "evaluator stopped", "specialist failed"] {
        assert!(!log.contains(stopped), "`{stopped}` in the log:\n{log}");
    }
    let trials = dir.trials();
    assert_eq!(trials.len(), 3, "{trials:#?}");
    one_outcome_each(&trials);
}
