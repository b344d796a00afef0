//! A trial whose incumbent moved while it was measured: kept over the new
//! incumbent as a merge commit (`keep_over`), re-applied onto it as a new
//! trial (`rebase`), or followed by the combination of the displaced
//! incumbent's changes with it (`combine`).

use super::*;
use crate::runner::merged::{record_merged, Merged, Onto};

/// A trial kept over an incumbent that replaced its parent: its keep is a
/// merge commit on the incumbent's holding exactly the trial's measured
/// files (`keep_commit`), so every keep still descends from the one before.
pub(super) async fn keep_over(
    state: &mut EvaluatorState,
    trial: Trial,
    old: &Incumbent,
    parent: TrialId,
) -> Result<Trial, ActorProcessingErr> {
    let (Some(commit), Some(onto)) = (trial.commit.clone(), old.commit.clone()) else {
        return Ok(trial);
    };
    let message = format!(
        "ratchet: keep trial {} over #{}\n\nproposed against #{parent}, which #{} replaced while it was measured; its files as measured\n",
        trial.id, old.trial, old.trial
    );
    let keep = state.workshop.keep_over(commit, onto, message).await?;
    update_trial(
        &state.lineage,
        trial.id,
        Box::new(move |t| t.keep_commit = Some(keep.clone())),
    )
    .await
    .map_err(Into::into)
}

/// Re-applies a trial that beat its parent onto the incumbent that replaced
/// the parent, as a new trial that is measured and judged on its own. A
/// conflict (a file or recipe key both changed) is `patch_failed`.
pub(super) async fn rebase(
    state: &mut EvaluatorState,
    trial: &Trial,
) -> Result<(), ActorProcessingErr> {
    let Some(inc) = state.incumbent.clone() else {
        return Err(format!("trial {} rebased without an incumbent", trial.id).into());
    };
    let score = trial.full_score.or(trial.proxy_score);
    let (Some(commit), Some(onto)) = (trial.commit.clone(), inc.commit.clone()) else {
        let failure = Failure {
            label: FailureLabel::PatchFailed,
            detail: format!(
                "cannot rebase onto incumbent #{}: a commit is missing",
                inc.trial
            ),
            score,
        };
        return record(state, trial, Verdict::Failed(failure), None).await;
    };
    let merged = state
        .workshop
        .rebase(&state.config, commit, onto.clone())
        .await?;
    let (tree, recipe_text) = match merged {
        Ok(m) => m,
        Err(conflict) => {
            let failure = Failure {
                label: FailureLabel::PatchFailed,
                detail: format!("rebase onto incumbent #{}: {conflict}", inc.trial),
                score,
            };
            return record(state, trial, Verdict::Failed(failure), None).await;
        }
    };
    let rebased = propose_merged(
        state,
        Merged {
            specialist: trial.specialist.clone(),
            surface: trial.surface.clone(),
            hypothesis: trial.hypothesis.clone(),
            edits: trial.edits.clone(),
            rebased_from: Some(trial.id),
            how: format!(
                "rebased: trial {} re-applied onto trial {}",
                trial.id, inc.trial
            ),
        },
        (tree, &recipe_text),
        Onto {
            trial: inc.trial,
            commit: onto,
            config: &inc.config,
        },
    )
    .await?;
    info!(trial = %trial.id, onto = %inc.trial, rebased = %rebased.id, "rebased onto the new incumbent");
    let verdict = Verdict::Rebased {
        to: rebased.id,
        score,
        detail: format!(
            "beat #{} but the incumbent moved to #{}: re-applied onto it as #{}",
            trial.parent.map_or("-".into(), |p| p.to_string()),
            inc.trial,
            rebased.id
        ),
    };
    record(state, trial, verdict, None).await
}

/// Records a merged tree as a new trial and queues it (unless lineage knew
/// the configuration: then it is a `duplicate`).
async fn propose_merged(
    state: &mut EvaluatorState,
    m: Merged,
    merged: (MergedTree, &str),
    onto: Onto<'_>,
) -> Result<Trial, ActorProcessingErr> {
    let trial = record_merged(
        &state.lineage,
        &state.workshop,
        &state.config,
        m,
        merged,
        onto,
    )
    .await?;
    if trial.status == TrialStatus::Proposed {
        tell_executor(state, ExecutorMsg::Enqueue(Box::new(trial.clone())));
    }
    Ok(trial)
}

/// A trial kept over an incumbent that replaced its parent: the recipe it
/// displaced may hold gains it lacks. What changed from its parent to the
/// displaced incumbent is applied onto it and measured as a new trial (on
/// the displaced one's surface), unless that conflicts or adds nothing.
pub(super) async fn combine(
    state: &mut EvaluatorState,
    kept: &Trial,
    displaced: &Incumbent,
) -> Result<(), ActorProcessingErr> {
    let (Some(from), Some(own)) = (displaced.commit.clone(), kept.commit.clone()) else {
        return Ok(());
    };
    let onto = kept.keep_commit.clone().unwrap_or_else(|| own.clone());
    let Some(old) = ractor::call_t!(
        state.lineage,
        LineageMsg::Get,
        CALL_TIMEOUT_MS,
        displaced.trial
    )?
    // A displaced scout changed every surface: nothing to add that would
    // not conflict (and no combination is a scout).
    .filter(|t| t.specialist != SCOUT) else {
        return Ok(());
    };
    let merged = state.workshop.combine(&state.config, from, own).await?;
    let (tree, recipe_text) = match merged {
        Ok(m) => m,
        Err(why) => {
            info!(trial = %kept.id, displaced = %displaced.trial, "no combination: {why}");
            return Ok(());
        }
    };
    let combined = propose_merged(
        state,
        Merged {
            specialist: old.specialist.clone(),
            surface: old.surface.clone(),
            hypothesis: format!(
                "combination: what #{} (the incumbent #{} replaced) had over #{} re-applied onto #{}",
                displaced.trial,
                kept.id,
                kept.parent.map_or("-".into(), |p| p.to_string()),
                kept.id
            ),
            edits: old.edits.clone(),
            rebased_from: None,
            how: format!(
                "combined: trial {} re-applied onto trial {}",
                displaced.trial, kept.id
            ),
        },
        (tree, &recipe_text),
        Onto {
            trial: kept.id,
            commit: onto,
            config: &kept.config,
        },
    )
    .await?;
    info!(trial = %kept.id, displaced = %displaced.trial, combined = %combined.id, "combining with the incumbent it replaced");
    Ok(())
}
