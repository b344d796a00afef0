//! One loaded model: candle-transformers' quantized llama, qwen2 or qwen3
//! weights, the tokenizer candle builds from the GGUF metadata, a token trie
//! of it for llguidance, and the sampling loop.

use std::io::Seek;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use tokenizers::Tokenizer;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::template::ChatTemplate;
use super::{ModelInfo, Reply, Request, Sampling, Stop};
use crate::propose::rng::Rng;

enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
}

impl Weights {
    /// The logits of the next token after `tokens`, which start at `pos`.
    fn forward(
        &mut self,
        tokens: &[TokenId],
        pos: usize,
        device: &Device,
    ) -> Result<Vec<f32>, String> {
        let mut run = || -> candle_core::Result<Vec<f32>> {
            let x = Tensor::new(tokens, device)?.unsqueeze(0)?;
            let logits = match self {
                Weights::Llama(m) => m.forward(&x, pos)?,
                Weights::Qwen2(m) => m.forward(&x, pos)?,
                Weights::Qwen3(m) => m.forward(&x, pos)?,
            };
            logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()
        };
        run().map_err(|e| format!("the model's forward pass failed: {e}"))
    }

    fn clear(&mut self) {
        match self {
            Weights::Llama(m) => m.clear_kv_cache(),
            Weights::Qwen2(m) => m.clear_kv_cache(),
            Weights::Qwen3(m) => m.clear_kv_cache(),
        }
    }

    /// A copy with its own KV cache, where the model allows one: llama's
    /// weights are shared by its clones and its cache grows by
    /// concatenation (new tensors), so a copy taken after a prefix stays as
    /// it was. candle's qwen2 cannot be cloned, and its qwen3 writes into a
    /// preallocated cache on the CPU that clones share.
    fn copy(&self) -> Option<Weights> {
        match self {
            Weights::Llama(m) => Some(Weights::Llama(m.clone())),
            Weights::Qwen2(_) | Weights::Qwen3(_) => None,
        }
    }
}

