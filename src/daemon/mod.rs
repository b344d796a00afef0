//! `ratchet daemon`: the actor tree for as long as it is not stopped, as a
//! systemd `Type=notify` service. READY after start-up recovery, WATCHDOG
//! pings while the actor tree answers, STATUS lines, STOPPING on SIGTERM or
//! SIGINT followed by a drain (no new trial starts; running ones may finish
//! within `daemon.drain_timeout_secs`, then they are killed and recorded
//! `interrupted`); a second signal stops at once. SIGHUP and `ratchet reload`
//! re-read the configuration. The control socket serves `status`, `pause`,
//! `resume` and `reload`; `daemon.http` adds a read-only dashboard and
//! `/metrics` (`web`).

pub mod control;
pub mod notify;
mod render;
pub mod stop;
mod web;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::actors::messages::{LiveStatus, SupervisorMsg};
use crate::actors::supervisor::{Supervisor, SupervisorArgs};
use crate::config::Config;
use crate::domain::{format_float, now_ms, Trial, TrialStatus};
use crate::lineage::actor::RunEvent;
use crate::lineage::LineageStore;
use control::{Command, ControlError, DaemonStatus, Reply, Response};
use notify::{Notifier, State};
pub use render::{render_lineage, render_status};

/// Why the daemon (or the control socket of a foreground run) could not
/// start, or stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Control(#[from] ControlError),
    // Causes are in the messages (not `source`s): a log line and the
    // command line's error chain each say them once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the control socket's pointer file: {0}")]
    Pointer(serde_json::Error),
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
    #[error("could not start: {0}")]
    Start(String),
    #[error("no lineage handle: {0}")]
    NoReader(String),
    #[error("the actor tree stopped: {0}")]
    Stopped(String),
    #[error("the dashboard cannot listen on {addr} (daemon.http): {error}")]
    Http {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// How long a control request may wait for the actor tree.
const CONTROL_TIMEOUT_MS: u64 = 10_000;
/// How often STATUS is refreshed when systemd asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What the control socket's handlers need; cheap to clone.
#[derive(Clone)]
struct Handle {
    supervisor: ActorRef<SupervisorMsg>,
    /// Lineage reads go here directly, not through the actors.
    reader: LineageStore,
    file: PathBuf,
    started_ms: u64,
    experiment: String,
    metric: String,
    direction: String,
    budget_secs: u64,
    /// Why the daemon is stopping (a signal or a stop rule), once it is.
    stopping: Arc<std::sync::Mutex<Option<String>>>,
}

impl Handle {
    async fn new(
        config: &Config,
        supervisor: ActorRef<SupervisorMsg>,
    ) -> Result<Handle, DaemonError> {
        let reader = ractor::call_t!(supervisor, SupervisorMsg::Reader, CONTROL_TIMEOUT_MS)
            .map_err(|e| DaemonError::NoReader(e.to_string()))?;
        let exp = &config.experiment.file;
        Ok(Handle {
            supervisor,
            reader,
            file: config.file.clone(),
            started_ms: now_ms(),
            experiment: exp.name.clone(),
            metric: exp.metric.clone(),
            direction: exp.direction.as_str().into(),
            budget_secs: exp.budget_secs,
            stopping: Arc::default(),
        })
    }
}

/// The control socket of a running ratchet (`daemon`, and `run` so that
/// `status` and `lineage` work beside a foreground run): bound first, so a
/// second ratchet on the same lineage fails before it starts anything;
/// served once the actor tree is up; removed with its pointer file on drop.
pub struct Control {
    socket: PathBuf,
    pointer: PathBuf,
    listener: Option<tokio::net::UnixListener>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The dashboard (`daemon.http`), bound with the socket.
    http: Option<std::net::TcpListener>,
    http_server: Option<tokio::task::JoinHandle<()>>,
}

impl Control {
    pub fn bind(config: &Config) -> Result<Control, DaemonError> {
        let listener = control::bind(&config.socket)?;
        let http = match config.http {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    warn!(address = %addr, "the dashboard listens beyond this machine (daemon.http_allow_remote): anyone who reaches it reads the lineage, prompts, diffs and logs");
                }
                Some(web::bind(addr).map_err(|error| DaemonError::Http { addr, error })?)
            }
            None => None,
        };
        let pointer = control::pointer_path(&config.lineage_dir);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| DaemonError::Io { path, error }
        };
        std::fs::create_dir_all(&config.lineage_dir).map_err(io(&config.lineage_dir))?;
        let body = serde_json::to_vec(&control::Pointer {
            pid: std::process::id(),
            socket: config.socket.clone(),
        })
        .map_err(DaemonError::Pointer)?;
        std::fs::write(&pointer, body).map_err(io(&pointer))?;
        Ok(Control {
            socket: config.socket.clone(),
            pointer,
            listener: Some(listener),
            server: None,
            http,
            http_server: None,
        })
    }

    /// Starts answering requests about this actor tree.
    pub async fn serve(
        &mut self,
        config: &Config,
        supervisor: ActorRef<SupervisorMsg>,
    ) -> Result<(), DaemonError> {
        let handle = Handle::new(config, supervisor).await?;
        self.serve_handle(handle);
        Ok(())
    }

    fn serve_handle(&mut self, handle: Handle) {
        if let Some(listener) = self.listener.take() {
            self.server = Some(tokio::spawn(serve(listener, handle.clone())));
        }
        if let Some(listener) = self.http.take() {
            self.http_server = Some(tokio::spawn(web::serve(listener, handle)));
        }
    }

    /// Stops answering (the socket file stays until drop).
    fn stop_serving(&mut self) {
        for s in [self.server.take(), self.http_server.take()]
            .into_iter()
            .flatten()
        {
            s.abort();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop_serving();
        cleanup(&self.socket, &self.pointer);
    }
}

