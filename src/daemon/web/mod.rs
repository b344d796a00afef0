//! The read-only web dashboard and Prometheus metrics (`daemon.http`),
//! served by `ratchet daemon` and by a foreground `ratchet run`.
//!
//! ```text
//! GET /                       the dashboard (polls the API below)
//! GET /trial/<id>             one trial's page
//! GET /metrics                Prometheus text format (version 0.0.4)
//! GET /api/v1/status          {"v":1,"now_ms":..,"status":{...}}  what `ratchet status --json` shows
//! GET /api/v1/trials?...      {"v":1,"trials":[...]}       `lineage list` filters: specialist,
//!                                                          label, status, since_ms, limit, oldest_first
//! GET /api/v1/trials/<id>     {"v":1,"trial":{...},"logs":{"train.stderr":"...",...}}
//! GET /api/v1/failures?limit  {"v":1,"failures":[...]}     the newest failed trials with stderr tails
//! GET /api/v1/plot?epoch&after {"v":1,"epoch":..,"next":..,"points":[...],...}   the progress plot,
//!                                                          only points after `after` of this epoch
//! GET /api/v1/progress        {"v":1,"runs":[...],"incumbent":{...}}  live curves of running trials
//! ```
//!
//! The same rules as the control socket: lineage is read from a handle on
//! the open database on blocking threads, never through the actors'
//! mailboxes; the live status (slots, queue) is asked of the supervisor at
//! most once a second whatever the number of clients; nothing over HTTP
//! changes anything.

mod metrics;
mod page;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::control::DaemonStatus;
use super::Handle;
use crate::domain::{Trial, TrialId, TrialStatus};
use crate::lineage::query::Filter;
use crate::lineage::LineageStore;

/// The version of the JSON API (`/api/v1/...`, and `"v"` in every answer).
pub const API: u32 = 1;
/// How old a live status may be before the supervisor is asked again.
const STATUS_FRESH: Duration = Duration::from_secs(1);
/// How often the plot's points are brought up to date at most.
const PLOT_FRESH: Duration = Duration::from_millis(500);
/// The end of a log a trial page shows.
const LOG_TAIL: u64 = 8 * 1024;
/// The end of a failure's stderr the dashboard shows.
const FAILURE_TAIL: u64 = 1024;
/// The most trials one list answer holds.
const LIST_MAX: usize = 1000;
/// A list without `limit` holds this many.
const LIST_DEFAULT: usize = 100;

/// Binds the dashboard's address (before anything starts, so an address in
/// use fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The last live status (or why there was none) and when it was asked for.
type Cached = Option<(Instant, Result<Arc<DaemonStatus>, String>)>;

#[derive(Clone)]
struct Web {
    handle: Handle,
    status: Arc<tokio::sync::Mutex<Cached>>,
    plot: Arc<Mutex<Plot>>,
    /// `ratchet_slot_seconds_total{state="idle"}` as last exported.
    idle: Arc<Mutex<f64>>,
    /// Tells a page that this is another process than the one whose
    /// points it holds (they are then fetched anew).
    epoch: u64,
}

/// Serves the dashboard until the task is aborted.
pub async fn serve(listener: std::net::TcpListener, handle: Handle) {
    let addr = listener.local_addr().ok();
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the dashboard's socket cannot be served");
            return;
        }
    };
    let loopback = addr.is_some_and(|a| a.ip().is_loopback());
    let web = Web {
        epoch: handle.started_ms,
        handle,
        status: Arc::default(),
        plot: Arc::default(),
        idle: Arc::default(),
    };
    let app = Router::new()
        .route("/", get(|| async { Html(page::dashboard()) }))
        .route("/trial/{id}", get(|| async { Html(page::trial()) }))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/trials", get(trials))
        .route("/api/v1/trials/{id}", get(trial))
        .route("/api/v1/failures", get(failures))
        .route("/api/v1/plot", get(plot))
        .route("/api/v1/progress", get(progress))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the dashboard only reads (GET)".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(loopback, host_check))
        .with_state(web);
    if let Some(a) = addr {
        tracing::info!(address = %a, "dashboard at http://{a}/ , metrics at http://{a}/metrics");
    }
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the dashboard stopped");
    }
}

