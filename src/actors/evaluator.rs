//! The evaluator: owns every score and every keep/discard decision. It runs
//! the experiment's eval commands itself in the trial's workspace (numbers the
//! train command printed are never the score), applies the failure labels and
//! gates, and decides in stages, recording each before acting on it:
//!
//! 1. **proxy** (every trial): the gates, then a screen against the trial's
//!    parent (the incumbent it was proposed against, same seed): a gain within
//!    the parent's proxy noise band ends it (`within_noise` or `regressed`);
//! 2. **full** (experiments with `eval.full`, only trials that passed the
//!    proxy screen): gates and the same screen on the full score; a trial
//!    that fails it is a *false peak*;
//! 3. **rebase**: a trial that passed its screens while the incumbent moved
//!    is re-applied onto the new incumbent as a new trial (a conflict is
//!    `patch_failed`), which goes through all stages itself;
//! 4. **confirmation** (`noise.seeds` > 0): the trial is trained again with
//!    seeds 1..=N; it is kept only if its mean gain over the incumbent, seed by
//!    seed, exceeds `noise.band` × the incumbent's spread. Otherwise it is a
//!    false peak. The seed runs are the noise band of the incumbent it becomes,
//!    so every incumbent (the baseline first) has its band when it is kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::executor::ExecutorMsg;
use super::{interrupt_all, measure_trial, update_trial, CALL_TIMEOUT_MS};
use crate::config::Config;
use crate::domain::{
    format_float, Decision, Direction, FailureLabel, Incumbent, NoiseBand, ProcessReport, SeedRun,
    Spread, Trial, TrialId, TrialStatus,
};
use crate::gpu::{Gpus, Lease};
use crate::lineage::actor::LineageMsg;
use crate::lineage::NewTrial;
use crate::probe::{self, Stage as Spent};
use crate::process::{self, GroupGuard, GroupTask};
use crate::provenance::Provenance;
use crate::slurm::{JobKind, Outcome, Slurm};
use crate::workspace::{secret_env, trial_argv, trial_env, TrialDirs};

pub enum EvaluatorMsg {
    /// A train run ended: the trial's own (seed 0) or a seed re-run.
    Evaluate {
        id: TrialId,
        seed: u64,
        train: ProcessReport,
        /// The run's GPUs, handed on to its evals (`evals_on_gpus`).
        lease: Option<Lease>,
    },
    /// An eval command of a run ended (from its task).
    EvalFinished {
        id: TrialId,
        seed: u64,
        stage: Stage,
        eval: ProcessReport,
        /// The GPUs it ran on, for the run's next eval.
        lease: Option<Lease>,
    },
    /// Where to send seed runs and report outcomes (sent again after an
    /// executor restart: seed runs it lost are asked for again).
    SetExecutor(ActorRef<ExecutorMsg>),
}

/// Which eval command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Proxy,
    Full,
}

pub struct Evaluator;

pub struct EvaluatorArgs {
    pub config: Arc<Config>,
    pub lineage: ActorRef<LineageMsg>,
    pub provenance: Arc<Provenance>,
    /// The Slurm backend, when evals run as jobs (`executor.slurm.eval`).
    pub slurm: Option<Arc<Slurm>>,
    /// GPU slots, when evals take one too (`executor.evals_on_gpus`).
    pub gpus: Option<Arc<Gpus>>,
}

pub struct EvaluatorState {
    config: Arc<Config>,
    provenance: Arc<Provenance>,
    /// Set only when evals run as Slurm jobs.
    slurm: Option<Arc<Slurm>>,
    /// Set only when evals take a GPU slot.
    gpus: Option<Arc<Gpus>>,
    /// GPU leases handed on by a finished train run or eval, for the same
    /// run's next eval; what no eval takes is dropped (the GPUs freed) at
    /// the end of the message that brought it.
    leases: HashMap<(TrialId, u64), Lease>,
    lineage: ActorRef<LineageMsg>,
    executor: Option<ActorRef<ExecutorMsg>>,
    /// Messages for an executor that is not known yet.
    pending: Vec<ExecutorMsg>,
    incumbent: Option<Incumbent>,
    /// Evaluations in flight, by trial and seed; dropping one kills its process group.
    running: HashMap<(TrialId, u64), GroupTask>,
    /// The incumbent, being trained again for the seeds its band lacks.
    remeasuring: Option<TrialId>,
    /// Trials whose decision waits for that band.
    parked: Vec<TrialId>,
}

/// Why one eval run fails its gates.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub label: FailureLabel,
    pub detail: String,
    /// Kept when there was one (a gate miss, a size failure).
    pub score: Option<f64>,
}

/// What the evaluator concluded about a trial.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Failed(Failure),
    Scored {
        score: f64,
        decision: Decision,
        /// What it was compared with (the parent's or incumbent's score).
        reference: Option<f64>,
        /// A proxy win the full eval or the seed runs did not confirm.
        false_peak: bool,
        detail: String,
        noise: Option<NoiseBand>,
    },
    /// Re-applied onto the moved incumbent as trial `to`.
    Rebased {
        to: TrialId,
        score: Option<f64>,
        detail: String,
    },
}

