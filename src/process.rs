//! Child processes of a trial: each in its own process group, logs captured to
//! capped files, metric lines parsed (`NAME=value`, `NAME: value` or the
//! experiment's own pattern), the whole group killed at the timeout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::domain::ProcessReport;

mod metrics;
pub use metrics::*;

/// Each captured log file stops growing at this size; the rest is read and dropped.
pub const LOG_CAP_BYTES: u64 = 1 << 20;
/// Lines longer than this are not parsed as metrics.
const MAX_LINE: usize = 4096;
/// A report keeps at most this many points of each progress curve (every
/// other one is dropped when it is full) ...
pub const PROGRESS_POINTS: usize = 512;
/// ... and at most this many curves.
const PROGRESS_NAMES: usize = 16;

/// The latest progress point (position, value) of each progress line name,
/// as a running command prints them.
pub type Latest = BTreeMap<String, (f64, f64)>;

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Variables the child must not inherit (API keys of LLM specialists).
    pub env_remove: Vec<String>,
    /// Resident memory of the whole group, in bytes; over it the group is killed.
    pub memory_limit: Option<u64>,
    pub timeout: Duration,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// How the program prints its metrics.
    #[serde(default)]
    pub metrics: MetricFormat,
}

/// Kills a process group (or cancels a Slurm job) when told to or when the
/// run holding it is dropped, unless disarmed: a trial's processes never
/// outlive the executor state that owns them.
#[derive(Clone, Debug, Default)]
pub struct GroupGuard(Arc<Guarded>);

#[derive(Debug, Default)]
struct Guarded {
    pgid: AtomicI32,
    job: AtomicU64,
    /// How the job is cancelled: the backend that submitted it says (this
    /// layer knows process groups, not schedulers).
    cancel: OnceLock<fn(&[u64])>,
}

impl GroupGuard {
    pub fn set(&self, pgid: i32) {
        self.0.pgid.store(pgid, Ordering::SeqCst);
    }
    /// The run is a cluster job: killing it is `cancel` of it (for Slurm,
    /// `scancel`).
    pub fn set_job(&self, job: u64, cancel: fn(&[u64])) {
        let _ = self.0.cancel.set(cancel);
        self.0.job.store(job, Ordering::SeqCst);
    }
    pub fn disarm(&self) {
        self.0.pgid.store(0, Ordering::SeqCst);
        self.0.job.store(0, Ordering::SeqCst);
    }
    /// The Slurm job it holds, if any.
    pub fn job(&self) -> Option<u64> {
        Some(self.0.job.load(Ordering::SeqCst)).filter(|&j| j > 0)
    }
    /// The Slurm job it holds, if any; taking it disarms that part.
    pub fn take_job(&self) -> Option<u64> {
        Some(self.0.job.swap(0, Ordering::SeqCst)).filter(|&j| j > 0)
    }
    pub fn kill(&self) {
        let pgid = self.0.pgid.swap(0, Ordering::SeqCst);
        if pgid > 0 {
            kill_group(pgid);
        }
        if let Some(job) = self.take_job() {
            if let Some(cancel) = self.0.cancel.get() {
                cancel(&[job]);
            }
        }
    }
}

