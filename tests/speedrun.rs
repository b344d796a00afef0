//! The Airbench-shaped example (`experiments/speedrun`): the metric is the
//! training time, and a gate on a second metric (`val_r2`) holds every
//! recipe to an accuracy. A faster recipe that misses it is never kept.

mod common;

use common::{str_of, Dir};
use serde_json::{json, Value};

fn val_r2(t: &Value) -> Option<f64> {
    t["eval"]["metrics"]["val_r2"].as_f64()
}

#[test]
fn a_faster_recipe_that_misses_the_accuracy_gate_is_never_kept() {
    let dir = Dir::with_experiment("speedrun");
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 1\nseed = 2\n\n\
         [[specialist]]\nname = \"hand\"\nsurface = \"optimizer\"\nkind = \"manual\"\n\n\
         [[specialist]]\nname = \"arch\"\nsurface = \"architecture\"\nkind = \"search\"\n",
    );
    assert!(dir.ratchet_ok(&["check"]).contains("ok"));
    // Two epochs instead of thirty: far faster, and far from fitting.
    let proposal = json!({"hypothesis": "two epochs are enough",
                          "edits": [{"kind": "set", "values": {"optimizer.epochs": 2}}]});
    dir.write("lineage/inbox/hand/a.json", &proposal.to_string());
    dir.ratchet_ok(&["run", "--trials", "8"]);
    let trials = dir.trials();

    let baseline = trials
        .iter()
        .find(|t| str_of(t, "specialist") == "baseline")
        .unwrap();
    assert_eq!(str_of(baseline, "status"), "kept", "{baseline:#}");
    assert!(
        val_r2(baseline).unwrap() >= 0.984,
        "the shipped recipe passes: {baseline:#}"
    );

    let fast = trials
        .iter()
        .find(|t| str_of(t, "hypothesis") == "two epochs are enough")
        .unwrap();
    assert_eq!(str_of(fast, "label"), "gate_miss", "{fast:#}");
    let detail = str_of(fast, "detail");
    assert!(
        detail.contains("val_r2=") && detail.contains("below the gate's min 0.984"),
        "{detail}"
    );
    let (fast_secs, base_secs) = (
        fast["score"].as_f64().unwrap(),
        baseline["eval"]["metrics"]["train_secs"].as_f64().unwrap(),
    );
    assert!(
        fast_secs < base_secs,
        "it was faster: {fast_secs} against {base_secs}"
    );

    // Every recipe ever kept passed the gate.
    for t in trials.iter().filter(|t| str_of(t, "status") == "kept") {
        assert!(
            val_r2(t).is_some_and(|r| r >= 0.984),
            "kept below the gate: {t:#}"
        );
    }
    let best = dir.ratchet_ok(&["lineage", "best", "--json"]);
    let best: Value = serde_json::from_str(&best).unwrap();
    assert_ne!(best["trial"], fast["id"], "{best:#}");
}
