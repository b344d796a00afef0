//! Proposal strategies, free of actors and I/O: given a surface's parameter
//! space and the configuration to start from, produce candidate edits.

pub mod constraints;
pub mod model;
pub mod prompt;
pub mod reply;
pub mod rng;
pub mod schema;
pub mod search;
