//! The evaluator's decisions: a trial's stages (`own_eval`), its seed
//! runs and the incumbent's re-measurement, and each look of the keep rule
//! (`decide`): keep, stop, or one more run.

use super::rebase::{combine, keep_over, rebase};
use super::*;

/// The seeds in 1..=`noise.seeds` a trial has no finished run of.
pub(super) fn missing_seeds(config: &Config, trial: &Trial) -> Vec<u64> {
    let full = config.experiment.file.eval.full.is_some();
    let seeds = config.experiment.file.noise.seeds as u64;
    (1..=seeds)
        .filter(|s| {
            !trial
                .seed_runs
                .iter()
                .any(|r| r.seed == *s && r.finished(full))
        })
        .collect()
}

/// A fresh (empty) run for each of `seeds`, keeping recorded process groups
/// and Slurm jobs (recovery adopts a job that is still running).
pub(super) fn add_seed_runs(seeds: Vec<u64>) -> crate::lineage::actor::Set {
    Box::new(move |t: &mut Trial| {
        for &seed in &seeds {
            if let Some(r) = t.seed_runs.iter_mut().find(|r| r.seed == seed) {
                *r = SeedRun {
                    seed,
                    pgid: r.pgid,
                    slurm_job: r.slurm_job,
                    ..Default::default()
                };
            } else {
                t.seed_runs.push(SeedRun {
                    seed,
                    ..Default::default()
                });
            }
        }
        t.seed_runs.sort_by_key(|r| r.seed);
    })
}

/// An incumbent without runs for every seed in 1..=`noise.seeds` is
/// trained again with the missing seeds: at start (kept before the setting
/// was made or raised), after an executor restart, and after a keep that
/// was clear before every seed was run (later candidates pair with them).
/// Decisions that need one of those seeds wait for it.
pub(super) async fn remeasure(state: &mut EvaluatorState) -> Result<(), ActorProcessingErr> {
    let Some(inc) = state.incumbent.clone() else {
        return Ok(());
    };
    if state.remeasuring == Some(inc.trial) {
        return Ok(());
    }
    let Some(trial) = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, inc.trial)?
    else {
        return Ok(());
    };
    let missing = missing_seeds(&state.config, &trial);
    if missing.is_empty() {
        return Ok(());
    }
    let trial = measure_trial(&state.lineage, trial.id, add_seed_runs(missing.clone())).await?;
    info!(
        trial = %trial.id,
        seeds = ?missing,
        "training the incumbent with the seeds it lacks; decisions that pair with them wait"
    );
    let replaced = state.remeasuring.replace(trial.id).is_some();
    run_seeds(state, trial, missing);
    if replaced {
        // They waited for an incumbent that is no longer one.
        resume_parked(state).await?;
    }
    Ok(())
}

/// Asks the executor for seed runs of a trial (recorded in its `seed_runs`).
pub(super) fn run_seeds(state: &mut EvaluatorState, trial: Trial, seeds: Vec<u64>) {
    tell_executor(
        state,
        ExecutorMsg::RunSeeds {
            trial: Box::new(trial),
            seeds,
        },
    );
}

/// The incumbent's seed runs are in: its band and mean are stored, and the
/// decisions that waited for them are made.
pub(super) async fn remeasured(
    state: &mut EvaluatorState,
    trial: Trial,
) -> Result<(), ActorProcessingErr> {
    let noise = noise_band(&state.config, &trial);
    let trial = measure_trial(
        &state.lineage,
        trial.id,
        Box::new(move |t| {
            t.noise = noise;
            if let Some(n) = noise {
                t.score = Some(n.confirmed.mean);
            }
        }),
    )
    .await?;
    info!(trial = %trial.id, band = ?trial.noise, "the incumbent's noise band is measured");
    if let Some(inc) = state.incumbent.as_mut().filter(|i| i.trial == trial.id) {
        inc.noise = trial.noise;
        if let Some(score) = trial.score {
            inc.score = score;
        }
    }
    state.remeasuring = None;
    announce_bars(state).await?;
    resume_parked(state).await
}

