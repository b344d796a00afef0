//! Fused CPU kernels with hand-written backward passes for tinylm's hot ops.
//!
//! candle's composed ops allocate a tensor per step of a formula, and its
//! backward of GELU, LayerNorm, softmax and cross-entropy chains a dozen of
//! them; these kernels do each in one pass over rows, in parallel (measured in
//! `ratchet bench tinylm`). Each has a composed candle fallback for other
//! devices, and tests check both agree, forward and backward.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Rows per rayon task: small rows are batched to amortize scheduling.
const MIN_CHUNK: usize = 4096;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused kernel needs a contiguous input"),
    }
}

fn rows_per_chunk(width: usize) -> usize {
    (MIN_CHUNK / width.max(1)).max(1)
}

// ---------------------------------------------------------------------------
// GELU (tanh approximation, as candle's `gelu`)

const GELU_K: f32 = 0.797_884_6; // sqrt(2/pi)
const GELU_C: f32 = 0.044_715;

struct Gelu;
struct GeluGrad;

/// tanh through one `exp`: libm's `tanhf` (via `expm1f`) was a tenth of a
/// training step. Absolute error below 1e-6, far under f32 training noise.
#[inline]
fn tanh(x: f32) -> f32 {
    if x.abs() > 9.0 {
        return x.signum();
    }
    let e = (2.0 * x).exp();
    (e - 1.0) / (e + 1.0)
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(MIN_CHUNK)
            .zip(x.par_chunks(MIN_CHUNK))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = 0.5 * x * (1.0 + tanh(GELU_K * (x + GELU_C * x * x * x)));
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(MIN_CHUNK)
            .zip(x.par_chunks(MIN_CHUNK).zip(g.par_chunks(MIN_CHUNK)))
            .for_each(|(dx, (x, g))| {
                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    let t = tanh(GELU_K * (x + GELU_C * x * x * x));
                    let d = 0.5 * (1.0 + t)
                        + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * x * x);
                    *dx = g * d;
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op1(Gelu)
    } else {
        x.gelu()
    }
}

// ---------------------------------------------------------------------------
// LayerNorm / RMSNorm over the last dimension

#[derive(Clone, Copy)]
struct Norm {
    eps: f32,
    /// LayerNorm subtracts the mean; RMSNorm does not.
    center: bool,
}

impl Norm {
    /// (mean, 1/std) of one row.
    fn stats(&self, x: &[f32]) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = if self.center {
            x.iter().sum::<f32>() / n
        } else {
            0.0
        };
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "fused-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let width = w.len();
        let mut y = vec![0f32; x.len()];
        let chunk = rows_per_chunk(width) * width;
        y.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_mut(width).zip(x.chunks(width)) {
                    let (mean, rstd) = self.stats(x);
                    for i in 0..width {
                        y[i] = (x[i] - mean) * rstd * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &grad, &NormGradInput(*self))?;
        let dwb = x.apply_op2_no_bwd(&grad, &NormGradParams(*self))?;
        let db = if self.center { Some(dwb.get(1)?) } else { None };
        Ok((Some(dx), Some(dwb.get(0)?), db))
    }
}

struct NormGradInput(Norm);

