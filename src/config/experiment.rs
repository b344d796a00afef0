//! The types of `experiment.toml`.

use super::*;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    pub name: String,
    /// The TOML recipe file whose keys the surfaces' parameters address;
    /// an experiment without one has code surfaces only (see `recipe_path`).
    #[serde(default)]
    pub recipe: Option<PathBuf>,
    /// The metric the eval command prints (as `[metrics]` says).
    pub metric: String,
    pub direction: Direction,
    /// The fixed training budget, given to train as `RATCHET_BUDGET_SECS`.
    pub budget_secs: u64,
    /// Hard limit: at this age the train command's whole process group is killed.
    pub timeout_secs: u64,
    /// argv of the train command, run in the trial's workspace.
    pub train: Vec<String>,
    /// Where the score comes from: the eval commands ratchet runs itself
    /// (`eval`, the default) or the train run's own output (`train`, for
    /// experiments whose fixed, protected code computes the score while
    /// training, as autoresearch's prepare.py does).
    #[serde(default)]
    pub score_from: ScoreFrom,
    /// How the programs print their metrics (default `NAME=value`).
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub gates: Gates,
    #[serde(default, rename = "surface")]
    pub surfaces: Vec<SurfaceSection>,
    /// Files no edit may touch (eval data, scoring code), relative to the
    /// experiment directory; a directory protects everything under it.
    /// `experiment.toml` is always protected.
    #[serde(default)]
    pub protected: Vec<String>,
    #[serde(default)]
    pub noise: NoiseSection,
    /// Early stopping of runs that are clearly behind the incumbent
    /// (off without this table).
    #[serde(default)]
    pub prune: Option<PruneSection>,
    /// A cheap check of a trial's files before it trains (off without
    /// this table).
    #[serde(default)]
    pub preflight: Option<PreflightSection>,
}

/// `score_from`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreFrom {
    #[default]
    Eval,
    Train,
}

/// `[metrics]`: how train, eval and pre-flight print their metrics.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `equals` (`NAME=value`, the default), `colon` (`NAME: value`, the
    /// last block after a `---` line) or `regex` (`pattern`).
    #[serde(default)]
    pub format: FormatName,
    /// With `format = "regex"`: the pattern, with named groups (`name`
    /// and `value`, or one group per metric named after it).
    #[serde(default)]
    pub pattern: Option<String>,
}

/// `metrics.format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    #[default]
    Equals,
    Colon,
    Regex,
}

impl MetricsSection {
    /// The format processes read (a `regex` without a pattern, refused when
    /// the experiment is loaded, reads `NAME=value`).
    pub fn format(&self) -> crate::process::MetricFormat {
        use crate::process::MetricFormat;
        match (self.format, &self.pattern) {
            (FormatName::Colon, _) => MetricFormat::Colon,
            (FormatName::Regex, Some(p)) => MetricFormat::Regex(p.clone()),
            _ => MetricFormat::Equals,
        }
    }
}

/// `[preflight]`: a command run in a trial's work directory before its
/// training starts, on the daemon's machine with no GPU. A non-zero exit
/// fails the trial `preflight_failed`; what it prints as `NAME=value` is
/// checked against the gates (a projected `artifact_bytes=`, any gated
/// metric), and a miss fails the trial before it trains.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreflightSection {
    /// argv, with the same placeholders as train.
    pub command: Vec<String>,
    /// Its own hard limit (default 30 s).
    #[serde(default = "default_preflight_timeout")]
    pub timeout_secs: u64,
}

pub(super) fn default_preflight_timeout() -> u64 {
    30
}

/// `[prune]`: a trial's own run is stopped when its progress line `metric`
/// is clearly behind the incumbent's curve at the same position.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneSection {
    /// The `NAME` of the progress lines (`NAME=value at=POSITION`) compared.
    pub metric: String,
    /// Whether a lower or higher progress value is better (default: the
    /// experiment's direction).
    #[serde(default)]
    pub direction: Option<Direction>,
    /// The most a run whose curve is not behind the incumbent's may be
    /// stopped (a probability, over all looks).
    #[serde(default = "default_false_prune_rate")]
    pub false_prune_rate: f64,
    /// Where the curve is looked at: shares of the incumbent's curve length.
    #[serde(default = "default_prune_looks")]
    pub looks: Vec<f64>,
    /// The surfaces whose trials may be stopped (default: all). A surface
    /// that changes what the progress metric measures (the training data
    /// mix, for a training loss) does not belong here.
    #[serde(default)]
    pub surfaces: Option<Vec<String>>,
}

pub(super) fn default_false_prune_rate() -> f64 {
    0.05
}

pub(super) fn default_prune_looks() -> Vec<f64> {
    vec![0.25, 0.5, 0.75]
}

impl PruneSection {
    /// The rule these settings make, for an experiment optimizing `direction`.
    pub fn rule(&self, direction: Direction) -> crate::judge::PruneRule {
        crate::judge::PruneRule {
            metric: self.metric.clone(),
            direction: self.direction.unwrap_or(direction),
            false_prune_rate: self.false_prune_rate,
            looks: self.looks.clone(),
        }
    }