impl Actor for Evaluator {
    type Msg = EvaluatorMsg;
    type State = EvaluatorState;
    type Arguments = EvaluatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: EvaluatorArgs,
    ) -> Result<EvaluatorState, ActorProcessingErr> {
        let incumbent = ractor::call_t!(args.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
        Ok(EvaluatorState {
            config: args.config,
            provenance: args.provenance,
            slurm: args.slurm.filter(|s| s.evals_on_slurm()),
            gpus: args.gpus,
            leases: HashMap::new(),
            lineage: args.lineage,
            executor: None,
            pending: Vec::new(),
            incumbent,
            running: HashMap::new(),
            remeasuring: None,
            parked: Vec::new(),
        })
    }

    /// Evaluations cut short by the previous process go on: a trial whose
    /// seed runs had started continues with them (finished ones are kept),
    /// any other is evaluated again from its proxy stage.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut EvaluatorState,
    ) -> Result<(), ActorProcessingErr> {
        let active = ractor::call_t!(state.lineage, LineageMsg::Active, CALL_TIMEOUT_MS)?;
        for t in active
            .into_iter()
            .filter(|t| t.status == TrialStatus::Evaluating)
        {
            info!(trial = %t.id, "resuming an evaluation cut short");
            if t.seed_runs.is_empty() {
                myself.cast(EvaluatorMsg::Evaluate {
                    id: t.id,
                    seed: 0,
                    train: t.train.unwrap_or_default(),
                    lease: None,
                })?;
            } else {
                confirm(state, t).await?;
            }
        }
        remeasure(state).await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut EvaluatorState,
    ) -> Result<(), ActorProcessingErr> {
        let mut ids: Vec<TrialId> = state.running.keys().map(|(id, _)| *id).collect();
        ids.sort();
        ids.dedup();
        state.running.clear();
        interrupt_all(&state.lineage, ids, "ratchet stopped during the evaluation").await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: EvaluatorMsg,
        state: &mut EvaluatorState,
    ) -> Result<(), ActorProcessingErr> {
        // The evaluator's own time on a run (benchmarks): handling its train
        // and eval results; and how long an eval's result waited for it.
        let timed = match &msg {
            EvaluatorMsg::Evaluate { id, seed, .. } => Some((*id, *seed, false)),
            EvaluatorMsg::EvalFinished { id, seed, .. } => Some((*id, *seed, true)),
            _ => None,
        };
        if let Some((id, seed, true)) = timed {
            probe::since_mark(id, seed, Spent::Waiting);
        }
        // A run's GPUs that came with the message wait for its next eval
        // in `leases`; what no eval took is freed once it is handled.
        let mut msg = msg;
        if let EvaluatorMsg::Evaluate {
            id, seed, lease, ..
        }
        | EvaluatorMsg::EvalFinished {
            id, seed, lease, ..
        } = &mut msg
        {
            if let Some(l) = lease.take() {
                state.leases.insert((*id, *seed), l);
            }
        }
        let t0 = Instant::now();
        let result = handle_msg(myself, msg, state).await;
        state.leases.clear();
        if let Some((id, _, _)) = timed {
            probe::since(id, Spent::Evaluate, t0);
        }
        result
    }
}

