//! The executor: owns the slots, the queue of proposed trials and the child
//! process groups of running trials. It asks specialists for proposals ahead of
//! need (so a free slot starts the next trial at once), runs each trial's train
//! command in its own workspace and process group, and hands finished runs to
//! the evaluator.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::messages::{
    EvaluatorMsg, ExecutorMsg, ExecutorStatus, RunInfo, SpecialistInfo, SpecialistMsg, SCOUT,
};
use super::{advance_trial, interrupt, interrupt_all, propose_trial, CALL_TIMEOUT_MS};
use crate::allocation::{self, Outcomes, Stride};
use crate::config::Config;
use crate::domain::{now_ms, ProcessReport, Trial, TrialId, TrialStatus};
use crate::gpu::{Gpus, Lease};
use crate::judge::Bars;
use crate::lineage::actor::{LineageMsg, Observer, RunEvent};
use crate::lineage::query::Filter;
use crate::lineage::NewTrial;
use crate::probe::{self, Stage};
use crate::process::{GroupGuard, GroupTask};
use crate::propose::{rng::Rng, search};
use crate::runner::launch::train_spec;
use crate::runner::recovery::{recover, requeue, Recovered};
use crate::runner::runs::{run_seed, run_train};
use crate::runner::{Launcher, Ran, Workshop};
use crate::slurm::{cancel_now, Outcome, Slurm};
use crate::workspace::TrialDirs;

mod asks;
mod status;

use asks::{count_outcome, fill, outcomes, queue};
use status::{status, Occupancy};

pub struct Executor;

pub struct ExecutorArgs {
    pub config: Arc<Config>,
    pub lineage: ActorRef<LineageMsg>,
    pub evaluator: ActorRef<EvaluatorMsg>,
    pub observer: Option<Observer>,
    /// Stop issuing trials after this many (counted in this process; also
    /// at most what `daemon.stop_after_trials` leaves).
    pub max_trials: Option<u64>,
    /// The git half of every trial (its commit and exports, from `ratchet/base`).
    pub workshop: Workshop,
    /// The Slurm backend; `None`: runs are child processes of ratchet.
    pub slurm: Option<Arc<Slurm>>,
    /// GPU slots; `None`: `config.slots` CPU slots.
    pub gpus: Option<Arc<Gpus>>,
}

struct SpecialistSlot {
    name: String,
    actor: ActorRef<SpecialistMsg>,
    /// A `Propose` is in flight.
    asked: bool,
    /// It had nothing to propose at the current incumbent.
    exhausted: bool,
    /// It is resting (an LLM after failed requests or over its hourly
    /// budget) and will send `Wake`: work is still coming from it.
    resting: bool,
    /// Its trials' outcomes (`daemon.allocation`), counted from lineage
    /// when it is registered and at each `Settled` since.
    outcomes: Outcomes,
    /// Its stride-scheduling pass: the least is asked next.
    pass: f64,
}

/// One train run: a trial's own (seed 0) or one of its seed re-runs.
struct Job {
    trial: Trial,
    seed: u64,
    /// From the evaluator (seed runs, rebased trials) or re-queued by
    /// recovery: ahead of proposals, first come first served among
    /// themselves, so the oldest confirmation finishes first.
    priority: bool,
    since_ms: u64,
}

impl Job {
    fn info(&self) -> RunInfo {
        RunInfo {
            trial: self.trial.id,
            seed: self.seed,
            specialist: self.trial.specialist.clone(),
            attempt: self.trial.attempt,
            since_ms: self.since_ms,
            job: None,
            job_state: None,
        }
    }
}

/// A run in a slot: dropping it kills its process group and frees its GPUs.
struct Running {
    task: GroupTask,
    info: RunInfo,
    /// Declared after `task`, so the group is killed before the GPUs are
    /// free for another run. Dropping it frees them; with `evals_on_gpus`
    /// a finished run hands it to its eval.
    lease: Option<Lease>,
}

