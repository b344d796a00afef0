//! `ratchet init --from autoresearch DIR`: an `experiment.toml`, a
//! `specialists.toml` and agent files for a directory shaped like
//! karpathy/autoresearch (a fixed `prepare.py` that computes the score, a
//! `train.py` the agents edit, a `program.md` of instructions), read from
//! what those files say: the summary block train.py prints, the budget
//! program.md states, the run command pyproject.toml implies.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

/// The shapes `init` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    /// karpathy/autoresearch and its forks: prepare.py, train.py, program.md.
    Autoresearch,
}

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// The shape of the directory.
    #[arg(long, value_enum)]
    from: Shape,
    /// The directory to set up (it gets experiment.toml, specialists.toml
    /// and agents/).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The metric, when the summary block does not make it clear (default:
    /// the block's only `val_*` value).
    #[arg(long)]
    metric: Option<String>,
    /// Lower is better (default: from the metric's name, such as bpb or loss).
    #[arg(long, conflicts_with = "maximize")]
    minimize: bool,
    /// Higher is better (default: from the metric's name, such as acc).
    #[arg(long)]
    maximize: bool,
    /// More files no edit may touch, besides prepare.py.
    #[arg(long = "protect", value_name = "PATH")]
    protect: Vec<String>,
    /// The LLM endpoint of the specialists (OpenAI-compatible).
    #[arg(long, default_value = "https://api.openai.com/v1")]
    base_url: String,
    /// The model the specialists ask.
    #[arg(long, default_value = "gpt-4.1")]
    model: String,
    /// The environment variable holding the API key ("" for none, as a
    /// local server needs).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Trials that run at once.
    #[arg(long, default_value_t = 1)]
    slots: usize,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
}

/// What the directory told us, and what is written from it.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    pub metric: String,
    pub minimize: bool,
    /// `*_pass` values of the summary block: gated at 1 (true).
    pub gates: Vec<String>,
    pub budget_secs: u64,
    pub timeout_secs: u64,
    /// Where the budget came from, for the summary printed.
    pub budget_from: String,
    pub train: Vec<String>,
    pub protected: Vec<String>,
}

/// The specialists `init` writes: name, what it works on.
const SPECIALISTS: [(&str, &str); 4] = [
    (
        "optimizer",
        "the optimizer and its schedule: learning rates of each parameter group, \
         warmup and warmdown, betas, weight decay, gradient clipping, the optimizer itself",
    ),
    (
        "architecture",
        "the model: depth, width, heads, attention variants and windows, activations, \
         normalization, embeddings, initialization, residual scalings",
    ),
    (
        "data",
        "data and batch: batch size in tokens, sequence length, gradient accumulation, \
         the order and mix of what the model sees within the budget",
    ),
    (
        "speed",
        "evaluation-safe speedups: anything that lets more training happen in the same \
         wall-clock budget without changing what is computed (compilation, precision \
         where it is safe, fused or cheaper kernels, less overhead per step)",
    ),
];

