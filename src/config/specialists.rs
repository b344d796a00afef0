//! The types of `specialists.toml`.

use super::*;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialistsFile {
    /// Instructions every specialist shares (autoresearch's `program.md`),
    /// put before each one's agent file; relative to specialists.toml.
    #[serde(default)]
    pub program: Option<PathBuf>,
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

pub(super) fn default_poll_secs() -> f64 {
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
    /// Stop rules: when one fires the daemon drains as on SIGTERM and
    /// exits 0. A duration from the daemon's start (`"48h"`).
    pub stop_after: Option<String>,
    /// A duration without a keep, from the last keep or the daemon's start
    /// (`"6h"`).
    pub stop_when_no_keep_for: Option<String>,
    /// The trials lineage may hold; the daemon asks for no more and stops
    /// once those are decided.
    pub stop_after_trials: Option<u64>,
    /// The read-only web dashboard and `/metrics` (`"127.0.0.1:8787"`);
    /// off when absent.
    pub http: Option<String>,
    /// `http` may be an address other than loopback (anyone who reaches
    /// it reads the lineage: prompts, diffs, logs).
    #[serde(default)]
    pub http_allow_remote: bool,
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn default_lineage_dir() -> PathBuf {
    PathBuf::from("lineage")
}

pub(super) fn default_drain_timeout() -> u64 {
    300
}

pub(super) fn default_max_attempts() -> u32 {
    3
}

/// The longest path a Unix socket address holds (108 bytes with the NUL).
pub(super) const MAX_SOCKET_PATH: usize = 107;

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

pub(super) fn default_slots() -> usize {
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
    /// A GGUF file run by ratchet itself instead of an endpoint.
    pub model_path: Option<PathBuf>,
    pub model: Option<String>,
    pub api_key_env: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub device: Option<String>,
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
    pub(super) fn llm_keys_set(&self) -> Vec<&'static str> {
        let set = [
            ("base_url", self.base_url.is_some()),
            ("model_path", self.model_path.is_some()),
            ("model", self.model.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("temperature", self.temperature.is_some()),
            ("top_p", self.top_p.is_some()),
            ("seed", self.seed.is_some()),
            ("device", self.device.is_some()),
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

    /// The model's settings with defaults, when `base_url` and `model` or
    /// `model_path` are given (`model_path` as written, relative to the file).
    pub fn llm_section(&self) -> Option<LlmSection> {
        let mut l = match &self.model_path {
            Some(path) => LlmSection::local(path.clone()),
            None => LlmSection::new(self.base_url.as_ref()?, self.model.as_ref()?),
        };
        if let Some(model) = &self.model {
            l.model = model.clone();
        }
        l.api_key_env = self.api_key_env.clone();
        l.temperature = self.temperature.unwrap_or(l.temperature);
        l.top_p = self.top_p;
        l.seed = self.seed;
        l.device = self.device.clone().unwrap_or(l.device);
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
    /// The API root, such as `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`
    /// (empty for a local model).
    pub base_url: String,
    /// A GGUF file run in a `ratchet llm-worker` child process instead of an
    /// endpoint (resolved against specialists.toml's directory).
    pub model_path: Option<PathBuf>,
    /// The model's name at the endpoint (a local model: the file's stem, for logs).
    pub model: String,
    /// The name of the environment variable holding the API key (the key
    /// itself never appears in configuration). Local servers need none.
    pub api_key_env: Option<String>,
    /// Default 0.7.
    pub temperature: f32,
    /// Nucleus sampling (a local model: default 0.95; an endpoint gets it
    /// only when set).
    pub top_p: Option<f32>,
    /// The first reply's sampling seed, one more for each reply after it
    /// (a local model; default: drawn from the daemon's seed).
    pub seed: Option<u64>,
    /// Where a local model runs: `cpu` (default) or `cuda:N` (a build with
    /// `--features cuda`; that GPU is not leased to trials, so leave it out
    /// of `[executor] gpus`).
    pub device: String,
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
            model_path: None,
            model: model.to_string(),
            api_key_env: None,
            temperature: 0.7,
            top_p: None,
            seed: None,
            device: "cpu".into(),
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

    /// A local model file with every limit at its default.
    pub fn local(path: PathBuf) -> LlmSection {
        let name = path
            .file_stem()
            .map_or("local".into(), |s| s.to_string_lossy().into_owned());
        LlmSection {
            model_path: Some(path),
            // A small model's replies are short: the most a proposal needs.
            max_reply_tokens: 1024,
            // Decoding on a CPU: several minutes for a long prompt.
            timeout_secs: 600,
            ..LlmSection::new("", &name)
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonMode {
    /// The surface's schema (`json_schema`); a server that refuses it is
    /// asked for `json_object` with the schema beside it (llama-cpp-python),
    /// then plain `json_object`, then plain text.
    #[default]
    Auto,
    /// `json_object` only.
    On,
    /// The surface's schema only (`json_schema`, or `json_object` with the
    /// schema where a server refuses `json_schema`).
    Schema,
    /// Plain text (a local model: decoded without the grammar).
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
