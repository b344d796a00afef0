//! tinylm: ratchet's built-in experiment. A byte-level GPT written with candle,
//! trained for a fixed wall-clock budget on generated data whose entropy is
//! known, scored in bits per byte (val_bpb) against that floor.
//!
//! These are the experiment's own programs (`ratchet tinylm train|eval|floor`),
//! run by the executor as child processes like any other experiment's: the
//! daemon process never trains or initializes a device itself.

pub mod data;
pub mod kernels;
pub mod model;
pub mod recipe;
pub mod train;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use data::{Mix, Split, SOURCES};
use recipe::Recipe;
use train::{TrainError, TrainOptions};

/// The evaluation mix when `--mix` is not given (experiment.toml passes it explicitly).
pub const DEFAULT_EVAL_MIX: &str = "markov=0.35,arithmetic=0.25,brackets=0.15,copy=0.25";
/// Bytes per source of the evaluator's splits.
pub const PROXY_BYTES: usize = 8 << 10;
pub const FULL_BYTES: usize = 64 << 10;

/// Keeps freed tensor buffers in the process: glibc otherwise returns every
/// buffer over 128 KiB to the kernel, and each new tensor pays for page faults
/// on fresh zeroed pages (measured: 2-3x slower elementwise ops).
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before the
    // training threads start.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 256 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The seed a run trains with: the recipe's, moved by the run's seed.
