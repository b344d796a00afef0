//! A real HTTP server on 127.0.0.1 that speaks the chat completions API,
//! scripted per test: each request is answered by the test's function of
//! (model, how many requests that model had before, request body), and every
//! request is recorded with its arrival time and Authorization header.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What the scripted server does with one request.
pub enum Reply {
    /// A chat completion whose message content is this text.
    Text(String),
    /// Any status with a JSON error body and extra headers.
    Status(u16, Vec<(String, String)>),
    /// Any status with this body.
    Body(u16, String),
    /// Wait, then answer with the inner reply.
    Slow(Duration, Box<Reply>),
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub model: String,
    pub at: Instant,
    pub body: Value,
    pub authorization: Option<String>,
}

impl Recorded {
    /// The system and user messages, joined.
    pub fn prompt(&self) -> String {
        self.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["content"].as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

type Script = dyn Fn(&str, usize, &Value) -> Reply + Send + Sync;

pub struct LlmServer {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl LlmServer {
    pub fn start(
        script: impl Fn(&str, usize, &Value) -> Reply + Send + Sync + 'static,
    ) -> LlmServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (script, counts, recorded) = (script.clone(), counts.clone(), recorded.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &*script, &counts, &recorded);
                });
            }
        });
        LlmServer { port, requests }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn requests_of(&self, model: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.model == model)
            .cloned()
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    script: &Script,
    counts: &Mutex<HashMap<String, usize>>,
    recorded: &Mutex<Vec<Recorded>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let at = Instant::now();
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        let mut authorization = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let model = body["model"].as_str().unwrap_or("").to_string();
        let n = {
            let mut c = counts.lock().unwrap();
            let n = c.entry(model.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        recorded.lock().unwrap().push(Recorded {
            model: model.clone(),
            at,
            body: body.clone(),
            authorization,
        });
        let reply = if path.ends_with("/chat/completions") {
            script(&model, n, &body)
        } else {
            Reply::Status(404, vec![])
        };
        respond(&mut stream, reply, &model)?;
    }
}

fn respond(stream: &mut TcpStream, reply: Reply, model: &str) -> std::io::Result<()> {
    let (status, headers, body) = match reply {
        Reply::Slow(d, inner) => {
            std::thread::sleep(d);
            return respond(stream, *inner, model);
        }
        Reply::Text(text) => (200, vec![], completion(model, &text).to_string()),
        Reply::Body(s, body) => (s, vec![], body),
        Reply::Status(s, headers) => (
            s,
            headers,
            json!({"error": {"message": format!("scripted status {s}"), "type": "server_error", "param": null, "code": null}})
                .to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// A chat.completion object with `text` as the message content.
pub fn completion(model: &str, text: &str) -> Value {
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000u32,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    })
}

/// A proposal's JSON text.
pub fn proposal(hypothesis: &str, edits: Value) -> String {
    json!({"hypothesis": hypothesis, "edits": edits}).to_string()
}

/// A `[[specialist]]` of kind llm with short timings for tests.
pub fn llm_specialist(name: &str, model: &str, base_url: &str, extra: &str) -> String {
    format!(
        "\n[[specialist]]\nname = \"{name}\"\nsurface = \"search\"\nkind = \"llm\"\ninstructions = \"agents/{name}.md\"\n\
         base_url = \"{base_url}\"\nmodel = \"{model}\"\ntimeout_secs = 5\nmax_retries = 2\n\
         retry_base_ms = 50\nfailure_backoff_secs = 1\n{extra}"
    )
}
