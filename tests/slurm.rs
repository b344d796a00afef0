//! The Slurm backend against a real single-node Slurm: munged, slurmctld and
//! slurmd on 127.0.0.1, started once per test run by `tests/slurm/cluster.sh`
//! (Debian's slurmctld, slurmd, slurm-client and munge packages, which
//! `.ci/run` installs) and stopped once the test binary has exited. Trials are submitted with sbatch, tracked with
//! squeue and scored; a job Slurm kills at its time limit is a
//! `budget_overrun`; a daemon killed while a job runs adopts that job when
//! it starts again instead of submitting the trial a second time.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{pid_alive, start_daemon, stdout, str_of, terminate, wait_for, wait_up, Dir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Starts the cluster once for this test binary; every child process of
/// the tests (ratchet, squeue) finds it through `SLURM_CONF`.
fn cluster() {
    static CONF: OnceLock<String> = OnceLock::new();
    let conf = CONF.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("slurm-cluster");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            // Stopped when this test binary has exited.
            .arg(std::process::id().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot start the test Slurm cluster ({}). It needs root and Debian's \
             slurmctld slurmd slurm-client munge packages, which .ci/run installs:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("SLURM_CONF="))
            .expect("cluster.sh prints SLURM_CONF=")
            .to_string();
        // Before any test of this binary starts a child: they all wait here.
        std::env::set_var("SLURM_CONF", &conf);
        conf
    });
    assert_eq!(std::env::var("SLURM_CONF").as_deref(), Ok(conf.as_str()));
}