/// The last `bytes` of a log file as text (a cut character is replaced);
/// empty when it cannot be read. Reads only that much of the file.
pub fn log_tail(path: &std::path::Path, bytes: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether any process of the group is still alive (zombies aside).
pub fn group_alive(pgid: i32) -> bool {
    // No process at all in the group (the usual case once its leader is
    // reaped): one syscall instead of a walk of /proc.
    if killpg(Pid::from_raw(pgid), None) == Err(nix::errno::Errno::ESRCH) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// Kills the group until none of its processes is alive (a SIGKILL is
/// delivered asynchronously), for at most `limit`.
async fn kill_until_gone(pgid: i32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        kill_group(pgid);
        if !group_alive(pgid) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A spawned task that runs a trial's child process group. Dropping it
/// aborts the task and kills the group, so a crashed or stopped actor leaves
/// no process behind.
pub struct GroupTask {
    pub guard: GroupGuard,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for GroupTask {
    fn drop(&mut self) {
        self.guard.kill();
        self.task.abort();
    }
}

/// SIGKILL to a whole process group; a group that is already gone is fine.
pub fn kill_group(pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// A started child: its process group and the tasks capturing its output.
pub struct Started {
    child: tokio::process::Child,
    pub pgid: i32,
    started: Instant,
    started_ms: u64,
    out: tokio::task::JoinHandle<std::io::Result<Captured>>,
    err: tokio::task::JoinHandle<std::io::Result<Captured>>,
    /// Its progress lines as they come (finite values only).
    pub progress: tokio::sync::watch::Receiver<Latest>,
}

/// Starts `spec` in a new process group; `guard` learns the group at once.
/// `Ok(Err(report))` when the program cannot start (that is the trial's
/// failure, not ratchet's); `Err` only for I/O on ratchet's own log files.
pub async fn start(
    spec: &Spec,
    guard: &GroupGuard,
) -> std::io::Result<Result<Started, ProcessReport>> {
    let mut report = ProcessReport {
        stdout: spec.stdout.clone(),
        stderr: spec.stderr.clone(),
        ..Default::default()
    };
    let Some((program, args)) = spec.argv.split_first() else {
        report.spawn_error = Some("empty command".into());
        return Ok(Err(report));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    let started = Instant::now();
    let started_ms = crate::domain::now_ms();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            report.spawn_error = Some(format!("{program}: {e}"));
            tokio::fs::write(
                &spec.stderr,
                format!("ratchet: cannot start {program}: {e}\n"),
            )
            .await?;
            tokio::fs::write(&spec.stdout, b"").await?;
            return Ok(Err(report));
        }
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    guard.set(pgid);
    let (latest, progress) = tokio::sync::watch::channel(Latest::new());
    // Checked when the experiment is loaded: a pattern that does not
    // compile here reads `NAME=value` lines.
    let reader = spec
        .metrics
        .reader()
        .or_else(|_| MetricFormat::Equals.reader())
        .expect("the default format compiles");
    let out = tokio::spawn(capture(
        child.stdout.take().expect("piped"),
        spec.stdout.clone(),
        Some((latest, reader)),
    ));
    let err = tokio::spawn(capture(
        child.stderr.take().expect("piped"),
        spec.stderr.clone(),
        None,
    ));
    Ok(Ok(Started {
        child,
        pgid,
        started,
        started_ms,
        out,
        err,
        progress,
    }))
}

/// Waits for a started child until `spec.timeout` after its start, then kills
/// its whole group (always: grandchildren left behind by a leader that exited
/// die too) and collects the report.
pub async fn finish(s: Started, spec: &Spec, guard: &GroupGuard) -> std::io::Result<ProcessReport> {
    let (report, _) = finish_unless(s, spec, guard, std::future::pending::<()>()).await?;
    Ok(report)
}

/// [`finish`], except that the group is killed as soon as `stop` resolves
/// (early stopping): then its output comes back with the report.
pub async fn finish_unless<T>(
    mut s: Started,
    spec: &Spec,
    guard: &GroupGuard,
    stop: impl std::future::Future<Output = T>,
) -> std::io::Result<(ProcessReport, Option<T>)> {
    let mut stopped = None;
    let mut report = ProcessReport {
        stdout: spec.stdout.clone(),
        stderr: spec.stderr.clone(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::from_std(s.started + spec.timeout);
    let peak = Arc::new(AtomicU64::new(0));
    let mut status = tokio::select! {
        biased;
        st = s.child.wait() => Ok(st?),
        _ = tokio::time::sleep_until(deadline) => Err(Some(false)),
        _ = watch_memory(s.pgid, spec.memory_limit, peak.clone()) => Err(Some(true)),
        why = stop => {
            stopped = Some(why);
            Err(None)
        }
    };
    // A child that ended as it was told to stop is not reported stopped.
    if stopped.is_some() {
        if let Ok(Some(st)) = s.child.try_wait() {
            stopped = None;
            status = Ok(st);
        }
    }
    kill_group(s.pgid);
    let status = match status {
        Ok(st) => st,
        Err(over_memory) => {
            report.timed_out = over_memory == Some(false);
            report.memory_exceeded = over_memory == Some(true);
            s.child.wait().await?
        }
    };
    report.peak_rss_bytes = peak.load(Ordering::Relaxed);
    // When `finish` returns, nothing of the group is alive any more.
    kill_until_gone(s.pgid, Duration::from_secs(5)).await;
    guard.disarm();
    report.started_ms = s.started_ms;
    report.duration_ms = s.started.elapsed().as_millis() as u64;
    report.exit_code = status.code();
    report.signal = std::os::unix::process::ExitStatusExt::signal(&status);

    // A process that left the group (setsid) may hold the pipes open; do not wait forever.
    for (task, is_stdout) in [(s.out, true), (s.err, false)] {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(c))) => {
                report.truncated |= c.truncated;
                if is_stdout {
                    report.metrics = c.metrics;
                    report.non_finite = c.non_finite;
                    report.progress = c.progress;
                }
            }
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) | Err(_) => report.truncated = true,
        }
    }
    Ok((report, stopped))
}

/// Samples the group's resident memory every 100 ms into `peak`; returns
/// when it goes over `limit` (never without one).
async fn watch_memory(pgid: i32, limit: Option<u64>, peak: Arc<AtomicU64>) {
    // The first sample after one period: a process that ends sooner has
    // no memory to speak of, and a walk of /proc per spawn is not free.
    let period = Duration::from_millis(100);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rss = tokio::task::spawn_blocking(move || group_rss(pgid))
            .await
            .unwrap_or(0);
        peak.fetch_max(rss, Ordering::Relaxed);
        if limit.is_some_and(|l| rss > l) {
            return;
        }
    }
}

/// The summed resident memory (bytes) of every process in group `pgid`.
pub fn group_rss(pgid: i32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state ppid pgrp ...
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|p| p.parse::<i32>().ok());
        if pgrp != Some(pgid) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        total += kb << 10;
    }
    total
}

