//! `lineage export --format autoresearch`: the `results.tsv` that
//! autoresearch's program.md defines (`commit`, the metric, `memory_gb`,
//! `status`, `description`, tab-separated), so its analysis notebook and
//! progress plot read a ratchet lineage unchanged.

use std::io::Write;

use super::{Context, ExportError, Trials, Written};
use crate::domain::{Trial, TrialStatus};

/// One row per trial that ran, in lineage order: `keep` (kept), `discard`
/// (measured and not kept, or failed with a score, such as a gate miss) or
/// `crash` (its run failed without a score: the metric is written
/// `0.000000` and the memory `0.0`, as program.md asks). Proposals refused
/// before they ran (an illegal edit, a search text not found, a duplicate),
/// trials still running and interrupted ones are left out: autoresearch
/// logs runs.
pub fn tsv(out: &mut dyn Write, trials: Trials, ctx: &Context) -> Result<Written, ExportError> {
    let mut w = Written::default();
    writeln!(
        out,
        "commit\t{}\tmemory_gb\tstatus\tdescription",
        ctx.metric
    )?;
    for t in trials {
        let t = t.map_err(ExportError::Read)?;
        let Some((status, score)) = outcome(&t) else {
            continue;
        };
        // A trial kept over a moved incumbent is its keep commit.
        let commit: String = match t.keep_commit.as_ref().or(t.commit.as_ref()) {
            Some(c) => c.to_string().chars().take(7).collect(),
            None => "-".into(),
        };
        let memory = if status == "crash" {
            0.0
        } else {
            memory_gb(&t)
        };
        writeln!(
            out,
            "{commit}\t{:.6}\t{memory:.1}\t{status}\t{}",
            score.unwrap_or(0.0),
            description(&t)
        )?;
        w.trials += 1;
    }
    Ok(w)
}

/// The status column and the score written, or `None` for a trial that
/// is not a row.
fn outcome(t: &Trial) -> Option<(&'static str, Option<f64>)> {
    t.train.as_ref()?;
    match t.status {
        TrialStatus::Kept => Some(("keep", t.score)),
        TrialStatus::Discarded => Some(("discard", t.score)),
        TrialStatus::Failed => match t.score.filter(|s| s.is_finite()) {
            Some(s) => Some(("discard", Some(s))),
            None => Some(("crash", None)),
        },
        _ => None,
    }
}

/// Peak memory in GB: the run's printed `peak_vram_mb` (autoresearch's
/// definition), else the GPU peak ratchet saw, else the process group's
/// resident peak.
fn memory_gb(t: &Trial) -> f64 {
    let Some(train) = &t.train else {
        return 0.0;
    };
    if let Some(mb) = train.metrics.get("peak_vram_mb") {
        return mb / 1024.0;
    }
    if let Some(mib) = train.gpu.as_ref().and_then(|g| g.peak_memory_mib) {
        return mib as f64 / 1024.0;
    }
    train.peak_rss_bytes as f64 / (1u64 << 30) as f64
}

/// The hypothesis on one line, with what failed after it (tabs and line
/// breaks would break the columns).
fn description(t: &Trial) -> String {
    let mut d = t.hypothesis.clone();
    if let (Some(label), TrialStatus::Failed) = (t.label, t.status) {
        d.push_str(&format!(" ({label})"));
    }
    d.split_whitespace().collect::<Vec<_>>().join(" ")
}
