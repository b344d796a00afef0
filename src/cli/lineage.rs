//! `ratchet lineage ...`: reading the research record. The database is read
//! directly when no ratchet holds it, and through the running daemon's (or
//! foreground run's) control socket when one does, so every command works
//! beside a running daemon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::Config;
use crate::domain::{format_float, now_ms, FailureLabel, Incumbent, Trial, TrialId, TrialStatus};
use crate::export::{self, Context, HtmlOptions};
use crate::lineage::query::Filter;

mod source;

pub(super) use source::socket_of;
use source::Source;

#[derive(Subcommand, Debug)]
pub enum LineageCommand {
    /// One line per trial, in id order (with --limit N: the newest N).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object (the whole record) per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Everything recorded about one trial: hypothesis, parent, proposed
    /// values, the edit's diff, every state change, scores, decision,
    /// label and the tails of its logs.
    Show {
        id: TrialId,
        /// Leave the diff out.
        #[arg(long)]
        no_diff: bool,
        /// (The diff is shown by default; kept for older scripts.)
        #[arg(long, hide = true)]
        diff: bool,
        /// The whole record as one JSON object (as `list --json` writes it).
        #[arg(long)]
        json: bool,
    },
    /// Write a trial's exact files (its commit) into DIR, to reproduce it.
    Checkout { id: TrialId, dir: PathBuf },
    /// The incumbent: the best kept trial.
    Best {
        #[arg(long)]
        json: bool,
    },
    /// Daemon events that are not trials: specialist crashes and failed
    /// model requests (`proposer_error`), recoveries.
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Every trial (or those the filters select), oldest first: JSONL or
    /// CSV rows of a versioned schema (README "Lineage exports"), autoresearch's
    /// results.tsv, or a
    /// self-contained HTML report with the progress plot.
    Export {
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write here (atomically, via a temporary file) instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        /// HTML: how many of the newest trials the table lists (the plot
        /// shows every trial).
        #[arg(long, default_value_t = HtmlOptions::default().rows)]
        rows: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
    Html,
    /// autoresearch's results.tsv: commit, the metric, memory_gb, status
    /// (keep, discard, crash), description.
    Autoresearch,
}

#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only this specialist's trials.
    #[arg(long)]
    specialist: Option<String>,
    /// Only trials with this outcome: a failure label (crash,
    /// budget_overrun, gate_miss, ...) or kept, within_noise, regressed,
    /// false_peak, rebased, pruned.
    #[arg(long)]
    label: Option<String>,
    /// Only trials in this state (proposed, queued, running, evaluating,
    /// kept, discarded, failed, interrupted).
    #[arg(long, value_parser = parse_status)]
    status: Option<TrialStatus>,
    /// Only trials proposed since then: an age (90s, 30m, 6h, 2d) or a UTC
    /// time (2026-11-23, 2026-11-23T14:00).
    #[arg(long, value_parser = parse_since)]
    since: Option<u64>,
    /// At most this many trials (the newest).
    #[arg(long)]
    limit: Option<usize>,
}

impl FilterArgs {
    fn filter(&self, oldest_first: bool) -> anyhow::Result<Filter> {
        if let Some(l) = &self.label {
            if !OUTCOMES.contains(&l.as_str()) {
                anyhow::bail!(
                    "--label {l}: not an outcome; use one of {}",
                    OUTCOMES.join(", ")
                );
            }
        }
        Ok(Filter {
            specialist: self.specialist.clone(),
            label: self.label.clone(),
            status: self.status,
            since_ms: self.since,
            limit: self.limit,
            oldest_first,
        })
    }
}

/// Every value `Trial::outcome` gives a terminal trial.
const OUTCOMES: &[&str] = &[
    "kept",
    "within_noise",
    "regressed",
    "false_peak",
    "rebased",
    "pruned",
    "crash",
    "budget_overrun",
    "size_failure",
    "gate_miss",
    "metric_missing",
    "diverged",
    "illegal_edit",
    "patch_failed",
    "duplicate",
    "proposer_error",
    "interrupted",
    "out_of_memory",
    "gpu_out_of_memory",
    "preflight_failed",
];

fn parse_status(s: &str) -> Result<TrialStatus, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        "not a status; use proposed, queued, running, evaluating, kept, discarded, failed or interrupted".into()
    })
}

/// An age before now (`90s`, `30m`, `6h`, `2d`) or a UTC time
/// (`2026-11-23`, `2026-11-23T14:00[:05]`), as ms since the epoch.
fn parse_since(s: &str) -> Result<u64, String> {
    parse_since_at(s, now_ms())
}

