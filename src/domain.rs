//! Domain types of a trial: ids, statuses, failure labels, decisions, parameter values. No I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
}

/// One state change of a trial, with its wall-clock time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: TrialStatus,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// What a finished child process (train or eval) did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    /// Exit code when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when it was killed by a signal.
    pub signal: Option<i32>,
    /// Killed by ratchet at the hard timeout.
    pub timed_out: bool,
    /// Could not be started at all (the reason).
    pub spawn_error: Option<String>,
    /// Wall-clock start (ms since the Unix epoch) of the process.
    pub started_ms: u64,
    /// From start until the process (and its group) was gone.
    pub duration_ms: u64,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// A log reached its cap and the rest of it was dropped.
    pub truncated: bool,
    /// `NAME=value` lines with finite values, last value wins.
    pub metrics: BTreeMap<String, f64>,
    /// `NAME=value` lines whose value was NaN or infinite.
    pub non_finite: Vec<String>,
    /// The largest resident memory of the whole process group, sampled every 100 ms.
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Killed by ratchet for going over the memory limit.
    #[serde(default)]
    pub memory_exceeded: bool,
    /// The Slurm job it ran as (the Slurm backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmJob>,
    /// The GPUs it ran on and what it used of them (`executor.gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Box<GpuUse>>,
    /// Progress lines (`NAME=value at=POSITION`, finite values) by name:
    /// (position, value) in the order printed, thinned to at most
    /// `process::PROGRESS_POINTS` each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub progress: BTreeMap<String, Vec<(f64, f64)>>,
    /// Stopped early (`[prune]`): where its curve stood against the
    /// incumbent's when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Box<Pruning>>,
}

/// Where a run stood when it was stopped early: its progress value at a
/// look against the incumbent's curve there, and the bound it was behind by
/// more than.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pruning {
    /// The trial whose curve it was compared with (the incumbent).
    pub against: TrialId,
    /// The progress line's name.
    pub metric: String,
    /// The run's position when it was looked at, and its value there.
    pub at: f64,
    pub value: f64,
    /// The incumbent's mean curve at that position, over its runs.
    pub reference: f64,
    /// How far behind it was (positive: behind, in the metric's units).
    pub behind: f64,
    /// A stop needs `behind` above this (`t · se`).
    pub bound: f64,
    pub se: f64,
    pub df: f64,
    /// The look (1-based) of how many.
    pub look: u32,
    pub looks: u32,
    /// The false-prune rate of all looks together.
    pub rate: f64,
    /// The last position of the incumbent's curve (how far a run goes).
    pub end: f64,
    /// Slot time not spent: the incumbent's mean train time minus this run's.
    pub saved_ms: u64,
}

impl Pruning {
    /// One line for `lineage show`, the detail and the exports.
    pub fn describe(&self) -> String {
        format!(
            "stopped at position {} of {}: {} {} against #{}'s {} (behind by {}; a stop needs more than {}, se {}, {} df; look {} of {}, false-prune rate {})",
            format_float(self.at),
            format_float(self.end),
            self.metric,
            format_float(self.value),
            self.against,
            format_float(self.reference),
            format_float(self.behind),
            format_float(self.bound),
            format_float(self.se),
            format_float(self.df),
            self.look,
            self.looks,
            format_float(self.rate),
        )
    }
}

/// One GPU, as nvidia-smi lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
}

/// The GPUs a run saw (its `CUDA_VISIBLE_DEVICES`) and what it used of
/// them, from nvidia-smi samples taken while it ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuUse {
    pub devices: Vec<GpuDevice>,
    /// Samples taken while it ran.
    pub samples: u32,
    /// The most memory in use on any one of its devices, MiB.
    pub peak_memory_mib: Option<u64>,
    /// Utilization averaged over its devices and samples, percent.
    pub mean_util_pct: Option<f64>,
    /// It failed with a device out of memory (its log says so).
    #[serde(default)]
    pub out_of_memory: bool,
    /// A line of its log saying that the device failed, not the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_error: Option<String>,
}

impl GpuUse {
    /// `0,1` and the telemetry, for `lineage show` and logs.
    pub fn describe(&self) -> String {
        let devices: Vec<String> = self
            .devices
            .iter()
            .map(|d| format!("{} {} ({})", d.index, d.name, d.uuid))
            .collect();
        let mut s = format!("GPU {}", devices.join(", "));
        match (self.peak_memory_mib, self.mean_util_pct) {
            (Some(m), Some(u)) => s += &format!(": peak memory {m} MiB, mean utilization {u:.0}%"),
            (Some(m), None) => s += &format!(": peak memory {m} MiB"),
            _ => s += ": no samples",
        }
        s
    }

