//! Domain types of a trial: ids, statuses, failure labels, decisions, parameter values. No I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod evidence;
mod report;

pub use evidence::*;
pub use report::*;

/// A trial's id: assigned by the lineage store, dense and increasing from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrialId(pub u64);

impl fmt::Display for TrialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TrialId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim_start_matches('#')
            .parse()
            .map(TrialId)
            .map_err(|_| format!("`{s}` is not a trial id (expected a number such as 42)"))
    }
}

/// A commit of the experiment's history, as git names it (40 hex digits):
/// what a trial ran, what was kept. Only provenance turns it into git's own
/// type; everything else passes it on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommitId(String);

impl CommitId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CommitId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(CommitId(s.to_ascii_lowercase()))
        } else {
            Err(format!("`{s}` is not a commit id (40 hex digits)"))
        }
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a trial is in its lifecycle. The state machine, the one place its
/// moves are written (`may_become`; lineage refuses any other):
///
/// ```text
/// Proposed   → Queued | Failed | Interrupted
/// Queued     → Running | Failed | Interrupted
/// Running    → Evaluating | Queued | Failed | Interrupted
/// Evaluating → Kept | Discarded | Failed | Interrupted
/// ```
///
/// `Running → Queued` is a run started again (the cluster lost it, or
/// ratchet stopped while it trained); a decision is made only on a trial
/// that was evaluated; nothing leaves a terminal status (`Kept`,
/// `Discarded`, `Failed`, `Interrupted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    Proposed,
    Queued,
    Running,
    Evaluating,
    Kept,
    Discarded,
    Failed,
    Interrupted,
}

impl TrialStatus {
    /// Whether a trial in this status may move to `to` (see the type).
    pub fn may_become(self, to: TrialStatus) -> bool {
        use TrialStatus::*;
        matches!(
            (self, to),
            (Proposed, Queued | Failed | Interrupted)
                | (Queued, Running | Failed | Interrupted)
                | (Running, Evaluating | Queued | Failed | Interrupted)
                | (Evaluating, Kept | Discarded | Failed | Interrupted)
        )
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Kept | Self::Discarded | Self::Failed | Self::Interrupted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Evaluating => "evaluating",
            Self::Kept => "kept",
            Self::Discarded => "discarded",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a trial failed. Failures are data that later proposals read, never `Err`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureLabel {
    /// The train or eval command exited non-zero or could not start.
    Crash,
    /// Killed at the experiment's hard timeout.
    BudgetOverrun,
    /// The artifact is larger than the size gate.
    SizeFailure,
    /// The score misses the minimum quality gate.
    GateMiss,
    /// The eval command did not print the experiment's metric.
    MetricMissing,
    /// The metric is NaN or infinite.
    Diverged,
    IllegalEdit,
    PatchFailed,
    /// The same configuration was already measured: a proposer bug.
    Duplicate,
    ProposerError,
    /// The daemon stopped or died while the trial was in flight.
    Interrupted,
    /// Killed for going over the experiment's memory limit (`gates.max_memory_mb`).
    OutOfMemory,
    /// Failed with its GPU out of memory (the run's log says so).
    GpuOutOfMemory,
    /// The experiment's pre-flight check failed before the trial trained:
    /// it exited non-zero or timed out (what it printed as a projected
    /// size or metric over a gate is a `size_failure` or `gate_miss`).
    PreflightFailed,
}

impl FailureLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::BudgetOverrun => "budget_overrun",
            Self::SizeFailure => "size_failure",
            Self::GateMiss => "gate_miss",
            Self::MetricMissing => "metric_missing",
            Self::Diverged => "diverged",
            Self::IllegalEdit => "illegal_edit",
            Self::PatchFailed => "patch_failed",
            Self::Duplicate => "duplicate",
            Self::ProposerError => "proposer_error",
            Self::Interrupted => "interrupted",
            Self::OutOfMemory => "out_of_memory",
            Self::GpuOutOfMemory => "gpu_out_of_memory",
            Self::PreflightFailed => "preflight_failed",
        }
    }
}

impl fmt::Display for FailureLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The evaluator's verdict on a scored trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Better than the incumbent: kept, and it becomes the incumbent.
    Improved,
    /// No measurable difference from the incumbent.
    WithinNoise,
    /// Worse than the incumbent.
    Regressed,
    /// Beat the incumbent it was proposed against, which has moved since:
    /// its change was re-applied onto the new incumbent as another trial
    /// (`rebased_as`), which is measured and judged on its own.
    Rebased,
    /// Stopped while it trained: clearly behind the incumbent's curve at
    /// the same position (`train.pruned` says where). A decision, not a
    /// failure: its configuration counts as a bad score.
    Pruned,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Improved => "improved",
            Self::WithinNoise => "within_noise",
            Self::Regressed => "regressed",
            Self::Rebased => "rebased",
            Self::Pruned => "pruned",
        }
    }
}

