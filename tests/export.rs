//! Lineage inspection after a real run on the faulty fixture: list filters,
//! `show`, exports loaded back by pandas and Python's csv module, and the
//! HTML report rendered by headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs).

mod common;

use std::path::Path;
use std::process::Command;

use common::{stderr, stdout, str_of, Dir};
use serde_json::{json, Value};

const TERMINAL: [&str; 4] = ["kept", "discarded", "failed", "interrupted"];

/// Hypotheses that CSV, JSON and HTML must carry unharmed.
const AWKWARD: [&str; 3] = [
    "x to 2.5, closer to \"3\", should help",
    "two lines:\nfirst, then \"second\"\r\nand a tab\t and ümlaut",
    "</script><script>document.title='pwned'</script> & <b>bold</b>",
];

/// A finished run, made once and read by every test here: hand-written
/// proposals with awkward hypotheses, a search specialist and a fault
/// specialist (crashes, hangs, NaN...).
fn finished_run() -> &'static (Dir, Vec<Value>) {
    static RUN: std::sync::OnceLock<(Dir, Vec<Value>)> = std::sync::OnceLock::new();
    RUN.get_or_init(make_run)
}

fn make_run() -> (Dir, Vec<Value>) {
    let dir = Dir::with_fixture("faulty");
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 2\nseed = 3\n\n\
         [[specialist]]\nname = \"hand\"\nsurface = \"search\"\nkind = \"manual\"\n\n\
         [[specialist]]\nname = \"s\"\nsurface = \"search\"\nkind = \"search\"\n\n\
         [[specialist]]\nname = \"f\"\nsurface = \"fault\"\nkind = \"search\"\n",
    );
    let inbox = dir.path().join("lineage/inbox/hand");
    std::fs::create_dir_all(&inbox).unwrap();
    for (i, (h, x)) in AWKWARD.iter().zip([2.5, 3.5, 2.9]).enumerate() {
        // The first says what it expects: recorded beside the measurement.
        let p = if i == 0 {
            json!({"hypothesis": h, "edits": [{"kind": "set", "values": {"search.x": x}}],
                   "expected_delta": -1.25})
        } else {
            json!({"hypothesis": h, "edits": [{"kind": "set", "values": {"search.x": x}}]})
        };
        std::fs::write(inbox.join(format!("{i}.json")), p.to_string()).unwrap();
    }
    dir.ratchet_ok(&["run", "--trials", "14"]);
    let trials = dir.trials();
    for h in AWKWARD {
        assert!(
            trials.iter().any(|t| t["hypothesis"] == h),
            "the inbox proposal {h:?} was not run"
        );
    }
    (dir, trials)
}

const LOAD: &str = r#"
import csv, json, sys
import pandas as pd
jl = pd.read_json(sys.argv[1], lines=True, dtype=False, precise_float=True)
cs = pd.read_csv(sys.argv[2], keep_default_na=False)
with open(sys.argv[2], newline="") as f:
    rows = list(csv.DictReader(f))
def num(v):
    return None if v is None or v == "" or v != v else float(v)
print(json.dumps({
    "jsonl_columns": list(jl.columns),
    "csv_columns": list(cs.columns),
    "jsonl": [{"id": int(r["id"]), "hypothesis": r["hypothesis"], "outcome": r["outcome"],
               "score": num(r["score"]), "specialist": r["specialist"],
               "schema_version": int(r["schema_version"]), "history": len(r["history"]),
               "changes": r["changes"], "expected_delta": num(r["expected_delta"]),
               "measured_delta": num(r["measured_delta"])} for _, r in jl.iterrows()],
    "csv": [{"id": int(r["id"]), "hypothesis": r["hypothesis"], "outcome": r["outcome"],
             "score": num(r["score"]), "history": len(json.loads(r["history"]))} for r in rows],
    "pandas_csv_hypotheses": list(cs["hypothesis"]),
}))
"#;

