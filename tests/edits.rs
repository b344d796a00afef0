//! Proposals as edits, through a `manual` specialist's inbox on the faulty
//! fixture: legal edits are committed and run; every kind of illegal edit is
//! labelled `illegal_edit` with the offending path and changes no file outside
//! the trial's checkout; edits that do not apply are `patch_failed`; a garbled
//! proposal is `proposer_error` with its text kept.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{str_of, Dir};
use git2::Repository;
use serde_json::{json, Value};

/// Every file under `root` with its bytes and symlinks with their targets,
/// leaving out the lineage (trial checkouts live there) and `.git` (ratchet's
/// own objects and refs).
fn tree_hash(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name == ".git" || p == root.join("lineage") {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let kind = e.file_type().unwrap();
            if kind.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if kind.is_dir() {
                out.insert(rel.clone(), "dir".into());
                walk(root, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let oid = git2::Oid::hash_object(git2::ObjectType::Blob, &bytes).unwrap();
                out.insert(rel, oid.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn manual_specialist(dir: &Dir) {
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 1\nseed = 1\n\n\
         [[specialist]]\nname = \"hand\"\nsurface = \"search\"\nkind = \"manual\"\n",
    );
}

fn replace(path: &str, content: &str) -> Value {
    json!({"kind": "replace", "path": path, "content": content})
}

fn search_replace(path: &str, search: &str, replace: &str) -> Value {
    json!({"kind": "search_replace", "path": path, "search": search, "replace": replace})
}

fn set(key: &str, value: Value) -> Value {
    json!({"kind": "set", "values": {key: value}})
}

#[test]
fn edits_are_checked_against_the_surface_and_illegal_ones_touch_nothing() {
    let dir = Dir::with_fixture("faulty");
    manual_specialist(&dir);
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim.txt"), "untouched\n").unwrap();
    std::os::unix::fs::symlink("../outside", dir.path().join("experiment/link")).unwrap();
    let victim_abs = outside.join("victim.txt").display().to_string();
    let recipe = std::fs::read_to_string(dir.path().join("experiment/recipe.toml")).unwrap();

    // (hypothesis, edits, expected label, offending path in the detail)
    let cases: Vec<(&str, Value, Option<&str>, &str)> = vec![
        (
            "x at the optimum",
            json!([set("search.x", json!(3.0))]),
            None,
            "",
        ),
        (
            "an offset file lowers the score",
            json!([replace("offset.txt", "-0.25\n")]),
            None,
            "",
        ),
        (
            "train prints a marker",
            json!([search_replace(
                "train.py",
                "print(\"loss=-1000\")",
                "print(\"loss=-1000\")\nprint(\"edited=1\")"
            )]),
            None,
            "",
        ),
        (
            "climb out",
            json!([replace("../outside/victim.txt", "pwned\n")]),
            Some("illegal_edit"),
            "../outside/victim.txt",
        ),
        (
            "absolute",
            json!([replace(&victim_abs, "pwned\n")]),
            Some("illegal_edit"),
            &victim_abs,
        ),
        (
            "through a symlink",
            json!([replace("link/victim.txt", "pwned\n")]),
            Some("illegal_edit"),
            "link/victim.txt",
        ),
        (
            "loosen the budget",
            json!([replace("experiment.toml", "name = \"x\"\n")]),
            Some("illegal_edit"),
            "experiment.toml",
        ),
        (
            "score myself",
            json!([replace("eval.py", "print('loss=0')\n")]),
            Some("illegal_edit"),
            "eval.py",
        ),
        (
            "a file off the surface",
            json!([replace("other.py", "pass\n")]),
            Some("illegal_edit"),
            "other.py",
        ),
        (
            "a key off the surface",
            json!([set("fault.mode", json!("crash"))]),
            Some("illegal_edit"),
            "recipe.toml:fault.mode",
        ),
        (
            "a whole recipe that moves another surface's key",
            json!([replace(
                "recipe.toml",
                &recipe.replace("mode = \"none\"", "mode = \"nan\"")
            )]),
            Some("illegal_edit"),
            "recipe.toml:fault.mode",
        ),
        (
            "x beyond its space",
            json!([set("search.x", json!(60.0))]),
            Some("illegal_edit"),
            "recipe.toml:search.x",
        ),
        (
            "a search text that is not there",
            json!([search_replace("train.py", "no such line", "x")]),
            Some("patch_failed"),
            "train.py",
        ),
    ];
    let inbox = dir.path().join("lineage/inbox/hand");
    std::fs::create_dir_all(&inbox).unwrap();
    for (i, (hypothesis, edits, _, _)) in cases.iter().enumerate() {
        let proposal = json!({"hypothesis": hypothesis, "edits": edits});
        std::fs::write(inbox.join(format!("{i:02}.json")), proposal.to_string()).unwrap();
    }
    std::fs::write(
        inbox.join("99.json"),
        "{\"hypothesis\": \"oops\", \"edits\": [",
    )
    .unwrap();

    let before = tree_hash(dir.path());
    let total = cases.len() + 2; // the baseline and the garbled one
    dir.ratchet_ok(&["run", "--trials", &total.to_string()]);
    assert_eq!(
        tree_hash(dir.path()),
        before,
        "a file outside the trial checkouts changed"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("victim.txt")).unwrap(),
        "untouched\n"
    );

    // A legal edit that beat its parent after the incumbent moved is
    // re-applied onto the new incumbent as another trial; those come on top.
    let (rebased, trials): (Vec<Value>, Vec<Value>) = dir
        .trials()
        .into_iter()
        .partition(|t| !t["rebased_from"].is_null());
    assert_eq!(trials.len(), total, "{trials:#?}");
    for r in &rebased {
        let from = trials
            .iter()
            .find(|t| t["id"] == r["rebased_from"])
            .expect("a rebased trial names its origin");
        assert_eq!(from["rebased_as"], r["id"], "{from:#}");
        assert_eq!(str_of(from, "decision"), "rebased", "{from:#}");
        assert!(matches!(str_of(r, "status"), "kept" | "discarded"), "{r:#}");
    }
    assert_eq!(str_of(&trials[0], "specialist"), "baseline");
    let repo = Repository::open(dir.path().join("experiment")).unwrap();
    for (t, (hypothesis, _, label, path)) in trials[1..].iter().zip(&cases) {
        assert_eq!(str_of(t, "hypothesis"), *hypothesis);
        let id = t["id"].as_u64().unwrap();
        let work = dir.path().join(format!("lineage/trials/{id:06}/work"));
        match label {
            None => {
                assert!(
                    matches!(str_of(t, "status"), "kept" | "discarded"),
                    "legal edit did not run: {t:#}"
                );
                // The score is the fixture's formula on the files the trial measured.
                let x = t["config"]["search.x"].as_f64().unwrap();
                let offset = std::fs::read_to_string(work.join("offset.txt"))
                    .map(|s| s.trim().parse::<f64>().unwrap())
                    .unwrap_or(0.0);
                let score = t["score"].as_f64().unwrap();
                assert!(
                    (score - ((x - 3.0).powi(2) + 0.5 + offset)).abs() < 1e-9,
                    "{t:#}"
                );
                assert!(repo
                    .find_reference(&format!("refs/heads/ratchet/trials/{id}"))
                    .is_ok());
            }
            Some(label) => {
                assert_eq!(str_of(t, "status"), "failed", "{t:#}");
                assert_eq!(str_of(t, "label"), *label, "{t:#}");
                let detail = str_of(t, "detail");
                assert!(
                    detail.contains(&format!("`{path}`")),
                    "offending path missing: {detail}"
                );
                assert!(t["commit"].is_null(), "a refused edit was committed: {t:#}");
                assert!(!work.exists(), "a refused edit got a checkout");
                assert!(repo
                    .find_reference(&format!("refs/heads/ratchet/trials/{id}"))
                    .is_err());
            }
        }
    }
    // The edits reached the runs.
    let offset_trial = &trials[2];
    assert!(
        str_of(offset_trial, "diff").contains("+-0.25"),
        "{offset_trial:#}"
    );
    let marker = dir.path().join(format!(
        "lineage/trials/{:06}/train.stdout",
        trials[3]["id"].as_u64().unwrap()
    ));
    assert!(std::fs::read_to_string(marker)
        .unwrap()
        .contains("edited=1"));

    let garbled = trials.last().unwrap();
    assert_eq!(str_of(garbled, "label"), "proposer_error", "{garbled:#}");
    assert!(str_of(garbled, "reply").contains("\"oops\""), "{garbled:#}");
    assert!(str_of(garbled, "detail").contains("99.json"), "{garbled:#}");

    // Every proposal was taken from the inbox exactly once.
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_dir(inbox.join("done")).unwrap().count(),
        cases.len() + 1
    );

    let shown = dir.ratchet_ok(&["lineage", "show", &garbled["id"].to_string()]);
    assert!(shown.contains("reply (as received"), "{shown}");
}

#[test]
fn a_trial_over_the_memory_gate_is_killed_and_labelled_out_of_memory() {
    let dir = Dir::with_fixture("faulty");
    manual_specialist(&dir);
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &format!(
            "{}\n[gates]\nmax_memory_mb = 100\n",
            exp.replace("timeout_secs = 2\n", "timeout_secs = 20\n")
        ),
    );
    let inbox = dir.path().join("lineage/inbox/hand");
    std::fs::create_dir_all(&inbox).unwrap();
    let hog = json!({"hypothesis": "hold 300 MiB", "edits": [search_replace(
        "train.py", "time.sleep(0.2)", "hog = bytearray(300 << 20); time.sleep(15)")]});
    std::fs::write(inbox.join("1.json"), hog.to_string()).unwrap();
    dir.ratchet_ok(&["run", "--trials", "2"]);
    let trials = dir.trials();
    let t = &trials[1];
    assert_eq!(str_of(t, "label"), "out_of_memory", "{t:#}");
    assert!(str_of(t, "detail").contains("memory limit"), "{t:#}");
    assert!(
        t["train"]["peak_rss_bytes"].as_u64().unwrap() > 100 << 20,
        "{t:#}"
    );
    // Killed at the limit, not at the 20 s timeout.
    assert!(
        t["train"]["duration_ms"].as_u64().unwrap() < 15_000,
        "{t:#}"
    );
    // The baseline's peak is recorded too, well under the limit.
    let peak = trials[0]["train"]["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak > 0 && peak < 100 << 20, "{peak}");
}

#[test]
fn a_train_command_that_rewrites_the_scorer_is_scored_by_the_committed_one() {
    let dir = Dir::with_fixture("faulty");
    manual_specialist(&dir);
    let inbox = dir.path().join("lineage/inbox/hand");
    std::fs::create_dir_all(&inbox).unwrap();
    // A legal edit of train.py whose run overwrites the protected eval.py.
    let tamper = json!({"hypothesis": "score myself", "edits": [search_replace(
        "train.py",
        "time.sleep(0.2)",
        "open('eval.py', 'w').write('print(\"loss=0.0\")')")]});
    std::fs::write(inbox.join("1.json"), tamper.to_string()).unwrap();
    dir.ratchet_ok(&["run", "--trials", "2"]);
    let t = &dir.trials()[1];
    assert_eq!(
        t["score"].as_f64(),
        Some(6.75),
        "eval.py was not restored: {t:#}"
    );
}
