//! `ratchet bench ...`: benchmarks that print figures.
//!
//! - `lineage.rs`: a synthetic lineage of N trials and the read paths people
//!   use on it (list, status, export), timed and measured for memory.
//! - `looping.rs`: the research loop itself on a no-op experiment: the
//!   orchestration time per trial and the slot time the loop leaves idle.

pub mod lineage;
pub mod looping;

pub use lineage::lineage_command;
pub use looping::loop_command;
