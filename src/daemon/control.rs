//! The control socket: a Unix stream socket (mode 0600, peer uid checked)
//! that speaks one JSON line each way per connection. Requests carry the
//! protocol version `v`; a daemon answers a version it does not speak with
//! an error that names its own.
//!
//! ```text
//! → {"v":1,"cmd":"status"}
//! ← {"v":1,"ok":true,"status":{...}}
//! → {"v":1,"cmd":"pause","names":["optimizer"]}      (names absent: all)
//! ← {"v":1,"ok":true,"changed":["optimizer"]}
//! → {"v":1,"cmd":"reload"}
//! ← {"v":1,"ok":false,"error":"...","errors":["specialists.toml: ..."]}
//! → {"v":1,"cmd":"read","read":{"what":"trials","filter":{"limit":50}}}
//! ← {"v":1,"ok":true,"stream":true}
//! ← {...trial...}                                      (one line per item)
//! ← {"end":{"count":50}}                 (or {"end":{"count":n,"error":"..."}})
//! ```
//!
//! A read streams its items after the answer line; the closing `end` line
//! tells a complete answer from a daemon that stopped mid-way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::actors::messages::{LiveStatus, ReloadReport};

/// The version of the request/response format.
pub const PROTOCOL: u32 = 1;

/// The longest request line a daemon reads.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Status,
    /// `names: None`: every configured specialist.
    Pause {
        names: Option<Vec<String>>,
        /// Also stop their trials that run or wait for a slot (recorded
        /// `interrupted`; a Slurm job is cancelled with scancel).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cancel: bool,
    },
    Resume {
        names: Option<Vec<String>>,
    },
    Reload,
    /// Lineage records, streamed (see the module docs).
    Read {
        read: crate::lineage::query::Read,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every error of a refused configuration, one per line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
    /// Pause/resume: the specialists whose state changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
    /// Pause with cancel: the trials stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<crate::domain::TrialId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
    /// Items follow, one per line, then an `end` line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// What a handler answers: one response, or a response followed by the
/// items a producer sends (`Err` ends the stream with that error).
pub enum Reply {
    One(Box<Response>),
    Stream(tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::One(Box::new(r))
    }
}

/// The last line of a streamed answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct End {
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct EndLine {
    end: End,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            v: PROTOCOL,
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            v: PROTOCOL,
            ok: false,
            error: Some(message.into()),
            ..Default::default()
        }
    }
}

/// `status`: the daemon itself and what it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_ms: u64,
    pub config: PathBuf,
    pub experiment: String,
    pub metric: String,
    pub direction: String,
    /// The experiment's train budget per run, seconds.
    #[serde(default)]
    pub budget_secs: u64,
    /// Why the daemon is draining (a signal, or the stop rule that fired).
    #[serde(default)]
    pub stopping: Option<String>,
    pub live: LiveStatus,
}

/// Where a running daemon says its socket is: `<lineage_dir>/daemon.json`
/// (the socket may be under `$RUNTIME_DIRECTORY`, which a shell lacks).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pointer {
    pub pid: u32,
    pub socket: PathBuf,
}

pub fn pointer_path(lineage_dir: &Path) -> PathBuf {
    lineage_dir.join("daemon.json")
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another ratchet daemon is listening on {0}")]
    InUse(PathBuf),
    // The cause is in the message (not a `source`), so a log line of it
    // and the command line's error chain each say it once.
    #[error("control socket {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Binds the socket with mode 0600 (the umask is narrowed around the bind,
/// so there is no moment at which others could connect). A stale socket
/// file from a killed daemon is replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |error| ControlError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Whether a peer may talk to the daemon: the daemon's own user, or root.
pub fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == own_uid || peer_uid == 0
}

/// Reads one request from a connection and writes the answer `handle`
/// gives. A peer of another user gets an error and nothing else.
pub async fn serve_one<F, Fut>(stream: UnixStream, handle: F)
where
    F: FnOnce(Command) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let own = nix::unistd::geteuid().as_raw();
    let (read, mut write) = stream.into_split();
    let peer = write.as_ref().peer_cred().map(|c| c.uid());
    // The request line is read from every peer (bounded in size and time),
    // so a refused one gets its answer rather than a broken pipe.
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64);
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    let reply: Reply = match peer {
        Ok(uid) if peer_allowed(uid, own) => match read {
            Ok(Ok(_)) => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(value) => request(value, handle).await,
                Err(e) => Response::error(format!("not a JSON request: {e}")).into(),
            },
            Ok(Err(e)) => Response::error(format!("cannot read the request: {e}")).into(),
            Err(_) => Response::error("no request line within 10 s").into(),
        },
        Ok(uid) => {
            tracing::warn!(
                peer_uid = uid,
                "control connection from another user refused"
            );
            Response::error(format!(
                "refused: uid {uid} may not control this daemon (it runs as uid {own})"
            ))
            .into()
        }
        Err(e) => Response::error(format!("cannot check the peer's credentials: {e}")).into(),
    };
    fn json_line<T: Serialize>(v: &T) -> Vec<u8> {
        let mut v = serde_json::to_vec(v).expect("answers serialize");
        v.push(b'\n');
        v
    }
    match reply {
        Reply::One(response) => {
            let _ = write.write_all(&json_line(&*response)).await;
        }
        Reply::Stream(mut items) => {
            let head = Response {
                stream: true,
                ..Response::ok()
            };
            let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, &mut write);
            let mut end = End::default();
            let mut gone = out.write_all(&json_line(&head)).await.is_err();
            while let (false, Some(item)) = (gone, items.recv().await) {
                match item {
                    Ok(mut bytes) => {
                        bytes.push(b'\n');
                        gone = out.write_all(&bytes).await.is_err();
                        end.count += 1;
                    }
                    Err(e) => {
                        end.error = Some(e);
                        break;
                    }
                }
            }
            // A reader that went away drops `items`: the producer stops.
            drop(items);
            if !gone {
                let _ = out.write_all(&json_line(&EndLine { end })).await;
                let _ = out.flush().await;
            }
        }
    }
    let _ = write.shutdown().await;
}

