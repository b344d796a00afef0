//! Configuration: `specialists.toml` and `experiments/<name>/experiment.toml`,
//! parsed with serde and validated as a whole, every error with its file and key path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::domain::{Direction, ParamValue, Params};
use crate::recipe::{param_of, ParamSpec};

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Key path inside the file, such as `specialist[1].kind`; `.` for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
    }
}

/// Every problem found in a configuration, in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// specialists.toml

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialistsFile {
    pub daemon: DaemonSection,
    #[serde(default)]
    pub executor: ExecutorSection,
    #[serde(default, rename = "specialist")]
    pub specialists: Vec<SpecialistSection>,
}

/// `[executor]`: where trials run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSection {
    /// `local` (child processes of ratchet, `daemon.slots` at once) or
    /// `slurm` (batch jobs, `executor.slurm.max_jobs` at once).
    #[serde(default)]
    pub backend: BackendKind,
    pub slurm: Option<SlurmSection>,
    /// GPU slots for local runs: `"auto"` (every GPU nvidia-smi lists; CPU
    /// slots when there is none) or a list of GPU indices. Unset: CPU
    /// slots (`daemon.slots`), and trials see whatever GPUs ratchet sees.
    pub gpus: Option<GpuChoice>,
    /// GPUs each trial gets (default 1); a slot is a fixed set of this many.
    pub gpus_per_trial: Option<usize>,
    /// How often nvidia-smi is asked for utilization and memory while
    /// trials run on GPUs (default 1 s).
    pub gpu_poll_secs: Option<f64>,
    /// Eval commands take a GPU slot too (the first free one, ahead of
    /// train runs). Default false: evals run with no GPU visible.
    pub evals_on_gpus: Option<bool>,
}

/// `executor.gpus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuChoice {
    Auto,
    List(Vec<u32>),
}

