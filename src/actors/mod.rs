//! The actor tree (ractor on tokio): Supervisor → Lineage, Evaluator, Executor,
//! one Specialist per `[[specialist]]`; what they send each other is in
//! `messages`.

pub mod evaluator;
pub mod executor;
pub mod messages;
pub mod specialist;
pub mod supervisor;

pub use crate::lineage::actor::{
    advance_trial, interrupt, interrupt_all, measure_trial, propose_trial, update_trial,
    CALL_TIMEOUT_MS,
};
