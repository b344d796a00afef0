//! An autoresearch-shaped directory end to end, the way a new user runs it:
//! `ratchet init --from autoresearch`, `ratchet check`, a run whose LLM
//! specialists (a real HTTP server on 127.0.0.1 speaking the chat API) edit
//! train.py, scored from the train run's summary block, and the results.tsv
//! export read by pandas with autoresearch's own analysis code.

mod common;

use std::path::Path;

use common::llm::{proposal, LlmServer, Reply};
use common::{stderr, stdout, str_of, Dir};
use serde_json::{json, Value};

/// The fixture's train.py, as the specialists' edits find it.
const PRINT_LINE: &str = "print(f\"val_bpb:          {val_bpb:.6f}\")";

fn replies(n: usize) -> Reply {
    let text = match n {
        // Better: a larger learning rate learns more in the same steps.
        0 => proposal(
            "a larger learning rate learns more in the same 200 steps",
            json!([{"kind": "search_replace", "path": "train.py",
                    "search": "LEARNING_RATE = 0.1 ", "replace": "LEARNING_RATE = 0.5 "}]),
        ),
        // The protected scorer.
        1 => proposal(
            "score every model perfectly",
            json!([{"kind": "replace", "path": "prepare.py", "content": "PASS_THRESHOLD = 99\n"}]),
        ),
        // Two steps learn nothing: the run prints `val_pass: false`.
        2 => proposal(
            "two steps are enough",
            json!([{"kind": "search_replace", "path": "train.py",
                    "search": "NUM_STEPS = 200 ", "replace": "NUM_STEPS = 2 "}]),
        ),
        // A false summary line.
        3 => proposal(
            "print a better number",
            json!([{"kind": "search_replace", "path": "train.py",
                    "search": PRINT_LINE, "replace": "print(f\"val_bpb:          {0.5:.6f}\")"}]),
        ),
        // A run that crashes.
        4 => proposal(
            "stop early",
            json!([{"kind": "search_replace", "path": "train.py",
                    "search": "SEED = 42 ", "replace": "SEED = 42; raise SystemExit(3) "}]),
        ),
        _ => "no proposal today".to_string(),
    };
    Reply::Text(text)
}