pub async fn daemon(config: Config) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let watchdog = notify::watchdog_interval();
    let mut control = Control::bind(&config)?;
    let config = Arc::new(config);
    let exp = &config.experiment.file;
    info!(
        experiment = %exp.name,
        specialists = config.specialists.len(),
        slots = %match config.gpus {
            Some(_) => "GPU slots".to_string(),
            None => config.slots.to_string(),
        },
        socket = %config.socket.display(),
        lineage = %config.lineage_dir.display(),
        "ratchet daemon starting"
    );

    let (tx, mut events) = mpsc::unbounded_channel();
    let args = SupervisorArgs {
        config: config.clone(),
        observer: Some(tx),
        max_trials: None,
    };
    let (supervisor, mut tree) = Actor::spawn(None, Supervisor, args)
        .await
        .map_err(|e| DaemonError::Start(e.to_string()))?;
    let handle = Handle::new(&config, supervisor.clone()).await?;
    // Signals are handled before READY and the control socket tell anyone the daemon is up: a
    // SIGTERM right after the first status must drain, not kill it.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    // The supervisor's start includes the executor's recovery.
    let tell = |states: &[State]| {
        if let Some(n) = &notifier {
            n.send(states)
        }
    };
    let status = live_status(&handle.supervisor).await.ok();
    let line = status
        .as_ref()
        .map(|s| status_line(s, &handle.metric))
        .unwrap_or_else(|| "started".into());
    tell(&[State::Ready, State::Status(&notify::status(&line))]);
    info!("ready");

    control.serve_handle(handle.clone());
    let mut tick = tokio::time::interval(watchdog.unwrap_or(STATUS_EVERY));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rules = stop::Watch::new(config.stop, Instant::now());
    // Trials seen kept (a kept incumbent is published again as its seed
    // runs come in: that is no new keep).
    let mut kept = std::collections::HashSet::new();

    let result = loop {
        let due = rules.due();
        tokio::select! {
            ev = events.recv() => if let Some(ev) = ev {
                log_event(&ev, &handle.metric);
                match &ev {
                    RunEvent::Trial(t) if t.status == TrialStatus::Kept && kept.insert(t.id) => {
                        rules.kept(Instant::now())
                    }
                    RunEvent::Drained { .. } => {
                        let trials = live_status(&supervisor).await.map(|s| s.lineage.trials);
                        if let Some(why) = trials.ok().and_then(|n| rules.drained(n)) {
                            break Ok(why);
                        }
                    }
                    _ => {}
                }
            },
            _ = sleep_until(due) => if let Some(why) = rules.fired(Instant::now()) {
                break Ok(why);
            },
            _ = tick.tick() => ping(&handle, &notifier, watchdog.is_some()).await,
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the configuration");
                tell(&notify::reloading());
                let _ = reload(&handle).await;
                tell(&[State::Ready]);
            }
            _ = sigterm.recv() => break Ok("SIGTERM".to_string()),
            _ = sigint.recv() => break Ok("SIGINT".to_string()),
            r = &mut tree => break Err(DaemonError::Stopped(format!("{r:?}"))),
        }
    };
    let stopped_by = match result {
        Ok(s) => s,
        Err(e) => return Err(e),
    };

    // Drain: nothing new starts; what runs may finish until the deadline.
    let signalled = stopped_by.starts_with("SIG");
    if !signalled {
        info!(rule = %stopped_by, "a stop rule fired");
    }
    let line = format!("draining ({stopped_by}): waiting for running trials");
    tell(&[State::Stopping, State::Status(&notify::status(&line))]);
    if let Ok(mut s) = handle.stopping.lock() {
        *s = Some(stopped_by.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(config.drain_timeout_secs);
    info!(
        by = %stopped_by,
        drain_timeout_secs = config.drain_timeout_secs,
        "stopping: no new trials; running trials may finish (signal again to stop at once)"
    );
    supervisor
        .cast(SupervisorMsg::Drain)
        .map_err(|e| DaemonError::Stopped(e.to_string()))?;
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    let mut tree_gone = false;
    loop {
        tokio::select! {
            ev = events.recv() => if let Some(ev) = ev { log_event(&ev, &handle.metric) },
            _ = tick.tick() => ping(&handle, &notifier, watchdog.is_some()).await,
            _ = poll.tick() => {
                match live_status(&supervisor).await {
                    Ok(s) if busy(&s) == 0 => {
                        info!("drained: no trial is running");
                        break;
                    }
                    Ok(s) if Instant::now() >= deadline => {
                        warn!(running = busy(&s), "drain timeout: killing running trials and recording them interrupted");
                        break;
                    }
                    Ok(s) => tell(&[State::Status(&format!("draining: {} trial run(s) still going", busy(&s)))]),
                    Err(e) => warn!(error = %e, "cannot ask the actor tree while draining"),
                }
            }
            _ = async { tokio::select! { _ = sigterm.recv() => {}, _ = sigint.recv() => {} } } => {
                warn!("second signal: stopping now; running trials are killed and recorded interrupted");
                break;
            }
            _ = &mut tree => { tree_gone = true; break; }
        }
    }
    control.stop_serving();
    if !tree_gone {
        supervisor.stop(None);
        tokio::select! {
            _ = &mut tree => {}
            _ = async { tokio::select! { _ = sigterm.recv() => {}, _ = sigint.recv() => {} } } => {
                error!("third signal: quitting without cleanup; the next start recovers in-flight trials");
                drop(control);
                std::process::exit(130);
            }
        }
    }
    drop(control);
    info!("stopped");
    Ok(())
}

/// Waits until `due`, or for ever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn cleanup(socket: &Path, pointer: &Path) {
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(pointer);
}

