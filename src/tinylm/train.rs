//! tinylm training: AdamW on random windows of the recipe's data mix for a
//! fixed wall-clock budget, with resumable safetensors checkpoints, and the
//! evaluation shared by the trainer (best-checkpoint selection) and `eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::data::{Mix, Source, Split};
use super::model::{self, Gpt, GptConfig};
use super::recipe::{Recipe, Submit};
use crate::propose::rng::Rng;

/// Bytes of each training source held in memory.
const TRAIN_BYTES: usize = 1 << 20;
/// Bytes of each source in the trainer's held-out split.
const SELECT_BYTES: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Recipe(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is unreadable: {message}")]
    Checkpoint { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How often (seconds of budget) training prints its progress line,
/// `train_loss=<bits per byte> at=<seconds>`.
pub const PROGRESS_SECS: f64 = 0.5;

/// What a training run did.
#[derive(Clone, Debug, Default)]
pub struct TrainReport {
    pub steps: u64,
    pub tokens_seen: u64,
    pub train_loss: f64,
    pub elapsed_secs: f64,
    pub tokens_per_sec: f64,
    pub params: usize,
    pub resumed_from_step: Option<u64>,
    pub diverged: bool,
    /// Seconds spent in each phase of the steps of this session.
    pub phases: Phases,
}

/// Where a training step's time goes.
#[derive(Clone, Debug, Default)]
pub struct Phases {
    pub data: f64,
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
    pub checkpoint: f64,
}

/// Saved next to the submitted weights: what `eval` needs to rebuild the model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelCard {
    pub config: GptConfig,
    pub steps: u64,
    pub tokens_seen: u64,
    pub submitted: Submit,
}

/// The trainer's resume point.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrainState {
    step: u64,
    tokens_seen: u64,
    elapsed_secs: f64,
    rng: u64,
    loss_ema: f64,
    best_select: Option<f64>,
    /// Checkpoint files kept for `submit = "average"`, oldest first.
    recent: Vec<String>,
}

/// Options of a run beyond the recipe.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub budget_secs: f64,
    pub device: Device,
    /// Print a progress line every this many steps (0: never).
    pub log_every: u64,
}

/// The first CUDA device this process can see (with the `cuda` feature:
/// on GPU slots, its slot's), else the CPU. A run given GPUs that trains
/// on the CPU says why on stderr: it is wasting them.
pub fn device() -> Device {
    let given = std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| !v.trim().is_empty());
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(d) => return d,
        Err(e) if given => {
            eprintln!("tinylm: cannot use the GPU it was given ({e}); training on the CPU")
        }
        Err(_) => {}
    }
    #[cfg(not(feature = "cuda"))]
    if given {
        eprintln!(
            "tinylm: built without the `cuda` feature, so it trains on the CPU although GPUs are visible (build with --features cuda)"
        );
    }
    Device::Cpu
}

/// The training data: one stream per source with positive weight.
struct Streams {
    sources: Vec<(Vec<u8>, f64)>,
    total: f64,
}

impl Streams {
    fn new(recipe: &Recipe, split: Split, bytes: usize) -> Result<Streams, TrainError> {
        let mut sources: Vec<(Vec<u8>, f64)> = recipe
            .weights()
            .iter()
            .map(|(s, w)| (s.generate(split, bytes), *w))
            .collect();
        if recipe.data_mix.text > 0.0 {
            if let Some(path) = &recipe.data_mix.text_file {
                let text = std::fs::read(path).map_err(io(path))?;
                // The first 90% trains, the rest is the held-out part.
                let cut = text.len() * 9 / 10;
                let part = if split == Split::Train {
                    text[..cut].to_vec()
                } else {
                    text[cut..].to_vec()
                };
                if part.len() > recipe.optimizer.seq_len + 1 {
                    sources.push((part, recipe.data_mix.text));
                }
            }
        }
        let total = sources.iter().map(|(_, w)| w).sum();
        Ok(Streams { sources, total })
    }

