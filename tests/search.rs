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

/// `[surface.when]`: `b.z` matters only while `b.k = "q"`, and the recipe
/// has `p`. The search never proposes a change of `b.z` alone at `p` (the
/// same recipe in effect), and still changes it where it matters.
#[test]
fn the_search_draws_no_change_of_what_does_not_matter() {
    let dir = Dir::with_fixture("region");
    dir.region_experiment(
        "when",
        "[[surface]]\nname = \"b\"\n[surface.params]\n\
         \"b.k\" = { type = \"choice\", values = [\"p\", \"q\"] }\n\
         \"b.z\" = { type = \"float\", min = 0.0, max = 1.0 }\n\
         [surface.when]\n\"b.z\" = { \"b.k\" = [\"q\"] }\n",
    );
    dir.write("experiment/recipe.toml", "[b]\nk = \"p\"\nz = 0.5\n");
    // q is worse, so the incumbent keeps p.
    dir.write(
        "experiment/train.py",
        "import tomllib\n\
         r = tomllib.load(open('recipe.toml', 'rb'))['b']\n\
         open('score.txt', 'w').write(str(1.0 + (r['k'] == 'q') + r['z'] * (r['k'] == 'q')))\n",
    );
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nslots = 1\nseed = 2\n\n\
         [[specialist]]\nname = \"s\"\nsurface = \"b\"\nkind = \"search\"\n",
    );
    dir.ratchet_ok(&["run", "--trials", "12"]);
    let trials = dir.trials();
    let ctx = format!("{trials:#?}");
    assert!(trials.len() >= 4, "{ctx}");
    for t in &trials {
        let changes = t["changes"].as_object().unwrap();
        let only_z = changes.len() == 1 && changes.contains_key("b.z");
        assert!(
            !(only_z && t["config"]["b.k"] == "p"),
            "a change of b.z alone at k = p: {t:#}"
        );
    }
    assert!(
        trials
            .iter()
            .any(|t| t["config"]["b.k"] == "q" && t["config"]["b.z"] != 0.5),
        "b.z is still searched where it matters: {ctx}"
    );
}