/// Makes the decisions that waited for an incumbent's seed runs.
pub(super) async fn resume_parked(state: &mut EvaluatorState) -> Result<(), ActorProcessingErr> {
    for id in std::mem::take(&mut state.parked) {
        let t = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)?;
        if let Some(t) = t.filter(|t| t.status == TrialStatus::Evaluating) {
            // Boxed: a decision can keep, and a keep can resume decisions.
            Box::pin(decide(state, t)).await?;
        }
    }
    Ok(())
}

/// The spread of a trial's scores over its runs (failed runs left out).
pub(super) fn noise_band(config: &Config, trial: &Trial) -> Option<NoiseBand> {
    let full = config.experiment.file.eval.full.is_some();
    let values: Vec<f64> = scores_by_seed(trial, full, true).into_values().collect();
    let proxies: Vec<f64> = scores_by_seed(trial, full, false).into_values().collect();
    match (Spread::of(&proxies), Spread::of(&values)) {
        (Some(proxy), Some(confirmed)) => Some(NoiseBand { proxy, confirmed }),
        _ => None,
    }
}

/// The trial's own run (seed 0) passed an eval stage or failed it.
pub(super) async fn own_eval(
    myself: &ActorRef<EvaluatorMsg>,
    state: &mut EvaluatorState,
    id: TrialId,
    stage: Stage,
    eval: ProcessReport,
    checked: Result<f64, Failure>,
) -> Result<(), ActorProcessingErr> {
    let score = match checked {
        Ok(s) => s,
        Err(failure) => {
            let trial = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)?
                .ok_or_else(|| format!("trial {id} vanished from lineage"))?;
            return record(state, &trial, Verdict::Failed(failure), Some((stage, eval))).await;
        }
    };
    let trial = update_trial(
        &state.lineage,
        id,
        Box::new(move |t| match stage {
            Stage::Proxy => {
                t.eval = Some(eval.clone());
                t.proxy_score = Some(score);
            }
            Stage::Full => {
                t.full_eval = Some(eval.clone());
                t.full_score = Some(score);
            }
        }),
    )
    .await?;
    let full = state.config.experiment.file.eval.full.is_some();
    if stage == Stage::Full || !full {
        // The deciding eval of the first run: the keep rule's first look.
        return decide(state, trial).await;
    }
    // The proxy screen: the first look on the cheap eval, which can only
    // stop a trial that is not on course (never keep one).
    if let Some(parent) = reference(state, &trial).await? {
        if let Some(e) = look_against(state, &trial, &parent, false) {
            if e.call == Call::Stop {
                let theirs = compared_with(&state.config.experiment.file, score, &e);
                let detail = format!(
                    "proxy {} vs {} of #{}: {}",
                    format_float(score),
                    format_float(theirs),
                    parent.id,
                    e.describe()
                );
                let verdict = Verdict::Scored {
                    score,
                    decision: e.decision(),
                    reference: Some(theirs),
                    false_peak: false,
                    detail,
                    noise: None,
                    evidence: Some(e),
                };
                return record(state, &trial, verdict, None).await;
            }
        }
    }
    start_eval(myself, state, &trial, 0, Stage::Full);
    Ok(())
}

/// The reference score a first run's look was against, on the metric: the
/// reference's runs as the keep rule weighed them (its same-seed run as far
/// as same-seed runs move together, else its mean).
pub(super) fn compared_with(exp: &crate::config::ExperimentFile, score: f64, e: &Evidence) -> f64 {
    let Some(mine) = exp.noise.scale.judged(score) else {
        return score;
    };
    let theirs = match exp.direction {
        crate::domain::Direction::Minimize => mine + e.gain,
        crate::domain::Direction::Maximize => mine - e.gain,
    };
    exp.noise.scale.metric(theirs)
}

/// The trial a candidate is screened against: its parent, when lineage has it scored.
pub(super) async fn reference(
    state: &EvaluatorState,
    trial: &Trial,
) -> Result<Option<Trial>, ActorProcessingErr> {
    let Some(p) = trial.parent else {
        return Ok(None);
    };
    let parent = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, p)?;
    Ok(parent.filter(|p| p.score.is_some()))
}

/// A trial's incumbent moved after it was proposed.
pub(super) fn stale(state: &EvaluatorState, trial: &Trial) -> bool {
    state
        .incumbent
        .as_ref()
        .is_some_and(|i| trial.parent != Some(i.trial))
}

