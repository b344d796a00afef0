//! `ratchet daemon` as systemd runs it: the notification protocol through a
//! real datagram socket, the control socket, reload, pause across restarts,
//! and recovery after SIGKILLs at random moments.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::{
    daemon_log, group_alive, live_status, start_daemon, stderr, stdout, str_of, terminate,
    wait_for, wait_up, Dir,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const TERMINAL: [&str; 4] = ["kept", "discarded", "failed", "interrupted"];

/// specialists.toml for the faulty fixture with a short drain.
fn config(dir: &Dir, slots: usize, specialists: &[(&str, &str)], extra: &str) {
    let mut text = format!(
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = {slots}\nseed = 1\ndrain_timeout_secs = 10\n{extra}"
    );
    for (name, surface) in specialists {
        text.push_str(&format!(
            "\n[[specialist]]\nname = \"{name}\"\nsurface = \"{surface}\"\nkind = \"search\"\n"
        ));
    }
    dir.write("specialists.toml", &text);
}

fn spec_state<'a>(status: &'a Value, name: &str) -> &'a str {
    status["live"]["executor"]["specialists"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["state"].as_str().unwrap())
        .unwrap_or("")
}

#[test]
fn the_daemon_tells_systemd_ready_watchdog_and_stopping() {
    let dir = Dir::with_fixture("faulty");
    config(&dir, 1, &[("x", "search")], "");
    // Each trial writes down whether it saw the daemon's notify socket.
    let train = std::fs::read_to_string(dir.path().join("experiment/train.py")).unwrap();
    dir.write(
        "experiment/train.py",
        &train.replace(
            "time.sleep(0.2)",
            "open(os.path.join(trial_dir, 'notify.txt'), 'w').write(os.environ.get('NOTIFY_SOCKET', '-') + os.environ.get('WATCHDOG_USEC', '-'))\ntime.sleep(0.2)",
        ),
    );
    let sock = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&sock).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // 400 ms: the daemon pings every 200 ms.
    let child = start_daemon(
        &dir,
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let recv = |until: &str| -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let n = listener
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {until} from the daemon: {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == until);
            got.push(msg);
            if done {
                return got;
            }
        }
    };
    let first = recv("READY=1");
    assert!(
        first.iter().all(|m| !m.contains("WATCHDOG=1")),
        "a watchdog ping before READY: {first:?}"
    );
    let ready = first.last().unwrap();
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=")),
        "READY comes with a status line: {ready:?}"
    );
    // Recovery ran before READY: the lineage is open and the socket answers.
    assert!(live_status(&dir).is_some());
    recv("WATCHDOG=1");
    let pings = recv("WATCHDOG=1");
    assert!(pings
        .last()
        .unwrap()
        .lines()
        .any(|l| l.starts_with("STATUS=") && l.contains("slots busy")));

    let pid = Pid::from_raw(child.id() as i32);
    // A reload says RELOADING with the monotonic time (systemd 253 and
    // newer need it), then READY again.
    kill(pid, Signal::SIGHUP).unwrap();
    let reload = recv("READY=1");
    let reloading = reload
        .iter()
        .find(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {reload:?}"));
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|u| u > 0))),
        "{reloading:?}"
    );
    kill(pid, Signal::SIGTERM).unwrap();
    recv("STOPPING=1");
    let mut child = child;
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon_log(&dir));
    // Trials never see the daemon's notification socket.
    let trials = dir.trials();
    assert!(!trials.is_empty());
    for t in &trials {
        assert!(TERMINAL.contains(&str_of(t, "status")), "{t:#}");
        let seen = dir.path().join(format!(
            "lineage/trials/{:06}/notify.txt",
            t["id"].as_u64().unwrap()
        ));
        if let Ok(text) = std::fs::read_to_string(seen) {
            assert_eq!(text, "--", "a trial saw NOTIFY_SOCKET or WATCHDOG_USEC");
        }
    }
    assert!(
        trials.iter().any(|t| dir
            .path()
            .join(format!(
                "lineage/trials/{:06}/notify.txt",
                t["id"].as_u64().unwrap()
            ))
            .exists()),
        "no trial trained"
    );
    assert!(
        !dir.path().join("lineage/ratchet.sock").exists(),
        "the socket is removed on a clean stop"
    );
}

