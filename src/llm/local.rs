//! The daemon's side of a local model: one `ratchet llm-worker` child
//! process per model file and device, shared by every specialist that names
//! it, started at its first request, kept loaded between requests, started
//! again when it has died, and stopped when the last specialist using it
//! goes (or with ratchet: it dies with its parent).
//!
//! The model and its memory live in the worker, never in the daemon: a
//! crash, an out-of-memory kill or a GPU the worker opens cannot take the
//! daemon down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::LlmError;
use crate::localmodel::{Answer, ModelInfo, Reply, Request};

/// How long a worker may take to load its model.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

type Key = (PathBuf, String);

/// Workers by model file and device; weak, so the last user's drop stops one.
fn registry() -> &'static Mutex<HashMap<Key, Weak<Worker>>> {
    static WORKERS: OnceLock<Mutex<HashMap<Key, Weak<Worker>>>> = OnceLock::new();
    WORKERS.get_or_init(Default::default)
}

/// One model file's worker, shared; requests take turns.
pub struct Worker {
    path: PathBuf,
    device: String,
    process: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    running: Option<Process>,
    /// Workers started so far (a start after the first is a restart).
    starts: u64,
    /// Why the last one ended, for the restart's event.
    ended: Option<String>,
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    info: ModelInfo,
}

/// What one request came to, besides the reply.
pub struct Asked {
    pub reply: Reply,
    /// A worker started again for this request: why the one before ended.
    pub restarted: Option<String>,
}

impl Worker {
    /// The worker of `path` on `device`, shared with every other user of it.
    pub fn shared(path: &Path, device: &str) -> Arc<Worker> {
        let key = (path.to_path_buf(), device.to_string());
        let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(w) = map.get(&key).and_then(Weak::upgrade) {
            return w;
        }
        let w = Arc::new(Worker {
            path: key.0.clone(),
            device: key.1.clone(),
            process: Default::default(),
        });
        map.insert(key, Arc::downgrade(&w));
        w
    }

    /// The process id of the running worker, if one runs.
    pub async fn pid(&self) -> Option<u32> {
        self.process
            .lock()
            .await
            .running
            .as_ref()
            .and_then(|p| p.child.id())
    }

    /// One reply; `timeout` covers the request, not the model's loading.
    pub async fn ask(&self, request: &Request, timeout: Duration) -> Result<Asked, LlmError> {
        let mut slot = self.process.lock().await;
        let mut restarted = None;
        if let Some(p) = slot.running.as_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                slot.ended = Some(format!("it exited ({status}) between requests"));
                slot.running = None;
            }
        }
        if slot.running.is_none() {
            let process = self.start().await?;
            slot.starts += 1;
            if slot.starts > 1 {
                restarted = Some(slot.ended.take().unwrap_or_else(|| "it had stopped".into()));
            }
            tracing::info!(model = %self.path.display(), pid = process.child.id(), arch = %process.info.architecture, "llm worker ready");
            slot.running = Some(process);
        }
        let p = slot.running.as_mut().expect("started above");
        let line = serde_json::to_string(request).map_err(|e| LlmError::Other(e.to_string()))?;
        let exchange = async {
            p.stdin.write_all(line.as_bytes()).await?;
            p.stdin.write_all(b"\n").await?;
            p.stdin.flush().await?;
            p.stdout.next_line().await
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        let died = |p: &mut Process, what: String| {
            let _ = p.child.start_kill();
            what
        };
        let result = match outcome {
            Err(_) => {
                let why = died(
                    p,
                    format!(
                        "it gave no reply within {} s and was stopped",
                        timeout.as_secs()
                    ),
                );
                slot.ended = Some(why.clone());
                slot.running = None;
                return Err(LlmError::Other(format!("the local model {why}")));
            }
            Ok(Ok(Some(text))) => serde_json::from_str::<Answer>(&text)
                .map_err(|e| format!("its answer is not one ratchet reads: {e}")),
            Ok(Ok(None)) => Err("it exited during the request".to_string()),
            Ok(Err(e)) => Err(format!("the pipe to it broke: {e}")),
        };
        match result {
            Ok(Answer::Reply(reply)) => Ok(Asked { reply, restarted }),
            Ok(Answer::Error(e)) => Err(LlmError::Other(format!("the local model: {e}"))),
            Ok(Answer::Ready(_)) => Err(LlmError::Other(
                "the local model answered out of turn".into(),
            )),
            Err(why) => {
                let status = p.child.try_wait().ok().flatten();
                let why = died(
                    p,
                    match status {
                        Some(s) => format!("{why} ({s})"),
                        None => why,
                    },
                );
                slot.ended = Some(why.clone());
                slot.running = None;
                // Worth another try: the next one starts a new worker.
                Err(LlmError::Transport(format!(
                    "the local model's worker: {why}"
                )))
            }
        }
    }

    async fn start(&self) -> Result<Process, LlmError> {
        let exe = std::env::current_exe()
            .map_err(|e| LlmError::Other(format!("cannot find ratchet's own executable: {e}")))?;
        let mut child = tokio::process::Command::new(exe)
            .arg("llm-worker")
            .arg("--model")
            .arg(&self.path)
            .arg("--device")
            .arg(&self.device)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LlmError::Other(format!("cannot start the local model's worker: {e}")))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = tokio::time::timeout(LOAD_TIMEOUT, stdout.next_line()).await;
        let fail = |why: String| Err(LlmError::Other(format!("the local model: {why}")));
        match first {
            Ok(Ok(Some(line))) => match serde_json::from_str::<Answer>(&line) {
                Ok(Answer::Ready(info)) => Ok(Process {
                    child,
                    stdin,
                    stdout,
                    info,
                }),
                Ok(Answer::Error(e)) => fail(e),
                _ => fail(format!("its worker said {line:?} instead of loading")),
            },
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                Err(LlmError::Transport(format!(
                    "the local model's worker exited while loading ({})",
                    status.map_or("no status".into(), |s| s.to_string())
                )))
            }
            Ok(Err(e)) => fail(format!("cannot read its worker: {e}")),
            Err(_) => fail(format!(
                "its worker did not load within {} s",
                LOAD_TIMEOUT.as_secs()
            )),
        }
    }
}