/// How many tokens `a` and `b` start with in common.
fn shared_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The tokenizer as llguidance sees it: a trie of every token's bytes, and
/// candle's tokenizer for text.
struct Env {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.tokenizer
                .encode(s, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

pub struct Engine {
    pub info: ModelInfo,
    /// The loaded model. A llama model keeps nothing in its KV cache here:
    /// each request runs on a copy (the weights are shared, only the cache
    /// is its own). Others run here, their cache cleared first.
    weights: Weights,
    /// The last prompt's tokens, and the model's state after some of its
    /// whole chunks of [`CHUNK`] tokens (where the model allows; see
    /// [`Weights::copy`]).
    last_prompt: Vec<TokenId>,
    checkpoints: Vec<(usize, Weights)>,
    device: Device,
    tokenizer: Tokenizer,
    factory: ParserFactory,
    template: ChatTemplate,
    /// Tokens that end a reply (the file's eos and the chat end-of-turn tokens).
    stops: Vec<TokenId>,
    /// Tokens whose text starts with a digit (see [`MAX_DIGITS`]).
    digit_first: Vec<bool>,
}

/// Prompt tokens run through the model at once. After each whole chunk the
/// model's state is kept, so a next prompt that starts with the same tokens
/// (the same specialist's system message, surface and files; only the
/// lineage feedback after them changes between its proposals) runs only
/// from its last shared chunk, as llama.cpp's server reuses its cache.
const CHUNK: usize = 512;

/// The most digits in a row a constrained reply may write: a JSON number
/// has no length limit in a schema, and a small model can write digits
/// until its reply runs out (`0.0173448598439854995890978...`).
const MAX_DIGITS: usize = 12;

/// End-of-turn tokens of the common chat formats, besides the file's eos.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"];

impl Engine {
    pub fn load(path: &Path, device: Device) -> Result<Engine, String> {
        let info = super::inspect(path)?;
        let fail = |why: String| format!("model {}: {why}", path.display());
        let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| fail(e.to_string()))?;
        let mut tokenizer = Tokenizer::from_gguf(&content)
            .map_err(|e| fail(format!("its tokenizer cannot be built: {e}")))?;
        fix_pre_tokenizer(&mut tokenizer, &content);
        let meta_text = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_string().ok())
                .cloned()
        };
        let meta_id = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_u64().ok())
                .map(|v| v as TokenId)
        };
        let vocab_rows = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| fail("no token_embd.weight tensor".into()))?;
        let eos = meta_id("tokenizer.ggml.eos_token_id")
            .ok_or_else(|| fail("no tokenizer.ggml.eos_token_id".into()))?;
        let token_text = |id: TokenId| tokenizer.id_to_token(id).unwrap_or_default();
        let template = ChatTemplate::new(
            meta_text("tokenizer.chat_template").as_deref(),
            &meta_id("tokenizer.ggml.bos_token_id")
                .map(token_text)
                .unwrap_or_default(),
            &token_text(eos),
        )
        .map_err(fail)?;
        let mut stops = vec![eos];
        stops.extend(END_OF_TURN.iter().filter_map(|t| tokenizer.token_to_id(t)));
        stops.sort_unstable();
        stops.dedup();
        let env = token_env(tokenizer.clone(), vocab_rows, eos, &stops).map_err(fail)?;
        let trie = env.tok_trie();
        let digit_first = (0..trie.vocab_size() as TokenId)
            .map(|t| trie.token(t).first().is_some_and(u8::is_ascii_digit))
            .collect();
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| fail(format!("llguidance: {e}")))?;
        factory.quiet();
        file.rewind().map_err(|e| fail(e.to_string()))?;
        let loaded = match info.architecture.as_str() {
            "qwen2" => quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &device)
                .map(Weights::Qwen2),
            "qwen3" => quantized_qwen3::ModelWeights::from_gguf(content, &mut file, &device)
                .map(Weights::Qwen3),
            _ => quantized_llama::ModelWeights::from_gguf(content, &mut file, &device)
                .map(Weights::Llama),
        };
        let weights = loaded.map_err(|e| fail(format!("its weights cannot be loaded: {e}")))?;
        Ok(Engine {
            info,
            weights,
            last_prompt: Vec::new(),
            checkpoints: Vec::new(),
            device,
            tokenizer,
            factory,
            template,
            stops,
            digit_first,
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<TokenId>, String> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("the prompt cannot be tokenized: {e}"))
    }

    /// The prompt's tokens, the user message cut in its middle until prompt
    /// and reply fit the context; and how many tokens were cut.
    fn prompt(&self, request: &Request) -> Result<(Vec<TokenId>, usize), String> {
        let reply = (request.sampling.max_tokens as usize).min(self.info.context / 2);
        let room = self.info.context - reply;
        let mut user = request.user.clone();
        let mut first = None;
        loop {
            let text = self.template.render(&request.system, &user)?;
            let ids = self.encode(&text)?;
            let full = *first.get_or_insert(ids.len());
            if ids.len() <= room {
                return Ok((ids.clone(), full - ids.len()));
            }
            let chars: Vec<char> = user.chars().collect();
            if chars.len() < 64 {
                return Err(format!(
                    "the system message alone ({} tokens) does not fit the model's context of {} tokens with {reply} for the reply",
                    ids.len(),
                    self.info.context
                ));
            }
            // About four characters a token, and a little more each round.
            let cut = ((ids.len() - room) * 4 + 64).min(chars.len() - 32);
            let keep = chars.len() - cut;
            let head: String = chars[..keep / 2].iter().collect();
            let tail: String = chars[chars.len() - (keep - keep / 2)..].iter().collect();
            user = format!("{head}\n[... cut to fit the model's context ...]\n{tail}");
        }
    }

    /// One reply, decoded under the request's schema when it has one.
    pub fn generate(&mut self, request: &Request) -> Result<Reply, String> {
        let (prompt, cut_tokens) = self.prompt(request)?;
        let mut matcher = match &request.schema {
            Some(schema) => {
                // Compact JSON: a small model otherwise pads with blank lines
                // until its reply runs out.
                let mut schema = schema.clone();
                if let Some(o) = schema.as_object_mut() {
                    o.insert(
                        "x-guidance".into(),
                        serde_json::json!({
                            "whitespace_flexible": false,
                            "item_separator": ", ",
                            "key_separator": ": ",
                        }),
                    );
                }
                let grammar = TopLevelGrammar::from_json_schema(schema);
                let parser = self.factory.create_parser(grammar).map_err(|e| {
                    format!("the reply schema is not a grammar llguidance accepts: {e}")
                })?;
                Some(Matcher::new(Ok(parser)))
            }
            None => None,
        };
        let sampling = &request.sampling;
        let max_tokens = (sampling.max_tokens as usize).min(self.info.context - prompt.len());
        let mut rng = Rng::new(sampling.seed);
        let t0 = Instant::now();
        let (mut state, reused, mut logits) = self.prefill(&prompt)?;
        let prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut out: Vec<TokenId> = Vec::new();
        let mut stop = Stop::Length;
        while out.len() < max_tokens {
            let allowed = match matcher.as_mut() {
                Some(m) if m.is_stopped() => {
                    stop = Stop::Done;
                    break;
                }
                Some(m) => Some(m.compute_mask().map_err(|e| format!("llguidance: {e}"))?),
                None => None,
            };
            if let Some(mask) = &allowed {
                let too_long = self.trailing_digits(&out) >= MAX_DIGITS;
                for (i, l) in logits.iter_mut().enumerate() {
                    let cut = too_long && self.digit_first[i];
                    if !mask.is_allowed(i as TokenId) || cut {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let token = sample(&logits, sampling, &mut rng).ok_or(
                "the grammar allows no token here (llguidance found the schema unsatisfiable)",
            )?;
            if self.stops.contains(&token) {
                stop = Stop::Done;
                break;
            }
            if let Some(m) = matcher.as_mut() {
                m.consume_token(token)
                    .map_err(|e| format!("llguidance: {e}"))?;
            }
            out.push(token);
            let model = state.as_mut().unwrap_or(&mut self.weights);
            logits = model.forward(&[token], prompt.len() + out.len() - 1, &self.device)?;
        }
        let text = self
            .tokenizer
            .decode(&out, true)
            .map_err(|e| format!("the reply cannot be decoded: {e}"))?;
        Ok(Reply {
            text,
            stop,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            cut_tokens,
            reply_tokens: out.len(),
            prompt_secs,
            reply_secs: t1.elapsed().as_secs_f64(),
        })
    }
}

impl Engine {
    /// Runs `prompt` through the model from the last kept state it starts
    /// with: the copy of the model that holds its state (none: `weights`
    /// itself does), how many of its tokens came from a kept state, and the
    /// next token's logits.
    fn prefill(
        &mut self,
        prompt: &[TokenId],
    ) -> Result<(Option<Weights>, usize, Vec<f32>), String> {
        // At least one token must run, for the logits.
        let shared = shared_prefix(&self.last_prompt, prompt).min(prompt.len().saturating_sub(1));
        let (mut state, mut pos) = match self.checkpoints.iter().rfind(|(n, _)| *n <= shared) {
            Some((n, kept)) => (kept.copy(), *n),
            None => (self.weights.copy(), 0),
        };
        // What is kept for the next prompt: the state at the last whole
        // chunk this prompt shares with the one before (the next will likely
        // share as much); for a first prompt, nothing being known yet, its
        // last two chunks'. A state holds its own KV cache (SmolLM2-135M:
        // 46 KB a token), so no more are kept.
        let boundary = (!self.last_prompt.is_empty()).then_some(shared / CHUNK * CHUNK);
        self.checkpoints
            .retain(|(n, _)| boundary.is_some_and(|b| *n == b));
        if state.is_none() {
            self.weights.clear();
        }
        let reused = pos;
        self.last_prompt = prompt.to_vec();
        let mut logits = Vec::new();
        while pos < prompt.len() {
            let end = ((pos / CHUNK + 1) * CHUNK).min(prompt.len());
            let model = state.as_mut().unwrap_or(&mut self.weights);
            logits = model.forward(&prompt[pos..end], pos, &self.device)?;
            pos = end;
            let wanted = boundary.is_none_or(|b| b == end)
                && !self.checkpoints.iter().any(|(n, _)| *n == end);
            if end.is_multiple_of(CHUNK) && end < prompt.len() && wanted {
                if let Some(copy) = state.as_ref().and_then(Weights::copy) {
                    self.checkpoints.push((end, copy));
                    // Each holds its own KV cache: a first prompt keeps its
                    // last two (a next one will likely share most of it).
                    if self.checkpoints.len() > 2 {
                        self.checkpoints.remove(0);
                    }
                }
            }
        }
        Ok((state, reused, logits))
    }

    /// Drops the kept prompt states: the next request runs its whole prompt.
    pub fn forget(&mut self) {
        self.last_prompt.clear();
        self.checkpoints.clear();
    }

    /// How many digits the reply so far ends with.
    fn trailing_digits(&self, out: &[TokenId]) -> usize {
        let mut n = 0;
        for &t in out.iter().rev() {
            let text = self.tokenizer.id_to_token(t).unwrap_or_default();
            let digits = text.bytes().rev().take_while(u8::is_ascii_digit).count();
            n += digits;
            if digits < text.len() {
                break;
            }
        }
        n
    }
}

/// candle builds a GPT-2 pre-tokenizer, with a space added before the text,
/// for every `tokenizer.ggml.pre` it does not know (SmolLM's among them):
/// then `{"` becomes ` {"` and the tokens differ from the model's training.
/// This follows the file: a space only with `add_space_prefix`, and
/// SmolLM's digits one by one.
fn fix_pre_tokenizer(tokenizer: &mut Tokenizer, content: &gguf_file::Content) {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    let meta = |k: &str| content.metadata.get(k);
    let pre = meta("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map_or("gpt2", |s| s.as_str());
    if matches!(pre, "qwen2" | "smaug-bpe" | "lfm2" | "llama3") {
        return;
    }
    let prefix = meta("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);
    let byte_level = ByteLevel::new(prefix, true, true);
    if pre == "smollm" {
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            byte_level.into(),
        ])));
    } else {
        tokenizer.with_pre_tokenizer(Some(byte_level));
    }
}

