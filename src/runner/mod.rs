//! Below the actors, which drive it: the mechanics of a trial's runs. How a
//! run is launched on each backend (`launch`), how a trial's own run and its
//! seed re-runs are made and started (`runs`), the git half of every trial
//! (`workshop`), rebases and combinations as new trials (`merged`), and
//! recovery after a crash (`recovery`). Never names an
//! actor: what it needs of lineage it asks the lineage actor, and what it
//! finds it returns.

pub mod launch;
pub mod merged;
pub mod recovery;
pub mod runs;
pub mod workshop;

pub use launch::{Launched, Launcher, Ran};
pub use workshop::Workshop;
