//! The dashboard and `/metrics` of a running `ratchet daemon` (`daemon.http`):
//! the JSON API and the Prometheus text over real HTTP on 127.0.0.1, checked
//! with `promtool check metrics` (Debian's `prometheus` package), and the
//! page in headless Chromium, where a trial that ends after the page loaded
//! appears without a reload.

mod common;

use std::process::Command;

use common::web::{free_port, get, request, Browser};
use common::{daemon_log, start_daemon, stderr, stdout, terminate, wait_for, wait_up, Dir};
use serde_json::{json, Value};

/// The curves fixture (progress lines every 0.1 s of a 2 s budget) with a
/// manual specialist, the dashboard on a free port: its address.
fn setup(dir: &Dir, proposals: &[(&str, Value)]) -> String {
    dir.manual(1, proposals);
    let addr = format!("127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(dir.path().join("specialists.toml")).unwrap();
    dir.write(
        "specialists.toml",
        &text.replace("seed = 1\n", &format!("seed = 1\nhttp = \"{addr}\"\n")),
    );
    addr
}

fn finished(dir: &Dir, n: usize) -> bool {
    let t = dir.trials();
    t.len() >= n
        && t.iter().all(|t| {
            ["kept", "discarded", "failed", "interrupted"].contains(&t["status"].as_str().unwrap())
        })
}

#[test]
fn the_api_and_metrics_of_a_running_daemon_answer_and_promtool_accepts_them() {
    let dir = Dir::with_fixture("curves");
    let addr = setup(
        &dir,
        &[
            ("a", json!({"s.better": 0.5})),
            ("b", json!({"s.worse": 0.9})),
        ],
    );
    let daemon = start_daemon(&dir, &[]);
    wait_up(&dir);
    // The baseline and both proposals reach an outcome.
    wait_for("three trials to finish", 120, || {
        finished(&dir, 3).then_some(())
    });
    let log = daemon_log(&dir);
    assert!(
        log.contains(&format!("dashboard at http://{addr}/")),
        "the address is not logged:\n{log}"
    );

    let metrics = get(&addr, "/metrics");
    assert!(
        metrics
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        metrics.headers
    );
    let text = metrics.body;
    for name in [
        "ratchet_trials_total",
        "ratchet_slots",
        "ratchet_slots_busy",
        "ratchet_queue_length",
        "ratchet_incumbent_score",
        "ratchet_slot_seconds_total",
        "ratchet_llm_requests_total",
        "ratchet_llm_tokens_total",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{name} is missing:\n{text}"
        );
    }
    // The counts are lineage's, by specialist and outcome.
    let trials = dir.trials();
    let mut expect = std::collections::BTreeMap::new();
    for t in &trials {
        let outcome = t["label"].as_str().map(String::from).unwrap_or_else(|| {
            match (t["status"].as_str().unwrap(), &t["decision"]) {
                ("kept", _) => "kept".into(),
                (_, d) => d.as_str().unwrap_or("?").to_string(),
            }
        });
        *expect
            .entry(format!(
                "ratchet_trials_total{{outcome=\"{outcome}\",specialist=\"{}\"}}",
                t["specialist"].as_str().unwrap()
            ))
            .or_insert(0u64) += 1;
    }
    for (series, n) in &expect {
        assert!(
            text.lines().any(|l| l == format!("{series} {n}")),
            "{series} {n} is not in /metrics:\n{text}"
        );
    }
    assert!(text.contains("ratchet_slots 1\n"), "{text}");
    assert!(
        text.contains("ratchet_llm_requests_total{specialist=\"hand\"} 0\n"),
        "a specialist that asks no model is at 0: {text}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed (.ci/run installs Debian's prometheus package)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success()
            && stdout(&checked).trim().is_empty()
            && stderr(&checked).trim().is_empty(),
        "promtool check metrics: {}{}\n{text}",
        stdout(&checked),
        stderr(&checked)
    );

    // The JSON API, version 1.
    let status = get(&addr, "/api/v1/status").json();
    assert_eq!(status["v"], 1);
    assert_eq!(status["status"]["experiment"], "curves");
    assert!(status["now_ms"].as_u64().unwrap() >= status["status"]["started_ms"].as_u64().unwrap());
    let listed = get(&addr, "/api/v1/trials?limit=2").json();
    let ids: Vec<u64> = listed["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [3, 2], "newest first, as `lineage list`");
    let oldest = get(&addr, "/api/v1/trials?limit=1&oldest_first=true").json();
    assert_eq!(oldest["trials"][0]["specialist"], "baseline");
    let by_hand = get(&addr, "/api/v1/trials?specialist=hand").json();
    assert_eq!(by_hand["trials"].as_array().unwrap().len(), 2);
    let bad = request(&addr, "GET", "/api/v1/trials?status=bogus").unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.json()["error"].as_str().unwrap().contains("bogus"),
        "{}",
        bad.body
    );
    let one = get(&addr, "/api/v1/trials/2").json();
    assert_eq!(one["trial"]["id"], 2);
    assert!(
        one["logs"]["train.stdout"]
            .as_str()
            .unwrap()
            .contains("train_loss="),
        "the train log's tail: {}",
        one["logs"]
    );
    let missing = request(&addr, "GET", "/api/v1/trials/999").unwrap();
    assert_eq!(missing.status, 404);
    let plot = get(&addr, "/api/v1/plot").json();
    assert_eq!(plot["points"].as_array().unwrap().len(), 3, "{plot}");
    let epoch = plot["epoch"].as_u64().unwrap();
    let next = plot["next"].as_u64().unwrap();
    let again = get(&addr, &format!("/api/v1/plot?epoch={epoch}&after={next}")).json();
    assert!(
        again["points"].as_array().unwrap().is_empty(),
        "only what is new: {again}"
    );
    let stale = get(
        &addr,
        &format!("/api/v1/plot?epoch={}&after={next}", epoch + 1),
    )
    .json();
    assert_eq!(
        stale["points"].as_array().unwrap().len(),
        3,
        "another epoch gets everything"
    );
    assert_eq!(get(&addr, "/api/v1/failures").json()["failures"], json!([]));
    // Read-only: nothing but GET.
    let post = request(&addr, "POST", "/api/v1/status").unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(request(&addr, "GET", "/nothing").unwrap().status, 404);
    // A name that is not loopback (DNS rebinding) gets nothing.
    let port = addr.rsplit(':').next().unwrap();
    let foreign = common::web::request_as(
        &addr,
        &format!("evil.example:{port}"),
        "GET",
        "/api/v1/status",
    )
    .unwrap();
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    let local =
        common::web::request_as(&addr, &format!("localhost:{port}"), "GET", "/api/v1/status")
            .unwrap();
    assert_eq!(local.status, 200, "{}", local.body);
    let page = get(&addr, "/");
    assert!(page.body.contains("ratchetPlot"));
    assert!(terminate(daemon).success());
}