impl ExecutorState {
    /// Queues an evaluator's job behind earlier ones, ahead of proposals.
    fn push_priority(&mut self, trial: Trial, seed: u64) {
        let at = self.queue.iter().take_while(|j| j.priority).count();
        self.queue.insert(
            at,
            Job {
                trial,
                seed,
                priority: true,
                since_ms: now_ms(),
            },
        );
    }
}

pub struct ExecutorState {
    occupancy: Occupancy,
    config: Arc<Config>,
    workshop: Workshop,
    slurm: Option<Arc<Slurm>>,
    gpus: Option<Arc<Gpus>>,
    /// Seed re-runs the cluster lost, by trial and seed: each is queued
    /// again up to `max_attempts` times.
    lost: HashMap<(TrialId, u64), u32>,
    lineage: ActorRef<LineageMsg>,
    evaluator: ActorRef<EvaluatorMsg>,
    observer: Option<Observer>,
    specialists: Vec<SpecialistSlot>,
    next: usize,
    /// Trials counted in a specialist's outcomes.
    counted: BTreeSet<TrialId>,
    /// Which specialist is asked next (`daemon.allocation`).
    stride: Stride,
    queue: VecDeque<Job>,
    /// Runs in slots, by trial and seed; dropping one kills its process group.
    running: HashMap<(TrialId, u64), Running>,
    issued: u64,
    max_trials: Option<u64>,
    baseline_needed: bool,
    /// The baseline in flight: specialists wait for it (and its noise band)
    /// to be settled, so every proposal has an incumbent to be judged against.
    baseline: Option<TrialId>,
    /// Scouts not issued yet (`daemon.scouts` less those lineage holds),
    /// what draws them, and those not settled: specialists wait for them
    /// all, so they start from the best.
    scouts_left: u64,
    scout_rng: Rng,
    scouting: BTreeSet<TrialId>,
    /// The baseline and scouts the last process left unsettled: their
    /// `Settled` may have gone to that process, so lineage is asked.
    inherited: BTreeSet<TrialId>,
    /// The supervisor has told us the specialists: only then can we be drained.
    ready: bool,
    drained_sent: bool,
    paused: BTreeSet<String>,
    draining: bool,
    /// Candidates (and the baseline) whose seed re-runs were asked for and
    /// that are not settled: with `confirm_first`, no new trial starts or is
    /// asked for meanwhile.
    confirming: BTreeSet<TrialId>,
    /// What trials' own runs are held to (`[prune]`).
    bars: Option<Arc<(Bars, u64)>>,
    pruned: u64,
    saved_ms: u64,
    /// Trials the pre-flight check failed, and the train time they did not spend.
    preflight_failed: u64,
    preflight_saved_ms: u64,
}

impl ExecutorState {
    /// Slots in use: GPU slots in rotation, or the configured CPU slots.
    fn slots(&self) -> usize {
        match &self.gpus {
            Some(g) => g.slots(),
            None => self.config.slots,
        }
    }

    /// New proposals wait: a candidate is being confirmed and the
    /// configuration says to confirm first.
    fn holding(&self) -> bool {
        self.config.confirm_first && !self.confirming.is_empty()
    }

    /// A trial reached its outcome: nothing waits for it any more.
    fn settled(&mut self, id: TrialId) {
        if self.baseline == Some(id) {
            self.baseline = None;
        }
        self.confirming.remove(&id);
        self.scouting.remove(&id);
        self.inherited.remove(&id);
    }

    fn asked(&self) -> u64 {
        self.specialists.iter().filter(|s| s.asked).count() as u64
    }

    fn budget_left(&self) -> u64 {
        match self.max_trials {
            Some(m) => m.saturating_sub(self.issued + self.asked()),
            None => u64::MAX,
        }
    }
}