#[test]
fn a_bad_reload_is_refused_with_every_error_and_a_good_one_applies() {
    let dir = Dir::with_fixture("faulty");
    config(&dir, 1, &[("x", "search")], "");
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);

    // Two errors in one file: both are printed, nothing changes.
    let good = std::fs::read_to_string(dir.path().join("specialists.toml")).unwrap();
    let bad = good.replace("slots = 1", "slots = 0")
        + "\n[[specialist]]\nname = \"y\"\nsurface = \"nosuch\"\nkind = \"search\"\n";
    dir.write("specialists.toml", &bad);
    let out = dir.ratchet(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("daemon.slots"), "{err}");
    assert!(err.contains("nosuch"), "{err}");
    assert!(err.contains("the running one stays"), "{err}");
    let s = live_status(&dir).expect("the daemon still runs");
    assert_eq!(s["live"]["specialists"], serde_json::json!(["x"]));
    assert_eq!(s["live"]["executor"]["slots"], 1);
    assert!(daemon_log(&dir).contains("reload refused"));

    // SIGHUP with the same bad file: logged, still running.
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for("the SIGHUP reload to be refused in the log", 30, || {
        (daemon_log(&dir).matches("reload refused").count() >= 4).then_some(())
    });
    assert!(live_status(&dir).is_some());

    // A valid change: a specialist added and two slots, without a restart.
    let added = good.replace("slots = 1", "slots = 2")
        + "\n[[specialist]]\nname = \"fault\"\nsurface = \"fault\"\nkind = \"search\"\n";
    dir.write("specialists.toml", &added);
    let out = dir.ratchet_ok(&["reload"]);
    assert!(out.contains("added fault"), "{out}");
    assert!(out.contains("slots: 1 -> 2"), "{out}");
    let s = live_status(&dir).unwrap();
    assert_eq!(s["live"]["specialists"], serde_json::json!(["x", "fault"]));
    assert_eq!(s["live"]["executor"]["slots"], 2);
    assert_eq!(s["pid"].as_u64(), Some(child.id() as u64), "same process");
    wait_for("a trial of the added specialist", 60, || {
        dir_trials_live(&dir)
            .iter()
            .any(|t| t["specialist"] == "fault")
            .then_some(())
    });
    assert_eq!(terminate(child).code(), Some(0));
}