#[test]
fn an_address_beyond_loopback_needs_a_second_key() {
    let dir = Dir::with_fixture("curves");
    dir.manual(1, &[]);
    let text = std::fs::read_to_string(dir.path().join("specialists.toml")).unwrap();
    dir.write(
        "specialists.toml",
        &text.replace("seed = 1\n", "seed = 1\nhttp = \"0.0.0.0:8787\"\n"),
    );
    let out = dir.ratchet(&["check"]);
    assert!(!out.status.success());
    let err = stderr(&out) + &stdout(&out);
    assert!(
        err.contains("daemon.http") && err.contains("http_allow_remote"),
        "{err}"
    );
    dir.write(
        "specialists.toml",
        &text.replace("seed = 1\n", "seed = 1\nhttp = \"localhost\"\n"),
    );
    let out = dir.ratchet(&["check"]);
    let err = stderr(&out) + &stdout(&out);
    assert!(
        !out.status.success() && err.contains("not an address and port"),
        "{err}"
    );
    let port = free_port();
    dir.write(
        "specialists.toml",
        &text.replace(
            "seed = 1\n",
            &format!("seed = 1\nhttp = \"0.0.0.0:{port}\"\nhttp_allow_remote = true\n"),
        ),
    );
    let daemon = start_daemon(&dir, &[]);
    wait_up(&dir);
    assert_eq!(
        get(&format!("127.0.0.1:{port}"), "/api/v1/status").json()["v"],
        1
    );
    let log = daemon_log(&dir);
    assert!(
        log.contains("WARN") && log.contains("beyond this machine"),
        "{log}"
    );
    assert!(terminate(daemon).success());
}

