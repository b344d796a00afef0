//! Lineage exports: one row per trial in JSONL or CSV (schema
//! [`SCHEMA_VERSION`], documented in README "Lineage exports"), and a
//! self-contained HTML report with the progress plot. Every format streams:
//! trials are read, written and dropped one by one (the HTML report keeps a
//! few numbers per trial for its plot, and the newest rows of its table).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;

use serde::Serialize;

use crate::domain::{format_float, CommitId, Direction, Incumbent, Params, StatusChange, Trial};

/// The version of the row schema. Adding a column keeps it; renaming,
/// removing or changing the meaning of one bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// What an export knows about the experiment beyond lineage.
#[derive(Clone, Debug)]
pub struct Context {
    pub experiment: String,
    pub metric: String,
    /// `None` when neither the configuration nor the keeps tell.
    pub direction: Option<Direction>,
    /// How many of an incumbent's sds the report's plot shades around it.
    pub band: f64,
}

impl Context {
    /// Without a configuration: the direction is read off the keeps (each
    /// keep improves on the one before).
    pub fn from_lineage(incumbents: &[Incumbent]) -> Context {
        let direction = match (incumbents.first(), incumbents.last()) {
            (Some(a), Some(b)) if b.score < a.score => Some(Direction::Minimize),
            (Some(a), Some(b)) if b.score > a.score => Some(Direction::Maximize),
            _ => None,
        };
        Context {
            experiment: "(unknown experiment)".into(),
            metric: "score".into(),
            direction,
            band: 2.0,
        }
    }
}

/// One trial as a row of the export schema. Times are milliseconds since
/// the Unix epoch; durations are seconds.
#[derive(Debug, Serialize)]
pub struct Row<'a> {
    pub schema_version: u32,
    pub id: u64,
    pub attempt: u32,
    pub specialist: &'a str,
    pub surface: Option<&'a str>,
    pub parent: Option<u64>,
    pub status: &'static str,
    /// A failure label, or kept/within_noise/regressed/false_peak/rebased,
    /// or the status of an unfinished trial.
    pub outcome: &'static str,
    pub label: Option<&'static str>,
    pub decision: Option<&'static str>,
    pub false_peak: bool,
    /// The deciding score (the mean over seed runs once confirmed).
    pub score: Option<f64>,
    pub parent_score: Option<f64>,
    /// How much better than `parent_score` (negative: worse), in the
    /// metric's direction.
    pub gain: Option<f64>,
    pub proxy_score: Option<f64>,
    pub full_score: Option<f64>,
    pub noise_runs: Option<u32>,
    pub noise_mean: Option<f64>,
    pub noise_sd: Option<f64>,
    /// What the keep rule's last look rested on: the candidate's runs, its
    /// gain over the reference, that gain's standard error, and the gain a
    /// keep needed.
    pub decision_runs: Option<u32>,
    pub decision_gain: Option<f64>,
    pub decision_se: Option<f64>,
    pub decision_bound: Option<f64>,
    pub proposed_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub train_secs: Option<f64>,
    pub eval_secs: Option<f64>,
    pub train_peak_rss_mb: Option<f64>,
    pub hypothesis: &'a str,
    /// The edit in one line (`optimizer.lr=0.001`, `replace model.py`).
    pub edit: String,
    /// The parameters it changes (JSON object; JSON text in CSV).
    pub changes: &'a Params,
    /// The full configuration it measures.
    pub config: &'a Params,
    pub detail: Option<&'a str>,
    pub commit: Option<&'a str>,
    pub keep_commit: Option<&'a str>,
    pub rebased_from: Option<u64>,
    pub rebased_as: Option<u64>,
    pub trial_dir: Option<String>,
    /// Every state change: `[{"status": ..., "at_ms": ...}]`.
    pub history: &'a [StatusChange],
    /// The edit as a unified diff against the parent's commit.
    pub diff: Option<&'a str>,
    /// The GPUs its train command ran on (UUIDs, comma-separated).
    pub gpus: Option<String>,
    /// The most GPU memory its train command used on any one device, MiB.
    pub gpu_peak_memory_mib: Option<u64>,
    /// Its train command's GPU utilization, mean over devices and samples.
    pub gpu_mean_util_pct: Option<f64>,
    /// A run stopped early (`[prune]`): its position and progress value at
    /// the look that stopped it, the incumbent's mean curve there, the
    /// distance behind a stop needed, and the slot-seconds it saved.
    pub pruned_at: Option<f64>,
    pub pruned_value: Option<f64>,
    pub pruned_reference: Option<f64>,
    pub pruned_bound: Option<f64>,
    pub pruned_saved_secs: Option<f64>,
    /// The change of the metric its proposer expected (score − parent's
    /// score, in the metric's units), and the change measured.
    pub expected_delta: Option<f64>,
    pub measured_delta: Option<f64>,
}

