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
use crate::lineage::actor::{Change, LineageMsg};

/// Time limit of a call to another actor, in milliseconds.
pub const CALL_TIMEOUT_MS: u64 = 30_000;

/// Records a change of a trial in lineage and returns the trial after it.
pub async fn update_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    change: Change,
) -> Result<Trial, String> {
    call_change(lineage, |reply| LineageMsg::Update(id, change, reply)).await
}

/// Adds seed runs or a noise band to a trial, even a terminal one (lineage
/// refuses any other change).
pub async fn measure_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    change: Change,
) -> Result<Trial, String> {
    call_change(lineage, |reply| LineageMsg::Measure(id, change, reply)).await
}

async fn call_change(
    lineage: &ActorRef<LineageMsg>,
    msg: impl FnOnce(RpcReplyPort<Result<Trial, String>>) -> LineageMsg,
) -> Result<Trial, String> {
    let r: Result<Result<Trial, String>, _> = ractor::call_t!(lineage, msg, CALL_TIMEOUT_MS);
    r.map_err(|e| format!("lineage unavailable: {e}"))?
}

/// The change that marks a trial `interrupted`.
pub fn interrupt(why: &'static str) -> Change {
    Box::new(move |t: &mut Trial| {
        t.status = TrialStatus::Interrupted;
        t.label = Some(FailureLabel::Interrupted);
        t.detail = Some(why.to_string());
    })
}

/// Records each trial `interrupted`, on a clean stop of the actor that ran them.
pub async fn interrupt_all(lineage: &ActorRef<LineageMsg>, ids: Vec<TrialId>, why: &'static str) {
    for id in ids {
        let _ = update_trial(lineage, id, interrupt(why)).await;
    }
}