/// The trials a running daemon holds, through `status` (lineage is locked).
fn dir_trials_live(dir: &Dir) -> Vec<Value> {
    let Some(s) = live_status(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Value> = s["live"]["active"].as_array().unwrap().clone();
    out.extend(
        s["live"]["executor"]["running"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    out
}

#[test]
fn a_pause_is_kept_in_lineage_across_a_restart() {
    let dir = Dir::with_fixture("faulty");
    config(&dir, 1, &[("x", "search"), ("fault", "fault")], "");
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);
    let out = dir.ratchet_ok(&["pause", "x"]);
    assert!(out.contains("paused: x"), "{out}");
    let out = dir.ratchet(&["pause", "nobody"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no specialist named `nobody`"));
    let s = live_status(&dir).unwrap();
    assert_eq!(spec_state(&s, "x"), "paused");
    assert!(s["live"]["lineage"]["paused"]["x"].as_u64().is_some());
    assert_eq!(terminate(child).code(), Some(0));

    // Restarted: still paused, and it proposes nothing.
    let text = dir.ratchet_ok(&["status"]);
    assert!(text.contains("no ratchet daemon is running"), "{text}");
    assert!(text.contains("paused"), "{text}");
    let before = dir.trials().len();
    let child = start_daemon(&dir, &[]);
    let s = wait_up(&dir);
    assert_eq!(spec_state(&s, "x"), "paused");
    // The fault specialist's five modes run out; x stays silent meanwhile.
    wait_for("the unpaused specialist to run out of ideas", 120, || {
        let s = live_status(&dir)?;
        let idle = spec_state(&s, "fault") == "exhausted"
            && s["live"]["active"].as_array()?.is_empty()
            && s["live"]["executor"]["queued"].as_array()?.is_empty();
        idle.then_some(())
    });
    assert_eq!(terminate(child).code(), Some(0));
    let trials = dir.trials();
    assert!(trials.len() > before, "fault proposed");
    assert!(
        trials[before..].iter().all(|t| t["specialist"] != "x"),
        "a paused specialist proposed: {:#?}",
        &trials[before..]
    );

    // Resumed with no daemon running: stored for the next start.
    let out = dir.ratchet_ok(&["resume", "--all"]);
    assert!(out.contains("resumed: x"), "{out}");
    let n = trials.len();
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);
    wait_for("x to propose again", 60, || {
        let s = live_status(&dir)?;
        (s["live"]["lineage"]["trials"].as_u64()? > n as u64).then_some(())
    });
    assert_eq!(terminate(child).code(), Some(0));
    assert!(dir.trials()[n..].iter().any(|t| t["specialist"] == "x"));
}

#[test]
fn the_control_socket_is_private_to_its_user() {
    let dir = Dir::with_fixture("faulty");
    config(&dir, 1, &[("x", "search")], "");
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);
    let sock = dir.path().join("lineage/ratchet.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    if nix::unistd::geteuid().is_root() {
        // Another user (nobody) may reach the directory but not the socket...
        let tmp = dir.path();
        for d in [tmp.to_path_buf(), tmp.join("lineage")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let (code, text) = connect_as_nobody(&sock);
        assert_eq!(code, Some(13), "EACCES expected from mode 0600: {text}");
        // ...and with the mode opened up, the daemon's peer check refuses it.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (code, text) = connect_as_nobody(&sock);
        assert_eq!(code, Some(0), "{text}");
        let answer: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(answer["ok"], false, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("uid 65534"),
            "{answer}"
        );
        assert!(answer.get("status").is_none(), "nothing leaks: {answer}");
        assert!(daemon_log(&dir).contains("control connection from another user refused"));
    } else {
        eprintln!("not root: the uid switch is not possible; mode checked, peer check unit-tested");
    }
    assert_eq!(terminate(child).code(), Some(0));
}

/// Connects to `sock` as uid 65534 and sends a status request; the exit
/// code is the errno of a failed connect (0 when it connected), stdout the answer.
fn connect_as_nobody(sock: &Path) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(e); sys.exit(e.errno)
s.sendall(b'{"v":1,"cmd":"status"}\n')
print(s.makefile().readline())
"#;
    let out = Command::new("python3")
        .args(["-c", script, sock.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    (out.status.code(), stdout(&out) + &stderr(&out))
}

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn sigkills_at_random_moments_lose_nothing() {
    let dir = Dir::with_fixture("faulty");
    // Slower trials, so kills land in training, evaluation and seed runs.
    let train = std::fs::read_to_string(dir.path().join("experiment/train.py")).unwrap();
    dir.write(
        "experiment/train.py",
        &train.replace("time.sleep(0.2)", "time.sleep(0.6)"),
    );
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &format!("{exp}\n[noise]\nseeds = 1\n"),
    );
    config(&dir, 2, &[("x", "search"), ("fault", "fault")], "");
    // A new schedule each run, unless RATCHET_TEST_SEED replays one.
    let seed = std::env::var("RATCHET_TEST_SEED")
        .ok()
        .map(|s| s.parse().expect("RATCHET_TEST_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill schedule seed {seed} (replay: RATCHET_TEST_SEED={seed} cargo test --test daemon sigkills)");
    let mut rng = Lcg(seed);
    let kills = 22;
    for k in 0..kills {
        let mut child = start_daemon(&dir, &[]);
        // Some kills come before the control socket is up (during recovery).
        if rng.below(4) != 0 {
            wait_up(&dir);
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(1400)));
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("kill {k} done");
    }

    // A last start that runs what is left: paused, it only finishes trials.
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);
    dir.ratchet_ok(&["pause", "--all"]);
    wait_for("every trial to reach its outcome", 300, || {
        let s = live_status(&dir)?;
        let idle = s["live"]["lineage"]["active"].as_u64()? == 0
            && s["live"]["executor"]["running"].as_array()?.is_empty()
            && s["live"]["executor"]["queued"].as_array()?.is_empty();
        idle.then_some(())
    });
    assert_eq!(terminate(child).code(), Some(0));

    let trials = dir.trials();
    assert!(trials.len() >= 10, "too few trials: {}", trials.len());
    let mut pgids = Vec::new();
    for t in &trials {
        let terminal: Vec<&str> = t["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].as_str().unwrap())
            .filter(|s| TERMINAL.contains(s))
            .collect();
        assert_eq!(terminal.len(), 1, "one terminal record per trial: {t:#}");
        assert_eq!(terminal[0], str_of(t, "status"), "{t:#}");
        pgids.extend(t["pgid"].as_i64());
        for r in t["seed_runs"].as_array().unwrap() {
            pgids.extend(r["pgid"].as_i64());
        }
    }
    let requeued = trials
        .iter()
        .filter(|t| t["attempt"].as_u64() > Some(1))
        .count();
    eprintln!(
        "{} trials, {requeued} ran again after a kill, {} interrupted",
        trials.len(),
        trials
            .iter()
            .filter(|t| str_of(t, "status") == "interrupted")
            .count()
    );
    assert!(requeued > 0, "no kill landed while a trial ran");

    // No process of any trial is left: not by recorded group, not by cwd.
    for pgid in pgids {
        assert!(!group_alive(pgid), "process group {pgid} outlived ratchet");
    }
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let strays: Vec<PathBuf> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok())
        .filter(|cwd| cwd.starts_with(&root))
        .collect();
    assert!(
        strays.is_empty(),
        "processes still run in the trial dirs: {strays:?}"
    );

    // The incumbent is the best kept trial.
    let kept: Vec<f64> = trials
        .iter()
        .filter(|t| str_of(t, "status") == "kept")
        .map(|t| t["score"].as_f64().unwrap())
        .collect();
    let best = kept.iter().cloned().fold(f64::INFINITY, f64::min);
    let inc: Value = serde_json::from_str(&dir.ratchet_ok(&["lineage", "best", "--json"])).unwrap();
    assert_eq!(inc["score"].as_f64(), Some(best), "{inc:#}");
}

/// The faulty fixture with a train command that takes `secs`, one slot.
fn slow_dir(secs: f64, drain_secs: u64) -> Dir {
    let dir = Dir::with_fixture("faulty");
    let train = std::fs::read_to_string(dir.path().join("experiment/train.py")).unwrap();
    dir.write(
        "experiment/train.py",
        &train.replace("time.sleep(0.2)", &format!("time.sleep({secs})")),
    );
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &exp.replace("timeout_secs = 2", "timeout_secs = 120"),
    );
    config(&dir, 1, &[("x", "search")], "");
    let text = std::fs::read_to_string(dir.path().join("specialists.toml")).unwrap();
    dir.write(
        "specialists.toml",
        &text.replace(
            "drain_timeout_secs = 10",
            &format!("drain_timeout_secs = {drain_secs}"),
        ),
    );
    dir
}

/// Starts the daemon and returns it with the first trial in a slot.
fn daemon_with_a_running_trial(dir: &Dir) -> (Child, u64) {
    let child = start_daemon(dir, &[]);
    let id = wait_for("a trial in a slot", 60, || {
        let s = live_status(dir)?;
        s["live"]["executor"]["running"].as_array()?.first()?["trial"].as_u64()
    });
    // In a slot is not yet started: its process group is recorded once
    // its commit is made and exported and its command runs.
    wait_for("the trial's process group", 60, || {
        dir.trials()
            .into_iter()
            .find(|t| t["id"].as_u64() == Some(id))?["pgid"]
            .as_i64()
    });
    (child, id)
}

fn trial(dir: &Dir, id: u64) -> Value {
    dir.trials()
        .into_iter()
        .find(|t| t["id"].as_u64() == Some(id))
        .unwrap()
}

#[test]
fn sigterm_drains_running_trials_and_a_second_signal_or_the_timeout_cuts_them_short() {
    // Drain: the running trial (2 s of training) finishes and is scored.
    let dir = slow_dir(2.0, 60);
    let (child, id) = daemon_with_a_running_trial(&dir);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let s = wait_for("the drain to show in status", 30, || {
        let s = live_status(&dir)?;
        s["live"]["executor"]["draining"].as_bool()?.then_some(s)
    });
    assert!(s["live"]["executor"]["queued"].as_array().unwrap().len() <= 1);
    let text = dir.ratchet_ok(&["status"]);
    assert!(text.contains("draining"), "{text}");
    let mut child = child;
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let t = trial(&dir, id);
    assert!(
        ["kept", "discarded"].contains(&str_of(&t, "status")),
        "the drained trial finished: {t:#}"
    );
    for t in dir.trials() {
        assert!(
            TERMINAL.contains(&str_of(&t, "status")) || str_of(&t, "status") == "queued",
            "after a drain a trial is done or still queued: {t:#}"
        );
        assert_ne!(str_of(&t, "status"), "interrupted", "{t:#}");
    }

    // A second signal does not wait for the 60 s drain.
    let dir = slow_dir(30.0, 60);
    let (child, id) = daemon_with_a_running_trial(&dir);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    wait_for("the drain to start", 30, || {
        daemon_log(&dir)
            .contains("stopping: no new trials")
            .then_some(())
    });
    kill(pid, Signal::SIGTERM).unwrap();
    let mut child = child;
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let t = trial(&dir, id);
    assert_eq!(str_of(&t, "status"), "interrupted", "{t:#}");
    assert!(!group_alive(t["pgid"].as_i64().unwrap()));

    // The drain timeout (1 s) kills a trial that would take 30 s.
    let dir = slow_dir(30.0, 1);
    let (child, id) = daemon_with_a_running_trial(&dir);
    assert_eq!(terminate(child).code(), Some(0));
    let t = trial(&dir, id);
    assert_eq!(str_of(&t, "status"), "interrupted", "{t:#}");
    assert!(!group_alive(t["pgid"].as_i64().unwrap()));
    assert!(daemon_log(&dir).contains("drain timeout"));
}

/// Every `lineage` command works while a daemon holds the database (through
/// its control socket), and an export taken then is whole and consistent
/// with the lineage the daemon leaves.
#[test]
fn lineage_reads_and_exports_work_while_the_daemon_runs() {
    let dir = Dir::with_fixture("faulty");
    config(&dir, 2, &[("x", "search"), ("fault", "fault")], "");
    let child = start_daemon(&dir, &[]);
    wait_up(&dir);
    wait_for("six finished trials", 120, || {
        let s = live_status(&dir)?;
        let done: u64 = s["live"]["lineage"]["outcomes"]
            .as_object()?
            .values()
            .filter_map(Value::as_u64)
            .sum();
        (done >= 6).then_some(())
    });
    // The database is the daemon's: these go through its socket.
    let out = dir.ratchet(&["lineage", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = dir.trials();
    assert!(listed.len() >= 6);
    let newest: Vec<Value> = dir
        .ratchet_ok(&["lineage", "list", "--json", "--limit", "2"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(newest.len(), 2);
    assert!(newest[0]["id"].as_u64() < newest[1]["id"].as_u64());
    assert!(newest[1]["id"].as_u64() >= listed.last().unwrap()["id"].as_u64());
    let show = dir.ratchet_ok(&["lineage", "show", "1"]);
    assert!(
        show.contains("history:") && show.contains("specialist: baseline"),
        "{show}"
    );
    dir.ratchet_ok(&["lineage", "best", "--json"]);
    dir.ratchet_ok(&["lineage", "events"]);
    let out = dir.ratchet(&["lineage", "show", "99999"]);
    assert!(stderr(&out).contains("no trial 99999"), "{}", stderr(&out));
    for format in ["jsonl", "csv", "html"] {
        let file = format!("live.{format}");
        dir.ratchet_ok(&["lineage", "export", "--format", format, "-o", &file]);
    }
    let live: Vec<Value> = std::fs::read_to_string(dir.path().join("live.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(live.len() >= listed.len());
    let ids: Vec<u64> = live.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "ids dense and in order"
    );
    assert!(live.iter().all(|r| r["schema_version"] == 1));
    let csv = std::fs::read_to_string(dir.path().join("live.csv")).unwrap();
    assert!(csv.starts_with("schema_version,id,"));

    dir.ratchet_ok(&["pause", "--all"]);
    assert_eq!(terminate(child).code(), Some(0));
    // What the export saw of each trial is a state the trial passed through.
    let after = dir.trials();
    for r in &live {
        let t = &after[r["id"].as_u64().unwrap() as usize - 1];
        assert_eq!(r["hypothesis"], t["hypothesis"]);
        let seen = t["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == r["status"]);
        assert!(seen, "trial {} exported as {}", t["id"], r["status"]);
    }
    assert!(!daemon_log(&dir).contains("ERROR"), "{}", daemon_log(&dir));
}

/// `pause --cancel`: the specialist is paused and its running trial killed
/// (its whole process group) and recorded `interrupted`.
#[test]
fn pause_with_cancel_stops_the_specialists_running_trial() {
    let dir = slow_dir(0.2, 10);
    // The baseline is quick; the specialist's trials would take 60 s.
    let train = std::fs::read_to_string(dir.path().join("experiment/train.py")).unwrap();
    dir.write(
        "experiment/train.py",
        &train.replace(
            "time.sleep(0.2)",
            "time.sleep(60 if int(os.environ['RATCHET_TRIAL_ID']) >= 2 else 0.2)",
        ),
    );
    let child = start_daemon(&dir, &[]);
    let id = wait_for("the specialist's trial in a slot", 60, || {
        let s = live_status(&dir)?;
        let run = s["live"]["executor"]["running"]
            .as_array()?
            .first()?
            .clone();
        (run["specialist"] == "x").then(|| run["trial"].as_u64())?
    });
    let pgid = wait_for("its process group", 30, || trial(&dir, id)["pgid"].as_i64());
    let out = dir.ratchet_ok(&["pause", "x", "--cancel"]);
    assert!(out.contains(&format!("cancelled: #{id}")), "{out}");
    let t = trial(&dir, id);
    assert_eq!(str_of(&t, "status"), "interrupted", "{t:#}");
    // SIGKILL is delivered asynchronously.
    wait_for("its process group to die", 10, || {
        (!group_alive(pgid)).then_some(())
    });
    let s = live_status(&dir).unwrap();
    assert_eq!(spec_state(&s, "x"), "paused");
    assert!(
        s["live"]["executor"]["running"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{s}"
    );
    assert_eq!(terminate(child).code(), Some(0));
}
