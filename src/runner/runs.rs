//! A run of a trial from end to end: its commit and work directory made
//! (the trial's own run) or exported again (a seed re-run), recorded, and
//! launched.

use ractor::ActorRef;
use tracing::warn;

use super::launch::{preflight_spec, spawn_failed, train_spec, Launched, Launcher, Ran};
use super::workshop::{Made, Workshop};
use crate::domain::{FailureLabel, ProcessReport, Trial, TrialId, TrialStatus};
use crate::lineage::actor::{advance_trial, LineageMsg, CALL_TIMEOUT_MS};
use crate::process::{self, GroupGuard};
use crate::slurm::JobKind;
use crate::workspace::TrialDirs;

/// A seed re-run of a trial: its commit exported into `seed-<s>/work` and
/// trained with `RATCHET_SEED=<s>` (the trial stays `evaluating` meanwhile).
pub async fn run_seed(l: &Launcher<'_>, trial: &Trial, seed: u64, workshop: &Workshop) -> Ran {
    let dirs = TrialDirs::run(&l.config.lineage_dir, trial.id, seed);
    let spec = train_spec(l.config, &dirs, trial.id);
    let failed = |e: String| Ran::Report(Box::new(spawn_failed(&spec, e)));
    let Some(commit) = trial.commit.clone() else {
        return failed("the trial has no commit to re-run".into());
    };
    if let Err(e) = workshop.export(commit.clone(), dirs.work.clone()).await {
        return failed(format!("provenance: {e}"));
    }
    if let Err(e) = restore_scorer(l, workshop, commit, &dirs).await {
        return failed(e);
    }
    l.launch(&spec, (trial.id, seed, JobKind::Train))
        .await
        .train()
}

/// Commits and exports the trial and runs its train command.
pub async fn run_train(l: &Launcher<'_>, trial: Trial, workshop: &Workshop) -> Ran {
    let (config, lineage) = (l.config, l.lineage);
    let dirs = TrialDirs::new(&config.lineage_dir, trial.id);
    let spec = train_spec(config, &dirs, trial.id);

    // The trial's commit, on top of the incumbent commit it was proposed
    // against (the parent's keep commit); the full configuration is written,
    // so the base works as well for a parent recorded before provenance existed.
    let base = workshop.base().clone();
    let parent = match trial.parent {
        Some(p) => match ractor::call_t!(lineage, LineageMsg::Get, CALL_TIMEOUT_MS, p) {
            Ok(Some(t)) => t.keep_commit.or(t.commit).unwrap_or(base),
            _ => base,
        },
        None => base,
    };
    let made = workshop
        .make(&trial, parent, config, dirs.work.clone())
        .await;
    let (commit, diff, measured) = match made {
        Ok(Made::Commit {
            commit,
            diff,
            recipe,
        }) => {
            let measured = recipe.map(|r| config.experiment.measured(&r));
            (commit, diff, measured)
        }
        Ok(Made::Refused(rejection)) => {
            warn!(trial = %trial.id, "{}", rejection.detail());
            let (label, detail) = (rejection.label(), rejection.detail());
            return not_run(lineage, trial.id, label, detail).await;
        }
        // The trial is not `running` yet: it is failed here, not by the
        // evaluator (which takes only runs that started).
        Err(e) => {
            let detail = format!("provenance: the trial's files could not be made: {e}");
            warn!(trial = %trial.id, "{detail}");
            return not_run(lineage, trial.id, FailureLabel::Crash, detail).await;
        }
    };
    // The experiment's pre-flight check of the files, before any training.
    let mut preflight = None;
    if let Some(spec) = preflight_spec(config, &dirs, trial.id) {
        let report = process::run(&spec, &GroupGuard::default())
            .await
            .unwrap_or_else(|e| spawn_failed(&spec, e.to_string()));
        if let Err(f) = crate::judge::check_preflight(config, &report) {
            warn!(trial = %trial.id, "{}", f.detail);
            let root = dirs.root.clone();
            let recorded = advance_trial(
                lineage,
                trial.id,
                TrialStatus::Failed,
                Box::new(move |t| {
                    t.trial_dir = Some(root.clone());
                    t.commit = Some(commit.clone());
                    t.diff = Some(diff.clone());
                    t.preflight = Some(report.clone());
                    t.label = Some(f.label);
                    t.detail = Some(f.detail.clone());
                }),
            )
            .await;
            if let Err(e) = recorded {
                warn!(trial = %trial.id, error = %e, "cannot record a failed pre-flight");
                return Ran::NotRun;
            }
            // The train time it did not spend: the budget it would have had.
            let saved_ms = config.experiment.file.budget_secs * 1000;
            return Ran::Preflight { saved_ms };
        }
        preflight = Some(report);
    }
    if let Err(e) = restore_scorer(l, workshop, commit.clone(), &dirs).await {
        warn!(trial = %trial.id, "{e}");
        return not_run(lineage, trial.id, FailureLabel::Crash, e).await;
    }
    let root = dirs.root.clone();
    if let Err(e) = advance_trial(
        lineage,
        trial.id,
        TrialStatus::Running,
        Box::new(move |t| {
            t.trial_dir = Some(root.clone());
            t.commit = Some(commit.clone());
            t.diff = Some(diff.clone());
            t.preflight = preflight.clone();
            // An edited trial measures what its files say, whatever it claimed.
            if let Some(config) = &measured {
                for (k, v) in config {
                    if t.config.get(k) != Some(v) {
                        t.changes.insert(k.clone(), v.clone());
                    }
                }
                t.config = config.clone();
            }
        }),
    )
    .await
    {
        warn!(trial = %trial.id, error = %e, "not started: lineage would not record it running");
        return Ran::NotRun;
    }
    l.launch(&spec, (trial.id, 0, JobKind::Train)).await.train()
}

