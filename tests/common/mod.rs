//! Helpers for tests that drive the real `ratchet` binary in a temp directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use serde_json::Value;

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    /// A temp dir holding a copy of `tests/fixtures/<fixture>` as `experiment/`.
    pub fn with_fixture(fixture: &str) -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        copy_dir(&src, &tmp.path().join("experiment"));
        Dir { tmp }
    }

    /// A temp dir holding a copy of the shipped `experiments/<name>` as
    /// `experiment/`.
    pub fn with_experiment(name: &str) -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("experiments")
            .join(name);
        copy_dir(&src, &tmp.path().join("experiment"));
        Dir { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes `experiment/experiment.toml` for the `region` fixture's
    /// programs (train.py writes score.txt, eval.py prints `loss=`): 1 s
    /// budget, loss minimized, and `surfaces` (TOML) as its surfaces.
    pub fn region_experiment(&self, name: &str, surfaces: &str) {
        self.write(
            "experiment/experiment.toml",
            &format!(
                "name = \"{name}\"\nrecipe = \"recipe.toml\"\nmetric = \"loss\"\ndirection = \"minimize\"\n\
                 budget_secs = 1\ntimeout_secs = 5\ntrain = [\"python3\", \"train.py\"]\n\n\
                 [eval]\nproxy = [\"python3\", \"eval.py\"]\ntimeout_secs = 5\n\n{surfaces}"
            ),
        );
    }

    /// Writes specialists.toml with one search specialist per (name, surface).
    pub fn specialists(&self, slots: usize, specialists: &[(&str, &str)]) -> PathBuf {
        let mut text = format!("[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = {slots}\nseed = 1\n");
        for (name, surface) in specialists {
            text.push_str(&format!(
                "\n[[specialist]]\nname = \"{name}\"\nsurface = \"{surface}\"\nkind = \"search\"\n"
            ));
        }
        self.write("specialists.toml", &text)
    }

    /// specialists.toml with one manual specialist `hand` on surface `s`,
    /// and its inbox with one `set` proposal per `(name, values)`, taken in
    /// name order.
    pub fn manual(&self, slots: usize, proposals: &[(&str, Value)]) {
        self.write(
            "specialists.toml",
            &format!(
                "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = {slots}\nseed = 1\n\n\
                 [[specialist]]\nname = \"hand\"\nsurface = \"s\"\nkind = \"manual\"\n"
            ),
        );
        for (name, values) in proposals {
            let proposal = serde_json::json!({
                "hypothesis": format!("{name}: {values}"),
                "edits": [{"kind": "set", "values": values}],
            });
            self.write(
                &format!("lineage/inbox/hand/{name}.json"),
                &proposal.to_string(),
            );
        }
    }

    /// Runs the ratchet binary in this directory.
    pub fn ratchet(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ratchet"))
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap()
    }

    /// Runs and asserts success, returning stdout.
    pub fn ratchet_ok(&self, args: &[&str]) -> String {
        let out = self.ratchet(args);
        assert!(
            out.status.success(),
            "ratchet {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `ratchet lineage list --json`, parsed.
    pub fn trials(&self) -> Vec<Value> {
        self.ratchet_ok(&["lineage", "list", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `ratchet lineage --lineage DIR list --json`, parsed.
    pub fn trials_in(&self, lineage: &Path) -> Vec<Value> {
        let l = lineage.to_str().unwrap();
        self.ratchet_ok(&["lineage", "--lineage", l, "list", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Whether any live (non-zombie) process belongs to process group `pgid`.
pub fn group_alive(pgid: i64) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string()
    })
}

pub fn pid_alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.split_whitespace().next() != Some("Z")),
        Err(_) => false,
    }
}

pub fn str_of<'a>(t: &'a Value, key: &str) -> &'a str {
    t[key].as_str().unwrap_or("")
}
// ---------------------------------------------------------------------------
// A daemon under test

/// Starts the daemon; its log goes to `<dir>/daemon.log` (appended).
pub fn start_daemon(dir: &Dir, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("daemon.log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratchet"));
    cmd.arg("daemon")
        .current_dir(dir.path())
        .env("RATCHET_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

pub fn daemon_log(dir: &Dir) -> String {
    std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
}

pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ratchet status --json` of a running daemon (None while it is not up).
pub fn live_status(dir: &Dir) -> Option<Value> {
    let out = dir.ratchet(&["status", "--json"]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_str(&stdout(&out)).ok()?;
    v.get("live").is_some().then_some(v)
}

/// Waits for the control socket; on a timeout the panic carries the end
/// of the daemon's log (why a start failed or hung is there).
pub fn wait_up(dir: &Dir) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = live_status(dir) {
            return v;
        }
        if Instant::now() >= deadline {
            let log = daemon_log(dir);
            let mut from = log.len().saturating_sub(6000);
            while !log.is_char_boundary(from) {
                from += 1;
            }
            panic!(
                "timed out waiting for the daemon's control socket; daemon.log ends:\n{}",
                &log[from..]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn terminate(mut child: Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    child.wait().unwrap()
}

pub mod llm;

/// Debian's Python, where `.ci/run` installs pandas (python3-pandas); a
/// `python3` first on PATH may be another one. Runs `script` with `args`
/// and reads its stdout as JSON.
pub fn python_json(script: &str, args: &[&Path]) -> Value {
    let exe = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = std::process::Command::new(exe)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}
pub mod web;
