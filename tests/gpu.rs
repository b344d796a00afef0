//! GPU slots on a machine without GPUs: a fake nvidia-smi
//! (tests/fixtures/fake-nvidia-smi) first on PATH lists the devices, and
//! the fixture trainer (tests/fixtures/gpu) records the devices it was
//! given and "uses" them, which the fake reports as memory and utilization.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// A temp dir with the gpu experiment and the fake nvidia-smi in `smi/`,
/// listing `gpus` devices.
fn setup(gpus: u32) -> (Dir, PathBuf) {
    let dir = Dir::with_fixture("gpu");
    let smi = dir.path().join("smi");
    std::fs::create_dir_all(&smi).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-nvidia-smi/nvidia-smi"),
        smi.join("nvidia-smi"),
    )
    .unwrap();
    let devices: String = (0..gpus)
        .map(|i| format!("{i}, {}, Fake GPU {i}, 81559 MiB\n", uuid(i)))
        .collect();
    std::fs::write(smi.join("devices"), devices).unwrap();
    (dir, smi)
}

fn uuid(i: u32) -> String {
    format!("GPU-fa4e{i:04}-0000-4000-8000-00000000000{i}")
}

fn specialists(dir: &Dir, slots: usize, executor: &str) {
    dir.write(
        "specialists.toml",
        &format!(
            "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = {slots}\nseed = 3\nconfirm_first = false\n\n\
             [executor]\n{executor}\n\n\
             [[specialist]]\nname = \"s\"\nsurface = \"search\"\nkind = \"search\"\n"
        ),
    );
}

