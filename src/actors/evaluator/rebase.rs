//! A trial whose incumbent moved while it was measured: kept over the new
//! incumbent as a merge commit (`keep_over`), re-applied onto it as a new
//! trial (`rebase`), or followed by the combination of the displaced
//! incumbent's changes with it (`combine`).

use super::*;

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
    let provenance = state.provenance.clone();
    let keep =
        tokio::task::spawn_blocking(move || provenance.commit_keep(&commit, &onto, &message))
            .await??;
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
    let exp = &state.config.experiment;
    let recipe = exp.file.recipe.to_string_lossy().into_owned();
    let provenance = state.provenance.clone();
    let target = onto.clone();
    let merged =
        tokio::task::spawn_blocking(move || provenance.rebase_tree(&commit, &target, &recipe))
            .await??;
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
        (&inc.config, inc.trial, onto),
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

/// What a merged trial (a rebase or a combination) is proposed as.
pub(super) struct Merged {
    specialist: String,
    surface: Option<String>,
    hypothesis: String,
    edits: Vec<crate::domain::Edit>,
    rebased_from: Option<TrialId>,
    /// The commit message's last line.
    how: String,
}

/// Records a merged tree as a new trial on top of `onto` (its parent:
/// `parent`, with `base` its configuration), commits it there and queues it
/// (unless lineage knew the configuration: then it is a `duplicate`).
pub(super) async fn propose_merged(
    state: &mut EvaluatorState,
    m: Merged,
    (tree, recipe_text): (MergedTree, &str),
    (base, parent, onto): (&crate::domain::Params, TrialId, CommitId),
) -> Result<Trial, ActorProcessingErr> {
    let config = state.config.experiment.measured(recipe_text);
    let changes = config
        .iter()
        .filter(|(k, v)| base.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let new = NewTrial {
        specialist: m.specialist,
        surface: m.surface,
        parent: Some(parent),
        hypothesis: m.hypothesis,
        changes,
        config,
        edits: m.edits,
        reply: None,
        rejected: None,
        rebased_from: m.rebased_from,
    };
    let proposed = ractor::call_t!(state.lineage, LineageMsg::Propose, CALL_TIMEOUT_MS, new)??;
    if proposed.status != TrialStatus::Proposed {
        return Ok(proposed);
    }
    let message = format!(
        "ratchet trial {}\n\nspecialist: {}\nhypothesis: {}\n{}\n",
        proposed.id, proposed.specialist, proposed.hypothesis, m.how
    );
    let (provenance, id) = (state.provenance.clone(), proposed.id);
    let (oid, diff) =
        tokio::task::spawn_blocking(move || provenance.commit_rebased(id, tree, &onto, &message))
            .await??;
    let committed = update_trial(
        &state.lineage,
        proposed.id,
        Box::new(move |t| {
            t.commit = Some(oid.clone());
            t.diff = Some(diff.clone());
        }),
    )
    .await?;
    tell_executor(state, ExecutorMsg::Enqueue(Box::new(committed.clone())));
    Ok(committed)
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
    let recipe = state
        .config
        .experiment
        .file
        .recipe
        .to_string_lossy()
        .into_owned();
    let provenance = state.provenance.clone();
    let merged = tokio::task::spawn_blocking(move || provenance.combine_tree(&from, &own, &recipe))
        .await??;
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
        (&kept.config, kept.id, onto),
    )
    .await?;
    info!(trial = %kept.id, displaced = %displaced.trial, combined = %combined.id, "combining with the incumbent it replaced");
    Ok(())
}
