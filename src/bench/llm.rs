//! `ratchet bench llm --model FILE`: a local model's speed on a typical
//! specialist prompt (the first prompt the optimizer specialist of the
//! regression experiment sees, with its agent file): prompt and reply
//! tokens/s, and seconds per proposal decoded under the surface's schema.
//! With `--python`, the same prompt, schema and file through llama.cpp
//! (llama-cpp-python, `benches/llm/llama_cpp_bench.py`), side by side.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::config::ExperimentFile;
use crate::localmodel::worker::device;
use crate::localmodel::{Engine, Request, Sampling};
use crate::propose::{prompt, reply, schema};

const EXPERIMENT: &str = include_str!("../../experiments/regression/experiment.toml");
const RECIPE: &str = include_str!("../../experiments/regression/recipe.toml");
const AGENT: &str = include_str!("../../agents/optimizer.md");
const LLAMA_CPP: &str = include_str!("../../benches/llm/llama_cpp_bench.py");

/// Reply tokens of the free-text run that times decoding alone.
const FREE_TOKENS: u32 = 128;

/// The typical prompt (system, user) and the schema of its surface.
pub fn typical_request(max_tokens: u32, seed: u64) -> anyhow::Result<Request> {
    let exp: ExperimentFile = toml::from_str(EXPERIMENT).context("the bench's experiment")?;
    let surface = &exp.surfaces[0];
    let files = vec![(exp.recipe_path(), RECIPE.to_string())];
    let (system, user) = prompt::build(&prompt::PromptInput {
        instructions: AGENT,
        specialist: &surface.name,
        experiment: &exp,
        surface,
        incumbent: None,
        values: &Default::default(),
        files: &files,
        feedback: &Default::default(),
        stderr_tails: &Default::default(),
        budget_tokens: 12_000,
    });
    Ok(Request {
        system,
        user,
        schema: Some(schema::proposal(surface)),
        sampling: Sampling {
            temperature: 0.7,
            top_p: 0.95,
            seed,
            max_tokens,
        },
    })
}

struct Figures {
    prompt_tps: f64,
    reply_tps: f64,
    secs_per_proposal: f64,
    parsed: u32,
    proposals: u32,
}

pub fn llm_command(model: &Path, proposals: u32, python: Option<&Path>) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if crate::localmodel::inspect(model).is_ok_and(|i| crate::localmodel::dense(&i)) {
        // As the worker does: read by candle as it loads each matrix.
        std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    }
    let t0 = Instant::now();
    let mut engine = Engine::load(model, device("cpu").map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    let info = engine.info.clone();
    println!(
        "model: {} ({}, {} parameters, {}), context {} tokens; loaded in {:.1} s; {threads} CPU threads",
        model.display(),
        info.architecture,
        info.parameters,
        info.tensor_types,
        info.context,
        t0.elapsed().as_secs_f64()
    );
    let mut free = typical_request(FREE_TOKENS, 0)?;
    free.schema = None;
    // Warm-up (page cache, allocator), then one free-text reply for decode
    // speed; forget() each time so no prompt state is kept from the call
    // before (as the llama.cpp side resets).
    engine.generate(&free).map_err(anyhow::Error::msg)?;
    engine.forget();
    let r = engine.generate(&free).map_err(anyhow::Error::msg)?;
    let mut candle = Figures {
        prompt_tps: r.prompt_tokens as f64 / r.prompt_secs,
        reply_tps: r.reply_tokens as f64 / r.reply_secs,
        secs_per_proposal: 0.0,
        parsed: 0,
        proposals,
    };
    println!(
        "typical prompt: {} tokens (optimizer specialist, regression experiment, agents/optimizer.md)",
        r.prompt_tokens
    );
    let mut total = 0.0;
    for i in 0..proposals {
        let request = typical_request(512, u64::from(i) + 1)?;
        engine.forget();
        let reply = engine.generate(&request).map_err(anyhow::Error::msg)?;
        total += reply.prompt_secs + reply.reply_secs;
        let ok = reply::parse(&reply.text).is_ok();
        candle.parsed += u32::from(ok);
        println!(
            "  candle proposal {}: {}; parses: {ok}",
            i + 1,
            reply.speed()
        );
    }
    candle.secs_per_proposal = total / f64::from(proposals.max(1));
    // The next proposal of the same specialist: the same prompt up to its
    // lineage feedback, which has grown by a trial.
    let mut next = typical_request(512, u64::from(proposals) + 1)?;
    next.user = next.user.replacen(
        "No trial has run yet.",
        "trial 1 (optimizer, kept): lr = 0.03; val_loss 0.412 (baseline 0.430)",
        1,
    );
    let reply = engine.generate(&next).map_err(anyhow::Error::msg)?;
    let reused_secs = reply.prompt_secs + reply.reply_secs;
    println!(
        "  candle, the next proposal (prompt kept up to its feedback): {}",
        reply.speed()
    );
    let llama = match python {
        Some(python) => Some(llama_cpp(python, model, proposals, threads)?),
        None => None,
    };
    println!();
    println!(
        "{:<28} {:>14} {:>14} {:>14} {:>10}",
        "", "prompt tok/s", "reply tok/s", "s/proposal", "parsed"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{name:<28} {:>14.0} {:>14.1} {:>14.1} {:>7}/{}",
            f.prompt_tps, f.reply_tps, f.secs_per_proposal, f.parsed, f.proposals
        )
    };
    row("candle (ratchet llm-worker)", &candle);
    println!(
        "{:<28} {:>14} {:>14} {:>14.1}   (a next proposal, {} of {} prompt tokens kept)",
        "candle, prompt state kept", "", "", reused_secs, reply.reused_tokens, reply.prompt_tokens
    );
    match &llama {
        Some(l) => row("llama.cpp (llama-cpp-python)", l),
        None => println!("llama.cpp: not run (give --python with llama-cpp-python installed)"),
    }
    Ok(())
}

/// The same figures from llama-cpp-python on the same file and prompt.
fn llama_cpp(
    python: &Path,
    model: &Path,
    proposals: u32,
    threads: usize,
) -> anyhow::Result<Figures> {
    let dir = tempfile_dir()?;
    let script = dir.join("llama_cpp_bench.py");
    std::fs::write(&script, LLAMA_CPP)?;
    let requests: Vec<Request> = (0..proposals)
        .map(|i| typical_request(512, u64::from(i) + 1))
        .collect::<anyhow::Result<_>>()?;
    let input = dir.join("requests.json");
    std::fs::write(&input, serde_json::to_string(&requests)?)?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(model)
        .arg(&input)
        .arg(threads.to_string())
        .arg(FREE_TOKENS.to_string())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        anyhow::bail!(
            "llama-cpp-python failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines().filter(|l| l.starts_with("  ")) {
        println!("{line}");
    }
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last)
        .with_context(|| format!("llama_cpp_bench.py printed {last:?}"))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let texts = v["replies"].as_array().cloned().unwrap_or_default();
    Ok(Figures {
        prompt_tps: f("prompt_tps"),
        reply_tps: f("reply_tps"),
        secs_per_proposal: f("secs_per_proposal"),
        parsed: texts
            .iter()
            .filter(|t| reply::parse(t.as_str().unwrap_or("")).is_ok())
            .count() as u32,
        proposals,
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ratchet-bench-llm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