impl<'de> Deserialize<'de> for GpuChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = GpuChoice;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a list of GPU indices such as [0, 1]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GpuChoice, E> {
                if v == "auto" {
                    Ok(GpuChoice::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<GpuChoice, A::Error> {
                let mut list = Vec::new();
                while let Some(i) = seq.next_element::<u32>()? {
                    list.push(i);
                }
                Ok(GpuChoice::List(list))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The resolved GPU settings (`executor.gpus` set).
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSettings {
    pub choice: GpuChoice,
    pub per_trial: usize,
    pub poll: std::time::Duration,
    pub evals: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    #[default]
    Local,
    Slurm,
}

/// `[executor.slurm]`: how trials are submitted to a Slurm cluster.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    /// `--partition`; the cluster's default partition when unset.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--gres=gpu:N` for every train job (0: none).
    #[serde(default)]
    pub gpus_per_trial: u32,
    /// More sbatch options, passed as they are (`["--mem=16G", "--qos=high"]`).
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// Jobs of this lineage in Slurm at once, queued or running. Default:
    /// `daemon.slots`.
    pub max_jobs: Option<usize>,
    /// How often squeue is asked about the jobs (one call for all of them).
    #[serde(default = "default_poll_secs")]
    pub poll_secs: f64,
    /// Where eval commands run: `local` (in ratchet's process tree, on the
    /// machine the daemon runs on) or `slurm` (a job of its own, with the
    /// same options but no GPUs unless `eval_gpus` says so).
    #[serde(default)]
    pub eval: EvalWhere,
    /// `--gres=gpu:N` for eval jobs.
    #[serde(default)]
    pub eval_gpus: u32,
    /// The ratchet binary as the compute nodes see it (it wraps each job's
    /// command: log caps, metrics, memory gate). Default: this binary,
    /// which needs a file system shared with the nodes, as the lineage
    /// directory does.
    pub ratchet: Option<PathBuf>,
}

fn default_poll_secs() -> f64 {
    5.0
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalWhere {
    #[default]
    Local,
    Slurm,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// The experiment directory (holding experiment.toml), relative to specialists.toml.
    pub experiment: PathBuf,
    /// Where the sled database and trial directories live, relative to specialists.toml.
    #[serde(default = "default_lineage_dir")]
    pub lineage_dir: PathBuf,
    /// Trials that run at once.
    #[serde(default = "default_slots")]
    pub slots: usize,
    /// Seed of the search specialists.
    #[serde(default)]
    pub seed: u64,
    /// The control socket, relative to specialists.toml. Default:
    /// `$RUNTIME_DIRECTORY/ratchet.sock` under systemd, else
    /// `<lineage_dir>/ratchet.sock`.
    pub socket: Option<PathBuf>,
    /// On SIGTERM, how long running trials may go on before they are
    /// killed and recorded `interrupted`.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u64,
    /// How many times a trial is started before one that ratchet keeps
    /// dying under is recorded `interrupted` instead of queued again.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// While a candidate is being confirmed (its seed re-runs), start no
    /// new trial: one started then is measured against the incumbent the
    /// candidate is about to replace. `false` trades that for busy slots
    /// (worth it with many more slots than `noise.seeds`).
    #[serde(default = "default_true")]
    pub confirm_first: bool,
    /// Scouts: the first trials after the baseline sample every declared
    /// parameter of every surface at once, before the specialists take
    /// over one surface each. From a recipe nobody has tuned for this
    /// budget the large gains lie on several surfaces at once and far from
    /// it; a tuned recipe wants 0 (the default). Counted in lineage: a
    /// restart issues only those not issued yet.
    #[serde(default)]
    pub scouts: u64,
    /// How asks are shared between specialists: `yield` (in proportion to
    /// each one's smoothed keep rate; the default) or `turns`.
    #[serde(default)]
    pub allocation: crate::allocation::Allocation,
}

fn default_true() -> bool {
    true
}

fn default_lineage_dir() -> PathBuf {
    PathBuf::from("lineage")
}

fn default_drain_timeout() -> u64 {
    300
}

fn default_max_attempts() -> u32 {
    3
}

/// The longest path a Unix socket address holds (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where the control socket is when the configuration does not say.
pub fn default_socket(lineage_dir: &Path) -> PathBuf {
    match std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd joins several RuntimeDirectory= entries with ':'.
        Some(dirs) if !dirs.is_empty() => {
            let dirs = dirs.to_string_lossy().into_owned();
            PathBuf::from(dirs.split(':').next().unwrap_or_default()).join("ratchet.sock")
        }
        _ => lineage_dir.join("ratchet.sock"),
    }
}

fn default_slots() -> usize {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialistSection {
    pub name: String,
    pub surface: String,
    pub kind: SpecialistKind,
    /// The agent file (`agents/<name>.md`), relative to specialists.toml.
    pub instructions: Option<PathBuf>,
    // kind = "llm": the endpoint and the limits of its use, on the specialist
    // itself (see `LlmSection` for what each means and its default).
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub api_key_env: Option<String>,
    pub temperature: Option<f32>,
    pub timeout_secs: Option<u64>,
    pub max_requests_per_hour: Option<u32>,
    pub max_tokens_per_hour: Option<u64>,
    pub max_reply_tokens: Option<u32>,
    pub prompt_tokens: Option<usize>,
    pub json_mode: Option<JsonMode>,
    pub max_retries: Option<u32>,
    pub retry_base_ms: Option<u64>,
    pub failure_backoff_secs: Option<u64>,
}

impl SpecialistSection {
    /// The llm keys that are set, by name (for errors on other kinds).
    fn llm_keys_set(&self) -> Vec<&'static str> {
        let set = [
            ("base_url", self.base_url.is_some()),
            ("model", self.model.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("temperature", self.temperature.is_some()),
            ("timeout_secs", self.timeout_secs.is_some()),
            (
                "max_requests_per_hour",
                self.max_requests_per_hour.is_some(),
            ),
            ("max_tokens_per_hour", self.max_tokens_per_hour.is_some()),
            ("max_reply_tokens", self.max_reply_tokens.is_some()),
            ("prompt_tokens", self.prompt_tokens.is_some()),
            ("json_mode", self.json_mode.is_some()),
            ("max_retries", self.max_retries.is_some()),
            ("retry_base_ms", self.retry_base_ms.is_some()),
            ("failure_backoff_secs", self.failure_backoff_secs.is_some()),
        ];
        set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect()
    }

    /// The endpoint settings with defaults, when `base_url` and `model` are given.
    pub fn llm_section(&self) -> Option<LlmSection> {
        let mut l = LlmSection::new(self.base_url.as_ref()?, self.model.as_ref()?);
        l.api_key_env = self.api_key_env.clone();
        l.temperature = self.temperature.unwrap_or(l.temperature);
        l.timeout_secs = self.timeout_secs.unwrap_or(l.timeout_secs);
        l.max_requests_per_hour = self
            .max_requests_per_hour
            .unwrap_or(l.max_requests_per_hour);
        l.max_tokens_per_hour = self.max_tokens_per_hour.unwrap_or(l.max_tokens_per_hour);
        l.max_reply_tokens = self.max_reply_tokens.unwrap_or(l.max_reply_tokens);
        l.prompt_tokens = self.prompt_tokens.unwrap_or(l.prompt_tokens);
        l.json_mode = self.json_mode.unwrap_or(l.json_mode);
        l.max_retries = self.max_retries.unwrap_or(l.max_retries);
        l.retry_base_ms = self.retry_base_ms.unwrap_or(l.retry_base_ms);
        l.failure_backoff_secs = self.failure_backoff_secs.unwrap_or(l.failure_backoff_secs);
        Some(l)
    }
}

/// An OpenAI-compatible chat completions endpoint and the limits of its use.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmSection {
    /// The API root, such as `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub model: String,
    /// The name of the environment variable holding the API key (the key
    /// itself never appears in configuration). Local servers need none.
    pub api_key_env: Option<String>,
    /// Default 0.7.
    pub temperature: f32,
    /// Limit of one request, retries not included. Default 120.
    pub timeout_secs: u64,
    /// Requests in any sliding hour; over it the specialist waits. Default 120.
    pub max_requests_per_hour: u32,
    /// Prompt plus reply tokens in any sliding hour (as the server reports
    /// them). Default 2,000,000.
    pub max_tokens_per_hour: u64,
    /// The longest reply asked for. Default 2048.
    pub max_reply_tokens: u32,
    /// The prompt is cut to about this many tokens (oldest feedback first). Default 12,000.
    pub prompt_tokens: usize,
    /// Ask for a JSON reply (`response_format`): `auto` (default) falls back
    /// when the server refuses it.
    pub json_mode: JsonMode,
    /// Retries of one request on 429, 5xx, timeouts and connection errors. Default 4.
    pub max_retries: u32,
    /// First retry delay when the server gives no Retry-After; doubles, with
    /// jitter. Default 1000.
    pub retry_base_ms: u64,
    /// After a request fails for good, the specialist rests this long (doubling
    /// per consecutive failure, up to an hour) while the others go on. Default 30.
    pub failure_backoff_secs: u64,
}

impl LlmSection {
    /// An endpoint with every limit at its default.
    pub fn new(base_url: &str, model: &str) -> LlmSection {
        LlmSection {
            base_url: base_url.to_string(),
            model: model.to_string(),
            api_key_env: None,
            temperature: 0.7,
            timeout_secs: 120,
            max_requests_per_hour: 120,
            max_tokens_per_hour: 2_000_000,
            max_reply_tokens: 2048,
            prompt_tokens: 12_000,
            json_mode: JsonMode::Auto,
            max_retries: 4,
            retry_base_ms: 1000,
            failure_backoff_secs: 30,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonMode {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialistKind {
    /// Built-in offline search over the surface's declared parameter space.
    Search,
    /// Proposals written by hand as JSON files into `<lineage_dir>/inbox/<name>/`.
    Manual,
    /// A language model behind an OpenAI-compatible endpoint (`base_url`, `model`, ...).
    Llm,
}

// ---------------------------------------------------------------------------
// experiment.toml

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    pub name: String,
    /// The TOML recipe file whose keys the surfaces' parameters address.
    pub recipe: PathBuf,
    /// The metric the eval command prints as `NAME=value`.
    pub metric: String,
    pub direction: Direction,
    /// The fixed training budget, given to train as `RATCHET_BUDGET_SECS`.
    pub budget_secs: u64,
    /// Hard limit: at this age the train command's whole process group is killed.
    pub timeout_secs: u64,
    /// argv of the train command, run in the trial's workspace.
    pub train: Vec<String>,
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

fn default_false_prune_rate() -> f64 {
    0.05
}

fn default_prune_looks() -> Vec<f64> {
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

/// How runs are repeated and judged (see `judge.rs` and the evaluator).
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

fn default_false_keep_rate() -> f64 {
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// argv of the cheap eval command every trial gets (the screen).
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

    /// Whether `path` is protected: `experiment.toml`, or under a `protected` entry.
    pub fn is_protected(&self, path: &str) -> bool {
        path == "experiment.toml" || self.protected.iter().any(|p| under(path, p, '/'))
    }
}

// ---------------------------------------------------------------------------
// The resolved configuration the rest of the program sees.

/// A validated configuration with absolute paths.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub lineage_dir: PathBuf,
    pub slots: usize,
    pub seed: u64,
    pub socket: PathBuf,
    pub drain_timeout_secs: u64,
    pub max_attempts: u32,
    pub confirm_first: bool,
    /// `daemon.scouts`.
    pub scouts: u64,
    /// `daemon.allocation`.
    pub allocation: crate::allocation::Allocation,
    /// The Slurm backend's settings; `None`: trials run locally.
    pub slurm: Option<SlurmSection>,
    /// `executor.gpus` and its companions, as configured.
    pub gpus: Option<GpuSettings>,
    /// Set at start when trials run on GPU slots (`slots` is then the
    /// number of slots): eval commands see no GPU, so none shares a
    /// running trial's devices.
    pub gpu_slots: bool,
    pub specialists: Vec<Specialist>,
    pub experiment: Experiment,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Specialist {
    pub name: String,
    pub surface: String,
    pub kind: SpecialistKind,
    pub instructions: Option<PathBuf>,
    pub llm: Option<LlmSection>,
}

#[derive(Clone, Debug)]
pub struct Experiment {
    pub dir: PathBuf,
    pub file: ExperimentFile,
    /// The recipe's current values of every declared parameter.
    pub defaults: Params,
}

impl Experiment {
    pub fn surface(&self, name: &str) -> Option<&SurfaceSection> {
        self.file.surfaces.iter().find(|s| s.name == name)
    }

    /// `gates.max_memory_mb` in bytes.
    pub fn memory_limit(&self) -> Option<u64> {
        self.file.gates.max_memory_mb.map(|mb| mb << 20)
    }

    /// The declared parameters' values in a recipe's text (an edited or
    /// rebased trial measures what its files say). Legality checks keep them
    /// in their spaces; a value that cannot be read is left out.
    pub fn measured(&self, recipe: &str) -> Params {
        let Ok(table) = recipe.parse::<toml::Table>() else {
            return self.defaults.clone();
        };
        self.file
            .params()
            .filter_map(|(k, spec)| param_of(&table, k, spec).map(|v| (k.clone(), v)))
            .collect()
    }

    pub fn eval_timeout_secs(&self) -> u64 {
        self.file
            .eval
            .timeout_secs
            .unwrap_or(self.file.timeout_secs)
    }
}

impl Config {
    /// The configured specialists' names, in order.
    pub fn specialist_names(&self) -> Vec<String> {
        self.specialists.iter().map(|s| s.name.clone()).collect()
    }

    /// The named specialists (`None`: every configured one), or an error
    /// naming those that are not configured (pause and resume).
    pub fn select_specialists(&self, names: Option<Vec<String>>) -> Result<Vec<String>, String> {
        let configured = self.specialist_names();
        let Some(names) = names else {
            return Ok(configured);
        };
        let unknown: Vec<String> = names
            .iter()
            .filter(|n| !configured.contains(n))
            .map(|n| format!("`{n}`"))
            .collect();
        if unknown.is_empty() {
            Ok(names)
        } else {
            Err(format!(
                "no specialist named {} (configured: {})",
                unknown.join(", "),
                configured.join(", ")
            ))
        }
    }

    /// Loads and validates `specialists.toml` and the experiment it names.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let config = load_inner(file, &mut errors);
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

fn err(
    errors: &mut Vec<ConfigError>,
    file: &Path,
    key: impl Into<String>,
    message: impl Into<String>,
) {
    errors.push(ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        message: message.into(),
    });
}

/// The `[executor]` section's semantic checks; the Slurm settings (paths
/// absolute) when the backend is Slurm.
fn check_executor(
    e: &ExecutorSection,
    base: &Path,
    err: &mut dyn FnMut(&str, String),
) -> Option<SlurmSection> {
    if e.backend != BackendKind::Slurm {
        return None;
    }
    if e.gpus.is_some() {
        err(
            "executor.gpus",
            "GPU slots are for local runs; under Slurm, trials get GPUs with executor.slurm.gpus_per_trial".into(),
        );
    }
    let mut s = e.slurm.clone().unwrap_or_default();
    if s.max_jobs == Some(0) {
        err("executor.slurm.max_jobs", "must be at least 1".into());
    }
    if !(s.poll_secs.is_finite() && s.poll_secs >= 0.1) {
        err(
            "executor.slurm.poll_secs",
            format!("{} is not a number of seconds of at least 0.1", s.poll_secs),
        );
    }
    if let Some(bad) = s.sbatch_args.iter().find(|a| !a.starts_with('-')) {
        err(
            "executor.slurm.sbatch_args",
            format!("`{bad}` is not an option (each entry is one `--name=value`)"),
        );
    }
    if let Some(p) = &s.ratchet {
        s.ratchet = Some(base.join(p));
    }
    if !on_path("sbatch") {
        err(
            "executor.backend",
            "`slurm` needs Slurm's client commands (sbatch, squeue, scancel) on PATH; sbatch is not there".into(),
        );
    }
    Some(s)
}

/// The `executor.gpus*` keys' checks; the settings when `gpus` is set.
fn check_gpus(e: &ExecutorSection, err: &mut dyn FnMut(&str, String)) -> Option<GpuSettings> {
    let Some(choice) = e.gpus.clone() else {
        for (key, set) in [
            ("executor.gpus_per_trial", e.gpus_per_trial.is_some()),
            ("executor.gpu_poll_secs", e.gpu_poll_secs.is_some()),
            ("executor.evals_on_gpus", e.evals_on_gpus.is_some()),
        ] {
            if set {
                err(key, "only takes effect with executor.gpus".into());
            }
        }
        return None;
    };
    if let GpuChoice::List(list) = &choice {
        if list.is_empty() {
            err(
                "executor.gpus",
                "lists no GPU (leave it out for CPU slots, or say \"auto\")".into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = list.iter().find(|i| !seen.insert(**i)) {
            err("executor.gpus", format!("lists GPU {dup} twice"));
        }
    }
    let per_trial = e.gpus_per_trial.unwrap_or(1);
    if per_trial == 0 {
        err("executor.gpus_per_trial", "must be at least 1".into());
    }
    let poll = e.gpu_poll_secs.unwrap_or(1.0);
    if !(poll.is_finite() && (0.1..=3600.0).contains(&poll)) {
        err(
            "executor.gpu_poll_secs",
            format!("{poll} is not a number of seconds between 0.1 and 3600"),
        );
    }
    Some(GpuSettings {
        choice,
        per_trial,
        poll: std::time::Duration::from_secs_f64(poll.clamp(0.1, 3600.0)),
        evals: e.evals_on_gpus.unwrap_or(false),
    })
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn load_inner(file: &Path, errors: &mut Vec<ConfigError>) -> Option<Config> {
    let file = absolute(file);
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            err(errors, &file, ".", format!("cannot read: {e}"));
            return None;
        }
    };
    let parsed: Option<SpecialistsFile> = parse_collecting(&file, &text, errors);

    // The experiment is validated even when specialists.toml has errors, as long as
    // its path could be read, so one `ratchet check` shows everything.
    let experiment_dir = parsed
        .as_ref()
        .map(|p| p.daemon.experiment.clone())
        .or_else(|| daemon_value(&text, "experiment"))
        .map(|p| base.join(p));
    let experiment = experiment_dir.and_then(|dir| load_experiment(&dir, errors));

    let parsed = parsed?;
    let d = &parsed.daemon;
    if d.slots == 0 {
        err(errors, &file, "daemon.slots", "must be at least 1");
    }
    if d.max_attempts == 0 {
        err(errors, &file, "daemon.max_attempts", "must be at least 1");
    }
    let slurm = check_executor(&parsed.executor, &base, &mut |k, m| {
        err(errors, &file, k, m)
    });
    let gpus = check_gpus(&parsed.executor, &mut |k, m| err(errors, &file, k, m));
    let lineage_dir = base.join(&d.lineage_dir);
    let socket = match &d.socket {
        Some(p) => base.join(p),
        None => default_socket(&lineage_dir),
    };
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        err(
            errors,
            &file,
            "daemon.socket",
            format!(
                "{} is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH} (set daemon.socket to a shorter one)",
                socket.display(),
                socket.as_os_str().len()
            ),
        );
    }
    let mut names = BTreeSet::new();
    for (i, s) in parsed.specialists.iter().enumerate() {
        let key = |k: &str| format!("specialist[{i}].{k}");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            err(
                errors,
                &file,
                key("name"),
                format!(
                    "`{}` must be non-empty and use only letters, digits, `_` and `-`",
                    s.name
                ),
            );
        }
        if !names.insert(s.name.clone()) {
            err(
                errors,
                &file,
                key("name"),
                format!("duplicate specialist name `{}`", s.name),
            );
        }
        if s.name == "baseline" {
            err(
                errors,
                &file,
                key("name"),
                "`baseline` is reserved for the experiment's own recipe",
            );
        }
        if s.name == "scout" {
            err(
                errors,
                &file,
                key("name"),
                "`scout` is reserved for the trials of `daemon.scouts`",
            );
        }
        if let Some(exp) = &experiment {
            match exp.surface(&s.surface) {
                None => {
                    let known: Vec<&str> =
                        exp.file.surfaces.iter().map(|s| s.name.as_str()).collect();
                    err(
                        errors,
                        &file,
                        key("surface"),
                        format!(
                            "no surface `{}` in {} (surfaces: {})",
                            s.surface,
                            exp.dir.join("experiment.toml").display(),
                            known.join(", ")
                        ),
                    );
                }
                Some(surface)
                    if matches!(s.kind, SpecialistKind::Manual | SpecialistKind::Llm)
                        && !surface.is_editable() =>
                {
                    err(
                        errors,
                        &file,
                        key("surface"),
                        format!(
                            "surface `{}` declares no params, keys or files to edit",
                            s.surface
                        ),
                    );
                }
                Some(surface) if s.kind == SpecialistKind::Search && surface.params.is_empty() => {
                    err(
                        errors,
                        &file,
                        key("surface"),
                        format!(
                            "surface `{}` declares no params for a search specialist",
                            s.surface
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        check_llm(s, &mut |k, m| err(errors, &file, key(k), m));
        if let Some(path) = &s.instructions {
            if !base.join(path).is_file() {
                err(
                    errors,
                    &file,
                    key("instructions"),
                    format!("file {} does not exist", base.join(path).display()),
                );
            }
        }
    }
    if parsed.specialists.is_empty() {
        err(
            errors,
            &file,
            "specialist",
            "no [[specialist]] is configured",
        );
    }
    let experiment = experiment?;
    Some(Config {
        lineage_dir,
        // Under Slurm, the jobs in the cluster at once take the place of slots.
        slots: slurm.as_ref().and_then(|s| s.max_jobs).unwrap_or(d.slots),
        seed: d.seed,
        socket,
        drain_timeout_secs: d.drain_timeout_secs,
        max_attempts: d.max_attempts,
        confirm_first: d.confirm_first,
        scouts: d.scouts,
        allocation: d.allocation,
        slurm,
        gpus,
        gpu_slots: false,
        specialists: parsed
            .specialists
            .iter()
            .map(|s| Specialist {
                name: s.name.clone(),
                surface: s.surface.clone(),
                kind: s.kind,
                instructions: s.instructions.as_ref().map(|p| base.join(p)),
                llm: (s.kind == SpecialistKind::Llm)
                    .then(|| s.llm_section())
                    .flatten(),
            })
            .collect(),
        experiment,
        file,
    })
}

/// The llm keys are there exactly for `kind = "llm"`, with sane values.
fn check_llm(s: &SpecialistSection, report: &mut dyn FnMut(&str, String)) {
    if s.kind != SpecialistKind::Llm {
        for k in s.llm_keys_set() {
            report(k, "only a kind = \"llm\" specialist takes this key".into());
        }
        return;
    }
    for (k, missing) in [
        ("base_url", s.base_url.is_none()),
        ("model", s.model.is_none()),
    ] {
        if missing {
            report(k, "required for kind = \"llm\"".into());
        }
    }
    if s.instructions.is_none() {
        report(
            "instructions",
            "an llm specialist needs its agent file (agents/<name>.md)".into(),
        );
    }
    let Some(llm) = s.llm_section() else {
        return;
    };
    if !(llm.base_url.starts_with("http://") || llm.base_url.starts_with("https://")) {
        report(
            "base_url",
            format!("`{}` is not an http:// or https:// URL", llm.base_url),
        );
    }
    if llm.model.trim().is_empty() {
        report("model", "must not be empty".into());
    }
    if let Some(var) = &llm.api_key_env {
        let valid = !var.is_empty()
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !var.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            report("api_key_env", format!("`{var}` is not an environment variable name (the key itself never goes in this file)"));
        } else if std::env::var_os(var).is_none() {
            report(
                "api_key_env",
                format!("environment variable {var} is not set"),
            );
        }
    }
    if !(0.0..=2.0).contains(&llm.temperature) {
        report(
            "temperature",
            format!("{} is outside 0..=2", llm.temperature),
        );
    }
    for (k, small) in [
        ("timeout_secs", llm.timeout_secs == 0),
        ("max_requests_per_hour", llm.max_requests_per_hour == 0),
        ("max_tokens_per_hour", llm.max_tokens_per_hour == 0),
        ("max_reply_tokens", llm.max_reply_tokens == 0),
        ("prompt_tokens", llm.prompt_tokens < 500),
    ] {
        if small {
            report(k, "is too small".into());
        }
    }
}

/// The lineage directory a specialists file names, read leniently so that the
/// lineage stays readable while the rest of the file is being fixed.
pub fn lineage_dir_of(file: &Path) -> Result<PathBuf, ConfigErrors> {
    daemon_path_of(file, "lineage_dir", Some(default_lineage_dir()))
}

/// The control socket a specialists file sets (`daemon.socket`), read
/// leniently; `None` when it sets none (or cannot be read).
pub fn configured_socket_of(file: &Path) -> Option<PathBuf> {
    daemon_path_of(file, "socket", None).ok()
}

/// The experiment directory a specialists file names, read leniently.
pub fn experiment_dir_of(file: &Path) -> Result<PathBuf, ConfigErrors> {
    daemon_path_of(file, "experiment", None)
}

/// `daemon.<key>` of a specialists file as a path relative to the file,
/// without validating the rest of it.
fn daemon_path_of(
    file: &Path,
    key: &str,
    default: Option<PathBuf>,
) -> Result<PathBuf, ConfigErrors> {
    let file = absolute(file);
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let one = |key: &str, message: String| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            key: key.into(),
            message,
        }])
    };
    let text = std::fs::read_to_string(&file).map_err(|e| one(".", format!("cannot read: {e}")))?;
    match daemon_value(&text, key).or(default) {
        Some(p) => Ok(base.join(p)),
        None => Err(one(&format!("daemon.{key}"), "missing".into())),
    }
}

/// `daemon.<key>` read leniently from TOML text, for validating the
/// experiment even when the rest of specialists.toml does not parse.
fn daemon_value(text: &str, key: &str) -> Option<PathBuf> {
    let table: toml::Table = text.parse().ok()?;
    table.get("daemon")?.get(key)?.as_str().map(PathBuf::from)
}

/// Loads and validates `<dir>/experiment.toml` and reads the recipe defaults.
pub fn load_experiment(dir: &Path, errors: &mut Vec<ConfigError>) -> Option<Experiment> {
    let dir = absolute(dir);
    let file = dir.join("experiment.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            err(errors, &file, ".", format!("cannot read: {e}"));
            return None;
        }
    };
    let exp: ExperimentFile = parse_collecting(&file, &text, errors)?;
    let before = errors.len();
    if exp.metric.is_empty() {
        err(errors, &file, "metric", "must not be empty");
    }
    if exp.budget_secs == 0 {
        err(errors, &file, "budget_secs", "must be at least 1");
    }
    if exp.timeout_secs < exp.budget_secs {
        err(
            errors,
            &file,
            "timeout_secs",
            format!(
                "{} is below budget_secs {}: every trial would be killed",
                exp.timeout_secs, exp.budget_secs
            ),
        );
    }
    if exp.train.is_empty() {
        err(errors, &file, "train", "needs a program");
    }
    if exp.eval.proxy.is_empty() {
        err(errors, &file, "eval.proxy", "needs a program");
    }
    if exp.eval.full.as_ref().is_some_and(|f| f.is_empty()) {
        err(errors, &file, "eval.full", "needs a program");
    }
    if exp.noise.band.is_some() {
        err(
            errors,
            &file,
            "noise.band",
            "was replaced by noise.false_keep_rate: the most a change that is no better may be \
             kept (for example 0.05); a keep now needs a gain clear of the pooled noise at that rate",
        );
    }
    let rate = exp.noise.false_keep_rate;
    if !(rate.is_finite() && rate > 0.0 && rate < 0.5) {
        err(
            errors,
            &file,
            "noise.false_keep_rate",
            "must be a probability above 0 and below 0.5 (for example 0.05)",
        );
    }
    if let Some(prune) = &exp.prune {
        let rate = prune.false_prune_rate;
        if !(rate.is_finite() && rate > 0.0 && rate < 0.5) {
            err(
                errors,
                &file,
                "prune.false_prune_rate",
                "must be a probability above 0 and below 0.5 (for example 0.05)",
            );
        }
        if prune.looks.is_empty()
            || prune
                .looks
                .iter()
                .any(|f| !(f.is_finite() && *f > 0.0 && *f < 1.0))
            || prune.looks.windows(2).any(|w| w[0] >= w[1])
        {
            err(
                errors,
                &file,
                "prune.looks",
                "must be increasing shares of the curve between 0 and 1 (for example [0.25, 0.5, 0.75])",
            );
        }
        if crate::process::parse_metric(&format!("{}=0", prune.metric)).is_none() {
            err(
                errors,
                &file,
                "prune.metric",
                "must be the NAME of progress lines NAME=value at=POSITION",
            );
        }
        for s in prune.surfaces.iter().flatten() {
            if !exp.surfaces.iter().any(|d| &d.name == s) {
                err(
                    errors,
                    &file,
                    "prune.surfaces",
                    format!("names surface {s:?}, which the experiment does not declare"),
                );
            }
        }
    }
    if exp.noise.seeds > 64 {
        err(errors, &file, "noise.seeds", "at most 64 seed re-runs");
    }
    if exp.gates.max_memory_mb == Some(0) {
        err(errors, &file, "gates.max_memory_mb", "must be at least 1");
    }
    if exp.eval.timeout_secs == Some(0) {
        err(errors, &file, "eval.timeout_secs", "must be at least 1");
    }
    // One spelling of the recipe's path: edits and surfaces compare by text.
    if let Err(m) = crate::recipe::check_relative(&exp.recipe.to_string_lossy()) {
        err(
            errors,
            &file,
            "recipe",
            format!("must be a plain relative path inside the experiment directory: {m}"),
        );
    }
    for (i, p) in exp.protected.iter().enumerate() {
        if let Err(m) = crate::recipe::check_relative(p.trim_end_matches('/')) {
            err(errors, &file, format!("protected[{i}]"), m);
        }
    }
    let recipe_str = exp.recipe.to_string_lossy();
    if exp.is_protected(&recipe_str) {
        err(
            errors,
            &file,
            "protected",
            format!("protects the recipe `{recipe_str}`, which every surface edits"),
        );
    }
    let mut surface_names = BTreeSet::new();
    let mut param_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, s) in exp.surfaces.iter().enumerate() {
        if !surface_names.insert(s.name.as_str()) {
            err(
                errors,
                &file,
                format!("surface[{i}].name"),
                format!("duplicate surface `{}`", s.name),
            );
        }
        for (j, f) in s.files.iter().enumerate() {
            let key = format!("surface[{i}].files[{j}]");
            if let Err(m) = crate::recipe::check_relative(f.trim_end_matches('/')) {
                err(errors, &file, key, m);
            } else if exp.is_protected(f) {
                err(errors, &file, key, format!("`{f}` is protected"));
            } else if under(&recipe_str, f, '/') {
                err(
                    errors,
                    &file,
                    key,
                    format!(
                        "the recipe `{recipe_str}` is edited through params and keys, not files"
                    ),
                );
            }
        }
        for (j, k) in s.keys.iter().enumerate() {
            let others = exp.surfaces.iter().filter(|o| o.name != s.name);
            let taken = others
                .flat_map(|o| o.params.keys().chain(&o.keys).map(move |p| (o, p)))
                .find(|(_, p)| under(p, k, '.') || under(k, p, '.'));
            if let Some((o, p)) = taken {
                err(
                    errors,
                    &file,
                    format!("surface[{i}].keys[{j}]"),
                    format!("`{k}` overlaps `{p}` of surface `{}`", o.name),
                );
            }
            if k.is_empty() || k.split('.').any(str::is_empty) {
                err(
                    errors,
                    &file,
                    format!("surface[{i}].keys[{j}]"),
                    format!("`{k}` is not a dotted recipe key"),
                );
            }
        }
        for (k, cond) in &s.when {
            let key = format!("surface[{i}].when.{}", quote_key(k));
            if !s.params.contains_key(k) {
                err(
                    errors,
                    &file,
                    key.clone(),
                    format!("`{k}` is not a parameter of surface `{}`", s.name),
                );
            }
            if cond.is_empty() {
                err(errors, &file, key.clone(), "names no parameter".to_string());
            }
            for (c, values) in cond {
                let spec = exp.params().find(|(p, _)| *p == c).map(|(_, spec)| spec);
                match spec {
                    None => err(
                        errors,
                        &file,
                        format!("{key}.{}", quote_key(c)),
                        format!("`{c}` is not a declared parameter"),
                    ),
                    Some(_) if c == k => err(
                        errors,
                        &file,
                        format!("{key}.{}", quote_key(c)),
                        "a parameter cannot depend on itself".to_string(),
                    ),
                    Some(_) if values.is_empty() => err(
                        errors,
                        &file,
                        format!("{key}.{}", quote_key(c)),
                        "lists no value".to_string(),
                    ),
                    Some(spec) => {
                        for v in values.iter().filter(|v| !spec.contains(&spec.normalize(v))) {
                            err(
                                errors,
                                &file,
                                format!("{key}.{}", quote_key(c)),
                                format!("{v} is outside the declared space of `{c}`"),
                            );
                        }
                    }
                }
            }
        }
        for (k, spec) in &s.params {
            let key = format!("surface[{i}].params.{}", quote_key(k));
            if let Err(m) = spec.check() {
                err(errors, &file, key.clone(), m);
            }
            if let Some(other) = param_owner.insert(k, &s.name) {
                err(
                    errors,
                    &file,
                    key,
                    format!("parameter already belongs to surface `{other}`"),
                );
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    let recipe_path = dir.join(&exp.recipe);
    let defaults = read_defaults(&recipe_path, &exp, errors)?;
    Some(Experiment {
        dir,
        file: exp,
        defaults,
    })
}

/// Reads the recipe's value of every declared parameter and checks it against its space.
fn read_defaults(
    recipe: &Path,
    exp: &ExperimentFile,
    errors: &mut Vec<ConfigError>,
) -> Option<Params> {
    let text = match std::fs::read_to_string(recipe) {
        Ok(t) => t,
        Err(e) => {
            err(errors, recipe, ".", format!("cannot read the recipe: {e}"));
            return None;
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            err(
                errors,
                recipe,
                ".",
                format!("invalid TOML: {}", one_line(&e.to_string())),
            );
            return None;
        }
    };
    let mut defaults = Params::new();
    let before = errors.len();
    for s in &exp.surfaces {
        for (k, spec) in &s.params {
            match param_of(&table, k, spec) {
                None => err(errors, recipe, k.clone(), format!("surface `{}` declares this parameter but the recipe has no such key (or not a number, string or bool)", s.name)),
                Some(v) if !spec.contains(&v) => err(errors, recipe, k.clone(), format!("value {v} is outside the declared space {spec:?}")),
                Some(v) => {
                    defaults.insert(k.clone(), v);
                }
            }
        }
    }
    (errors.len() == before).then_some(defaults)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A map key as it appears in a key path: bare when it can be, quoted otherwise.
fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// Deserializes `text` into `T`, collecting every structural error (unknown key,
/// wrong type, missing key) instead of stopping at the first: each error's key
/// is removed and deserialization retried, so one run reports them all.
fn parse_collecting<T: DeserializeOwned>(
    file: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            err(
                errors,
                file,
                ".",
                format!("invalid TOML: {}", one_line(&e.to_string())),
            );
            return None;
        }
    };
    let mut value = toml::Value::Table(table);
    let mut removed: Vec<Vec<String>> = Vec::new();
    let mut failed = false;
    for _ in 0..100 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return (!failed).then_some(v),
            Err(e) => e,
        };
        failed = true;
        let mut message = one_line(&e.inner().to_string());
        // toml appends ` in `key.path``; the path is reported separately.
        if let Some(i) = message.rfind(" in `").filter(|_| message.ends_with('`')) {
            message.truncate(i);
        }
        let mut path: Vec<String> = Vec::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Map { key } => path.push(key.clone()),
                serde_path_to_error::Segment::Seq { index } => path.push(format!("[{index}]")),
                _ => {}
            }
        }
        // An unknown field may be reported at its parent; the key is in the message.
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            if path.last().map(String::as_str) != Some(name) {
                path.push(name.to_string());
            }
        }
        // A missing key that we removed ourselves was already reported as wrong.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_string);
        let already = missing.as_ref().is_some_and(|name| {
            let mut full = path.clone();
            full.push(name.clone());
            removed.contains(&full)
        });
        if !already {
            let key = match &missing {
                Some(name) => render_path(&[path.clone(), vec![name.clone()]].concat()),
                None => render_path(&path),
            };
            err(errors, file, key, message);
        }
        if missing.is_some() || !remove_at(&mut value, &path) {
            return None;
        }
        removed.push(path);
    }
    None
}

fn render_path(path: &[String]) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let mut out = String::new();
    for p in path {
        if p.starts_with('[') {
            out.push_str(p);
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&quote_key(p));
        }
    }
    out
}

