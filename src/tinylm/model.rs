//! The tinylm model: a byte-level decoder-only transformer in candle. Every op
//! is a composed candle op with a backward pass (candle's fused norm and
//! softmax kernels have none).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::kernels;
use serde::{Deserialize, Serialize};

pub const VOCAB: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    Layernorm,
    Rmsnorm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Learned,
    Rope,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    Relu,
    Silu,
}

/// The shape of the network (saved next to its weights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    pub norm: Norm,
    pub position: Position,
    pub tied_embeddings: bool,
    pub activation: Activation,
    /// The longest context the model is built for.
    pub seq_len: usize,
}

impl GptConfig {
    pub fn hidden(&self) -> usize {
        ((self.width as f64 * self.mlp_ratio).round() as usize).max(1)
    }

    /// Parameter count, by construction.
    pub fn params(&self) -> usize {
        let w = self.width;
        let per_block = 2 * norm_params(self.norm, w)
            + (w * 3 * w + 3 * w)
            + (w * w + w)
            + (w * self.hidden() + self.hidden())
            + (self.hidden() * w + w);
        let pos = if self.position == Position::Learned {
            self.seq_len * w
        } else {
            0
        };
        let head = if self.tied_embeddings {
            0
        } else {
            w * VOCAB + VOCAB
        };
        VOCAB * w + pos + self.layers * per_block + norm_params(self.norm, w) + head
    }

    /// Forward-pass FLOPs per token (matmuls only; training ≈ 3×).
    pub fn flops_per_token(&self) -> f64 {
        let (w, t) = (self.width as f64, self.seq_len as f64);
        let h = self.hidden() as f64;
        let per_block = 2.0 * (3.0 * w * w + w * w + 2.0 * w * h) + 2.0 * 2.0 * t * w;
        self.layers as f64 * per_block + 2.0 * w * VOCAB as f64
    }
}

fn norm_params(n: Norm, w: usize) -> usize {
    match n {
        Norm::Layernorm => 2 * w,
        Norm::Rmsnorm => w,
    }
}

