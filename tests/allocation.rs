//! `daemon.allocation`: with `yield` a specialist whose trials are never
//! kept is asked less than one whose trials are, and still asked; with
//! `turns` each is asked in turn; a restart counts the outcomes lineage
//! holds.

mod common;

use common::Dir;
use serde_json::Value;

/// Two surfaces: `a.x` lowers the loss, `b.z` changes nothing (every trial
/// of `sb` ties with its parent and is discarded). One slot, so the asks
/// follow each other.
fn setup(allocation: &str) -> Dir {
    let dir = Dir::with_fixture("region");
    dir.region_experiment(
        "allocation",
        "[[surface]]\nname = \"a\"\n[surface.params]\n\"a.x\" = { type = \"float\", min = 0.0, max = 100.0 }\n\n\
         [[surface]]\nname = \"b\"\n[surface.params]\n\"b.z\" = { type = \"float\", min = 0.0, max = 1.0 }\n",
    );
    dir.write("experiment/recipe.toml", "[a]\nx = 0.0\n\n[b]\nz = 0.5\n");
    dir.write(
        "experiment/train.py",
        "import tomllib\n\
         r = tomllib.load(open('recipe.toml', 'rb'))\n\
         open('score.txt', 'w').write(str(200.0 - r['a']['x']))\n",
    );
    dir.write(
        "specialists.toml",
        &format!(
            "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 1\nseed = 3\n\
             allocation = \"{allocation}\"\n\n\
             [[specialist]]\nname = \"sa\"\nsurface = \"a\"\nkind = \"search\"\n\n\
             [[specialist]]\nname = \"sb\"\nsurface = \"b\"\nkind = \"search\"\n"
        ),
    );
    dir
}

fn count(trials: &[Value], specialist: &str) -> usize {
    trials
        .iter()
        .filter(|t| t["specialist"] == specialist)
        .count()
}

fn kept(trials: &[Value], specialist: &str) -> usize {
    trials
        .iter()
        .filter(|t| t["specialist"] == specialist && t["status"] == "kept")
        .count()
}

#[test]
fn asks_follow_what_each_specialist_yields() {
    let dir = setup("yield");
    dir.ratchet_ok(&["run", "--trials", "17"]);
    let trials = dir.trials();
    let ctx = format!("{trials:#?}");
    let (a, b) = (count(&trials, "sa"), count(&trials, "sb"));
    assert_eq!(a + b, 16, "{ctx}");
    assert_eq!(kept(&trials, "sb"), 0, "b.z changes nothing: {ctx}");
    assert!(kept(&trials, "sa") >= 2, "{ctx}");
    assert!(a >= b + 3, "sa yields, sb does not: {a} against {b}: {ctx}");
    assert!(
        b >= 3,
        "a specialist that yields nothing is still asked: {ctx}"
    );

    // A restart counts what lineage holds: sb stays behind from the start.
    dir.ratchet_ok(&["run", "--trials", "8"]);
    let all = dir.trials();
    let new: Vec<Value> = all
        .iter()
        .filter(|t| t["id"].as_u64().unwrap() > 17)
        .cloned()
        .collect();
    let (a2, b2) = (count(&new, "sa"), count(&new, "sb"));
    assert_eq!(a2 + b2, 8, "{new:#?}");
    assert!(a2 > b2, "{a2} against {b2}: {new:#?}");
}

#[test]
fn turns_ask_each_in_turn() {
    let dir = setup("turns");
    dir.ratchet_ok(&["run", "--trials", "17"]);
    let trials = dir.trials();
    let (a, b) = (count(&trials, "sa"), count(&trials, "sb"));
    assert_eq!((a, b), (8, 8), "{trials:#?}");
}
