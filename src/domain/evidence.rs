//! Measurements of a trial beyond its own run: seed re-runs, their
//! spread and noise band, and what a look of the keep rule rested on.

use super::*;

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

/// What one look of the keep rule (`judge/`) concludes.
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