fn remove_at(value: &mut toml::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = value;
    for p in parents {
        current = match (
            p.strip_prefix('[').and_then(|s| s.strip_suffix(']')),
            current,
        ) {
            (Some(i), toml::Value::Array(a)) => {
                match i.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    Some(v) => v,
                    None => return false,
                }
            }
            (None, toml::Value::Table(t)) => match t.get_mut(p) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match current {
        toml::Value::Table(t) => t.remove(last).is_some(),
        toml::Value::Array(a) => match last.trim_matches(|c| c == '[' || c == ']').parse::<usize>()
        {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<ConfigError>) {
        let mut errors = Vec::new();
        let v = parse_collecting::<T>(Path::new("f.toml"), text, &mut errors);
        (v, errors)
    }

    #[test]
    fn reports_unknown_key_and_wrong_type_together() {
        let (v, errors) = collect::<SpecialistsFile>(
            "[daemon]\nexperiment = \"e\"\nslots = \"two\"\ncolour = 1\n\n[[specialist]]\nname = \"a\"\nsurface = \"s\"\nkind = \"search\"\nbogus = true\n",
        );
        assert!(v.is_none());
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"daemon.slots"), "{errors:?}");
        assert!(keys.contains(&"daemon.colour"), "{errors:?}");
        assert!(keys.contains(&"specialist[0].bogus"), "{errors:?}");
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn reports_missing_key_once() {
        let (_, errors) = collect::<SpecialistsFile>("[daemon]\nslots = 2\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "daemon.experiment");
    }

    #[test]
    fn param_specs_parse_and_check() {
        let (v, errors) = collect::<SurfaceSection>(
            "name = \"opt\"\n[params]\n\"optimizer.lr\" = { type = \"log_float\", min = 0.0, max = 1.0 }\n\"optimizer.kind\" = { type = \"choice\", values = [\"a\", \"b\"] }\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let s = v.unwrap();
        assert!(s.params["optimizer.lr"].check().is_err());
        assert!(s.params["optimizer.kind"].check().is_ok());
        assert!(s.params["optimizer.kind"].contains(&ParamValue::Str("a".into())));
        assert!(!s.params["optimizer.kind"].contains(&ParamValue::Str("c".into())));
    }

    #[test]
    fn unknown_field_inside_a_param_spec_is_named() {
        let (_, errors) = collect::<SurfaceSection>(
            "name = \"opt\"\n[params]\n\"optimizer.lr\" = { type = \"float\", min = 0.0, max = 1.0, step = 2 }\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("step"), "{errors:?}");
        assert!(
            errors[0].key.starts_with("params.\"optimizer.lr\""),
            "{errors:?}"
        );
    }
}