/// On a loopback address, a request must name a loopback host: a web page
/// elsewhere that points a name of its own at 127.0.0.1 (DNS rebinding)
/// gets nothing.
async fn host_check(
    State(loopback): State<bool>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if loopback {
        // A request without Host (HTTP/1.0 from a script) is no browser's.
        let host = request
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("?"));
        if let Some(host) = host.filter(|h| !loopback_host(h)) {
            return error(
                StatusCode::FORBIDDEN,
                format!("host {host:?} is not this machine's loopback address"),
            );
        }
    }
    next.run(request).await
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A JSON error answer: `{"v":1,"error":"..."}`.
fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({"v": API, "error": message}))).into_response()
}

fn ok(body: Value) -> Response {
    Json(body).into_response()
}

impl Web {
    /// The live status, asked of the supervisor at most once a second
    /// (a failure too is kept that long, so a wedged tree is asked once a
    /// second, not once per waiting request).
    async fn status(&self) -> Result<Arc<DaemonStatus>, String> {
        let mut cached = self.status.lock().await;
        if let Some((at, s)) = cached.as_ref() {
            if at.elapsed() < STATUS_FRESH {
                return s.clone();
            }
        }
        let s = super::daemon_status(&self.handle).await.map(Arc::new);
        *cached = Some((Instant::now(), s.clone()));
        s
    }

    /// Runs a lineage read on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LineageStore) -> Result<T, String> + Send + 'static,
    ) -> Result<T, Response> {
        let store = self.handle.reader.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
            Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }
}