async fn handle_msg(
    myself: ActorRef<EvaluatorMsg>,
    msg: EvaluatorMsg,
    state: &mut EvaluatorState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        EvaluatorMsg::SetExecutor(e) => {
            let replaced = state.executor.replace(e).is_some();
            for m in std::mem::take(&mut state.pending) {
                tell_executor(state, m);
            }
            if replaced {
                // The old executor's queue and seed runs died with it.
                let active = ractor::call_t!(state.lineage, LineageMsg::Active, CALL_TIMEOUT_MS)?;
                for t in active
                    .into_iter()
                    .filter(|t| t.status == TrialStatus::Evaluating && !t.seed_runs.is_empty())
                {
                    confirm(state, t).await?;
                }
                remeasure(state).await?;
            }
        }
        EvaluatorMsg::Evaluate {
            id, seed: 0, train, ..
        } => {
            let report = train.clone();
            let trial = update_trial(
                &state.lineage,
                id,
                Box::new(move |t| {
                    t.status = TrialStatus::Evaluating;
                    t.train = Some(report.clone());
                }),
            )
            .await?;
            if !train.succeeded() {
                let verdict = Verdict::Failed(Failure {
                    label: train.failure_label(),
                    detail: format!("train: {}", train.describe()),
                    score: None,
                });
                return record(state, &trial, verdict, None).await;
            }
            start_eval(&myself, state, &trial, 0, Stage::Proxy);
        }
        EvaluatorMsg::Evaluate {
            id, seed, train, ..
        } => {
            let failed = (!train.succeeded()).then(|| {
                (
                    train.failure_label(),
                    format!("seed {seed} train: {}", train.describe()),
                )
            });
            let failure = failed.clone();
            let Some(trial) = update_run(state, id, seed, move |r| {
                r.train = Some(train.clone());
                if let Some((label, detail)) = &failure {
                    r.failure = Some(*label);
                    r.detail = Some(detail.clone());
                }
            })
            .await
            else {
                return Ok(());
            };
            if failed.is_some() {
                return seed_finished(state, trial).await;
            }
            start_eval(&myself, state, &trial, seed, Stage::Proxy);
        }
        EvaluatorMsg::EvalFinished {
            id,
            seed,
            stage,
            eval,
            ..
        } => {
            if let Some(done) = state.running.remove(&(id, seed)) {
                done.guard.disarm();
            }
            let checked = check(&state.config, &eval);
            if seed == 0 {
                return own_eval(&myself, state, id, stage, eval, checked).await;
            }
            let full = state.config.experiment.file.eval.full.is_some();
            let next = stage == Stage::Proxy && full && checked.is_ok();
            let Some(trial) = update_run(state, id, seed, move |r| {
                let (report, score) = match stage {
                    Stage::Proxy => (&mut r.proxy, &mut r.proxy_score),
                    Stage::Full => (&mut r.full, &mut r.full_score),
                };
                *report = Some(eval.clone());
                match &checked {
                    Ok(s) => *score = Some(*s),
                    Err(f) => {
                        r.failure = Some(f.label);
                        r.detail = Some(format!("seed {seed} {}", f.detail));
                    }
                }
            })
            .await
            else {
                return Ok(());
            };
            if next {
                start_eval(&myself, state, &trial, seed, Stage::Full);
            } else {
                seed_finished(state, trial).await?;
            }
        }
    }
    Ok(())
}

fn tell_executor(state: &mut EvaluatorState, msg: ExecutorMsg) {
    match &state.executor {
        Some(e) => {
            // Expected while the tree stops; after a crash the new executor
            // is told what it lost (`SetExecutor`).
            if let Err(e) = e.cast(msg) {
                tracing::debug!(error = %e, "the executor is gone");
            }
        }
        None => state.pending.push(msg),
    }
}

/// Records a change of one seed run. `None` when the trial is no longer
/// being evaluated (interrupted meanwhile): the result is dropped. The
/// incumbent's runs while it is re-measured are added as measurements.
async fn update_run(
    state: &EvaluatorState,
    id: TrialId,
    seed: u64,
    change: impl Fn(&mut SeedRun) + Send + Sync + 'static,
) -> Option<Trial> {
    let remeasure = state.remeasuring == Some(id);
    let change: crate::lineage::actor::Change = Box::new(move |t| {
        if !remeasure && t.status != TrialStatus::Evaluating {
            return;
        }
        if let Some(r) = t.seed_runs.iter_mut().find(|r| r.seed == seed) {
            change(r);
        }
    });
    let updated = if remeasure {
        measure_trial(&state.lineage, id, change).await
    } else {
        update_trial(&state.lineage, id, change).await
    };
    match updated {
        Ok(t) if remeasure || t.status == TrialStatus::Evaluating => Some(t),
        Ok(t) => {
            info!(trial = %id, seed, status = %t.status, "dropping a seed run's result");
            None
        }
        Err(e) => {
            warn!(trial = %id, seed, error = %e, "dropping a seed run's result");
            None
        }
    }
}

/// The seeds in 1..=`noise.seeds` a trial has no finished run of.
fn missing_seeds(config: &Config, trial: &Trial) -> Vec<u64> {
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
fn add_seed_runs(seeds: Vec<u64>) -> crate::lineage::actor::Change {
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

/// At start (and after an executor restart): an incumbent without runs for
/// every seed in 1..=`noise.seeds` (kept before the setting was made or
/// raised) is trained again with the missing seeds; decisions wait until
/// its band is in.
async fn remeasure(state: &mut EvaluatorState) -> Result<(), ActorProcessingErr> {
    let Some(inc) = state.incumbent.clone() else {
        return Ok(());
    };
    let Some(trial) = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, inc.trial)?
    else {
        return Ok(());
    };
    let missing = missing_seeds(&state.config, &trial);
    if missing.is_empty() {
        return Ok(());
    }
    let trial = measure_trial(&state.lineage, trial.id, add_seed_runs(missing.clone())).await?;
    warn!(
        trial = %trial.id,
        seeds = ?missing,
        "the incumbent has no noise band for noise.seeds: training it again with those seeds; decisions wait for it"
    );
    state.remeasuring = Some(trial.id);
    run_seeds(state, trial, missing);
    Ok(())
}

/// Asks the executor for seed runs of a trial (recorded in its `seed_runs`).
fn run_seeds(state: &mut EvaluatorState, trial: Trial, seeds: Vec<u64>) {
    tell_executor(
        state,
        ExecutorMsg::RunSeeds {
            trial: Box::new(trial),
            seeds,
        },
    );
}

/// The incumbent's seed runs are in: its band is stored, and the decisions
/// that waited are made.
async fn remeasured(state: &mut EvaluatorState, trial: Trial) -> Result<(), ActorProcessingErr> {
    let noise = noise_band(&state.config, &trial);
    let trial = measure_trial(&state.lineage, trial.id, Box::new(move |t| t.noise = noise)).await?;
    info!(trial = %trial.id, band = ?trial.noise, "the incumbent's noise band is measured");
    if let Some(inc) = state.incumbent.as_mut().filter(|i| i.trial == trial.id) {
        inc.noise = trial.noise;
    }
    state.remeasuring = None;
    for id in std::mem::take(&mut state.parked) {
        let t = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)?;
        if let Some(t) = t.filter(|t| t.status == TrialStatus::Evaluating) {
            decide(state, t).await?;
        }
    }
    Ok(())
}