/// The columns, in order (the CSV header; the keys of a JSONL row).
pub const COLUMNS: &[&str] = &[
    "schema_version",
    "id",
    "attempt",
    "specialist",
    "surface",
    "parent",
    "status",
    "outcome",
    "label",
    "decision",
    "false_peak",
    "score",
    "parent_score",
    "gain",
    "proxy_score",
    "full_score",
    "noise_runs",
    "noise_mean",
    "noise_sd",
    "decision_runs",
    "decision_gain",
    "decision_se",
    "decision_bound",
    "proposed_ms",
    "started_ms",
    "finished_ms",
    "train_secs",
    "eval_secs",
    "train_peak_rss_mb",
    "hypothesis",
    "edit",
    "changes",
    "config",
    "detail",
    "commit",
    "keep_commit",
    "rebased_from",
    "rebased_as",
    "trial_dir",
    "history",
    "diff",
    "gpus",
    "gpu_peak_memory_mib",
    "gpu_mean_util_pct",
    "pruned_at",
    "pruned_value",
    "pruned_reference",
    "pruned_bound",
    "pruned_saved_secs",
    "expected_delta",
    "measured_delta",
];

impl<'a> Row<'a> {
    pub fn new(t: &'a Trial, direction: Option<Direction>) -> Row<'a> {
        use crate::domain::TrialStatus;
        let gpu = t.train.as_ref().and_then(|r| r.gpu.as_deref());
        let pruned = t.train.as_ref().and_then(|r| r.pruned.as_deref());
        let secs = |r: &Option<crate::domain::ProcessReport>| {
            r.as_ref().map(|r| r.duration_ms as f64 / 1000.0)
        };
        Row {
            schema_version: SCHEMA_VERSION,
            id: t.id.0,
            attempt: t.attempt,
            specialist: &t.specialist,
            surface: t.surface.as_deref(),
            parent: t.parent.map(|p| p.0),
            status: t.status.as_str(),
            outcome: t.outcome(),
            label: t.label.map(|l| l.as_str()),
            decision: t.decision.map(|d| d.as_str()),
            false_peak: t.false_peak,
            score: t.score,
            parent_score: t.parent_score,
            gain: match (direction, t.score, t.parent_score) {
                (Some(d), Some(s), Some(p)) => Some(d.gain(s, p)),
                _ => None,
            },
            proxy_score: t.proxy_score,
            full_score: t.full_score,
            noise_runs: t.noise.map(|n| n.confirmed.n),
            noise_mean: t.noise.map(|n| n.confirmed.mean),
            noise_sd: t.noise.map(|n| n.confirmed.sd),
            decision_runs: t.evidence.map(|e| e.runs),
            decision_gain: t.evidence.map(|e| e.gain),
            decision_se: t.evidence.map(|e| e.se),
            decision_bound: t.evidence.map(|e| e.bound),
            pruned_at: pruned.map(|p| p.at),
            pruned_value: pruned.map(|p| p.value),
            pruned_reference: pruned.map(|p| p.reference),
            pruned_bound: pruned.map(|p| p.bound),
            pruned_saved_secs: pruned.map(|p| p.saved_ms as f64 / 1000.0),
            proposed_ms: t.history.first().map(|c| c.at_ms),
            started_ms: t.time_of(TrialStatus::Running),
            finished_ms: finished_ms(t),
            train_secs: secs(&t.train),
            eval_secs: secs(&t.eval),
            train_peak_rss_mb: t
                .train
                .as_ref()
                .map(|r| r.peak_rss_bytes as f64 / (1u64 << 20) as f64),
            hypothesis: &t.hypothesis,
            edit: t.edit_summary(),
            changes: &t.changes,
            config: &t.config,
            detail: t.detail.as_deref(),
            commit: t.commit.as_ref().map(CommitId::as_str),
            keep_commit: t.keep_commit.as_ref().map(CommitId::as_str),
            rebased_from: t.rebased_from.map(|p| p.0),
            rebased_as: t.rebased_as.map(|p| p.0),
            trial_dir: t.trial_dir.as_ref().map(|d| d.display().to_string()),
            history: &t.history,
            diff: t.diff.as_deref(),
            gpus: gpu.map(|g| g.visible()),
            gpu_peak_memory_mib: gpu.and_then(|g| g.peak_memory_mib),
            gpu_mean_util_pct: gpu.and_then(|g| g.mean_util_pct),
            expected_delta: t.expected_delta,
            measured_delta: t.score.zip(t.parent_score).map(|(s, p)| s - p),
        }
    }

    /// The cells in [`COLUMNS`] order, as CSV text (empty for none).
    fn cells(&self) -> [String; 51] {
        fn o<T: ToString>(v: Option<T>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        fn f(v: Option<f64>) -> String {
            // Full precision (Rust's shortest round-trip form).
            v.map(|v| format!("{v:?}")).unwrap_or_default()
        }
        fn json<T: Serialize + ?Sized>(v: &T) -> String {
            serde_json::to_string(v).expect("values serialize")
        }
        [
            self.schema_version.to_string(),
            self.id.to_string(),
            self.attempt.to_string(),
            self.specialist.to_string(),
            o(self.surface),
            o(self.parent),
            self.status.to_string(),
            self.outcome.to_string(),
            o(self.label),
            o(self.decision),
            self.false_peak.to_string(),
            f(self.score),
            f(self.parent_score),
            f(self.gain),
            f(self.proxy_score),
            f(self.full_score),
            o(self.noise_runs),
            f(self.noise_mean),
            f(self.noise_sd),
            o(self.decision_runs),
            f(self.decision_gain),
            f(self.decision_se),
            f(self.decision_bound),
            o(self.proposed_ms),
            o(self.started_ms),
            o(self.finished_ms),
            f(self.train_secs),
            f(self.eval_secs),
            f(self.train_peak_rss_mb),
            self.hypothesis.to_string(),
            self.edit.clone(),
            json(self.changes),
            json(self.config),
            o(self.detail),
            o(self.commit),
            o(self.keep_commit),
            o(self.rebased_from),
            o(self.rebased_as),
            o(self.trial_dir.as_deref()),
            json(&self.history),
            o(self.diff),
            o(self.gpus.as_deref()),
            o(self.gpu_peak_memory_mib),
            f(self.gpu_mean_util_pct),
            f(self.pruned_at),
            f(self.pruned_value),
            f(self.pruned_reference),
            f(self.pruned_bound),
            f(self.pruned_saved_secs),
            f(self.expected_delta),
            f(self.measured_delta),
        ]
    }
}

fn finished_ms(t: &Trial) -> Option<u64> {
    t.history
        .iter()
        .find(|c| c.status.is_terminal())
        .map(|c| c.at_ms)
}

/// The CSV writer of exports (RFC 4180 through the csv crate): fields
/// quoted only when they hold a comma, a quote or a line break, quotes
/// doubled, CRLF line ends.
pub fn csv_writer<W: Write>(out: W) -> ::csv::Writer<W> {
    ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .quote_style(::csv::QuoteStyle::Necessary)
        .from_writer(out)
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    pub trials: u64,
}

/// Why a trial could not be read for an export (from lineage, or from a
/// running daemon): whatever error the source has.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// The trials to export, as they are read.
pub type Trials<'a> = &'a mut dyn Iterator<Item = Result<Trial, SourceError>>;

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the trials: {0}")]
    Read(SourceError),
    #[error("writing the export")]
    Write(#[from] std::io::Error),
    #[error("writing the export")]
    Json(#[from] serde_json::Error),
}

/// The csv crate's I/O errors as the I/O errors they are (a closed pipe
/// is then recognised as one).
impl From<::csv::Error> for ExportError {
    fn from(e: ::csv::Error) -> ExportError {
        match e.into_kind() {
            ::csv::ErrorKind::Io(io) => ExportError::Write(io),
            other => ExportError::Write(std::io::Error::other(format!("{other:?}"))),
        }
    }
}

/// One JSON object per line, [`COLUMNS`] as keys.
pub fn jsonl(out: &mut dyn Write, trials: Trials, ctx: &Context) -> Result<Written, ExportError> {
    let mut w = Written::default();
    for t in trials {
        let t = t.map_err(ExportError::Read)?;
        serde_json::to_writer(&mut *out, &Row::new(&t, ctx.direction))?;
        out.write_all(b"\n")?;
        w.trials += 1;
    }
    Ok(w)
}

/// A header line of [`COLUMNS`], then one line per trial; line breaks
/// inside fields are kept inside quotes.
pub fn csv(out: &mut dyn Write, trials: Trials, ctx: &Context) -> Result<Written, ExportError> {
    let mut w = Written::default();
    let mut csv = csv_writer(out);
    csv.write_record(COLUMNS)?;
    for t in trials {
        let t = t.map_err(ExportError::Read)?;
        csv.write_record(Row::new(&t, ctx.direction).cells())?;
        w.trials += 1;
    }
    csv.flush()?;
    Ok(w)
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Per-specialist figures of the report.
#[derive(Default)]
struct Agg {
    trials: u64,
    keeps: u64,
    labels: BTreeMap<&'static str, u64>,
    best_gain: Option<f64>,
}

/// How the HTML report is made.
#[derive(Clone, Copy, Debug)]
pub struct HtmlOptions {
    /// The trial table shows the newest this many trials (the plot shows all).
    pub rows: usize,
    /// Diffs longer than this are cut in the table.
    pub diff_bytes: usize,
}

impl Default for HtmlOptions {
    fn default() -> Self {
        HtmlOptions {
            rows: 2000,
            diff_bytes: 8 * 1024,
        }
    }
}

/// The self-contained report: plot, per-specialist table, trial table. The
/// plot is drawn by the page's own script from the data embedded in it, so
/// the file needs nothing but a browser.
pub fn html(
    out: &mut dyn Write,
    trials: Trials,
    incumbents: &[Incumbent],
    ctx: &Context,
    opts: HtmlOptions,
    generated_ms: u64,
) -> Result<Written, ExportError> {
    let mut w = Written::default();
    let mut outcomes: Vec<&'static str> = Vec::new();
    let mut specialists: Vec<String> = Vec::new();
    let mut aggs: BTreeMap<String, Agg> = BTreeMap::new();
    // [id, outcome index, score or null, specialist index]
    let mut points: Vec<(u64, usize, Option<f64>, usize)> = Vec::new();
    let mut rows: VecDeque<String> = VecDeque::new();
    let mut unfinished = 0u64;
    for t in trials {
        let t = t.map_err(ExportError::Read)?;
        w.trials += 1;
        let agg = aggs.entry(t.specialist.clone()).or_default();
        agg.trials += 1;
        if t.status == crate::domain::TrialStatus::Kept {
            agg.keeps += 1;
        }
        if let Some(l) = t.label {
            *agg.labels.entry(l.as_str()).or_default() += 1;
        }
        let gain = match (ctx.direction, t.score, t.parent_score) {
            (Some(d), Some(s), Some(p)) => Some(d.gain(s, p)),
            _ => None,
        };
        if t.status == crate::domain::TrialStatus::Kept {
            if let Some(g) = gain {
                agg.best_gain = Some(agg.best_gain.map_or(g, |b: f64| b.max(g)));
            }
        }
        if t.status.is_terminal() {
            let o = t.outcome();
            let oi = outcomes.iter().position(|x| *x == o).unwrap_or_else(|| {
                outcomes.push(o);
                outcomes.len() - 1
            });
            let si = specialists
                .iter()
                .position(|x| *x == t.specialist)
                .unwrap_or_else(|| {
                    specialists.push(t.specialist.clone());
                    specialists.len() - 1
                });
            points.push((t.id.0, oi, t.plotted_score(), si));
        } else {
            unfinished += 1;
        }
        if opts.rows > 0 {
            if rows.len() == opts.rows {
                rows.pop_front();
            }
            rows.push_back(trial_row(&t, gain, opts.diff_bytes));
        }
    }

    let title = format!("ratchet: {}", ctx.experiment);
    let best = incumbents.last();
    let base = incumbents.first();
    write!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{CSS}</style></head>
<body>
<h1>{title}</h1>
<p class="summary">{n} trials, {keeps} keeps, {unfinished} unfinished. Metric <b>{metric}</b> ({dir}). {best} Generated {generated} UTC.</p>
<figure>
<svg id="progress" viewBox="0 0 980 460" role="img" aria-label="progress of {metric} per trial"></svg>
<figcaption id="legend"></figcaption>
</figure>
<h2>Specialists</h2>
<table class="specialists"><thead><tr><th>specialist</th><th>trials</th><th>keeps</th><th>failures by label</th><th>best gain</th></tr></thead><tbody>
"#,
        title = html_escape(&title),
        n = w.trials,
        keeps = incumbents.len(),
        metric = html_escape(&ctx.metric),
        dir = ctx.direction.map_or("direction unknown", |d| d.as_str()),
        best = match (base, best) {
            (Some(b), Some(i)) => format!(
                "Baseline {} (trial {}), best {} (trial {}).",
                format_float(b.score),
                b.trial,
                format_float(i.score),
                i.trial
            ),
            _ => "Nothing kept yet.".into(),
        },
        generated = utc(generated_ms),
    )?;
    for (name, a) in &aggs {
        let labels: Vec<String> = a.labels.iter().map(|(l, n)| format!("{l} {n}")).collect();
        writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(name),
            a.trials,
            a.keeps,
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(", ")
            },
            a.best_gain.map(format_float).unwrap_or_else(|| "-".into())
        )?;
    }
    writeln!(out, "</tbody></table>")?;
    writeln!(
        out,
        "<h2>Trials</h2>\n<p>{}</p>\n<table class=\"trials\"><thead><tr><th>id</th><th>specialist</th><th>outcome</th><th>{}</th><th>gain</th><th>hypothesis and edit</th></tr></thead><tbody>",
        if (rows.len() as u64) < w.trials {
            format!("The newest {} of {} trials (every trial is in the plot; the JSONL export has them all).", rows.len(), w.trials)
        } else {
            "Every trial, oldest first.".into()
        },
        html_escape(&ctx.metric)
    )?;
    for r in &rows {
        out.write_all(r.as_bytes())?;
    }
    writeln!(out, "</tbody></table>")?;

    let data = serde_json::json!({
        "metric": ctx.metric,
        "direction": ctx.direction.map(|d| d.as_str()),
        "band": ctx.band,
        "outcomes": outcomes,
        "specialists": specialists,
        "points": points.iter().map(|p| serde_json::json!([p.0, p.1, p.2, p.3])).collect::<Vec<_>>(),
        "incumbents": incumbent_steps(incumbents),
    });
    // `<` only occurs inside JSON strings, where `\u003c` means the same:
    // no hypothesis can close the script element.
    let data = serde_json::to_string(&data)?.replace('<', "\\u003c");
    write!(
        out,
        "<script type=\"application/json\" id=\"ratchet-data\">{data}</script>\n<script>{PLOT_SCRIPT}</script>\n<script>{SCRIPT}</script>\n</body></html>\n"
    )?;
    Ok(w)
}

/// The plot's incumbents: `[from id, score, sd or null]`. Each step starts
/// at its trial, or at the one it replaced when that has the higher id (a
/// keep of an older proposal).
pub fn incumbent_steps(incumbents: &[Incumbent]) -> Vec<serde_json::Value> {
    incumbents
        .iter()
        .scan(0, |x, i| {
            *x = i.trial.0.max(*x);
            Some(serde_json::json!([
                *x,
                i.score,
                i.noise.map(|n| n.confirmed.sd)
            ]))
        })
        .collect()
}

fn trial_row(t: &Trial, gain: Option<f64>, diff_bytes: usize) -> String {
    let diff = match t.diff.as_deref() {
        Some(d) if !d.is_empty() => {
            let cut = crate::domain::prefix_at_most(d, diff_bytes);
            format!(
                "<details><summary>diff</summary><pre>{}{}</pre></details>",
                html_escape(cut),
                if cut.len() < d.len() {
                    "\n… (cut; `ratchet lineage show --diff` has it whole)"
                } else {
                    ""
                }
            )
        }
        _ => String::new(),
    };
    let detail = t
        .detail
        .as_deref()
        .map(|d| format!("<div class=\"detail\">{}</div>", html_escape(d)))
        .unwrap_or_default();
    format!(
        "<tr class=\"o-{outcome}\"><td>{id}</td><td>{spec}</td><td>{outcome}</td><td>{score}</td><td>{gain}</td><td><div>{hyp}</div><code>{edit}</code>{detail}{diff}</td></tr>\n",
        id = t.id,
        spec = html_escape(&t.specialist),
        outcome = t.outcome(),
        score = t.score.map(format_float).unwrap_or_else(|| "-".into()),
        gain = gain.map(format_float).unwrap_or_else(|| "-".into()),
        hyp = html_escape(&t.hypothesis),
        edit = html_escape(&t.edit_summary()),
    )
}

/// `2026-11-23 10:04:05` for ms since the epoch (UTC).
pub fn utc(ms: u64) -> String {
    // humantime writes years up to 9999 (and panics past it).
    const LAST: u64 = 253_402_300_799;
    if ms / 1000 > LAST {
        return format!("{ms} ms after 1970");
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ms / 1000);
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    iso.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The report's and the dashboard's common style: page, plot, tables.
pub const CSS: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.summary{color:#444}
figure{margin:12px 0}svg{width:100%;max-width:980px;height:auto;border:1px solid #ddd;background:#fff}
figcaption{font-size:13px;color:#333;margin-top:6px}
figcaption span{display:inline-block;margin-right:14px}
figcaption i{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6}
tr.o-kept td:nth-child(3){color:#1b7f3b;font-weight:600}
td code{font-size:12px;color:#555}
.detail{font-size:12px;color:#8a3b12}
pre{font-size:12px;background:#f8f8f8;padding:6px;overflow-x:auto;max-width:900px}
.axis text{font-size:11px;fill:#555}.axis line,.axis path{stroke:#999}
"#;

/// The plot's drawing function, `ratchetPlot(svg, legend, data)` (also
/// the dashboard's).
pub const PLOT_SCRIPT: &str = include_str!("export/plot.js");

/// Draws the report's plot from `#ratchet-data`; script errors are left in
/// `data-script-errors` on the body (the Chromium test reads it).
const SCRIPT: &str = r#"
window.addEventListener('error', function (e) {
  document.body.setAttribute('data-script-errors', String(e.message));
});
ratchetPlot(document.getElementById('progress'), document.getElementById('legend'),
            JSON.parse(document.getElementById('ratchet-data').textContent));
"#;

pub mod autoresearch;

#[cfg(test)]
mod tests;