/// A trial with seed runs (after a restart, or the baseline): runs that
/// were asked for and did not finish are asked for again; the baseline gets
/// every seed at once (the first spread); then the next look.
pub(super) async fn confirm(
    state: &mut EvaluatorState,
    trial: Trial,
) -> Result<(), ActorProcessingErr> {
    let full = state.config.experiment.file.eval.full.is_some();
    let mut seeds: Vec<u64> = trial
        .seed_runs
        .iter()
        .filter(|r| !r.finished(full))
        .map(|r| r.seed)
        .collect();
    if seeds.is_empty() && state.incumbent.is_none() {
        seeds = missing_seeds(&state.config, &trial);
    }
    if seeds.is_empty() {
        return decide(state, trial).await;
    }
    let trial = update_trial(&state.lineage, trial.id, add_seed_runs(seeds.clone())).await?;
    info!(trial = %trial.id, seeds = ?seeds, "confirming with seed re-runs");
    run_seeds(state, trial, seeds);
    Ok(())
}

pub(super) async fn seed_finished(
    state: &mut EvaluatorState,
    trial: Trial,
) -> Result<(), ActorProcessingErr> {
    let full = state.config.experiment.file.eval.full.is_some();
    if !trial.seed_runs.iter().all(|r| r.finished(full)) {
        return Ok(());
    }
    if state.remeasuring == Some(trial.id) {
        return remeasured(state, trial).await;
    }
    decide(state, trial).await
}

/// One look of the keep rule at `trial`'s runs against `reference`'s, on
/// the deciding eval's scores or the proxy's, as `noise.scale` has them.
pub(super) fn look_against(
    state: &EvaluatorState,
    trial: &Trial,
    reference: &Trial,
    deciding: bool,
) -> Option<Evidence> {
    let exp = &state.config.experiment.file;
    let full = exp.eval.full.is_some();
    let on = |t| judged_by_seed(exp.noise.scale, t, full, deciding);
    let pool = state
        .pools
        .with(reference, full, deciding, state.incumbent.as_ref());
    let e = judge::look(
        exp.noise.rule(),
        &pool,
        exp.direction,
        &on(trial),
        &on(reference),
        false,
    )?;
    Some(Evidence {
        log: exp.noise.scale == crate::config::Scale::Log,
        ..e
    })
}

/// Adds a trial's runs to the pools, paired with its parent's same-seed runs.
pub(super) async fn pool(
    state: &mut EvaluatorState,
    trial: &Trial,
) -> Result<(), ActorProcessingErr> {
    let full = state.config.experiment.file.eval.full.is_some();
    let parent = match trial.parent.filter(|_| !trial.seed_runs.is_empty()) {
        Some(p) => ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, p)?,
        None => None,
    };
    state.pools.add(trial, parent.as_ref(), full);
    Ok(())
}

