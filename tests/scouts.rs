//! Scouts (`daemon.scouts`): the first trials after the baseline sample
//! every surface at once, the specialists come after them, a scout that
//! lost to another is judged against the incumbent (never re-applied onto
//! it), and a restart issues no scout lineage already holds.

mod common;

use common::Dir;
use serde_json::Value;

/// Two surfaces; every value but the recipe's own is better (the loss
/// falls with both x and y), so scouts run in pairs and the second of a
/// pair is often behind the first one's keep.
fn setup(scouts: u64) -> Dir {
    let dir = Dir::with_fixture("region");
    dir.region_experiment(
        "scouts",
        "[[surface]]\nname = \"a\"\n[surface.params]\n\"a.x\" = { type = \"float\", min = 0.0, max = 1.0 }\n\n\
         [[surface]]\nname = \"b\"\n[surface.params]\n\"b.y\" = { type = \"float\", min = 0.0, max = 1.0 }\n\
         \"b.k\" = { type = \"choice\", values = [\"p\", \"q\"] }\n",
    );
    dir.write(
        "experiment/recipe.toml",
        "[a]\nx = 0.0\n\n[b]\ny = 0.0\nk = \"p\"\n",
    );
    dir.write(
        "experiment/train.py",
        "import tomllib\n\
         r = tomllib.load(open('recipe.toml', 'rb'))\n\
         open('score.txt', 'w').write(str(3.0 - r['a']['x'] - r['b']['y']))\n",
    );
    dir.write(
        "specialists.toml",
        &format!(
            "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 2\nseed = 5\n\
             scouts = {scouts}\n\n\
             [[specialist]]\nname = \"sa\"\nsurface = \"a\"\nkind = \"search\"\n\n\
             [[specialist]]\nname = \"sb\"\nsurface = \"b\"\nkind = \"search\"\n"
        ),
    );
    dir
}

fn by_id(mut trials: Vec<Value>) -> Vec<Value> {
    trials.sort_by_key(|t| t["id"].as_u64().unwrap());
    trials
}

#[test]
fn scouts_sample_every_surface_first_and_a_restart_adds_none() {
    let dir = setup(4);
    dir.ratchet_ok(&["run", "--trials", "9"]);
    let trials = by_id(dir.trials());
    assert_eq!(trials[0]["specialist"], "baseline");
    let scouts: Vec<&Value> = trials
        .iter()
        .filter(|t| t["specialist"] == "scout")
        .collect();
    let ids: Vec<u64> = scouts.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [2, 3, 4, 5], "scouts come right after the baseline");
    for t in &scouts {
        let changes = t["changes"].as_object().expect("changes");
        assert!(
            changes.contains_key("a.x") && changes.contains_key("b.y"),
            "a scout changes both surfaces: {t:#}"
        );
        assert!(t["surface"].is_null(), "{t:#}");
        assert!(t["hypothesis"].as_str().unwrap().starts_with("scout"));
        // Beaten by another scout or not: judged, never a failed re-apply.
        assert!(
            t["status"] == "kept" || t["status"] == "discarded",
            "a scout ended {}: {t:#}",
            t["status"]
        );
    }
    assert!(
        scouts.iter().any(|t| t["status"] == "kept"),
        "every scout beats the baseline here; none was kept"
    );
    assert!(
        trials[5..]
            .iter()
            .all(|t| t["specialist"] == "sa" || t["specialist"] == "sb"),
        "{:#?}",
        &trials[5..]
    );
    // Asked once every scout was settled: from the one kept, not the baseline.
    assert!(
        trials[5..].iter().all(|t| t["parent"] != 1),
        "{:#?}",
        &trials[5..]
    );
    // Four scouts are in lineage: the next run asks only the specialists.
    dir.ratchet_ok(&["run", "--trials", "3"]);
    let after = by_id(dir.trials());
    assert!(after.len() > trials.len());
    assert!(
        after[trials.len()..]
            .iter()
            .all(|t| t["specialist"] != "scout"),
        "{:#?}",
        &after[trials.len()..]
    );
}

#[test]
fn without_scouts_the_specialists_follow_the_baseline() {
    let dir = setup(0);
    dir.ratchet_ok(&["run", "--trials", "3"]);
    let trials = by_id(dir.trials());
    assert!(trials[1..]
        .iter()
        .all(|t| t["specialist"] == "sa" || t["specialist"] == "sb"));
}

#[test]
fn a_run_cut_short_leaves_the_remaining_scouts_to_the_next() {
    let dir = setup(4);
    dir.ratchet_ok(&["run", "--trials", "3"]);
    let first = by_id(dir.trials());
    let scouts = |ts: &[Value]| ts.iter().filter(|t| t["specialist"] == "scout").count();
    assert_eq!(scouts(&first), 2, "{first:#?}");
    dir.ratchet_ok(&["run", "--trials", "4"]);
    let all = by_id(dir.trials());
    let new = &all[first.len()..];
    assert_eq!(scouts(&all), 4, "{all:#?}");
    assert!(
        new[..2].iter().all(|t| t["specialist"] == "scout")
            && new[2..].iter().all(|t| t["specialist"] != "scout"),
        "the two scouts left come first: {new:#?}"
    );
}