/// The spread of a trial's scores over its runs (failed runs left out).
fn noise_band(config: &Config, trial: &Trial) -> Option<NoiseBand> {
    let full = config.experiment.file.eval.full.is_some();
    let values: Vec<f64> = scores_by_seed(trial, full, true).into_values().collect();
    let proxies: Vec<f64> = scores_by_seed(trial, full, false).into_values().collect();
    match (Spread::of(&proxies), Spread::of(&values)) {
        (Some(proxy), Some(confirmed)) => Some(NoiseBand { proxy, confirmed }),
        _ => None,
    }
}

/// The trial's own run (seed 0) passed an eval stage or failed it.
async fn own_eval(
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
    if let Some(parent) = reference(state, &trial).await? {
        let (theirs, spread) = match stage {
            Stage::Proxy => (
                parent.proxy_score.or(parent.score),
                parent.noise.map(|n| n.proxy.sd),
            ),
            Stage::Full => (
                parent.full_score.or(parent.score),
                parent.noise.map(|n| n.confirmed.sd),
            ),
        };
        if let Some(theirs) = theirs {
            let exp = &state.config.experiment.file;
            let band = exp.noise.band * spread.unwrap_or(0.0);
            let gain = exp.direction.gain(score, theirs);
            let decision = classify(gain, band);
            if decision != Decision::Improved {
                let name = match stage {
                    Stage::Proxy => "proxy",
                    Stage::Full => "full",
                };
                let mut detail = format!(
                    "{name} {} vs {} of #{} (gain {}, band {})",
                    format_float(score),
                    format_float(theirs),
                    parent.id,
                    format_float(gain),
                    format_float(band)
                );
                let false_peak = stage == Stage::Full;
                if false_peak {
                    detail = format!(
                        "false peak: won on proxy ({}), not on {detail}",
                        trial.proxy_score.map_or("?".into(), format_float)
                    );
                }
                let verdict = Verdict::Scored {
                    score,
                    decision,
                    reference: Some(theirs),
                    false_peak,
                    detail,
                    noise: None,
                };
                return record(state, &trial, verdict, None).await;
            }
        }
    }
    if stage == Stage::Proxy && state.config.experiment.file.eval.full.is_some() {
        start_eval(myself, state, &trial, 0, Stage::Full);
        return Ok(());
    }
    confirm(state, trial).await
}

