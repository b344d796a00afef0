//! The git half of every trial, behind one type: a trial's commit (from its
//! configuration or its edits), exports of a commit into a run's work
//! directory, the protected files put back before an eval, the merged trees
//! and commits of a rebase, a combination or a keep over a moved incumbent,
//! and `ratchet/incumbent`. The actors hold a `Workshop` and never name
//! `provenance`; every call runs git on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::domain::{CommitId, Trial, TrialId};
use crate::edit::{Rejection, Rules};
pub use crate::provenance::MergedTree;
use crate::provenance::{Provenance, ProvenanceError};

/// A merge of two commits' changes (rebase or combination): the tree and the
/// recipe's text in it, or why they conflict.
pub type Merge = Result<(MergedTree, String), String>;

/// What making a trial's commit gave: its commit with its diff (and, for a
/// trial proposed as edits, the recipe text its files hold), or a refusal of
/// its edits (nothing was written).
pub enum Made {
    Commit {
        commit: CommitId,
        diff: String,
        recipe: Option<String>,
    },
    Refused(Rejection),
}

/// The experiment's repository and the commit the first trials start from.
#[derive(Clone, Debug)]
pub struct Workshop {
    provenance: Arc<Provenance>,
    base: CommitId,
}

impl Workshop {
    /// Opens (or creates) the repository of the experiment directory, takes
    /// its base snapshot (leaving `skip`, the lineage directory, out), and
    /// points `ratchet/incumbent` at `incumbent`, lineage's: lineage is the
    /// source of truth, the ref follows it.
    pub async fn open(
        experiment_dir: PathBuf,
        skip: PathBuf,
        incumbent: Option<CommitId>,
    ) -> Result<Workshop, ProvenanceError> {
        let opened = tokio::task::spawn_blocking(move || {
            let provenance = Provenance::open_or_init(&experiment_dir)?;
            let base = provenance.base(&skip)?;
            if let Some(commit) = incumbent {
                provenance.set_incumbent(&commit)?;
            }
            Ok(Workshop {
                provenance: Arc::new(provenance),
                base,
            })
        });
        opened.await.map_err(joined)?
    }

    /// The base snapshot: the parent of the baseline.
    pub fn base(&self) -> &CommitId {
        &self.base
    }

