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
use super::{advance_trial, interrupt, interrupt_all, CALL_TIMEOUT_MS};
use crate::allocation::{self, Outcomes, Stride};
use crate::config::Config;
use crate::domain::{now_ms, CommitId, ProcessReport, Trial, TrialId, TrialStatus};
use crate::gpu::{Gpus, Lease};
use crate::judge::Bars;
use crate::lineage::actor::{LineageMsg, Observer, RunEvent};
use crate::lineage::query::Filter;
use crate::lineage::NewTrial;
use crate::probe::{self, Stage};
use crate::process::{GroupGuard, GroupTask};
use crate::propose::{rng::Rng, search};
use crate::provenance::Provenance;
use crate::runner::launch::train_spec;
use crate::runner::recovery::{recover, requeue, Recovered};
use crate::runner::runs::{run_seed, run_train};
use crate::runner::{Launcher, Ran};
use crate::slurm::{cancel_now, Outcome, Slurm};
use crate::workspace::TrialDirs;

pub struct Executor;

pub struct ExecutorArgs {
    pub config: Arc<Config>,
    pub lineage: ActorRef<LineageMsg>,
    pub evaluator: ActorRef<EvaluatorMsg>,
    pub observer: Option<Observer>,
    /// Stop issuing trials after this many (counted in this process).
    pub max_trials: Option<u64>,
    pub provenance: Arc<Provenance>,
    /// The commit trials without a parent start from (`ratchet/base`).
    pub base: CommitId,
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

/// Slot time, integrated between the executor's state changes: busy (a run
/// in the slot), starved (a free slot while a proposal was being made) and
/// held (a free slot while a candidate is confirmed first). A free slot
/// with nothing on its way (the baseline being confirmed, the trial budget
/// spent, everyone exhausted or paused) is none of these.
struct Occupancy {
    since: Instant,
    slots: usize,
    running: usize,
    free_while_waiting: usize,
    free_while_held: usize,
    total: Duration,
    busy: Duration,
    starved: Duration,
    held: Duration,
}

impl Occupancy {
    fn new() -> Self {
        Occupancy {
            since: Instant::now(),
            slots: 0,
            running: 0,
            free_while_waiting: 0,
            free_while_held: 0,
            total: Duration::ZERO,
            busy: Duration::ZERO,
            starved: Duration::ZERO,
            held: Duration::ZERO,
        }
    }

    /// Accounts the time since the last change at the state then, and
    /// starts a new interval with this state: `slots`, runs in them, and
    /// free ones waiting for a proposal or held.
    fn change(&mut self, slots: usize, running: usize, waiting: usize, held: usize) {
        self.change_at(Instant::now(), slots, running, waiting, held);
    }

    fn change_at(
        &mut self,
        now: Instant,
        slots: usize,
        running: usize,
        waiting: usize,
        held: usize,
    ) {
        let dt = now.saturating_duration_since(self.since);
        self.total += dt * self.slots as u32;
        self.busy += dt * self.running as u32;
        self.starved += dt * self.free_while_waiting as u32;
        self.held += dt * self.free_while_held as u32;
        self.since = now;
        self.slots = slots;
        self.running = running;
        self.free_while_waiting = waiting;
        self.free_while_held = held;
    }