/// The page in a real browser: the finished trials are in the plot, and a
/// trial that ends while the page is open appears without a reload; its live
/// curve shows while it trains, and a crash shows with its stderr.
#[test]
fn the_dashboard_in_chromium_shows_a_trial_that_ends_after_it_loaded() {
    let dir = Dir::with_fixture("curves");
    // Runs of 5 s (the page polls every 2 s); s.worse above 0.95 crashes.
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &exp.replace("budget_secs = 2", "budget_secs = 5"),
    );
    let train = std::fs::read_to_string(dir.path().join("experiment/train.py")).unwrap();
    dir.write(
        "experiment/train.py",
        &train.replace(
            "seed = int(",
            "if s[\"worse\"] > 0.95:\n    import sys\n    print(\"fixture: crashing on purpose\", file=sys.stderr)\n    sys.exit(3)\nseed = int(",
        ),
    );
    let addr = setup(&dir, &[("a", json!({"s.better": 0.5}))]);
    let daemon = start_daemon(&dir, &[]);
    wait_up(&dir);
    wait_for("two trials to finish", 120, || {
        finished(&dir, 2).then_some(())
    });

    let mut browser = Browser::open(&format!("http://{addr}/"));
    let points = |b: &mut Browser| -> u64 {
        b.eval("Number((document.getElementById('progress') || {getAttribute(){}}).getAttribute('data-points') || 0)")
            .as_u64()
            .unwrap_or(0)
    };
    wait_for("the plot to show 2 trials", 60, || {
        (points(&mut browser) == 2).then_some(())
    });
    let text = |b: &mut Browser, id: &str| -> String {
        b.eval(&format!(
            "(document.getElementById('{id}') || {{}}).innerText || ''"
        ))
        .as_str()
        .unwrap_or("")
        .to_string()
    };
    assert!(text(&mut browser, "title").contains("ratchet: curves"));
    assert!(
        text(&mut browser, "specialists").contains("hand"),
        "the specialist table: {}",
        text(&mut browser, "specialists")
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#progress .pt').length"),
        json!(2)
    );
    // A mark the page would lose on a reload.
    browser.eval("window.__before = 'still here'");
    for (name, values) in [
        ("b", json!({"s.better": 0.2})),
        ("c", json!({"s.worse": 0.99})),
    ] {
        dir.write(
            &format!("lineage/inbox/hand/{name}.json"),
            &json!({"hypothesis": name, "edits": [{"kind": "set", "values": values}]}).to_string(),
        );
    }
    // While #3 trains, its slot and its live curve against the incumbent's show.
    let mut seen = String::new();
    let live = (0..300).any(|_| {
        let slots = text(&mut browser, "slots");
        // SVG text is in textContent, not innerText.
        let curves = browser
            .eval("document.getElementById('curves').textContent")
            .as_str()
            .unwrap_or("")
            .to_string();
        seen = format!("slots: {slots}\ncurves: {curves}");
        let found = slots.contains("#3")
            && curves.contains("#3 train_loss")
            && curves.contains("(green: incumbent #");
        if !found {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        found
    });
    assert!(
        live,
        "no live curve of #3 in 60 s; last seen:\n{seen}\ndaemon.log:\n{}",
        daemon_log(&dir)
    );
    wait_for("the new trials in the plot", 120, || {
        (points(&mut browser) == 4).then_some(())
    });
    wait_for("the crash in the failures table", 60, || {
        let f = text(&mut browser, "failures");
        (f.contains("#4") && f.contains("crash") && f.contains("crashing on purpose")).then_some(())
    });
    assert_eq!(
        browser.eval("window.__before"),
        json!("still here"),
        "the page was reloaded"
    );
    assert_eq!(
        browser.eval("document.body.getAttribute('data-script-errors')"),
        Value::Null
    );
    assert_eq!(
        browser.eval("document.getElementById('conn').className"),
        json!("")
    );
    let title = browser.eval("Array.from(document.querySelectorAll('#progress .pt title')).map(t => t.textContent).join('|')");
    assert!(title.as_str().unwrap().contains("#3 hand"), "{title}");
    assert!(
        title.as_str().unwrap().contains("#4 hand: crash"),
        "{title}"
    );

    // The trial page of the crash.
    drop(browser);
    let mut page = Browser::open(&format!("http://{addr}/trial/4"));
    wait_for("the trial page", 60, || {
        let t = page.eval("(document.getElementById('hypothesis') || {}).textContent");
        (t == json!("c")).then_some(())
    });
    let logs = page.eval("document.getElementById('logs').innerText");
    assert!(
        logs.as_str().unwrap().contains("crashing on purpose"),
        "{logs}"
    );
    assert_eq!(
        page.eval("document.body.getAttribute('data-script-errors')"),
        Value::Null
    );
    drop(page);
    assert!(terminate(daemon).success());
}
