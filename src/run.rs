//! `ratchet run`: the actor tree in the foreground, with a live progress display
//! of every trial event, until the trial budget is spent, the specialists have
//! nothing left to propose, or Ctrl-C.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ractor::Actor;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::actors::supervisor::{Supervisor, SupervisorArgs};
use crate::config::Config;
use crate::domain::{format_float, Decision, Trial, TrialId, TrialStatus};
use crate::lineage::actor::RunEvent;

pub mod live;

/// What a foreground run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub trials: u64,
    pub kept: u64,
    pub discarded: u64,
    pub failed: BTreeMap<String, u64>,
    pub interrupted: bool,
    /// Discarded trials whose run was stopped early (`[prune]`), and the
    /// slot time that saved.
    pub pruned: u64,
    pub saved_ms: u64,
    /// Failed trials the pre-flight check stopped before they trained, and
    /// the train time (their budget) that saved.
    pub preflight: u64,
    pub preflight_saved_ms: u64,
}

pub async fn run(config: Config, max_trials: Option<u64>) -> anyhow::Result<RunSummary> {
    let config = Arc::new(config);
    let exp = &config.experiment.file;
    println!(
        "ratchet: experiment `{}` ({} {}), {} specialist(s), {}, budget {}s per trial{}",
        exp.name,
        exp.metric,
        exp.direction.as_str(),
        config.specialists.len(),
        match &config.gpus {
            // Decided once the GPUs are found (logged then).
            Some(_) => "GPU slots".to_string(),
            None => format!("{} slot(s)", config.slots),
        },
        exp.budget_secs,
        max_trials
            .map(|n| format!(", {n} trial(s)"))
            .unwrap_or_default()
    );
    println!("lineage: {}", config.lineage_dir.display());

    // The control socket, so `ratchet status`, `pause` and `lineage ...`
    // work from another terminal while this runs. Another ratchet on the
    // same socket is an error, and so is a dashboard address (`daemon.http`)
    // that cannot be had; a socket that cannot be made is not.
    let mut control = match crate::daemon::Control::bind(&config) {
        Ok(c) => Some(c),
        Err(
            e @ (crate::daemon::DaemonError::Control(crate::daemon::control::ControlError::InUse(
                _,
            ))
            | crate::daemon::DaemonError::Http { .. }),
        ) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: status and lineage reads from another terminal will wait for this run");
            None
        }
    };

    let (tx, mut rx) = mpsc::unbounded_channel();
    let args = SupervisorArgs {
        config: config.clone(),
        observer: Some(tx),
        max_trials,
    };
    let (supervisor, mut handle) = Actor::spawn(None, Supervisor, args)
        .await
        .map_err(|e| anyhow::anyhow!("could not start: {e}"))?;
    if let Some(c) = &mut control {
        if let Err(e) = c.serve(&config, supervisor.clone()).await {
            tracing::warn!(error = %e, "control socket not served");
        }
    }

    let started = Instant::now();
    let mut summary = RunSummary::default();
    let mut seen: HashMap<TrialId, TrialStatus> = HashMap::new();
    let mut drained = false;
    let mut confirming = std::collections::HashSet::new();
    // The incumbent while it is trained with the seeds it lacks (a keep
    // that was clear early): the run ends once its runs are in.
    let mut measuring: Option<TrialId> = None;
    let full = exp.eval.full.is_some();
    let mut baseline: Option<f64> = None;
    let mut incumbent: Option<(TrialId, f64)> = None;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut supervisor_gone = false;
    let mut live = live::Live::new(max_trials, exp.budget_secs);
    let mut redraw = tokio::time::interval(std::time::Duration::from_secs(1));

    loop {
        if drained && measuring.is_none() && seen.values().all(|s| s.is_terminal()) {
            break;
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(RunEvent::Trial(t)) => {
                    // The incumbent: the trial kept last (its id may be
                    // lower than the one it replaced), updated as seed runs
                    // are added to it.
                    let current = incumbent.is_some_and(|(i, _)| i == t.id);
                    let newly = seen.get(&t.id) != Some(&TrialStatus::Kept);
                    if t.status == TrialStatus::Kept && (newly || current) {
                        let open = t.seed_runs.iter().any(|r| !r.finished(full));
                        measuring = open.then_some(t.id);
                        if current {
                            // Its mean over the seeds added since.
                            incumbent = t.score.map(|s| (t.id, s));
                        }
                    }
                    let changed = seen.insert(t.id, t.status) != Some(t.status);
                    live.trial(t.id, t.status);
                    if t.status == TrialStatus::Evaluating
                        && !t.seed_runs.is_empty()
                        && confirming.insert(t.id)
                    {
                        live.line(&confirming_line(&t));
                    }
                    if !changed {
                        continue;
                    }
                    if t.status.is_terminal() {
                        summary.trials += 1;
                        match t.status {
                            TrialStatus::Kept => summary.kept += 1,
                            TrialStatus::Discarded => {
                                summary.discarded += 1;
                                if let Some(p) = t.train.as_ref().and_then(|r| r.pruned.as_ref()) {
                                    summary.pruned += 1;
                                    summary.saved_ms += p.saved_ms;
                                }
                            }
                            _ => *summary.failed.entry(t.label.map(|l| l.to_string()).unwrap_or_else(|| t.status.to_string())).or_default() += 1,
                        }
                        if t.status == TrialStatus::Failed && t.preflight.is_some() && t.train.is_none() {
                            summary.preflight += 1;
                            summary.preflight_saved_ms += exp.budget_secs * 1000;
                        }
                        if t.status == TrialStatus::Kept {
                            incumbent = t.score.map(|s| (t.id, s));
                            if t.specialist == "baseline" {
                                baseline = t.score;
                            }
                        }
                    }
                    if matches!(t.status, TrialStatus::Running) || t.status.is_terminal() {
                        live.line(&progress_line(&t, &exp.metric, incumbent));
                    }
                    live.refresh(summary.trials, incumbent, &exp.metric);
                }
                Some(RunEvent::Drained { .. }) => drained = true,
                None => break,
            },
            _ = redraw.tick() => live.refresh(summary.trials, incumbent, &exp.metric),
            r = &mut handle => {
                supervisor_gone = true;
                if let Err(e) = r {
                    anyhow::bail!("ratchet stopped unexpectedly: {e}");
                }
                break;
            }
            _ = async { tokio::select! { _ = sigint.recv() => {}, _ = sigterm.recv() => {} } } => {
                live.finish();
                eprintln!("\nratchet: interrupted; killing running trials and recording them (signal again to quit at once)");
                summary.interrupted = true;
                break;
            }
        }
    }
    live.finish();
    if !supervisor_gone {
        supervisor.stop(None);
        tokio::select! {
            _ = &mut handle => {}
            _ = async { tokio::select! { _ = sigint.recv() => {}, _ = sigterm.recv() => {} } } => {
                eprintln!("ratchet: second signal, quitting now; the next start recovers in-flight trials");
                std::process::exit(130);
            }
        }
    }
    println!(
        "done: {} trial(s) in {:.1}s: {} kept, {} discarded{}, {} failed{}{}",
        summary.trials,
        started.elapsed().as_secs_f64(),
        summary.kept,
        summary.discarded,
        if summary.pruned > 0 {
            format!(
                " ({} stopped early, {:.0} slot-seconds saved)",
                summary.pruned,
                summary.saved_ms as f64 / 1000.0
            )
        } else {
            String::new()
        },
        summary.failed.values().sum::<u64>(),
        if summary.failed.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                summary
                    .failed
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if summary.preflight > 0 {
            format!(
                "; {} failed pre-flight ({:.0} slot-seconds of training saved)",
                summary.preflight,
                summary.preflight_saved_ms as f64 / 1000.0
            )
        } else {
            String::new()
        }
    );
    if let Some((id, score)) = incumbent {
        let vs = baseline
            .map(|b| format!(" (baseline {}, change {:+.4})", format_float(b), score - b))
            .unwrap_or_default();
        println!(
            "incumbent: trial {id} {}={}{vs}",
            exp.metric,
            format_float(score)
        );
    }
    Ok(summary)
}

