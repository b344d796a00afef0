//! `ratchet bench lineage`: a synthetic lineage of N trials, then the read
//! paths people use, timed: in-process (what the daemon does per request),
//! the real CLI through a control socket served with the daemon's own read
//! code, and the real CLI opening the database itself. Peak memory of each
//! CLI process comes from `wait4`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::actors::messages::{ExecutorStatus, LiveStatus};
use crate::daemon::control::{self, Command, DaemonStatus, Reply, Response};
use crate::domain::{
    now_ms, Decision, FailureLabel, NoiseBand, ParamValue, Params, ProcessReport, Spread,
    StatusChange, Trial, TrialId, TrialStatus,
};
use crate::lineage::query::Filter;
use crate::lineage::LineageStore;
use crate::propose::rng::Rng;

const SPECIALISTS: [&str; 4] = ["optimizer", "data_mix", "architecture", "checkpoint"];
/// Synthetic trials are proposed this far apart (1M trials: about a year).
const EVERY_MS: u64 = 30_000;

/// One synthetic trial, as large as a real tinylm one (reports, a diff,
/// a full configuration).
fn synthetic(id: u64, n: u64, start: u64, best: &mut f64, rng: &mut Rng) -> Trial {
    let specialist = if id == 1 {
        "baseline"
    } else {
        SPECIALISTS[(id % 4) as usize]
    };
    let t0 = start + id * EVERY_MS;
    let lr = 10f64.powf(-4.0 + 2.0 * rng.unit());
    let mut config = Params::new();
    config.insert("optimizer.lr".into(), ParamValue::Float(lr));
    config.insert("optimizer.warmup_steps".into(), ParamValue::Int(id as i64));
    config.insert("optimizer.weight_decay".into(), ParamValue::Float(0.1));
    config.insert("model.n_layer".into(), ParamValue::Int(4));
    config.insert("model.n_embd".into(), ParamValue::Int(128));
    config.insert(
        "data.mix".into(),
        ParamValue::Str("markov=0.35,arithmetic=0.25,brackets=0.15,copy=0.25".into()),
    );
    config.insert("train.batch_size".into(), ParamValue::Int(16));
    config.insert("train.seq_len".into(), ParamValue::Int(128));
    let mut changes = Params::new();
    changes.insert("optimizer.lr".into(), ParamValue::Float(lr));
    let u = rng.unit();
    let active = id + 6 > n;
    let (status, label, decision) = if id == 1 {
        (TrialStatus::Kept, None, Some(Decision::Improved))
    } else if active {
        let s = [
            TrialStatus::Queued,
            TrialStatus::Running,
            TrialStatus::Evaluating,
        ][(id % 3) as usize];
        (s, None, None)
    } else if u < 0.02 {
        (TrialStatus::Kept, None, Some(Decision::Improved))
    } else if u < 0.55 {
        let d = if u < 0.3 {
            Decision::WithinNoise
        } else {
            Decision::Regressed
        };
        (TrialStatus::Discarded, None, Some(d))
    } else {
        let l = match u {
            u if u < 0.70 => FailureLabel::Crash,
            u if u < 0.78 => FailureLabel::BudgetOverrun,
            u if u < 0.83 => FailureLabel::GateMiss,
            u if u < 0.86 => FailureLabel::Diverged,
            u if u < 0.88 => FailureLabel::OutOfMemory,
            u if u < 0.90 => FailureLabel::Duplicate,
            u if u < 0.92 => FailureLabel::IllegalEdit,
            u if u < 0.96 => FailureLabel::MetricMissing,
            _ => FailureLabel::Interrupted,
        };
        (TrialStatus::Failed, Some(l), None)
    };
    let parent_score = *best;
    let score = match (status, label) {
        (TrialStatus::Kept, _) if id == 1 => Some(*best),
        (TrialStatus::Kept, _) => {
            *best -= 0.002 + 0.01 * rng.unit();
            Some(*best)
        }
        (TrialStatus::Discarded, _) | (_, Some(FailureLabel::GateMiss)) => {
            Some(parent_score + 0.3 * rng.unit().powi(2))
        }
        _ => None,
    };
    let mut history = vec![StatusChange {
        status: TrialStatus::Proposed,
        at_ms: t0,
    }];
    for (s, dt) in [
        (TrialStatus::Queued, 20),
        (TrialStatus::Running, 500),
        (TrialStatus::Evaluating, 20_500),
    ] {
        history.push(StatusChange {
            status: s,
            at_ms: t0 + dt,
        });
        if s == status {
            break;
        }
    }
    if status.is_terminal() {
        history.push(StatusChange {
            status,
            at_ms: t0 + 24_000,
        });
    }
    let dir = PathBuf::from(format!("/var/lib/ratchet/lineage/trials/{id}"));
    let report = |name: &str, secs: u64, metric: Option<f64>| ProcessReport {
        exit_code: Some(if label == Some(FailureLabel::Crash) {
            1
        } else {
            0
        }),
        started_ms: t0 + 500,
        duration_ms: secs * 1000,
        stdout: dir.join(format!("{name}.stdout")),
        stderr: dir.join(format!("{name}.stderr")),
        metrics: metric
            .map(|m| {
                BTreeMap::from([
                    ("val_bpb".to_string(), m),
                    ("tokens_per_sec".to_string(), 41_000.0),
                ])
            })
            .unwrap_or_default(),
        peak_rss_bytes: 300 << 20,
        ..Default::default()
    };
    let sha = |salt: u64| {
        format!(
            "{:016x}{:016x}{:08x}",
            id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            salt,
            id
        )
        .parse::<crate::domain::CommitId>()
        .expect("40 hex digits")
    };
    Trial {
        id: TrialId(id),
        attempt: 1,
        specialist: specialist.into(),
        surface: (id != 1).then(|| specialist.to_string()),
        parent: (id != 1).then_some(TrialId(1)),
        hypothesis: format!(
            "Set optimizer.lr to {lr:.2e}: a {} step size should move val_bpb further within the 20 s budget without diverging",
            if lr > 1e-3 { "larger" } else { "smaller" }
        ),
        changes,
        config,
        status,
        label,
        decision,
        score,
        parent_score: (id != 1 && score.is_some()).then_some(parent_score),
        detail: label.map(|l| format!("{l}: train exited with status 1 after 12.3 s (see train.stderr)")),
        history,
        trial_dir: Some(dir.clone()),
        pgid: None,
        slurm_job: None,
        expected_delta: None,
        preflight: None,
        train: Some(report("train", 20, None)),
        eval: score.map(|s| report("eval", 3, Some(s))),
        commit: Some(sha(1)),
        diff: Some(format!(
            "diff --git a/recipe.toml b/recipe.toml\n--- a/recipe.toml\n+++ b/recipe.toml\n@@ -3,7 +3,7 @@\n [optimizer]\n-lr = 0.003\n+lr = {lr:.6e}\n warmup_steps = {id}\n weight_decay = 0.1\n betas = [0.9, 0.95]\n"
        )),
        keep_commit: (status == TrialStatus::Kept).then(|| sha(2)),
        edits: Vec::new(),
        reply: None,
        proxy_score: score,
        full_eval: None,
        full_score: None,
        seed_runs: Vec::new(),
        noise: (status == TrialStatus::Kept).then(|| {
            let s = Spread { n: 3, mean: score.unwrap_or(0.0), sd: 0.02 };
            NoiseBand { proxy: s, confirmed: s }
        }),
        false_peak: false,
        rebased_from: None,
        rebased_as: None,
        evidence: None,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs `f` once to warm up, then `reps` times; the median.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

/// A child process of this binary: its wall time and peak resident memory.
struct Child {
    wall: Duration,
    max_rss_bytes: u64,
    ok: bool,
    stderr: String,
}

/// Runs this binary with `args`. Its peak memory is its own VmHWM, polled
/// every 5 ms until it exits (`wait4`'s figure would include this process's
/// memory, which a vfork-style spawn shares until exec).
fn run_child(args: &[&str]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut max_rss_bytes = 0;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            max_rss_bytes = max_rss_bytes.max(vm_hwm(&text));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Child {
        wall: start.elapsed(),
        max_rss_bytes,
        ok: status.success(),
        stderr: reader.join().unwrap_or_default(),
    })
}

/// VmHWM (peak resident memory) from a /proc/PID/status text, in bytes.
fn vm_hwm(status: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn checked(c: Child, what: &str) -> anyhow::Result<Child> {
    if !c.ok {
        anyhow::bail!("{what} failed: {}", c.stderr.trim());
    }
    Ok(c)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => n += dir_bytes(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

/// This process's peak resident memory (VmHWM), since `reset_peak`.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status").map_or(0, |s| vm_hwm(&s))
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

pub fn lineage_command(trials: u64, dir: Option<PathBuf>, keep: bool) -> anyhow::Result<()> {
    anyhow::ensure!(trials >= 10, "--trials must be at least 10");
    let root = super::root("lineage", dir)?;
    std::fs::create_dir_all(&root)?;
    let result = bench(trials, &root);
    if keep {
        eprintln!("kept: {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// Writes `n` synthetic trials (ids 1..=n, the newest few still active)
/// into a new lineage at `lineage`, in batches, with progress on stderr.
/// Without `commits` they name no git commits (a daemon started on the
/// lineage then has no incumbent commit to find in its repository).
pub(super) fn build(lineage: &Path, n: u64, commits: bool) -> anyhow::Result<()> {
    let store = LineageStore::open(lineage)?;
    let start = now_ms().saturating_sub(n * EVERY_MS + 60_000);
    let mut rng = Rng::new(7);
    let mut best = 4.2;
    let t = Instant::now();
    let mut done = 0u64;
    let step = (n / 10).max(1);
    while done < n {
        let upto = (done + step).min(n);
        store.import((done + 1..=upto).map(|id| {
            let mut t = synthetic(id, n, start, &mut best, &mut rng);
            if !commits {
                (t.commit, t.keep_commit) = (None, None);
            }
            t
        }))?;
        done = upto;
        eprint!(
            "\rbuilding: {done}/{n} trials ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    Ok(())
}

/// Opens a lineage a process just let go of (sled's flusher may hold the
/// lock for a moment after a drop).
pub(super) fn reopen(lineage: &Path) -> anyhow::Result<LineageStore> {
    let t = Instant::now();
    loop {
        match LineageStore::open(lineage) {
            Err(crate::lineage::LineageError::Locked { .. }) if t.elapsed().as_secs() < 120 => {
                std::thread::sleep(Duration::from_millis(100))
            }
            other => return Ok(other?),
        }
    }
}

fn bench(n: u64, root: &Path) -> anyhow::Result<()> {
    let lineage = root.join("lineage");
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(
        out,
        "lineage bench: {n} synthetic trials in {}",
        lineage.display()
    )?;

    // Build.
    let t = Instant::now();
    build(&lineage, n, true)?;
    let build = t.elapsed();
    writeln!(
        out,
        "build (batched import): {:.1} s, {:.0} trials/s; {} on disk",
        build.as_secs_f64(),
        n as f64 / build.as_secs_f64(),
        mb(dir_bytes(&lineage))
    )?;

    let t = Instant::now();
    let store = reopen(&lineage)?;
    writeln!(out, "open (sled recovery): {}", ms(t.elapsed()))?;

    // In-process: what the daemon does per request.
    let hour_ago = now_ms() - 3_600_000;
    let list = |f: Filter| {
        let store = store.clone();
        move || {
            store
                .select(&f)
                .expect("select")
                .map(|t| t.expect("trial").id)
                .collect::<Vec<_>>()
        }
    };
    let limit = |f: Filter| Filter {
        limit: Some(50),
        ..f
    };
    writeln!(
        out,
        "in-process, database open (the daemon's work per request), median of 21:"
    )?;
    let cases: [(&str, Filter); 5] = [
        ("list --limit 50", limit(Filter::default())),
        (
            "list --label crash --limit 50",
            limit(Filter {
                label: Some("crash".into()),
                ..Default::default()
            }),
        ),
        (
            "list --label kept --limit 50",
            limit(Filter {
                label: Some("kept".into()),
                ..Default::default()
            }),
        ),
        (
            "list --specialist optimizer --limit 50",
            limit(Filter {
                specialist: Some("optimizer".into()),
                ..Default::default()
            }),
        ),
        (
            "list --since 1h",
            Filter {
                since_ms: Some(hour_ago),
                ..Default::default()
            },
        ),
    ];
    for (name, f) in cases {
        let run = list(f);
        let got = run().len();
        writeln!(
            out,
            "  {name:<42} {:>10}  ({got} trials)",
            ms(time(21, run))
        )?;
    }
    let status = || {
        let s = store.summary().expect("summary");
        let a = store.active().expect("active");
        (s, a)
    };
    writeln!(
        out,
        "  {:<42} {:>10}",
        "status (summary + active trials)",
        ms(time(21, status))
    )?;

    // The CLI through a control socket answered by the daemon's read code.
    let socket = root.join("bench.sock");
    let config = root.join("specialists.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nexperiment = \"none\"\nlineage_dir = {:?}\nsocket = {:?}\n",
            lineage, socket
        ),
    )?;
    let lineage_arg = lineage.to_string_lossy().into_owned();
    let config_arg = config.to_string_lossy().into_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = {
        let _guard = rt.enter();
        let listener = control::bind(&socket)?;
        std::fs::write(
            control::pointer_path(&lineage),
            serde_json::to_vec(&control::Pointer {
                pid: std::process::id(),
                socket: socket.clone(),
            })?,
        )?;
        let store = store.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(control::serve_one(stream, move |cmd| answer(store, cmd)));
            }
        })
    };
    writeln!(
        out,
        "CLI through the control socket (process start included), median of 5:"
    )?;
    let list_args = [
        "lineage",
        "--lineage",
        &lineage_arg,
        "list",
        "--limit",
        "50",
    ];
    let status_args = ["status", "-c", &config_arg];
    for (name, args) in [
        ("ratchet lineage list --limit 50", &list_args[..]),
        ("ratchet status", &status_args[..]),
    ] {
        children(&mut out, name, args)?;
    }
    let jsonl = root.join("export.jsonl");
    let jsonl_arg = jsonl.to_string_lossy().into_owned();
    let export_args = [
        "lineage",
        "--lineage",
        &lineage_arg,
        "export",
        "--format",
        "jsonl",
        "-o",
        &jsonl_arg,
    ];
    reset_peak();
    let before = peak_rss_bytes();
    let c = checked(run_child(&export_args)?, "export")?;
    let server_peak = peak_rss_bytes();
    export_line(&mut out, "export --format jsonl", &c, &jsonl, n)?;
    writeln!(
        out,
        "    serving process: peak RSS {} during the export ({} when it began)",
        mb(server_peak),
        mb(before)
    )?;
    server.abort();
    drop(rt);
    let _ = std::fs::remove_file(control::pointer_path(&lineage));
    let _ = std::fs::remove_file(&jsonl);
    drop(store);

    // The CLI opening the database itself.
    writeln!(
        out,
        "CLI opening the database itself (no ratchet running), median of 5:"
    )?;
    children(&mut out, "ratchet lineage list --limit 50", &list_args)?;
    let c = checked(run_child(&export_args)?, "export")?;
    export_line(&mut out, "export --format jsonl", &c, &jsonl, n)?;
    let _ = std::fs::remove_file(&jsonl);
    Ok(())
}

/// Runs the CLI 5 times: the median wall time and the largest peak RSS.
fn children(out: &mut impl Write, name: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut walls = Vec::new();
    let mut rss = 0;
    for _ in 0..5 {
        let c = checked(run_child(args)?, name)?;
        walls.push(c.wall);
        rss = rss.max(c.max_rss_bytes);
    }
    // A process that ends within the 5 ms poll is never sampled.
    let rss = if rss == 0 { "-".into() } else { mb(rss) };
    writeln!(
        out,
        "  {name:<42} {:>10}  (peak RSS {rss})",
        ms(median(walls))
    )?;
    Ok(())
}

fn export_line(
    out: &mut impl Write,
    name: &str,
    c: &Child,
    file: &Path,
    n: u64,
) -> anyhow::Result<()> {
    let bytes = std::fs::metadata(file)?.len();
    let lines =
        std::io::BufRead::lines(std::io::BufReader::new(std::fs::File::open(file)?)).count() as u64;
    anyhow::ensure!(lines == n, "the export has {lines} rows, not {n}");
    let secs = c.wall.as_secs_f64();
    writeln!(
        out,
        "  {name}: {n} trials, {} in {secs:.1} s = {:.0} trials/s, {:.0} MB/s; CLI peak RSS {}",
        mb(bytes),
        n as f64 / secs,
        bytes as f64 / 1e6 / secs,
        mb(c.max_rss_bytes)
    )?;
    Ok(())
}

/// The bench's control server: lineage reads as the daemon answers them,
/// and `status` with its lineage part computed as the supervisor does.
async fn answer(store: LineageStore, command: Command) -> Reply {
    match command {
        Command::Read { read } => crate::daemon::stream_read(store, read),
        Command::Status => {
            let live = tokio::task::spawn_blocking(move || -> Result<LiveStatus, String> {
                Ok(LiveStatus {
                    executor: ExecutorStatus::default(),
                    lineage: store.summary().map_err(|e| e.to_string())?,
                    active: store.active().map_err(|e| e.to_string())?,
                    specialists: SPECIALISTS.iter().map(|s| s.to_string()).collect(),
                })
            })
            .await;
            match live {
                Ok(Ok(live)) => Response {
                    status: Some(DaemonStatus {
                        pid: std::process::id(),
                        started_ms: now_ms(),
                        config: PathBuf::from("specialists.toml"),
                        experiment: "bench".into(),
                        metric: "val_bpb".into(),
                        direction: "minimize".into(),
                        budget_secs: 300,
                        stopping: None,
                        live,
                    }),
                    ..Response::ok()
                }
                .into(),
                Ok(Err(e)) => Response::error(e).into(),
                Err(e) => Response::error(e.to_string()).into(),
            }
        }
        _ => Response::error("the lineage bench serves reads and status only").into(),
    }
}
