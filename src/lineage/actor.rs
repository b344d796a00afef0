//! The lineage actor: the only owner of the sled database while ratchet runs.
//! Every write is flushed before the reply, and every trial change is published
//! to the observer (the foreground progress display, later the control socket).

use std::path::PathBuf;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info};

use std::collections::BTreeMap;

use super::{Feedback, FeedbackQuery, LineageError, LineageStore, NewTrial, Summary};
use crate::domain::{FailureLabel, Incumbent, Params, Trial, TrialId, TrialStatus};

/// What observers of a running ratchet hear about.
#[derive(Clone, Debug)]
pub enum RunEvent {
    /// A trial was recorded or changed; the record after the change.
    Trial(Box<Trial>),
    /// The executor will start nothing more: every issued trial has left its
    /// slot and no proposal is coming (trial budget reached or all specialists
    /// exhausted). `issued` counts trials proposed in this process.
    Drained { issued: u64 },
}

pub type Observer = UnboundedSender<RunEvent>;

/// What a change of a trial sets besides its status (which it may not
/// touch: a status moves only as a request of the state machine).
pub type Set = Box<dyn Fn(&mut Trial) + Send + Sync>;

pub enum LineageMsg {
    Propose(NewTrial, RpcReplyPort<Reply>),
    /// Moves a trial to a status (a request of the state machine, which
    /// lineage refuses when the move is not allowed) or leaves it, and sets
    /// what comes with it.
    Update {
        id: TrialId,
        to: Option<TrialStatus>,
        set: Set,
        reply: RpcReplyPort<Reply>,
    },
    /// Adds seed runs and a noise band to a trial, even a terminal one.
    Measure(TrialId, Set, RpcReplyPort<Reply>),
    Get(TrialId, RpcReplyPort<Option<Trial>>),
    Incumbent(RpcReplyPort<Option<Incumbent>>),
    /// Which of these configurations lineage has never seen (by index).
    Unknown(Vec<Params>, RpcReplyPort<Vec<bool>>),
    /// Trials that are not terminal, in id order (recovery, status).
    Active(RpcReplyPort<Vec<Trial>>),
    /// What proposers read: the latest trials, label counts, incumbent history.
    Feedback(FeedbackQuery, RpcReplyPort<Feedback>),
    /// The lineage in figures (`ratchet status`).
    Summary(RpcReplyPort<Summary>),
    /// Pauses (`true`) or resumes specialists; answers the names whose
    /// state changed. Durable before the reply.
    SetPaused(Vec<String>, bool, RpcReplyPort<Vec<String>>),
    /// Paused specialists and since when (ms).
    Paused(RpcReplyPort<BTreeMap<String, u64>>),
    /// A handle on the open database for reads that should not queue
    /// behind writes (the control socket's lineage reads, exports, search
    /// specialists).
    Reader(RpcReplyPort<LineageStore>),
    /// A daemon event such as a specialist crash.
    Event {
        kind: String,
        subject: String,
        detail: String,
    },
}

pub struct Lineage;

/// How long a start waits for another process's lock on the lineage.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct LineageArgs {
    pub dir: PathBuf,
    pub observer: Option<Observer>,
}

pub struct LineageState {
    store: LineageStore,
    observer: Option<Observer>,
}

impl LineageState {
    fn publish(&self, trial: &Trial) {
        if let Some(o) = &self.observer {
            let _ = o.send(RunEvent::Trial(Box::new(trial.clone())));
        }
    }
}