#[test]
fn an_autoresearch_directory_runs_from_init_to_results_tsv() {
    let server = LlmServer::start(|_, n, _| replies(n));
    let dir = Dir::with_fixture("autoresearch");
    let exp = dir.path().join("experiment");
    let e = exp.to_str().unwrap();
    let url = server.base_url();

    // A directory without the shape is refused, saying what is missing.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.ratchet(&["init", "--from", "autoresearch", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for missing in ["train.py", "prepare.py", "program.md"] {
        assert!(err.contains(missing), "{err}");
    }
    assert!(std::fs::read_dir(&empty).unwrap().next().is_none());

    let args = [
        "init",
        "--from",
        "autoresearch",
        e,
        "--base-url",
        &url,
        "--model",
        "m",
        "--api-key-env",
        "",
    ];
    let said = dir.ratchet_ok(&args);
    assert!(said.contains("metric val_bpb (lower is better)"), "{said}");
    let toml: toml::Table = std::fs::read_to_string(exp.join("experiment.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(toml["metric"].as_str(), Some("val_bpb"));
    assert_eq!(toml["direction"].as_str(), Some("minimize"));
    assert_eq!(toml["score_from"].as_str(), Some("train"));
    // program.md: "a fixed time budget of 2 seconds", "exceeds 10 seconds, kill it".
    assert_eq!(toml["budget_secs"].as_integer(), Some(2));
    assert_eq!(toml["timeout_secs"].as_integer(), Some(10));
    assert_eq!(
        toml["train"],
        toml::Value::try_from(["python3", "train.py"]).unwrap()
    );
    assert_eq!(
        toml["protected"],
        toml::Value::try_from(["prepare.py"]).unwrap()
    );
    assert_eq!(
        toml["gates"]["metric"][0]["name"].as_str(),
        Some("val_pass")
    );
    for agent in ["optimizer", "architecture", "data", "speed"] {
        assert!(exp.join(format!("agents/{agent}.md")).is_file());
    }

    // Nothing is overwritten without --force.
    let before = std::fs::read(exp.join("specialists.toml")).unwrap();
    std::fs::write(exp.join("experiment.toml"), "# mine\n").unwrap();
    let out = dir.ratchet(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(exp.join("experiment.toml")).unwrap(),
        "# mine\n"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    dir.ratchet_ok(&forced);
    assert_eq!(std::fs::read(exp.join("specialists.toml")).unwrap(), before);

    let config = exp.join("specialists.toml");
    let c = config.to_str().unwrap();
    let checked = dir.ratchet_ok(&["check", "-c", c]);
    assert!(checked.starts_with("ok:"), "{checked}");

    let run = dir.ratchet_ok(&["run", "-c", c, "-n", "6"]);
    let trials: Vec<Value> = dir
        .ratchet_ok(&["lineage", "-c", c, "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |h: &str| -> &Value {
        trials
            .iter()
            .find(|t| t["hypothesis"] == h)
            .unwrap_or_else(|| panic!("no trial {h:?}:\n{run}"))
    };
    let baseline = &trials[0];
    assert_eq!(str_of(baseline, "status"), "kept", "{run}");
    let base_score = baseline["score"].as_f64().unwrap();
    // The fixture's default recipe (program.md shows its summary block).
    assert!((base_score - 2.062959).abs() < 1e-9, "{base_score}");

    let better = by("a larger learning rate learns more in the same 200 steps");
    assert_eq!(str_of(better, "status"), "kept", "{run}");
    assert!(better["score"].as_f64().unwrap() < base_score - 0.2);

    let scorer = by("score every model perfectly");
    assert_eq!(str_of(scorer, "label"), "illegal_edit", "{scorer}");
    assert!(str_of(scorer, "detail").contains("prepare.py"));

    let gate = by("two steps are enough");
    assert_eq!(str_of(gate, "label"), "gate_miss", "{gate}");
    assert!(str_of(gate, "detail").contains("val_pass=0"), "{gate}");

    let lie = by("print a better number");
    assert_eq!(str_of(lie, "label"), "illegal_edit", "{lie}");
    assert!(str_of(lie, "detail").contains("`val_bpb`"), "{lie}");

    let crash = by("stop early");
    assert_eq!(str_of(crash, "label"), "crash", "{crash}");

    // Every specialist read program.md, its own focus, and the whole train.py.
    let requests = server.requests_of("m");
    assert!(requests.len() >= 4, "{} requests", requests.len());
    let train = std::fs::read_to_string(exp.join("train.py")).unwrap();
    let program = std::fs::read_to_string(exp.join("program.md")).unwrap();
    let first = requests[0].prompt();
    assert!(
        first.contains(program.trim()),
        "program.md is not in the prompt"
    );
    assert!(first.contains("ratchet runs the loop described above"));
    assert!(first.contains("Your focus is"));
    assert!(
        first.contains(train.trim_end()),
        "train.py is not whole in the prompt"
    );

    // results.tsv as autoresearch's program.md defines it.
    let tsv = dir.path().join("results.tsv");
    dir.ratchet_ok(&[
        "lineage",
        "-c",
        c,
        "export",
        "--format",
        "autoresearch",
        "-o",
        tsv.to_str().unwrap(),
    ]);
    let analysis = analyse(&tsv);
    assert_eq!(
        analysis["columns"],
        json!(["commit", "val_bpb", "memory_gb", "status", "description"])
    );
    // The refused proposals never ran: no rows.
    assert_eq!(analysis["rows"], json!(4), "{analysis}");
    assert_eq!(
        analysis["counts"],
        json!({"KEEP": 2, "DISCARD": 1, "CRASH": 1})
    );
    assert_eq!(analysis["crash_values"], json!([[0.0, 0.0]]));
    assert!((analysis["baseline"].as_f64().unwrap() - base_score).abs() < 1e-6);
    let best = better["score"].as_f64().unwrap();
    assert!((analysis["best"].as_f64().unwrap() - best).abs() < 1e-6);
    assert_eq!(analysis["commit_lengths"], json!([7]));
}

/// autoresearch's analysis.ipynb on `tsv`: its loading cell as written,
/// its outcome counts, baseline and running best (the plot's data, without
/// matplotlib). Debian's Python, where `.ci/run` installs pandas.
fn analyse(tsv: &Path) -> Value {
    let script = r#"
import json, sys
import pandas as pd
df = pd.read_csv(sys.argv[1], sep="\t")
df["val_bpb"] = pd.to_numeric(df["val_bpb"], errors="coerce")
df["memory_gb"] = pd.to_numeric(df["memory_gb"], errors="coerce")
df["status"] = df["status"].str.strip().str.upper()
counts = df["status"].value_counts()
valid = df[df["status"] != "CRASH"].copy().reset_index(drop=True)
baseline_bpb = valid.loc[0, "val_bpb"]
kept_mask = valid["status"] == "KEEP"
running_min = valid.loc[kept_mask, "val_bpb"].cummin()
crash = df[df["status"] == "CRASH"]
print(json.dumps({
    "columns": list(df.columns),
    "rows": len(df),
    "counts": {k: int(v) for k, v in counts.items()},
    "crash_values": [[float(a), float(b)] for a, b in zip(crash["val_bpb"], crash["memory_gb"])],
    "baseline": float(baseline_bpb),
    "best": float(running_min.iloc[-1]),
    # (as text: a hash of seven digits would otherwise read as a number)
    "commit_lengths": sorted({len(c) for c in pd.read_csv(sys.argv[1], sep="\t", dtype={"commit": str})
                              .loc[lambda d: d["status"] != "crash", "commit"]}),
}))
"#;
    common::python_json(script, &[tsv])
}
