//! `ratchet status` as text: the daemon's live status and what lineage holds.

use super::control::DaemonStatus;
use crate::domain::{format_float, TrialStatus};

/// Slot time since the executor started: busy, and idle while a proposal
/// was on its way (the loop's own cost).
fn utilization(e: &crate::actors::messages::ExecutorStatus) -> String {
    if e.slot_total_s < 1.0 {
        return String::new();
    }
    let share = |s: f64| 100.0 * s / e.slot_total_s;
    let pruned = if e.pruned > 0 {
        format!(
            "; {} run(s) stopped early, {:.0} slot-seconds saved",
            e.pruned, e.slot_saved_s
        )
    } else {
        String::new()
    };
    let preflight = if e.preflight_failed > 0 {
        format!(
            "; {} trial(s) failed pre-flight, {:.0} slot-seconds of training saved",
            e.preflight_failed, e.preflight_saved_s
        )
    } else {
        String::new()
    };
    format!(
        "; slot time since start: {:.1}% busy, {:.1}% idle waiting for a proposal, {:.1}% held for confirmations{pruned}{preflight}",
        share(e.slot_busy_s),
        share(e.slot_starved_s),
        share(e.slot_held_s)
    )
}

/// `0,1`: a GPU slot's device indices.
fn gpu_indices(g: &crate::gpu::GpuSlot) -> String {
    let ix: Vec<String> = g.devices.iter().map(|d| d.index.to_string()).collect();
    ix.join(",")
}

/// `ratchet status` as text.
pub fn render_status(s: &DaemonStatus, now: u64) -> String {
    let e = &s.live.executor;
    let mut out = format!(
        "ratchet daemon: pid {}, up {}; experiment `{}` ({} {})\n",
        s.pid,
        elapsed(now.saturating_sub(s.started_ms)),
        s.experiment,
        s.metric,
        s.direction
    );
    if let Some(why) = &s.stopping {
        out += &format!("stopping: {why}; running trials may finish\n");
    }
    out += &format!(
        "slots: {}/{} busy, {} queued{}{}\n",
        e.running.len(),
        e.slots,
        e.queued.len(),
        if e.draining { ", draining" } else { "" },
        utilization(e)
    );
    if !e.gpus.is_empty() {
        let out_of_rotation = e.gpus.iter().filter(|g| g.out.is_some()).count();
        out += &format!(
            "gpu slots: {} in rotation{}\n",
            e.gpus.len() - out_of_rotation,
            if out_of_rotation > 0 {
                format!(", {out_of_rotation} out of rotation")
            } else {
                String::new()
            }
        );
        for g in &e.gpus {
            let names: Vec<String> = g
                .devices
                .iter()
                .map(|d| format!("{} ({})", d.name, d.uuid))
                .collect();
            let state = match (&g.out, g.running) {
                (Some(why), _) => format!("out of rotation: {why}"),
                (None, Some(h)) => match (h.seed, h.eval) {
                    (0, false) => format!("#{} training", h.trial.0),
                    (0, true) => format!("#{} eval", h.trial.0),
                    (s, false) => format!("#{} seed {s}", h.trial.0),
                    (s, true) => format!("#{} seed {s} eval", h.trial.0),
                },
                (None, None) => "free".into(),
            };
            out += &format!(
                "  GPU {:<6} {state}  [{}]\n",
                gpu_indices(g),
                names.join(", ")
            );
        }
    }
    let running: Vec<String> = e
        .running
        .iter()
        .map(|r| {
            let what = if r.seed == 0 {
                "training".to_string()
            } else {
                format!("seed {}", r.seed)
            };
            format!(
                "  #{:<6} {:<16} {:<12} {:>9}{}{}{}",
                r.trial.0,
                r.specialist,
                what,
                elapsed(now.saturating_sub(r.since_ms)),
                if r.attempt > 1 {
                    format!("  attempt {}", r.attempt)
                } else {
                    String::new()
                },
                match (r.job, &r.job_state) {
                    (Some(j), Some(st)) => format!("  Slurm job {j} {st}"),
                    (Some(j), None) => format!("  Slurm job {j}"),
                    _ => String::new(),
                },
                e.gpus
                    .iter()
                    .find(|g| {
                        g.running
                            .is_some_and(|h| (h.trial, h.seed, h.eval) == (r.trial, r.seed, false))
                    })
                    .map(|g| format!("  GPU {}", gpu_indices(g)))
                    .unwrap_or_default()
            )
        })
        .chain(
            s.live
                .active
                .iter()
                .filter(|t| t.status == TrialStatus::Evaluating)
                .filter(|t| !e.running.iter().any(|r| r.trial == t.id))
                .map(|t| {
                    let since = t.time_of(TrialStatus::Evaluating).unwrap_or(now);
                    format!(
                        "  #{:<6} {:<16} {:<12} {:>9}",
                        t.id.0,
                        t.specialist,
                        "evaluating",
                        elapsed(now.saturating_sub(since))
                    )
                }),
        )
        .collect();
    if !running.is_empty() {
        out += "running:\n";
        out += &running.join("\n");
        out += "\n";
    }
    out += &render_lineage(&s.live.lineage, &s.live.specialists, Some(e), now);
    out
}

