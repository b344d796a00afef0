//! `ratchet bench loop`: the research loop on a no-op experiment, to measure
//! what ratchet itself costs per trial and how much slot time it leaves idle.
//!
//! The experiment's train command is `true` and its evals are one `awk` line
//! that scores the recipe (a quadratic bowl), so almost all the time is
//! ratchet's: two search specialists propose, lineage records, the executor
//! commits, exports and spawns, the evaluator screens on proxy and full
//! eval, confirms improvements with two seed re-runs and moves the
//! incumbent, like a real run. The actor tree runs in this process with the
//! timing probes on (`crate::probe`), which add up each trial's time per
//! stage; the executor integrates its own slot occupancy.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::Actor;
use tokio::sync::mpsc;

use crate::actors::messages::SupervisorMsg;
use crate::actors::supervisor::{Supervisor, SupervisorArgs};
use crate::config::Config;
use crate::domain::{TrialId, TrialStatus};
use crate::lineage::actor::RunEvent;
use crate::probe::{self, Stage, STAGES};

pub(super) const EXPERIMENT: &str = r#"# A no-op experiment for `ratchet bench loop`: nothing trains, the eval
# scores the recipe's numbers, so the loop's own cost is what is measured.
name = "noop"
recipe = "recipe.toml"
metric = "score"
direction = "minimize"
budget_secs = 1
timeout_secs = 30
train = ["true"]

[eval]
proxy = ["awk", "-F", "=", "/^[xy] *=/ { v = $2 + 0; s += (v - 0.3) ^ 2 } END { printf \"score=%.6f\\n\", s }", "recipe.toml"]
full = ["awk", "-F", "=", "/^[xy] *=/ { v = $2 + 0; s += (v - 0.3) ^ 2 } END { printf \"score=%.6f\\n\", s }", "recipe.toml"]
timeout_secs = 30

[noise]
seeds = 2
false_keep_rate = 0.05

[[surface]]
name = "a"
[surface.params]
"a.x" = { type = "float", min = 0.0, max = 1.0 }
"a.y" = { type = "float", min = 0.0, max = 1.0 }

[[surface]]
name = "b"
[surface.params]
"b.x" = { type = "float", min = 0.0, max = 1.0 }
"b.y" = { type = "float", min = 0.0, max = 1.0 }
"#;

pub(super) const RECIPE: &str = "[a]\nx = 0.9\ny = 0.9\n\n[b]\nx = 0.9\ny = 0.9\n";

pub(super) fn specialists(slots: usize, confirm_first: bool) -> String {
    format!(
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\nslots = {slots}\nseed = 0\nconfirm_first = {confirm_first}\n\n\
         [[specialist]]\nname = \"a\"\nsurface = \"a\"\nkind = \"search\"\ninstructions = \"agent.md\"\n\n\
         [[specialist]]\nname = \"b\"\nsurface = \"b\"\nkind = \"search\"\ninstructions = \"agent.md\"\n"
    )
}

