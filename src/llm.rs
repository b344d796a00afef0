//! The client of an OpenAI-compatible chat completions endpoint, through
//! async-openai: one request per proposal, with ratchet's own retry policy
//! (exponential backoff with jitter on 429, 5xx, timeouts and connection
//! errors, honouring Retry-After) and sliding-hour budgets of requests and
//! tokens.
//!
//! async-openai's built-in retry layer is replaced by [`Transport`], a plain
//! reqwest service that turns an HTTP error status into an error that keeps
//! its Retry-After header, so the policy lives here, in one place.
//!
//! The API key is read from the environment variable the configuration
//! names, handed to async-openai (which keeps it as a secret), and never
//! logged, stored or passed to trial processes.
//!
//! The reply is asked for in the shape of the surface's proposal schema
//! (`propose::schema`): as `response_format: json_schema`, falling back to
//! `json_object` with the schema beside it (llama-cpp-python's form), to
//! plain `json_object` and then to plain text when the server refuses each
//! (`json_mode = "auto"`). A specialist with `model_path` instead runs a
//! GGUF model in a worker process (`local.rs`), decoded under that schema.

pub mod local;
pub mod usage;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest, CreateChatCompletionResponse,
    ResponseFormat, ResponseFormatJsonSchema,
};
use async_openai::Client;

use crate::config::{JsonMode, LlmSection};
use crate::propose::rng::Rng;

/// The longest single wait between retries of one request.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// A Retry-After longer than this ends the request; the specialist rests instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);
/// The most of an error body kept in messages.
const MAX_ERROR_BODY: usize = 2048;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    #[error("no reply within {0} s")]
    Timeout(u64),
    #[error("cannot reach the endpoint: {0}")]
    Transport(String),
    #[error("the reply has no message content")]
    Empty,
    #[error("{0}")]
    Other(String),
}

impl LlmError {
    /// 429, 408, 5xx, timeouts and connection errors are worth another try.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            Self::Timeout(_) | Self::Transport(_) => true,
            Self::Empty | Self::Other(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// An HTTP error status from [`Transport`], carried through async-openai as
/// `OpenAIError::Boxed`.
#[derive(Debug)]
struct HttpStatus {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for HttpStatus {}

/// reqwest as a tower service for async-openai, without retries: a non-2xx
/// response becomes an [`HttpStatus`] error with its Retry-After.
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
}

type TransportFuture =
    Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = TransportFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let request = request.build().await?;
            let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
            if response.status().is_success() {
                return Ok(response);
            }
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = response.text().await.unwrap_or_default();
            Err(OpenAIError::Boxed(Box::new(HttpStatus {
                status,
                retry_after,
                body: cut(&body, MAX_ERROR_BODY),
            })))
        })
    }
}

/// Retry-After in seconds (fractions accepted). HTTP dates are not honoured:
/// the backoff applies instead.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    format!("{}…", crate::domain::prefix_at_most(s, max))
}

fn classify(e: OpenAIError, timeout_secs: u64) -> LlmError {
    match e {
        OpenAIError::Boxed(b) => match b.downcast::<HttpStatus>() {
            Ok(h) => LlmError::Status {
                status: h.status,
                retry_after: h.retry_after,
                body: h.body,
            },
            Err(other) => LlmError::Other(other.to_string()),
        },
        OpenAIError::Reqwest(e) if e.is_timeout() => LlmError::Timeout(timeout_secs),
        OpenAIError::Reqwest(e) => LlmError::Transport(e.without_url().to_string()),
        OpenAIError::ApiError(a) => LlmError::Status {
            status: a.status_code.as_u16(),
            retry_after: None,
            body: cut(&a.api_error.message, MAX_ERROR_BODY),
        },
        OpenAIError::JSONDeserialize(e, content) => LlmError::Other(format!(
            "the endpoint's response is not a chat completion: {e}: {}",
            cut(&content, 300)
        )),
        other => LlmError::Other(other.to_string()),
    }
}

/// A model's reply.
#[derive(Clone, Debug)]
pub struct Completion {
    pub text: String,
    /// Prompt and reply tokens as the server counted them (estimated when it did not).
    pub tokens: u64,
    pub attempts: u32,
    /// Events to record beside the proposal: (kind, detail).
    pub events: Vec<(&'static str, String)>,
}

/// A request that failed for good.
#[derive(Clone, Debug)]
pub struct Failure {
    pub error: LlmError,
    pub attempts: u32,
}

/// What the request's `response_format` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `json_schema` with the surface's schema (OpenAI, vLLM, Ollama,
    /// llama.cpp's own server).
    Schema,
    /// `json_object` with the schema in a `schema` field: the only form
    /// llama-cpp-python's server takes a schema in.
    ObjectSchema,
    /// `json_object`: any JSON.
    Object,
    Plain,
}

