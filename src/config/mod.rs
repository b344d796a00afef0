//! Configuration: `specialists.toml` and `experiments/<name>/experiment.toml`,
//! parsed with serde and validated as a whole, every error with its file and
//! key path. `specialists` and `experiment` are the files' types, `load` and
//! `load_experiment` their validation, `read` the strict parser that
//! collects every error; this module is the resolved `Config` the rest of
//! the program sees.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::domain::{Direction, ParamValue, Params};
use crate::recipe::{param_of, ParamSpec};

mod experiment;
mod load;
mod load_experiment;
mod read;
mod specialists;

pub use experiment::*;
use load::*;
pub use load_experiment::load_experiment;
use read::*;
pub use specialists::*;

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

/// A validated configuration with absolute paths.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub lineage_dir: PathBuf,
    pub slots: usize,
    pub seed: u64,
    pub socket: PathBuf,
    /// `daemon.http`: where the dashboard and `/metrics` listen.
    pub http: Option<std::net::SocketAddr>,
    pub drain_timeout_secs: u64,
    pub max_attempts: u32,
    pub confirm_first: bool,
    /// `daemon.scouts`.
    pub scouts: u64,
    /// `daemon.allocation`.
    pub allocation: crate::allocation::Allocation,
    /// `daemon.stop_after`, `stop_when_no_keep_for`, `stop_after_trials`.
    pub stop: StopRules,
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

/// When a daemon stops by itself (`daemon::stop`); none by default.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StopRules {
    /// `stop_after`: this long after the daemon started.
    pub after: Option<std::time::Duration>,
    /// `stop_when_no_keep_for`: this long after the last keep (or the
    /// start, when later).
    pub no_keep_for: Option<std::time::Duration>,
    /// `stop_after_trials`: lineage holds this many trials.
    pub trials: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Specialist {
    pub name: String,
    pub surface: String,
    pub kind: SpecialistKind,
    pub instructions: Option<PathBuf>,
    /// `program`: the instructions every specialist shares.
    pub program: Option<PathBuf>,
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