struct NormLayer {
    kind: Norm,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl NormLayer {
    fn new(kind: Norm, w: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(w, "weight", candle_nn::Init::Const(1.0))?;
        let bias = match kind {
            Norm::Layernorm => Some(vb.get_with_hints(w, "bias", candle_nn::Init::Const(0.0))?),
            Norm::Rmsnorm => None,
        };
        Ok(NormLayer { kind, weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (self.kind, &self.bias) {
            (Norm::Layernorm, Some(b)) => kernels::layer_norm(x, &self.weight, b, 1e-5),
            _ => kernels::rms_norm(x, &self.weight, 1e-5),
        }
    }
}

/// A dense layer applied as one 2-D matmul over all leading dimensions:
/// candle's `Linear` on a 3-D input broadcasts the weight into a batch of
/// small matmuls, several times slower forward and backward.
struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (lead, i) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let y = x
            .reshape((rows, i[0]))?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?;
        let mut out = lead.to_vec();
        out.push(self.weight_t.dim(1)?);
        y.reshape(out)
    }
}

fn dense(i: usize, o: usize, vb: VarBuilder) -> Result<Dense> {
    let l = linear(i, o, vb)?;
    Ok(Dense {
        weight_t: l.weight().t()?,
        bias: l.bias().expect("dense has a bias").clone(),
    })
}

fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    // Random values come from `init`, seeded; candle's CPU generator cannot be seeded.
    let w = vb.get_with_hints((o, i), "weight", candle_nn::Init::Const(0.0))?;
    let b = vb.get_with_hints(o, "bias", candle_nn::Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

struct Block {
    norm1: NormLayer,
    qkv: Dense,
    proj: Dense,
    norm2: NormLayer,
    fc1: Dense,
    fc2: Dense,
}

pub struct Gpt {
    config: GptConfig,
    wte: Embedding,
    wpe: Option<Embedding>,
    blocks: Vec<Block>,
    norm_f: NormLayer,
    head: Option<Dense>,
    rope: Option<(Tensor, Tensor)>,
}

impl Gpt {
    pub fn new(config: &GptConfig, vb: VarBuilder) -> Result<Gpt> {
        let w = config.width;
        let emb = |n: usize, name: &str| -> Result<Embedding> {
            let t = vb.get_with_hints((n, w), name, candle_nn::Init::Const(0.0))?;
            Ok(Embedding::new(t, w))
        };
        let wte = emb(VOCAB, "wte")?;
        let wpe = match config.position {
            Position::Learned => Some(emb(config.seq_len, "wpe")?),
            Position::Rope => None,
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let vb = vb.pp(format!("h{i}"));
            blocks.push(Block {
                norm1: NormLayer::new(config.norm, w, vb.pp("norm1"))?,
                qkv: dense(w, 3 * w, vb.pp("qkv"))?,
                proj: dense(w, w, vb.pp("proj"))?,
                norm2: NormLayer::new(config.norm, w, vb.pp("norm2"))?,
                fc1: dense(w, config.hidden(), vb.pp("fc1"))?,
                fc2: dense(config.hidden(), w, vb.pp("fc2"))?,
            });
        }
        let norm_f = NormLayer::new(config.norm, w, vb.pp("norm_f"))?;
        let head = if config.tied_embeddings {
            None
        } else {
            Some(dense(w, VOCAB, vb.pp("head"))?)
        };
        let rope = match config.position {
            Position::Rope => Some(rope_tables(config.seq_len, w / config.heads, vb.device())?),
            Position::Learned => None,
        };
        Ok(Gpt {
            config: config.clone(),
            wte,
            wpe,
            blocks,
            norm_f,
            head,
            rope,
        })
    }

    /// Logits `(B, T, 256)` for input bytes `(B, T)`, T ≤ seq_len.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t) = x.dims2()?;
        let mut h = self.wte.forward(x)?;
        if let Some(wpe) = &self.wpe {
            let pos = Tensor::arange(0u32, t as u32, x.device())?;
            h = h.broadcast_add(&wpe.forward(&pos)?)?;
        }
        for block in &self.blocks {
            h = (&h + self.attention(block, &block.norm1.forward(&h)?, b, t)?)?;
            let m = block.fc1.forward(&block.norm2.forward(&h)?)?;
            let m = match self.config.activation {
                Activation::Gelu => kernels::gelu(&m)?,
                Activation::Relu => m.relu()?,
                Activation::Silu => m.silu()?,
            };
            h = (&h + block.fc2.forward(&m)?)?;
        }
        let h = self.norm_f.forward(&h)?;
        match &self.head {
            Some(head) => head.forward(&h),
            None => {
                let w = self.config.width;
                h.reshape((b * t, w))?
                    .matmul(&self.wte.embeddings().t()?)?
                    .reshape((b, t, VOCAB))
            }
        }
    }

    fn attention(&self, block: &Block, x: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let w = self.config.width;
        let qkv = block.qkv.forward(x)?;
        let (mut q, mut k, v) = (
            qkv.narrow(2, 0, w)?,
            qkv.narrow(2, w, w)?,
            qkv.narrow(2, 2 * w, w)?,
        );
        if let Some((cos, sin)) = &self.rope {
            let (cos, sin) = (cos.narrow(0, 0, t)?, sin.narrow(0, 0, t)?);
            q = rope(&q, &cos, &sin, b, t, self.config.heads)?;
            k = rope(&k, &cos, &sin, b, t, self.config.heads)?;
        }
        block
            .proj
            .forward(&kernels::attention(&q, &k, &v, self.config.heads)?)
    }
}

/// Draws the random initial weights from `seed`: embeddings N(0, 0.02),
/// linear weights N(0, 0.5/√fan_in); norms start at 1 and biases at 0.
pub fn init(varmap: &candle_nn::VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = crate::propose::rng::Rng::for_name(seed, "tinylm-init", 0);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let std = if name == "wte" || name == "wpe" {
            0.02
        } else if dims.len() == 2 {
            0.5 / (dims[1] as f64).sqrt()
        } else {
            continue;
        };
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| (rng.normal() * std) as f32)
            .collect();
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

/// Rotary position embedding of `(B, T, H·D)` queries or keys, rotating the two
/// halves of each head (the non-interleaved convention of `rope_slow`).
fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    b: usize,
    t: usize,
    heads: usize,
) -> Result<Tensor> {
    let w = x.dim(2)?;
    let hd = w / heads;
    let x = x.reshape((b, t, heads, hd))?;
    let (x1, x2) = (x.narrow(3, 0, hd / 2)?, x.narrow(3, hd / 2, hd / 2)?);
    let (cos, sin) = (
        cos.reshape((1, t, 1, hd / 2))?,
        sin.reshape((1, t, 1, hd / 2))?,
    );
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[r1, r2], 3)?.reshape((b, t, w))
}