/// llguidance's view of the tokenizer: every token's bytes (special tokens
/// marked), padded to the model's embedding rows.
fn token_env(
    tokenizer: Tokenizer,
    rows: usize,
    eos: TokenId,
    stops: &[TokenId],
) -> Result<TokEnv, String> {
    let json: serde_json::Value = tokenizer
        .to_string(false)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
        .map_err(|e| format!("its tokenizer cannot be described: {e}"))?;
    let mut bytes = llguidance::token_bytes_from_tokenizer_json(&json)
        .map_err(|e| format!("its tokens' bytes cannot be read: {e}"))?;
    if bytes.len() > rows {
        return Err(format!(
            "the tokenizer has {} tokens but the model only {rows} embeddings",
            bytes.len()
        ));
    }
    while bytes.len() < rows {
        let mut name = format!(".<[{}]>", bytes.len()).into_bytes();
        name[0] = TokTrie::SPECIAL_TOKEN_MARKER;
        bytes.push(name);
    }
    let info = TokRxInfo::new(rows as u32, eos);
    let trie = TokTrie::from(&info, &bytes).with_eos_tokens(stops);
    Ok(std::sync::Arc::new(Env { trie, tokenizer }))
}

/// A token from `logits` (masked ones are -inf): the likeliest at
/// temperature 0, else drawn from the nucleus of `top_p`. `None` when every
/// token is masked.
fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> Option<TokenId> {
    let mut best: Vec<(usize, f32)> = logits
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .collect();
    if best.is_empty() {
        return None;
    }
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    if s.temperature <= 0.0 {
        return Some(best[0].0 as TokenId);
    }
    let top = best[0].1;
    let mut probs: Vec<f64> = best
        .iter()
        .map(|(_, l)| (((l - top) / s.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    let mut kept = 0.0;
    let mut n = 0;
    for p in probs.iter_mut() {
        *p /= total;
        kept += *p;
        n += 1;
        if kept >= f64::from(s.top_p) {
            break;
        }
    }
    let mut draw = rng.unit() * kept;
    for (i, p) in probs[..n].iter().enumerate() {
        draw -= p;
        if draw <= 0.0 {
            return Some(best[i].0 as TokenId);
        }
    }
    Some(best[n - 1].0 as TokenId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32) -> Sampling {
        Sampling {
            temperature,
            top_p,
            seed: 7,
            max_tokens: 1,
        }
    }

    #[test]
    fn sampling_keeps_to_the_mask_and_the_nucleus() {
        let logits = [1.0, f32::NEG_INFINITY, 3.0, 2.9, -5.0];
        let mut rng = Rng::new(7);
        assert_eq!(sample(&logits, &sampling(0.0, 1.0), &mut rng), Some(2));
        // Tokens 2 and 3 hold ~0.7 of the mass: a nucleus of 0.6 is them alone.
        for _ in 0..200 {
            let t = sample(&logits, &sampling(1.0, 0.6), &mut rng).unwrap();
            assert!(
                t == 2 || t == 3,
                "token {t} is outside the nucleus (seed 7)"
            );
        }
        let mut seen = [0; 5];
        for _ in 0..2000 {
            seen[sample(&logits, &sampling(1.0, 1.0), &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(seen[1], 0, "a masked token was drawn (seed 7)");
        assert!(
            seen[0] > 0,
            "the whole distribution is reachable at top_p 1 (seed 7)"
        );
        assert_eq!(
            sample(&[f32::NEG_INFINITY; 3], &sampling(1.0, 1.0), &mut rng),
            None
        );
    }
}
