//! Search specialists learn from failures: on a fixture whose crash region is
//! a third of the space and borders the optimum (the baseline, so the
//! incumbent never moves), proposals stop landing in the region once
//! lineage holds crashes there.

mod common;

use common::Dir;

fn in_region(t: &serde_json::Value) -> bool {
    let x = t["config"]["search.x"].as_f64().unwrap();
    (4.0..=6.0).contains(&x)
}

#[test]
fn proposals_leave_a_crash_region_once_lineage_holds_crashes_there() {
    let dir = Dir::with_fixture("region");
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nslots = 1\nseed = 3\n\n\
         [[specialist]]\nname = \"s\"\nsurface = \"search\"\nkind = \"search\"\n",
    );
    dir.ratchet_ok(&["run", "--trials", "41"]);
    let trials = dir.trials();
    assert_eq!(trials.len(), 41);
    // Every trial in the region crashed, every other one was scored.
    for t in &trials {
        let crashed = t["label"] == "crash";
        assert_eq!(crashed, in_region(t), "{t:#}");
    }
    let proposals = &trials[1..];
    let share = |ts: &[serde_json::Value]| {
        ts.iter().filter(|t| in_region(t)).count() as f64 / ts.len() as f64
    };
    let (before, after) = (share(&proposals[..10]), share(&proposals[10..]));
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
    assert!(proposals.iter().any(|t| t["hypothesis"]
        .as_str()
        .unwrap()
        .contains("near failed trials")));
}