    /// The devices' UUIDs, comma-separated (`CUDA_VISIBLE_DEVICES`).
    pub fn visible(&self) -> String {
        let ids: Vec<&str> = self.devices.iter().map(|d| d.uuid.as_str()).collect();
        ids.join(",")
    }
}

/// A run's Slurm job: its id, the state Slurm ended it in, and its node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmJob {
    pub id: u64,
    pub state: String,
    #[serde(default)]
    pub node: String,
}

impl ProcessReport {
    /// The label of a process that did not succeed.
    pub fn failure_label(&self) -> FailureLabel {
        if self.memory_exceeded {
            FailureLabel::OutOfMemory
        } else if self.timed_out {
            FailureLabel::BudgetOverrun
        } else if self.gpu.as_ref().is_some_and(|g| g.out_of_memory) {
            FailureLabel::GpuOutOfMemory
        } else {
            FailureLabel::Crash
        }
    }

    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
            && !self.timed_out
            && !self.memory_exceeded
            && self.spawn_error.is_none()
    }

    /// A short human description of how the process ended.
    pub fn describe(&self) -> String {
        let how = self.how();
        match &self.slurm {
            Some(j) => format!("{how} (Slurm job {} {})", j.id, j.state),
            None => how,
        }
    }

    fn how(&self) -> String {
        if let Some(e) = &self.spawn_error {
            return format!("failed to start: {e}");
        }
        if self.pruned.is_some() {
            return format!(
                "stopped early by ratchet in {:.2}s (pruned)",
                self.duration_ms as f64 / 1000.0
            );
        }
        if self.memory_exceeded {
            return format!(
                "killed over the memory limit (resident {} MiB)",
                self.peak_rss_bytes >> 20
            );
        }
        if self.timed_out && self.duration_ms == 0 && self.slurm.is_some() {
            return "killed by Slurm at the time limit".into();
        }
        if self.timed_out {
            return format!(
                "killed at the timeout after {:.1}s",
                self.duration_ms as f64 / 1000.0
            );
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "ended without a status".to_string(),
        }
    }
}

/// One seed re-run of a trial (`RATCHET_SEED` = `seed`): the same commit,
/// trained again in its own directory and evaluated with proxy and full.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeedRun {
    pub seed: u64,
    /// Process group of its running train command, for orphan cleanup.
    pub pgid: Option<i32>,
    /// Its train command's Slurm job while it runs (the Slurm backend), so
    /// that a restarted ratchet adopts the job instead of submitting again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<u64>,
    pub train: Option<ProcessReport>,
    pub proxy: Option<ProcessReport>,
    pub full: Option<ProcessReport>,
    pub proxy_score: Option<f64>,
    pub full_score: Option<f64>,
    /// Why this run failed (gate or process), when it did.
    pub failure: Option<FailureLabel>,
    pub detail: Option<String>,
}

impl SeedRun {
    /// It failed, or has the deciding score (`full`: the experiment has a full eval).
    pub fn finished(&self, full: bool) -> bool {
        self.failure.is_some()
            || if full {
                self.full_score.is_some()
            } else {
                self.proxy_score.is_some()
            }
    }
}

/// The spread of a trial's scores over its seed runs (seed 0 included).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// How many runs it is measured over.
    pub n: u32,
    pub mean: f64,
    /// Sample standard deviation (0 for a single run).
    pub sd: f64,
}

impl Spread {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n < 2 {
            0.0
        } else {
            let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (ss / (n - 1) as f64).sqrt()
        };
        Some(Spread {
            n: n as u32,
            mean,
            sd,
        })
    }
}

/// What one look of the keep rule (`judge.rs`) concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// Clearly better: keep it.
    Keep,
    /// Ahead, not yet clearly: one more run.
    Continue,
    /// Not on course to be kept (or no runs left): a decision not to keep.
    Stop,
}

/// What a decision rested on, as lineage stores it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Runs of the candidate the estimate is over.
    pub runs: u32,
    /// The gain over the reference (positive is better, in the metric's
    /// units): the candidate's mean against the reference's runs as
    /// `same_seed` weighed them.
    pub gain: f64,
    /// Its standard error; 0 when no spread is known.
    pub se: f64,
    /// A keep needs `gain` above this.
    pub bound: f64,
    /// Another run needs `gain` above this.
    pub futility: f64,
    /// Degrees of freedom of the spread estimate.
    pub df: f64,
    /// The false-keep rate of the whole sequence.
    pub rate: f64,
    pub call: Call,
    /// Gains and bounds are of the metric's natural log (`noise.scale =
    /// "log"`): a gain of 0.05 is about 5% better.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
    /// How far the gain is a per-seed difference; absent without a spread
    /// (no seed re-runs: a plain comparison with the reference's mean) and
    /// in lineages from before it was measured (per-seed differences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_seed: Option<SameSeed>,
}

