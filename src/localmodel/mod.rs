//! LLM specialists without a server: a GGUF model run by candle-transformers
//! in a child process of ratchet (`ratchet llm-worker`), its replies decoded
//! under a grammar of the surface's proposal JSON (llguidance).
//!
//! The daemon never loads a model itself: `llm::local` starts one worker per
//! model file and talks to it over its stdin and stdout, one JSON line per
//! request and per answer ([`Request`], [`Answer`]). The worker
//! (`worker.rs`) loads the model once (`engine.rs`), reads its tokenizer and
//! chat template from the file's own metadata (`template.rs`), and answers
//! requests in turn until its stdin closes or ratchet dies.
//!
//! [`inspect`] reads only a file's header: what `ratchet check` and the
//! daemon's start say about a model before any worker runs.

mod engine;
pub use engine::Engine;
mod template;
pub mod worker;

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};

/// The architectures the worker runs, as GGUF's `general.architecture` names them.
pub const ARCHITECTURES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];
/// candle's quantized llama precomputes rotary tables for this many positions.
const LLAMA_MAX_POSITIONS: usize = 4096;

/// What a model file's header says, checked against what the worker runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// The longest prompt plus reply the worker will run, in tokens.
    pub context: usize,
    /// Tensor types and how many tensors of each, such as `q4_1 ×211`.
    pub tensor_types: String,
    /// Parameters (elements of every tensor).
    pub parameters: u64,
    pub file_bytes: u64,
    /// Whether the file carries its own chat template.
    pub chat_template: bool,
}

/// Reads the GGUF header of `path` and says whether the worker can run it,
/// with the path and the reason when it cannot.
pub fn inspect(path: &Path) -> Result<ModelInfo, String> {
    let fail = |why: String| format!("model {}: {why}", path.display());
    let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let content = read_header(&mut file).map_err(fail)?;
    info_of(&content, file_bytes).map_err(fail)
}

/// The header, with errors that say what is wrong in a user's words.
fn read_header(file: &mut std::fs::File) -> Result<gguf_file::Content, String> {
    use std::io::{Read, Seek};
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(
            "not a GGUF file (it does not start with the bytes `GGUF`; ggml and safetensors files are not read)"
                .into(),
        );
    }
    file.rewind().map_err(|e| e.to_string())?;
    gguf_file::Content::read(file).map_err(|e| {
        let e = e.to_string();
        if e.contains("unknown dtype") || e.contains("dtype") {
            format!("a tensor type candle does not run (an unsupported quantization): {e}")
        } else {
            format!("the GGUF header cannot be read: {e}")
        }
    })
}

fn info_of(content: &gguf_file::Content, file_bytes: u64) -> Result<ModelInfo, String> {
    let text = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .cloned()
    };
    let architecture = text("general.architecture")
        .ok_or("the file names no architecture (general.architecture)")?;
    if !ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(format!(
            "architecture `{architecture}` is not supported (supported: {})",
            ARCHITECTURES.join(", ")
        ));
    }
    let model = text("tokenizer.ggml.model").unwrap_or_default();
    if model != "gpt2" {
        return Err(format!(
            "tokenizer `{model}` is not supported: the worker builds byte-level BPE (`gpt2`) tokenizers from GGUF metadata"
        ));
    }
    let declared = content
        .metadata
        .get(&format!("{architecture}.context_length"))
        .and_then(|v| v.to_u64().ok())
        .ok_or_else(|| format!("the file has no {architecture}.context_length"))?
        as usize;
    let context = match architecture.as_str() {
        "llama" | "mistral" => declared.min(LLAMA_MAX_POSITIONS),
        _ => declared,
    };
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    let mut parameters = 0u64;
    for t in content.tensor_infos.values() {
        *types
            .entry(format!("{:?}", t.ggml_dtype).to_lowercase())
            .or_default() += 1;
        parameters += t.shape.elem_count() as u64;
    }
    let tensor_types = types
        .iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(ModelInfo {
        architecture,
        name: text("general.name"),
        context,
        tensor_types,
        parameters,
        file_bytes,
        chat_template: content.metadata.contains_key("tokenizer.chat_template"),
    })
}

/// Models up to this many parameters run with f32 weights (2 GiB at this
/// size): candle multiplies a long prompt faster dense than quantized, and
/// its kernels for some quantizations (Q4_1, Q5_0, Q5_1) are scalar.
/// Larger ones keep their quantized weights.
const DENSE_UP_TO: u64 = 500_000_000;

/// Whether the worker should dequantize this model's weights as it loads
/// them (`CANDLE_DEQUANTIZE_ALL`, read by candle when it loads a matrix).
pub fn dense(info: &ModelInfo) -> bool {
    info.parameters <= DENSE_UP_TO
}

/// Sampling of one reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 picks the likeliest token every time.
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens with this much probability.
    pub top_p: f32,
    pub seed: u64,
    pub max_tokens: u32,
}

/// One request to a worker: a chat of a system and a user message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub system: String,
    pub user: String,
    /// The JSON Schema the reply is decoded under; none: free text.
    pub schema: Option<serde_json::Value>,
    pub sampling: Sampling,
}

/// How a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The model (or the grammar) ended it.
    Done,
    /// It reached `max_tokens` or the context.
    Length,
}

/// A worker's reply to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    pub stop: Stop,
    pub prompt_tokens: usize,
    /// Prompt tokens whose state was kept from the request before (they
    /// did not run again).
    #[serde(default)]
    pub reused_tokens: usize,
    /// Prompt tokens dropped to fit the context (from the middle of the user message).
    pub cut_tokens: usize,
    pub reply_tokens: usize,
    pub prompt_secs: f64,
    pub reply_secs: f64,
}

impl Reply {
    /// `2378 prompt tokens (2048 reused) at 94/s, 75 reply tokens at 5.9/s, 17.3 s`:
    /// the prompt's rate counts the tokens that ran.
    pub fn speed(&self) -> String {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let reused = match self.reused_tokens {
            0 => String::new(),
            n => format!(" ({n} reused)"),
        };
        format!(
            "{} prompt tokens{reused} at {:.0}/s, {} reply tokens at {:.1}/s, {:.1} s",
            self.prompt_tokens,
            rate(self.prompt_tokens - self.reused_tokens, self.prompt_secs),
            self.reply_tokens,
            rate(self.reply_tokens, self.reply_secs),
            self.prompt_secs + self.reply_secs
        )
    }
}

/// What a worker writes: once `Ready` (or `Error` and exit) after loading,
/// then one `Reply` or `Error` per request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Ready(ModelInfo),
    Reply(Reply),
    Error(String),
}