/// Runs `ratchet init`; what it wrote, one path per line.
pub fn run(args: &InitArgs) -> anyhow::Result<std::process::ExitCode> {
    let Shape::Autoresearch = args.from;
    let dir = &args.dir;
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(std::process::ExitCode::from(2));
        }
    };
    let files = files(&plan, args);
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _)| dir.join(p).exists())
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !existing.is_empty() && !args.force {
        eprintln!(
            "error: {} already has {}; nothing was written (--force replaces them)",
            dir.display(),
            existing.join(", ")
        );
        return Ok(std::process::ExitCode::from(2));
    }
    std::fs::create_dir_all(dir.join("agents"))?;
    for (path, text) in &files {
        std::fs::write(dir.join(path), text)?;
        println!("wrote {}", dir.join(path).display());
    }
    let direction = if plan.minimize { "lower" } else { "higher" };
    println!(
        "metric {} ({direction} is better), read from the summary block train.py prints; \
         budget {} s ({}), killed at {} s; train: {}; protected: {}{}",
        plan.metric,
        plan.budget_secs,
        plan.budget_from,
        plan.timeout_secs,
        plan.train.join(" "),
        plan.protected.join(", "),
        if plan.gates.is_empty() {
            String::new()
        } else {
            format!("; gated: {} must be true", plan.gates.join(", "))
        }
    );
    let config = dir.join("specialists.toml");
    println!(
        "next: ratchet check -c {0} && ratchet run -c {0}",
        config.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Reads the directory; an error says what is missing or unclear.
pub fn plan(args: &InitArgs) -> Result<Plan, String> {
    let dir = &args.dir;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let needed = [
        ("train.py", "the training script the agents edit"),
        (
            "prepare.py",
            "the fixed data preparation and evaluation that computes the score",
        ),
        ("program.md", "the instructions the agents share"),
    ];
    let missing: Vec<String> = needed
        .iter()
        .filter(|(f, _)| !dir.join(f).is_file())
        .map(|(f, why)| format!("{f} ({why})"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} does not have the autoresearch shape: missing {}",
            dir.display(),
            missing.join(", ")
        ));
    }
    let read =
        |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("cannot read {f}: {e}"));
    let (train, program) = (read("train.py")?, read("program.md")?);
    let block = summary_block(&train);
    let gates: Vec<String> = block.iter().filter(|n| is_gate(n)).cloned().collect();
    let metric = match &args.metric {
        Some(m) => {
            if !block.is_empty() && !block.contains(m) {
                return Err(format!(
                    "train.py's summary block prints {}, not `{m}`",
                    block.join(", ")
                ));
            }
            m.clone()
        }
        None => {
            let candidates: Vec<&String> = block
                .iter()
                .filter(|n| n.starts_with("val_") && !is_gate(n))
                .collect();
            match candidates.as_slice() {
                [one] => (*one).clone(),
                [] if block.is_empty() => {
                    return Err("train.py prints no summary block (`print(\"---\")` then \
                         `print(f\"NAME: {value}\")` lines): name the metric with --metric"
                        .into())
                }
                _ => {
                    return Err(format!(
                        "cannot tell which of the summary block's values is the metric ({}): \
                         name it with --metric",
                        block.join(", ")
                    ))
                }
            }
        }
    };
    let minimize = match (args.minimize, args.maximize, direction_of(&metric)) {
        (true, _, _) => true,
        (_, true, _) => false,
        (_, _, Some(d)) => d,
        _ => {
            return Err(format!(
                "cannot tell whether a lower or a higher `{metric}` is better: pass --minimize or --maximize"
            ))
        }
    };
    let (budget_secs, timeout_secs, budget_from) = match budget(&program) {
        (Some(b), Some(t)) if t > b => (b, t, "program.md".to_string()),
        (Some(b), _) => (
            b,
            b * 2,
            "program.md; no kill time stated, twice the budget".into(),
        ),
        (None, _) => (300, 600, "not stated in program.md: the default".into()),
    };
    let uv = dir.join("pyproject.toml").is_file()
        && (dir.join("uv.lock").is_file() || read("pyproject.toml")?.contains("[tool.uv"));
    let train_cmd = if uv {
        vec!["uv".into(), "run".into(), "train.py".into()]
    } else {
        vec!["python3".into(), "train.py".into()]
    };
    let mut protected = vec!["prepare.py".to_string()];
    for p in &args.protect {
        if !dir.join(p).exists() {
            return Err(format!("--protect {p}: no such file in {}", dir.display()));
        }
        if p == "train.py" {
            return Err("--protect train.py: train.py is the file the agents edit".into());
        }
        if !protected.contains(p) {
            protected.push(p.clone());
        }
    }
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "autoresearch".into());
    Ok(Plan {
        name,
        metric,
        minimize,
        gates,
        budget_secs,
        timeout_secs,
        budget_from,
        train: train_cmd,
        protected,
    })
}

/// A boolean of the summary block that must be true for a keep.
fn is_gate(name: &str) -> bool {
    name.ends_with("_pass") || name.ends_with("_passed") || name.ends_with("_ok")
}

