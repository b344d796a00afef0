//! LLM specialists against a real HTTP server on 127.0.0.1 that speaks the
//! chat completions API, scripted per test, on the faulty fixture.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::llm::{llm_specialist, proposal, LlmServer, Reply};
use common::{stderr, stdout, str_of, Dir};
use serde_json::{json, Value};

const HEAD: &str =
    "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = 1\nseed = 3\n";
const SEARCH: &str =
    "\n[[specialist]]\nname = \"search\"\nsurface = \"search\"\nkind = \"search\"\n";

fn setup(dir: &Dir, specialists: &str, agents: &[&str]) {
    dir.write("specialists.toml", &format!("{HEAD}{specialists}"));
    for name in agents {
        dir.write(
            &format!("agents/{name}.md"),
            &format!("AGENT-FILE-{name}: you tune x of the faulty fixture.\n"),
        );
    }
}

fn ratchet_env(dir: &Dir, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ratchet {args:?}: {}\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

fn set_x(x: f64) -> Value {
    json!([{"kind": "set", "values": {"search.x": x}}])
}

fn events(dir: &Dir) -> Vec<Value> {
    dir.ratchet_ok(&["lineage", "events", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_valid_edit_runs_and_a_crash_reaches_the_next_prompt() {
    let server = LlmServer::start(|_, n, _| {
        Reply::Text(match n {
            0 => proposal(
                "HYP-CRASH-17: stop early",
                json!([{"kind": "search_replace", "path": "train.py",
                        "search": "time.sleep(0.2)",
                        "replace": "print('STDERR-MARK-9', file=sys.stderr); sys.exit(3)"}]),
            ),
            n => format!(
                "Sure! Here is my proposal:\n```json\n{}\n```",
                proposal(&format!("step {n}"), set_x(3.0 + n as f64 / 10.0))
            ),
        })
    });
    let dir = Dir::with_fixture("faulty");
    setup(
        &dir,
        &llm_specialist("llm", "m", &server.base_url(), ""),
        &["llm"],
    );
    dir.ratchet_ok(&["run", "--trials", "5"]);

    let trials = dir.trials();
    assert_eq!(trials.len(), 5);
    let crash = trials
        .iter()
        .find(|t| str_of(t, "hypothesis").starts_with("HYP-CRASH-17"))
        .expect("the crash proposal is in lineage");
    assert_eq!(str_of(crash, "label"), "crash", "{crash:#}");
    let scored: Vec<&Value> = trials
        .iter()
        .filter(|t| str_of(t, "specialist") == "llm" && t["score"].is_f64())
        .collect();
    assert_eq!(scored.len(), 3, "{trials:#?}");
    for t in &scored {
        let x = t["config"]["search.x"].as_f64().unwrap();
        let score = t["score"].as_f64().unwrap();
        assert!((score - ((x - 3.0).powi(2) + 0.5)).abs() < 1e-9, "{t:#}");
    }

    let requests = server.requests_of("m");
    assert_eq!(requests.len(), 4, "one request per proposal");
    let first = requests[0].prompt();
    assert!(
        first.contains("AGENT-FILE-llm"),
        "the agent file leads the prompt"
    );
    assert!(
        first.contains("search.x = 5.5"),
        "the surface's current values: {first}"
    );
    assert!(first.contains("## train.py"), "the surface's files");
    assert!(!first.contains("HYP-CRASH-17"));
    assert_eq!(requests[0].body["response_format"]["type"], "json_schema");
    let last = requests.last().unwrap().prompt();
    let crash_id = format!("#{} ", crash["id"]);
    for needle in [
        crash_id.as_str(),
        "failed: crash",
        "HYP-CRASH-17",
        "STDERR-MARK-9",
    ] {
        assert!(
            last.contains(needle),
            "`{needle}` missing from the last prompt:\n{last}"
        );
    }
}

#[test]
fn garbled_replies_and_illegal_paths_are_recorded_never_applied() {
    let server = LlmServer::start(|_, n, _| {
        Reply::Text(match n {
            0 => "I think we should {raise the learning rate".into(),
            1 => proposal(
                "write outside",
                json!([{"kind": "replace", "path": "../escaped.txt", "content": "x"}]),
            ),
            n => proposal(&format!("fine {n}"), set_x(4.0 - n as f64 / 10.0)),
        })
    });
    let dir = Dir::with_fixture("faulty");
    setup(
        &dir,
        &llm_specialist("llm", "m", &server.base_url(), ""),
        &["llm"],
    );
    dir.ratchet_ok(&["run", "--trials", "4"]);
    let trials = dir.trials();
    let garbled = &trials[1];
    assert_eq!(str_of(garbled, "label"), "proposer_error", "{garbled:#}");
    assert!(
        str_of(garbled, "reply").contains("raise the learning rate"),
        "the reply is kept: {garbled:#}"
    );
    let illegal = &trials[2];
    assert_eq!(str_of(illegal, "label"), "illegal_edit", "{illegal:#}");
    assert!(str_of(illegal, "detail").contains("`../escaped.txt`"));
    assert!(!dir.path().join("escaped.txt").exists());
    assert!(matches!(str_of(&trials[3], "status"), "kept" | "discarded"));
}

#[test]
fn a_429_is_retried_after_the_servers_retry_after() {
    let server = LlmServer::start(|_, n, _| match n {
        0 => Reply::Status(429, vec![("Retry-After".into(), "1".into())]),
        _ => Reply::Text(proposal("after the rate limit", set_x(3.5))),
    });
    let dir = Dir::with_fixture("faulty");
    setup(
        &dir,
        &llm_specialist("llm", "m", &server.base_url(), ""),
        &["llm"],
    );
    dir.ratchet_ok(&["run", "--trials", "2"]);
    let requests = server.requests_of("m");
    assert_eq!(requests.len(), 2, "one 429, one success");
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "Retry-After: 1 not honoured: {gap:?}"
    );
    let trials = dir.trials();
    assert_eq!(str_of(&trials[1], "hypothesis"), "after the rate limit");
    assert!(trials[1]["score"].is_f64(), "{:#}", trials[1]);
    assert!(
        events(&dir).is_empty(),
        "a retried request is not a failure"
    );
}

#[test]
fn a_failing_endpoint_backs_off_while_the_other_specialists_go_on() {
    let server = LlmServer::start(|_, _, _| Reply::Status(500, vec![]));
    let dir = Dir::with_fixture("faulty");
    setup(
        &dir,
        &format!(
            "{}{SEARCH}",
            llm_specialist("bad", "m", &server.base_url(), "")
                .replace("failure_backoff_secs = 1", "failure_backoff_secs = 2")
        ),
        &["bad"],
    );
    dir.ratchet_ok(&["run", "--trials", "16"]);
    let trials = dir.trials();
    assert_eq!(trials.len(), 16);
    assert!(trials.iter().all(|t| str_of(t, "specialist") != "bad"));
    assert!(trials.iter().all(|t| t["status"] != "running"));

    let requests = server.requests_of("m");
    // Rounds: attempts closer than 1 s belong together (retries wait
    // 25–100 ms; the rest after a failed round is 2 s). 16 trials of at least
    // 0.25 s each outlast the first rest.
    let mut rounds: Vec<Vec<std::time::Instant>> = Vec::new();
    for r in &requests {
        match rounds.last_mut() {
            Some(round) if r.at - *round.last().unwrap() < Duration::from_millis(1000) => {
                round.push(r.at)
            }
            _ => rounds.push(vec![r.at]),
        }
    }
    assert_eq!(
        rounds[0].len(),
        3,
        "max_retries = 2: three attempts, then rest"
    );
    assert!(rounds.len() >= 2, "no second round: {rounds:?}");
    let rest = rounds[1][0] - *rounds[0].last().unwrap();
    assert!(rest >= Duration::from_secs(2), "rested only {rest:?}");
    let errors: Vec<&Value> = events(&dir)
        .iter()
        .filter(|e| e["kind"] == "proposer_error" && e["subject"] == "bad")
        .cloned()
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .collect();
    assert!(!errors.is_empty());
    assert!(
        str_of(errors[0], "detail").contains("HTTP 500"),
        "{:#}",
        errors[0]
    );
    assert!(
        str_of(errors[0], "detail").contains("3 attempt"),
        "{:#}",
        errors[0]
    );
}

#[test]
fn a_reply_slower_than_the_timeout_is_abandoned() {
    let server = LlmServer::start(|_, _, _| {
        Reply::Slow(
            Duration::from_secs(4),
            Box::new(Reply::Text(proposal("too late", set_x(3.0)))),
        )
    });
    let dir = Dir::with_fixture("faulty");
    let slow = llm_specialist("slow", "m", &server.base_url(), "")
        .replace("timeout_secs = 5", "timeout_secs = 1")
        .replace("max_retries = 2", "max_retries = 0");
    setup(&dir, &format!("{slow}{SEARCH}"), &["slow"]);
    dir.ratchet_ok(&["run", "--trials", "5"]);
    let trials = dir.trials();
    assert!(trials.iter().all(|t| str_of(t, "hypothesis") != "too late"));
    let all = events(&dir);
    let timeout = all
        .iter()
        .find(|e| e["subject"] == "slow")
        .unwrap_or_else(|| panic!("no event for the slow specialist: {all:#?}"));
    assert!(
        str_of(timeout, "detail").contains("no reply within 1 s"),
        "{timeout:#}"
    );
}

#[test]
fn the_api_key_reaches_the_server_and_nothing_else() {
    const KEY: &str = "sk-ratchet-sentinel-5f3a9c";
    let server = LlmServer::start(|_, n, _| {
        match n {
        // Servers echo a wrong key in their error (OpenAI does): it must not
        // reach the event log.
        0 => Reply::Body(
            401,
            json!({"error": {"message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error", "param": null, "code": null}}).to_string(),
        ),
        1 => Reply::Text(proposal(
            "print what the trial sees",
            json!([{"kind": "search_replace", "path": "train.py",
                    "search": "time.sleep(0.2)",
                    "replace": "print('key_seen=' + os.environ.get('RATCHET_TEST_KEY', 'absent'))\n\
try:\n    env = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n    \
print('parent_env=' + ('leaks' if b'RATCHET_TEST_KEY' in env else 'clean'))\n\
except OSError:\n    print('parent_env=unreadable')"}]),
        )),
        n => Reply::Text(proposal(&format!("x {n}"), set_x(2.0 + n as f64 / 10.0))),
    }
    });
    let dir = Dir::with_fixture("faulty");
    let spec = llm_specialist(
        "llm",
        "m",
        &server.base_url(),
        "api_key_env = \"RATCHET_TEST_KEY\"\n",
    );
    setup(&dir, &spec, &["llm"]);
    let out = ratchet_env(
        &dir,
        &["run", "--trials", "3"],
        &[("RATCHET_TEST_KEY", KEY), ("RATCHET_LOG", "debug")],
    );
    let requests = server.requests_of("m");
    assert!(!requests.is_empty());
    assert!(requests
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {KEY}"))));

    let trial = &dir.trials()[1];
    let train_out = std::fs::read_to_string(dir.path().join(format!(
        "lineage/trials/{:06}/train.stdout",
        trial["id"].as_u64().unwrap()
    )))
    .unwrap();
    assert!(train_out.contains("key_seen=absent"), "{train_out}");
    assert!(train_out.contains("parent_env="), "{train_out}");
    // ratchet makes itself non-dumpable, so a trial of the same (non-root)
    // user cannot read /proc/<ratchet>/environ. root reads it regardless.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if !root {
        assert!(!train_out.contains("parent_env=leaks"), "{train_out}");
    }
    let rejected = events(&dir);
    assert!(
        str_of(&rejected[0], "detail").contains("HTTP 401"),
        "{rejected:#?}"
    );

    let mut places = vec![
        ("stdout".to_string(), out.stdout.clone()),
        ("stderr".to_string(), out.stderr.clone()),
        (
            "lineage list --json".to_string(),
            dir.ratchet_ok(&["lineage", "list", "--json"]).into_bytes(),
        ),
        (
            "lineage events".to_string(),
            dir.ratchet_ok(&["lineage", "events", "--json"])
                .into_bytes(),
        ),
    ];
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                places.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    assert!(
        places.len() > 10,
        "the search covered the lineage db and trial dirs"
    );
    for (place, bytes) in &places {
        let found = bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes());
        assert!(!found, "the API key leaked into {place}");
    }
}

/// The `response_format` a request asked for: its type, and "+schema" when a
/// json_object request carries a schema beside it.
fn format_of(body: &Value) -> Option<String> {
    let f = body.get("response_format").filter(|f| !f.is_null())?;
    let kind = f["type"].as_str().unwrap_or("?").to_string();
    Some(if f.get("schema").is_some() {
        kind + "+schema"
    } else {
        kind
    })
}

/// What llama-cpp-python's server answers a `json_schema` request.
fn llama_cpp_python_refusal() -> Reply {
    Reply::Body(
        500,
        r#"{"error":{"message":"1 validation error: ('body', 'response_format', 'type'): Input should be 'text' or 'json_object'"}}"#.into(),
    )
}

/// Runs `trials` trials of one llm specialist (with `extra` keys) against
/// `server`: the run's directory, and the formats it asked for, in order.
fn run_against(server: &LlmServer, extra: &str, trials: &str) -> (Dir, Vec<String>) {
    let dir = Dir::with_fixture("faulty");
    setup(
        &dir,
        &llm_specialist("llm", "m", &server.base_url(), extra),
        &["llm"],
    );
    dir.ratchet_ok(&["run", "--trials", trials]);
    let formats = server
        .requests_of("m")
        .iter()
        .filter_map(|r| format_of(&r.body))
        .collect();
    (dir, formats)
}

#[test]
fn a_server_without_structured_output_is_asked_again_more_simply_and_remembered() {
    let server = LlmServer::start(|_, n, body| {
        let format = &body["response_format"]["type"];
        if format == "json_schema" {
            llama_cpp_python_refusal()
        } else if !format.is_null() {
            // OpenAI's words for a model without structured output.
            Reply::Body(
                400,
                r#"{"error":{"message":"Invalid parameter: 'response_format' of type 'json_object' is not supported with this model."}}"#.into(),
            )
        } else {
            Reply::Text(proposal(
                &format!("plain {n}"),
                set_x(2.5 + n as f64 / 10.0),
            ))
        }
    });
    let (dir, formats) = run_against(&server, "", "4");
    let requests = server.requests_of("m");
    assert_eq!(
        formats,
        ["json_schema", "json_object+schema", "json_object"],
        "asked once with each structured format, simpler each time, then never"
    );
    let schema = &requests[0].body["response_format"]["json_schema"]["schema"];
    let set = &schema["properties"]["edits"]["items"]["anyOf"][0];
    assert_eq!(set["properties"]["kind"]["const"], "set", "{schema}");
    assert!(
        set["properties"]["values"]["properties"]
            .get("search.x")
            .is_some(),
        "the schema names the surface's key: {schema}"
    );
    assert_eq!(
        requests[1].body["response_format"]["schema"], *schema,
        "the same schema beside json_object"
    );
    assert_eq!(
        requests.len(),
        6,
        "the three refusals plus one request per proposal (3; the baseline is the fourth trial)"
    );
    assert_eq!(
        dir.trials().iter().filter(|t| t["score"].is_f64()).count(),
        4
    );
}

#[test]
fn a_server_that_takes_a_schema_only_beside_json_object_gets_it_there() {
    // llama-cpp-python's server: json_schema is a validation error (500);
    // {"type": "json_object", "schema": ...} constrains the reply.
    for (mode, expected) in [
        (
            "auto",
            ["json_schema", "json_object+schema", "json_object+schema"],
        ),
        (
            "schema",
            ["json_schema", "json_object+schema", "json_object+schema"],
        ),
    ] {
        let server = LlmServer::start(|_, n, body| {
            let format = &body["response_format"];
            if format["type"] == "json_schema" {
                llama_cpp_python_refusal()
            } else if format["type"] == "json_object" && format["schema"].is_object() {
                Reply::Text(proposal(
                    &format!("schema {n}"),
                    set_x(2.5 + n as f64 / 10.0),
                ))
            } else {
                Reply::Text("{\"recipe\": {\"layer-2\": 1}}".into())
            }
        });
        let (dir, formats) = run_against(&server, &format!("json_mode = \"{mode}\""), "3");
        assert_eq!(formats, expected, "json_mode = {mode}");
        assert_eq!(
            dir.trials().iter().filter(|t| t["score"].is_f64()).count(),
            3,
            "json_mode = {mode}: every reply was a proposal"
        );
    }
}

#[test]
fn the_hourly_request_budget_holds_while_the_others_go_on() {
    let server = LlmServer::start(|_, n, _| {
        Reply::Text(proposal(
            &format!("budgeted {n}"),
            set_x(1.0 + n as f64 / 10.0),
        ))
    });
    let dir = Dir::with_fixture("faulty");
    let spec = llm_specialist(
        "llm",
        "m",
        &server.base_url(),
        "max_requests_per_hour = 2\n",
    );
    setup(&dir, &format!("{spec}{SEARCH}"), &["llm"]);
    dir.ratchet_ok(&["run", "--trials", "9"]);
    assert_eq!(server.requests_of("m").len(), 2);
    let trials = dir.trials();
    assert_eq!(trials.len(), 9);
    assert_eq!(
        trials.iter().filter(|t| t["specialist"] == "llm").count(),
        2
    );
}

#[test]
fn a_lone_llm_specialist_that_rests_is_waited_for_not_given_up_on() {
    let server = LlmServer::start(|_, n, _| match n {
        0 => Reply::Status(503, vec![]),
        n => Reply::Text(proposal(
            &format!("after the rest {n}"),
            set_x(3.0 + n as f64 / 10.0),
        )),
    });
    let dir = Dir::with_fixture("faulty");
    let spec = llm_specialist("llm", "m", &server.base_url(), "")
        .replace("max_retries = 2", "max_retries = 0");
    setup(&dir, &spec, &["llm"]);
    dir.ratchet_ok(&["run", "--trials", "3"]);
    let trials = dir.trials();
    assert_eq!(
        trials.len(),
        3,
        "the run ended while the specialist rested: {trials:#?}"
    );
    assert_eq!(str_of(&trials[2], "specialist"), "llm");
    let requests = server.requests_of("m");
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1));
    assert_eq!(events(&dir).len(), 1);
}

#[test]
fn a_bad_request_about_something_else_keeps_the_schema() {
    let server = LlmServer::start(|_, n, _| match n {
        0 => Reply::Body(
            400,
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens."}}"#.into(),
        ),
        n => Reply::Text(proposal(&format!("x {n}"), set_x(2.5 + n as f64 / 10.0))),
    });
    let (_dir, formats) = run_against(&server, "", "3");
    assert!(formats.len() >= 3, "{formats:?}");
    assert!(
        formats.iter().all(|f| f == "json_schema"),
        "a 400 that is not about the response format changed it: {formats:?}"
    );
}