    /// Whether a trial of `surface` may be stopped early.
    pub fn covers(&self, surface: Option<&str>) -> bool {
        match (&self.surfaces, surface) {
            (None, _) => true,
            (Some(list), Some(s)) => list.iter().any(|l| l == s),
            (Some(_), None) => false,
        }
    }
}

/// How runs are repeated and judged (see `judge/` and the evaluator).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSection {
    /// The most seed re-runs (`RATCHET_SEED` = 1..=seeds) a decision may
    /// take: a candidate gets one more only while the evidence is
    /// ambiguous. The baseline gets all of them (the first spread), and so
    /// does every incumbent once kept (the seeds later candidates pair with).
    #[serde(default)]
    pub seeds: u32,
    /// The keep rule's stated error rate: its bounds are two-sided at it, so
    /// a candidate that is no better than the incumbent is kept with
    /// probability at most half of it (README "How a trial is judged").
    #[serde(default = "default_false_keep_rate")]
    pub false_keep_rate: f64,
    /// The multiplier of the keep rule before `false_keep_rate`: refused
    /// with an error that names the replacement.
    #[serde(default)]
    pub band: Option<toml::Value>,
    /// What the keep rule compares: the scores (`linear`), or their
    /// natural log (`log`), for a metric whose noise grows with its level
    /// (an error or loss that falls by orders of magnitude as recipes get
    /// better): the spread pooled over recipes is then a relative one.
    #[serde(default)]
    pub scale: Scale,
}

/// `noise.scale`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    #[default]
    Linear,
    Log,
}

impl Scale {
    /// A score as the keep rule sees it (`None`: a score the scale cannot
    /// take, a non-positive one on `log`).
    pub fn judged(self, score: f64) -> Option<f64> {
        match self {
            Scale::Linear => Some(score),
            Scale::Log => (score > 0.0).then(|| score.ln()),
        }
    }

    /// A value the keep rule sees back on the metric (`judged`'s inverse).
    pub fn metric(self, judged: f64) -> f64 {
        match self {
            Scale::Linear => judged,
            Scale::Log => judged.exp(),
        }
    }
}

pub(super) fn default_false_keep_rate() -> f64 {
    0.05
}

impl Default for NoiseSection {
    fn default() -> Self {
        NoiseSection {
            seeds: 0,
            false_keep_rate: default_false_keep_rate(),
            band: None,
            scale: Scale::Linear,
        }
    }
}