/// Where the train run computes the score (`score_from = "train"`), its
/// protected files are put back exactly as committed before it starts (an
/// export is fresh; this also holds for a work directory a lost run left).
async fn restore_scorer(
    l: &Launcher<'_>,
    workshop: &Workshop,
    commit: crate::domain::CommitId,
    dirs: &TrialDirs,
) -> Result<(), String> {
    if l.config.experiment.file.score_from != crate::config::ScoreFrom::Train {
        return Ok(());
    }
    workshop
        .restore_protected(l.config, commit, dirs.work.clone())
        .await
        .map_err(|e| format!("provenance: cannot restore the protected files: {e}"))
}

/// Records a trial whose run could not start `failed` with `label` and
/// `detail`.
async fn not_run(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    label: FailureLabel,
    detail: String,
) -> Ran {
    let recorded = advance_trial(
        lineage,
        id,
        TrialStatus::Failed,
        Box::new(move |t| {
            t.label = Some(label);
            t.detail = Some(detail.clone());
        }),
    )
    .await;
    if let Err(e) = recorded {
        warn!(trial = %id, error = %e, "cannot record a trial that could not run failed");
    }
    Ran::NotRun
}

/// Runs an eval command (`key.2`: `Eval` or `Full`) to its report; a job
/// the cluster lost is submitted again, up to `config.max_attempts` times.
pub async fn run_eval(
    l: &Launcher<'_>,
    spec: &process::Spec,
    key: (TrialId, u64, JobKind),
) -> ProcessReport {
    let attempts = l.config.max_attempts;
    let mut attempt = 1;
    loop {
        match l.launch(spec, key).await {
            // An eval on a GPU that vanished fails as any failed eval does.
            Launched::Ran(report) | Launched::DeviceGone(report, _) => return *report,
            Launched::Lost(why) if attempt < attempts => {
                warn!(trial = %key.0, seed = key.1, "{why}; submitting the eval again");
                attempt += 1;
            }
            Launched::Lost(why) => {
                return ProcessReport {
                    spawn_error: Some(format!("{why}, at every one of {attempts} attempts")),
                    ..Default::default()
                }
            }
        }
    }
}