    /// A batch of `b` random windows of `t + 1` bytes as (inputs, targets).
    fn batch(
        &self,
        b: usize,
        t: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let mut xs = Vec::with_capacity(b * t);
        let mut ys = Vec::with_capacity(b * t);
        for _ in 0..b {
            let mut u = rng.unit() * self.total;
            let mut pick = &self.sources[0].0;
            for (s, w) in &self.sources {
                pick = s;
                if u < *w {
                    break;
                }
                u -= w;
            }
            let off = rng.below(pick.len() - t - 1);
            xs.extend(pick[off..off + t].iter().map(|&c| c as u32));
            ys.extend(pick[off + 1..off + t + 1].iter().map(|&c| c as u32));
        }
        Ok((
            Tensor::from_vec(xs, (b, t), device)?,
            Tensor::from_vec(ys, (b, t), device)?,
        ))
    }
}

/// Trains `recipe` into `out`, resuming from `out/ckpt` when a checkpoint is there.
pub fn train(recipe: &Recipe, out: &Path, opts: &TrainOptions) -> Result<TrainReport, TrainError> {
    let started = Instant::now();
    let ckpt = out.join("ckpt");
    std::fs::create_dir_all(&ckpt).map_err(io(&ckpt))?;
    let config = recipe.model_config();
    let dev = &opts.device;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let model = Gpt::new(&config, vb)?;
    model::init(&varmap, recipe.seed)?;
    let mut adam = AdamW::new(&varmap, recipe)?;

    let state_path = ckpt.join("state.json");
    let mut state = TrainState {
        step: 0,
        tokens_seen: 0,
        elapsed_secs: 0.0,
        rng: Rng::new(recipe.seed).state(),
        loss_ema: f64::NAN,
        best_select: None,
        recent: Vec::new(),
    };
    let mut resumed_from_step = None;
    if state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
        state = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: state_path.clone(),
            message: e.to_string(),
        })?;
        varmap.clone().load(ckpt.join("model.safetensors"))?;
        adam.load(&ckpt.join("adam.safetensors"), dev)?;
        resumed_from_step = Some(state.step);
        println!(
            "resuming from step {} ({:.1}s of the budget used)",
            state.step, state.elapsed_secs
        );
    }

    let data = Streams::new(recipe, Split::Train, TRAIN_BYTES)?;
    let select = match recipe.checkpoint.submit {
        Submit::Best => Some(select_set(recipe)),
        _ => None,
    };
    let mut rng = Rng::from_state(state.rng);
    let o = &recipe.optimizer;
    let base_elapsed = state.elapsed_secs;
    let session = Instant::now();
    let mut session_tokens = 0u64;
    let mut diverged = false;
    let mut phases = Phases::default();
    let mut next_progress = ((base_elapsed / PROGRESS_SECS).floor() + 1.0) * PROGRESS_SECS;
    loop {
        let elapsed = base_elapsed + session.elapsed().as_secs_f64();
        let progress = if o.max_steps > 0 {
            state.step as f64 / o.max_steps as f64
        } else {
            elapsed / opts.budget_secs
        };
        if (o.max_steps > 0 && state.step >= o.max_steps) || elapsed >= opts.budget_secs {
            break;
        }
        let t = recipe.seq_len_at(progress);
        let mut clock = Stopwatch(Instant::now());
        let (x, y) = data.batch(o.batch_size, t, &mut rng, dev)?;
        phases.data += clock.lap();
        let logits = model.forward(&x)?;
        let loss = model::loss(&logits, &y)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        phases.forward += clock.lap();
        if !loss_value.is_finite() {
            println!("step {} loss {loss_value}: diverged, stopping", state.step);
            diverged = true;
            state.loss_ema = loss_value;
            break;
        }
        let grads = loss.backward()?;
        phases.backward += clock.lap();
        adam.step(&grads, recipe.lr_at(state.step, progress))?;
        phases.optimizer += clock.lap();
        state.step += 1;
        state.tokens_seen += (o.batch_size * t) as u64;
        session_tokens += (o.batch_size * t) as u64;
        state.loss_ema = if state.loss_ema.is_finite() {
            0.95 * state.loss_ema + 0.05 * loss_value
        } else {
            loss_value
        };
        // The progress contract: the training loss (bits per byte, its
        // running mean) at fixed positions of the budget, every
        // PROGRESS_SECS, so curves of different runs line up.
        let now = base_elapsed + session.elapsed().as_secs_f64();
        if opts.log_every > 0 && now >= next_progress {
            let at = (now / PROGRESS_SECS).floor() * PROGRESS_SECS;
            println!(
                "train_loss={:.5} at={at:.1}",
                state.loss_ema / std::f64::consts::LN_2
            );
            next_progress = at + PROGRESS_SECS;
        }
        if opts.log_every > 0 && state.step.is_multiple_of(opts.log_every) {
            let secs = session.elapsed().as_secs_f64().max(1e-9);
            println!(
                "step {} loss {:.4} lr {:.2e} tok/s {:.0}",
                state.step,
                state.loss_ema,
                recipe.lr_at(state.step, progress),
                session_tokens as f64 / secs
            );
        }
        if state.step.is_multiple_of(recipe.checkpoint.save_interval) {
            state.elapsed_secs = base_elapsed + session.elapsed().as_secs_f64();
            state.rng = rng.state();
            save_checkpoint(
                &ckpt,
                &varmap,
                &adam,
                &mut state,
                recipe,
                &model,
                select.as_ref(),
                dev,
            )?;
            phases.checkpoint += clock.lap();
        }
    }
    state.elapsed_secs = base_elapsed + session.elapsed().as_secs_f64();

    // The submitted weights.
    let submitted = if diverged {
        Submit::Last
    } else {
        recipe.checkpoint.submit
    };
    let final_path = out.join("model.safetensors");
    match submitted {
        Submit::Best if state.best_select.is_some() && ckpt.join("best.safetensors").exists() => {
            std::fs::copy(ckpt.join("best.safetensors"), &final_path).map_err(io(&final_path))?;
        }
        Submit::Average if !state.recent.is_empty() => {
            average(&ckpt, &state.recent, &final_path, dev)?
        }
        _ => varmap.save(&final_path)?,
    }
    let card = ModelCard {
        config: config.clone(),
        steps: state.step,
        tokens_seen: state.tokens_seen,
        submitted,
    };
    let card_path = out.join("model.json");
    std::fs::write(
        &card_path,
        serde_json::to_string_pretty(&card).expect("card serializes"),
    )
    .map_err(io(&card_path))?;
    let secs = session.elapsed().as_secs_f64().max(1e-9);
    Ok(TrainReport {
        steps: state.step,
        tokens_seen: state.tokens_seen,
        train_loss: state.loss_ema / std::f64::consts::LN_2,
        elapsed_secs: started.elapsed().as_secs_f64(),
        tokens_per_sec: session_tokens as f64 / secs,
        params: config.params(),
        resumed_from_step,
        diverged,
        phases,
    })
}

