//! The actor tree (ractor on tokio): Supervisor → Lineage, Evaluator, Executor,
//! one Specialist per `[[specialist]]`; what they send each other is in
//! `messages`.

pub mod evaluator;
pub mod executor;
pub mod messages;
pub mod specialist;
pub mod supervisor;

use ractor::{ActorRef, RpcReplyPort};

use crate::domain::{FailureLabel, Trial, TrialId, TrialStatus};
use crate::lineage::actor::{LineageMsg, Set};

/// Time limit of a call to another actor, in milliseconds.
pub const CALL_TIMEOUT_MS: u64 = 30_000;

/// Records a change of a trial's fields in lineage (its status stays) and
/// returns the trial after it.
pub async fn update_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    set: Set,
) -> Result<Trial, String> {
    call_change(lineage, |reply| LineageMsg::Update {
        id,
        to: None,
        set,
        reply,
    })
    .await
}

/// Moves a trial to `to` in lineage (which refuses a move the state machine
/// does not allow), with what `set` records alongside; returns the trial
/// after it.
pub async fn advance_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    to: TrialStatus,
    set: Set,
) -> Result<Trial, String> {
    call_change(lineage, |reply| LineageMsg::Update {
        id,
        to: Some(to),
        set,
        reply,
    })
    .await
}

/// Adds seed runs or a noise band to a trial, even a terminal one (lineage
/// refuses any other change).
pub async fn measure_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    set: Set,
) -> Result<Trial, String> {
    call_change(lineage, |reply| LineageMsg::Measure(id, set, reply)).await
}

async fn call_change(
    lineage: &ActorRef<LineageMsg>,
    msg: impl FnOnce(RpcReplyPort<Result<Trial, String>>) -> LineageMsg,
) -> Result<Trial, String> {
    let r: Result<Result<Trial, String>, _> = ractor::call_t!(lineage, msg, CALL_TIMEOUT_MS);
    r.map_err(|e| format!("lineage unavailable: {e}"))?
}

/// Records a trial `interrupted`, saying why.
pub async fn interrupt(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    why: String,
) -> Result<Trial, String> {
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