/// A look of the keep rule at the trial's runs so far (the deciding eval's
/// scores): keep it, stop it, or ask for one more seed run. The baseline,
/// with every seed in, becomes the first incumbent.
pub(super) async fn decide(
    state: &mut EvaluatorState,
    trial: Trial,
) -> Result<(), ActorProcessingErr> {
    if let Some(r) = trial.seed_runs.iter().find(|r| r.failure.is_some()) {
        let failure = Failure {
            label: r.failure.unwrap_or(FailureLabel::Crash),
            detail: r
                .detail
                .clone()
                .unwrap_or_else(|| format!("seed {} failed", r.seed)),
            score: trial.full_score.or(trial.proxy_score),
        };
        return record(state, &trial, Verdict::Failed(failure), None).await;
    }
    let exp = &state.config.experiment.file;
    let full = exp.eval.full.is_some();
    let mine = scores_by_seed(&trial, full, true);
    let runs = mine.len();
    let noise = noise_band(&state.config, &trial);
    let Some(score) = noise.map(|n| n.confirmed.mean) else {
        return Err(format!("trial {} reached its decision without a score", trial.id).into());
    };
    // Judged against the incumbent (paired by seed), also a trial whose
    // incumbent moved since it was proposed: it is kept as it was measured
    // when it beats the new one too. When it does not, it is judged against
    // its parent, and re-applied onto the incumbent unless it is behind.
    let stale = stale(state, &trial);
    let against = if let Some(inc) = &state.incumbent {
        let t = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, inc.trial)?;
        Some(t.ok_or_else(|| format!("incumbent trial {} vanished from lineage", inc.trial))?)
    } else {
        None
    };
    let Some(incumbent) = against else {
        // The baseline is measured with every seed before it is kept: the
        // first spread every later decision starts from.
        let missing = missing_seeds(&state.config, &trial);
        if !missing.is_empty() {
            let trial =
                update_trial(&state.lineage, trial.id, add_seed_runs(missing.clone())).await?;
            info!(trial = %trial.id, seeds = ?missing, "measuring the baseline with seed re-runs");
            run_seeds(state, trial, missing);
            return Ok(());
        }
        let verdict = Verdict::Scored {
            score,
            decision: Decision::Improved,
            reference: None,
            false_peak: false,
            detail: format!("first incumbent, measured over {runs} run(s)"),
            noise,
            evidence: None,
        };
        return record(state, &trial, verdict, None).await;
    };
    // The incumbent being completed lacks a seed this look pairs with: wait.
    if state.remeasuring == Some(incumbent.id)
        && mine
            .keys()
            .any(|s| !scores_by_seed(&incumbent, full, true).contains_key(s))
    {
        info!(trial = %trial.id, "the decision waits for the incumbent's seed runs");
        state.parked.push(trial.id);
        return Ok(());
    }
    let look = |reference: &Trial| {
        look_against(state, &trial, reference, true)
            .ok_or_else(|| format!("trial {} has no scores to compare", trial.id))
    };
    let mut e = look(&incumbent)?;
    // No spread to judge with yet (the look would be a bare comparison),
    // and the incumbent's seed runs that give one are on their way: wait.
    if e.df == 0.0 && state.remeasuring == Some(incumbent.id) {
        info!(trial = %trial.id, "the decision waits for the incumbent's band");
        state.parked.push(trial.id);
        return Ok(());
    }
    let mut reference = incumbent;
    let mut moved = None;
    // A scout is not re-applied: it changed every surface, as the
    // incumbent that replaced its parent did.
    if stale && e.call == Call::Stop && trial.specialist != SCOUT {
        let Some(parent) = self::reference(state, &trial).await? else {
            return rebase(state, &trial).await;
        };
        e = look(&parent)?;
        if e.call != Call::Stop {
            return rebase(state, &trial).await;
        }
        reference = parent;
    } else if stale {
        moved = trial.parent;
    }
    let theirs = scores_by_seed(&reference, full, true);
    if e.call == Call::Continue {
        let next = mine.keys().max().map_or(1, |s| s + 1);
        let trial = update_trial(&state.lineage, trial.id, add_seed_runs(vec![next])).await?;
        info!(trial = %trial.id, seed = next, gain = e.gain, bound = e.bound, "ambiguous: one more seed run");
        run_seeds(state, trial, vec![next]);
        return Ok(());
    }
    let their_score =
        Spread::of(&theirs.values().copied().collect::<Vec<_>>()).map_or(f64::NAN, |s| s.mean);
    let what = match moved {
        Some(p) => format!(
            "against #{}, the incumbent (its parent #{p} was replaced while it was measured): {}",
            reference.id,
            e.describe()
        ),
        None => format!("against #{}: {}", reference.id, e.describe()),
    };
    let decision = e.decision();
    // It was ahead once (on proxy, or at an earlier look) and is not kept.
    let false_peak = decision != Decision::Improved && (full || runs > 1);
    let detail = if !false_peak {
        format!("{} {what}", if full { "full" } else { "proxy" })
    } else if runs == 1 {
        format!(
            "false peak: won on proxy ({}), not on full {} {what}",
            trial.proxy_score.map_or("?".into(), format_float),
            format_float(score)
        )
    } else {
        format!("false peak: passed its screens, not the confirmation: {what}")
    };
    let verdict = Verdict::Scored {
        score,
        decision,
        reference: Some(their_score),
        false_peak,
        detail,
        noise,
        evidence: Some(e),
    };
    if let (Some(old), Some(parent)) = (state.incumbent.clone(), moved) {
        if decision == Decision::Improved {
            let trial = keep_over(state, trial, &old, parent).await?;
            // Queued before the keep settles, so a run does not end between.
            combine(state, &trial, &old).await?;
            return record(state, &trial, verdict, None).await;
        }
    }
    record(state, &trial, verdict, None).await
}