#[test]
fn exports_load_back_in_pandas_with_every_trial_and_field() {
    let (dir, trials) = finished_run();
    dir.ratchet_ok(&["lineage", "export", "--format", "jsonl", "-o", "t.jsonl"]);
    let out = dir.ratchet(&["lineage", "export", "--format", "csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(dir.path().join("t.csv"), &out.stdout).unwrap();
    let got = common::python_json(
        LOAD,
        &[&dir.path().join("t.jsonl"), &dir.path().join("t.csv")],
    );

    // The same columns in both, led by the schema version.
    let columns = got["jsonl_columns"].as_array().unwrap();
    assert_eq!(columns, got["csv_columns"].as_array().unwrap());
    assert_eq!(columns[0], "schema_version");
    for c in [
        "id",
        "specialist",
        "outcome",
        "score",
        "hypothesis",
        "diff",
        "history",
        "proposed_ms",
    ] {
        assert!(columns.iter().any(|x| x == c), "column {c} missing");
    }
    // Every trial, in id order, with its fields as lineage has them.
    let jsonl = got["jsonl"].as_array().unwrap();
    let csv = got["csv"].as_array().unwrap();
    assert_eq!(jsonl.len(), trials.len());
    assert_eq!(csv.len(), trials.len());
    for ((t, j), c) in trials.iter().zip(jsonl).zip(csv) {
        assert_eq!(j["id"], t["id"]);
        assert_eq!(c["id"], t["id"]);
        assert_eq!(j["schema_version"], 1);
        assert_eq!(j["specialist"], t["specialist"]);
        assert_eq!(
            j["hypothesis"], t["hypothesis"],
            "JSONL hypothesis of {}",
            t["id"]
        );
        assert_eq!(
            c["hypothesis"], t["hypothesis"],
            "CSV hypothesis of {}",
            t["id"]
        );
        assert_eq!(j["score"], t["score"], "JSONL score of {}", t["id"]);
        assert_eq!(c["score"], t["score"], "CSV score of {}", t["id"]);
        assert_eq!(j["history"], t["history"].as_array().unwrap().len());
        assert_eq!(c["history"], j["history"]);
        assert_eq!(j["changes"], t["changes"]);
        assert_eq!(j["expected_delta"], t["expected_delta"]);
        if let (Some(s), Some(p)) = (t["score"].as_f64(), t["parent_score"].as_f64()) {
            let m = j["measured_delta"].as_f64().unwrap();
            assert!((m - (s - p)).abs() < 1e-12, "{j:#}");
        }
        let status = str_of(t, "status");
        let outcome = if !t["label"].is_null() {
            str_of(t, "label").to_string()
        } else if status == "kept" {
            "kept".into()
        } else if t["false_peak"] == true {
            "false_peak".into()
        } else if !t["decision"].is_null() {
            str_of(t, "decision").to_string()
        } else {
            status.to_string()
        };
        assert_eq!(j["outcome"], outcome.as_str());
        assert_eq!(c["outcome"], outcome.as_str());
    }
    let expecting = jsonl
        .iter()
        .find(|j| j["hypothesis"] == AWKWARD[0])
        .unwrap();
    assert_eq!(
        expecting["expected_delta"].as_f64(),
        Some(-1.25),
        "{expecting:#}"
    );
    assert!(expecting["measured_delta"].is_number(), "{expecting:#}");
    let shown = dir.ratchet_ok(&["lineage", "show", &expecting["id"].to_string()]);
    assert!(
        shown.contains("expected change: -1.25  (measured: "),
        "{shown}"
    );
    // pandas' own CSV parser agrees on the awkward ones.
    let pandas: Vec<&str> = got["pandas_csv_hypotheses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for h in AWKWARD {
        assert!(
            pandas.contains(&h),
            "pandas read {h:?} differently: {pandas:#?}"
        );
    }
    // The run had failures of several labels and scored trials.
    let labels: std::collections::BTreeSet<&str> = jsonl
        .iter()
        .map(|j| j["outcome"].as_str().unwrap())
        .collect();
    assert!(labels.len() >= 3, "{labels:?}");

    // -o replaces the file whole; a failed export leaves nothing behind.
    let out = dir.ratchet(&["lineage", "export", "-o", "no/such/dir/x.jsonl"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot write"), "{}", stderr(&out));
}

#[test]
fn list_filters_select_what_they_say_and_show_tells_everything() {
    let (dir, trials) = finished_run();
    let list = |args: &[&str]| -> Vec<Value> {
        let mut a = vec!["lineage", "list", "--json"];
        a.extend_from_slice(args);
        dir.ratchet_ok(&a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let ids = |v: &[Value]| {
        v.iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let expect = |f: &dyn Fn(&Value) -> bool| {
        trials
            .iter()
            .filter(|t| f(t))
            .map(|t| t["id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&list(&["--specialist", "f"])),
        expect(&|t| t["specialist"] == "f")
    );
    assert_eq!(
        ids(&list(&["--status", "failed"])),
        expect(&|t| t["status"] == "failed")
    );
    let crash = expect(&|t| t["label"] == "crash" || t["label"] == "budget_overrun");
    assert!(!crash.is_empty(), "the fault specialist caused no crash");
    let label = if trials.iter().any(|t| t["label"] == "crash") {
        "crash"
    } else {
        "budget_overrun"
    };
    assert_eq!(
        ids(&list(&["--label", label])),
        expect(&|t| t["label"] == label)
    );
    assert_eq!(
        ids(&list(&["--label", "kept"])),
        expect(&|t| t["status"] == "kept")
    );
    // --limit: the newest N, shown in id order.
    let all = ids(trials);
    assert_eq!(ids(&list(&["--limit", "3"])), all[all.len() - 3..].to_vec());
    assert_eq!(ids(&list(&["--since", "1h"])), all);
    assert!(list(&["--since", "2000-01-01", "--specialist", "nobody"]).is_empty());
    assert!(list(&["--since", "2999-01-01"]).is_empty());
    let out = dir.ratchet(&["lineage", "list", "--label", "exploded"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("budget_overrun"), "{}", stderr(&out));
    let table = dir.ratchet_ok(&["lineage", "list", "--specialist", "hand"]);
    let hand = expect(&|t| t["specialist"] == "hand").len();
    assert!(hand >= 3);
    assert_eq!(table.lines().count(), 1 + hand, "{table}");

    // show: proposed values, the diff, every state change with its time,
    // and the log tails.
    let t = trials
        .iter()
        .find(|t| t["hypothesis"] == AWKWARD[0])
        .unwrap();
    let text = dir.ratchet_ok(&["lineage", "show", &t["id"].to_string()]);
    for want in [
        "hypothesis: x to 2.5",
        "proposed values:",
        "search.x = 2.5",
        "diff:",
        "+x = 2.5",
        "history:",
        "UTC",
        "running",
        "stdout (",
    ] {
        assert!(text.contains(want), "show lacks {want:?}:\n{text}");
    }
    let changes = t["history"].as_array().unwrap().len();
    let shown = text.lines().filter(|l| l.contains(" UTC  +")).count();
    assert_eq!(shown, changes, "{text}");

    // show --json: the record list --json writes, the diff left out on request.
    let id = t["id"].to_string();
    let json: Value =
        serde_json::from_str(&dir.ratchet_ok(&["lineage", "show", &id, "--json"])).unwrap();
    assert_eq!(&json, t, "show --json is the record list --json has");
    let bare: Value =
        serde_json::from_str(&dir.ratchet_ok(&["lineage", "show", &id, "--json", "--no-diff"]))
            .unwrap();
    assert!(json["diff"]
        .as_str()
        .is_some_and(|d| d.contains("+x = 2.5")));
    assert!(bare["diff"].is_null(), "{bare}");
}

/// The report as headless Chromium sees it: the DOM after its scripts ran,
/// the console, and a screenshot.
#[test]
fn the_html_report_renders_in_chromium_with_every_point() {
    let (dir, trials) = finished_run();
    dir.ratchet_ok(&["lineage", "export", "--format", "html", "-o", "report.html"]);
    let report = dir.path().join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    for remote in [
        "src=\"http",
        "href=\"http",
        "<link",
        "<script src",
        "@import",
    ] {
        assert!(
            !html.contains(remote),
            "the report is not self-contained: {remote}"
        );
    }

    let dom = render(&report);
    assert!(
        dom.contains("<title>ratchet: faulty</title>"),
        "the title was changed"
    );

    let terminal = trials
        .iter()
        .filter(|t| TERMINAL.contains(&str_of(t, "status")))
        .count();
    let kept = trials.iter().filter(|t| t["status"] == "kept").count();
    let points = dom.matches("class=\"pt ").count();
    assert_eq!(points, terminal, "one point per finished trial");
    assert!(dom.contains(&format!("data-points=\"{terminal}\"")));
    assert_eq!(dom.matches("class=\"pt kept\"").count(), kept);
    assert!(dom.contains("class=\"best\""), "no running-best line");
    // A shaded band for each incumbent with a spread (this fixture is
    // deterministic, so it has none: see the next test).
    let spread = |t: &Value| t["noise"]["confirmed"]["sd"].as_f64().unwrap_or(0.0) > 0.0;
    assert_eq!(
        dom.matches("class=\"band\"").count(),
        trials
            .iter()
            .filter(|t| t["status"] == "kept" && spread(t))
            .count()
    );
    // The tables: one row per specialist, one per trial; the awkward
    // hypotheses shown as text.
    assert_eq!(dom.matches("<tr class=\"o-").count(), trials.len());
    assert!(dom.contains("&lt;/script&gt;&lt;script&gt;document.title="));
    for name in ["hand", "s", "f", "baseline"] {
        assert!(
            dom.contains(&format!("<td>{name}</td>")),
            "no row for {name}"
        );
    }

    // The axes are labelled at round numbers: a step of 1, 2, 2.5 or 5
    // times a power of ten, every label a multiple of it.
    let ticks = |class: &str| -> Vec<f64> {
        dom.split(&format!("class=\"{class}\""))
            .skip(1)
            .map(|rest| {
                let text = &rest[rest.find('>').unwrap() + 1..rest.find("</text>").unwrap()];
                text.parse::<f64>()
                    .unwrap_or_else(|_| panic!("tick {text:?}"))
            })
            .collect()
    };
    for (class, at_least) in [("ytick", 3), ("xtick", 3)] {
        let v = ticks(class);
        assert!(v.len() >= at_least, "{class}: {v:?}");
        let step = v[1] - v[0];
        let exp = step.log10().floor();
        let mantissa = step / 10f64.powf(exp);
        assert!(
            [1.0, 2.0, 2.5, 5.0]
                .iter()
                .any(|m| (mantissa - m).abs() < 1e-6),
            "{class}: a step of {step}: {v:?}"
        );
        for w in v.windows(2) {
            assert!(((w[1] - w[0]) - step).abs() < step * 1e-6, "{class}: {v:?}");
        }
        for x in &v {
            assert!(
                ((x / step) - (x / step).round()).abs() < 1e-6,
                "{class}: {v:?}"
            );
        }
    }

    // The screenshot shows the plot: pixels of the kept colour.
    let png = dir.path().join("report.png");
    chromium(&report, &[&format!("--screenshot={}", png.display())]);
    let counted = common::python_json(COUNT_PIXELS, &[&png]);
    assert!(
        counted["kept"].as_u64().unwrap() > 40,
        "the plot is not visible in the screenshot: {counted}"
    );
}

fn chromium(page: &Path, extra: &[&str]) -> std::process::Output {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            // Containers often have a small /dev/shm.
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,1100",
        ])
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium is not installed (.ci/run installs Debian's chromium package)");
    assert!(out.status.success(), "chromium failed: {}", stderr(&out));
    out
}

/// The page's DOM after its scripts ran, asserting they raised nothing
/// (the console, and the page's own error hook).
fn render(page: &Path) -> String {
    let out = chromium(page, &["--dump-dom"]);
    let dom = stdout(&out);
    let console = stderr(&out);
    assert!(!console.contains("Uncaught"), "script errors:\n{console}");
    assert!(
        !dom.contains("data-script-errors=\""),
        "script errors in the page"
    );
    dom
}

/// The noise band on a lineage whose incumbents have one: the synthetic
/// lineage of `ratchet bench lineage`, read with `--lineage`.
#[test]
fn the_report_shades_the_noise_band_of_every_incumbent() {
    let dir = Dir::with_fixture("faulty");
    let bench = dir.path().join("bench");
    dir.ratchet_ok(&[
        "bench",
        "lineage",
        "--trials",
        "300",
        "--keep",
        "--dir",
        bench.to_str().unwrap(),
    ]);
    let lineage = bench.join("lineage");
    let l = lineage.to_str().unwrap();
    dir.ratchet_ok(&[
        "lineage",
        "--lineage",
        l,
        "export",
        "--format",
        "html",
        "-o",
        "r.html",
    ]);
    let kept = dir
        .ratchet_ok(&["lineage", "--lineage", l, "list", "--label", "kept"])
        .lines()
        .count()
        - 1;
    let dom = render(&dir.path().join("r.html"));
    assert!(kept >= 2, "the synthetic lineage kept {kept}");
    assert_eq!(dom.matches("class=\"band\"").count(), kept);
    assert_eq!(dom.matches("class=\"pt kept\"").count(), kept);
    // Unfinished trials are not points.
    let unfinished = ["queued", "running", "evaluating"]
        .iter()
        .map(|s| {
            dir.ratchet_ok(&["lineage", "--lineage", l, "list", "--status", s])
                .lines()
                .count()
                - 1
        })
        .sum::<usize>();
    assert!(unfinished > 0);
    assert_eq!(dom.matches("class=\"pt ").count(), 300 - unfinished);
}

/// Counts pixels of the kept colour (#2a9d55) in a PNG, with the standard
/// library only.
const COUNT_PIXELS: &str = r#"
import json, struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n"
pos, idat = 8, b""
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
assert depth == 8 and ctype in (2, 6), (depth, ctype)
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
kept = 0
i = 0
for _ in range(h):
    f = raw[i]; line = bytearray(raw[i + 1:i + 1 + stride]); i += 1 + stride
    for x in range(stride):
        a = line[x - bpp] if x >= bpp else 0
        b = prev[x]
        c = prev[x - bpp] if x >= bpp else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    for x in range(0, stride, bpp):
        if abs(line[x] - 0x2a) <= 2 and abs(line[x + 1] - 0x9d) <= 2 and abs(line[x + 2] - 0x55) <= 2:
            kept += 1
    prev = line
print(json.dumps({"width": w, "height": h, "kept": kept}))
"#;