impl Actor for Executor {
    type Msg = ExecutorMsg;
    type State = ExecutorState;
    type Arguments = ExecutorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ExecutorArgs,
    ) -> Result<ExecutorState, ActorProcessingErr> {
        let Recovered { requeued, adopted } =
            recover(&args.lineage, args.config.max_attempts, args.slurm.as_ref()).await?;
        if let Some(g) = &args.gpus {
            // Evals (`evals_on_gpus`) free sets outside this actor.
            let me = myself.clone();
            g.set_waker(Box::new(move || {
                let _ = me.cast(ExecutorMsg::GpuFreed);
            }));
        }
        let paused = ractor::call_t!(args.lineage, LineageMsg::Paused, CALL_TIMEOUT_MS)?;
        let incumbent = ractor::call_t!(args.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
        let defaults = vec![args.config.experiment.defaults.clone()];
        let unknown =
            ractor::call_t!(args.lineage, LineageMsg::Unknown, CALL_TIMEOUT_MS, defaults)?;
        // Scouts issued so far: those that ran or run (one a stop cut
        // short is drawn again).
        let scouted = if args.config.scouts > 0 {
            let store = ractor::call_t!(args.lineage, LineageMsg::Reader, CALL_TIMEOUT_MS)?;
            let filter = Filter {
                specialist: Some(SCOUT.into()),
                ..Default::default()
            };
            store
                .select(&filter)?
                .filter(|t| {
                    t.as_ref()
                        .map_or(true, |t| t.status != TrialStatus::Interrupted)
                })
                .count() as u64
        } else {
            0
        };
        // What the last process left unsettled, wherever it is now (queued,
        // being evaluated, a Slurm job adopted): the baseline and scouts
        // still hold the specialists back.
        let active = ractor::call_t!(args.lineage, LineageMsg::Active, CALL_TIMEOUT_MS)?;
        // `daemon.stop_after_trials`: the trials lineage may hold; this
        // process asks for what is left of them.
        let max_trials = match args.config.stop.trials {
            None => args.max_trials,
            Some(cap) => {
                let store = ractor::call_t!(args.lineage, LineageMsg::Reader, CALL_TIMEOUT_MS)?;
                let left = cap.saturating_sub(store.trial_count() as u64);
                Some(args.max_trials.map_or(left, |m| m.min(left)))
            }
        };
        let mut state = ExecutorState {
            occupancy: Occupancy::new(),
            baseline_needed: incumbent.is_none() && unknown.first() == Some(&true),
            baseline: None,
            scouts_left: args.config.scouts.saturating_sub(scouted),
            scout_rng: Rng::for_name(args.config.seed, SCOUT, scouted),
            scouting: BTreeSet::new(),
            inherited: BTreeSet::new(),
            config: args.config,
            workshop: args.workshop,
            slurm: args.slurm,
            gpus: args.gpus,
            lost: HashMap::new(),
            lineage: args.lineage,
            evaluator: args.evaluator,
            observer: args.observer,
            specialists: Vec::new(),
            next: 0,
            counted: BTreeSet::new(),
            stride: Stride::default(),
            queue: VecDeque::new(),
            running: HashMap::new(),
            issued: 0,
            max_trials,
            ready: false,
            drained_sent: false,
            paused: paused.into_keys().collect(),
            draining: false,
            confirming: BTreeSet::new(),
            bars: None,
            pruned: 0,
            saved_ms: 0,
            preflight_failed: 0,
            preflight_saved_ms: 0,
        };
        for t in &active {
            if t.specialist == "baseline" {
                state.baseline = Some(t.id);
                state.inherited.insert(t.id);
            }
            if t.specialist == SCOUT {
                state.scouting.insert(t.id);
                state.inherited.insert(t.id);
            }
        }
        for trial in requeued {
            state.push_priority(trial, 0);
        }
        for (trial, seed, job) in adopted {
            adopt(&myself, &mut state, trial, seed, job);
        }
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        fill(&myself, state).await
    }

    /// A clean stop: running trials are killed and recorded `interrupted`.
    /// Trials still waiting in the queue stay `queued` in lineage: nothing
    /// of theirs was cut short, and the next start runs them.
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        // A seed re-run cut short interrupts the trial it confirms.
        let mut ids: Vec<TrialId> = state
            .running
            .keys()
            .map(|(id, _)| *id)
            .chain(
                state
                    .queue
                    .iter()
                    .filter(|j| j.seed != 0)
                    .map(|j| j.trial.id),
            )
            .collect();
        ids.sort();
        ids.dedup();
        state.running.clear();
        state.queue.clear();
        interrupt_all(&state.lineage, ids, "ratchet stopped while the trial ran").await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ExecutorMsg,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExecutorMsg::SetSpecialists(list) => {
                // A specialist that is still the same actor keeps its pending
                // ask; one of the same name keeps its pass, a new one starts
                // level with the least.
                let old = std::mem::take(&mut state.specialists);
                let least = old.iter().map(|s| s.pass).reduce(f64::min).unwrap_or(0.0);
                let outcomes = outcomes(state, &list).await?;
                state.specialists = list
                    .into_iter()
                    .zip(outcomes)
                    .map(|((name, actor), outcomes)| {
                        let same = old
                            .iter()
                            .find(|s| s.name == name && s.actor.get_id() == actor.get_id());
                        let (asked, exhausted, resting) = same
                            .map_or((false, false, false), |s| (s.asked, s.exhausted, s.resting));
                        let pass = old
                            .iter()
                            .find(|s| s.name == name)
                            .map_or(least, |s| s.pass);
                        SpecialistSlot {
                            name,
                            actor,
                            asked,
                            exhausted,
                            resting,
                            outcomes,
                            pass,
                        }
                    })
                    .collect();
                state.next %= state.specialists.len().max(1);
                state.ready = true;
            }
            ExecutorMsg::SetEvaluator(e) => state.evaluator = e,
            ExecutorMsg::Proposed { specialist, trial } => {
                if let Some(slot) = state.specialists.iter_mut().find(|s| s.name == specialist) {
                    slot.asked = false;
                    slot.exhausted = trial.is_none();
                }
                if let Some(trial) = trial {
                    state.issued += 1;
                    queue(state, *trial, false).await?;
                }
            }
            ExecutorMsg::TrainFinished { id, seed, ran } => {
                let Some(done) = state.running.remove(&(id, seed)) else {
                    // Cancelled (`pause --cancel`) as it ended: recorded already.
                    return fill(&myself, state).await;
                };
                done.task.guard.disarm();
                // With `evals_on_gpus`, the run's GPUs go on to its eval.
                let evals_on_gpus = state.config.gpus.as_ref().is_some_and(|g| g.evals);
                let lease = done.lease.filter(|_| evals_on_gpus).map(|mut l| {
                    // From here on, freeing it (wherever) wakes the executor.
                    l.to_eval();
                    l
                });
                match ran {
                    Ran::NotRun => {
                        state.settled(id);
                        count_outcome(state, id).await?
                    }
                    Ran::Preflight { saved_ms } => {
                        state.preflight_failed += 1;
                        state.preflight_saved_ms += saved_ms;
                        state.settled(id);
                        count_outcome(state, id).await?
                    }
                    Ran::Report(train) => {
                        if let Some(p) = &train.pruned {
                            state.pruned += 1;
                            state.saved_ms += p.saved_ms;
                        }
                        state.evaluator.cast(EvaluatorMsg::Evaluate {
                            id,
                            seed,
                            train: *train,
                            lease,
                        })?
                    }
                    Ran::Lost(why) => lost(state, id, seed, why).await?,
                }
                probe::since_mark(id, seed, Stage::Reap);
            }
            ExecutorMsg::RunSeeds { trial, seeds } => {
                // A kept incumbent re-measured for its band holds nothing.
                if trial.status == TrialStatus::Evaluating {
                    state.confirming.insert(trial.id);
                }
                for seed in seeds {
                    // Asked again after a restart: a run already here stays.
                    let key = (trial.id, seed);
                    let known = state.running.contains_key(&key)
                        || state.queue.iter().any(|j| (j.trial.id, j.seed) == key);
                    if !known {
                        state.push_priority((*trial).clone(), seed);
                    }
                }
            }
            ExecutorMsg::Enqueue(trial) => queue(state, *trial, true).await?,
            ExecutorMsg::Settled(id) => {
                state.settled(id);
                count_outcome(state, id).await?;
            }
            ExecutorMsg::IncumbentChanged => {
                for s in &mut state.specialists {
                    s.exhausted = false;
                }
            }
            ExecutorMsg::Resting(name) => {
                if let Some(s) = state.specialists.iter_mut().find(|s| s.name == name) {
                    s.asked = false;
                    s.resting = true;
                }
            }
            ExecutorMsg::Wake(name) => {
                if let Some(s) = state.specialists.iter_mut().find(|s| s.name == name) {
                    s.exhausted = false;
                    s.resting = false;
                }
            }
            ExecutorMsg::SetPaused(paused) => state.paused = paused,
            ExecutorMsg::Drain => {
                if !state.draining {
                    info!(
                        running = state.running.len(),
                        queued = state.queue.len(),
                        "draining: no new trials start"
                    );
                }
                state.draining = true;
            }
            ExecutorMsg::Reconfigure(config) => state.config = config,
            ExecutorMsg::Cancel(names, reply) => {
                let _ = reply.send(cancel(state, &names).await);
            }
            ExecutorMsg::Status(reply) => {
                state.occupancy.catch_up();
                let _ = reply.send(status(state));
            }
            ExecutorMsg::GpuFreed => {}
            ExecutorMsg::Bars(bars) => state.bars = bars,
        }
        fill(&myself, state).await
    }
}