/// Measures consecutive phases of a step.
struct Stopwatch(Instant);

impl Stopwatch {
    /// Seconds since the previous lap (or the start).
    fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let d = now - self.0;
        self.0 = now;
        d.as_secs_f64()
    }
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    ckpt: &Path,
    varmap: &VarMap,
    adam: &AdamW,
    state: &mut TrainState,
    recipe: &Recipe,
    model: &Gpt,
    select: Option<&Vec<(Source, Vec<u8>, f64)>>,
    dev: &Device,
) -> Result<(), TrainError> {
    // Write everything under temporary names, then rename: a kill at any
    // point leaves either the previous checkpoint or this one, never a mix.
    let tmp = |name: &str| ckpt.join(format!("{name}.tmp"));
    varmap.save(tmp("model.safetensors"))?;
    adam.save(&tmp("adam.safetensors"))?;
    if let Some(set) = select {
        let score = evaluate_on(model, set, recipe.optimizer.seq_len, dev)?.0;
        if score.is_finite() && state.best_select.is_none_or(|b| score < b) {
            state.best_select = Some(score);
            std::fs::copy(tmp("model.safetensors"), ckpt.join("best.safetensors"))
                .map_err(io(ckpt))?;
        }
    }
    if recipe.checkpoint.submit == Submit::Average {
        let name = format!("avg-{}.safetensors", state.step);
        std::fs::copy(tmp("model.safetensors"), ckpt.join(&name)).map_err(io(ckpt))?;
        state.recent.push(name);
        while state.recent.len() > recipe.checkpoint.average_last {
            let old = state.recent.remove(0);
            let _ = std::fs::remove_file(ckpt.join(old));
        }
    }
    let state_tmp = tmp("state.json");
    std::fs::write(
        &state_tmp,
        serde_json::to_string(state).expect("state serializes"),
    )
    .map_err(io(&state_tmp))?;
    for name in ["model.safetensors", "adam.safetensors", "state.json"] {
        std::fs::rename(tmp(name), ckpt.join(name)).map_err(io(ckpt))?;
    }
    Ok(())
}