impl Actor for Lineage {
    type Msg = LineageMsg;
    type State = LineageState;
    type Arguments = LineageArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: LineageArgs,
    ) -> Result<LineageState, ActorProcessingErr> {
        // A CLI command (`status`, `lineage list` with no daemon up) holds
        // the lock for a moment: wait it out rather than fail the start.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let store = loop {
            match LineageStore::open(&args.dir) {
                Err(LineageError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        info!(dir = %args.dir.display(), trials = store.trial_count(), "lineage opened");
        Ok(LineageState {
            store,
            observer: args.observer,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut LineageState,
    ) -> Result<(), ActorProcessingErr> {
        state.store.flush().await?;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: LineageMsg,
        state: &mut LineageState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LineageMsg::Propose(new, reply) => {
                let result = write(state, |s| s.propose(new)).await;
                reply_fatal(reply, result)?;
            }
            LineageMsg::Measure(id, change, reply) => {
                let result = write(state, |s| s.measure(id, change)).await;
                match result {
                    Err(e @ (LineageError::NotAMeasurement(_) | LineageError::NoSuchTrial(_))) => {
                        error!(trial = %id, error = %e, "refused lineage measurement");
                        let _ = reply.send(Err(Arc::new(e)));
                    }
                    other => reply_fatal(reply, other)?,
                }
            }
            LineageMsg::Update { id, to, set, reply } => {
                let result = write(state, |s| s.update(id, to, set)).await;
                // A refused transition is the caller's bug, not a storage failure.
                match result {
                    Err(
                        e @ (LineageError::BadTransition { .. }
                        | LineageError::StatusBySetter(_)
                        | LineageError::NoSuchTrial(_)),
                    ) => {
                        error!(trial = %id, error = %e, "refused lineage update");
                        let _ = reply.send(Err(Arc::new(e)));
                    }
                    other => reply_fatal(reply, other)?,
                }
            }
            LineageMsg::Get(id, reply) => {
                let _ = reply.send(state.store.get(id)?);
            }
            LineageMsg::Incumbent(reply) => {
                let _ = reply.send(state.store.incumbent()?);
            }
            LineageMsg::Unknown(configs, reply) => {
                let mut out = Vec::with_capacity(configs.len());
                for c in &configs {
                    out.push(!state.store.knows(c)?);
                }
                let _ = reply.send(out);
            }
            LineageMsg::Active(reply) => {
                let _ = reply.send(state.store.active()?);
            }
            LineageMsg::Feedback(query, reply) => {
                let _ = reply.send(state.store.feedback(query)?);
            }
            LineageMsg::Summary(reply) => {
                let _ = reply.send(state.store.summary()?);
            }
            LineageMsg::SetPaused(names, paused, reply) => {
                let changed = state.store.set_paused(&names, paused)?;
                let _ = reply.send(changed);
            }
            LineageMsg::Paused(reply) => {
                let _ = reply.send(state.store.paused()?);
            }
            LineageMsg::Reader(reply) => {
                let _ = reply.send(state.store.clone());
            }
            LineageMsg::Event {
                kind,
                subject,
                detail,
            } => {
                state.store.record_event(&kind, &subject, &detail)?;
                state.store.flush().await?;
            }
        }
        Ok(())
    }
}

/// Runs a write, flushes it, and publishes the trial it produced.
async fn write(
    state: &mut LineageState,
    op: impl FnOnce(&LineageStore) -> Result<Trial, LineageError>,
) -> Result<Trial, LineageError> {
    let trial = op(&state.store)?;
    state.store.flush().await?;
    state.publish(&trial);
    Ok(trial)
}

/// Replies, and turns a storage failure into the actor's failure: lineage
/// errors are fatal (the supervisor stops the process; systemd restarts it).
fn reply_fatal(
    reply: RpcReplyPort<Reply>,
    result: Result<Trial, LineageError>,
) -> Result<(), ActorProcessingErr> {
    match result {
        Ok(t) => {
            let _ = reply.send(Ok(t));
            Ok(())
        }
        Err(e) => {
            let e = Arc::new(e);
            let _ = reply.send(Err(e.clone()));
            Err(Box::new(e))
        }
    }
}

/// What lineage answers a proposal or a change: the trial after it, or why
/// it was refused (shared: the same error may also stop the lineage actor).
pub type Reply = Result<Trial, Arc<LineageError>>;

/// Why a change asked of lineage did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LineageCallError {
    /// The lineage actor did not answer (stopped, or past the call timeout).
    #[error("lineage unavailable: {0}")]
    Unavailable(String),
    /// Lineage refused the change (an illegal move, no such trial) or could
    /// not store it.
    #[error(transparent)]
    Refused(Arc<LineageError>),
}

/// Time limit of a call to another actor (lineage or any other), in
/// milliseconds.
pub const CALL_TIMEOUT_MS: u64 = 30_000;

/// Records a change of a trial's fields in lineage (its status stays) and
/// returns the trial after it.
pub async fn update_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    set: Set,
) -> Result<Trial, LineageCallError> {
    update(lineage, id, None, set).await
}

/// Moves a trial to `to` in lineage (which refuses a move the state machine
/// does not allow), with what `set` records alongside; returns the trial
/// after it.
pub async fn advance_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    to: TrialStatus,
    set: Set,
) -> Result<Trial, LineageCallError> {
    update(lineage, id, Some(to), set).await
}

async fn update(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    to: Option<TrialStatus>,
    set: Set,
) -> Result<Trial, LineageCallError> {
    call_change(lineage, |reply| LineageMsg::Update { id, to, set, reply }).await
}

/// Adds seed runs or a noise band to a trial, even a terminal one (lineage
/// refuses any other change).
pub async fn measure_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    set: Set,
) -> Result<Trial, LineageCallError> {
    call_change(lineage, |reply| LineageMsg::Measure(id, set, reply)).await
}

/// Records a new trial `proposed` (or, for a configuration lineage knew,
/// `failed/duplicate`); returns it as recorded.
pub async fn propose_trial(
    lineage: &ActorRef<LineageMsg>,
    new: NewTrial,
) -> Result<Trial, LineageCallError> {
    call_change(lineage, |reply| LineageMsg::Propose(new, reply)).await
}

async fn call_change(
    lineage: &ActorRef<LineageMsg>,
    msg: impl FnOnce(RpcReplyPort<Reply>) -> LineageMsg,
) -> Result<Trial, LineageCallError> {
    let r: Result<Reply, _> = ractor::call_t!(lineage, msg, CALL_TIMEOUT_MS);
    r.map_err(|e| LineageCallError::Unavailable(e.to_string()))?
        .map_err(LineageCallError::Refused)
}

/// Records a trial `interrupted`, saying why.
pub async fn interrupt(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    why: String,
) -> Result<Trial, LineageCallError> {
    advance_trial(
        lineage,
        id,
        TrialStatus::Interrupted,
        Box::new(move |t: &mut Trial| {
            t.label = Some(FailureLabel::Interrupted);
            t.detail = Some(why.clone());
        }),
    )
    .await
}

/// Records each trial `interrupted`, on a clean stop of the actor that ran them.
pub async fn interrupt_all(lineage: &ActorRef<LineageMsg>, ids: Vec<TrialId>, why: &'static str) {
    for id in ids {
        let _ = interrupt(lineage, id, why.to_string()).await;
    }
}