/// The part of `status` that lineage alone knows (also shown with no
/// daemon running): specialists and their pause state, the incumbent and
/// its history, trial counts.
pub fn render_lineage(
    l: &crate::lineage::Summary,
    specialists: &[String],
    executor: Option<&crate::actors::messages::ExecutorStatus>,
    now: u64,
) -> String {
    let mut out = String::from("specialists:\n");
    for name in specialists {
        let live = executor.and_then(|e| e.specialists.iter().find(|s| &s.name == name));
        let state = match l.paused.get(name) {
            Some(at) => format!("paused ({} ago)", elapsed(now.saturating_sub(*at))),
            None => live.map(|s| s.state.clone()).unwrap_or_else(|| "-".into()),
        };
        let kept = live
            .map(|s| format!("  kept {} of {}", s.outcomes.kept, s.outcomes.decided))
            .unwrap_or_default();
        out += &format!("  {name:<16} {state:<10}{kept}\n");
        if let Some(e) = l.llm.get(name) {
            // "model: 2378 prompt tokens at 94/s, ..."; the model is in the config.
            let speed = e.detail.split_once(": ").map_or(&*e.detail, |(_, s)| s);
            out += &format!(
                "    last reply {} ago: {speed}\n",
                elapsed(now.saturating_sub(e.at_ms))
            );
        }
    }
    match &l.incumbent {
        Some(i) => {
            let band = i
                .noise
                .filter(|n| n.confirmed.n > 1)
                .map(|n| {
                    format!(
                        " (± {} over {} runs)",
                        format_float(n.confirmed.sd),
                        n.confirmed.n
                    )
                })
                .unwrap_or_default();
            out += &format!(
                "incumbent: #{} score {}{band}, since {} ago\n",
                i.trial,
                format_float(i.score),
                elapsed(now.saturating_sub(i.since_ms))
            );
            let steps: Vec<String> = l
                .incumbents
                .iter()
                .map(|i| format!("#{} {}", i.trial, format_float(i.score)))
                .collect();
            let earlier = l.keeps.saturating_sub(l.incumbents.len() as u64);
            out += &format!(
                "history: {}{}\n",
                if earlier > 0 {
                    format!("({earlier} earlier) ")
                } else {
                    String::new()
                },
                steps.join(" -> ")
            );
        }
        None => out += "incumbent: none yet\n",
    }
    out += &format!(
        "trials: {} ({} active), {} finished in the last hour\n",
        l.trials, l.active, l.finished_last_hour
    );
    if !l.outcomes.is_empty() {
        let mut o: Vec<(&String, &u64)> = l.outcomes.iter().collect();
        o.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let o: Vec<String> = o.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out += &format!("outcomes: {}\n", o.join(", "));
    }
    out
}

/// `3h02m`, `4m05s`, `12s`.
fn elapsed(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=172_799 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}