impl CustomOp3 for NormGradInput {
    fn name(&self) -> &'static str {
        "fused-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let width = w.len();
        let n = width as f32;
        let mut dx = vec![0f32; x.len()];
        let chunk = rows_per_chunk(width) * width;
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(dx, (x, g))| {
                for ((dx, x), g) in dx
                    .chunks_mut(width)
                    .zip(x.chunks(width))
                    .zip(g.chunks(width))
                {
                    let (mean, rstd) = self.0.stats(x);
                    let (mut sum_gw, mut sum_gwx) = (0f32, 0f32);
                    for i in 0..width {
                        let gw = g[i] * w[i];
                        sum_gw += gw;
                        sum_gwx += gw * (x[i] - mean) * rstd;
                    }
                    let mean_gw = if self.0.center { sum_gw / n } else { 0.0 };
                    let mean_gwx = sum_gwx / n;
                    for i in 0..width {
                        let xhat = (x[i] - mean) * rstd;
                        dx[i] = rstd * (g[i] * w[i] - mean_gw - xhat * mean_gwx);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Gradients of the norm's weight and bias, stacked as a (2, width) tensor.
struct NormGradParams(Norm);

impl CustomOp2 for NormGradParams {
    fn name(&self) -> &'static str {
        "fused-norm-grad-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let width = l1.dims()[l1.dims().len() - 1];
        let chunk = rows_per_chunk(width) * width;
        let sums = x
            .par_chunks(chunk)
            .zip(g.par_chunks(chunk))
            .fold(
                || vec![0f32; 2 * width],
                |mut acc, (x, g)| {
                    for (x, g) in x.chunks(width).zip(g.chunks(width)) {
                        let (mean, rstd) = self.0.stats(x);
                        for i in 0..width {
                            acc[i] += g[i] * (x[i] - mean) * rstd;
                            acc[width + i] += g[i];
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![0f32; 2 * width],
                |a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect(),
            );
        Ok((CpuStorage::F32(sums), Shape::from((2, width))))
    }
}

pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op3(w, b, Norm { eps, center: true })
    } else {
        candle_nn::ops::layer_norm_slow(x, w, b, eps)
    }
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() {
        // The bias input is unused (its gradient is not returned): zeros.
        let zero = w.zeros_like()?;
        x.contiguous()?
            .apply_op3(w, &zero, Norm { eps, center: false })
    } else {
        candle_nn::ops::rms_norm_slow(x, w, eps)
    }
}

// ---------------------------------------------------------------------------
// Causal softmax over the last dimension of (.., T, T) attention scores

/// `softmax(scale · x)` over keys j ≤ i for query row i; masked entries are 0.
struct CausalSoftmax {
    scale: f32,
}

struct CausalSoftmaxGrad {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let t = l.dims()[l.dims().len() - 1];
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(t * t)
            .zip(x.par_chunks(t * t))
            .for_each(|(y, x)| {
                for (i, (y, x)) in y.chunks_mut(t).zip(x.chunks(t)).enumerate() {
                    let max = x[..=i].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
                    let mut sum = 0f32;
                    for j in 0..=i {
                        let e = (x[j] * self.scale - max).exp();
                        y[j] = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    for v in &mut y[..=i] {
                        *v *= inv;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &CausalSoftmaxGrad { scale: self.scale },
        )?))
    }
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let t = l1.dims()[l1.dims().len() - 1];
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(t * t)
            .zip(y.par_chunks(t * t).zip(g.par_chunks(t * t)))
            .for_each(|(dx, (y, g))| {
                for (i, ((dx, y), g)) in dx
                    .chunks_mut(t)
                    .zip(y.chunks(t))
                    .zip(g.chunks(t))
                    .enumerate()
                {
                    let dot: f32 = (0..=i).map(|j| y[j] * g[j]).sum();
                    for j in 0..=i {
                        dx[j] = self.scale * y[j] * (g[j] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Causal softmax of `scale · scores`, scores `(.., T, T)`.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    if scores.device().is_cpu() {
        scores.contiguous()?.apply_op1(CausalSoftmax {
            scale: scale as f32,
        })
    } else {
        let t = scores.dim(D::Minus1)?;
        let mask = candle_transformers::utils::build_additive_causal_mask(
            t,
            0,
            None,
            scores.device(),
            scores.dtype(),
        )?;
        candle_nn::ops::softmax(&(scores * scale)?.broadcast_add(&mask)?, D::Minus1)
    }
}

// ---------------------------------------------------------------------------
// Causal multi-head attention on (B, T, W) q, k, v

/// `softmax(q·kᵀ/√d, causal) · v` per head, for q, k, v laid out `(B, T, H·D)`.
/// One pass per (batch, head) with no intermediate tensors; the backward
/// recomputes the probabilities instead of storing them.
struct Attention {
    heads: usize,
}

struct AttentionGrad {
    heads: usize,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Dimensions of an attention input: (batch, time, width).
fn btw(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[b, t, w] => Ok((b, t, w)),
        d => bail!("attention expects (B, T, W), got {d:?}"),
    }
}

/// Where one head's slice sits in a `(T, W)` plane, and its score scale.
#[derive(Clone, Copy)]
struct Head {
    w: usize,
    off: usize,
    hd: usize,
    scale: f32,
}

impl Head {
    fn at(&self, i: usize) -> std::ops::Range<usize> {
        i * self.w + self.off..i * self.w + self.off + self.hd
    }
}

/// Causal softmax probabilities of query `i` of one head into `p[..=i]`.
fn probs(p: &mut [f32], q: &[f32], k: &[f32], i: usize, head: Head) {
    let qi = &q[head.at(i)];
    let mut max = f32::NEG_INFINITY;
    for j in 0..=i {
        let s = head.scale * dot(qi, &k[head.at(j)]);
        p[j] = s;
        max = max.max(s);
    }
    let mut sum = 0.0;
    for v in &mut p[..=i] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in &mut p[..=i] {
        *v *= inv;
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous(s1, l1)?,
            contiguous(s2, l2)?,
            contiguous(s3, l3)?,
        );
        let (_, t, w) = btw(l1)?;
        let hd = w / self.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut y = vec![0f32; q.len()];
        y.par_chunks_mut(t * w).enumerate().for_each(|(b, y)| {
            let base = b * t * w;
            let (q, k, v) = (
                &q[base..base + t * w],
                &k[base..base + t * w],
                &v[base..base + t * w],
            );
            let mut p = vec![0f32; t];
            for h in 0..self.heads {
                let off = h * hd;
                for i in 0..t {
                    probs(&mut p, q, k, i, Head { w, off, hd, scale });
                    let yi = &mut y[i * w + off..i * w + off + hd];
                    for j in 0..=i {
                        axpy(yi, p[j], &v[j * w + off..j * w + off + hd]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One kernel computes all three gradients, stacked on a new last-but-one axis.
        let kv = Tensor::stack(&[k, v], 2)?;
        let g = Tensor::stack(&[q, &grad.contiguous()?], 2)?;
        let d = kv.apply_op2_no_bwd(&g, &AttentionGrad { heads: self.heads })?;
        Ok((
            Some(d.get_on_dim(2, 0)?),
            Some(d.get_on_dim(2, 1)?),
            Some(d.get_on_dim(2, 2)?),
        ))
    }
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "fused-causal-attention-grad"
    }

    /// Inputs: (k, v) stacked as (B, T, 2, W) and (q, dy) as (B, T, 2, W);
    /// output: (dq, dk, dv) as (B, T, 3, W).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (kv, qg) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let (bsz, t, w) = match l1.dims() {
            &[b, t, 2, w] => (b, t, w),
            d => bail!("attention grad expects (B, T, 2, W), got {d:?}"),
        };
        let hd = w / self.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        // Unstack into (T, W) planes per batch for simple indexing.
        let plane = |src: &[f32], b: usize, which: usize| -> Vec<f32> {
            (0..t)
                .flat_map(|i| {
                    src[((b * t + i) * 2 + which) * w..((b * t + i) * 2 + which + 1) * w]
                        .iter()
                        .copied()
                })
                .collect()
        };
        let mut out = vec![0f32; bsz * t * 3 * w];
        out.par_chunks_mut(t * 3 * w)
            .enumerate()
            .for_each(|(b, out)| {
                let (k, v, q, dy) = (
                    plane(kv, b, 0),
                    plane(kv, b, 1),
                    plane(qg, b, 0),
                    plane(qg, b, 1),
                );
                let (mut dq, mut dk, mut dv) =
                    (vec![0f32; t * w], vec![0f32; t * w], vec![0f32; t * w]);
                let mut p = vec![0f32; t];
                let mut dp = vec![0f32; t];
                for h in 0..self.heads {
                    let off = h * hd;
                    let head = Head { w, off, hd, scale };
                    let r = |i: usize| head.at(i);
                    for i in 0..t {
                        probs(&mut p, &q, &k, i, head);
                        let dyi = &dy[r(i)];
                        let mut row = 0.0;
                        for j in 0..=i {
                            dp[j] = dot(dyi, &v[r(j)]);
                            row += p[j] * dp[j];
                        }
                        for j in 0..=i {
                            let ds = p[j] * (dp[j] - row) * scale;
                            axpy(&mut dq[r(i)], ds, &k[r(j)]);
                            axpy(&mut dk[r(j)], ds, &q[r(i)]);
                            axpy(&mut dv[r(j)], p[j], dyi);
                        }
                    }
                }
                for i in 0..t {
                    for (which, src) in [&dq, &dk, &dv].into_iter().enumerate() {
                        out[(i * 3 + which) * w..(i * 3 + which + 1) * w]
                            .copy_from_slice(&src[i * w..(i + 1) * w]);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((bsz, t, 3, w))))
    }
}

/// Causal attention of `(B, T, W)` q, k, v with `heads` heads: `(B, T, W)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    if q.device().is_cpu() {
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { heads })
    } else {
        let (b, t, w) = q.dims3()?;
        let split = |x: &Tensor| {
            x.reshape((b, t, heads, w / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q4, k4, v4) = (split(q)?, split(k)?, split(v)?);
        let att = causal_softmax(&q4.matmul(&k4.t()?)?, 1.0 / ((w / heads) as f64).sqrt())?;
        att.matmul(&v4)?.transpose(1, 2)?.reshape((b, t, w))
    }
}

// ---------------------------------------------------------------------------
// Cross-entropy of (N, V) logits against (N,) u32 targets, mean over N

struct CrossEntropy;

struct CrossEntropyGrad {
    scale: f32,
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let data = s.as_slice::<u32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused cross-entropy needs contiguous targets"),
    }
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    max + row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, tg) = (contiguous(s1, l1)?, targets(s2, l2)?);
        let v = l1.dims()[1];
        let total: f64 = x
            .par_chunks(v)
            .zip(tg.par_iter())
            .map(|(row, &t)| (log_sum_exp(row) - row[t as usize]) as f64)
            .sum();
        Ok((
            CpuStorage::F32(vec![(total / tg.len().max(1) as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = logits.dim(0)? as f32;
        let scale = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n;
        Ok((
            Some(logits.apply_op2_no_bwd(targets, &CrossEntropyGrad { scale })?),
            None,
        ))
    }
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, tg) = (contiguous(s1, l1)?, targets(s2, l2)?);
        let v = l1.dims()[1];
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(v)
            .zip(x.par_chunks(v).zip(tg.par_iter()))
            .for_each(|(dx, (row, &t))| {
                let lse = log_sum_exp(row);
                for (d, &r) in dx.iter_mut().zip(row) {
                    *d = (r - lse).exp() * self.scale;
                }
                dx[t as usize] -= self.scale;
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Mean cross-entropy (nats) of `(N, V)` logits against `(N,)` u32 targets.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)
    } else {
        candle_nn::loss::cross_entropy(logits, targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "max difference {d}");
    }

    fn randn(shape: &[usize]) -> Var {
        Var::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// The fused op and the composed candle op agree, value and gradients.
    fn agree(
        vars: &[&Var],
        fused: impl Fn() -> Result<Tensor>,
        composed: impl Fn() -> Result<Tensor>,
    ) {
        let (a, b) = (fused().unwrap(), composed().unwrap());
        close(&a, &b, 1e-4);
        // A loss that weighs each output differently, so gradients are not trivial.
        let weights = Tensor::randn(0f32, 1.0, a.shape(), &Device::Cpu).unwrap();
        let ga = (&a * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&b * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in vars {
            close(
                ga.get(v.as_tensor()).expect("fused grad"),
                gb.get(v.as_tensor()).expect("composed grad"),
                1e-3,
            );
        }
    }

    #[test]
    fn fast_tanh_is_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            assert!((tanh(x) - x.tanh()).abs() < 1e-6, "tanh({x})");
        }
    }

    #[test]
    fn gelu_matches_candle() {
        let x = randn(&[4, 8, 33]);
        agree(&[&x], || gelu(x.as_tensor()), || x.as_tensor().gelu());
    }

    #[test]
    fn norms_match_candle() {
        let x = randn(&[3, 5, 16]);
        let w = randn(&[16]);
        let b = randn(&[16]);
        agree(
            &[&x, &w, &b],
            || layer_norm(x.as_tensor(), &w, &b, 1e-5),
            || candle_nn::ops::layer_norm_slow(x.as_tensor(), &w, &b, 1e-5),
        );
        agree(
            &[&x, &w],
            || rms_norm(x.as_tensor(), &w, 1e-5),
            || candle_nn::ops::rms_norm_slow(x.as_tensor(), &w, 1e-5),
        );
    }

    #[test]
    fn causal_softmax_matches_masked_softmax() {
        let x = randn(&[2, 3, 7, 7]);
        let mask = candle_transformers::utils::build_additive_causal_mask(
            7,
            0,
            None,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        agree(
            &[&x],
            || causal_softmax(x.as_tensor(), 0.5),
            || candle_nn::ops::softmax(&(x.as_tensor() * 0.5)?.broadcast_add(&mask)?, D::Minus1),
        );
    }

    #[test]
    fn attention_matches_the_composed_version() {
        let (b, t, w, h) = (2, 9, 12, 3);
        let (q, k, v) = (randn(&[b, t, w]), randn(&[b, t, w]), randn(&[b, t, w]));
        let composed = || {
            let split = |x: &Tensor| x.reshape((b, t, h, w / h))?.transpose(1, 2)?.contiguous();
            let (q4, k4, v4) = (
                split(q.as_tensor())?,
                split(k.as_tensor())?,
                split(v.as_tensor())?,
            );
            let mask = candle_transformers::utils::build_additive_causal_mask(
                t,
                0,
                None,
                &Device::Cpu,
                DType::F32,
            )?;
            let s =
                (q4.matmul(&k4.t()?)? * (1.0 / ((w / h) as f64).sqrt()))?.broadcast_add(&mask)?;
            candle_nn::ops::softmax(&s, D::Minus1)?
                .matmul(&v4)?
                .transpose(1, 2)?
                .reshape((b, t, w))
        };
        agree(
            &[&q, &k, &v],
            || attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), h),
            composed,
        );
    }

    #[test]
    fn cross_entropy_matches_candle() {
        let x = randn(&[12, 256]);
        let t = Tensor::from_vec(
            (0..12u32).map(|i| i * 17 % 256).collect::<Vec<_>>(),
            12,
            &Device::Cpu,
        )
        .unwrap();
        agree(
            &[&x],
            || cross_entropy(x.as_tensor(), &t),
            || candle_nn::loss::cross_entropy(x.as_tensor(), &t),
        );
    }
}
