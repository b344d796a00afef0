//! The supervisor: root of the actor tree. It spawns and wires the children and
//! applies the restart policy:
//!
//! - Lineage fails → fatal: the supervisor stops with an error (the process
//!   exits non-zero; under systemd it is restarted and recovery runs).
//! - A specialist fails → a `proposer_error` event is recorded and it is
//!   restarted after a backoff (1 s doubling to 60 s).
//! - Executor or evaluator fails → restarted at once; the new one recovers from
//!   lineage (in-flight trials interrupted / evaluations re-run).
//!
//! Children are stopped in dependency order: specialists, executor, evaluator,
//! lineage last, so every stop is recorded.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{error, info, warn};

use super::evaluator::{Evaluator, EvaluatorArgs};
use super::executor::{Executor, ExecutorArgs};
use super::messages::{
    EvaluatorMsg, ExecutorMsg, LiveStatus, PauseAnswer, Refused, ReloadReport, SpecialistMsg,
    SupervisorMsg,
};
use super::specialist::{Specialist, SpecialistArgs};
use super::CALL_TIMEOUT_MS;
use crate::config::Config;
use crate::gpu::{self, Gpus, Placement};
use crate::lineage::actor::{Lineage, LineageArgs, LineageMsg, Observer};
use crate::runner::Workshop;
use crate::slurm::{JobKind, Slurm};

pub struct Supervisor;

pub struct SupervisorArgs {
    pub config: Arc<Config>,
    pub observer: Option<Observer>,
    pub max_trials: Option<u64>,
}

/// What every child is started with; fixed for the life of the supervisor.
struct Context {
    config: Arc<Config>,
    observer: Option<Observer>,
    max_trials: Option<u64>,
    /// The git half of every trial (the repository and its base commit).
    workshop: Workshop,
    /// The Slurm backend (one tracker for the executor's and the
    /// evaluator's jobs); `None`: runs are local.
    slurm: Option<Arc<Slurm>>,
    /// GPU slots (`executor.gpus`, devices found); `None`: CPU slots.
    gpus: Option<Arc<Gpus>>,
}

pub struct SupervisorState {
    ctx: Context,
    lineage: ActorRef<LineageMsg>,
    evaluator: ActorRef<EvaluatorMsg>,
    executor: ActorRef<ExecutorMsg>,
    specialists: HashMap<String, ActorRef<SpecialistMsg>>,
    /// Failures per specialist, for the backoff.
    failures: HashMap<String, u32>,
    incarnations: u64,
    stopping: bool,
    draining: bool,
}

const STOP_WAIT: Duration = Duration::from_secs(30);

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let cell = myself.get_cell();
        let (lineage, _) = Actor::spawn_linked(
            None,
            Lineage,
            LineageArgs {
                dir: args.config.lineage_dir.clone(),
                observer: args.observer.clone(),
            },
            cell.clone(),
        )
        .await?;
        let ctx = prepare(args, &lineage).await?;
        let evaluator = spawn_evaluator(&ctx, &lineage, cell.clone()).await?;
        let executor = spawn_executor(&ctx, &lineage, &evaluator, cell.clone()).await?;
        evaluator.cast(EvaluatorMsg::SetExecutor(executor.clone()))?;
        let mut state = SupervisorState {
            ctx,
            lineage,
            evaluator,
            executor,
            specialists: HashMap::new(),
            failures: HashMap::new(),
            incarnations: 0,
            stopping: false,
            draining: false,
        };
        for s in state.ctx.config.specialists.clone() {
            spawn_specialist(&mut state, &s.name, cell.clone()).await?;
        }
        announce_specialists(&state)?;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        for s in state.specialists.values() {
            let _ = s.stop_and_wait(None, Some(STOP_WAIT)).await;
        }
        let _ = state.executor.stop_and_wait(None, Some(STOP_WAIT)).await;
        let _ = state.evaluator.stop_and_wait(None, Some(STOP_WAIT)).await;
        let _ = state.lineage.stop_and_wait(None, Some(STOP_WAIT)).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::RestartSpecialist(name) => {
                if !state.stopping && !state.specialists.contains_key(&name) {
                    // A restart that fails at its start (its pre_start) is
                    // one more failure of the specialist, not the tree's.
                    if let Err(e) = spawn_specialist(state, &name, myself.get_cell()).await {
                        return specialist_failed(&myself, state, name, e.to_string());
                    }
                    announce_specialists(state)?;
                }
            }
            SupervisorMsg::Status(reply) => {
                let _ = reply.send(live_status(state).await);
            }
            SupervisorMsg::Pause {
                names,
                paused,
                cancel,
                reply,
            } => {
                let _ = reply.send(pause(state, names, paused, cancel).await);
            }
            SupervisorMsg::Reload(config, reply) => {
                let report = reload(state, *config, myself.get_cell()).await?;
                let _ = reply.send(report);
            }
            SupervisorMsg::Drain => {
                state.draining = true;
                state.executor.cast(ExecutorMsg::Drain)?;
            }
            SupervisorMsg::Reader(reply) => {
                let store = ractor::call_t!(state.lineage, LineageMsg::Reader, CALL_TIMEOUT_MS)?;
                let _ = reply.send(store);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        if id == state.lineage.get_id() {
            error!(reason = %reason, "lineage failed; stopping (lineage failures are fatal)");
            return Err(format!("lineage failed: {reason}").into());
        }
        if id == state.executor.get_id() {
            warn!(reason = %reason, "executor stopped; restarting it");
            let cell = myself.get_cell();
            state.executor =
                spawn_executor(&state.ctx, &state.lineage, &state.evaluator, cell).await?;
            state
                .evaluator
                .cast(EvaluatorMsg::SetExecutor(state.executor.clone()))?;
            if state.draining {
                state.executor.cast(ExecutorMsg::Drain)?;
            }
            return announce_specialists(state);
        }
        if id == state.evaluator.get_id() {
            warn!(reason = %reason, "evaluator stopped; restarting it");
            state.evaluator =
                spawn_evaluator(&state.ctx, &state.lineage, myself.get_cell()).await?;
            state
                .evaluator
                .cast(EvaluatorMsg::SetExecutor(state.executor.clone()))?;
            state
                .executor
                .cast(ExecutorMsg::SetEvaluator(state.evaluator.clone()))?;
            return Ok(());
        }
        let Some(name) = state
            .specialists
            .iter()
            .find(|(_, r)| r.get_id() == id)
            .map(|(n, _)| n.clone())
        else {
            return Ok(());
        };
        state.specialists.remove(&name);
        announce_specialists(state)?;
        specialist_failed(&myself, state, name, reason)
    }
}