/// The trial a candidate is screened against: its parent, when lineage has it scored.
async fn reference(
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
fn stale(state: &EvaluatorState, trial: &Trial) -> bool {
    state
        .incumbent
        .as_ref()
        .is_some_and(|i| trial.parent != Some(i.trial))
}

/// The trial passed its screens: rebase it if the incumbent moved, else run
/// (or, after a restart, finish) its seed runs, else decide.
async fn confirm(state: &mut EvaluatorState, trial: Trial) -> Result<(), ActorProcessingErr> {
    if stale(state, &trial) {
        return rebase(state, &trial).await;
    }
    let missing = missing_seeds(&state.config, &trial);
    if missing.is_empty() {
        return decide(state, trial).await;
    }
    let trial = update_trial(&state.lineage, trial.id, add_seed_runs(missing.clone())).await?;
    info!(trial = %trial.id, seeds = ?missing, "confirming with seed re-runs");
    run_seeds(state, trial, missing);
    Ok(())
}

async fn seed_finished(state: &mut EvaluatorState, trial: Trial) -> Result<(), ActorProcessingErr> {
    let full = state.config.experiment.file.eval.full.is_some();
    if !trial.seed_runs.iter().all(|r| r.finished(full)) {
        return Ok(());
    }
    if state.remeasuring == Some(trial.id) {
        return remeasured(state, trial).await;
    }
    decide(state, trial).await
}

/// Scores by seed (seed 0: the trial's own run): the deciding eval's when
/// `deciding`, the proxy's otherwise.
pub fn scores_by_seed(trial: &Trial, full: bool, deciding: bool) -> BTreeMap<u64, f64> {
    let pick = |proxy: Option<f64>, f: Option<f64>| if deciding && full { f } else { proxy };
    let mut out = BTreeMap::new();
    if let Some(s) = pick(trial.proxy_score, trial.full_score) {
        out.insert(0, s);
    }
    for r in &trial.seed_runs {
        if let Some(s) = pick(r.proxy_score, r.full_score) {
            out.insert(r.seed, s);
        }
    }
    out
}

/// The mean gain of a candidate over a reference, seed by seed where the
/// reference has every seed the candidate has (the same seed gives the same
/// initialisation and data order, so that part of the noise cancels);
/// otherwise the candidate's mean against the reference's score.
pub fn paired_gain(
    direction: Direction,
    candidate: &BTreeMap<u64, f64>,
    reference: &BTreeMap<u64, f64>,
    reference_score: f64,
) -> f64 {
    if !candidate.is_empty() && candidate.keys().all(|s| reference.contains_key(s)) {
        let sum: f64 = candidate
            .iter()
            .map(|(s, c)| direction.gain(*c, reference[s]))
            .sum();
        return sum / candidate.len() as f64;
    }
    let values: Vec<f64> = candidate.values().copied().collect();
    let mean = Spread::of(&values).map_or(f64::NAN, |s| s.mean);
    direction.gain(mean, reference_score)
}

/// A gain against a band: more than the band is an improvement, less than
/// minus the band a regression, anything between is noise.
pub fn classify(gain: f64, band: f64) -> Decision {
    if gain > band {
        Decision::Improved
    } else if gain >= -band {
        Decision::WithinNoise
    } else {
        Decision::Regressed
    }
}

/// Every run of the trial is in: keep it or not.
async fn decide(state: &mut EvaluatorState, trial: Trial) -> Result<(), ActorProcessingErr> {
    if state.remeasuring.is_some() {
        info!(trial = %trial.id, "the decision waits for the incumbent's noise band");
        state.parked.push(trial.id);
        return Ok(());
    }
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
    // Judged against the incumbent; a trial whose incumbent moved meanwhile
    // against its parent (paired by seed), and rebased only if it wins there.
    let stale = stale(state, &trial);
    let against = if stale {
        match reference(state, &trial).await? {
            Some(parent) => Some(parent),
            None => return rebase(state, &trial).await,
        }
    } else if let Some(inc) = &state.incumbent {
        let t = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, inc.trial)?;
        Some(t.ok_or_else(|| format!("incumbent trial {} vanished from lineage", inc.trial))?)
    } else {
        None
    };
    let verdict = match against {
        None => Verdict::Scored {
            score,
            decision: Decision::Improved,
            reference: None,
            false_peak: false,
            detail: format!("first incumbent, measured over {runs} run(s)"),
            noise,
        },
        Some(reference) => {
            let theirs = scores_by_seed(&reference, full, true);
            let their_score = reference.score.unwrap_or(f64::NAN);
            let gain = paired_gain(exp.direction, &mine, &theirs, their_score);
            let band = exp.noise.band * reference.noise.map_or(0.0, |n| n.confirmed.sd);
            let decision = classify(gain, band);
            if decision == Decision::Improved && stale {
                return rebase(state, &trial).await;
            }
            let what = format!(
                "mean gain {} over #{} across {runs} run(s), band {}",
                format_float(gain),
                reference.id,
                format_float(band)
            );
            let false_peak = decision != Decision::Improved;
            let detail = if false_peak {
                format!("false peak: passed its screens, not the confirmation: {what}")
            } else {
                what
            };
            Verdict::Scored {
                score,
                decision,
                reference: Some(their_score),
                false_peak,
                detail,
                noise,
            }
        }
    };
    record(state, &trial, verdict, None).await
}