/// PATH with `first` ahead of the test's own.
fn path_with(first: &Path) -> String {
    format!(
        "{}:{}",
        first.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs ratchet in `dir` with the fake's directory for the trainer and
/// `path` as PATH; CUDA_VISIBLE_DEVICES is whatever ratchet sets.
fn ratchet(dir: &Dir, smi: &Path, path: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .args(args)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("FAKE_SMI_DIR", smi)
        .env("RATCHET_LOG", "info")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap()
}

/// What a run's trainer recorded in `<run dir>/run.json`.
struct Run {
    trial: u64,
    visible: Option<String>,
    start: f64,
    end: f64,
}

fn run_of(run_dir: &Path, trial: u64) -> Run {
    let text = std::fs::read_to_string(run_dir.join("run.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", run_dir.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    Run {
        trial,
        visible: v["visible"].as_str().map(str::to_string),
        start: v["start"].as_f64().unwrap(),
        end: v["end"].as_f64().unwrap(),
    }
}

/// The export's rows (JSONL), by trial id.
fn export(dir: &Dir) -> Vec<Value> {
    dir.ratchet_ok(&["lineage", "export", "--format", "jsonl"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn four_gpus_make_four_slots_and_no_two_overlapping_trials_share_a_device() {
    let (dir, smi) = setup(4);
    // `daemon.slots` is for CPU slots: on GPUs, the slots are the devices.
    specialists(
        &dir,
        1,
        "gpus = \"auto\"\ngpus_per_trial = 1\ngpu_poll_secs = 0.2",
    );
    let path = path_with(&smi);

    let check = ratchet(&dir, &smi, &path, &["check"]);
    let said = stdout(&check);
    assert!(check.status.success(), "{said}{}", stderr(&check));
    assert!(
        said.contains(
            "trials run here on GPUs, 4 at once, 1 GPU(s) each: 0 Fake GPU 0 (81559 MiB)"
        ),
        "{said}"
    );

    let out = ratchet(&dir, &smi, &path, &["run", "--trials", "8"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("trials run here on GPUs, 4 at once"), "{log}");

    let rows = export(&dir);
    assert_eq!(rows.len(), 8, "{rows:?}");
    let mut runs = Vec::new();
    for row in &rows {
        let id = row["id"].as_u64().unwrap();
        let run = run_of(Path::new(row["trial_dir"].as_str().unwrap()), id);
        let recorded = row["gpus"].as_str().unwrap_or_else(|| panic!("{row:#}"));
        // One whole device, the one lineage says, and by UUID.
        assert_eq!(run.visible.as_deref(), Some(recorded), "{row:#}");
        assert!((0..4).any(|i| uuid(i) == recorded), "{recorded}");
        // The fake reported the trainer's use of it: 1000 + id MiB at 50%.
        assert_eq!(
            row["gpu_peak_memory_mib"].as_u64(),
            Some(1000 + id),
            "{row:#}"
        );
        let util = row["gpu_mean_util_pct"].as_f64().unwrap();
        assert!(util > 0.0 && util <= 50.0, "{util}");
        // Its eval saw no GPU: every device belongs to a slot.
        let eval_saw = std::fs::read_to_string(
            Path::new(row["trial_dir"].as_str().unwrap()).join("work/eval_visible.txt"),
        );
        if let Ok(saw) = eval_saw {
            assert_eq!(saw, "''", "trial {id}");
        }
        runs.push(run);
    }
    for a in &runs {
        for b in &runs {
            let overlap = a.trial < b.trial && a.start < b.end && b.start < a.end;
            assert!(
                !(overlap && a.visible == b.visible),
                "trials {} and {} ran at once on {:?}",
                a.trial,
                b.trial,
                a.visible
            );
        }
    }
    // The most runs at once, and the devices they held.
    let mut most = Vec::new();
    for r in &runs {
        let at_once: Vec<&Run> = runs
            .iter()
            .filter(|o| o.start <= r.start && r.start < o.end)
            .collect();
        if at_once.len() > most.len() {
            most = at_once;
        }
    }
    let mut devices: Vec<&str> = most.iter().filter_map(|r| r.visible.as_deref()).collect();
    devices.sort();
    devices.dedup();
    assert_eq!(
        (most.len(), devices.len()),
        (4, 4),
        "4 trials at once on 4 distinct devices"
    );
    let all: std::collections::BTreeSet<_> = runs.iter().map(|r| r.visible.clone()).collect();
    assert_eq!(all.len(), 4);

    // `lineage show` names the device and the telemetry.
    let show = dir.ratchet_ok(&["lineage", "show", "2"]);
    assert!(show.contains("GPU "), "{show}");
    assert!(show.contains("Fake GPU"), "{show}");
    assert!(
        show.contains(&format!("peak memory {} MiB", 1002)),
        "{show}"
    );
    // And the CSV carries the same columns.
    let csv = dir.ratchet_ok(&["lineage", "export", "--format", "csv"]);
    let header = csv.lines().next().unwrap();
    assert!(
        header.contains(",gpus,gpu_peak_memory_mib,gpu_mean_util_pct,"),
        "{header}"
    );
}

#[test]
fn a_gpu_out_of_memory_is_labelled_as_such() {
    let (dir, smi) = setup(2);
    dir.write("experiment/recipe.toml", "[search]\nx = 5.8\n");
    specialists(&dir, 1, "gpus = [1]\ngpu_poll_secs = 0.2");
    let out = ratchet(&dir, &smi, &path_with(&smi), &["run", "--trials", "1"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let trials = dir.trials();
    assert_eq!(trials.len(), 1);
    let t = &trials[0];
    assert_eq!(str_of(t, "status"), "failed", "{t:#}");
    assert_eq!(str_of(t, "label"), "gpu_out_of_memory", "{t:#}");
    // `gpus = [1]`: only GPU 1 is used.
    let gpu = &t["train"]["gpu"];
    assert_eq!(gpu["devices"][0]["uuid"], uuid(1).as_str(), "{t:#}");
    assert_eq!(gpu["out_of_memory"], true);
}

#[test]
fn a_gpu_that_vanishes_leaves_the_rotation_and_its_failed_trial_runs_again() {
    let (dir, smi) = setup(2);
    specialists(&dir, 1, "gpus = \"auto\"\ngpu_poll_secs = 0.2");
    std::fs::write(smi.join("hold"), "").unwrap();
    let path = path_with(&smi);
    let daemon = start_daemon(
        &dir,
        &[
            ("PATH", path.as_str()),
            ("FAKE_SMI_DIR", smi.to_str().unwrap()),
        ],
    );
    // The baseline runs alone (specialists wait for it), on GPU 0.
    let status = wait_for("the baseline on a GPU", 60, || {
        let s = live_status(&dir)?;
        let slots = s["live"]["executor"]["gpus"].as_array()?.clone();
        slots
            .iter()
            .any(|g| g.get("running").is_some())
            .then_some(s)
    });
    let slots = status["live"]["executor"]["gpus"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{status:#}");
    assert_eq!(slots[0]["devices"][0]["uuid"], uuid(0).as_str());
    assert!(slots[0].get("running").is_some(), "{status:#}");

    // The GPU slots are made at start: a reload neither regroups them nor
    // lets `daemon.slots` take their place.
    specialists(
        &dir,
        3,
        "gpus = \"auto\"\ngpus_per_trial = 2\ngpu_poll_secs = 0.2",
    );
    let out = dir.ratchet_ok(&["reload"]);
    assert!(
        out.contains("takes effect at the next start: executor"),
        "{out}"
    );
    assert!(!out.contains("slots:"), "{out}");
    assert_eq!(live_status(&dir).unwrap()["live"]["executor"]["slots"], 2);

    // GPU 0 falls off the bus: nvidia-smi stops listing it.
    std::fs::write(
        smi.join("devices"),
        format!("1, {}, Fake GPU 1, 81559 MiB\n", uuid(1)),
    )
    .unwrap();
    let text = wait_for("GPU 0 out of rotation", 30, || {
        let out = dir.ratchet(&["status"]);
        let text = stdout(&out);
        text.contains("out of rotation: GPU 0").then_some(text)
    });
    assert!(
        text.contains("gpu slots: 1 in rotation, 1 out of rotation"),
        "{text}"
    );
    assert!(
        text.contains(&format!("GPU 0 ({}) is gone from nvidia-smi", uuid(0))),
        "{text}"
    );

    // The trainer on it fails; that is the device's loss, not the trial's:
    // it runs again, on GPU 1.
    let fail = smi.join(format!("fail-{}", uuid(0)));
    std::fs::write(
        &fail,
        "RuntimeError: CUDA error: unspecified launch failure",
    )
    .unwrap();
    wait_for("the baseline requeued", 30, || {
        let t = dir.trials().into_iter().find(|t| t["id"] == 1)?;
        (t["attempt"] == 2 && t["status"] == "running").then_some(())
    });
    std::fs::remove_file(smi.join("hold")).unwrap();
    let t = wait_for("the baseline kept", 60, || {
        let t = dir.trials().into_iter().find(|t| t["id"] == 1)?;
        (t["status"] == "kept").then_some(t)
    });
    assert_eq!(
        t["train"]["gpu"]["devices"][0]["uuid"],
        uuid(1).as_str(),
        "{t:#}"
    );
    let log = daemon_log(&dir);
    assert!(log.contains("is gone from nvidia-smi"), "{log}");
    assert!(terminate(daemon).success());
}

#[test]
fn without_nvidia_smi_auto_falls_back_to_cpu_slots() {
    let (dir, smi) = setup(4);
    specialists(&dir, 2, "gpus = \"auto\"");
    // A PATH with python3 and nothing else: no nvidia-smi, real or fake.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // The interpreter itself (`python3` may be a shim that needs more of PATH).
    let python = String::from_utf8(
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::os::unix::fs::symlink(python.trim(), bin.join("python3")).unwrap();
    let path = bin.display().to_string();

    let check = ratchet(&dir, &smi, &path, &["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains(
            "executor.gpus = \"auto\", but no nvidia-smi is on PATH: trials run here on CPU slots, 2 at once"
        ),
        "{}",
        stdout(&check)
    );
    let out = ratchet(&dir, &smi, &path, &["run", "--trials", "3"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("no nvidia-smi is on PATH: trials run here on CPU slots, 2 at once"),
        "{}",
        stderr(&out)
    );
    let rows = export(&dir);
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert!(row["gpus"].is_null(), "{row:#}");
        let run = run_of(Path::new(row["trial_dir"].as_str().unwrap()), 0);
        assert_eq!(
            run.visible, None,
            "ratchet sets no CUDA_VISIBLE_DEVICES on CPU slots"
        );
    }
    assert!(!smi.join("calls").exists(), "the fake was not on PATH");
}

#[test]
fn gpu_settings_that_cannot_be_honoured_are_refused() {
    let (dir, smi) = setup(4);
    let path = path_with(&smi);
    let check = |executor: &str| {
        specialists(&dir, 1, executor);
        ratchet(&dir, &smi, &path, &["check"])
    };
    let out = check("gpus = [0, 7]");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("GPU 7 is not among the GPUs nvidia-smi lists (0, 1, 2, 3)"),
        "{}",
        stderr(&out)
    );
    let out = check("gpus = [0, 1]\ngpus_per_trial = 3");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("gpus_per_trial = 3, but there are only 2 GPU(s)"),
        "{}",
        stderr(&out)
    );
    let out = check("gpus = \"auto\"\ngpus_per_trial = 3");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 at once, 3 GPU(s) each")
            && stdout(&out).contains("GPU 3 left idle"),
        "{}",
        stdout(&out)
    );
    for (bad, says) in [
        ("gpus = \"all\"", "\"auto\" or a list of GPU indices"),
        ("gpus = [1, 1]", "lists GPU 1 twice"),
        ("gpus = []", "lists no GPU"),
        ("gpus = \"auto\"\ngpus_per_trial = 0", "must be at least 1"),
        ("gpus_per_trial = 2", "only takes effect with executor.gpus"),
        (
            "backend = \"slurm\"\ngpus = \"auto\"",
            "GPU slots are for local runs",
        ),
    ] {
        let out = check(bad);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr(&out).contains(says), "{bad}: {}", stderr(&out));
    }
    // Under an inherited CUDA_VISIBLE_DEVICES, "auto" takes only those.
    specialists(&dir, 1, "gpus = \"auto\"");
    let out = Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .arg("check")
        .current_dir(dir.path())
        .env("PATH", &path)
        .env("CUDA_VISIBLE_DEVICES", format!("3,{}", &uuid(1)[..12]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 at once, 1 GPU(s) each: 3 Fake GPU 3 (81559 MiB), 1 Fake GPU 1"),
        "{}",
        stdout(&out)
    );
    // The daemon refuses to start on listed GPUs it cannot see.
    specialists(&dir, 1, "gpus = [9]");
    let out = ratchet(&dir, &smi, &path, &["run", "--trials", "1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("GPU 9 is not among"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_gpu_whose_runs_keep_failing_with_device_errors_leaves_the_rotation() {
    let (dir, smi) = setup(2);
    specialists(&dir, 1, "gpus = \"auto\"\ngpu_poll_secs = 0.2");
    // Every run on GPU 0 dies at once of a hardware fault.
    std::fs::write(
        smi.join(format!("fail-{}", uuid(0))),
        "RuntimeError: CUDA error: uncorrectable ECC error encountered",
    )
    .unwrap();
    let out = ratchet(&dir, &smi, &path_with(&smi), &["run", "--trials", "8"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("3 runs in a row failed with a device error: RuntimeError: CUDA error: uncorrectable ECC error encountered"),
        "{log}"
    );
    let rows = export(&dir);
    assert_eq!(rows.len(), 8);
    let on = |i: u32| -> Vec<&Value> {
        rows.iter()
            .filter(|r| r["gpus"].as_str() == Some(uuid(i).as_str()))
            .collect()
    };
    // Three failures on GPU 0, then nothing more runs there.
    assert_eq!(on(0).len(), 3, "{rows:#?}");
    for r in on(0) {
        assert_eq!(r["label"], "crash", "{r:#}");
    }
    assert_eq!(on(1).len(), 5, "{rows:#?}");
    assert!(on(1).iter().all(|r| r["label"] != "crash"), "{rows:#?}");
}

#[test]
fn seed_runs_take_gpu_slots_of_their_own() {
    let (dir, smi) = setup(2);
    let exp = dir.path().join("experiment/experiment.toml");
    let text = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, format!("{text}\n[noise]\nseeds = 2\n")).unwrap();
    specialists(&dir, 1, "gpus = \"auto\"\ngpu_poll_secs = 0.2");
    let out = ratchet(&dir, &smi, &path_with(&smi), &["run", "--trials", "1"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let trials = dir.trials();
    let t = &trials[0];
    assert_eq!(str_of(t, "status"), "kept", "{t:#}");
    let root = Path::new(t["trial_dir"].as_str().unwrap());
    let seeds = t["seed_runs"].as_array().unwrap();
    assert_eq!(seeds.len(), 2, "{t:#}");
    // The two seed runs train at once, one on each GPU, and each records it.
    let runs: Vec<Run> = seeds
        .iter()
        .map(|s| {
            let seed = s["seed"].as_u64().unwrap();
            let run = run_of(&root.join(format!("seed-{seed}")), 1);
            let gpu = &s["train"]["gpu"];
            assert_eq!(
                gpu["devices"][0]["uuid"].as_str(),
                run.visible.as_deref(),
                "{s:#}"
            );
            assert_eq!(gpu["peak_memory_mib"], 1001, "{s:#}");
            run
        })
        .collect();
    assert_ne!(runs[0].visible, runs[1].visible);
    assert!(
        runs[0].start < runs[1].end && runs[1].start < runs[0].end,
        "they overlap"
    );
    let show = dir.ratchet_ok(&["lineage", "show", "1"]);
    assert_eq!(show.matches("peak memory 1001 MiB").count(), 3, "{show}");
}

#[test]
fn with_evals_on_gpus_an_eval_gets_a_gpu_slot_of_its_own() {
    let (dir, smi) = setup(2);
    specialists(
        &dir,
        1,
        "gpus = \"auto\"\ngpu_poll_secs = 0.2\nevals_on_gpus = true",
    );
    let out = ratchet(&dir, &smi, &path_with(&smi), &["run", "--trials", "3"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let evaluated: Vec<Value> = dir
        .trials()
        .into_iter()
        .filter(|t| t["eval"].is_object())
        .collect();
    assert!(!evaluated.is_empty());
    for t in &evaluated {
        let gpu = &t["eval"]["gpu"];
        let uuid = gpu["devices"][0]["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("{t:#}"));
        let root = Path::new(t["trial_dir"].as_str().unwrap());
        let saw = std::fs::read_to_string(root.join("work/eval_visible.txt")).unwrap();
        assert_eq!(saw, format!("'{uuid}'"), "{t:#}");
        // The train run handed its GPU on to its eval.
        assert_eq!(
            t["train"]["gpu"]["devices"][0]["uuid"].as_str(),
            Some(uuid),
            "{t:#}"
        );
    }
}

#[test]
fn a_gpu_handed_to_an_eval_that_never_runs_is_freed_for_the_next_trial() {
    // One GPU; the baseline's train fails, so the GPU it handed on to its
    // eval is freed without an eval: the next trials must still get it.
    let (dir, smi) = setup(1);
    dir.write("experiment/recipe.toml", "[search]\nx = 5.8\n");
    specialists(
        &dir,
        1,
        "gpus = \"auto\"\ngpu_poll_secs = 0.2\nevals_on_gpus = true",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .args(["run", "--trials", "3"])
        .current_dir(dir.path())
        .env("PATH", path_with(&smi))
        .env("FAKE_SMI_DIR", &smi)
        .env("FAKE_TRAIN_SECS", "0.5")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ended = wait_for_or_kill(&mut child, 60);
    assert!(ended.success());
    let trials = dir.trials();
    assert_eq!(trials.len(), 3);
    assert_eq!(str_of(&trials[0], "label"), "gpu_out_of_memory");
    assert!(trials[1..].iter().all(|t| t["train"]["gpu"].is_object()));
}

/// Waits for `child` to exit; kills it (leaving no ratchet behind) and
/// fails the test after `secs`.
fn wait_for_or_kill(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ratchet did not finish in {secs} s: a GPU was never freed?");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `/metrics` on GPU slots: each device's memory, and its utilization and
/// memory in use at nvidia-smi's last sample while a run holds it.
#[test]
fn metrics_show_each_gpu_from_nvidia_smi() {
    let (dir, smi) = setup(2);
    specialists(&dir, 1, "gpus = \"auto\"\ngpu_poll_secs = 0.2");
    let addr = format!("127.0.0.1:{}", common::web::free_port());
    let text = std::fs::read_to_string(dir.path().join("specialists.toml")).unwrap();
    dir.write(
        "specialists.toml",
        &text.replace("seed = 3\n", &format!("seed = 3\nhttp = \"{addr}\"\n")),
    );
    std::fs::write(smi.join("hold"), "").unwrap();
    let path = path_with(&smi);
    let daemon = start_daemon(
        &dir,
        &[
            ("PATH", path.as_str()),
            ("FAKE_SMI_DIR", smi.to_str().unwrap()),
        ],
    );
    wait_up(&dir);
    // The baseline (trial 1) holds GPU 0: the fake reports 1001 MiB and 50%.
    let labels = |i: u32| format!("{{gpu=\"{i}\",name=\"Fake GPU {i}\",uuid=\"{}\"}}", uuid(i));
    let metrics = wait_for("GPU 0's sample in /metrics", 60, || {
        let m = common::web::get(&addr, "/metrics").body;
        m.contains(&format!("ratchet_gpu_utilization_ratio{} 0.5\n", labels(0)))
            .then_some(m)
    });
    let mib = 1024 * 1024u64;
    for line in [
        format!("ratchet_gpu_memory_used_bytes{} {}", labels(0), 1001 * mib),
        format!(
            "ratchet_gpu_memory_total_bytes{} {}",
            labels(0),
            81559 * mib
        ),
        format!(
            "ratchet_gpu_memory_total_bytes{} {}",
            labels(1),
            81559 * mib
        ),
        format!("ratchet_gpu_utilization_ratio{} 0", labels(1)),
        format!("ratchet_gpu_slot_busy{} 1", labels(0)),
        format!("ratchet_gpu_slot_busy{} 0", labels(1)),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} is missing:\n{metrics}"
        );
    }
    std::fs::remove_file(smi.join("hold")).unwrap();
    assert!(terminate(daemon).success());
}
