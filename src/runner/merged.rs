//! A merged trial (a rebase or a combination) made real: proposed in
//! lineage as a new trial on top of the incumbent it was merged onto, and
//! its merged tree committed there. The evaluator decides that one is
//! needed and queues what this returns.

use ractor::ActorRef;

use super::workshop::{MergedTree, Workshop};
use crate::config::Config;
use crate::domain::{CommitId, Edit, Params, Trial, TrialId, TrialStatus};
use crate::lineage::actor::{propose_trial, update_trial, LineageCallError, LineageMsg};
use crate::lineage::NewTrial;
use crate::provenance::ProvenanceError;

/// What a merged trial is proposed as.
pub struct Merged {
    pub specialist: String,
    pub surface: Option<String>,
    pub hypothesis: String,
    pub edits: Vec<Edit>,
    /// The trial it re-applies (a rebase), if any.
    pub rebased_from: Option<TrialId>,
    /// The commit message's last line.
    pub how: String,
}

/// Where a merged trial goes: onto `commit`, the commit of `trial`, whose
/// configuration is `config`.
pub struct Onto<'a> {
    pub trial: TrialId,
    pub commit: CommitId,
    pub config: &'a Params,
}

/// Why a merged trial could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Lineage(#[from] LineageCallError),
    #[error(transparent)]
    Git(#[from] ProvenanceError),
}

/// Records the merged tree `tree` (whose recipe reads `recipe_text`) as a new
/// trial on top of `onto`, and commits it there. A configuration lineage
/// knew already comes back as the `duplicate` lineage recorded, uncommitted.
pub async fn record_merged(
    lineage: &ActorRef<LineageMsg>,
    workshop: &Workshop,
    config: &Config,
    m: Merged,
    (tree, recipe_text): (MergedTree, &str),
    onto: Onto<'_>,
) -> Result<Trial, MergeError> {
    let measured = config.experiment.measured(recipe_text);
    let changes = measured
        .iter()
        .filter(|(k, v)| onto.config.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let new = NewTrial {
        specialist: m.specialist,
        surface: m.surface,
        parent: Some(onto.trial),
        hypothesis: m.hypothesis,
        changes,
        config: measured,
        edits: m.edits,
        reply: None,
        rejected: None,
        rebased_from: m.rebased_from,
        expected_delta: None,
    };
    let proposed = propose_trial(lineage, new).await?;
    if proposed.status != TrialStatus::Proposed {
        return Ok(proposed);
    }
    let message = format!(
        "ratchet trial {}\n\nspecialist: {}\nhypothesis: {}\n{}\n",
        proposed.id, proposed.specialist, proposed.hypothesis, m.how
    );
    let (commit, diff) = workshop
        .commit_merged(proposed.id, tree, onto.commit, message)
        .await?;
    let committed = update_trial(
        lineage,
        proposed.id,
        Box::new(move |t| {
            t.commit = Some(commit.clone());
            t.diff = Some(diff.clone());
        }),
    )
    .await?;
    Ok(committed)
}
