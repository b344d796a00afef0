//! Every message the actors send each other, and what they answer: the
//! protocols live here so that no actor file imports another (the
//! supervisor, which spawns them, aside).

use std::collections::BTreeSet;
use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::allocation::Outcomes;
use crate::config::Config;
use crate::domain::{Params, ProcessReport, Trial, TrialId};
use crate::gpu::{GpuSlot, Lease};
use crate::judge::Bars;
use crate::lineage::Summary;
use crate::llm::{Completion, Failure, LlmClient};
use crate::runner::Ran;

pub enum ExecutorMsg {
    /// The specialists to ask for proposals (sent again after a restart).
    SetSpecialists(Vec<(String, ActorRef<SpecialistMsg>)>),
    SetEvaluator(ActorRef<EvaluatorMsg>),
    /// A specialist's answer to `Propose`: a trial recorded in lineage, or none.
    Proposed {
        specialist: String,
        trial: Option<Box<Trial>>,
    },
    /// A train run ended (from its task): the trial's own (seed 0) or a
    /// seed re-run.
    TrainFinished {
        id: TrialId,
        seed: u64,
        ran: Ran,
    },
    /// The evaluator wants seed re-runs of a trial (confirmation and noise
    /// band): they go ahead of the queue.
    RunSeeds {
        trial: Box<Trial>,
        seeds: Vec<u64>,
    },
    /// A trial the evaluator recorded (a rebase onto a moved incumbent): it
    /// goes ahead of the queue.
    Enqueue(Box<Trial>),
    /// A trial reached its outcome (from the evaluator).
    Settled(TrialId),
    /// The incumbent moved: specialists that ran out of ideas may have new ones.
    IncumbentChanged,
    /// A specialist has nothing now but rests and will send `Wake`.
    Resting(String),
    /// A resting specialist can propose again.
    Wake(String),
    /// The specialists that are paused now (they are not asked; what they
    /// proposed before still runs).
    SetPaused(BTreeSet<String>),
    /// Shutting down: ask no specialist and start no new trial; seed re-runs
    /// of trials already being evaluated still start, so they can finish.
    Drain,
    /// A reloaded configuration (slots; the experiment stays as it started).
    Reconfigure(Arc<Config>),
    /// Stops the named specialists' trials that run or wait for a slot
    /// (their own runs; a candidate's seed re-runs finish) and records them
    /// `interrupted`; answers their ids.
    Cancel(BTreeSet<String>, RpcReplyPort<Vec<TrialId>>),
    Status(RpcReplyPort<ExecutorStatus>),
    /// An eval freed a GPU slot: a queued run may start.
    GpuFreed,
    /// What a trial's own run is held to while it trains (`[prune]`, from
    /// the evaluator whenever the incumbent or the pooled spreads change):
    /// the incumbent's curves, and its mean train time.
    Bars(Option<Arc<(Bars, u64)>>),
}