    /// Runs `work` on the blocking pool with the repository.
    async fn git<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Provenance) -> Result<T, ProvenanceError> + Send + 'static,
    ) -> Result<T, ProvenanceError> {
        let provenance = self.provenance.clone();
        tokio::task::spawn_blocking(move || work(&provenance))
            .await
            .map_err(joined)?
    }

    /// Commits `trial` on top of `parent` (its configuration written into
    /// the recipe, or its edits checked and applied) and exports the commit
    /// into `work`. A trial committed already (a rebase) is exported as it is.
    pub async fn make(
        &self,
        trial: &Trial,
        parent: CommitId,
        config: &Arc<Config>,
        work: PathBuf,
    ) -> Result<Made, ProvenanceError> {
        let message = format!(
            "ratchet trial {}\n\nspecialist: {}\nhypothesis: {}\n",
            trial.id, trial.specialist, trial.hypothesis
        );
        let (trial, config) = (trial.clone(), config.clone());
        self.git(move |provenance| {
            let made = if let Some(commit) = trial.commit.clone() {
                Made::Commit {
                    commit,
                    diff: trial.diff.clone().unwrap_or_default(),
                    recipe: None,
                }
            } else if trial.edits.is_empty() {
                let recipe = config.experiment.file.recipe_path();
                let (commit, diff) =
                    provenance.commit_trial(trial.id, &parent, &recipe, &trial.config, &message)?;
                Made::Commit {
                    commit,
                    diff,
                    recipe: None,
                }
            } else {
                let exp = &config.experiment;
                let surface = trial
                    .surface
                    .as_deref()
                    .and_then(|s| exp.surface(s))
                    .ok_or_else(|| {
                        ProvenanceError::Other(format!(
                            "trial {} edits surface {:?}, which the experiment does not declare",
                            trial.id, trial.surface
                        ))
                    })?;
                let rules = Rules {
                    experiment: &exp.file,
                    surface,
                    experiment_dir: &exp.dir,
                };
                match provenance.commit_edits(trial.id, &parent, &rules, &trial.edits, &message)? {
                    Ok((commit, diff, recipe)) => Made::Commit {
                        commit,
                        diff,
                        recipe: Some(recipe),
                    },
                    Err(rejection) => return Ok(Made::Refused(rejection)),
                }
            };
            if let Made::Commit { commit, .. } = &made {
                export(provenance, commit, &work)?;
            }
            Ok(made)
        })
        .await
    }

    /// Exports `commit` into `work` (emptied first): a seed re-run's files.
    pub async fn export(&self, commit: CommitId, work: PathBuf) -> Result<(), ProvenanceError> {
        self.git(move |provenance| export(provenance, &commit, &work))
            .await
    }

    /// Puts the protected paths of the experiment (the scoring code, eval
    /// data, and experiment.toml) in a run's work directory back exactly as
    /// `commit` has them: train ran there, and eval must not see what it did.
    pub async fn restore_protected(
        &self,
        config: &Config,
        commit: CommitId,
        work: PathBuf,
    ) -> Result<(), ProvenanceError> {
        let mut paths = config.experiment.file.protected.clone();
        paths.push("experiment.toml".into());
        self.git(move |provenance| provenance.restore(&commit, &work, &paths))
            .await
    }

    /// Points `ratchet/incumbent` at `commit`.
    pub async fn set_incumbent(&self, commit: CommitId) -> Result<(), ProvenanceError> {
        self.git(move |provenance| provenance.set_incumbent(&commit))
            .await
    }

    /// The text files of `commit` at `paths` (a directory stands for every
    /// file under it), each cut to `max_bytes`.
    pub async fn read_files(
        &self,
        commit: CommitId,
        paths: Vec<String>,
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, ProvenanceError> {
        self.git(move |provenance| provenance.read_files(&commit, &paths, max_bytes))
            .await
    }

    /// A trial's keep over an incumbent that replaced its parent: a merge
    /// commit on `onto` holding exactly the trial's files.
    pub async fn keep_over(
        &self,
        trial: CommitId,
        onto: CommitId,
        message: String,
    ) -> Result<CommitId, ProvenanceError> {
        self.git(move |provenance| provenance.commit_keep(&trial, &onto, &message))
            .await
    }

    /// What `trial` changed from its parent, applied onto `onto` (the recipe
    /// merged by key).
    pub async fn rebase(
        &self,
        config: &Config,
        trial: CommitId,
        onto: CommitId,
    ) -> Result<Merge, ProvenanceError> {
        let recipe = recipe_path(config);
        self.git(move |provenance| provenance.rebase_tree(&trial, &onto, &recipe))
            .await
    }

    /// What `displaced` (an incumbent a keep replaced) had over the kept
    /// trial's parent, applied onto `kept`.
    pub async fn combine(
        &self,
        config: &Config,
        displaced: CommitId,
        kept: CommitId,
    ) -> Result<Merge, ProvenanceError> {
        let recipe = recipe_path(config);
        self.git(move |provenance| provenance.combine_tree(&displaced, &kept, &recipe))
            .await
    }

    /// Commits a merged tree as trial `id`'s commit on top of `onto`;
    /// returns the commit and its diff.
    pub async fn commit_merged(
        &self,
        id: TrialId,
        tree: MergedTree,
        onto: CommitId,
        message: String,
    ) -> Result<(CommitId, String), ProvenanceError> {
        self.git(move |provenance| provenance.commit_rebased(id, tree, &onto, &message))
            .await
    }
}

/// The recipe's path in the experiment, as git names it.
fn recipe_path(config: &Config) -> String {
    config.experiment.file.recipe_path()
}

/// Exports `commit` into `work`, emptied first.
fn export(provenance: &Provenance, commit: &CommitId, work: &Path) -> Result<(), ProvenanceError> {
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(|source| ProvenanceError::Io {
            path: work.to_path_buf(),
            source,
        })?;
    }
    provenance.export(commit, work)
}

/// A blocking task that did not finish (it panicked, or the runtime is
/// shutting down).
fn joined(e: tokio::task::JoinError) -> ProvenanceError {
    ProvenanceError::Other(format!("git task failed: {e}"))
}