/// `ratchet pause --cancel`: the specialists' trials in slots (their
/// process groups killed, their Slurm jobs cancelled, by dropping the
/// runs) and in the queue are recorded `interrupted`.
async fn cancel(state: &mut ExecutorState, names: &BTreeSet<String>) -> Vec<TrialId> {
    let theirs = |specialist: &str, seed: u64| seed == 0 && names.contains(specialist);
    let mut ids: Vec<TrialId> = Vec::new();
    state.running.retain(|(id, seed), run| {
        let keep = !theirs(&run.info.specialist, *seed);
        if !keep {
            ids.push(*id);
        }
        keep
    });
    state.queue.retain(|j| {
        let keep = !theirs(&j.trial.specialist, j.seed);
        if !keep {
            ids.push(j.trial.id);
        }
        keep
    });
    ids.sort();
    for id in &ids {
        info!(trial = %id, "cancelled by `ratchet pause --cancel`");
    }
    interrupt_all(
        &state.lineage,
        ids.clone(),
        "cancelled by `ratchet pause --cancel`",
    )
    .await;
    ids
}

/// Starts one run in its own task: for a trial's own run, workspace,
/// `Running` in lineage, then the train command in its own process group; for
/// a seed re-run, an export of the trial's commit and the train command.
fn start(
    myself: &ActorRef<ExecutorMsg>,
    state: &mut ExecutorState,
    job: Job,
    lease: Option<Lease>,
) {
    let taken = Instant::now();
    let mut info = job.info();
    info.since_ms = now_ms();
    let Job { trial, seed, .. } = job;
    let id = trial.id;
    let guard = GroupGuard::default();
    let config = state.config.clone();
    let lineage = state.lineage.clone();
    let executor = myself.clone();
    let task_guard = guard.clone();
    let workshop = state.workshop.clone();
    let slurm = state.slurm.clone();
    let gpus = lease.as_ref().map(Lease::view);
    let bars = prunable(state, &trial, seed);
    let task = tokio::spawn(async move {
        let launcher = Launcher {
            config: &config,
            lineage: &lineage,
            guard: &task_guard,
            slurm: slurm.as_ref(),
            gpus: gpus.as_ref(),
            taken,
            bars,
        };
        let ran = if seed == 0 {
            run_train(&launcher, trial, &workshop).await
        } else {
            run_seed(&launcher, &trial, seed, &workshop).await
        };
        probe::mark(id, seed);
        let _ = executor.cast(ExecutorMsg::TrainFinished { id, seed, ran });
    });
    state.running.insert(
        (id, seed),
        Running {
            task: GroupTask { guard, task },
            info,
            lease,
        },
    );
}

