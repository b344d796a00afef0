//! `ratchet bench ...`: benchmarks that print figures.
//!
//! - `lineage.rs`: a synthetic lineage of N trials and the read paths people
//!   use on it (list, status, export), timed and measured for memory.
//! - `looping.rs`: the research loop itself on a no-op experiment: the
//!   orchestration time per trial and the slot time the loop leaves idle.
//! - `dashboard.rs`: the dashboard and `/metrics` of a real daemon: latency
//!   at N trials, the daemon's extra memory with a page open, and the loop's
//!   speed with a client polling.
//! - `failures.rs`: the failure model on a synthetic experiment with size,
//!   slow and crash regions: how many proposals land in them, with the
//!   labels read for their direction and without.

pub mod dashboard;
pub mod failures;
pub mod lineage;
pub mod llm;
pub mod looping;

pub use lineage::lineage_command;
pub use looping::loop_command;

use std::path::PathBuf;

/// A benchmark's directory: `dir`, or a new one named `ratchet-bench-<name>-<pid>`
/// under the system's temp dir; one that holds a lineage already is refused.
fn root(name: &str, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let root = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("ratchet-bench-{name}-{}", std::process::id())),
    };
    if root.join("lineage").exists() {
        anyhow::bail!(
            "{} already holds a lineage; give a new --dir",
            root.display()
        );
    }
    Ok(root)
}