/// A trial that passed its screens (or the incumbent, re-measured) is
/// trained again with other seeds.
fn confirming_line(t: &Trial) -> String {
    let seeds: Vec<String> = t.seed_runs.iter().map(|r| r.seed.to_string()).collect();
    let scores = match (t.proxy_score, t.full_score) {
        (Some(p), Some(f)) => format!(" (proxy {}, full {})", format_float(p), format_float(f)),
        (Some(p), None) => format!(" (proxy {})", format_float(p)),
        _ => String::new(),
    };
    format!(
        "#{:<5} {:<14} confirming  passed its screens{scores}; training again with seed(s) {}",
        t.id.0,
        t.specialist,
        seeds.join(", ")
    )
}

fn progress_line(t: &Trial, metric: &str, incumbent: Option<(TrialId, f64)>) -> String {
    let head = format!("#{:<5} {:<14}", t.id.0, t.specialist);
    match t.status {
        TrialStatus::Running => format!("{head} running     {}", t.hypothesis),
        TrialStatus::Kept => format!(
            "{head} kept        {metric}={}  new incumbent",
            t.score.map(format_float).unwrap_or_default()
        ),
        TrialStatus::Discarded if t.decision == Some(Decision::Rebased) => format!(
            "{head} rebased     {metric}={}  won against trial {}; re-applied onto the new incumbent as #{}",
            t.score.map(format_float).unwrap_or_default(),
            t.parent.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            t.rebased_as.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        ),
        TrialStatus::Discarded if t.decision == Some(Decision::Pruned) => {
            match t.train.as_ref().and_then(|r| r.pruned.as_ref()) {
                Some(p) => format!(
                    "{head} pruned      {}={} at {} of {}, behind #{}'s {} by more than {}",
                    p.metric,
                    format_float(p.value),
                    format_float(p.at),
                    format_float(p.end),
                    p.against,
                    format_float(p.reference),
                    format_float(p.bound),
                ),
                None => format!("{head} pruned"),
            }
        }
        TrialStatus::Discarded => format!(
            "{head} discarded   {metric}={}  {}{} (incumbent {})",
            t.score.map(format_float).unwrap_or_default(),
            t.decision.map(|d| d.as_str()).unwrap_or(""),
            if t.false_peak { ", false peak" } else { "" },
            incumbent
                .map(|(id, s)| format!("{}, trial {id}", format_float(s)))
                .unwrap_or_default()
        ),
        _ => format!(
            "{head} {:<11} {}",
            t.label
                .map(|l| l.to_string())
                .unwrap_or_else(|| t.status.to_string()),
            t.detail.clone().unwrap_or_default()
        ),
    }
}