pub fn run_seed_of(recipe_seed: u64, run_seed: u64) -> u64 {
    recipe_seed ^ run_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// `ratchet tinylm train`: prints `NAME=value` diagnostics.
pub fn train_command(
    recipe: &Path,
    out: &Path,
    budget_secs: Option<f64>,
) -> Result<(), TrainError> {
    let mut recipe = Recipe::load(recipe).map_err(TrainError::Recipe)?;
    // ratchet's seed re-runs (noise band, confirmation) set RATCHET_SEED to
    // 1, 2, ...; 0 (a trial's own run) leaves the recipe's seed as it is.
    let run_seed = std::env::var("RATCHET_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    recipe.seed = run_seed_of(recipe.seed, run_seed);
    println!("seed={}", recipe.seed);
    tune_allocator();
    let budget = budget_secs
        .or_else(|| {
            std::env::var("RATCHET_BUDGET_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(30.0);
    let opts = TrainOptions {
        budget_secs: budget,
        device: train::device(),
        log_every: 50,
    };
    let r = train::train(&recipe, out, &opts)?;
    if let Some(step) = r.resumed_from_step {
        println!("resumed_from_step={step}");
    }
    println!("steps={}", r.steps);
    println!("tokens_seen={}", r.tokens_seen);
    println!("train_bpb={}", r.train_loss);
    println!("tokens_per_sec={:.1}", r.tokens_per_sec);
    println!("params={}", r.params);
    println!("train_secs={:.3}", r.elapsed_secs);
    Ok(())
}

/// `ratchet tinylm eval`: the score (`val_bpb`) and diagnostics.
pub fn eval_command(checkpoint: &Path, split: Split, mix: &Mix) -> Result<(), TrainError> {
    tune_allocator();
    let dev = train::device();
    let (model, card, bytes) = train::load_model(checkpoint, &dev)?;
    let n = if split == Split::Full {
        FULL_BYTES
    } else {
        PROXY_BYTES
    };
    let (bpb, per) = train::evaluate(&model, &card, mix, split, n, &dev)?;
    println!("val_bpb={bpb}");
    for (s, b) in per {
        println!("bpb_{s}={b}");
    }
    println!("floor_bpb={}", data::floor(mix));
    println!("params={}", card.config.params());
    println!("artifact_bytes={bytes}");
    println!("tokens_seen={}", card.tokens_seen);
    println!("steps={}", card.steps);
    Ok(())
}

/// `ratchet tinylm preflight`: what a recipe's model will be, without
/// training: its parameter count and the bytes of its submitted weights
/// (the model built on the CPU and saved as training saves it), as
/// `params=` and `artifact_bytes=`. A recipe whose model cannot be built
/// fails here, in milliseconds, instead of in a slot.
pub fn preflight_command(recipe: &Path) -> Result<(), TrainError> {
    let recipe = Recipe::load(recipe).map_err(TrainError::Recipe)?;
    let config = recipe.model_config();
    let varmap = candle_nn::VarMap::new();
    model::Gpt::new(
        &config,
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let path = std::env::temp_dir().join(format!(
        "ratchet-preflight-{}.safetensors",
        std::process::id()
    ));
    let saved = varmap.save(&path);
    let bytes = std::fs::metadata(&path).map(|m| m.len());
    let _ = std::fs::remove_file(&path);
    saved?;
    let bytes = bytes.map_err(|e| TrainError::Io { path, source: e })?;
    println!("params={}", config.params());
    println!("artifact_bytes={bytes}");
    Ok(())
}

/// `ratchet tinylm floor`: the entropy of each source and of the mix.
pub fn floor_command(mix: &Mix) {
    let total: f64 = mix.values().sum();
    for s in SOURCES {
        let w = mix.get(&s).copied().unwrap_or(0.0) / total;
        println!(
            "{:<11} {:>7.4} bits/byte  weight {:.3}",
            s.name(),
            s.entropy_bits_per_byte(),
            w
        );
    }
    println!("floor_bpb={}", data::floor(mix));
}

/// `ratchet bench tinylm`: training throughput of the default recipe against
/// the machine's f32 matmul rate, measured side by side.
pub fn bench_command(secs: f64) -> Result<(), TrainError> {
    tune_allocator();
    let dev = train::device();
    let threads = candle_core::utils::get_num_threads();
    let matmul = matmul_gflops(&dev, secs.min(3.0))?;
    let recipe_text = include_str!("../../experiments/tinylm/recipe.toml");
    let tmp = std::env::temp_dir().join(format!("ratchet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::Io {
        path: tmp.clone(),
        source: e,
    })?;
    let path = tmp.join("recipe.toml");
    std::fs::write(&path, recipe_text).map_err(|e| TrainError::Io {
        path: path.clone(),
        source: e,
    })?;
    let recipe = Recipe::load(&path).map_err(TrainError::Recipe)?;
    let config = recipe.model_config();
    let opts = TrainOptions {
        budget_secs: secs,
        device: dev.clone(),
        log_every: 0,
    };
    let report = train::train(&recipe, &tmp.join("out"), &opts);
    let _ = std::fs::remove_dir_all(&tmp);
    let report = report?;
    let train_gflops = report.tokens_per_sec * 3.0 * config.flops_per_token() / 1e9;
    println!(
        "device: {}  threads: {threads}",
        if dev.is_cpu() { "cpu" } else { "gpu" }
    );
    println!(
        "model: L{} d{} h{} T{} B{}  params {}",
        config.layers,
        config.width,
        config.heads,
        config.seq_len,
        recipe.optimizer.batch_size,
        config.params()
    );
    println!("matmul_f32_gflops={matmul:.1}");
    println!("train_tokens_per_sec={:.0}", report.tokens_per_sec);
    println!("train_gflops={train_gflops:.2}");
    println!("train_steps={}", report.steps);
    println!("train_bpb={:.4}", report.train_loss);
    let p = &report.phases;
    let total = (p.data + p.forward + p.backward + p.optimizer + p.checkpoint).max(1e-9);
    println!(
        "time: forward {:.0}%  backward {:.0}%  optimizer {:.0}%  data {:.0}%  checkpoint {:.0}%",
        100.0 * p.forward / total,
        100.0 * p.backward / total,
        100.0 * p.optimizer / total,
        100.0 * p.data / total,
        100.0 * p.checkpoint / total
    );
    Ok(())
}

/// f32 matmul rate of 512³ products for about `secs` seconds.
fn matmul_gflops(dev: &Device, secs: f64) -> candle_core::Result<f64> {
    let n = 512;
    let a = Tensor::ones((n, n), DType::F32, dev)?;
    let b = Tensor::ones((n, n), DType::F32, dev)?;
    a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?; // warm up
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
        count += 1;
    }
    Ok(count as f64 * 2.0 * (n * n * n) as f64 / start.elapsed().as_secs_f64() / 1e9)
}