/// Runs (train or seed re-runs in slots) and evaluations still going.
fn busy(s: &LiveStatus) -> usize {
    let evaluating = s
        .active
        .iter()
        .filter(|t| t.status == TrialStatus::Evaluating)
        .count();
    s.executor.running.len() + evaluating
}

async fn live_status(supervisor: &ActorRef<SupervisorMsg>) -> Result<LiveStatus, String> {
    ractor::call_t!(supervisor, SupervisorMsg::Status, CONTROL_TIMEOUT_MS)
        .map_err(|e| format!("ratchet does not answer: {e}"))?
        .map_err(|e| e.to_string())
}

/// The watchdog ping: only while the actor tree answers a status request,
/// so a wedged tree makes systemd restart the service.
async fn ping(handle: &Handle, notifier: &Option<Notifier>, watchdog: bool) {
    let Some(n) = notifier else { return };
    match live_status(&handle.supervisor).await {
        Ok(s) => {
            let line = notify::status(&status_line(&s, &handle.metric));
            if watchdog {
                n.send(&[State::Watchdog, State::Status(&line)]);
            } else {
                n.send(&[State::Status(&line)]);
            }
        }
        Err(e) => warn!(error = %e, "no watchdog ping: the actor tree did not answer"),
    }
}

/// The one-line summary for `systemctl status`.
pub fn status_line(s: &LiveStatus, metric: &str) -> String {
    let inc = s
        .lineage
        .incumbent
        .as_ref()
        .map(|i| {
            format!(
                "; incumbent #{} {metric}={}",
                i.trial,
                format_float(i.score)
            )
        })
        .unwrap_or_default();
    let paused = s
        .specialists
        .iter()
        .filter(|n| s.lineage.paused.contains_key(*n))
        .count();
    let gpus_out = s.executor.gpus.iter().filter(|g| g.out.is_some()).count();
    format!(
        "{}/{} slots busy, {} queued; {} trials, {} kept, {}/h{inc}{}{}{}",
        s.executor.running.len(),
        s.executor.slots,
        s.executor.queued.len(),
        s.lineage.trials,
        s.lineage.outcomes.get("kept").copied().unwrap_or(0),
        s.lineage.finished_last_hour,
        if paused > 0 {
            format!("; {paused} paused")
        } else {
            String::new()
        },
        if s.executor.draining {
            "; draining"
        } else {
            ""
        },
        if gpus_out > 0 {
            format!("; {gpus_out} GPU slot(s) out of rotation")
        } else {
            String::new()
        }
    )
}

