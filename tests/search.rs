//! Search specialists learn from failures: on a fixture whose crash region is
//! a third of the space and borders the optimum (the baseline, so the
//! incumbent never moves), proposals stop landing in the region once
//! lineage holds crashes there.

mod common;

use common::Dir;
use serde_json::Value;

fn in_region(t: &Value) -> bool {
    let x = t["config"]["search.x"].as_f64().unwrap();
    (4.0..=6.0).contains(&x)
}

/// The proposals (baseline left out) of a 41-trial run with `seed`.
fn proposals(seed: u64) -> Vec<Value> {
    let dir = Dir::with_fixture("region");
    dir.write(
        "specialists.toml",
        &format!(
            "[daemon]\nexperiment = \"experiment\"\nslots = 1\nseed = {seed}\n\n\
             [[specialist]]\nname = \"s\"\nsurface = \"search\"\nkind = \"search\"\n"
        ),
    );
    dir.ratchet_ok(&["run", "--trials", "41"]);
    let trials = dir.trials();
    assert_eq!(trials.len(), 41);
    // Every trial in the region crashed, every other one was scored.
    for t in &trials {
        assert_eq!(t["label"] == "crash", in_region(t), "{t:#}");
    }
    trials[1..].to_vec()
}

#[test]
fn proposals_leave_a_crash_region_once_lineage_holds_crashes_there() {
    // Two fixed seeds, pooled: the first 10 proposals of each against the next 30.
    let runs = [proposals(3), proposals(4)];
    let share = |part: &dyn Fn(&[Value]) -> &[Value]| {
        let (hits, all) = runs.iter().fold((0, 0), |(h, n), r| {
            let p = part(r);
            (h + p.iter().filter(|t| in_region(t)).count(), n + p.len())
        });
        hits as f64 / all as f64
    };
    let before = share(&|r| &r[..10]);
    let after = share(&|r| &r[10..]);
    eprintln!("crash-region share: first 10 proposals {before:.3}, next 30 {after:.3}");
    assert!(
        before > 0.0,
        "the first proposals never explored the region"
    );
    assert!(
        after < before / 2.0,
        "the share of proposals in the crash region went from {before:.3} to {after:.3}"
    );
    // The skips are visible in the hypotheses.
    assert!(runs.iter().flatten().any(|t| t["hypothesis"]
        .as_str()
        .unwrap()
        .contains("near failed trials")));
}