/// The bars a run is held to while it trains: a trial's own run (not the
/// baseline's, not a seed run: those are measurements a decision asked
/// for), proposed against the incumbent the bars are made of, on a
/// surface `[prune]` covers, run locally (a Slurm job's output is read
/// only when it ends).
fn prunable(state: &ExecutorState, trial: &Trial, seed: u64) -> Option<Arc<(Bars, u64)>> {
    let prune = state.config.experiment.file.prune.as_ref()?;
    let bars = state.bars.as_ref()?;
    (seed == 0
        && state.slurm.is_none()
        && trial.specialist != "baseline"
        && trial.parent == Some(bars.0.against)
        && prune.covers(trial.surface.as_deref()))
    .then(|| bars.clone())
}

/// A run the cluster lost: queued again, ahead of proposals, until it has
/// been started `max_attempts` times; then the trial is recorded
/// `interrupted` (its own run) or the seed run fails.
async fn lost(
    state: &mut ExecutorState,
    id: TrialId,
    seed: u64,
    why: String,
) -> Result<(), ActorProcessingErr> {
    let max = state.config.max_attempts;
    warn!(trial = %id, seed, "{why}");
    if seed == 0 {
        let Some(t) = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)? else {
            return Ok(());
        };
        if t.attempt >= max {
            let detail = format!("{why}, at every one of {max} attempts");
            interrupt(&state.lineage, id, detail).await?;
            state.settled(id);
            return Ok(());
        }
        let trial = requeue(&state.lineage, id, true).await?;
        state.lineage.cast(LineageMsg::Event {
            kind: "requeued".into(),
            subject: id.to_string(),
            detail: format!("{why}; attempt {} of {max}", trial.attempt),
        })?;
        state.push_priority(trial, 0);
        return Ok(());
    }
    let n = state.lost.entry((id, seed)).or_default();
    *n += 1;
    if *n >= max {
        state.lost.remove(&(id, seed));
        let train = ProcessReport {
            spawn_error: Some(format!("{why}, at every one of {max} attempts")),
            ..Default::default()
        };
        state.evaluator.cast(EvaluatorMsg::Evaluate {
            id,
            seed,
            train,
            lease: None,
        })?;
        return Ok(());
    }
    let Some(t) = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)? else {
        return Ok(());
    };
    state.lineage.cast(LineageMsg::Event {
        kind: "requeued".into(),
        subject: id.to_string(),
        detail: format!("seed {seed}: {why}"),
    })?;
    state.push_priority(t, seed);
    Ok(())
}