fn parse_since_at(s: &str, now: u64) -> Result<u64, String> {
    let bad =
        || format!("`{s}`: use an age such as 30m, 6h, 2d or a UTC time such as 2026-11-23T14:00");
    if let Ok(age) = humantime::parse_duration(s) {
        return Ok(now.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
    }
    // humantime wants the seconds; a date alone is its midnight.
    let full = match s.len() {
        10 => format!("{s}T00:00:00"),
        16 => format!("{s}:00"),
        _ => s.to_string(),
    };
    let at = humantime::parse_rfc3339_weak(&full).map_err(|_| bad())?;
    let since = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?;
    u64::try_from(since.as_millis()).map_err(|_| bad())
}

pub fn main(
    config: &Path,
    lineage: Option<PathBuf>,
    command: LineageCommand,
) -> anyhow::Result<ExitCode> {
    let explicit = lineage.is_some();
    let dir = match lineage {
        Some(d) => d,
        None => match crate::config::lineage_dir_of(config) {
            Ok(d) => d,
            Err(errors) => anyhow::bail!("{errors}"),
        },
    };
    let source = Source::open(&dir, config)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        LineageCommand::List { filter, json } => {
            let f = filter.filter(false)?;
            // Selected newest first (so --limit takes the newest), shown in
            // id order.
            let mut trials = source
                .trials(&f)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!(e))?;
            trials.reverse();
            if !json {
                writeln!(
                    out,
                    "{:>6}  {:<11} {:<15} {:<14} {:>12}  hypothesis",
                    "id", "status", "outcome", "specialist", "score"
                )?;
            }
            for t in &trials {
                if json {
                    serde_json::to_writer(&mut out, t)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{}", list_row(t))?;
                }
            }
        }
        LineageCommand::Show {
            id, no_diff, json, ..
        } => {
            let Some(mut t) = source.trial(id)? else {
                anyhow::bail!("no trial {id} in lineage")
            };
            if json {
                if no_diff {
                    t.diff = None;
                }
                serde_json::to_writer(&mut out, &t)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            show(&mut out, &t)?;
            if !no_diff {
                show_diff(&mut out, &t)?;
            }
        }
        LineageCommand::Checkout { id, dir: to } => {
            let Some(t) = source.trial(id)? else {
                anyhow::bail!("no trial {id} in lineage")
            };
            return checkout(&t, config, &to);
        }
        LineageCommand::Events { json } => {
            for e in source.events()? {
                if json {
                    serde_json::to_writer(&mut out, &e)?;
                    writeln!(out)?;
                } else {
                    writeln!(
                        out,
                        "{}  {:<16} {:<16} {}",
                        export::utc(e.at_ms),
                        e.kind,
                        e.subject,
                        e.detail
                    )?;
                }
            }
        }
        LineageCommand::Best { json } => {
            let history = source.incumbents()?;
            let Some(inc) = history.last() else {
                anyhow::bail!("no incumbent yet: no trial has been kept")
            };
            if json {
                serde_json::to_writer(&mut out, inc)?;
                writeln!(out)?;
            } else {
                best(&mut out, inc, &history)?;
            }
        }
        LineageCommand::Export {
            format,
            output,
            filter,
            rows,
        } => {
            drop(out);
            let f = filter.filter(true)?;
            let incumbents = source.incumbents()?;
            let ctx = context(config, explicit.then_some(&dir), &incumbents);
            let mut trials = source.trials(&f)?;
            let mut write = |w: &mut dyn Write| -> anyhow::Result<export::Written> {
                let written = match format {
                    Format::Jsonl => export::jsonl(w, &mut trials, &ctx),
                    Format::Csv => export::csv(w, &mut trials, &ctx),
                    Format::Autoresearch => export::autoresearch::tsv(w, &mut trials, &ctx),
                    Format::Html => export::html(
                        w,
                        &mut trials,
                        &incumbents,
                        &ctx,
                        HtmlOptions {
                            rows,
                            ..Default::default()
                        },
                        now_ms(),
                    ),
                };
                Ok(written?)
            };
            let written = match &output {
                Some(path) => write_atomically(path, write)?,
                None => {
                    let mut w =
                        std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
                    let n = write(&mut w)?;
                    w.flush()?;
                    n
                }
            };
            if let Some(path) = &output {
                eprintln!(
                    "{} trial(s) written to {} ({:?}, schema {})",
                    written.trials,
                    path.display(),
                    format,
                    export::SCHEMA_VERSION
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes through a temporary file beside `path` and renames it into place,
/// so a reader never sees half an export and a failed one leaves nothing.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<export::Written>,
) -> anyhow::Result<export::Written> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(256 * 1024, file);
        let n = write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The experiment's name, metric, direction and band from the
/// configuration when it describes this lineage; else what lineage tells.
fn context(config: &Path, explicit: Option<&PathBuf>, incumbents: &[Incumbent]) -> Context {
    let mut ctx = Context::from_lineage(incumbents);
    if let Ok(c) = Config::load(config) {
        let same =
            explicit.is_none_or(|d| d.canonicalize().ok() == c.lineage_dir.canonicalize().ok());
        if same {
            let exp = &c.experiment.file;
            ctx = Context {
                experiment: exp.name.clone(),
                metric: exp.metric.clone(),
                direction: Some(exp.direction),
                band: 2.0,
            };
        }
    }
    ctx
}

/// `lineage checkout`: the trial's commit exported into a new directory.
fn checkout(t: &Trial, config: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let id = t.id;
    let Some(commit) = &t.commit else {
        anyhow::bail!(
            "trial {id} has no commit: it was {} before its workspace was made",
            t.status
        )
    };
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!(
            "{} is not empty; give a new or empty directory",
            out.display()
        );
    }
    let experiment = crate::config::experiment_dir_of(config)?;
    let p = crate::provenance::Provenance::open(&experiment)?;
    p.export(commit, out)?;
    println!("trial {id} (commit {commit}) written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn best(out: &mut impl Write, inc: &Incumbent, history: &[Incumbent]) -> anyhow::Result<()> {
    writeln!(
        out,
        "incumbent: trial {} score {}",
        inc.trial,
        format_float(inc.score)
    )?;
    match &inc.noise {
        Some(n) => writeln!(
            out,
            "noise band: sd {} over {} run(s) (mean {})",
            format_float(n.confirmed.sd),
            n.confirmed.n,
            format_float(n.confirmed.mean)
        )?,
        None => writeln!(out, "noise band: not measured")?,
    }
    for (k, v) in &inc.config {
        writeln!(out, "  {k} = {v}")?;
    }
    writeln!(out, "history ({} keep(s)):", history.len())?;
    for h in history {
        writeln!(out, "  trial {:<6} {}", h.trial, format_float(h.score))?;
    }
    Ok(())
}

fn list_row(t: &Trial) -> String {
    let mut hyp: String = t.hypothesis.chars().take(70).collect();
    if hyp.len() < t.hypothesis.len() {
        hyp.push('…');
    }
    let hyp = hyp.replace(['\n', '\r'], " ");
    let outcome = if t.status.is_terminal() {
        t.outcome()
    } else {
        ""
    };
    format!(
        "{:>6}  {:<11} {:<15} {:<14} {:>12}  {}",
        t.id.0,
        t.status.as_str(),
        outcome,
        t.specialist,
        t.score.map(format_float).unwrap_or_else(|| "-".into()),
        hyp
    )
}

fn show_diff(out: &mut impl Write, t: &Trial) -> anyhow::Result<()> {
    writeln!(out, "diff:")?;
    match &t.diff {
        Some(d) if !d.is_empty() => write!(out, "{d}")?,
        Some(_) => writeln!(out, "  (no change: the parent's files)")?,
        None if matches!(
            t.label,
            Some(FailureLabel::IllegalEdit | FailureLabel::PatchFailed)
        ) =>
        {
            writeln!(
                out,
                "  (no commit: its edits were refused before anything ran)"
            )?
        }
        None => writeln!(out, "  (no commit: the trial never reached its workspace)")?,
    }
    Ok(())
}

fn show(out: &mut impl Write, t: &Trial) -> anyhow::Result<()> {
    writeln!(out, "trial {} (attempt {})", t.id, t.attempt)?;
    writeln!(
        out,
        "specialist: {}  surface: {}",
        t.specialist,
        t.surface.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "parent: {}",
        t.parent
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into())
    )?;
    writeln!(out, "hypothesis: {}", t.hypothesis)?;
    writeln!(out, "edit: {}", t.edit_summary())?;
    if !t.changes.is_empty() {
        writeln!(out, "proposed values:")?;
        for (k, v) in &t.changes {
            writeln!(out, "  {k} = {v}")?;
        }
    }
    writeln!(out, "status: {}", t.status)?;
    if t.status.is_terminal() {
        writeln!(out, "outcome: {}", t.outcome())?;
    }
    if let Some(c) = &t.commit {
        writeln!(out, "commit: {c} (branch ratchet/trials/{})", t.id)?;
    }
    if let Some(k) = t
        .keep_commit
        .as_ref()
        .filter(|k| Some(*k) != t.commit.as_ref())
    {
        writeln!(
            out,
            "kept as: {k} (a merge onto the incumbent it beat, with exactly these files)"
        )?;
    }
    if let Some(l) = t.label {
        writeln!(out, "label: {l}")?;
    }
    if let Some(d) = t.decision {
        writeln!(out, "decision: {}", d.as_str())?;
    }
    if t.false_peak {
        writeln!(out, "false peak: won on proxy, not confirmed")?;
    }
    if let Some(from) = t.rebased_from {
        writeln!(out, "rebased from: trial {from}")?;
    }
    if let Some(to) = t.rebased_as {
        writeln!(out, "rebased as: trial {to}")?;
    }
    if let Some(s) = t.score {
        writeln!(
            out,
            "score: {}  (compared with: {})",
            format_float(s),
            t.parent_score
                .map(format_float)
                .unwrap_or_else(|| "-".into())
        )?;
    }
    if let Some(e) = t.expected_delta {
        let measured = t
            .score
            .zip(t.parent_score)
            .map(|(s, p)| format!("{:+}", s - p))
            .unwrap_or_else(|| "-".into());
        writeln!(out, "expected change: {e:+}  (measured: {measured})")?;
    }
    let opt = |v: Option<f64>| v.map(format_float).unwrap_or_else(|| "-".into());
    if t.proxy_score.is_some() || t.full_score.is_some() {
        writeln!(
            out,
            "own run (seed 0): proxy {}  full {}",
            opt(t.proxy_score),
            opt(t.full_score)
        )?;
    }
    for r in &t.seed_runs {
        writeln!(
            out,
            "seed {}: proxy {}  full {}{}",
            r.seed,
            opt(r.proxy_score),
            opt(r.full_score),
            r.detail
                .as_deref()
                .map(|d| format!("  ({d})"))
                .unwrap_or_default()
        )?;
        if let Some(g) = r.train.as_ref().and_then(|t| t.gpu.as_ref()) {
            writeln!(out, "  {}", g.describe())?;
        }
    }
    if let Some(n) = &t.noise {
        writeln!(
            out,
            "noise band: {} runs, mean {} sd {} (proxy mean {} sd {})",
            n.confirmed.n,
            format_float(n.confirmed.mean),
            format_float(n.confirmed.sd),
            format_float(n.proxy.mean),
            format_float(n.proxy.sd)
        )?;
    }
    if let Some(e) = &t.evidence {
        writeln!(out, "decision rested on: {}", e.describe())?;
    }
    if let Some(p) = t.train.as_ref().and_then(|r| r.pruned.as_ref()) {
        writeln!(out, "pruned: {}", p.describe())?;
        if let Some(curve) = t.train.as_ref().and_then(|r| r.progress.get(&p.metric)) {
            let step = curve.len().div_ceil(12).max(1);
            let points: Vec<String> = curve
                .iter()
                .step_by(step)
                .map(|(at, v)| format!("{}: {}", format_float(*at), format_float(*v)))
                .collect();
            writeln!(
                out,
                "  its {} curve (position: value): {}",
                p.metric,
                points.join(", ")
            )?;
        }
        writeln!(
            out,
            "  slot time saved: {:.1}s (the incumbent's train time less this run's)",
            p.saved_ms as f64 / 1000.0
        )?;
    }
    if let Some(d) = &t.detail {
        writeln!(out, "detail: {d}")?;
    }
    if let (Some(FailureLabel::ProposerError), Some(reply)) = (t.label, &t.reply) {
        writeln!(out, "reply (as received, first 20 lines):")?;
        for line in reply.lines().take(20) {
            writeln!(out, "  | {line}")?;
        }
    }
    writeln!(out, "history:")?;
    let start = t.history.first().map(|c| c.at_ms).unwrap_or(0);
    for c in &t.history {
        writeln!(
            out,
            "  {} UTC  +{:>8.3}s  {}",
            export::utc(c.at_ms),
            c.at_ms.saturating_sub(start) as f64 / 1000.0,
            c.status
        )?;
    }
    for (name, report) in [
        ("preflight", &t.preflight),
        ("train", &t.train),
        ("eval", &t.eval),
        ("full eval", &t.full_eval),
    ] {
        let Some(r) = report else { continue };
        writeln!(
            out,
            "{name}: {} in {:.2}s{}",
            r.describe(),
            r.duration_ms as f64 / 1000.0,
            if r.truncated { " (log truncated)" } else { "" }
        )?;
        if let Some(g) = &r.gpu {
            writeln!(out, "  {}", g.describe())?;
            if let Some(e) = &g.device_error {
                writeln!(out, "  device error: {e}")?;
            }
        }
        for (k, v) in &r.metrics {
            writeln!(out, "  {k}={}", format_float(*v))?;
        }
        for (stream, path) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
            let tail = tail_lines(path, 8);
            if !tail.is_empty() {
                writeln!(out, "  {stream} ({}), last lines:", path.display())?;
                for l in tail {
                    writeln!(out, "    {l}")?;
                }
            }
        }
    }
    writeln!(out, "config:")?;
    for (k, v) in &t.config {
        writeln!(out, "  {k} = {v}")?;
    }
    Ok(())
}

/// The last `n` lines of a log file (reads at most its last 64 KiB).
fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let text = crate::process::log_tail(path, 64 * 1024);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(200).collect())
        .collect()
}

#[cfg(test)]
mod tests;
