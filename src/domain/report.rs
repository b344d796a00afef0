//! What a run's process reported: exit, metrics and progress, resources,
//! where it stopped early, the GPUs and the Slurm job it ran on.

use super::*;

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