impl Format {
    /// The next simpler format, for a server that refused this one.
    fn simpler(self) -> Format {
        match self {
            Format::Schema => Format::ObjectSchema,
            Format::ObjectSchema => Format::Object,
            Format::Object | Format::Plain => Format::Plain,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Schema => "json_schema",
            Format::ObjectSchema => "json_object with a schema",
            Format::Object => "json_object",
            Format::Plain => "plain text",
        }
    }
}

enum Backend {
    Http(Client<OpenAIConfig>),
    Local(std::sync::Arc<local::Worker>),
}

/// One specialist's connection to its model.
pub struct LlmClient {
    backend: Backend,
    config: LlmSection,
    /// The proposal schema of the specialist's surface.
    schema: Option<serde_json::Value>,
    format: Format,
    /// Requests sent so far (a local model's seed moves on by one each).
    sent: u64,
    /// A local model's context in tokens (read once from its header).
    context: Option<usize>,
    /// (time, tokens) of each request in the last hour.
    window: VecDeque<(Instant, u64)>,
    /// The API key, to redact from error bodies a server echoes it in.
    secret: Option<String>,
}

impl LlmClient {
    /// A client for `config`; reads the API key from the environment.
    /// Replies are asked for in the shape of `schema`, where there is one.
    pub fn new(
        config: &LlmSection,
        schema: Option<serde_json::Value>,
    ) -> Result<LlmClient, String> {
        let format = match (config.json_mode, &schema) {
            (JsonMode::Off, _) => Format::Plain,
            (JsonMode::On, _) | (JsonMode::Auto | JsonMode::Schema, None) => Format::Object,
            (JsonMode::Auto | JsonMode::Schema, Some(_)) => Format::Schema,
        };
        if let Some(path) = &config.model_path {
            return Ok(LlmClient {
                backend: Backend::Local(local::Worker::shared(path, &config.device)),
                config: config.clone(),
                // A local model decodes under the schema unless it is off.
                schema: schema.filter(|_| config.json_mode != JsonMode::Off),
                format,
                sent: 0,
                context: crate::localmodel::inspect(path).ok().map(|i| i.context),
                window: VecDeque::new(),
                secret: None,
            });
        }
        // reqwest's rustls needs a process-wide crypto provider; ring is it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut secret = None;
        let mut openai = OpenAIConfig::new().with_api_base(config.base_url.trim_end_matches('/'));
        match &config.api_key_env {
            Some(var) => {
                let key = std::env::var(var)
                    .map_err(|_| format!("environment variable {var} (api_key_env) is not set"))?;
                // Trial code runs as the same user: without this it could read
                // the key from /proc/<ratchet>/environ.
                if let Err(e) = nix::sys::prctl::set_dumpable(false) {
                    tracing::warn!(error = %e, "cannot make ratchet non-dumpable; trial processes could read its environment");
                }
                secret = Some(key.clone());
                openai = openai.with_api_key(key);
            }
            // async-openai would otherwise read OPENAI_API_KEY; a keyless
            // local server gets no key at all.
            None => openai = openai.with_api_key(""),
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(config.timeout_secs.min(30)))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let client = Client::with_config(openai).with_http_service(Transport { http });
        Ok(LlmClient {
            backend: Backend::Http(client),
            secret,
            schema,
            format,
            sent: 0,
            context: None,
            config: config.clone(),
            window: VecDeque::new(),
        })
    }