    /// Accounts the time up to now without a change of state.
    fn catch_up(&mut self) {
        let (s, r, w, h) = (
            self.slots,
            self.running,
            self.free_while_waiting,
            self.free_while_held,
        );
        self.change(s, r, w, h);
    }
}

pub struct ExecutorState {
    occupancy: Occupancy,
    config: Arc<Config>,
    provenance: Arc<Provenance>,
    base: CommitId,
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
        let mut state = ExecutorState {
            occupancy: Occupancy::new(),
            baseline_needed: incumbent.is_none() && unknown.first() == Some(&true),
            baseline: None,
            scouts_left: args.config.scouts.saturating_sub(scouted),
            scout_rng: Rng::for_name(args.config.seed, SCOUT, scouted),
            scouting: BTreeSet::new(),
            inherited: BTreeSet::new(),
            config: args.config,
            provenance: args.provenance,
            base: args.base,
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
            max_trials: args.max_trials,
            ready: false,
            drained_sent: false,
            paused: paused.into_keys().collect(),
            draining: false,
            confirming: BTreeSet::new(),
            bars: None,
            pruned: 0,
            saved_ms: 0,
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
                    Ran::Refused => count_outcome(state, id).await?,
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

/// The outcomes of each listed specialist's settled trials, from lineage.
async fn outcomes(
    state: &mut ExecutorState,
    list: &[(String, ActorRef<SpecialistMsg>)],
) -> Result<Vec<Outcomes>, ActorProcessingErr> {
    let store = ractor::call_t!(state.lineage, LineageMsg::Reader, CALL_TIMEOUT_MS)?;
    let mut out = Vec::with_capacity(list.len());
    // Through lineage's index by specialist: each reads only its own trials.
    for (name, _) in list {
        let filter = Filter {
            specialist: Some(name.clone()),
            ..Default::default()
        };
        let mut o = Outcomes::default();
        for t in store.select(&filter)? {
            let t = t?;
            if allocation::counts(&t).is_some() {
                state.counted.insert(t.id);
            }
            o.add(&t);
        }
        out.push(o);
    }
    Ok(out)
}

/// Counts a settled trial toward its specialist's outcomes, once.
async fn count_outcome(state: &mut ExecutorState, id: TrialId) -> Result<(), ActorProcessingErr> {
    if state.counted.contains(&id) {
        return Ok(());
    }
    let Some(t) = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)? else {
        return Ok(());
    };
    if allocation::counts(&t).is_none() {
        return Ok(());
    }
    if let Some(s) = state
        .specialists
        .iter_mut()
        .find(|s| s.name == t.specialist)
    {
        s.outcomes.add(&t);
        state.counted.insert(id);
    }
    Ok(())
}

/// Records a proposed trial `Queued` and queues its own run: behind the
/// other proposals, or (`priority`, the evaluator's) ahead of them. A
/// duplicate is already terminal in lineage: counted, not run.
async fn queue(
    state: &mut ExecutorState,
    trial: Trial,
    priority: bool,
) -> Result<(), ActorProcessingErr> {
    if trial.status != TrialStatus::Proposed {
        // A duplicate (failed already) counts against its specialist.
        return count_outcome(state, trial.id).await;
    }
    let t0 = Instant::now();
    let queued = advance_trial(
        &state.lineage,
        trial.id,
        TrialStatus::Queued,
        Box::new(|_| {}),
    )
    .await?;
    probe::since(trial.id, Stage::Record, t0);
    if priority {
        state.push_priority(queued, 0);
    } else {
        state.queue.push_back(Job {
            trial: queued,
            seed: 0,
            priority: false,
            since_ms: now_ms(),
        });
    }
    Ok(())
}

/// Samples a scout draws before it settles for one lineage has not seen.
const SCOUT_DRAWS: usize = 16;

/// A scout recorded in lineage: a global sample of every parameter the
/// experiment declares, against the incumbent. `None`, and no more scouts,
/// without an incumbent (the baseline failed: nothing to judge them
/// against) or when every draw is a configuration lineage knows.
async fn scout(state: &mut ExecutorState) -> Result<Option<Trial>, ActorProcessingErr> {
    let Some(inc) = ractor::call_t!(state.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)? else {
        state.scouts_left = 0;
        return Ok(None);
    };
    let space = state.config.experiment.file.space();
    let drawn = search::candidates(&space, &inc.config, &mut state.scout_rng, SCOUT_DRAWS, 1.0);
    let configs = drawn.iter().map(|c| c.config.clone()).collect();
    let unknown = ractor::call_t!(state.lineage, LineageMsg::Unknown, CALL_TIMEOUT_MS, configs)?;
    let Some(pick) = drawn
        .into_iter()
        .zip(unknown)
        .find_map(|(c, u)| u.then_some(c))
    else {
        state.scouts_left = 0;
        return Ok(None);
    };
    let new = NewTrial {
        specialist: SCOUT.into(),
        surface: None,
        parent: Some(inc.trial),
        hypothesis: format!("scout, every surface at once: {}", pick.hypothesis),
        changes: pick.changes,
        config: pick.config,
        ..Default::default()
    };
    let trial = ractor::call_t!(state.lineage, LineageMsg::Propose, CALL_TIMEOUT_MS, new)??;
    Ok(Some(trial))
}

/// Starts queued trials on free slots and asks specialists for more proposals
/// until the queue holds one trial per slot; reports when all work is drained.
async fn fill(
    myself: &ActorRef<ExecutorMsg>,
    state: &mut ExecutorState,
) -> Result<(), ActorProcessingErr> {
    if state.baseline_needed && state.budget_left() > 0 && !state.draining {
        state.baseline_needed = false;
        let defaults = state.config.experiment.defaults.clone();
        let new = NewTrial {
            specialist: "baseline".into(),
            surface: None,
            parent: None,
            hypothesis: "the experiment's recipe as it is".into(),
            changes: Default::default(),
            config: defaults,
            ..Default::default()
        };
        let trial = ractor::call_t!(state.lineage, LineageMsg::Propose, CALL_TIMEOUT_MS, new)??;
        state.baseline = Some(trial.id);
        myself.cast(ExecutorMsg::Proposed {
            specialist: "baseline".into(),
            trial: Some(Box::new(trial)),
        })?;
        return Ok(());
    }
    // Inherited waits that lineage shows settled hold nothing back (their
    // `Settled` may have gone to the process before this one).
    if !state.inherited.is_empty() && state.running.is_empty() && state.queue.is_empty() {
        let mut settled = Vec::new();
        for id in &state.inherited {
            let t = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, *id)?;
            if t.is_none_or(|t| t.status.is_terminal()) {
                settled.push(*id);
            }
        }
        for id in settled {
            state.settled(id);
        }
    }
    // Scouts before the specialists are asked, once the baseline is settled.
    while state.scouts_left > 0
        && (state.queue.len() as u64 + state.asked()) < state.slots() as u64
        && state.budget_left() > 0
        && state.baseline.is_none()
        && !state.draining
        && !state.holding()
    {
        let Some(trial) = scout(state).await? else {
            break;
        };
        state.scouts_left -= 1;
        state.issued += 1;
        // A duplicate is terminal already: nothing to wait for.
        if trial.status == TrialStatus::Proposed {
            state.scouting.insert(trial.id);
        }
        queue(state, trial, false).await?;
    }
    // On GPU slots, a run starts when a set of devices is free.
    while state.gpus.is_some() || state.running.len() < state.config.slots {
        // Draining: only seed re-runs of trials already being evaluated.
        // Confirming first: only the evaluator's jobs and recovered trials.
        let next = if state.draining {
            state.queue.iter().position(|j| j.seed != 0)
        } else if state.holding() {
            state.queue.iter().position(|j| j.priority)
        } else if state.queue.is_empty() {
            None
        } else {
            Some(0)
        };
        let Some((i, job)) = next.and_then(|i| Some((i, state.queue.remove(i)?))) else {
            break;
        };
        let lease = match &state.gpus {
            None => None,
            Some(g) => match g.lease(job.trial.id, job.seed) {
                Some(l) => Some(l),
                None => {
                    state.queue.insert(i, job);
                    break;
                }
            },
        };
        start(myself, state, job, lease);
    }
    let n = state.specialists.len();
    while (state.queue.len() as u64 + state.asked()) < state.slots() as u64
        && state.budget_left() > 0
        && state.baseline.is_none()
        && state.scouts_left == 0
        && state.scouting.is_empty()
        && !state.draining
        && !state.holding()
    {
        let eligible: Vec<(usize, f64, Outcomes)> = (0..n)
            .map(|k| (state.next + k) % n)
            .filter(|&i| {
                let s = &state.specialists[i];
                !s.asked && !s.exhausted && !s.resting && !state.paused.contains(&s.name)
            })
            .map(|i| (i, state.specialists[i].pass, state.specialists[i].outcomes))
            .collect();
        let Some((i, pass)) = state.stride.pick(state.config.allocation, &eligible) else {
            break;
        };
        state.next = (i + 1) % n;
        let slot = &mut state.specialists[i];
        slot.pass = pass;
        slot.asked = true;
        slot.actor.cast(SpecialistMsg::Propose {
            reply_to: myself.clone(),
        })?;
    }
    // A resting specialist still has work to give, unless the trial budget
    // is spent (a paused one gives none until it is resumed).
    let resting = state.budget_left() > 0
        && state
            .specialists
            .iter()
            .any(|s| s.resting && !state.paused.contains(&s.name));
    let scouts_coming = state.scouts_left > 0 && state.budget_left() > 0 && !state.draining;
    let idle = state.ready
        && state.baseline.is_none()
        && state.scouting.is_empty()
        && !scouts_coming
        && state.running.is_empty()
        && state.queue.is_empty()
        && state.asked() == 0
        && !resting;
    if idle && !state.drained_sent {
        state.drained_sent = true;
        info!(
            issued = state.issued,
            "executor drained: no trial running and none coming"
        );
        if let Some(o) = &state.observer {
            let _ = o.send(RunEvent::Drained {
                issued: state.issued,
            });
        }
    } else if !idle {
        state.drained_sent = false;
    }
    let slots = state.slots();
    let free = slots.saturating_sub(state.running.len());
    let (waiting, held) = if state.draining {
        (0, 0)
    } else if state.asked() > 0 {
        (free, 0)
    } else if state.holding() {
        (0, free)
    } else {
        (0, 0)
    };
    state
        .occupancy
        .change(slots, state.running.len(), waiting, held);
    Ok(())
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
    let (provenance, base) = (state.provenance.clone(), state.base.clone());
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
            run_train(&launcher, trial, provenance, base).await
        } else {
            run_seed(&launcher, &trial, seed, provenance).await
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

fn status(state: &ExecutorState) -> ExecutorStatus {
    let mut running: Vec<RunInfo> = state
        .running
        .values()
        .map(|r| {
            let mut info = r.info.clone();
            info.job = r.task.guard.job();
            info.job_state = info.job.and_then(|j| state.slurm.as_ref()?.last_state(j));
            info
        })
        .collect();
    running.sort_by_key(|r| (r.since_ms, r.trial, r.seed));
    let specialists = state
        .specialists
        .iter()
        .map(|s| SpecialistInfo {
            name: s.name.clone(),
            outcomes: s.outcomes,
            state: if state.paused.contains(&s.name) {
                "paused"
            } else if s.asked {
                "asked"
            } else if s.resting {
                "resting"
            } else if s.exhausted {
                "exhausted"
            } else {
                "ready"
            }
            .into(),
        })
        .collect();
    ExecutorStatus {
        slots: state.slots(),
        gpus: state.gpus.as_ref().map(|g| g.status()).unwrap_or_default(),
        running,
        queued: state.queue.iter().map(Job::info).collect(),
        specialists,
        draining: state.draining,
        issued: state.issued,
        slot_busy_s: state.occupancy.busy.as_secs_f64(),
        slot_starved_s: state.occupancy.starved.as_secs_f64(),
        slot_held_s: state.occupancy.held.as_secs_f64(),
        slot_total_s: state.occupancy.total.as_secs_f64(),
        pruned: state.pruned,
        slot_saved_s: state.saved_ms as f64 / 1000.0,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each interval is accounted at the state that held during it.
    #[test]
    fn occupancy_integrates_slot_time_by_state() {
        let mut o = Occupancy::new();
        let t0 = o.since;
        let at = |ms| t0 + Duration::from_millis(ms);
        // Before the first change nothing was known: 0 slots.
        o.change_at(at(100), 2, 0, 2, 0); // 2 free slots, a proposal coming
        o.change_at(at(400), 2, 1, 1, 0); // 300 ms: 2 slots starved
        o.change_at(at(1400), 2, 2, 0, 0); // 1 s: 1 busy, 1 starved
        o.change_at(at(2400), 2, 0, 0, 0); // 1 s: 2 busy
        o.change_at(at(3400), 3, 1, 0, 2); // 1 s: nothing running, nothing coming
        o.change_at(at(3900), 3, 1, 0, 0); // 0.5 s: 1 of 3 busy, 2 held
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(o.starved), 2 * 300 + 1000);
        assert_eq!(ms(o.busy), 1000 + 2 * 1000 + 500);
        assert_eq!(ms(o.held), 2 * 500);
        assert_eq!(
            ms(o.total),
            2 * 300 + 2 * 1000 + 2 * 1000 + 2 * 1000 + 3 * 500
        );
    }
}