/// Every job Slurm lists (finished ones too): (id, name, state).
fn jobs() -> Vec<(u64, String, String)> {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%i|%j|%T"])
        .output()
        .unwrap();
    assert!(out.status.success(), "squeue: {}", common::stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (f[0].parse().unwrap(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// The Slurm jobs named for trial `id`'s own train run (of any lineage tag
/// in `tag`).
fn train_jobs(tag: &str, id: u64) -> Vec<(u64, String)> {
    let name = format!("{tag}-{id}-0-train");
    jobs()
        .into_iter()
        .filter(|(_, n, _)| *n == name)
        .map(|(j, _, s)| (j, s))
        .collect()
}

/// specialists.toml for the faulty fixture on the Slurm backend.
fn config(dir: &Dir, slots: usize, specialists: &[(&str, &str)], slurm: &str) {
    let mut text = format!(
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = {slots}\nseed = 1\ndrain_timeout_secs = 1\n\n\
         [executor]\nbackend = \"slurm\"\n\n[executor.slurm]\npoll_secs = 0.3\n{slurm}\n"
    );
    for (name, surface) in specialists {
        text.push_str(&format!(
            "\n[[specialist]]\nname = \"{name}\"\nsurface = \"{surface}\"\nkind = \"search\"\n"
        ));
    }
    dir.write("specialists.toml", &text);
}

/// The job-name tag of a lineage, from one of its jobs' names.
fn tag_of(name: &str) -> String {
    let parts: Vec<&str> = name.rsplitn(4, '-').collect();
    parts[3].to_string()
}

fn report_job(report: &Value) -> Option<(u64, &str)> {
    let j = report.get("slurm")?;
    Some((j["id"].as_u64()?, j["state"].as_str()?))
}

#[test]
fn trials_run_as_slurm_jobs_and_are_scored() {
    cluster();
    let dir = Dir::with_fixture("faulty");
    config(
        &dir,
        2,
        &[("s", "search")],
        "max_jobs = 2\neval = \"slurm\"",
    );
    let out = dir.ratchet_ok(&["run", "--trials", "5"]);
    let trials = dir.trials();
    assert_eq!(trials.len(), 5, "{out}");
    let mut tag = None;
    let mut scored = 0;
    for t in &trials {
        let id = t["id"].as_u64().unwrap();
        assert!(
            ["kept", "discarded", "failed"].contains(&str_of(t, "status")),
            "trial {id} did not end: {t}"
        );
        if str_of(t, "label") == "patch_failed" && t["train"].is_null() {
            continue;
        }
        // Its train ran as a Slurm job that completed, named for the trial,
        // submitted once.
        let (job, state) =
            report_job(&t["train"]).unwrap_or_else(|| panic!("trial {id} has no Slurm job: {t}"));
        assert_eq!(state, "COMPLETED", "trial {id}");
        let listed = jobs();
        let (_, name, _) = listed
            .iter()
            .find(|(j, _, _)| *j == job)
            .unwrap_or_else(|| panic!("job {job} of trial {id} is not in squeue: {listed:?}"));
        let tag = tag.get_or_insert_with(|| tag_of(name)).clone();
        assert_eq!(
            train_jobs(&tag, id),
            vec![(job, "COMPLETED".to_string())],
            "trial {id}"
        );
        // Its eval ran as a job of its own (eval = "slurm"), and the score
        // is the eval's.
        let (eval_job, eval_state) =
            report_job(&t["eval"]).unwrap_or_else(|| panic!("trial {id}: eval not on Slurm: {t}"));
        assert_eq!(eval_state, "COMPLETED");
        assert_ne!(eval_job, job);
        assert!(listed
            .iter()
            .any(|(j, n, _)| *j == eval_job && *n == format!("{tag}-{id}-0-eval")));
        if let Some(score) = t["score"].as_f64() {
            assert_eq!(
                t["eval"]["metrics"]["loss"].as_f64(),
                Some(score),
                "trial {id}"
            );
            assert_ne!(score, -1000.0, "train's own number became the score");
            scored += 1;
        }
        assert!(Path::new(str_of(t, "trial_dir"))
            .join("train.report.json")
            .is_file());
    }
    assert!(scored >= 2, "too few trials scored: {out}");
    assert_eq!(
        str_of(&trials[0], "status"),
        "kept",
        "the baseline: {}",
        trials[0]
    );
}

#[test]
fn a_job_slurm_kills_at_its_time_limit_is_a_budget_overrun() {
    cluster();
    let dir = Dir::with_fixture("faulty");
    // The baseline hangs (with a grandchild); timeout_secs = 2 becomes
    // Slurm's smallest limit, one minute.
    dir.write(
        "experiment/recipe.toml",
        "[search]\nx = 5.5\n\n[fault]\nmode = \"hang\"\n",
    );
    config(&dir, 1, &[("s", "search")], "");
    let started = std::time::Instant::now();
    let out = dir.ratchet_ok(&["run", "--trials", "1"]);
    let trials = dir.trials();
    let t = &trials[0];
    assert_eq!(str_of(t, "status"), "failed", "{out}");
    assert_eq!(str_of(t, "label"), "budget_overrun", "{t}");
    assert_eq!(
        report_job(&t["train"]).map(|(_, s)| s),
        Some("TIMEOUT"),
        "{t}"
    );
    assert!(t["train"]["timed_out"].as_bool().unwrap());
    assert!(
        str_of(t, "detail").contains("Slurm"),
        "the detail names Slurm: {}",
        str_of(t, "detail")
    );
    // Slurm, not the wrapper, ended it: not before its one-minute limit.
    assert!(started.elapsed().as_secs() >= 60);
    // Nothing of the job is left on the node.
    let grandchild: i64 =
        std::fs::read_to_string(Path::new(str_of(t, "trial_dir")).join("grandchild.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    wait_for("the job's grandchild to die", 30, || {
        (!pid_alive(grandchild)).then_some(())
    });
}

/// The faulty fixture with a train that notes each start (`start-<job>` in
/// the trial directory) and then, in trials from `hold_from` on, waits for
/// the returned file to exist.
fn held_fixture(hold_from: u64) -> (Dir, std::path::PathBuf) {
    let dir = Dir::with_fixture("faulty");
    let release = dir.path().join("release");
    let train = std::fs::read_to_string(dir.path().join("experiment/train.py")).unwrap();
    dir.write(
        "experiment/train.py",
        &train.replace(
            "time.sleep(0.2)",
            &format!(
                "open(os.path.join(trial_dir, 'start-' + os.environ['SLURM_JOB_ID']), 'w').close()\n\
                 while int(os.environ['RATCHET_TRIAL_ID']) >= {hold_from} and not os.path.exists({:?}):\n    time.sleep(0.1)\ntime.sleep(0.2)",
                release.to_str().unwrap()
            ),
        ),
    );
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &exp.replace("timeout_secs = 2\n", "timeout_secs = 300\n"),
    );
    (dir, release)
}

/// Waits until trial `id`'s own run is a running job whose train has
/// started (with `attempt`), and returns the job.
fn running_job(dir: &Dir, id: u64, attempt: u64) -> u64 {
    let trial_dir = dir.path().join(format!("lineage/trials/{id:06}"));
    wait_for("the trial's job to run", 60, || {
        let t = dir.trials().into_iter().find(|t| t["id"] == id)?;
        let job = t["slurm_job"].as_u64()?;
        (t["attempt"] == attempt && trial_dir.join(format!("start-{job}")).exists()).then_some(job)
    })
}

/// A daemon on a held fixture (trials from `hold_from` on wait), with
/// trial `id`'s first job running.
fn daemon_with_a_held_job(hold_from: u64, id: u64) -> (Dir, std::process::Child, u64) {
    cluster();
    let (dir, _release) = held_fixture(hold_from);
    config(&dir, 1, &[("s", "search")], "");
    let daemon = start_daemon(&dir, &[]);
    wait_up(&dir);
    let job = running_job(&dir, id, 1);
    (dir, daemon, job)
}

fn state_of(job: u64) -> String {
    jobs().into_iter().find(|(j, _, _)| *j == job).unwrap().2
}

#[test]
fn a_job_cancelled_outside_ratchet_runs_again_and_ratchet_cancels_its_jobs_when_it_stops() {
    let (dir, daemon, first) = daemon_with_a_held_job(1, 1);
    // Somebody cancels it: the trial is queued again, as a new job.
    let out = Command::new("scancel")
        .arg(first.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let second = running_job(&dir, 1, 2);
    assert_ne!(first, second);
    assert_eq!(state_of(first), "CANCELLED");
    let events = dir.ratchet_ok(&["lineage", "events"]);
    assert!(
        events.contains("requeued")
            && events.contains(&format!("Slurm job {first} ended CANCELLED")),
        "{events}"
    );
    // SIGTERM: the drain (1 s) runs out, the job is cancelled, the trial
    // recorded interrupted.
    assert!(terminate(daemon).success());
    // Slurm shows it COMPLETING while the node cleans up.
    wait_for("the job to be cancelled", 30, || {
        (state_of(second) == "CANCELLED").then_some(())
    });
    let t = dir.trials().into_iter().next().unwrap();
    assert_eq!(str_of(&t, "status"), "interrupted", "{t}");
}

#[test]
fn pause_with_cancel_cancels_the_specialists_jobs() {
    let (dir, daemon, job) = daemon_with_a_held_job(2, 2);
    let out = dir.ratchet_ok(&["pause", "s", "--cancel"]);
    assert!(
        out.contains("paused: s") && out.contains("cancelled: #2"),
        "{out}"
    );
    wait_for("the job to be cancelled", 30, || {
        (state_of(job) == "CANCELLED").then_some(())
    });
    let t = dir.trials().into_iter().find(|t| t["id"] == 2).unwrap();
    assert_eq!(str_of(&t, "status"), "interrupted", "{t}");
    assert!(str_of(&t, "detail").contains("pause --cancel"), "{t}");
    let status = wait_up(&dir);
    let executor = &status["live"]["executor"];
    assert_eq!(
        executor["running"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    assert_eq!(executor["specialists"][0]["state"], "paused", "{status}");
    assert!(terminate(daemon).success());
}

#[test]
fn a_restarted_daemon_adopts_the_running_job_instead_of_submitting_again() {
    cluster();
    let (dir, release) = held_fixture(1);
    config(&dir, 1, &[("s", "search")], "");
    let first = start_daemon(&dir, &[]);
    wait_up(&dir);
    // The baseline's job is running (its train has started on the node).
    let trial_dir = dir.path().join("lineage/trials/000001");
    let job = wait_for("the baseline's job to run", 60, || {
        let t = dir.trials().into_iter().next()?;
        let job = t["slurm_job"].as_u64()?;
        trial_dir
            .join(format!("start-{job}"))
            .exists()
            .then_some(job)
    });
    kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).unwrap();
    let mut first = first;
    first.wait().unwrap();
    let name = jobs().into_iter().find(|(j, _, _)| *j == job).unwrap().1;
    let tag = tag_of(&name);
    assert_eq!(train_jobs(&tag, 1), vec![(job, "RUNNING".to_string())]);

    let second = start_daemon(&dir, &[]);
    let status = wait_up(&dir);
    let running = &status["live"]["executor"]["running"];
    assert_eq!(running[0]["trial"].as_u64(), Some(1), "{status}");
    assert_eq!(running[0]["job"].as_u64(), Some(job), "{status}");
    // `status` shows the job and, once squeue has answered, its state.
    wait_for("the job's state in status", 30, || {
        let text = dir.ratchet_ok(&["status"]);
        text.contains(&format!("Slurm job {job} RUNNING"))
            .then_some(())
    });
    std::fs::write(&release, "").unwrap();
    let baseline = wait_for("the adopted baseline to be kept", 120, || {
        let t = dir.trials().into_iter().next()?;
        (str_of(&t, "status") == "kept").then_some(t)
    });
    terminate(second);
    // The same job, started once: adopted, not submitted again.
    assert_eq!(
        report_job(&baseline["train"]),
        Some((job, "COMPLETED")),
        "{baseline}"
    );
    assert_eq!(baseline["attempt"].as_u64(), Some(1));
    assert_eq!(train_jobs(&tag, 1), vec![(job, "COMPLETED".to_string())]);
    let starts: Vec<String> = std::fs::read_dir(&trial_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("start-"))
        .collect();
    assert_eq!(starts, vec![format!("start-{job}")]);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("adopting the trial's Slurm job"), "{log}");
}

/// Settings the cluster refuses stop ratchet at its start, with sbatch's
/// words, before any trial is recorded.
#[test]
fn settings_the_cluster_refuses_stop_ratchet_at_its_start() {
    cluster();
    let dir = Dir::with_fixture("faulty");
    config(&dir, 1, &[("s", "search")], "partition = \"nosuch\"");
    let out = dir.ratchet(&["run", "--trials", "2"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("[executor.slurm] are refused") && err.contains("nosuch"),
        "{err}"
    );
    assert!(dir.trials().is_empty());
}