/// Puts a run whose Slurm job is still in the cluster into a slot: its
/// task waits for the job, as if this process had submitted it.
fn adopt(
    myself: &ActorRef<ExecutorMsg>,
    state: &mut ExecutorState,
    trial: Trial,
    seed: u64,
    job: u64,
) {
    let Some(slurm) = state.slurm.clone() else {
        return;
    };
    let id = trial.id;
    let dirs = TrialDirs::run(&state.config.lineage_dir, id, seed);
    let spec = train_spec(&state.config, &dirs, id);
    let guard = GroupGuard::default();
    guard.set_job(job, cancel_now);
    let task_guard = guard.clone();
    let executor = myself.clone();
    let task = tokio::spawn(async move {
        let ran = match slurm.follow(&spec, &task_guard, job).await {
            Outcome::Ran(report) => Ran::Report(report),
            Outcome::Lost(why) => Ran::Lost(why),
        };
        let _ = executor.cast(ExecutorMsg::TrainFinished { id, seed, ran });
    });
    let info = RunInfo {
        trial: id,
        seed,
        specialist: trial.specialist.clone(),
        attempt: trial.attempt,
        since_ms: now_ms(),
        job: None,
        job_state: None,
    };
    state.running.insert(
        (id, seed),
        Running {
            task: GroupTask { guard, task },
            info,
            lease: None,
        },
    );
}