fn average(ckpt: &Path, names: &[String], out: &Path, dev: &Device) -> Result<(), TrainError> {
    let mut sum: BTreeMap<String, Tensor> = BTreeMap::new();
    for name in names {
        for (k, t) in candle_core::safetensors::load(ckpt.join(name), dev)? {
            let next = match sum.remove(&k) {
                Some(s) => (s + t)?,
                None => t,
            };
            sum.insert(k, next);
        }
    }
    let n = names.len() as f64;
    let mean: std::collections::HashMap<String, Tensor> = sum
        .into_iter()
        .map(|(k, t)| Ok((k, (t / n)?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&mean, out)?;
    Ok(())
}

/// The trainer's held-out set (never the evaluator's splits).
fn select_set(recipe: &Recipe) -> Vec<(Source, Vec<u8>, f64)> {
    recipe
        .weights()
        .iter()
        .map(|(s, w)| (*s, s.generate(Split::Select, SELECT_BYTES), *w))
        .collect()
}

/// Bits per byte of `model` on each stream: every byte after the first is
/// predicted once, from up to `seq_len` bytes of context in its window.
/// Returns the weighted mean and the per-source figures.
pub fn evaluate_on(
    model: &Gpt,
    set: &[(Source, Vec<u8>, f64)],
    seq_len: usize,
    dev: &Device,
) -> candle_core::Result<(f64, Vec<(Source, f64)>)> {
    let mut per = Vec::new();
    let (mut total, mut weights) = (0.0, 0.0);
    for (source, bytes, w) in set {
        let (mut nll, mut count) = (0.0f64, 0usize);
        let windows: Vec<&[u8]> = bytes.windows(seq_len + 1).step_by(seq_len).collect();
        for chunk in windows.chunks(32) {
            let b = chunk.len();
            let xs: Vec<u32> = chunk
                .iter()
                .flat_map(|w| w[..seq_len].iter().map(|&c| c as u32))
                .collect();
            let ys: Vec<u32> = chunk
                .iter()
                .flat_map(|w| w[1..].iter().map(|&c| c as u32))
                .collect();
            let x = Tensor::from_vec(xs, (b, seq_len), dev)?;
            let y = Tensor::from_vec(ys, (b, seq_len), dev)?;
            let logits = model.forward(&x)?;
            nll += model::token_nll(&logits, &y)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            count += b * seq_len;
        }
        let bpb = nll / count.max(1) as f64 / std::f64::consts::LN_2;
        per.push((*source, bpb));
        total += w * bpb;
        weights += w;
    }
    Ok((total / weights, per))
}

/// Loads the submitted model of a trained `out` directory.
pub fn load_model(dir: &Path, dev: &Device) -> Result<(Gpt, ModelCard, u64), TrainError> {
    let card_path = dir.join("model.json");
    let text = std::fs::read_to_string(&card_path).map_err(io(&card_path))?;
    let card: ModelCard = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: card_path.clone(),
        message: e.to_string(),
    })?;
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::metadata(&weights).map_err(io(&weights))?.len();
    let mut varmap = VarMap::new();
    let model = Gpt::new(
        &card.config,
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?;
    varmap.load(&weights)?;
    Ok((model, card, bytes))
}

/// Bits per byte of a trained model on the evaluator's split of `mix`.
pub fn evaluate(
    model: &Gpt,
    card: &ModelCard,
    mix: &Mix,
    split: Split,
    bytes_per_source: usize,
    dev: &Device,
) -> candle_core::Result<(f64, Vec<(Source, f64)>)> {
    let set: Vec<(Source, Vec<u8>, f64)> = mix
        .iter()
        .filter(|(_, w)| **w > 0.0)
        .map(|(s, w)| (*s, s.generate(split, bytes_per_source), *w))
        .collect();
    evaluate_on(model, &set, card.config.seq_len, dev)
}

/// AdamW with decoupled weight decay on matrices, and its moments saved with
/// checkpoints so a resumed run continues exactly.
struct AdamW {
    vars: Vec<(String, Var, Var, Var)>,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    grad_clip: f64,
    t: u64,
}

impl AdamW {
    fn new(varmap: &VarMap, recipe: &Recipe) -> candle_core::Result<AdamW> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut vars = Vec::new();
        for (name, var) in data.iter() {
            let m = Var::zeros(var.shape(), DType::F32, var.device())?;
            let v = Var::zeros(var.shape(), DType::F32, var.device())?;
            vars.push((name.clone(), var.clone(), m, v));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let o = &recipe.optimizer;
        Ok(AdamW {
            vars,
            beta1: o.beta1,
            beta2: o.beta2,
            weight_decay: o.weight_decay,
            grad_clip: o.grad_clip,
            t: 0,
        })
    }

    fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
    ) -> candle_core::Result<()> {
        let mut scale = 1.0;
        if self.grad_clip > 0.0 {
            let mut sq = 0.0f64;
            for (_, var, _, _) in &self.vars {
                if let Some(g) = grads.get(var.as_tensor()) {
                    sq += g
                        .sqr()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?;
                }
            }
            let norm = sq.sqrt();
            if norm > self.grad_clip {
                scale = self.grad_clip / norm;
            }
        }
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (_, var, m, v) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            m.set(&((m.as_tensor() * b1)? + (&g * (1.0 - b1))?)?)?;
            v.set(&((v.as_tensor() * b2)? + (g.sqr()? * (1.0 - b2))?)?)?;
            let mhat = (m.as_tensor() / c1)?;
            let vhat = (v.as_tensor() / c2)?;
            let mut update = mhat.div(&(vhat.sqrt()? + 1e-8)?)?;
            if self.weight_decay > 0.0 && var.rank() >= 2 {
                update = (update + (var.as_tensor() * self.weight_decay)?)?;
            }
            var.set(&(var.as_tensor() - (update * lr)?)?)?;
        }
        Ok(())
    }

    fn save(&self, path: &Path) -> candle_core::Result<()> {
        let mut map = std::collections::HashMap::new();
        for (name, _, m, v) in &self.vars {
            map.insert(format!("m.{name}"), m.as_tensor().clone());
            map.insert(format!("v.{name}"), v.as_tensor().clone());
        }
        map.insert(
            "t".to_string(),
            Tensor::new(&[self.t as f32], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&map, path)
    }

    fn load(&mut self, path: &Path, dev: &Device) -> candle_core::Result<()> {
        let map = candle_core::safetensors::load(path, dev)?;
        for (name, _, m, v) in &self.vars {
            if let (Some(mt), Some(vt)) =
                (map.get(&format!("m.{name}")), map.get(&format!("v.{name}")))
            {
                m.set(mt)?;
                v.set(vt)?;
            }
        }
        if let Some(t) = map.get("t") {
            self.t = t.to_vec1::<f32>()?[0] as u64;
        }
        Ok(())
    }
}
