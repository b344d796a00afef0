//! `[preflight]`: a real command run in each trial's files before it
//! trains; what it prints is held to the gates, and a trial it fails never
//! takes training time. Also tinylm's own pre-flight.

mod common;

use common::{stdout, str_of, Dir};
use serde_json::{json, Value};

/// The faulty fixture with a pre-flight that projects `artifact_bytes` as
/// 100 × search.x and refuses fault.mode = "crash", a size gate of 560
/// (the baseline, x = 5.5, projects 550), and two manual specialists.
fn dir_with_preflight(proposals: &[(&str, &str, Value)]) -> Dir {
    let dir = Dir::with_fixture("faulty");
    dir.write(
        "experiment/preflight.py",
        "import sys, tomllib\n\
         r = tomllib.load(open('recipe.toml', 'rb'))\n\
         if r['fault']['mode'] == 'crash':\n\
         \x20   print('preflight: this recipe cannot be built', file=sys.stderr)\n\
         \x20   sys.exit(4)\n\
         print(f\"artifact_bytes={int(r['search']['x'] * 100)}\")\n",
    );
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &format!(
            "{exp}\n[preflight]\ncommand = [\"python3\", \"preflight.py\"]\ntimeout_secs = 10\n\n\
             [gates]\nmax_artifact_bytes = 560\n"
        ),
    );
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 1\nseed = 1\n\n\
         [[specialist]]\nname = \"hand_x\"\nsurface = \"search\"\nkind = \"manual\"\n\n\
         [[specialist]]\nname = \"hand_f\"\nsurface = \"fault\"\nkind = \"manual\"\n",
    );
    for (specialist, name, values) in proposals {
        let proposal = json!({
            "hypothesis": format!("{name}: {values}"),
            "edits": [{"kind": "set", "values": values}],
        });
        dir.write(
            &format!("lineage/inbox/{specialist}/{name}.json"),
            &proposal.to_string(),
        );
    }
    dir
}

fn by_hypothesis<'a>(trials: &'a [Value], prefix: &str) -> &'a Value {
    trials
        .iter()
        .find(|t| str_of(t, "hypothesis").starts_with(prefix))
        .unwrap_or_else(|| panic!("no trial {prefix}: {trials:#?}"))
}

#[test]
fn a_preflight_miss_fails_the_trial_before_it_trains() {
    let dir = dir_with_preflight(&[
        ("hand_x", "a_big", json!({"search.x": 6.0})),
        ("hand_x", "b_fits", json!({"search.x": 4.0})),
        ("hand_f", "a_broken", json!({"fault.mode": "crash"})),
    ]);
    let out = dir.ratchet_ok(&["run", "--trials", "4"]);
    let trials = dir.trials();
    assert_eq!(trials.len(), 4, "{trials:#?}");

    let baseline = by_hypothesis(&trials, "the experiment's recipe");
    assert_eq!(str_of(baseline, "status"), "kept", "550 is under the gate");
    assert!(baseline["preflight"].is_object(), "{baseline:#}");

    let big = by_hypothesis(&trials, "a_big");
    assert_eq!(str_of(big, "label"), "size_failure", "{big:#}");
    assert!(
        str_of(big, "detail").contains("preflight: projected artifact_bytes=600 over the gate 560"),
        "{big:#}"
    );
    assert!(big["train"].is_null(), "it never trained: {big:#}");
    assert!(big["commit"].is_string(), "its files are recorded: {big:#}");

    let broken = by_hypothesis(&trials, "a_broken");
    assert_eq!(str_of(broken, "label"), "preflight_failed", "{broken:#}");
    assert!(broken["train"].is_null(), "{broken:#}");
    let shown = dir.ratchet_ok(&["lineage", "show", &broken["id"].to_string()]);
    assert!(shown.contains("preflight"), "{shown}");
    let tail = std::fs::read_to_string(
        std::path::Path::new(str_of(broken, "trial_dir")).join("preflight.stderr"),
    )
    .unwrap();
    assert!(tail.contains("this recipe cannot be built"), "{tail}");

    let fits = by_hypothesis(&trials, "b_fits");
    assert_eq!(str_of(fits, "status"), "kept", "{fits:#}");

    // The run's summary counts the training time the pre-flight saved.
    assert!(
        out.contains("2 failed pre-flight (2 slot-seconds of training saved)"),
        "{out}"
    );
}

#[test]
fn tinylm_projects_its_size_without_training() {
    let dir = Dir::with_fixture("faulty");
    let recipe = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/experiments/tinylm/recipe.toml"
    ))
    .unwrap();
    let path = dir.write("recipe.toml", &recipe);
    let pre = stdout(&dir.ratchet(&["tinylm", "preflight", "--recipe", path.to_str().unwrap()]));
    let value = |name: &str| -> u64 {
        pre.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {pre}"))
            .parse()
            .unwrap()
    };
    let (params, projected) = (value("params"), value("artifact_bytes"));
    // Trained for a second, the model's eval prints the same numbers.
    let out = dir.path().join("out");
    dir.ratchet_ok(&[
        "tinylm",
        "train",
        "--recipe",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--budget-secs",
        "1",
    ]);
    let eval = dir.ratchet_ok(&["tinylm", "eval", "--checkpoint", out.to_str().unwrap()]);
    assert!(
        eval.contains(&format!("params={params}\n")),
        "{pre}\n{eval}"
    );
    assert!(
        eval.contains(&format!("artifact_bytes={projected}\n")),
        "{pre}\n{eval}"
    );
    assert!(projected > 4 * params, "f32 weights and a header: {pre}");

    // A recipe whose model cannot be built fails it, saying why.
    let bad = dir.write("bad.toml", &recipe.replacen("heads = 4", "heads = 3", 1));
    let out = dir.ratchet(&["tinylm", "preflight", "--recipe", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
}