/// Starts and finishes `spec`.
pub async fn run(spec: &Spec, guard: &GroupGuard) -> std::io::Result<ProcessReport> {
    match start(spec, guard).await? {
        Ok(s) => finish(s, spec, guard).await,
        Err(report) => Ok(report),
    }
}

#[derive(Default)]
pub struct Captured {
    truncated: bool,
    metrics: BTreeMap<String, f64>,
    non_finite: Vec<String>,
    progress: BTreeMap<String, Vec<(f64, f64)>>,
}

/// Copies a stream into `path` up to the cap, reads the rest to keep the child
/// unblocked, and parses metric and progress lines from all of it (stdout:
/// with `latest`, which hears every finite progress point as it comes).
async fn capture(
    mut from: impl AsyncRead + Unpin,
    path: PathBuf,
    latest: Option<(tokio::sync::watch::Sender<Latest>, MetricReader)>,
) -> std::io::Result<Captured> {
    let parse = latest.is_some();
    let (latest, reader) = latest.unzip();
    let mut file = tokio::fs::File::create(&path).await?;
    let mut written = 0u64;
    let mut out = Captured::default();
    let mut line = Vec::with_capacity(256);
    let mut overlong = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let room = LOG_CAP_BYTES.saturating_sub(written) as usize;
        if room > 0 {
            let take = room.min(n);
            file.write_all(&chunk[..take]).await?;
            written += take as u64;
        }
        if room < n {
            out.truncated = true;
        }
        if parse {
            for &b in chunk {
                // A carriage return ends a line too (progress bars redraw with it).
                if b == b'\n' || b == b'\r' {
                    if !overlong {
                        parse_line(&line, &mut out, latest.as_ref(), reader.as_ref());
                    }
                    line.clear();
                    overlong = false;
                } else if line.len() < MAX_LINE {
                    line.push(b);
                } else {
                    overlong = true;
                }
            }
        }
    }
    if parse && !overlong {
        parse_line(&line, &mut out, latest.as_ref(), reader.as_ref());
    }
    file.flush().await?;
    Ok(out)
}