    /// How long until the hourly budgets allow another request (zero: now).
    pub fn budget_wait(&mut self, now: Instant) -> Duration {
        while self
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= HOUR)
        {
            self.window.pop_front();
        }
        let requests = self.window.len() as u64;
        let tokens: u64 = self.window.iter().map(|(_, n)| n).sum();
        let over = requests >= u64::from(self.config.max_requests_per_hour)
            || tokens >= self.config.max_tokens_per_hour;
        match (over, self.window.front()) {
            (true, Some((oldest, _))) => (*oldest + HOUR).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// The request's JSON body.
    fn request(&self, system: &str, user: &str) -> serde_json::Value {
        #[allow(deprecated)]
        let request = CreateChatCompletionRequest {
            model: self.config.model.clone(),
            messages: vec![
                ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                    content: system.into(),
                    name: None,
                }),
                ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                    content: user.into(),
                    name: None,
                }),
            ],
            temperature: Some(self.config.temperature),
            // `max_tokens` rather than `max_completion_tokens`: llama.cpp,
            // Ollama and older vLLM know only the former.
            max_tokens: Some(self.config.max_reply_tokens),
            top_p: self.config.top_p,
            response_format: match (self.format, &self.schema) {
                (Format::Schema, Some(schema)) => Some(ResponseFormat::JsonSchema {
                    json_schema: ResponseFormatJsonSchema {
                        description: Some(
                            "One trial: a hypothesis and the edits that test it.".into(),
                        ),
                        name: "proposal".into(),
                        schema: schema.clone(),
                        strict: None,
                    },
                }),
                (Format::Plain, _) => None,
                _ => Some(ResponseFormat::JsonObject),
            },
            ..Default::default()
        };
        let mut body = serde_json::to_value(request).expect("a chat request serializes");
        if let (Format::ObjectSchema, Some(schema)) = (self.format, &self.schema) {
            body["response_format"] = serde_json::json!({"type": "json_object", "schema": schema});
        }
        body
    }

    /// `error` with any occurrence of the API key replaced.
    fn redact(&self, error: LlmError) -> LlmError {
        let Some(key) = self.secret.as_deref().filter(|k| !k.is_empty()) else {
            return error;
        };
        let clean = |s: String| s.replace(key, "[redacted]");
        match error {
            LlmError::Status {
                status,
                retry_after,
                body,
            } => LlmError::Status {
                status,
                retry_after,
                body: clean(body),
            },
            LlmError::Transport(m) => LlmError::Transport(clean(m)),
            LlmError::Other(m) => LlmError::Other(clean(m)),
            other => other,
        }
    }

    /// Sends one chat completion, retrying as the policy says. `rng` draws the jitter.
    pub async fn complete(
        &mut self,
        system: &str,
        user: &str,
        rng: &mut Rng,
    ) -> Result<Completion, Failure> {
        if let Backend::Local(worker) = &self.backend {
            let worker = worker.clone();
            return self.complete_local(&worker, system, user, rng).await;
        }
        let Backend::Http(client) = &self.backend else {
            unreachable!("local requests returned above")
        };
        let client = client.clone();
        let estimate = ((system.len() + user.len()) / 4) as u64;
        let mut attempts = 0;
        let mut backoff = 0;
        loop {
            attempts += 1;
            let request = self.request(system, user);
            let sent = Instant::now();
            let result = tokio::time::timeout(
                Duration::from_secs(self.config.timeout_secs),
                client
                    .chat()
                    .create_byot::<_, CreateChatCompletionResponse>(request),
            )
            .await;
            let error = match result {
                Ok(Ok(response)) => {
                    let tokens = response
                        .usage
                        .as_ref()
                        .map(|u| u64::from(u.total_tokens))
                        .unwrap_or(estimate);
                    self.window.push_back((sent, tokens));
                    let text = response
                        .choices
                        .into_iter()
                        .next()
                        .and_then(|c| c.message.content)
                        .filter(|t| !t.trim().is_empty());
                    return match text {
                        Some(text) => Ok(Completion {
                            text,
                            tokens,
                            attempts,
                            events: Vec::new(),
                        }),
                        None => Err(Failure {
                            error: LlmError::Empty,
                            attempts,
                        }),
                    };
                }
                Ok(Err(e)) => self.redact(classify(e, self.config.timeout_secs)),
                Err(_) => LlmError::Timeout(self.config.timeout_secs),
            };
            self.window.push_back((sent, estimate));
            // A server that does not know a response_format says 400 or 422
            // about it (llama-cpp-python's says 500 and names the field):
            // ask again with the next simpler one, and keep to it. A 400
            // about something else (a prompt over the context) is no reason
            // to give up the schema.
            let refused = match &error {
                LlmError::Status {
                    status: 400 | 422,
                    body,
                    ..
                } => {
                    let body = body.to_ascii_lowercase();
                    body.trim().is_empty() || body.contains("format") || body.contains("schema")
                }
                LlmError::Status {
                    status: 500, body, ..
                } => body.contains("response_format"),
                _ => false,
            };
            // "schema" keeps to the two forms that carry the schema.
            let to = self.format.simpler();
            let allowed = match self.config.json_mode {
                JsonMode::Auto => to != self.format,
                JsonMode::Schema => to == Format::ObjectSchema,
                JsonMode::On | JsonMode::Off => false,
            };
            if refused && allowed {
                tracing::info!(model = %self.config.model, refused = self.format.name(), "the endpoint refused a response_format; asking for {} from now on", to.name());
                self.format = to;
                continue;
            }
            if !error.retryable() || attempts > self.config.max_retries {
                return Err(Failure { error, attempts });
            }
            let delay = match error.retry_after() {
                Some(d) if d > MAX_RETRY_AFTER => return Err(Failure { error, attempts }),
                Some(d) => d,
                None => {
                    let base = Duration::from_millis(self.config.retry_base_ms)
                        .saturating_mul(1 << backoff.min(16));
                    backoff += 1;
                    // Jitter: a uniform share of 50–100% of the step.
                    base.mul_f64(0.5 + 0.5 * rng.unit()).min(MAX_RETRY_DELAY)
                }
            };
            tracing::warn!(model = %self.config.model, attempt = attempts, error = %error, delay_ms = delay.as_millis() as u64, "LLM request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

impl LlmClient {
    /// The prompt's budget in tokens: the configured one, and for a local
    /// model no more than its context leaves beside the reply.
    pub fn prompt_budget(&self) -> usize {
        let configured = self.config.prompt_tokens;
        match self.context {
            Some(context) => configured.min(
                context
                    .saturating_sub(self.config.max_reply_tokens as usize)
                    .max(context / 2)
                    .saturating_sub(64),
            ),
            None => configured,
        }
    }

    /// One reply of a local model; a worker that died is started again
    /// (the retry policy's next attempt), and its restart is an event.
    async fn complete_local(
        &mut self,
        worker: &local::Worker,
        system: &str,
        user: &str,
        rng: &mut Rng,
    ) -> Result<Completion, Failure> {
        let seed = match self.config.seed {
            Some(s) => s.wrapping_add(self.sent),
            None => rng.next_u64(),
        };
        self.sent += 1;
        let request = crate::localmodel::Request {
            system: system.to_string(),
            user: user.to_string(),
            schema: self.schema.clone(),
            sampling: crate::localmodel::Sampling {
                temperature: self.config.temperature,
                top_p: self.config.top_p.unwrap_or(0.95),
                seed,
                max_tokens: self.config.max_reply_tokens,
            },
        };
        let mut events = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let sent = Instant::now();
            let timeout = Duration::from_secs(self.config.timeout_secs);
            match worker.ask(&request, timeout).await {
                Ok(asked) => {
                    if let Some(why) = asked.restarted {
                        events.push((
                            "llm_worker_restarted",
                            format!(
                                "{}: the worker was started again ({why})",
                                self.config.model
                            ),
                        ));
                    }
                    let r = asked.reply;
                    let tokens = (r.prompt_tokens + r.reply_tokens) as u64;
                    self.window.push_back((sent, tokens));
                    let mut detail = r.speed();
                    if r.cut_tokens > 0 {
                        detail.push_str(&format!(
                            "; {} prompt tokens cut to fit the context",
                            r.cut_tokens
                        ));
                    }
                    if r.stop == crate::localmodel::Stop::Length {
                        detail.push_str("; the reply reached max_reply_tokens");
                    }
                    events.push(("llm_reply", format!("{}: {detail}", self.config.model)));
                    return Ok(Completion {
                        text: r.text,
                        tokens,
                        attempts,
                        events,
                    });
                }
                Err(error) => {
                    self.window.push_back((sent, 0));
                    if !error.retryable() || attempts > self.config.max_retries {
                        return Err(Failure { error, attempts });
                    }
                    tracing::warn!(model = %self.config.model, attempt = attempts, error = %error, "local model request failed; starting its worker again");
                    events.push(("llm_worker_died", format!("{}: {error}", self.config.model)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_seconds_only() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn retryable_statuses() {
        let s = |status| LlmError::Status {
            status,
            retry_after: None,
            body: String::new(),
        };
        assert!(s(429).retryable() && s(500).retryable() && s(503).retryable());
        assert!(!s(400).retryable() && !s(401).retryable() && !s(404).retryable());
        assert!(LlmError::Timeout(1).retryable());
        assert!(!LlmError::Empty.retryable());
    }

    #[test]
    fn the_hourly_budget_counts_requests_in_the_window() {
        let mut config = LlmSection::new("http://127.0.0.1:1/v1", "m");
        config.max_requests_per_hour = 2;
        let mut c = LlmClient::new(&config, None).unwrap();
        let t0 = Instant::now();
        assert_eq!(c.budget_wait(t0), Duration::ZERO);
        c.window.push_back((t0, 10));
        c.window.push_back((t0 + Duration::from_secs(10), 10));
        let wait = c.budget_wait(t0 + Duration::from_secs(20));
        assert_eq!(wait, HOUR - Duration::from_secs(20));
        assert_eq!(
            c.budget_wait(t0 + HOUR),
            Duration::ZERO,
            "the oldest left the window"
        );
    }
}
