//! Early stopping on `tests/fixtures/curves`: a trainer that prints its
//! training loss every 0.1 s of a 2 s budget, shifted for the whole run by
//! the recipe (`worse` is hopeless, `better` a real gain) and the seed.

mod common;

use common::{str_of, Dir};
use serde_json::{json, Value};

fn by_hypothesis<'a>(trials: &'a [Value], prefix: &str) -> &'a Value {
    trials
        .iter()
        .find(|t| str_of(t, "hypothesis").starts_with(prefix))
        .unwrap_or_else(|| panic!("no trial `{prefix}` in {trials:#?}"))
}

#[test]
fn a_hopeless_run_is_stopped_early_and_a_good_one_finishes() {
    let dir = Dir::with_fixture("curves");
    dir.manual(
        1,
        &[
            ("1-hopeless", json!({"s.worse": 1.0})),
            ("2-good", json!({"s.better": 1.0})),
        ],
    );
    let out = dir.ratchet_ok(&["run", "--trials", "3"]);
    let trials = dir.trials();
    let baseline = by_hypothesis(&trials, "the experiment's recipe");
    assert_eq!(str_of(baseline, "status"), "kept", "{baseline:#}");
    let curve = baseline["train"]["progress"]["train_loss"]
        .as_array()
        .expect("the baseline's curve is in its train report");
    assert!(curve.len() >= 15, "{curve:?}");

    // The hopeless run: stopped at the first look, a quarter into its
    // budget, as a decision (not a failure), with where it stood.
    let bad = by_hypothesis(&trials, "1-hopeless");
    assert_eq!(str_of(bad, "status"), "discarded", "{bad:#}");
    assert_eq!(str_of(bad, "decision"), "pruned", "{bad:#}");
    assert!(bad["label"].is_null(), "{bad:#}");
    let p = &bad["train"]["pruned"];
    assert_eq!(p["against"], baseline["id"], "{p:#}");
    assert_eq!(p["look"], 1, "{p:#}");
    let (at, behind, bound) = (
        p["at"].as_f64().unwrap(),
        p["behind"].as_f64().unwrap(),
        p["bound"].as_f64().unwrap(),
    );
    assert!((0.5..1.0).contains(&at), "stopped at {at}: {p:#}");
    assert!(behind > bound && bound > 0.0, "{p:#}");
    assert!(p["saved_ms"].as_u64().unwrap() > 500, "{p:#}");
    let ran = bad["train"]["duration_ms"].as_u64().unwrap();
    assert!(ran < 1500, "a run stopped at {at} s ran {ran} ms");
    assert!(str_of(bad, "detail").starts_with("pruned: stopped at position"));
    // No eval ran, and its last progress point is where it was stopped.
    assert!(bad["eval"].is_null() && bad["score"].is_null(), "{bad:#}");

    // The good one ran its whole budget, was scored and kept.
    let good = by_hypothesis(&trials, "2-good");
    assert!(good["train"]["pruned"].is_null(), "{good:#}");
    assert_eq!(str_of(good, "status"), "kept", "{good:#}");
    assert!(good["train"]["duration_ms"].as_u64().unwrap() >= 2000);

    // Where it shows: the run's progress line, its summary, list, show,
    // the exports and the HTML report.
    let id = bad["id"].as_u64().unwrap().to_string();
    assert!(
        out.lines()
            .any(|l| l.contains(&format!("#{id} ")) && l.contains(" pruned ")),
        "{out}"
    );
    assert!(out.contains("1 stopped early"), "{out}");
    let list = dir.ratchet_ok(&["lineage", "list"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(id.as_str()) && l.contains("pruned")),
        "{list}"
    );
    let show = dir.ratchet_ok(&["lineage", "show", &id]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("pruned: stopped at position")),
        "{show}"
    );
    assert!(show.contains("slot time saved:"), "{show}");
    assert!(
        show.contains(&format!("against #{}'s", baseline["id"])),
        "{show}"
    );
    assert!(show.contains("its train_loss curve"), "{show}");
    dir.ratchet_ok(&["lineage", "export", "--format", "jsonl", "-o", "t.jsonl"]);
    let rows: Vec<Value> = std::fs::read_to_string(dir.path().join("t.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["id"] == bad["id"])
        .expect("the pruned trial's row");
    assert_eq!(row["decision"], "pruned", "{row:#}");
    assert_eq!(row["pruned_at"].as_f64(), Some(at), "{row:#}");
    assert_eq!(row["pruned_bound"].as_f64(), Some(bound), "{row:#}");
    assert!(row["pruned_saved_secs"].as_f64().unwrap() > 0.5, "{row:#}");
    assert!(rows
        .iter()
        .all(|r| r["id"] == bad["id"] || r["pruned_at"].is_null()));
    // CSV: the same columns.
    dir.ratchet_ok(&["lineage", "export", "--format", "csv", "-o", "t.csv"]);
    let csv = std::fs::read_to_string(dir.path().join("t.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .contains(",pruned_at,pruned_value,pruned_reference,pruned_bound,pruned_saved_secs,"),
        "{csv}"
    );
    assert!(csv.contains(&format!(",{at:?},")), "{csv}");
    dir.ratchet_ok(&["lineage", "export", "--format", "html", "-o", "r.html"]);
    let html = std::fs::read_to_string(dir.path().join("r.html")).unwrap();
    assert!(
        html.contains("<td>pruned</td>"),
        "no pruned row in the report"
    );
    assert!(html.contains("pruned: stopped at position"));
}