/// Whether a lower or a higher metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Minimize,
    Maximize,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minimize => "minimize",
            Self::Maximize => "maximize",
        }
    }

    /// True when `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Self::Minimize => a < b,
            Self::Maximize => a > b,
        }
    }

    /// How much better `candidate` is than `reference` (negative: worse).
    pub fn gain(self, candidate: f64, reference: f64) -> f64 {
        match self {
            Self::Minimize => reference - candidate,
            Self::Maximize => candidate - reference,
        }
    }
}

/// A value of a recipe parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{}", format_float(*x)),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Formats a float compactly and round-trippably enough for a hypothesis line.
pub fn format_float(x: f64) -> String {
    if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) {
        format!("{x:.4e}")
    } else {
        let s = format!("{x:.6}");
        let s = s.trim_end_matches('0');
        if s.ends_with('.') {
            format!("{s}0")
        } else {
            s.to_string()
        }
    }
}

/// A full or partial assignment of recipe parameters, keyed by recipe key path.
pub type Params = BTreeMap<String, ParamValue>;

/// The canonical text of a configuration: two trials measure the same
/// configuration exactly when their keys are equal.
pub fn config_key(config: &Params) -> String {
    serde_json::to_string(config).expect("params serialize")
}

/// One step of a proposed edit to the experiment's files. Paths are relative
/// to the experiment directory, `/`-separated. This is also the JSON format of
/// proposals (`{"hypothesis": ..., "edits": [...]}`) from inbox files and LLMs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// Assigns recipe keys: `{"kind": "set", "values": {"optimizer.lr": 0.001}}`.
    Set { values: Params },
    /// Replaces a whole file (or creates it).
    Replace { path: String, content: String },
    /// Replaces the one occurrence of `search` in a file with `replace`.
    SearchReplace {
        path: String,
        search: String,
        replace: String,
    },
}

impl Edit {
    /// The file an edit writes; `None` for recipe key assignments.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Set { .. } => None,
            Self::Replace { path, .. } | Self::SearchReplace { path, .. } => Some(path),
        }
    }

    /// A short description: `optimizer.lr=0.001`, `replace model.py`.
    pub fn summary(&self) -> String {
        match self {
            Self::Set { values } => values
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            Self::Replace { path, .. } => format!("replace {path}"),
            Self::SearchReplace { path, .. } => format!("search/replace {path}"),
        }
    }
}

/// A proposal as a specialist writes it: why, and what to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    pub hypothesis: String,
    pub edits: Vec<Edit>,
    /// The change of the metric the proposer expects: the trial's score
    /// less its parent's, in the metric's units (optional).
    #[serde(default)]
    pub expected_delta: Option<f64>,
}

