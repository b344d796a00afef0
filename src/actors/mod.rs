//! The actor tree (ractor on tokio): Supervisor → Lineage, Evaluator, Executor,
//! one Specialist per `[[specialist]]`. See ARCHITECTURE.md for the messages.

pub mod evaluator;
pub mod executor;
pub mod specialist;
pub mod supervisor;

use ractor::{ActorRef, RpcReplyPort};

use crate::domain::{Trial, TrialId};
use crate::lineage::actor::{Change, LineageMsg};

/// Time limit of a call to another actor, in milliseconds.
pub const CALL_TIMEOUT_MS: u64 = 30_000;

/// Records a change of a trial in lineage and returns the trial after it.
pub async fn update_trial(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    change: Change,
) -> Result<Trial, String> {
    let r: Result<Result<Trial, String>, _> = ractor::call_t!(
        lineage,
        |reply: RpcReplyPort<Result<Trial, String>>| LineageMsg::Update(id, change, reply),
        CALL_TIMEOUT_MS
    );
    r.map_err(|e| format!("lineage unavailable: {e}"))?
}