/// What the executor is doing, for `ratchet status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutorStatus {
    pub slots: usize,
    /// Runs in slots, oldest first.
    pub running: Vec<RunInfo>,
    /// Runs waiting for a slot, next first.
    pub queued: Vec<RunInfo>,
    /// Every specialist the executor asks, in order, with its state.
    pub specialists: Vec<SpecialistInfo>,
    /// GPU slots (`executor.gpus`): devices, the run holding each, and why
    /// one is out of rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuSlot>,
    pub draining: bool,
    /// Trials proposed in this process.
    pub issued: u64,
    /// Slot-seconds with a run in the slot, since the executor started.
    #[serde(default)]
    pub slot_busy_s: f64,
    /// Slot-seconds with no run in the slot while work was on its way (a
    /// proposal being made): time the loop itself cost the slots.
    #[serde(default)]
    pub slot_starved_s: f64,
    /// Slot-seconds with no run in the slot because a candidate was being
    /// confirmed (`daemon.confirm_first`).
    #[serde(default)]
    pub slot_held_s: f64,
    /// All slot-seconds since the executor started (slots × time).
    #[serde(default)]
    pub slot_total_s: f64,
    /// Runs stopped early since the executor started (`[prune]`) ...
    #[serde(default)]
    pub pruned: u64,
    /// ... and the slot-seconds that saved (the incumbent's train time
    /// less theirs).
    #[serde(default)]
    pub slot_saved_s: f64,
    /// Trials the pre-flight check failed since the executor started ...
    #[serde(default)]
    pub preflight_failed: u64,
    /// ... and the train time they did not spend (their budget).
    #[serde(default)]
    pub preflight_saved_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub trial: TrialId,
    /// 0: the trial's own run; otherwise a seed re-run.
    pub seed: u64,
    pub specialist: String,
    pub attempt: u32,
    /// When it started (ms since the epoch; for queued runs, when queued).
    pub since_ms: u64,
    /// Its Slurm job, once submitted (the Slurm backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
    /// The job's state at squeue's last answer (`PENDING`, `RUNNING`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_state: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpecialistInfo {
    pub name: String,
    /// `paused`, `asked` (a proposal is being made), `resting`, `exhausted`
    /// (nothing new at this incumbent) or `ready`.
    pub state: String,
    /// Its trials that reached a decision or failed, and how many of them
    /// were kept (what `daemon.allocation = "yield"` shares asks by).
    #[serde(default)]
    pub outcomes: Outcomes,
}

/// Who proposes scouts, in lineage.
pub const SCOUT: &str = "scout";

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

pub enum SpecialistMsg {
    /// Propose one trial and send it (or `None`) to `reply_to`.
    Propose { reply_to: ActorRef<ExecutorMsg> },
    /// An LLM request ended (from its task).
    Replied(Box<Replied>),
    /// A rest is over: tell the executor this specialist can propose again.
    Wake,
    /// A manual specialist's inbox was empty when it was asked: look again,
    /// and wake the executor's asks once a proposal is there.
    WatchInbox,
}

/// What an LLM request task reports.
pub struct Replied {
    /// `None` when the request task died with it.
    pub client: Option<LlmClient>,
    pub result: Result<Completion, Failure>,
    /// The incumbent the prompt showed: the trial's parent.
    pub parent: Option<TrialId>,
    pub config: Params,
}

pub enum SupervisorMsg {
    RestartSpecialist(String),
    /// What runs, for `ratchet status`.
    Status(RpcReplyPort<Result<LiveStatus, Refused>>),
    /// Pauses (`paused`) or resumes the named specialists, or every
    /// configured one (`names: None`); the state is stored in lineage first.
    /// Answers the names whose state changed, or an error naming unknown
    /// ones. With `cancel`, their trials that run or wait for a slot are
    /// stopped too (answered as the second list).
    Pause {
        names: Option<Vec<String>>,
        paused: bool,
        cancel: bool,
        reply: RpcReplyPort<PauseAnswer>,
    },
    /// A validated configuration to apply without stopping running trials.
    Reload(Box<Config>, RpcReplyPort<ReloadReport>),
    /// Shutting down: no new trial starts; running ones finish.
    Drain,
    /// A read handle on lineage (see `LineageMsg::Reader`).
    Reader(RpcReplyPort<crate::lineage::LineageStore>),
}

/// A running ratchet as `ratchet status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveStatus {
    pub executor: ExecutorStatus,
    pub lineage: Summary,
    /// Trials not yet terminal, oldest first.
    pub active: Vec<Trial>,
    /// The configured specialists, in order.
    pub specialists: Vec<String>,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// `(before, after)` when `daemon.slots` changed.
    pub slots: Option<(usize, usize)>,
    /// Settings that changed in the file and apply only at the next start.
    pub at_restart: Vec<String>,
}

/// The specialists whose pause state changed, and the trials cancelled.
pub type PauseAnswer = Result<(Vec<String>, Vec<TrialId>), Refused>;

/// Why the supervisor could not do what a control request asked.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// An actor it asks did not answer in time (busy or stopping).
    #[error("ratchet is busy or stopping: {0}")]
    Busy(String),
    /// The request named specialists that are not configured (the words say
    /// which).
    #[error("{0}")]
    Unknown(String),
}