pub fn loop_command(
    trials: u64,
    slots: usize,
    confirm_first: bool,
    dir: Option<PathBuf>,
    keep: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(trials >= 10, "--trials must be at least 10");
    anyhow::ensure!(slots >= 1, "--slots must be at least 1");
    let root = super::root("loop", dir)?;
    std::fs::create_dir_all(root.join("experiment"))?;
    std::fs::write(root.join("experiment/experiment.toml"), EXPERIMENT)?;
    std::fs::write(root.join("experiment/recipe.toml"), RECIPE)?;
    std::fs::write(root.join("agent.md"), "Search the surface.\n")?;
    std::fs::write(
        root.join("specialists.toml"),
        specialists(slots, confirm_first),
    )?;
    let config = Config::load(&root.join("specialists.toml"))
        .map_err(|e| anyhow::anyhow!("the bench's own configuration is invalid: {e}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(drive(config, trials));
    drop(rt);
    let result = result.and_then(|m| report(&m, trials, slots, &root));
    if keep {
        eprintln!("kept: {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// What a run of the loop gave.
struct Measured {
    wall: Duration,
    /// Time per stage of each trial, from the probes.
    spans: HashMap<TrialId, HashMap<Stage, Duration>>,
    outcomes: HashMap<TrialId, TrialStatus>,
    slot_busy_s: f64,
    slot_starved_s: f64,
    slot_held_s: f64,
    slot_total_s: f64,
}

async fn drive(config: Config, trials: u64) -> anyhow::Result<Measured> {
    probe::enable();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let args = SupervisorArgs {
        config: Arc::new(config),
        observer: Some(tx),
        max_trials: Some(trials),
    };
    let started = Instant::now();
    let (supervisor, handle) = Actor::spawn(None, Supervisor, args)
        .await
        .map_err(|e| anyhow::anyhow!("could not start: {e}"))?;
    let mut seen: HashMap<TrialId, TrialStatus> = HashMap::new();
    let mut drained = false;
    let mut done = 0u64;
    let progress = std::io::stderr();
    while !(drained && seen.values().all(|s| s.is_terminal())) {
        match rx.recv().await {
            Some(RunEvent::Trial(t)) => {
                let before = seen.insert(t.id, t.status);
                if t.status.is_terminal() && before != Some(t.status) {
                    done += 1;
                    if done.is_multiple_of(100) {
                        let _ = writeln!(
                            progress.lock(),
                            "{done} trials finished, {:.1} s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            Some(RunEvent::Drained { .. }) => drained = true,
            None => anyhow::bail!("the actor tree stopped before the trials finished"),
        }
    }
    let wall = started.elapsed();
    let status = ractor::call_t!(supervisor, SupervisorMsg::Status, 30_000)
        .map_err(|e| anyhow::anyhow!("status: {e}"))?
        .map_err(|e| anyhow::anyhow!("status: {e}"))?;
    supervisor.stop(None);
    let _ = handle.await;
    Ok(Measured {
        wall,
        spans: probe::take(),
        outcomes: seen,
        slot_busy_s: status.executor.slot_busy_s,
        slot_starved_s: status.executor.slot_starved_s,
        slot_held_s: status.executor.slot_held_s,
        slot_total_s: status.executor.slot_total_s,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn report(m: &Measured, trials: u64, slots: usize, root: &Path) -> anyhow::Result<()> {
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut counts: HashMap<TrialStatus, u64> = HashMap::new();
    for s in m.outcomes.values() {
        *counts.entry(*s).or_default() += 1;
    }
    let count = |s| counts.get(&s).copied().unwrap_or(0);
    writeln!(
        out,
        "ratchet bench loop: {} trials of a no-op experiment on {slots} slot(s), lineage in {}",
        m.outcomes.len(),
        root.display()
    )?;
    writeln!(
        out,
        "outcomes: {} kept, {} discarded, {} failed, {} interrupted",
        count(TrialStatus::Kept),
        count(TrialStatus::Discarded),
        count(TrialStatus::Failed),
        count(TrialStatus::Interrupted)
    )?;
    let wall = m.wall.as_secs_f64();
    writeln!(
        out,
        "wall: {wall:.2} s, {:.1} trials/s",
        m.outcomes.len() as f64 / wall
    )?;
    anyhow::ensure!(
        m.outcomes.len() as u64 >= trials,
        "only {} of {trials} trials were run",
        m.outcomes.len()
    );

    // Per trial: ratchet's own time (every stage but the child processes).
    let mut overhead: Vec<Duration> = Vec::new();
    let mut child: Vec<Duration> = Vec::new();
    let mut per_stage: HashMap<Stage, Vec<Duration>> = HashMap::new();
    for spans in m.spans.values() {
        let own: Duration = spans
            .iter()
            .filter(|(s, _)| !matches!(s, Stage::Child | Stage::Waiting))
            .map(|(_, d)| *d)
            .sum();
        overhead.push(own);
        child.push(spans.get(&Stage::Child).copied().unwrap_or_default());
        for stage in STAGES {
            per_stage
                .entry(stage)
                .or_default()
                .push(spans.get(&stage).copied().unwrap_or_default());
        }
    }
    overhead.sort();
    child.sort();
    writeln!(
        out,
        "orchestration per trial (propose + record + dispatch + reap + evaluate): p50 {}, p99 {}, max {}",
        ms(percentile(&overhead, 0.5)),
        ms(percentile(&overhead, 0.99)),
        ms(*overhead.last().unwrap_or(&Duration::ZERO)),
    )?;
    for stage in STAGES {
        let mut v = per_stage.remove(&stage).unwrap_or_default();
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
        writeln!(
            out,
            "  {:<16} mean {:>9}  p50 {:>9}  p99 {:>9}",
            stage.as_str(),
            ms(mean),
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99))
        )?;
    }
    let total = m.slot_total_s;
    let idle_other = (total - m.slot_busy_s - m.slot_starved_s - m.slot_held_s).max(0.0);
    writeln!(
        out,
        "slot time: {total:.2} s; busy {:.2}%, idle while a proposal was on its way {:.3}%, \
         held while a candidate was confirmed {:.2}%, idle with no work to give (baseline, end) {:.2}%",
        100.0 * m.slot_busy_s / total,
        100.0 * m.slot_starved_s / total,
        100.0 * m.slot_held_s / total,
        100.0 * idle_other / total
    )?;
    writeln!(
        out,
        "executor idle fraction (slot time with no run while work was available): {:.3}%",
        100.0 * m.slot_starved_s / total
    )?;
    Ok(())
}