/// One state change of a trial, with its wall-clock time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: TrialStatus,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Everything lineage knows about one trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub id: TrialId,
    pub attempt: u32,
    /// The specialist that proposed it (`baseline` for the experiment's own recipe).
    pub specialist: String,
    /// The surface it edits; `None` for the baseline.
    pub surface: Option<String>,
    /// The incumbent it was proposed against.
    pub parent: Option<TrialId>,
    pub hypothesis: String,
    /// The parameters this trial changes relative to its parent.
    pub changes: Params,
    /// The full configuration it measures.
    pub config: Params,
    pub status: TrialStatus,
    pub label: Option<FailureLabel>,
    pub decision: Option<Decision>,
    /// The experiment's metric from the eval command, when it produced one.
    pub score: Option<f64>,
    /// The incumbent's score at decision time (for the metric delta).
    pub parent_score: Option<f64>,
    /// Why it failed or was discarded, in words.
    pub detail: Option<String>,
    pub history: Vec<StatusChange>,
    pub trial_dir: Option<PathBuf>,
    /// Process group of the running train command, for orphan cleanup.
    pub pgid: Option<i32>,
    /// The Slurm job of its running train command (the Slurm backend): a
    /// restarted ratchet adopts it instead of submitting the trial again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<u64>,
    /// The change of the metric its proposer expected (score − parent's
    /// score), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_delta: Option<f64>,
    /// The experiment's pre-flight check of its files, before it trained
    /// (`[preflight]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<ProcessReport>,
    pub train: Option<ProcessReport>,
    pub eval: Option<ProcessReport>,
    /// The git commit of the trial's files (on `ratchet/trials/<id>`).
    #[serde(default)]
    pub commit: Option<CommitId>,
    /// The trial's edit as a unified diff against its parent commit.
    #[serde(default)]
    pub diff: Option<String>,
    /// When kept: the commit `ratchet/incumbent` moved to (the trial's own, or
    /// a merge onto an incumbent that moved after it was proposed).
    #[serde(default)]
    pub keep_commit: Option<CommitId>,
    /// The edits of a proposal that came as edits (inbox, LLM); empty for
    /// search trials, which write their full `config` into the recipe.
    #[serde(default)]
    pub edits: Vec<Edit>,
    /// The proposer's raw reply (capped), kept when it came from outside.
    #[serde(default)]
    pub reply: Option<String>,
    /// The proxy eval's score of its own run (seed 0).
    #[serde(default)]
    pub proxy_score: Option<f64>,
    /// The full eval's report and score of its own run, when it got that far.
    #[serde(default)]
    pub full_eval: Option<ProcessReport>,
    #[serde(default)]
    pub full_score: Option<f64>,
    /// Seed re-runs (confirmation, and the noise band of an incumbent).
    #[serde(default)]
    pub seed_runs: Vec<SeedRun>,
    /// The spread over its runs, once its seed runs are in.
    #[serde(default)]
    pub noise: Option<NoiseBand>,
    /// It beat its parent on proxy, and the full eval or the seed runs did
    /// not confirm it.
    #[serde(default)]
    pub false_peak: bool,
    /// The trial whose change this one re-applies onto a newer incumbent.
    #[serde(default)]
    pub rebased_from: Option<TrialId>,
    /// The trial that re-applies this one's change onto a newer incumbent.
    #[serde(default)]
    pub rebased_as: Option<TrialId>,
    /// What its last look of the keep rule rested on (runs, estimate, bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

impl Trial {
    /// Where a progress plot draws it: at its score, or (`None`) in the
    /// lane of trials without one (a failure label, or no finite score).
    pub fn plotted_score(&self) -> Option<f64> {
        self.score.filter(|s| self.label.is_none() && s.is_finite())
    }

    /// What became of it, in one word: a failure label, or
    /// `kept`/`false_peak`/`within_noise`/`regressed`/`rebased`/`pruned` for decided
    /// trials, or the status of unfinished ones.
    pub fn outcome(&self) -> &'static str {
        match (self.label, self.decision) {
            (Some(l), _) => l.as_str(),
            (None, Some(_)) if self.status == TrialStatus::Kept => "kept",
            (None, Some(_)) if self.false_peak => "false_peak",
            (None, Some(d)) => d.as_str(),
            (None, None) => self.status.as_str(),
        }
    }

    /// Time of the first entry into `status`.
    pub fn time_of(&self, status: TrialStatus) -> Option<u64> {
        self.history
            .iter()
            .find(|c| c.status == status)
            .map(|c| c.at_ms)
    }

    /// A one-line summary of the edit, `key=value` pairs.
    pub fn edit_summary(&self) -> String {
        if !self.edits.is_empty() {
            let parts: Vec<String> = self.edits.iter().map(Edit::summary).collect();
            return parts.join("; ");
        }
        if self.changes.is_empty() {
            return "(no change)".to_string();
        }
        let parts: Vec<String> = self
            .changes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(" ")
    }
}

/// The recipe the ratchet currently stands on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incumbent {
    pub trial: TrialId,
    pub score: f64,
    pub config: Params,
    pub since_ms: u64,
    /// The incumbent's commit (`ratchet/incumbent` points at it).
    #[serde(default)]
    pub commit: Option<CommitId>,
    /// Its noise band, from its seed runs.
    #[serde(default)]
    pub noise: Option<NoiseBand>,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (for capping text that is shown or stored).
pub fn prefix_at_most(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A queued trial #1 of specialist `s` with `config` and nothing else, for
/// unit tests.
#[cfg(test)]
pub fn test_trial(config: Params) -> Trial {
    let mut t: Trial = serde_json::from_value(serde_json::json!({
        "id": 1, "attempt": 1, "specialist": "s", "surface": "s", "parent": null,
        "hypothesis": "", "changes": {}, "config": {}, "status": "queued",
        "label": null, "decision": null, "score": null, "parent_score": null,
        "detail": null, "history": [], "trial_dir": null, "pgid": null,
        "train": null, "eval": null
    }))
    .expect("a minimal trial deserializes");
    t.config = config;
    t
}

#[cfg(test)]
mod tests;