fn rope_tables(seq_len: usize, head_dim: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let pos = Tensor::arange(0u32, seq_len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((seq_len, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

/// Mean cross-entropy (nats) of logits `(B, T, V)` against targets `(B, T)`.
pub fn loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    kernels::cross_entropy(&logits.reshape((b * t, v))?, &targets.reshape(b * t)?)
}

/// Per-token negative log-likelihood (nats), `(B, T)`, without a graph.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?;
    picked.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn config(position: Position, norm: Norm, tied: bool) -> GptConfig {
        GptConfig {
            layers: 2,
            width: 32,
            heads: 4,
            mlp_ratio: 2.0,
            norm,
            position,
            tied_embeddings: tied,
            activation: Activation::Gelu,
            seq_len: 16,
        }
    }

    #[test]
    fn init_is_seeded() {
        let c = config(Position::Learned, Norm::Layernorm, false);
        let weights = |seed| {
            let vm = VarMap::new();
            Gpt::new(&c, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
            init(&vm, seed).unwrap();
            let data = vm.data().lock().unwrap();
            data["h0.qkv.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(weights(1), weights(1));
        assert_ne!(weights(1), weights(2));
        assert!(weights(1).iter().any(|&x| x != 0.0));
    }

    #[test]
    fn parameter_count_matches_the_variables() {
        for (p, n, tied) in [
            (Position::Learned, Norm::Layernorm, true),
            (Position::Rope, Norm::Rmsnorm, false),
        ] {
            let c = config(p, n, tied);
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            Gpt::new(&c, vb).unwrap();
            let counted: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(counted, c.params(), "{c:?}");
        }
    }

    #[test]
    fn forward_is_causal_and_backward_reaches_every_variable() {
        let c = config(Position::Rope, Norm::Layernorm, true);
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let m = Gpt::new(&c, vb).unwrap();
        init(&vm, 0).unwrap();
        let x = Tensor::from_vec((0..16u32).collect::<Vec<_>>(), (1, 16), &Device::Cpu).unwrap();
        let mut y: Vec<u32> = (0..16u32).collect();
        let a = m.forward(&x).unwrap();
        y[10] = 200;
        let x2 = Tensor::from_vec(y, (1, 16), &Device::Cpu).unwrap();
        let b = m.forward(&x2).unwrap();
        // Positions before the change see the same logits.
        let d = (a.narrow(1, 0, 10).unwrap() - b.narrow(1, 0, 10).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let l = loss(&a, &x2).unwrap();
        let grads = l.backward().unwrap();
        for v in vm.all_vars() {
            assert!(
                grads.get(v.as_tensor()).is_some(),
                "no gradient for a variable of shape {:?}",
                v.shape()
            );
        }
    }
}