async fn status(State(web): State<Web>) -> Response {
    match web.status().await {
        // The page measures elapsed times by the daemon's clock.
        Ok(s) => ok(json!({"v": API, "now_ms": crate::domain::now_ms(), "status": &*s})),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn metrics(State(web): State<Web>) -> Response {
    let s = match web.status().await {
        Ok(s) => s,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let by = match web
        .read(|store| store.counts_by_specialist().map_err(|e| e.to_string()))
        .await
    {
        Ok(by) => by,
        Err(r) => return r,
    };
    let mut idle = web.idle.lock().unwrap_or_else(|p| p.into_inner());
    match metrics::encode(&s, &by, &crate::llm::usage::snapshot(), &mut idle) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn trials(
    State(web): State<Web>,
    filter: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut filter = match filter {
        Ok(Query(f)) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    filter.limit = Some(filter.limit.unwrap_or(LIST_DEFAULT).min(LIST_MAX));
    let listed = web
        .read(move |store| {
            store
                .select(&filter)
                .and_then(|s| s.collect::<Result<Vec<Trial>, _>>())
                .map_err(|e| e.to_string())
        })
        .await;
    match listed {
        Ok(t) => ok(json!({"v": API, "trials": t})),
        Err(r) => r,
    }
}

fn trial_id(raw: &str) -> Result<TrialId, String> {
    raw.trim_start_matches('#')
        .parse()
        .map(TrialId)
        .map_err(|_| format!("{raw:?} is not a trial id"))
}

async fn trial(State(web): State<Web>, UrlPath(raw): UrlPath<String>) -> Response {
    let id = match trial_id(&raw) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let found = web
        .read(move |store| {
            let Some(t) = store.get(id).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            // Log files are read here too, off the async threads.
            let logs: BTreeMap<String, String> = log_files(&t)
                .into_iter()
                .filter_map(|(name, path)| tail(&path, LOG_TAIL).map(|text| (name, text)))
                .collect();
            Ok(Some(json!({"v": API, "trial": t, "logs": logs})))
        })
        .await;
    match found {
        Ok(Some(v)) => ok(v),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no trial {id}")),
        Err(r) => r,
    }
}

/// A trial's logs by name (`train.stderr`, ...): those its reports name,
/// and while it runs, those in its directory.
fn log_files(t: &Trial) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let reports = [
        ("preflight", &t.preflight),
        ("train", &t.train),
        ("eval", &t.eval),
    ];
    for (name, r) in reports {
        if let Some(r) = r {
            out.push((format!("{name}.stdout"), r.stdout.clone()));
            out.push((format!("{name}.stderr"), r.stderr.clone()));
        }
    }
    if let Some(dir) = &t.trial_dir {
        for name in ["train.stdout", "train.stderr"] {
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.into(), dir.join(name)));
            }
        }
    }
    out
}

/// The last `bytes` of a file, from a line start where one is near; `None`
/// when it cannot be read.
fn tail(path: &Path, bytes: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(bytes);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(bytes).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Some(match (from > 0, text.find('\n')) {
        (true, Some(i)) if i + 1 < text.len() => text[i + 1..].to_string(),
        _ => text,
    })
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn failures(
    State(web): State<Web>,
    q: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let filter = Filter {
        status: Some(TrialStatus::Failed),
        limit: Some(q.limit.unwrap_or(10).min(LIST_MAX)),
        ..Default::default()
    };
    let listed = web
        .read(move |store| {
            let trials = store
                .select(&filter)
                .and_then(|s| s.collect::<Result<Vec<Trial>, _>>())
                .map_err(|e| e.to_string())?;
            Ok(trials
                .iter()
                .map(|t| {
                    let stderr = t
                        .train
                        .as_ref()
                        .map(|r| r.stderr.clone())
                        .or_else(|| t.trial_dir.as_ref().map(|d| d.join("train.stderr")));
                    json!({
                        "id": t.id,
                        "specialist": t.specialist,
                        "label": t.outcome(),
                        "detail": t.detail,
                        "hypothesis": t.hypothesis,
                        "finished_ms": t.history.last().map(|c| c.at_ms),
                        "stderr_tail": stderr.and_then(|p| tail(&p, FAILURE_TAIL)),
                    })
                })
                .collect::<Vec<_>>())
        })
        .await;
    match listed {
        Ok(f) => ok(json!({"v": API, "failures": f})),
        Err(r) => r,
    }
}

/// The plot's points, kept in memory and brought up to date from the
/// finish index, so that a page's poll reads only what changed.
#[derive(Default)]
struct Plot {
    cursor: Vec<u8>,
    outcomes: Vec<String>,
    specialists: Vec<String>,
    /// Each point with the sequence number of its last change.
    points: Vec<(Point, u64)>,
    /// Trial id → its place in `points`.
    at: std::collections::HashMap<u64, usize>,
    /// The last sequence number given.
    seq: u64,
    refreshed: Option<Instant>,
    /// The incumbents' plot steps, and the incumbent they were made at (the
    /// history is read again only when it changes).
    steps: Vec<Value>,
    steps_at: Option<crate::domain::Incumbent>,
}

/// A trial in the plot: `(id, outcome index, score, specialist index)`.
type Point = (u64, u32, Option<f64>, u32);

/// How far back each refresh reads the finish index again: two trials that
/// finish in the same millisecond may be written in either order, and a
/// clock may step back a little.
const RESCAN_MS: u64 = 5_000;
/// The newest incumbents whose points are read again at each refresh (the
/// score of a kept trial moves as its seed runs come in).
const REREAD_INCUMBENTS: usize = 3;

impl Plot {
    /// Puts a point in; whether it was new or changed.
    fn set(&mut self, p: crate::lineage::query::Point) -> bool {
        let oi = match self.outcomes.iter().position(|x| *x == p.outcome) {
            Some(i) => i,
            None => {
                self.outcomes.push(p.outcome);
                self.outcomes.len() - 1
            }
        };
        let si = match self.specialists.iter().position(|x| *x == p.specialist) {
            Some(i) => i,
            None => {
                self.specialists.push(p.specialist);
                self.specialists.len() - 1
            }
        };
        let id = p.id.0;
        let point = (id, oi as u32, p.score, si as u32);
        match self.at.get(&id) {
            Some(&i) if self.points[i].0 == point => return false,
            Some(&i) => {
                self.seq += 1;
                self.points[i] = (point, self.seq);
            }
            None => {
                self.seq += 1;
                self.at.insert(id, self.points.len());
                self.points.push((point, self.seq));
            }
        }
        true
    }

    fn refresh(&mut self, store: &LineageStore) -> Result<(), String> {
        if self.refreshed.is_some_and(|t| t.elapsed() < PLOT_FRESH) {
            return Ok(());
        }
        let from = crate::lineage::query::finish_cursor_before(&self.cursor, RESCAN_MS);
        self.cursor = store
            .each_point_after(&from, &mut |p| {
                self.set(p);
            })
            .map_err(|e| e.to_string())?;
        // The newest incumbents' scores move as their seed runs come in
        // (an incumbent already replaced too).
        let current = store.incumbent().map_err(|e| e.to_string())?;
        let mut newest: Vec<TrialId> = store
            .incumbent_history_tail(REREAD_INCUMBENTS)
            .map_err(|e| e.to_string())?;
        newest.extend(current.as_ref().map(|i| i.trial));
        let mut moved = false;
        for id in newest {
            if let Some(t) = store.get(id).map_err(|e| e.to_string())? {
                if t.status.is_terminal() {
                    moved |= self.set(crate::lineage::query::Point::of(&t));
                }
            }
        }
        if moved || current.is_none() || current != self.steps_at {
            let history = store.incumbent_history().map_err(|e| e.to_string())?;
            self.steps = crate::export::incumbent_steps(&history);
            self.steps_at = current;
        }
        self.refreshed = Some(Instant::now());
        Ok(())
    }
}

#[derive(Deserialize)]
struct PlotQuery {
    epoch: Option<u64>,
    /// The `next` of the page's last answer: only points changed since.
    after: Option<u64>,
}

async fn plot(
    State(web): State<Web>,
    q: Result<Query<PlotQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let cache = web.plot.clone();
    let after = match q.epoch {
        Some(e) if e == web.epoch => q.after.unwrap_or(0),
        _ => 0,
    };
    let (metric, direction, epoch) = (
        web.handle.metric.clone(),
        web.handle.direction.clone(),
        web.epoch,
    );
    let answer = web
        .read(move |store| {
            let mut p = cache.lock().unwrap_or_else(|p| p.into_inner());
            p.refresh(store)?;
            // Serialized straight from the cache: no JSON tree of 100k
            // points in memory.
            let points: Vec<&Point> = p
                .points
                .iter()
                .filter(|(_, seq)| *seq > after)
                .map(|(point, _)| point)
                .collect();
            serde_json::to_vec(&json_plot::Answer {
                v: API,
                epoch,
                next: p.seq,
                metric: &metric,
                direction: &direction,
                band: 2.0,
                outcomes: &p.outcomes,
                specialists: &p.specialists,
                points,
                incumbents: &p.steps,
            })
            .map_err(|e| e.to_string())
        })
        .await;
    match answer {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(r) => r,
    }
}

mod json_plot {
    /// `/api/v1/plot`'s answer.
    #[derive(serde::Serialize)]
    pub struct Answer<'a> {
        pub v: u32,
        pub epoch: u64,
        pub next: u64,
        pub metric: &'a str,
        pub direction: &'a str,
        pub band: f64,
        pub outcomes: &'a [String],
        pub specialists: &'a [String],
        pub points: Vec<&'a super::Point>,
        pub incumbents: &'a [serde_json::Value],
    }
}

/// Running trials' progress curves (`NAME=value at=POSITION` lines of their
/// train logs so far) and the incumbent's, for the dashboard's slot panel.
async fn progress(State(web): State<Web>) -> Response {
    let s = match web.status().await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let runs: Vec<TrialId> = s
        .live
        .executor
        .running
        .iter()
        .filter(|r| r.seed == 0)
        .map(|r| r.trial)
        .collect();
    let incumbent = s.live.lineage.incumbent.as_ref().map(|i| i.trial);
    let answer = web
        .read(move |store| {
            let mut out = Vec::new();
            for id in runs {
                let Some(t) = store.get(id).map_err(|e| e.to_string())? else {
                    continue;
                };
                let curves = t
                    .trial_dir
                    .as_ref()
                    .map(|d| live_curves(&d.join("train.stdout")))
                    .unwrap_or_default();
                out.push(json!({"trial": id, "curves": curves}));
            }
            let inc = match incumbent {
                Some(id) => store.get(id).map_err(|e| e.to_string())?.map(|t| {
                    json!({"trial": id, "curves": t.train.map(|r| r.progress).unwrap_or_default()})
                }),
                None => None,
            };
            Ok(json!({"v": API, "runs": out, "incumbent": inc}))
        })
        .await;
    match answer {
        Ok(v) => ok(v),
        Err(r) => r,
    }
}

/// The progress lines of a log so far (it is capped at
/// `process::LOG_CAP_BYTES`), thinned as a finished run's report is.
fn live_curves(log: &Path) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut curves: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let Some(text) = tail(log, crate::process::LOG_CAP_BYTES) else {
        return curves;
    };
    for line in text.split(['\n', '\r']) {
        if let Some((name, value, at)) = crate::process::parse_progress(line) {
            if value.is_finite() && at.is_finite() {
                curves
                    .entry(name.to_string())
                    .or_default()
                    .push((at, value));
            }
        }
    }
    for c in curves.values_mut() {
        while c.len() > crate::process::PROGRESS_POINTS {
            let mut i = 0;
            c.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
    }
    curves
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for host in [
            "localhost",
            "localhost:8787",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:8787",
            "127.9.9.9:80",
            "[::1]:8787",
            "[::1]",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "",
            "example.com",
            "evil.example:8787",
            "10.0.0.1:8787",
            "[2001:db8::1]:80",
            "localhost.evil.example",
            "0.0.0.0:8787",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
