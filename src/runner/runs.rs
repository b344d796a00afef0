//! A run of a trial from end to end: its commit and work directory made
//! (the trial's own run) or exported again (a seed re-run), recorded, and
//! launched.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::warn;

use super::launch::{spawn_failed, train_spec, Launched, Launcher, Ran};
use crate::config::Config;
use crate::domain::{CommitId, Params, ProcessReport, Trial, TrialId, TrialStatus};
use crate::edit::{Rejection, Rules};
use crate::lineage::actor::{advance_trial, LineageMsg, CALL_TIMEOUT_MS};
use crate::process;
use crate::provenance::{Provenance, ProvenanceError};
use crate::slurm::JobKind;
use crate::workspace::TrialDirs;

/// A seed re-run of a trial: its commit exported into `seed-<s>/work` and
/// trained with `RATCHET_SEED=<s>` (the trial stays `evaluating` meanwhile).
pub async fn run_seed(
    l: &Launcher<'_>,
    trial: &Trial,
    seed: u64,
    provenance: Arc<Provenance>,
) -> Ran {
    let dirs = TrialDirs::run(&l.config.lineage_dir, trial.id, seed);
    let spec = train_spec(l.config, &dirs, trial.id);
    let failed = |e: String| Ran::Report(Box::new(spawn_failed(&spec, e)));
    let Some(commit) = trial.commit.clone() else {
        return failed("the trial has no commit to re-run".into());
    };
    let work = dirs.work.clone();
    let exported = tokio::task::spawn_blocking(move || {
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|source| ProvenanceError::Io {
                path: work.clone(),
                source,
            })?;
        }
        provenance.export(&commit, &work)
    })
    .await;
    match exported {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return failed(format!("provenance: {e}")),
        Err(e) => return failed(format!("provenance task failed: {e}")),
    }
    l.launch(&spec, (trial.id, seed, JobKind::Train))
        .await
        .train()
}

/// Commits and exports the trial and runs its train command.
pub async fn run_train(
    l: &Launcher<'_>,
    trial: Trial,
    provenance: Arc<Provenance>,
    base: CommitId,
) -> Ran {
    let (config, lineage) = (l.config, l.lineage);
    let dirs = TrialDirs::new(&config.lineage_dir, trial.id);
    let spec = train_spec(config, &dirs, trial.id);
    let failed = |e: String| Ran::Report(Box::new(spawn_failed(&spec, e)));

    // The trial's commit, on top of the incumbent commit it was proposed
    // against (the parent's keep commit); the full configuration is written,
    // so the base works as well for a parent recorded before provenance existed.
    let parent = match trial.parent {
        Some(p) => match ractor::call_t!(lineage, LineageMsg::Get, CALL_TIMEOUT_MS, p) {
            Ok(Some(t)) => t.keep_commit.or(t.commit).unwrap_or(base),
            _ => base,
        },
        None => base,
    };
    let message = format!(
        "ratchet trial {}\n\nspecialist: {}\nhypothesis: {}\n",
        trial.id, trial.specialist, trial.hypothesis
    );
    let (work, owned, edited) = (dirs.work.clone(), config.clone(), trial.clone());
    let made = tokio::task::spawn_blocking(move || -> Result<Made, ProvenanceError> {
        let preset = edited.commit.clone();
        let (oid, diff, config) = if let Some(oid) = preset {
            // Committed already (a rebase): measured as it is.
            (oid, edited.diff.clone().unwrap_or_default(), None)
        } else if edited.edits.is_empty() {
            let recipe = owned.experiment.file.recipe.to_string_lossy();
            let (oid, diff) =
                provenance.commit_trial(edited.id, &parent, &recipe, &edited.config, &message)?;
            (oid, diff, None)
        } else {
            let exp = &owned.experiment;
            let surface = edited
                .surface
                .as_deref()
                .and_then(|s| exp.surface(s))
                .ok_or_else(|| {
                    ProvenanceError::Other(format!(
                        "trial {} edits surface {:?}, which the experiment does not declare",
                        edited.id, edited.surface
                    ))
                })?;
            let rules = Rules {
                experiment: &exp.file,
                surface,
                experiment_dir: &exp.dir,
            };
            match provenance.commit_edits(edited.id, &parent, &rules, &edited.edits, &message)? {
                Ok((oid, diff, recipe)) => (oid, diff, Some(exp.measured(&recipe))),
                Err(rejection) => return Ok(Made::Refused(rejection)),
            }
        };
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|source| ProvenanceError::Io {
                path: work.clone(),
                source,
            })?;
        }
        provenance.export(&oid, &work)?;
        Ok(Made::Commit(oid, diff, config))
    })
    .await;
    let (commit, diff, measured) = match made {
        Ok(Ok(Made::Commit(oid, diff, config))) => (oid, diff, config),
        Ok(Ok(Made::Refused(rejection))) => {
            warn!(trial = %trial.id, "{}", rejection.detail());
            let (label, detail) = (rejection.label(), rejection.detail());
            let refused = advance_trial(
                lineage,
                trial.id,
                TrialStatus::Failed,
                Box::new(move |t| {
                    t.label = Some(label);
                    t.detail = Some(detail.clone());
                }),
            )
            .await;
            return match refused {
                Ok(_) => Ran::Refused,
                Err(e) => failed(e.to_string()),
            };
        }
        Ok(Err(e)) => return failed(format!("provenance: {e}")),
        Err(e) => return failed(format!("provenance task failed: {e}")),
    };
    let root = dirs.root.clone();
    if let Err(e) = advance_trial(
        lineage,
        trial.id,
        TrialStatus::Running,
        Box::new(move |t| {
            t.trial_dir = Some(root.clone());
            t.commit = Some(commit.clone());
            t.diff = Some(diff.clone());
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
        return failed(e.to_string());
    }
    l.launch(&spec, (trial.id, 0, JobKind::Train)).await.train()
}

/// What committing a trial gave: its commit (with diff, and the measured
/// configuration for edited trials), or a refusal of its edits.
enum Made {
    Commit(CommitId, String, Option<Params>),
    Refused(Rejection),
}

/// Puts the protected paths of the experiment (the scoring code, eval data,
/// and experiment.toml) in a run's work directory back exactly as
/// `commit` has them: train ran there, and eval must not see what it did.
pub async fn restore_protected(
    provenance: Arc<Provenance>,
    config: &Config,
    commit: CommitId,
    work: PathBuf,
) -> Result<(), ProvenanceError> {
    let mut paths = config.experiment.file.protected.clone();
    paths.push("experiment.toml".into());
    let task = move || provenance.restore(&commit, &work, &paths);
    tokio::task::spawn_blocking(task)
        .await
        .map_err(|e| ProvenanceError::Other(e.to_string()))?
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
