//! tinylm's recipe: `recipe.toml`, one table per surface. Parsed strictly and
//! validated as a whole so a bad value fails with a clear message, not a panic.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::data::{Mix, Source};
use super::model::{Activation, GptConfig, Norm, Position};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Seed of initialization and batch sampling.
    #[serde(default)]
    pub seed: u64,
    pub optimizer: Optimizer,
    pub data_mix: DataMix,
    pub architecture: Architecture,
    pub checkpoint: Checkpoint,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimizer {
    /// Peak learning rate of AdamW.
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: u64,
    /// The schedule's final learning rate as a share of `lr`.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Global gradient-norm clip; 0 turns it off.
    pub grad_clip: f64,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Stop after this many steps even with budget left (0: the budget decides).
    /// With it set, a run is deterministic for its seed.
    #[serde(default)]
    pub max_steps: u64,
}

fn default_min_lr_ratio() -> f64 {
    0.1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Cosine,
    Linear,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMix {
    pub markov: f64,
    pub arithmetic: f64,
    pub brackets: f64,
    pub copy: f64,
    pub noise: f64,
    /// Weight of the optional user text file.
    #[serde(default)]
    pub text: f64,
    /// A UTF-8 or binary file to train on as well (relative to the recipe).
    #[serde(default)]
    pub text_file: Option<PathBuf>,
    pub curriculum: Curriculum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curriculum {
    None,
    /// Train on a quarter of seq_len for the first quarter of the run, half for the second.
    ShortToLong,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub norm: Norm,
    pub position: Position,
    pub tied_embeddings: bool,
    pub activation: Activation,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Steps between checkpoints (also the resume granularity after a kill).
    pub save_interval: u64,
    pub submit: Submit,
    /// For `submit = "average"`: how many of the last checkpoints to average.
    #[serde(default = "default_average_last")]
    pub average_last: usize,
}

fn default_average_last() -> usize {
    3
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Submit {
    /// The weights at the end of the budget.
    Last,
    /// The checkpoint with the lowest loss on the trainer's held-out split.
    Best,
    /// The mean of the last `average_last` checkpoints.
    Average,
}

impl Recipe {
    /// Reads and validates a recipe; the error lists every problem.
    pub fn load(path: &Path) -> Result<Recipe, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read recipe {}: {e}", path.display()))?;
        let mut recipe: Recipe = toml::from_str(&text).map_err(|e| {
            format!(
                "invalid recipe {}: {}",
                path.display(),
                e.to_string().replace('\n', " ")
            )
        })?;
        if let Some(f) = &recipe.data_mix.text_file {
            if f.as_os_str().is_empty() {
                recipe.data_mix.text_file = None;
            } else {
                recipe.data_mix.text_file = Some(path.parent().unwrap_or(Path::new(".")).join(f));
            }
        }
        let problems = recipe.problems();
        if problems.is_empty() {
            Ok(recipe)
        } else {
            Err(format!(
                "invalid recipe {}: {}",
                path.display(),
                problems.join("; ")
            ))
        }
    }

    /// Every value that cannot train, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let o = &self.optimizer;
        let mut check = |ok: bool, msg: String| {
            if !ok {
                p.push(msg);
            }
        };
        check(
            o.lr.is_finite() && o.lr > 0.0,
            format!("optimizer.lr must be > 0, got {}", o.lr),
        );
        check(
            (0.0..=1.0).contains(&o.min_lr_ratio),
            format!(
                "optimizer.min_lr_ratio must be in [0, 1], got {}",
                o.min_lr_ratio
            ),
        );
        check(
            o.weight_decay >= 0.0,
            format!(
                "optimizer.weight_decay must be >= 0, got {}",
                o.weight_decay
            ),
        );
        check(
            (0.0..1.0).contains(&o.beta1),
            format!("optimizer.beta1 must be in [0, 1), got {}", o.beta1),
        );
        check(
            (0.0..1.0).contains(&o.beta2),
            format!("optimizer.beta2 must be in [0, 1), got {}", o.beta2),
        );
        check(
            o.grad_clip >= 0.0,
            format!("optimizer.grad_clip must be >= 0, got {}", o.grad_clip),
        );
        check(
            (1..=4096).contains(&o.batch_size),
            format!(
                "optimizer.batch_size must be in 1..=4096, got {}",
                o.batch_size
            ),
        );
        check(
            (4..=4096).contains(&o.seq_len),
            format!("optimizer.seq_len must be in 4..=4096, got {}", o.seq_len),
        );
        let a = &self.architecture;
        check(
            (1..=64).contains(&a.layers),
            format!("architecture.layers must be in 1..=64, got {}", a.layers),
        );
        check(
            (8..=4096).contains(&a.width),
            format!("architecture.width must be in 8..=4096, got {}", a.width),
        );
        check(
            a.heads >= 1 && a.width.is_multiple_of(a.heads.max(1)),
            format!(
                "architecture.heads ({}) must divide architecture.width ({})",
                a.heads, a.width
            ),
        );
        if a.position == Position::Rope && a.heads >= 1 && a.width.is_multiple_of(a.heads) {
            check(
                (a.width / a.heads).is_multiple_of(2),
                format!(
                    "rope needs an even head size, width/heads = {}",
                    a.width / a.heads
                ),
            );
        }
        check(
            a.mlp_ratio > 0.0 && a.mlp_ratio <= 16.0,
            format!(
                "architecture.mlp_ratio must be in (0, 16], got {}",
                a.mlp_ratio
            ),
        );
        let d = &self.data_mix;
        let generated = self.source_weights().map(|(s, w)| (s.name(), w));
        for (name, w) in generated.into_iter().chain([("text", d.text)]) {
            check(
                w.is_finite() && w >= 0.0,
                format!("data_mix.{name} must be >= 0, got {w}"),
            );
        }
        check(
            self.weights().values().sum::<f64>() + d.text.max(0.0) > 0.0,
            "data_mix has no positive weight".into(),
        );
        if d.text > 0.0 {
            match &d.text_file {
                None => check(false, "data_mix.text > 0 needs data_mix.text_file".into()),
                Some(f) => check(
                    f.is_file(),
                    format!("data_mix.text_file {} does not exist", f.display()),
                ),
            }
        }
        let c = &self.checkpoint;
        check(
            c.save_interval >= 1,
            "checkpoint.save_interval must be >= 1".into(),
        );
        check(
            c.average_last >= 1,
            "checkpoint.average_last must be >= 1".into(),
        );
        p
    }

    /// Weights of the generated sources.
    /// The `[data_mix]` weight of every generated source, zero or not.
    fn source_weights(&self) -> [(Source, f64); 5] {
        let d = &self.data_mix;
        [
            (Source::Markov, d.markov),
            (Source::Arithmetic, d.arithmetic),
            (Source::Brackets, d.brackets),
            (Source::Copy, d.copy),
            (Source::Noise, d.noise),
        ]
    }

    /// Weights of the generated sources that are trained on (positive).
    pub fn weights(&self) -> Mix {
        self.source_weights()
            .into_iter()
            .filter(|(_, w)| *w > 0.0)
            .collect()
    }

    pub fn model_config(&self) -> GptConfig {
        let a = &self.architecture;
        GptConfig {
            layers: a.layers,
            width: a.width,
            heads: a.heads,
            mlp_ratio: a.mlp_ratio,
            norm: a.norm,
            position: a.position,
            tied_embeddings: a.tied_embeddings,
            activation: a.activation,
            seq_len: self.optimizer.seq_len,
        }
    }

    /// Learning rate at `progress` ∈ [0, 1] of the run, after `step` steps.
    pub fn lr_at(&self, step: u64, progress: f64) -> f64 {
        let o = &self.optimizer;
        if step < o.warmup_steps {
            return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
        }
        let p = progress.clamp(0.0, 1.0);
        let floor = o.lr * o.min_lr_ratio;
        match o.schedule {
            Schedule::Constant => o.lr,
            Schedule::Linear => floor + (o.lr - floor) * (1.0 - p),
            Schedule::Cosine => {
                floor + (o.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }

    /// The context length to train on at `progress`.
    pub fn seq_len_at(&self, progress: f64) -> usize {
        let t = self.optimizer.seq_len;
        match self.data_mix.curriculum {
            Curriculum::ShortToLong if progress < 0.25 => (t / 4).max(2),
            Curriculum::ShortToLong if progress < 0.5 => (t / 2).max(2),
            _ => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../experiments/tinylm/recipe.toml");

    fn load(text: &str) -> Result<Recipe, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("recipe.toml");
        std::fs::write(&p, text).unwrap();
        Recipe::load(&p)
    }

    #[test]
    fn the_shipped_recipe_is_valid() {
        let r = load(GOOD).unwrap();
        assert!(r.problems().is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let e = load(
            &GOOD
                .replace("lr = ", "lr = -")
                .replacen("heads = 4", "heads = 3", 1),
        )
        .unwrap_err();
        assert!(e.contains("optimizer.lr must be > 0"), "{e}");
        assert!(e.contains("heads (3) must divide"), "{e}");
        let e = load(&GOOD.replace("[data_mix]", "[data_mix]\nshakespeare = 1.0")).unwrap_err();
        assert!(e.contains("unknown field `shakespeare`"), "{e}");
    }

    #[test]
    fn schedules_warm_up_and_decay() {
        let mut r = load(GOOD).unwrap();
        r.optimizer.warmup_steps = 10;
        r.optimizer.schedule = Schedule::Cosine;
        assert!(r.lr_at(0, 0.0) < r.lr_at(9, 0.0));
        assert!((r.lr_at(10, 0.0) - r.optimizer.lr).abs() < 1e-12);
        assert!((r.lr_at(10, 1.0) - r.optimizer.lr * r.optimizer.min_lr_ratio).abs() < 1e-12);
    }
}
