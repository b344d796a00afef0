//! The evaluator: owns every score and every keep/discard decision. It runs
//! the experiment's eval commands itself in the trial's workspace (numbers the
//! train command printed are never the score, unless the experiment says
//! `score_from = "train"`: its protected code computes the score during
//! training), applies the failure labels and gates, and decides in stages,
//! recording each before acting on it:
//!
//! 1. **proxy** (every trial): the gates, then a screen against the trial's
//!    parent (the incumbent it was proposed against): a look of
//!    the keep rule (`judge/`) on proxy scores, which can only stop a
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::messages::{EvaluatorMsg, ExecutorMsg, Stage, SCOUT};
use super::{advance_trial, interrupt_all, measure_trial, update_trial, CALL_TIMEOUT_MS};
use crate::config::{Config, ScoreFrom};
use crate::domain::{
    format_float, Call, Decision, Evidence, FailureLabel, Incumbent, NoiseBand, ProcessReport,
    SeedRun, Spread, Trial, TrialId, TrialStatus,
};
use crate::gpu::{Gpus, Lease};
use crate::judge::{self, check, curves, judged_by_seed, scores_by_seed, Failure, Pools};
use crate::lineage::actor::LineageMsg;
use crate::probe::{self, Stage as Spent};
use crate::process::{GroupGuard, GroupTask};
use crate::runner::launch::eval_spec;
use crate::runner::runs::run_eval;
use crate::runner::workshop::MergedTree;
use crate::runner::Launcher;
use crate::runner::Workshop;
use crate::slurm::{JobKind, Slurm};
use crate::workspace::TrialDirs;

mod decide;
mod rebase;

use decide::{confirm, own_eval, pool, remeasure, seed_finished};

pub struct Evaluator;

pub struct EvaluatorArgs {
    pub config: Arc<Config>,
    pub lineage: ActorRef<LineageMsg>,
    /// The git half of every trial (restores, keeps, rebases, the incumbent ref).
    pub workshop: Workshop,
    /// The Slurm backend, when evals run as jobs (`executor.slurm.eval`).
    pub slurm: Option<Arc<Slurm>>,
    /// GPU slots, when evals take one too (`executor.evals_on_gpus`).
    pub gpus: Option<Arc<Gpus>>,
}

pub struct EvaluatorState {
    config: Arc<Config>,
    workshop: Workshop,
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
            workshop: args.workshop,
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
            first_score(&myself, state, &trial, 0, train)?;
        }
        EvaluatorMsg::Evaluate {
            id, seed, train, ..
        } => {
            let report = train.clone();
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
            first_score(&myself, state, &trial, seed, report)?;
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

/// A run that trained is scored: by the proxy eval, or, where the score
/// comes from the train run (`score_from = "train"`), by its own report,
/// which goes through the same gates and stages as an eval's would.
fn first_score(
    myself: &ActorRef<EvaluatorMsg>,
    state: &mut EvaluatorState,
    trial: &Trial,
    seed: u64,
    train: ProcessReport,
) -> Result<(), ActorProcessingErr> {
    if state.config.experiment.file.score_from != ScoreFrom::Train {
        start_eval(myself, state, trial, seed, Stage::Proxy);
        return Ok(());
    }
    probe::mark(trial.id, seed);
    myself.cast(EvaluatorMsg::EvalFinished {
        id: trial.id,
        seed,
        stage: Stage::Proxy,
        eval: train,
        lease: state.leases.remove(&(trial.id, seed)),
    })?;
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
    let restore = trial.commit.clone().map(|c| (state.workshop.clone(), c));
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
        if let Some((workshop, commit)) = restore {
            let work = dirs.work.clone();
            if let Err(e) = workshop.restore_protected(&config, commit, work).await {
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
                if let Err(e) = state.workshop.set_incumbent(commit).await {
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