impl NoiseSection {
    /// The keep rule these settings make.
    pub fn rule(&self) -> crate::judge::Rule {
        crate::judge::Rule {
            false_keep_rate: self.false_keep_rate,
            max_runs: self.seeds + 1,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// argv of the cheap eval command every trial gets (the screen);
    /// required unless the score comes from the train run.
    #[serde(default)]
    pub proxy: Vec<String>,
    /// argv of the full eval, run only for trials that beat the incumbent on
    /// proxy; its score is the one that decides. Without it, proxy decides.
    #[serde(default)]
    pub full: Option<Vec<String>>,
    /// Hard limit for one eval run (default: the experiment's timeout_secs).
    pub timeout_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// A trial whose eval prints `artifact_bytes=` above this fails with `size_failure`.
    pub max_artifact_bytes: Option<u64>,
    /// A score worse than this (by the metric's direction) fails with `gate_miss`.
    pub min_quality: Option<f64>,
    /// Resident memory of a train or eval command's whole process group; over
    /// it the group is killed and the trial fails with `out_of_memory`.
    pub max_memory_mb: Option<u64>,
    /// Bounds on any metric the eval prints (`[[gates.metric]]`): a run
    /// outside one fails with `gate_miss`; one that does not print a gated
    /// metric fails with `metric_missing`.
    #[serde(default)]
    pub metric: Vec<MetricGate>,
}

/// `[[gates.metric]]`: a bound (`min`, `max` or both, inclusive) on one
/// metric the eval prints as `NAME=value`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricGate {
    pub name: String,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

impl MetricGate {
    /// Why `value` misses this gate, or `None` when it is within it.
    pub fn miss(&self, value: f64) -> Option<String> {
        let name = &self.name;
        match (self.min, self.max) {
            _ if !value.is_finite() => Some(format!("{name}={value} is not a finite value")),
            (Some(min), _) if value < min => {
                Some(format!("{name}={value} is below the gate's min {min}"))
            }
            (_, Some(max)) if value > max => {
                Some(format!("{name}={value} is above the gate's max {max}"))
            }
            _ => None,
        }
    }

    /// What is wrong with the gate as configured, if anything.
    pub fn check(&self) -> Result<(), String> {
        if !crate::process::is_metric_name(&self.name) {
            return Err(format!(
                "name {:?} is not a metric NAME (letters, digits, `_` and `.`, not starting with a digit)",
                self.name
            ));
        }
        if self.min.is_none() && self.max.is_none() {
            return Err(format!("gate on `{}` has neither min nor max", self.name));
        }
        if self.min.iter().chain(&self.max).any(|b| !b.is_finite()) {
            return Err(format!(
                "gate on `{}`: bounds must be finite numbers",
                self.name
            ));
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return Err(format!(
                    "gate on `{}`: min {min} is above max {max}",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurfaceSection {
    pub name: String,
    /// The parameter space: recipe key path → its range.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// More recipe keys an edit of this surface may set, with any value: a key
    /// (`optimizer.lr`) or a table (`optimizer`, everything under it).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Files an edit of this surface may replace or patch, relative to the
    /// experiment directory: a file, or a directory and everything under it.
    #[serde(default)]
    pub files: Vec<String>,
    /// Parameters that matter only at some values of others: parameter →
    /// (declared parameter → the values at which it matters). A search
    /// candidate whose changes all lie on parameters that do not matter at
    /// its values is a recipe already measured in effect, and is not drawn.
    #[serde(default)]
    pub when: BTreeMap<String, BTreeMap<String, Vec<ParamValue>>>,
    /// What larger values of numeric parameters cost (`"size"` or
    /// `"work"`): a recipe at least as large on every size axis as one that
    /// failed for its size (`size_failure`, an out-of-memory) is predicted
    /// to fail too, and one at least as large on every size and work axis
    /// as one that overran its time (`budget_overrun`).
    #[serde(default)]
    pub cost: BTreeMap<String, crate::recipe::Cost>,
}

impl SurfaceSection {
    /// Whether an edit of this surface may change recipe key `key`.
    pub fn owns_key(&self, key: &str) -> bool {
        self.params.contains_key(key) || self.keys.iter().any(|k| under(key, k, '.'))
    }

    /// Whether an edit of this surface may write file `path`.
    pub fn owns_file(&self, path: &str) -> bool {
        self.files.iter().any(|f| under(path, f, '/'))
    }

    /// Whether an edit can change anything on this surface.
    pub fn is_editable(&self) -> bool {
        !(self.params.is_empty() && self.keys.is_empty() && self.files.is_empty())
    }
}

/// `path` is `root` or lies under it (`root` + `sep` + ...).
pub fn under(path: &str, root: &str, sep: char) -> bool {
    let root = root.trim_end_matches(sep);
    path == root || (path.starts_with(root) && path[root.len()..].starts_with(sep))
}

impl ExperimentFile {
    /// What larger values cost, of every parameter that declares it.
    pub fn costs(&self) -> BTreeMap<String, crate::recipe::Cost> {
        self.surfaces
            .iter()
            .flat_map(|s| s.cost.iter().map(|(k, c)| (k.clone(), *c)))
            .collect()
    }

    /// Every declared parameter of every surface (names are unique across surfaces).
    pub fn params(&self) -> impl Iterator<Item = (&String, &ParamSpec)> {
        self.surfaces.iter().flat_map(|s| &s.params)
    }

    /// Whether parameter `key` matters at `config` (`[surface.when]`): it
    /// has no condition, or every parameter its condition names has one of
    /// the values listed.
    pub fn matters(&self, key: &str, config: &Params) -> bool {
        let Some(cond) = self.surfaces.iter().find_map(|s| s.when.get(key)) else {
            return true;
        };
        cond.iter().all(|(k, values)| {
            let spec = self.params().find(|(p, _)| *p == k).map(|(_, spec)| spec);
            config
                .get(k)
                .zip(spec)
                .is_some_and(|(v, spec)| values.iter().any(|x| spec.normalize(x) == *v))
        })
    }

    /// Whether changing `changes` to reach `config` changes anything that
    /// matters there.
    pub fn changes_matter(&self, changes: &Params, config: &Params) -> bool {
        changes.keys().any(|k| self.matters(k, config))
    }

    /// [`params`](Self::params) as one space (what a draw over every
    /// surface at once and the failure model take).
    pub fn space(&self) -> BTreeMap<String, ParamSpec> {
        self.params().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The recipe's path as git names it; empty for an experiment without
    /// a recipe (no path is empty, so no edit names it).
    pub fn recipe_path(&self) -> String {
        self.recipe
            .as_ref()
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The metrics a train-scored trial's edit may not touch the lines of:
    /// the metric and every gated one (`artifact_bytes` under a size gate).
    pub fn scored_names(&self) -> Vec<&str> {
        std::iter::once(self.metric.as_str())
            .chain(self.gates.metric.iter().map(|g| g.name.as_str()))
            .chain(self.gates.max_artifact_bytes.map(|_| "artifact_bytes"))
            .collect()
    }

    /// Whether `path` is protected: `experiment.toml`, or under a `protected` entry.
    pub fn is_protected(&self, path: &str) -> bool {
        path == "experiment.toml" || self.protected.iter().any(|p| under(path, p, '/'))
    }
}
