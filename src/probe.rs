//! Timing probes of the loop's own work per trial, for `ratchet bench loop`.
//!
//! Off unless a benchmark turns it on: every probe is then one relaxed
//! atomic load. When on, the actors add the time they spend on a trial
//! (proposing it, recording it, preparing and starting its processes,
//! collecting their results) and the time its child processes ran, so the
//! benchmark can tell ratchet's overhead from the experiment's work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::domain::TrialId;

/// What a span of time was spent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// A search specialist's `Propose`: incumbent, candidates, failure
    /// model, recording the proposal.
    Propose,
    /// The executor recording a proposal `queued`.
    Record,
    /// From a slot taken to the train process started: commit, export,
    /// `running` recorded, spawn (train and seed re-runs).
    Dispatch,
    /// From a train process's exit to the executor having handled it.
    Reap,
    /// The evaluator's work: recording the train result, starting each eval
    /// (restoring protected files, spawn), and handling each eval's result
    /// (recording it and taking the next step).
    Evaluate,
    /// Child processes running (train and eval): the experiment's work.
    Child,
    /// A finished process's result waiting in the evaluator's mailbox behind
    /// other trials' (a queue, not work: only a loop with no-op trials fills it).
    Waiting,
}

pub const STAGES: [Stage; 7] = [
    Stage::Propose,
    Stage::Record,
    Stage::Dispatch,
    Stage::Reap,
    Stage::Evaluate,
    Stage::Child,
    Stage::Waiting,
];

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Propose => "propose",
            Stage::Record => "record",
            Stage::Dispatch => "dispatch",
            Stage::Reap => "reap",
            Stage::Evaluate => "evaluate",
            Stage::Child => "child processes",
            Stage::Waiting => "waiting",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Spans {
    /// Time per trial and stage.
    total: HashMap<(TrialId, Stage), Duration>,
    /// Open marks (a process exit waiting to be handled), by trial and seed.
    marks: HashMap<(TrialId, u64), Instant>,
}

fn spans() -> &'static Mutex<Spans> {
    static SPANS: OnceLock<Mutex<Spans>> = OnceLock::new();
    SPANS.get_or_init(Default::default)
}

/// Turns the probes on (and clears what they gathered).
pub fn enable() {
    *spans().lock().expect("probe lock") = Spans::default();
    ON.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Adds `d` to the trial's time in `stage`.
pub fn add(trial: TrialId, stage: Stage, d: Duration) {
    if !enabled() {
        return;
    }
    *spans()
        .lock()
        .expect("probe lock")
        .total
        .entry((trial, stage))
        .or_default() += d;
}

/// Adds the time since `since` to the trial's time in `stage`.
pub fn since(trial: TrialId, stage: Stage, since: Instant) {
    if enabled() {
        add(trial, stage, since.elapsed());
    }
}

/// Marks now for a run of a trial (a process that just exited).
pub fn mark(trial: TrialId, seed: u64) {
    if enabled() {
        spans()
            .lock()
            .expect("probe lock")
            .marks
            .insert((trial, seed), Instant::now());
    }
}

/// Adds the time since the run's mark (if any) to `stage` and clears it.
pub fn since_mark(trial: TrialId, seed: u64, stage: Stage) {
    if !enabled() {
        return;
    }
    let mark = spans()
        .lock()
        .expect("probe lock")
        .marks
        .remove(&(trial, seed));
    if let Some(m) = mark {
        add(trial, stage, m.elapsed());
    }
}

/// What was gathered, per trial: the time in each stage.
pub fn take() -> HashMap<TrialId, HashMap<Stage, Duration>> {
    let spans = std::mem::take(&mut *spans().lock().expect("probe lock"));
    let mut out: HashMap<TrialId, HashMap<Stage, Duration>> = HashMap::new();
    for ((trial, stage), d) in spans.total {
        *out.entry(trial).or_default().entry(stage).or_default() += d;
    }
    out
}