/// Re-applies a trial that beat its parent onto the incumbent that replaced
/// the parent, as a new trial that is measured and judged on its own. A
/// conflict (a file or recipe key both changed) is `patch_failed`.
async fn rebase(state: &mut EvaluatorState, trial: &Trial) -> Result<(), ActorProcessingErr> {
    let Some(inc) = state.incumbent.clone() else {
        return Err(format!("trial {} rebased without an incumbent", trial.id).into());
    };
    let score = trial.full_score.or(trial.proxy_score);
    let oid = |c: Option<&str>| c.and_then(|c| git2::Oid::from_str(c).ok());
    let (Some(commit), Some(onto)) = (oid(trial.commit.as_deref()), oid(inc.commit.as_deref()))
    else {
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
    let merged = tokio::task::spawn_blocking(move || provenance.rebase_tree(commit, onto, &recipe))
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
    let config = exp.measured(&recipe_text);
    let changes = config
        .iter()
        .filter(|(k, v)| inc.config.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let new = NewTrial {
        specialist: trial.specialist.clone(),
        surface: trial.surface.clone(),
        parent: Some(inc.trial),
        hypothesis: trial.hypothesis.clone(),
        changes,
        config,
        edits: trial.edits.clone(),
        reply: None,
        rejected: None,
        rebased_from: Some(trial.id),
    };
    let rebased = ractor::call_t!(state.lineage, LineageMsg::Propose, CALL_TIMEOUT_MS, new)??;
    if rebased.status == TrialStatus::Proposed {
        let message = format!(
            "ratchet trial {}\n\nspecialist: {}\nhypothesis: {}\nrebased: trial {} re-applied onto trial {}\n",
            rebased.id, rebased.specialist, rebased.hypothesis, trial.id, inc.trial
        );
        let (provenance, id) = (state.provenance.clone(), rebased.id);
        let (oid, diff) = tokio::task::spawn_blocking(move || {
            provenance.commit_rebased(id, tree, onto, &message)
        })
        .await??;
        let committed = update_trial(
            &state.lineage,
            rebased.id,
            Box::new(move |t| {
                t.commit = Some(oid.to_string());
                t.diff = Some(diff.clone());
            }),
        )
        .await?;
        tell_executor(state, ExecutorMsg::Enqueue(Box::new(committed)));
    }
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

fn start_eval(
    myself: &ActorRef<EvaluatorMsg>,
    state: &mut EvaluatorState,
    trial: &Trial,
    seed: u64,
    stage: Stage,
) {
    let exp = &state.config.experiment.file;
    let (argv, name) = match (stage, &exp.eval.full) {
        (Stage::Full, Some(full)) => (full, "full"),
        _ => (&exp.eval.proxy, "eval"),
    };
    let dirs = TrialDirs::run(&state.config.lineage_dir, trial.id, seed);
    let spec = process::Spec {
        argv: trial_argv(argv, &state.config, &dirs),
        cwd: dirs.work.clone(),
        env: trial_env(&state.config, &dirs, trial.id),
        env_remove: secret_env(&state.config),
        memory_limit: state.config.experiment.memory_limit(),
        timeout: Duration::from_secs(state.config.experiment.eval_timeout_secs()),
        stdout: dirs.root.join(format!("{name}.stdout")),
        stderr: dirs.root.join(format!("{name}.stderr")),
    };
    let guard = GroupGuard::default();
    let task_guard = guard.clone();
    let me = myself.clone();
    let id = trial.id;
    // Train ran in the same directory: put the protected files (the scoring
    // code, eval data) back exactly as committed before eval sees them.
    let mut protected = exp.protected.clone();
    protected.push("experiment.toml".into());
    let restore = trial
        .commit
        .as_deref()
        .and_then(|c| git2::Oid::from_str(c).ok())
        .map(|commit| {
            (
                state.provenance.clone(),
                commit,
                dirs.work.clone(),
                protected,
            )
        });
    let slurm = state.slurm.clone();
    let gpus = state.gpus.clone();
    let handed = state.leases.remove(&(trial.id, seed));
    let kind = match stage {
        Stage::Proxy => JobKind::Eval,
        Stage::Full => JobKind::Full,
    };
    let attempts = state.config.max_attempts;
    let task = tokio::spawn(async move {
        let t0 = Instant::now();
        let finished = |eval, lease| EvaluatorMsg::EvalFinished {
            id,
            seed,
            stage,
            eval,
            lease,
        };
        if let Some((provenance, commit, work, paths)) = restore {
            let task = move || provenance.restore(commit, &work, &paths);
            let failed = match tokio::task::spawn_blocking(task).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                let eval = ProcessReport {
                    spawn_error: Some(format!("cannot restore protected files: {e}")),
                    ..Default::default()
                };
                let _ = me.cast(finished(eval, handed));
                return;
            }
        }
        if let Some(slurm) = slurm {
            // A job the cluster lost is submitted again, up to max_attempts.
            let mut attempt = 1;
            let eval = loop {
                let key = (id, seed, kind);
                match slurm.run_job(&spec, &task_guard, key, |_| async {}).await {
                    Outcome::Ran(report) => break *report,
                    Outcome::Lost(why) if attempt < attempts => {
                        warn!(trial = %id, seed, "{why}; submitting the eval again");
                        attempt += 1;
                    }
                    Outcome::Lost(why) => {
                        break ProcessReport {
                            spawn_error: Some(format!(
                                "{why}, at every one of {attempts} attempts"
                            )),
                            ..Default::default()
                        }
                    }
                }
            };
            let _ = me.cast(finished(eval, handed));
            return;
        }
        // The GPUs its train run (or its previous eval) handed on, or the
        // first free ones; held until the task ends or is aborted, then
        // handed back with the result.
        let mut spec = spec;
        let lease = match (handed, &gpus) {
            (Some(mut l), _) => {
                l.to_eval();
                Some(l)
            }
            (None, Some(g)) => g.lease_eval(id, seed).await,
            (None, None) => None,
        };
        let view = lease.as_ref().map(Lease::view);
        if let Some(v) = &view {
            spec.env.push(("CUDA_VISIBLE_DEVICES".into(), v.visible()));
        }
        let eval = match process::start(&spec, &task_guard).await {
            Ok(Ok(started)) => {
                probe::since(id, Spent::Evaluate, t0);
                let spawned = Instant::now();
                let finished = process::finish(started, &spec, &task_guard).await;
                probe::since(id, Spent::Child, spawned);
                finished
            }
            Ok(Err(report)) => Ok(report),
            Err(e) => Err(e),
        };
        let mut eval = eval.unwrap_or_else(|e| ProcessReport {
            spawn_error: Some(format!("cannot capture eval output: {e}")),
            ..Default::default()
        });
        if let Some(v) = &view {
            // An eval on a GPU that vanished fails as any failed eval does.
            let _ = v.finish(&mut eval).await;
        }
        probe::mark(id, seed);
        let _ = me.cast(finished(eval, lease));
    });
    state.running.insert((id, seed), GroupTask { guard, task });
}

/// The gates on one eval run, in order: the eval must succeed, print the
/// metric, print a finite metric, and pass the size and quality gates.
pub fn check(config: &Config, eval: &ProcessReport) -> Result<f64, Failure> {
    let exp = &config.experiment.file;
    let fail = |label, detail: String| Failure {
        label,
        detail,
        score: None,
    };
    if !eval.succeeded() {
        return Err(fail(
            eval.failure_label(),
            format!("eval: {}", eval.describe()),
        ));
    }
    if eval.non_finite.contains(&exp.metric) {
        return Err(fail(
            FailureLabel::Diverged,
            format!("eval printed a non-finite {}", exp.metric),
        ));
    }
    let Some(&score) = eval.metrics.get(&exp.metric) else {
        return Err(fail(
            FailureLabel::MetricMissing,
            format!("eval printed no `{}=` line", exp.metric),
        ));
    };
    if let (Some(limit), Some(&size)) = (
        exp.gates.max_artifact_bytes,
        eval.metrics.get("artifact_bytes"),
    ) {
        if size > limit as f64 {
            return Err(Failure {
                label: FailureLabel::SizeFailure,
                detail: format!("artifact_bytes={size} over the gate {limit}"),
                score: Some(score),
            });
        }
    }
    if let Some(min) = exp.gates.min_quality {
        if exp.direction.better(min, score) {
            return Err(Failure {
                label: FailureLabel::GateMiss,
                detail: format!("{}={score} misses the quality gate {min}", exp.metric),
                score: Some(score),
            });
        }
    }
    Ok(score)
}

/// Writes the outcome to lineage (the incumbent moves in the same write when
/// kept), then tells the executor: the trial settled, and whether the
/// incumbent moved.
async fn record(
    state: &mut EvaluatorState,
    trial: &Trial,
    verdict: Verdict,
    eval: Option<(Stage, ProcessReport)>,
) -> Result<(), ActorProcessingErr> {
    let v = verdict.clone();
    let updated = update_trial(
        &state.lineage,
        trial.id,
        Box::new(move |t| {
            match &eval {
                Some((Stage::Proxy, e)) => t.eval = Some(e.clone()),
                Some((Stage::Full, e)) => t.full_eval = Some(e.clone()),
                None => {}
            }
            match &v {
                Verdict::Failed(f) => {
                    t.status = TrialStatus::Failed;
                    t.label = Some(f.label);
                    t.detail = Some(f.detail.clone());
                    t.score = f.score;
                }
                Verdict::Scored {
                    score,
                    decision,
                    reference,
                    false_peak,
                    detail,
                    noise,
                } => {
                    t.status = if *decision == Decision::Improved {
                        TrialStatus::Kept
                    } else {
                        TrialStatus::Discarded
                    };
                    t.score = Some(*score);
                    t.decision = Some(*decision);
                    t.parent_score = *reference;
                    t.false_peak = *false_peak;
                    t.detail = Some(detail.clone());
                    if noise.is_some() {
                        t.noise = *noise;
                    }
                }
                Verdict::Rebased { to, score, detail } => {
                    t.status = TrialStatus::Discarded;
                    t.decision = Some(Decision::Rebased);
                    t.rebased_as = Some(*to);
                    t.score = *score;
                    t.detail = Some(detail.clone());
                }
            }
        }),
    )
    .await?;
    match &verdict {
        Verdict::Scored {
            score,
            decision: Decision::Improved,
            noise,
            ..
        } => {
            info!(trial = %trial.id, score, "new incumbent");
            state.incumbent = Some(Incumbent {
                trial: trial.id,
                score: *score,
                config: updated.config.clone(),
                since_ms: crate::domain::now_ms(),
                commit: updated.commit.clone(),
                noise: *noise,
            });
            // Lineage holds the keep; the ref follows (and is re-pointed from
            // lineage at the next start if this write is lost).
            if let Some(commit) = updated
                .commit
                .as_deref()
                .and_then(|c| git2::Oid::from_str(c).ok())
            {
                let provenance = state.provenance.clone();
                let moved =
                    tokio::task::spawn_blocking(move || provenance.set_incumbent(commit)).await;
                let error = match moved {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = error {
                    warn!(trial = %trial.id, error = %e, "could not move ratchet/incumbent");
                }
            }
            tell_executor(state, ExecutorMsg::IncumbentChanged);
        }
        Verdict::Failed(f) => info!(trial = %trial.id, label = %f.label, "trial failed"),
        Verdict::Scored { .. } | Verdict::Rebased { .. } => {}
    }
    tell_executor(state, ExecutorMsg::Settled(trial.id));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config around a minimal experiment with both gates.
    fn config(dir: &std::path::Path) -> Config {
        std::fs::write(dir.join("recipe.toml"), "[a]\nx = 1.0\n").unwrap();
        std::fs::write(
            dir.join("experiment.toml"),
            "name = \"t\"\nrecipe = \"recipe.toml\"\nmetric = \"loss\"\ndirection = \"minimize\"\n\
             budget_secs = 1\ntimeout_secs = 2\ntrain = [\"true\"]\n[eval]\nproxy = [\"true\"]\n\
             [gates]\nmax_artifact_bytes = 100\nmin_quality = 5.0\n\
             [[surface]]\nname = \"a\"\n[surface.params]\n\"a.x\" = { type = \"float\", min = 0.0, max = 2.0 }\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let experiment =
            crate::config::load_experiment(dir, &mut errors).expect("valid experiment");
        Config {
            file: dir.join("specialists.toml"),
            lineage_dir: dir.join("lineage"),
            slots: 1,
            seed: 0,
            socket: dir.join("lineage/ratchet.sock"),
            drain_timeout_secs: 1,
            max_attempts: 3,
            confirm_first: true,
            slurm: None,
            gpus: None,
            gpu_slots: false,
            specialists: Vec::new(),
            experiment,
        }
    }

    fn eval(lines: &[(&str, f64)]) -> ProcessReport {
        ProcessReport {
            exit_code: Some(0),
            metrics: lines.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    fn label(r: Result<f64, Failure>) -> Option<FailureLabel> {
        r.err().map(|f| f.label)
    }

    #[test]
    fn every_gate_has_its_label_and_a_gain_must_exceed_the_band() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let judge = |e: &ProcessReport| check(&c, e);
        use FailureLabel::*;
        let crashed = ProcessReport {
            exit_code: Some(1),
            ..Default::default()
        };
        assert_eq!(label(judge(&crashed)), Some(Crash));
        let timed_out = ProcessReport {
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(label(judge(&timed_out)), Some(BudgetOverrun));
        let hog = ProcessReport {
            memory_exceeded: true,
            ..Default::default()
        };
        assert_eq!(label(judge(&hog)), Some(OutOfMemory));
        let mut nan = eval(&[]);
        nan.non_finite.push("loss".into());
        assert_eq!(label(judge(&nan)), Some(Diverged));
        assert_eq!(label(judge(&eval(&[("acc", 1.0)]))), Some(MetricMissing));
        let big = judge(&eval(&[("loss", 1.0), ("artifact_bytes", 101.0)])).unwrap_err();
        assert_eq!(
            (big.label, big.score),
            (SizeFailure, Some(1.0)),
            "the score is kept"
        );
        assert_eq!(
            judge(&eval(&[("loss", 1.0), ("artifact_bytes", 100.0)])),
            Ok(1.0)
        );
        assert_eq!(label(judge(&eval(&[("loss", 5.5)]))), Some(GateMiss));

        assert_eq!(classify(0.5, 0.0), Decision::Improved);
        assert_eq!(classify(0.0, 0.0), Decision::WithinNoise);
        assert_eq!(classify(-0.5, 0.0), Decision::Regressed);
        assert_eq!(classify(0.09, 0.1), Decision::WithinNoise);
        assert_eq!(classify(-0.09, 0.1), Decision::WithinNoise);
        assert_eq!(classify(0.11, 0.1), Decision::Improved);
        assert_eq!(classify(-0.11, 0.1), Decision::Regressed);
    }

    #[test]
    fn gains_are_paired_by_seed_when_the_reference_has_every_seed() {
        let by = |v: &[(u64, f64)]| v.iter().copied().collect::<BTreeMap<u64, f64>>();
        // Seed 1 is a bad seed for both: paired, the candidate gains 0.1 everywhere.
        let reference = by(&[(0, 1.0), (1, 2.0), (2, 1.0)]);
        let candidate = by(&[(0, 0.9), (1, 1.9), (2, 0.9)]);
        let g = paired_gain(Direction::Minimize, &candidate, &reference, 4.0 / 3.0);
        assert!((g - 0.1).abs() < 1e-12, "{g}");
        // A reference without those seeds: the candidate's mean against its score.
        let g = paired_gain(Direction::Minimize, &candidate, &by(&[(0, 1.0)]), 1.5);
        assert!((g - (1.5 - 3.7 / 3.0)).abs() < 1e-12, "{g}");
        let g = paired_gain(Direction::Maximize, &by(&[(0, 2.0)]), &by(&[(0, 1.5)]), 0.0);
        assert!((g - 0.5).abs() < 1e-12, "{g}");
    }
}