async fn request<F, Fut>(value: serde_json::Value, handle: F) -> Reply
where
    F: FnOnce(Command) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let v = value.get("v").and_then(|v| v.as_u64());
    if v != Some(PROTOCOL as u64) {
        return Response::error(format!(
            "protocol version {} is not spoken here (this daemon speaks {PROTOCOL}); use a ratchet of the same version",
            v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
        ))
        .into();
    }
    match serde_json::from_value::<Request>(value) {
        Ok(r) => handle(r.command).await,
        Err(e) => Response::error(format!("unknown request: {e}")).into(),
    }
}

/// Sends one request to a daemon and waits for the answer (blocking; the
/// CLI side).
pub fn call(socket: &Path, command: Command, timeout: Duration) -> std::io::Result<Response> {
    Ok(call_reader(socket, command, timeout)?.0)
}

fn call_reader(
    socket: &Path,
    command: Command,
    timeout: Duration,
) -> std::io::Result<(Response, BufReader<std::os::unix::net::UnixStream>)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(&Request {
        v: PROTOCOL,
        command,
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let response = serde_json::from_str(&answer).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the daemon's answer is not understood: {e}"),
        )
    })?;
    Ok((response, reader))
}

/// Why a streamed read from the daemon did not end as it should.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading from the daemon: {0}")]
    Io(std::io::Error),
    #[error("the daemon closed the connection after {0} item(s), before the end of the answer")]
    Closed(u64),
    #[error("the daemon could not finish the read: {0}")]
    Unfinished(String),
    #[error("the daemon sent {sent} item(s) but counted {counted}")]
    Miscounted { sent: u64, counted: u64 },
    #[error("bad end line from the daemon: {0}")]
    BadEnd(serde_json::Error),
    #[error("bad item from the daemon: {0}")]
    BadItem(serde_json::Error),
}

/// A read request's items as they arrive (blocking). The iterator ends
/// after the daemon's `end` line; a connection that closes before it, or an
/// `end` with an error, yields an error.
pub fn read<T: serde::de::DeserializeOwned>(
    socket: &Path,
    read: crate::lineage::query::Read,
    timeout: Duration,
) -> std::io::Result<Result<impl Iterator<Item = Result<T, ReadError>>, Response>> {
    let (response, reader) = call_reader(socket, Command::Read { read }, timeout)?;
    if !(response.ok && response.stream) {
        return Ok(Err(response));
    }
    let mut lines = reader.split(b'\n');
    let mut count = 0u64;
    let mut done = false;
    Ok(Ok(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let line = match lines.next() {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                done = true;
                return Some(Err(ReadError::Io(e)));
            }
            None => {
                done = true;
                return Some(Err(ReadError::Closed(count)));
            }
        };
        if line.starts_with(b"{\"end\":") {
            done = true;
            return match serde_json::from_slice::<EndLine>(&line) {
                Ok(EndLine {
                    end: End { error: Some(e), .. },
                }) => Some(Err(ReadError::Unfinished(e))),
                Ok(EndLine { end }) if end.count != count => Some(Err(ReadError::Miscounted {
                    sent: count,
                    counted: end.count,
                })),
                Ok(_) => None,
                Err(e) => Some(Err(ReadError::BadEnd(e))),
            };
        }
        count += 1;
        Some(serde_json::from_slice(&line).map_err(ReadError::BadItem))
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request {
            v: PROTOCOL,
            command: Command::Pause {
                names: Some(vec!["optimizer".into()]),
                cancel: false,
            },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"v":1,"cmd":"pause","names":["optimizer"]}"#
        );
        let all: Request = serde_json::from_str(r#"{"v":1,"cmd":"resume","names":null}"#).unwrap();
        assert_eq!(all.command, Command::Resume { names: None });
    }

    #[test]
    fn only_the_same_user_or_root_may_connect() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[tokio::test]
    async fn the_socket_is_private_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ratchet.sock");
        let first = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
        assert!(matches!(bind(&path), Err(ControlError::InUse(_))));
        drop(first);
        // The file is left behind, as after a SIGKILL: the next bind takes it.
        assert!(path.exists());
        bind(&path).unwrap();
    }

    #[tokio::test]
    async fn a_request_of_another_version_is_refused_with_ours_named() {
        let one = |r: Reply| match r {
            Reply::One(r) => *r,
            Reply::Stream(_) => panic!("a stream"),
        };
        let resp = one(
            request(serde_json::json!({"v": 99, "cmd": "status"}), |_| async {
                Response::ok().into()
            })
            .await,
        );
        assert!(!resp.ok);
        assert!(resp.error.unwrap().contains("speaks 1"));
        let resp = one(
            request(serde_json::json!({"v": 1, "cmd": "explode"}), |_| async {
                Response::ok().into()
            })
            .await,
        );
        assert!(resp.error.unwrap().contains("unknown request"));
    }
}