/// The share of the comparison made seed by seed: the weight of the
/// reference's runs with the candidate's seeds against its other runs, from
/// the measured correlation of same-seed runs (`judge::estimate`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SameSeed {
    pub weight: f64,
    pub correlation: f64,
}

impl Evidence {
    /// The decision a look that stops makes: clearly worse is a
    /// regression, anything else is within the noise.
    pub fn decision(&self) -> Decision {
        match self.call {
            Call::Keep => Decision::Improved,
            _ if self.se > 0.0 && self.gain < -self.bound => Decision::Regressed,
            _ if self.se == 0.0 && self.gain < 0.0 => Decision::Regressed,
            _ => Decision::WithinNoise,
        }
    }

    /// One line for `lineage show` and details.
    pub fn describe(&self) -> String {
        let same_seed = self.same_seed.map_or(String::new(), |p| {
            format!(
                "; same-seed runs weigh {} (correlation {})",
                format_float(p.weight),
                format_float(p.correlation)
            )
        });
        format!(
            "{} {} ± {} (se) over {} run(s); keep above {}, continue above {}; {} df, false-keep rate {}{same_seed}",
            if self.log { "gain in ln" } else { "gain" },
            format_float(self.gain),
            format_float(self.se),
            self.runs,
            format_float(self.bound),
            format_float(self.futility),
            format_float(self.df),
            format_float(self.rate),
        )
    }
}

/// A trial's noise band: the spread of its proxy scores and of its deciding
/// scores (full, or proxy without a full eval) over its seed runs. The
/// incumbent's band is what a candidate's gain must exceed (times `noise.band`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseBand {
    pub proxy: Spread,
    pub confirmed: Spread,
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
mod tests {
    use super::*;

    #[test]
    fn trial_id_parses_with_and_without_hash() {
        assert_eq!("42".parse::<TrialId>().unwrap(), TrialId(42));
        assert_eq!("#7".parse::<TrialId>().unwrap(), TrialId(7));
        assert!("x".parse::<TrialId>().is_err());
    }

    /// The moves of the state machine are exactly the documented ones, and
    /// from every status a terminal one can be reached.
    #[test]
    fn the_state_machine_allows_the_documented_moves_only() {
        use TrialStatus::*;
        let all = [
            Proposed,
            Queued,
            Running,
            Evaluating,
            Kept,
            Discarded,
            Failed,
            Interrupted,
        ];
        let documented = [
            (Proposed, Queued),
            (Proposed, Failed),
            (Proposed, Interrupted),
            (Queued, Running),
            (Queued, Failed),
            (Queued, Interrupted),
            (Running, Evaluating),
            (Running, Queued),
            (Running, Failed),
            (Running, Interrupted),
            (Evaluating, Kept),
            (Evaluating, Discarded),
            (Evaluating, Failed),
            (Evaluating, Interrupted),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.may_become(to),
                    documented.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
            assert_eq!(
                from.is_terminal(),
                all.iter().all(|&to| !from.may_become(to)),
                "{from}: terminal exactly when nothing leaves it"
            );
            let (mut seen, mut next) = (vec![from], vec![from]);
            while let Some(s) = next.pop() {
                for to in all.into_iter().filter(|&to| s.may_become(to)) {
                    if !seen.contains(&to) {
                        seen.push(to);
                        next.push(to);
                    }
                }
            }
            assert!(
                seen.iter().any(|s| s.is_terminal()),
                "{from}: no way to an outcome"
            );
        }
        // A decision is made only on an evaluated trial.
        for from in all {
            for to in [Kept, Discarded] {
                assert_eq!(from.may_become(to), from == Evaluating, "{from} → {to}");
            }
        }
    }

    #[test]
    fn direction_compares_strictly() {
        assert!(Direction::Minimize.better(1.0, 2.0));
        assert!(!Direction::Minimize.better(2.0, 2.0));
        assert!(Direction::Maximize.better(3.0, 2.0));
    }

    #[test]
    fn param_values_round_trip_through_json() {
        let mut p = Params::new();
        p.insert("a".into(), ParamValue::Int(3));
        p.insert("b".into(), ParamValue::Float(0.5));
        p.insert("c".into(), ParamValue::Str("x".into()));
        p.insert("d".into(), ParamValue::Bool(true));
        let back: Params = serde_json::from_str(&config_key(&p)).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn float_formatting_is_compact() {
        assert_eq!(format_float(0.5), "0.5");
        assert_eq!(format_float(3.0), "3.0");
        assert_eq!(format_float(1e-4), "1.0000e-4");
    }
}
