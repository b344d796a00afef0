//! Trial workspaces: a trial's directories, recipe edits, and what the trial's
//! commands see (argv placeholders, environment). The files of a trial's `work`
//! directory are an export of its commit (see provenance.rs).

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::domain::TrialId;

/// The directories of one run of a trial.
#[derive(Clone, Debug)]
pub struct TrialDirs {
    /// `<lineage>/trials/<id>` for the trial's own run, `<that>/seed-<s>` for
    /// a seed re-run: logs and the work copy.
    pub root: PathBuf,
    /// `<root>/work`: the experiment as this run sees it; commands run here.
    pub work: PathBuf,
    /// The run's seed (`RATCHET_SEED`, `{seed}`): 0 for the trial's own run.
    pub seed: u64,
}

impl TrialDirs {
    pub fn new(lineage_dir: &Path, id: TrialId) -> TrialDirs {
        TrialDirs::run(lineage_dir, id, 0)
    }

    /// The directories of the trial's run with `seed`.
    pub fn run(lineage_dir: &Path, id: TrialId, seed: u64) -> TrialDirs {
        let mut root = lineage_dir.join("trials").join(format!("{:06}", id.0));
        if seed != 0 {
            root.push(format!("seed-{seed}"));
        }
        TrialDirs {
            work: root.join("work"),
            root,
            seed,
        }
    }
}

/// The environment every trial command gets. CPU thread pools (rayon, OpenMP)
/// get an equal share of the cores per slot, unless the user set them.
pub fn trial_env(config: &Config, dirs: &TrialDirs, id: TrialId) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "RATCHET_BUDGET_SECS".into(),
            config.experiment.file.budget_secs.to_string(),
        ),
        ("RATCHET_TRIAL_ID".into(), id.to_string()),
        ("RATCHET_TRIAL_DIR".into(), dirs.root.display().to_string()),
        ("RATCHET_SEED".into(), dirs.seed.to_string()),
    ];
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let share = (cores / config.slots.max(1)).max(1).to_string();
    for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            env.push((var.into(), share.clone()));
        }
    }
    if config.gpu_slots {
        // On GPU slots every device belongs to a slot: a command sees only
        // the ones its run was given (set after this, for train runs and
        // for evals with `evals_on_gpus`), or none.
        env.push(("CUDA_VISIBLE_DEVICES".into(), String::new()));
    }
    env
}

/// Environment variables trial commands must not see: the API keys of LLM
/// specialists (ratchet's own secrets, not the experiment's).
pub fn secret_env(config: &Config) -> Vec<String> {
    config
        .specialists
        .iter()
        .filter_map(|s| s.llm.as_ref()?.api_key_env.clone())
        .chain(SERVICE_ENV.iter().map(|v| v.to_string()))
        .collect()
}

/// What systemd tells the daemon and only the daemon: a trial that saw
/// `NOTIFY_SOCKET` could report READY or STATUS in ratchet's name.
const SERVICE_ENV: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// A trial command's argv, with `{ratchet}`, `{trial_dir}`, `{work}`,
/// `{seed}` and `{experiment_dir}` expanded.
pub fn trial_argv(argv: &[String], config: &Config, dirs: &TrialDirs) -> Vec<String> {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ratchet".into());
    argv.iter()
        .map(|a| {
            a.replace("{ratchet}", &exe)
                .replace("{trial_dir}", &dirs.root.display().to_string())
                .replace("{work}", &dirs.work.display().to_string())
                .replace("{seed}", &dirs.seed.to_string())
                .replace(
                    "{experiment_dir}",
                    &config.experiment.dir.display().to_string(),
                )
        })
        .collect()
}