fn parse_line(
    line: &[u8],
    out: &mut Captured,
    latest: Option<&tokio::sync::watch::Sender<Latest>>,
    reader: Option<&MetricReader>,
) {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    if let Some((name, value, at)) = parse_progress(text) {
        if !(value.is_finite() && at.is_finite()) {
            return;
        }
        let known = out.progress.contains_key(name);
        if !known && out.progress.len() >= PROGRESS_NAMES {
            return;
        }
        let curve = out.progress.entry(name.to_string()).or_default();
        if curve.len() >= PROGRESS_POINTS {
            let mut i = 0;
            curve.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        curve.push((at, value));
        if let Some(tx) = latest {
            tx.send_modify(|m| {
                m.insert(name.to_string(), (at, value));
            });
        }
        return;
    }
    let read = match reader {
        Some(r) => r.read(text),
        None => parse_metric(text).map_or(Read::None, |(n, v)| {
            Read::Metrics(vec![(std::borrow::Cow::Borrowed(n), v)])
        }),
    };
    match read {
        Read::None => {}
        Read::BlockStart => {
            out.metrics.clear();
            out.non_finite.clear();
        }
        Read::Metrics(list) => {
            // In a block format the last value stands; a `NAME=value` line
            // that was ever non-finite stays so (the run diverged on the way).
            let last_wins = reader.is_some_and(MetricReader::last_wins);
            for (name, value) in list {
                if last_wins {
                    out.non_finite.retain(|n| *n != name);
                }
                if value.is_finite() {
                    out.metrics.insert(name.into_owned(), value);
                } else {
                    out.metrics.remove(name.as_ref());
                    out.non_finite.push(name.into_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a process is alive (a zombie waiting to be reaped counts as dead).
    fn pid_alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.split_whitespace().next() != Some("Z")),
            Err(_) => false,
        }
    }

    fn spec(dir: &std::path::Path, script: &str, timeout_ms: u64) -> Spec {
        Spec {
            argv: vec!["bash".into(), "-c".into(), script.into()],
            cwd: dir.to_path_buf(),
            env: vec![("RATCHET_TEST".into(), "yes".into())],
            env_remove: vec!["RATCHET_TEST_HIDDEN".into()],
            memory_limit: None,
            timeout: Duration::from_millis(timeout_ms),
            stdout: dir.join("out.log"),
            stderr: dir.join("err.log"),
            metrics: Default::default(),
        }
    }

    fn metrics_of(format: MetricFormat, text: &str) -> BTreeMap<String, f64> {
        let reader = format.reader().unwrap();
        let mut out = Captured::default();
        for line in text.split(['\n', '\r']) {
            parse_line(line.as_bytes(), &mut out, None, Some(&reader));
        }
        out.metrics
    }

    #[test]
    fn the_colon_format_reads_the_last_summary_block_only() {
        let text = "step 00010 (3.3%) | loss: 4.1 | lr: 0.01\r step 00020 (6.6%) | loss: 3.9\n\
                    ---\nval_bpb:          9.000000\n---\n\
                    val_bpb:          0.997900\nmfu_percent:      39.80\nval_pass:         true\n\
                    total_tokens_M:   499.6\nnot a metric: really not\n";
        let m = metrics_of(MetricFormat::Colon, text);
        assert_eq!(m.get("val_bpb"), Some(&0.9979));
        assert_eq!(m.get("val_pass"), Some(&1.0));
        assert_eq!(m.get("mfu_percent"), Some(&39.8));
        assert_eq!(
            m.get("loss"),
            None,
            "a progress line is not a metric: {m:?}"
        );
        assert_eq!(m.len(), 4, "{m:?}");
        // `NAME=value` lines are not read in this format.
        assert!(metrics_of(MetricFormat::Colon, "val_bpb=1\n").is_empty());
    }

    #[test]
    fn a_non_finite_equals_line_stays_so_and_a_block_takes_its_last_value() {
        let read = |format: MetricFormat, text: &str| {
            let reader = format.reader().unwrap();
            let mut out = Captured::default();
            for line in text.lines() {
                parse_line(line.as_bytes(), &mut out, None, Some(&reader));
            }
            (out.metrics, out.non_finite)
        };
        let (m, bad) = read(MetricFormat::Equals, "acc=nan\nacc=0.5\n");
        assert_eq!((m.get("acc"), bad), (Some(&0.5), vec!["acc".to_string()]));
        let (m, bad) = read(MetricFormat::Colon, "acc: nan\nacc: 0.5\n");
        assert_eq!((m.get("acc"), bad), (Some(&0.5), Vec::<String>::new()));
    }

    #[test]
    fn a_pattern_reads_its_named_groups() {
        let per_group =
            MetricFormat::Regex(r"^Epoch \d+: acc (?P<val_acc>\S+) loss (?P<val_loss>\S+)$".into());
        let m = metrics_of(
            per_group,
            "Epoch 1: acc 50% loss 2.0\nEpoch 2: acc 93.5% loss 0.25\n",
        );
        assert_eq!(m.get("val_acc"), Some(&93.5));
        assert_eq!(m.get("val_loss"), Some(&0.25));
        let named = MetricFormat::Regex(r"^\[metric\] (?P<name>\w+) -> (?P<value>.+)$".into());
        let m = metrics_of(
            named,
            "[metric] score -> 0.5\n[metric] ok -> false\nscore=3\n",
        );
        assert_eq!(
            m,
            BTreeMap::from([("score".into(), 0.5), ("ok".into(), 0.0)])
        );
        assert!(MetricFormat::Regex("(unclosed".into()).reader().is_err());
        assert!(MetricFormat::Regex(r"loss (\S+)".into()).reader().is_err());
    }

    #[tokio::test]
    async fn captures_metrics_env_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            dir.path(),
            "echo loss=0.5; echo acc=nan; echo $RATCHET_TEST >&2; exit 3",
            10_000,
        );
        let r = run(&s, &GroupGuard::default()).await.unwrap();
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.metrics.get("loss"), Some(&0.5));
        assert_eq!(r.non_finite, vec!["acc".to_string()]);
        assert_eq!(std::fs::read_to_string(&s.stderr).unwrap(), "yes\n");
        assert!(!r.timed_out && !r.truncated);
    }

    #[tokio::test]
    async fn a_group_over_its_memory_limit_is_killed_and_its_peak_recorded() {
        let dir = tempfile::tempdir().unwrap();
        // A child in the group holds 300 MiB (zero-filled, so resident).
        let mut s = spec(
            dir.path(),
            "python3 -c 'import time; b = bytearray(300 << 20); time.sleep(30)' & wait",
            30_000,
        );
        s.memory_limit = Some(100 << 20);
        let guard = GroupGuard::default();
        let started = start(&s, &guard).await.unwrap().unwrap();
        let pgid = started.pgid;
        let r = finish(started, &s, &guard).await.unwrap();
        assert!(r.memory_exceeded && !r.timed_out, "{r:?}");
        assert!(r.peak_rss_bytes > 100 << 20, "{}", r.peak_rss_bytes);
        assert!(r.duration_ms < 30_000);
        assert_eq!(r.failure_label(), crate::domain::FailureLabel::OutOfMemory);
        assert!(!group_alive(pgid));

        // Without a limit the peak is still measured.
        let mut s = spec(
            dir.path(),
            "python3 -c 'import time; b = bytearray(64 << 20); time.sleep(0.5)'",
            30_000,
        );
        s.memory_limit = None;
        let r = run(&s, &GroupGuard::default()).await.unwrap();
        assert!(r.succeeded(), "{r:?}");
        assert!(r.peak_rss_bytes > 60 << 20, "{}", r.peak_rss_bytes);
    }

    #[tokio::test]
    async fn progress_is_heard_while_it_runs_and_a_stop_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        // 600 points (more than a report keeps), then a long sleep.
        let s = spec(
            dir.path(),
            "for i in $(seq 1 600); do echo \"loss=$((1000 - i)) at=$i\"; done; \
             echo loss=0.5; echo other=1 at=1; sleep 300",
            30_000,
        );
        let guard = GroupGuard::default();
        let started = start(&s, &guard).await.unwrap().unwrap();
        let pgid = started.pgid;
        let mut rx = started.progress.clone();
        let stop = async move {
            loop {
                let seen = rx.borrow_and_update().get("other").copied();
                if let Some(p) = seen {
                    return p;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let (r, stopped) = finish_unless(started, &s, &guard, stop).await.unwrap();
        assert_eq!(stopped, Some((1.0, 1.0)));
        assert!(!r.timed_out && r.duration_ms < 30_000, "{r:?}");
        assert!(!group_alive(pgid));
        assert_eq!(r.metrics.get("loss"), Some(&0.5));
        let curve = &r.progress["loss"];
        assert!(
            curve.len() <= PROGRESS_POINTS && curve.len() > 200,
            "{}",
            curve.len()
        );
        assert_eq!(curve.first(), Some(&(1.0, 999.0)));
        assert_eq!(curve.last(), Some(&(600.0, 400.0)));
        assert!(curve.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(r.progress["other"], vec![(1.0, 1.0)]);
    }

    #[tokio::test]
    async fn a_flood_is_capped_and_the_last_metric_still_parses() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(
            dir.path(),
            "head -c 5000000 /dev/zero | tr '\\0' 'x'; echo; echo loss=1.5",
            30_000,
        );
        let r = run(&s, &GroupGuard::default()).await.unwrap();
        assert!(r.truncated);
        assert_eq!(std::fs::metadata(&s.stdout).unwrap().len(), LOG_CAP_BYTES);
        assert_eq!(r.metrics.get("loss"), Some(&1.5));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), "sleep 300 & echo $! > gc.pid; sleep 300", 500);
        let guard = GroupGuard::default();
        let started = start(&s, &guard).await.unwrap().unwrap();
        let seen = started.pgid;
        let r = finish(started, &s, &guard).await.unwrap();
        assert!(r.timed_out);
        assert!(seen > 0);
        assert!(!group_alive(seen), "process group {seen} survived");
        let gc: i32 = std::fs::read_to_string(dir.path().join("gc.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!pid_alive(gc), "grandchild {gc} survived");
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), "", 1000);
        s.argv = vec!["/nonexistent/program".into()];
        let r = run(&s, &GroupGuard::default()).await.unwrap();
        assert!(r.spawn_error.is_some());
        assert!(!r.succeeded());
    }
}
