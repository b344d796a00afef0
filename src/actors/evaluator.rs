//! The evaluator: owns every score and every keep/discard decision. It runs
//! the experiment's eval commands itself in the trial's workspace (numbers the
//! train command printed are never the score), applies the failure labels and
//! gates, and decides in stages, recording each before acting on it:
//!
//! 1. **proxy** (every trial): the gates, then a screen against the trial's
//!    parent (the incumbent it was proposed against): a look of
//!    the keep rule (`judge.rs`) on proxy scores, which can only stop a
//!    trial that is not on course (`within_noise` or `regressed`);
//! 2. **full** (experiments with `eval.full`, only trials that passed the
//!    proxy screen): gates, then the first look on the deciding score:
//!    keep, stop (a *false peak*), or one more run;
//! 3. **rebase**: a trial kept or still ahead while the incumbent moved is
//!    re-applied onto the new incumbent as a new trial (a conflict is
//!    `patch_failed`), which goes through all stages itself; a scout
//!    (every surface at once, `daemon.scouts`) is judged against the
//!    incumbent only;
//! 4. **more runs** (`noise.seeds` > 0): an ambiguous trial is trained again
//!    with the next seed and looked at again, up to N seeds. A keep made
//!    before its N-th seed trains the new incumbent with the seeds it lacks,
//!    so every incumbent (the baseline first) has all of them to pair with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::messages::{EvaluatorMsg, ExecutorMsg, Stage, SCOUT};
use super::{advance_trial, interrupt_all, measure_trial, update_trial, CALL_TIMEOUT_MS};
use crate::config::Config;
use crate::domain::{
    format_float, Call, CommitId, Decision, Evidence, FailureLabel, Incumbent, NoiseBand,
    ProcessReport, SeedRun, Spread, Trial, TrialId, TrialStatus,
};
use crate::gpu::{Gpus, Lease};
use crate::judge::{self, Pool};
use crate::lineage::actor::LineageMsg;
use crate::lineage::NewTrial;
use crate::probe::{self, Stage as Spent};
use crate::process::{GroupGuard, GroupTask};
use crate::provenance::{MergedTree, Provenance};
use crate::runner::launch::eval_spec;
use crate::runner::runs::{restore_protected, run_eval};
use crate::runner::Launcher;
use crate::slurm::{JobKind, Slurm};
use crate::workspace::TrialDirs;

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
    /// Trials whose decision waits for its seed runs.
    parked: Vec<TrialId>,
    /// The spreads the keep rule pools (every finished recipe with several runs).
    pools: Pools,
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
        /// What the keep rule's look rested on.
        evidence: Option<Evidence>,
    },
    /// Stopped while it trained, clearly behind the incumbent's curve.
    Pruned {
        detail: String,
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
        let store = ractor::call_t!(args.lineage, LineageMsg::Reader, CALL_TIMEOUT_MS)?;
        let full = args.config.experiment.file.eval.full.is_some();
        let skip = incumbent.as_ref().map(|i| i.trial);
        let mut pools = Pools::new(&args.config);
        let pools = tokio::task::spawn_blocking(move || {
            // Kept trials, the parents a trial's runs pair with (a parent
            // is an incumbent of its time).
            let mut kept: HashMap<TrialId, Trial> = HashMap::new();
            for t in store.iter().flatten() {
                if t.status.is_terminal() && Some(t.id) != skip {
                    let parent = t.parent.and_then(|p| kept.get(&p));
                    pools.add(&t, parent, full);
                }
                if t.status == TrialStatus::Kept {
                    kept.insert(t.id, t);
                }
            }
            pools
        })
        .await?;
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
            pools,
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
        announce_bars(state).await?;
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
                announce_bars(state).await?;
                remeasure(state).await?;
            }
        }
        EvaluatorMsg::Evaluate {
            id, seed: 0, train, ..
        } => {
            let report = train.clone();
            let trial = advance_trial(
                &state.lineage,
                id,
                TrialStatus::Evaluating,
                Box::new(move |t| {
                    t.train = Some(report.clone());
                }),
            )
            .await?;
            if let Some(p) = &train.pruned {
                let detail = format!("pruned: {}", p.describe());
                return record(state, &trial, Verdict::Pruned { detail }, None).await;
            }
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
    let change: crate::lineage::actor::Set = Box::new(move |t| {
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
fn add_seed_runs(seeds: Vec<u64>) -> crate::lineage::actor::Set {
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
async fn remeasure(state: &mut EvaluatorState) -> Result<(), ActorProcessingErr> {
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
fn run_seeds(state: &mut EvaluatorState, trial: Trial, seeds: Vec<u64>) {
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
async fn remeasured(state: &mut EvaluatorState, trial: Trial) -> Result<(), ActorProcessingErr> {
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
async fn resume_parked(state: &mut EvaluatorState) -> Result<(), ActorProcessingErr> {
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
fn compared_with(exp: &crate::config::ExperimentFile, score: f64, e: &Evidence) -> f64 {
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

/// A trial with seed runs (after a restart, or the baseline): runs that
/// were asked for and did not finish are asked for again; the baseline gets
/// every seed at once (the first spread); then the next look.
async fn confirm(state: &mut EvaluatorState, trial: Trial) -> Result<(), ActorProcessingErr> {
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

/// `scores_by_seed` as the keep rule compares them (`noise.scale`).
fn judged_by_seed(
    scale: crate::config::Scale,
    trial: &Trial,
    full: bool,
    deciding: bool,
) -> BTreeMap<u64, f64> {
    scores_by_seed(trial, full, deciding)
        .into_iter()
        .filter_map(|(seed, s)| Some((seed, scale.judged(s)?)))
        .collect()
}

/// One look of the keep rule at `trial`'s runs against `reference`'s, on
/// the deciding eval's scores or the proxy's, as `noise.scale` has them.
fn look_against(
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
async fn pool(state: &mut EvaluatorState, trial: &Trial) -> Result<(), ActorProcessingErr> {
    let full = state.config.experiment.file.eval.full.is_some();
    let parent = match trial.parent.filter(|_| !trial.seed_runs.is_empty()) {
        Some(p) => ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, p)?,
        None => None,
    };
    state.pools.add(trial, parent.as_ref(), full);
    Ok(())
}

/// The spreads the keep rule pools: every recipe measured with several
/// seeds, except the current incumbent (whose runs are still being added;
/// they join at each decision, and for good when it is replaced); and, with
/// `[prune]`, the spread of their progress curves at each look.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    pub proxy: Pool,
    pub deciding: Pool,
    /// By look of `[prune]` (empty without it).
    pub curve: Vec<Pool>,
    prune: Option<judge::PruneRule>,
    scale: crate::config::Scale,
}

impl Pools {
    pub fn new(config: &Config) -> Pools {
        let exp = &config.experiment.file;
        let prune = exp.prune.as_ref().map(|p| p.rule(exp.direction));
        Pools {
            curve: vec![Pool::default(); prune.as_ref().map_or(0, |p| p.looks.len())],
            prune,
            scale: exp.noise.scale,
            ..Default::default()
        }
    }

    /// Adds a recipe's runs, and how they moved with its parent's same-seed runs.
    pub fn add(&mut self, trial: &Trial, parent: Option<&Trial>, full: bool) {
        for (pool, deciding) in [(&mut self.proxy, false), (&mut self.deciding, true)] {
            let on = |t| judged_by_seed(self.scale, t, full, deciding);
            let mine = on(trial);
            pool.add(&mine.values().copied().collect::<Vec<_>>());
            if let Some(p) = parent {
                pool.pairing.add(&mine, &on(p));
            }
        }
        if let Some(rule) = &self.prune {
            let curves = curves(trial, &rule.metric);
            for (k, vals) in judge::look_values(&curves, &rule.looks).iter().enumerate() {
                self.curve[k].add(vals);
            }
        }
    }

    /// The pool for a decision against `reference`, with the incumbent's
    /// runs when the reference is the incumbent.
    fn with(
        &self,
        reference: &Trial,
        full: bool,
        deciding: bool,
        incumbent: Option<&Incumbent>,
    ) -> Pool {
        let mut pool = if deciding { self.deciding } else { self.proxy };
        if incumbent.is_some_and(|i| i.trial == reference.id) {
            pool.add(&self.judged(reference, full, deciding));
        }
        pool
    }

    fn judged(&self, trial: &Trial, full: bool, deciding: bool) -> Vec<f64> {
        judged_by_seed(self.scale, trial, full, deciding)
            .into_values()
            .collect()
    }

    /// What the incumbent's runs hold a running trial to (`[prune]`), with
    /// its mean train time (the slot time a stopped run saves is reckoned
    /// from it). `None` without `[prune]` or without curves and a spread.
    pub fn bars(&self, incumbent: &Trial) -> Option<(judge::Bars, u64)> {
        let rule = self.prune.as_ref()?;
        let curves = curves(incumbent, &rule.metric);
        let bars = judge::Bars::new(rule, incumbent.id, &curves, &self.curve)?;
        let times: Vec<u64> = std::iter::once(incumbent.train.as_ref())
            .chain(incumbent.seed_runs.iter().map(|r| r.train.as_ref()))
            .flatten()
            .filter(|t| t.pruned.is_none() && t.succeeded())
            .map(|t| t.duration_ms)
            .collect();
        let mean = times.iter().sum::<u64>() / times.len().max(1) as u64;
        Some((bars, mean))
    }
}

/// The progress curves `metric` of a trial's finished runs (seed 0 and its
/// seed runs; a failed or stopped run has none that counts).
fn curves<'a>(trial: &'a Trial, metric: &str) -> Vec<&'a [(f64, f64)]> {
    // A stopped run's report carries `pruned`, filtered below.
    let own = trial
        .label
        .is_none()
        .then_some(trial.train.as_ref())
        .flatten();
    own.into_iter()
        .chain(
            trial
                .seed_runs
                .iter()
                .filter(|r| r.failure.is_none())
                .filter_map(|r| r.train.as_ref()),
        )
        .filter(|t| t.succeeded() && t.pruned.is_none())
        .filter_map(|t| t.progress.get(metric))
        .filter(|c| !c.is_empty())
        .map(|c| c.as_slice())
        .collect()
}

/// A look of the keep rule at the trial's runs so far (the deciding eval's
/// scores): keep it, stop it, or ask for one more seed run. The baseline,
/// with every seed in, becomes the first incumbent.
async fn decide(state: &mut EvaluatorState, trial: Trial) -> Result<(), ActorProcessingErr> {
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

/// A trial kept over an incumbent that replaced its parent: its keep is a
/// merge commit on the incumbent's holding exactly the trial's measured
/// files (`keep_commit`), so every keep still descends from the one before.
async fn keep_over(
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
async fn rebase(state: &mut EvaluatorState, trial: &Trial) -> Result<(), ActorProcessingErr> {
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
struct Merged {
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
async fn propose_merged(
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
async fn combine(
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

fn start_eval(
    myself: &ActorRef<EvaluatorMsg>,
    state: &mut EvaluatorState,
    trial: &Trial,
    seed: u64,
    stage: Stage,
) {
    let kind = match stage {
        Stage::Proxy => JobKind::Eval,
        Stage::Full => JobKind::Full,
    };
    let (id, config) = (trial.id, state.config.clone());
    let dirs = TrialDirs::run(&config.lineage_dir, id, seed);
    let spec = eval_spec(&config, &dirs, id, kind);
    let guard = GroupGuard::default();
    let task_guard = guard.clone();
    let me = myself.clone();
    let restore = trial.commit.clone().map(|c| (state.provenance.clone(), c));
    let (lineage, slurm, gpus) = (
        state.lineage.clone(),
        state.slurm.clone(),
        state.gpus.clone(),
    );
    let handed = state.leases.remove(&(id, seed));
    let task = tokio::spawn(async move {
        let t0 = Instant::now();
        let finished = |eval, lease| EvaluatorMsg::EvalFinished {
            id,
            seed,
            stage,
            eval,
            lease,
        };
        if let Some((provenance, commit)) = restore {
            let work = dirs.work.clone();
            if let Err(e) = restore_protected(provenance, &config, commit, work).await {
                let eval = ProcessReport {
                    spawn_error: Some(format!("cannot restore protected files: {e}")),
                    ..Default::default()
                };
                let _ = me.cast(finished(eval, handed));
                return;
            }
        }
        // Locally: the GPUs its train run (or its previous eval) handed on,
        // or the first free ones; held until the task ends or is aborted,
        // then handed back with the result.
        let lease = match (handed, &gpus) {
            (handed, _) if slurm.is_some() => handed,
            (Some(mut l), _) => {
                l.to_eval();
                Some(l)
            }
            (None, Some(g)) => g.lease_eval(id, seed).await,
            (None, None) => None,
        };
        let view = lease.as_ref().filter(|_| slurm.is_none()).map(Lease::view);
        let launcher = Launcher {
            config: &config,
            lineage: &lineage,
            guard: &task_guard,
            slurm: slurm.as_ref(),
            gpus: view.as_ref(),
            taken: t0,
            bars: None,
        };
        let eval = run_eval(&launcher, &spec, (id, seed, kind)).await;
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
    if exp.noise.scale.judged(score).is_none() {
        return Err(Failure {
            label: FailureLabel::GateMiss,
            detail: format!(
                "{}={score}: noise.scale = \"log\" takes positive scores only",
                exp.metric
            ),
            score: Some(score),
        });
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
    let to = match &verdict {
        Verdict::Failed(_) => TrialStatus::Failed,
        Verdict::Scored { decision, .. } if *decision == Decision::Improved => TrialStatus::Kept,
        _ => TrialStatus::Discarded,
    };
    let updated = advance_trial(
        &state.lineage,
        trial.id,
        to,
        Box::new(move |t| {
            match &eval {
                Some((Stage::Proxy, e)) => t.eval = Some(e.clone()),
                Some((Stage::Full, e)) => t.full_eval = Some(e.clone()),
                None => {}
            }
            match &v {
                Verdict::Failed(f) => {
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
                    evidence,
                } => {
                    t.evidence = *evidence;
                    t.score = Some(*score);
                    t.decision = Some(*decision);
                    t.parent_score = *reference;
                    t.false_peak = *false_peak;
                    t.detail = Some(detail.clone());
                    if noise.is_some() {
                        t.noise = *noise;
                    }
                }
                Verdict::Pruned { detail } => {
                    t.decision = Some(Decision::Pruned);
                    t.detail = Some(detail.clone());
                }
                Verdict::Rebased { to, score, detail } => {
                    t.decision = Some(Decision::Rebased);
                    t.rebased_as = Some(*to);
                    t.score = *score;
                    t.detail = Some(detail.clone());
                }
            }
        }),
    )
    .await?;
    let kept = matches!(
        verdict,
        Verdict::Scored {
            decision: Decision::Improved,
            ..
        }
    );
    if !kept {
        pool(state, &updated).await?;
    } else if let Some(old) = state.incumbent.clone() {
        // The incumbent it replaces joins the pool with every run it has.
        if let Some(t) =
            ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, old.trial)?
        {
            pool(state, &t).await?;
        }
    }
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
                commit: updated.keep_commit.clone().or(updated.commit.clone()),
                noise: *noise,
            });
            // Lineage holds the keep; the ref follows (and is re-pointed from
            // lineage at the next start if this write is lost).
            if let Some(commit) = updated
                .keep_commit
                .clone()
                .or_else(|| updated.commit.clone())
            {
                let provenance = state.provenance.clone();
                let moved =
                    tokio::task::spawn_blocking(move || provenance.set_incumbent(&commit)).await;
                let error = match moved {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = error {
                    warn!(trial = %trial.id, error = %e, "could not move ratchet/incumbent");
                }
            }
            // The bars first: the next trial starts when the executor hears `Settled`.
            announce_bars(state).await?;
            tell_executor(state, ExecutorMsg::IncumbentChanged);
            tell_executor(state, ExecutorMsg::Settled(trial.id));
            // Kept before every seed was run: the rest, for later pairs.
            return remeasure(state).await;
        }
        Verdict::Failed(f) => info!(trial = %trial.id, label = %f.label, "trial failed"),
        Verdict::Pruned { detail } => info!(trial = %trial.id, "{detail}"),
        Verdict::Scored { .. } | Verdict::Rebased { .. } => {}
    }
    if trial_had_curves(&state.config, &updated) {
        announce_bars(state).await?;
    }
    tell_executor(state, ExecutorMsg::Settled(trial.id));
    Ok(())
}

/// Whether a finished trial adds to the curve pools (`[prune]`: several runs with curves).
fn trial_had_curves(config: &Config, trial: &Trial) -> bool {
    config
        .experiment
        .file
        .prune
        .as_ref()
        .is_some_and(|p| curves(trial, &p.metric).len() > 1)
}

/// Tells the executor what a running trial is held to (`[prune]`): the
/// incumbent's curves and the spreads at each look; `None` when there is
/// nothing to compare with yet.
async fn announce_bars(state: &mut EvaluatorState) -> Result<(), ActorProcessingErr> {
    if state.config.experiment.file.prune.is_none() {
        return Ok(());
    }
    let bars = match &state.incumbent {
        Some(inc) => ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, inc.trial)?
            .and_then(|t| state.pools.bars(&t)),
        None => None,
    };
    tell_executor(state, ExecutorMsg::Bars(bars.map(Arc::new)));
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
            scouts: 0,
            allocation: Default::default(),
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
    fn every_gate_has_its_label() {
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
        // On noise.scale = "log" a score the log cannot take is a gate miss
        // that says why; a positive one passes.
        let mut log = c.clone();
        log.experiment.file.noise.scale = crate::config::Scale::Log;
        let r = check(&log, &eval(&[("loss", 0.0)]));
        assert!(
            r.as_ref()
                .is_err_and(|f| f.label == GateMiss && f.detail.contains("positive scores only")),
            "{r:?}"
        );
        assert!(check(&log, &eval(&[("loss", 0.5)])).is_ok());
    }
}