fn log_event(ev: &RunEvent, metric: &str) {
    let RunEvent::Trial(t) = ev else { return };
    let t: &Trial = t;
    match t.status {
        // Published twice: when it starts, and with its process group.
        TrialStatus::Running if t.pgid.is_some() => info!(
            trial = %t.id, specialist = %t.specialist, attempt = t.attempt,
            pgid = t.pgid, hypothesis = %t.hypothesis, "trial running"
        ),
        TrialStatus::Running if t.slurm_job.is_some() => info!(
            trial = %t.id, specialist = %t.specialist, attempt = t.attempt,
            slurm_job = t.slurm_job, hypothesis = %t.hypothesis, "trial submitted to Slurm"
        ),
        s if s.is_terminal() => info!(
            trial = %t.id, specialist = %t.specialist, status = %s,
            outcome = t.outcome(),
            score = t.score.map(format_float).unwrap_or_default(),
            metric, detail = t.detail.as_deref().unwrap_or(""),
            "trial finished"
        ),
        _ => {}
    }
}

/// Accepts control connections until aborted; each is served in its own task.
async fn serve(listener: tokio::net::UnixListener, handle: Handle) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let h = handle.clone();
                tokio::spawn(control::serve_one(stream, move |cmd| answer(h, cmd)));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(handle: Handle, command: Command) -> Reply {
    let read = match command {
        Command::Read { read } => read,
        other => return answer_one(handle, other).await.into(),
    };
    stream_read(handle.reader.clone(), read)
}

/// Answers a lineage read as a stream. It runs beside the actors, on a
/// blocking thread, and stops when the reader goes away (the channel
/// closes); the bounded channel keeps a slow reader from filling memory.
pub fn stream_read(store: LineageStore, read: crate::lineage::query::Read) -> Reply {
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let r = store.read(&read, &mut |bytes| tx.blocking_send(Ok(bytes)).is_ok());
        if let Err(e) = r {
            let _ = tx.blocking_send(Err(e.to_string()));
        }
    });
    Reply::Stream(rx)
}

async fn answer_one(handle: Handle, command: Command) -> Response {
    match command {
        Command::Read { .. } => Response::error("a read streams its answer"),
        Command::Status => match daemon_status(&handle).await {
            Ok(status) => Response {
                status: Some(status),
                ..Response::ok()
            },
            Err(e) => Response::error(e),
        },
        Command::Pause { names, cancel } => pause(&handle, names, true, cancel).await,
        Command::Resume { names } => pause(&handle, names, false, false).await,
        Command::Reload => match reload(&handle).await {
            Ok(report) => Response {
                reload: Some(report),
                ..Response::ok()
            },
            Err(errors) => Response {
                errors,
                ..Response::error("the configuration is invalid; the running one stays")
            },
        },
    }
}

/// What `status` answers: the daemon and its actor tree now.
async fn daemon_status(handle: &Handle) -> Result<DaemonStatus, String> {
    let live = live_status(&handle.supervisor).await?;
    Ok(DaemonStatus {
        pid: std::process::id(),
        started_ms: handle.started_ms,
        config: handle.file.clone(),
        experiment: handle.experiment.clone(),
        metric: handle.metric.clone(),
        direction: handle.direction.clone(),
        budget_secs: handle.budget_secs,
        stopping: handle.stopping.lock().ok().and_then(|s| s.clone()),
        live,
    })
}

async fn pause(
    handle: &Handle,
    names: Option<Vec<String>>,
    paused: bool,
    cancel: bool,
) -> Response {
    let r = ractor::call_t!(
        handle.supervisor,
        |reply| SupervisorMsg::Pause {
            names,
            paused,
            cancel,
            reply
        },
        CONTROL_TIMEOUT_MS
    );
    match r {
        Ok(Ok((changed, cancelled))) => Response {
            changed: Some(changed),
            cancelled,
            ..Response::ok()
        },
        Ok(Err(e)) => Response::error(e.to_string()),
        Err(e) => Response::error(format!("ratchet does not answer: {e}")),
    }
}

/// Re-reads and validates the configuration file; a valid one is applied,
/// an invalid one is logged error by error and the running one stays.
async fn reload(handle: &Handle) -> Result<crate::actors::messages::ReloadReport, Vec<String>> {
    let file = handle.file.clone();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&file))
        .await
        .map_err(|e| vec![format!("reload task failed: {e}")])?;
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            let lines: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
            for l in &lines {
                error!(file = %handle.file.display(), "reload refused: {l}");
            }
            return Err(lines);
        }
    };
    let r = ractor::call_t!(
        handle.supervisor,
        SupervisorMsg::Reload,
        CONTROL_TIMEOUT_MS,
        Box::new(config)
    );
    r.map_err(|e| vec![format!("ratchet does not answer: {e}")])
}