/// A specialist failed (or failed to start again): recorded as a
/// `proposer_error` event, and restarted after a backoff of 1 s doubling
/// per failure up to 60 s.
fn specialist_failed(
    myself: &ActorRef<SupervisorMsg>,
    state: &mut SupervisorState,
    name: String,
    reason: String,
) -> Result<(), ActorProcessingErr> {
    let failures = state.failures.entry(name.clone()).or_insert(0);
    *failures += 1;
    let backoff = Duration::from_secs((1u64 << (*failures - 1).min(6)).min(60));
    warn!(specialist = %name, reason = %reason, backoff_secs = backoff.as_secs(), "specialist failed; restarting after backoff");
    state.lineage.cast(LineageMsg::Event {
        kind: "proposer_error".into(),
        subject: name.clone(),
        detail: reason,
    })?;
    let me = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(backoff).await;
        let _ = me.cast(SupervisorMsg::RestartSpecialist(name));
    });
    Ok(())
}

/// Opens (or creates) the experiment's repository and its base commit, and
/// points `ratchet/incumbent` at lineage's incumbent: lineage is the source of
/// truth, the ref follows it (also after a crash between the two writes).
async fn prepare(
    args: SupervisorArgs,
    lineage: &ActorRef<LineageMsg>,
) -> Result<Context, ActorProcessingErr> {
    let incumbent = ractor::call_t!(lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
    let (dir, skip) = (
        args.config.experiment.dir.clone(),
        args.config.lineage_dir.clone(),
    );
    let workshop = Workshop::open(dir, skip, incumbent.and_then(|i| i.commit)).await?;
    let slurm = Slurm::of(&args.config);
    if let Some(slurm) = &slurm {
        slurm.check().await?;
        // Evaluations start over after a restart: eval jobs left by the
        // previous process are cancelled before the evaluator submits any.
        // (The executor adopts or cancels train jobs itself.)
        match slurm.ours().await {
            Ok(found) => {
                let stale: Vec<u64> = found
                    .iter()
                    .filter(|f| f.kind != JobKind::Train && !f.state.is_terminal())
                    .map(|f| f.job)
                    .collect();
                if !stale.is_empty() {
                    warn!(jobs = ?stale, "cancelling eval jobs left by the previous ratchet");
                    tokio::task::spawn_blocking(move || crate::slurm::cancel_now(&stale)).await?;
                }
            }
            Err(e) => warn!(error = %e, "cannot list this lineage's Slurm jobs"),
        }
    }
    let mut config = args.config;
    // GPU slots are for local runs; under Slurm, the cluster hands out GPUs.
    let placement = match slurm {
        Some(_) => Placement::Cpu { why: None },
        None => gpu::place(config.gpus.as_ref()).await?,
    };
    match &placement {
        Placement::Cpu { why: None } => {}
        // GPUs were asked for and cannot be had: worth a warning.
        Placement::Cpu { why: Some(_) } => warn!("{}", placement.describe(config.slots)),
        Placement::Gpus { .. } => info!("{}", placement.describe(config.slots)),
    }
    let gpus = match placement {
        Placement::Cpu { .. } => None,
        Placement::Gpus { sets, .. } => {
            let poll = config
                .gpus
                .as_ref()
                .map_or(Duration::from_secs(1), |g| g.poll);
            config = Arc::new(Config {
                slots: sets.len(),
                gpu_slots: true,
                ..(*config).clone()
            });
            Some(Gpus::start(sets, poll))
        }
    };
    Ok(Context {
        config,
        observer: args.observer,
        max_trials: args.max_trials,
        workshop,
        slurm,
        gpus,
    })
}

async fn spawn_evaluator(
    ctx: &Context,
    lineage: &ActorRef<LineageMsg>,
    cell: ActorCell,
) -> Result<ActorRef<EvaluatorMsg>, ActorProcessingErr> {
    let args = EvaluatorArgs {
        config: ctx.config.clone(),
        lineage: lineage.clone(),
        workshop: ctx.workshop.clone(),
        slurm: ctx.slurm.clone(),
        gpus: ctx
            .gpus
            .clone()
            .filter(|_| ctx.config.gpus.as_ref().is_some_and(|g| g.evals)),
    };
    Ok(Actor::spawn_linked(None, Evaluator, args, cell).await?.0)
}

async fn spawn_executor(
    ctx: &Context,
    lineage: &ActorRef<LineageMsg>,
    evaluator: &ActorRef<EvaluatorMsg>,
    cell: ActorCell,
) -> Result<ActorRef<ExecutorMsg>, ActorProcessingErr> {
    let args = ExecutorArgs {
        config: ctx.config.clone(),
        lineage: lineage.clone(),
        evaluator: evaluator.clone(),
        observer: ctx.observer.clone(),
        max_trials: ctx.max_trials,
        workshop: ctx.workshop.clone(),
        slurm: ctx.slurm.clone(),
        gpus: ctx.gpus.clone(),
    };
    Ok(Actor::spawn_linked(None, Executor, args, cell).await?.0)
}

async fn spawn_specialist(
    state: &mut SupervisorState,
    name: &str,
    cell: ActorCell,
) -> Result<(), ActorProcessingErr> {
    let Some(config) = state
        .ctx
        .config
        .specialists
        .iter()
        .find(|s| s.name == name)
        .cloned()
    else {
        return Ok(());
    };
    state.incarnations += 1;
    let args = SpecialistArgs {
        config,
        experiment: Arc::new(state.ctx.config.experiment.clone()),
        lineage: state.lineage.clone(),
        seed: state.ctx.config.seed,
        incarnation: state.incarnations,
        lineage_dir: state.ctx.config.lineage_dir.clone(),
        workshop: state.ctx.workshop.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, Specialist, args, cell).await?;
    state.specialists.insert(name.to_string(), actor);
    Ok(())
}

async fn live_status(state: &SupervisorState) -> Result<LiveStatus, Refused> {
    let e = Refused::Busy;
    let executor = ractor::call_t!(state.executor, ExecutorMsg::Status, CALL_TIMEOUT_MS)
        .map_err(|x| e(x.to_string()))?;
    let lineage = ractor::call_t!(state.lineage, LineageMsg::Summary, CALL_TIMEOUT_MS)
        .map_err(|x| e(x.to_string()))?;
    let active = ractor::call_t!(state.lineage, LineageMsg::Active, CALL_TIMEOUT_MS)
        .map_err(|x| e(x.to_string()))?;
    Ok(LiveStatus {
        executor,
        lineage,
        active,
        specialists: state.ctx.config.specialist_names(),
    })
}

async fn pause(
    state: &SupervisorState,
    names: Option<Vec<String>>,
    paused: bool,
    cancel: bool,
) -> PauseAnswer {
    let names = state
        .ctx
        .config
        .select_specialists(names)
        .map_err(Refused::Unknown)?;
    let selected = names.clone();
    let e = |e: String| Refused::Busy(format!("lineage unavailable: {e}"));
    let changed = ractor::call_t!(
        state.lineage,
        LineageMsg::SetPaused,
        CALL_TIMEOUT_MS,
        names,
        paused
    )
    .map_err(|x| e(x.to_string()))?;
    let now: BTreeSet<String> = ractor::call_t!(state.lineage, LineageMsg::Paused, CALL_TIMEOUT_MS)
        .map_err(|x| e(x.to_string()))?
        .into_keys()
        .collect();
    state
        .executor
        .cast(ExecutorMsg::SetPaused(now))
        .map_err(|x| e(x.to_string()))?;
    for name in &changed {
        let what = if paused { "paused" } else { "resumed" };
        info!(specialist = %name, "{what}");
        let _ = state.lineage.cast(LineageMsg::Event {
            kind: what.into(),
            subject: name.clone(),
            detail: String::new(),
        });
    }
    let cancelled = if cancel {
        ractor::call_t!(
            state.executor,
            ExecutorMsg::Cancel,
            CALL_TIMEOUT_MS,
            selected.into_iter().collect()
        )
        .map_err(|x| Refused::Busy(format!("the executor does not answer: {x}")))?
    } else {
        Vec::new()
    };
    Ok((changed, cancelled))
}

/// Applies a new configuration: specialists added, removed or changed are
/// started, stopped or restarted, slots change; running trials go on. The
/// experiment, the lineage directory, the socket and the dashboard's address stay as they started
/// (reported in `at_restart` when the file changed them).
async fn reload(
    state: &mut SupervisorState,
    new: Config,
    cell: ActorCell,
) -> Result<ReloadReport, ActorProcessingErr> {
    let old = state.ctx.config.clone();
    let mut report = ReloadReport::default();
    if new.lineage_dir != old.lineage_dir {
        report.at_restart.push("daemon.lineage_dir".into());
    }
    if new.socket != old.socket {
        report.at_restart.push("daemon.socket".into());
    }
    if new.http != old.http {
        report.at_restart.push("daemon.http".into());
    }
    if new.experiment.dir != old.experiment.dir
        || format!("{:?}{:?}", new.experiment.file, new.experiment.defaults)
            != format!("{:?}{:?}", old.experiment.file, old.experiment.defaults)
    {
        report.at_restart.push("the experiment".into());
    }
    if new.slurm != old.slurm || new.gpus != old.gpus {
        // Jobs already in the cluster were submitted with the old settings;
        // GPUs are discovered and grouped into slots at start.
        report.at_restart.push("executor".into());
    }
    // On GPU slots, the slots are the device sets found at start.
    let new = Config {
        slots: if old.gpu_slots { old.slots } else { new.slots },
        gpu_slots: old.gpu_slots,
        ..new
    };
    if new.slots != old.slots {
        report.slots = Some((old.slots, new.slots));
    }
    for s in &new.specialists {
        match old.specialists.iter().find(|o| o.name == s.name) {
            None => report.added.push(s.name.clone()),
            Some(o) if o != s => report.changed.push(s.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old.specialists {
        if !new.specialists.iter().any(|s| s.name == o.name) {
            report.removed.push(o.name.clone());
        }
    }
    let applied = Config {
        lineage_dir: old.lineage_dir.clone(),
        socket: old.socket.clone(),
        http: old.http,
        experiment: old.experiment.clone(),
        slurm: old.slurm.clone(),
        gpus: old.gpus.clone(),
        file: old.file.clone(),
        ..new
    };
    state.ctx.config = Arc::new(applied);
    // Out of the map first: the supervision event of a stopped specialist
    // then finds no name and restarts nothing.
    for name in report.removed.iter().chain(&report.changed) {
        state.failures.remove(name);
        if let Some(actor) = state.specialists.remove(name) {
            let _ = actor.stop_and_wait(None, Some(STOP_WAIT)).await;
        }
    }
    for name in report.added.iter().chain(&report.changed) {
        spawn_specialist(state, name, cell.clone()).await?;
    }
    state
        .executor
        .cast(ExecutorMsg::Reconfigure(state.ctx.config.clone()))?;
    announce_specialists(state)?;
    info!(
        added = ?report.added,
        removed = ?report.removed,
        changed = ?report.changed,
        slots = ?report.slots,
        at_restart = ?report.at_restart,
        "configuration reloaded"
    );
    Ok(report)
}

/// Tells the executor which specialists to ask, in configuration order.
fn announce_specialists(state: &SupervisorState) -> Result<(), ActorProcessingErr> {
    let list = state
        .ctx
        .config
        .specialists
        .iter()
        .filter_map(|s| {
            state
                .specialists
                .get(&s.name)
                .map(|r| (s.name.clone(), r.clone()))
        })
        .collect();
    state.executor.cast(ExecutorMsg::SetSpecialists(list))?;
    Ok(())
}