/// The names train.py prints in its last summary block: the
/// `print(f"NAME: ...")` lines after the last `print("---")`.
pub fn summary_block(train: &str) -> Vec<String> {
    let line = regex::Regex::new(r#"^\s*print\(\s*f?["']([A-Za-z_][A-Za-z0-9_.]*):"#)
        .expect("a valid pattern");
    let start = regex::Regex::new(r#"^\s*print\(\s*["']---["']\s*\)"#).expect("a valid pattern");
    let mut names: Vec<String> = Vec::new();
    let mut seen = false;
    for l in train.lines() {
        if start.is_match(l) {
            names.clear();
            seen = true;
        } else if let Some(c) = line.captures(l).filter(|_| seen) {
            names.push(c[1].to_string());
        }
    }
    names
}

/// Whether lower is better, from the metric's name.
fn direction_of(metric: &str) -> Option<bool> {
    let m = metric.to_ascii_lowercase();
    let lower = [
        "bpb",
        "bpc",
        "loss",
        "error",
        "err",
        "mse",
        "mae",
        "rmse",
        "nll",
        "perplexity",
        "ppl",
        "seconds",
        "time",
    ];
    let higher = [
        "acc", "accuracy", "auc", "f1", "r2", "score", "reward", "sharpe", "return",
    ];
    let parts: Vec<&str> = m.split(['_', '.']).collect();
    if parts.iter().any(|p| lower.contains(p)) {
        Some(true)
    } else if parts.iter().any(|p| higher.contains(p)) {
        Some(false)
    } else {
        None
    }
}

/// The budget and the kill time program.md states, in seconds: the first
/// duration in a sentence about the time budget, and in one that says to
/// kill a run.
pub fn budget(program: &str) -> (Option<u64>, Option<u64>) {
    let text = program.replace("**", "").replace('\n', " ");
    let duration = regex::Regex::new(
        r"(?i)(\d+(?:\.\d+)?)\s*(hours?|hrs?|minutes?|mins?|seconds?|secs?|h|m|s)\b",
    )
    .expect("a valid pattern");
    let first = |sentence: &str| {
        duration.captures(sentence).and_then(|c| {
            let n: f64 = c[1].parse().ok()?;
            let unit = c[2].to_ascii_lowercase();
            let secs = match unit.chars().next()? {
                'h' => n * 3600.0,
                'm' => n * 60.0,
                _ => n,
            };
            Some(secs.round().max(1.0) as u64)
        })
    };
    let breaks = regex::Regex::new(r"[.!?:]\s+").expect("a valid pattern");
    let sentences: Vec<&str> = breaks.split(&text).collect();
    let find = |words: &[&str]| {
        sentences
            .iter()
            .filter(|s| {
                let l = s.to_ascii_lowercase();
                words.iter().any(|w| l.contains(w))
            })
            .find_map(|s| first(s))
    };
    (find(&["time budget"]), find(&["kill"]))
}

/// The files `init` writes, relative to the directory.
fn files(plan: &Plan, args: &InitArgs) -> Vec<(PathBuf, String)> {
    let mut out = vec![
        (PathBuf::from("experiment.toml"), experiment_toml(plan)),
        (
            PathBuf::from("specialists.toml"),
            specialists_toml(plan, args),
        ),
    ];
    for (name, focus) in SPECIALISTS {
        out.push((
            Path::new("agents").join(format!("{name}.md")),
            format!(
                "# Specialist: {name}\n\nYour focus is {focus}. Other specialists edit the same \
                 train.py for their own domains; stay within yours, so each trial tests one idea.\n\n\
                 Prefer one clear change per trial over several at once: a trial that mixes \
                 changes cannot tell which of them helped. Keep train.py runnable: an edit that \
                 crashes, overruns the time limit or runs out of memory wastes a whole budget.\n"
            ),
        ));
    }
    out
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn experiment_toml(plan: &Plan) -> String {
    let mut out = format!(
        "# Written by `ratchet init --from autoresearch`: train.py is the surface the\n\
         # specialists edit, prepare.py computes the score while train.py runs and is\n\
         # protected (no edit may touch it; it is restored before every run).\n\
         name = {}\n\
         metric = {}\n\
         direction = \"{}\"\n\
         # From program.md: the fixed training budget, and when a run is killed.\n\
         budget_secs = {}\n\
         timeout_secs = {}\n\
         train = {}\n\
         # The score is the value train.py prints in its summary block (the last\n\
         # one, after a `---` line); no separate eval command.\n\
         score_from = \"train\"\n\
         protected = {}\n\n\
         [metrics]\n\
         format = \"colon\"\n\n\
         [noise]\n\
         # Re-runs of a candidate while the evidence is ambiguous (the baseline and\n\
         # each new incumbent get all of them): a keep is a gain clear of the noise.\n\
         seeds = 2\n\
         false_keep_rate = 0.1\n",
        toml_str(&plan.name),
        toml_str(&plan.metric),
        if plan.minimize {
            "minimize"
        } else {
            "maximize"
        },
        plan.budget_secs,
        plan.timeout_secs,
        toml_list(&plan.train),
        toml_list(&plan.protected),
    );
    for g in &plan.gates {
        out.push_str(&format!(
            "\n# A keep needs `{g}: true` in the summary block.\n[[gates.metric]]\nname = {}\nmin = 1\n",
            toml_str(g)
        ));
    }
    out.push_str("\n[[surface]]\nname = \"train\"\nfiles = [\"train.py\"]\n");
    out
}

fn specialists_toml(plan: &Plan, args: &InitArgs) -> String {
    let key = if args.api_key_env.is_empty() {
        String::new()
    } else {
        format!("api_key_env = {}\n", toml_str(&args.api_key_env))
    };
    let mut out = format!(
        "# Written by `ratchet init --from autoresearch` for {}.\n\
         # program.md is what every specialist reads first; agents/<name>.md adds its focus.\n\
         program = \"program.md\"\n\n\
         [daemon]\n\
         experiment = \".\"\n\
         lineage_dir = \"lineage\"\n\
         # Trials at once. On a machine with NVIDIA GPUs, uncomment [executor] to run\n\
         # one trial per GPU instead.\n\
         slots = {}\n\n\
         # [executor]\n\
         # gpus = \"auto\"\n",
        plan.name, args.slots
    );
    for (name, _) in SPECIALISTS {
        out.push_str(&format!(
            "\n[[specialist]]\nname = \"{name}\"\nsurface = \"train\"\nkind = \"llm\"\n\
             instructions = \"agents/{name}.md\"\nbase_url = {}\nmodel = {}\n{key}\
             # train.py is shown whole while it fits (autoresearch's 26 KB one takes\n\
             # about 7,000 of these tokens; README \"Coming from autoresearch\").\n\
             prompt_tokens = 24000\n",
            toml_str(&args.base_url),
            toml_str(&args.model),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_sentences_of_autoresearch_are_read() {
        let real = "The training script runs for a **fixed time budget of 5 minutes** (wall clock \
                    training time, excluding startup/compilation). You launch it simply as: `uv run train.py`.\n\
                    **Timeout**: Each experiment should take ~5 minutes total (+ a few seconds for startup \
                    and eval overhead). If a run exceeds 10 minutes, kill it and treat it as a failure.";
        assert_eq!(budget(real), (Some(300), Some(600)));
        assert_eq!(
            budget("A fixed time budget of 90 s. Kill anything over 2.5 min."),
            (Some(90), Some(150))
        );
        assert_eq!(budget("Train as long as you like."), (None, None));
    }

    #[test]
    fn the_last_summary_block_names_the_metrics() {
        let train = "print(f\"step {step}\")\nprint(\"---\")\nprint(f\"early: {x}\")\n\
                     print(\"---\")\nprint(f\"val_bpb:          {val_bpb:.6f}\")\n\
                     print(f\"peak_vram_mb:     {peak:.1f}\")\nprint(f\"val_pass: {ok}\")\n";
        assert_eq!(
            summary_block(train),
            ["val_bpb", "peak_vram_mb", "val_pass"]
        );
        assert!(summary_block("print(f\"val_bpb: {v}\")\n").is_empty());
        // karpathy/autoresearch's train.py (commit 228791f), its last lines.
        let real = r#"print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {total_training_time:.1f}")
print(f"total_seconds:    {t_end - t_start:.1f}")
print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
print(f"mfu_percent:      {steady_state_mfu:.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
"#;
        let names = summary_block(real);
        assert_eq!(names.len(), 9);
        assert_eq!(names.iter().filter(|n| n.starts_with("val_")).count(), 1);
        assert_eq!(direction_of("val_bpb"), Some(true));
        assert_eq!(direction_of("val_acc"), Some(false));
        assert_eq!(direction_of("val_sharpe"), Some(false));
        assert_eq!(direction_of("val_thing"), None);
    }
}
