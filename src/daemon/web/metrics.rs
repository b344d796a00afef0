//! `/metrics`: the daemon in Prometheus's text format, made anew from the
//! live status and lineage's counts at each scrape (counters are totals
//! ratchet already keeps, so a fresh registry per scrape loses nothing).

use std::collections::BTreeMap;

use prometheus::{CounterVec, Encoder, Gauge, GaugeVec, IntCounterVec, Opts, Registry};

use crate::daemon::control::DaemonStatus;
use crate::llm::usage::Usage;

/// The text exposition of `s`, lineage's terminal trials by (specialist,
/// outcome) and this process's LLM usage by specialist.
/// `idle_floor` is the idle slot time last exported: a counter must not go
/// down, and idle (all slot time less busy and held) can for a while after
/// a reload lowers the slots while more runs than that still go on.
pub fn encode(
    s: &DaemonStatus,
    by_specialist: &BTreeMap<(String, String), u64>,
    llm: &BTreeMap<String, Usage>,
    idle_floor: &mut f64,
) -> Result<String, prometheus::Error> {
    let r = Registry::new();
    let e = &s.live.executor;

    let trials = IntCounterVec::new(
        Opts::new(
            "ratchet_trials_total",
            "Trials that reached an outcome (kept, within_noise, a failure label, ...)",
        ),
        &["outcome", "specialist"],
    )?;
    for ((specialist, outcome), n) in by_specialist {
        trials.with_label_values(&[outcome, specialist]).inc_by(*n);
    }
    r.register(Box::new(trials))?;

    gauge(
        &r,
        "ratchet_trials_active",
        "Trials not yet terminal (queued, running, evaluating)",
        s.live.lineage.active as f64,
    )?;
    gauge(
        &r,
        "ratchet_slots",
        "Trial slots (runs at once)",
        e.slots as f64,
    )?;
    gauge(
        &r,
        "ratchet_slots_busy",
        "Slots with a run in them",
        e.running.len() as f64,
    )?;
    gauge(
        &r,
        "ratchet_queue_length",
        "Runs waiting for a slot",
        e.queued.len() as f64,
    )?;
    gauge(
        &r,
        "ratchet_start_time_seconds",
        "When this ratchet started (Unix time)",
        s.started_ms as f64 / 1000.0,
    )?;
    if let Some(inc) = &s.live.lineage.incumbent {
        gauge(
            &r,
            "ratchet_incumbent_score",
            "The incumbent's score on the experiment's metric",
            inc.score,
        )?;
        gauge(
            &r,
            "ratchet_incumbent_trial",
            "The incumbent's trial id",
            inc.trial.0 as f64,
        )?;
    }

    let slot_seconds = CounterVec::new(
        Opts::new("ratchet_slot_seconds_total", "Slot time since start: busy (a run in the slot), held (kept free while a candidate is confirmed), idle (the rest)"),
        &["state"],
    )?;
    let idle = (e.slot_total_s - e.slot_busy_s - e.slot_held_s).max(*idle_floor);
    *idle_floor = idle;
    for (state, v) in [
        ("busy", e.slot_busy_s),
        ("held", e.slot_held_s),
        ("idle", idle),
    ] {
        slot_seconds.with_label_values(&[state]).inc_by(v.max(0.0));
    }
    r.register(Box::new(slot_seconds))?;

    let paused = GaugeVec::new(
        Opts::new(
            "ratchet_specialist_paused",
            "1 while a specialist is paused",
        ),
        &["specialist"],
    )?;
    for sp in &e.specialists {
        paused
            .with_label_values(&[&sp.name])
            .set(if sp.state == "paused" { 1.0 } else { 0.0 });
    }
    r.register(Box::new(paused))?;

    let requests = IntCounterVec::new(
        Opts::new(
            "ratchet_llm_requests_total",
            "Requests sent to LLMs (retries included) since start",
        ),
        &["specialist"],
    )?;
    let tokens = IntCounterVec::new(
        Opts::new(
            "ratchet_llm_tokens_total",
            "Prompt and reply tokens of LLM requests since start",
        ),
        &["specialist"],
    )?;
    // Every configured specialist is listed (one that asks no model at 0),
    // so the series exist before the first request.
    let mut usage = llm.clone();
    for sp in &e.specialists {
        usage.entry(sp.name.clone()).or_default();
    }
    for (name, u) in &usage {
        requests.with_label_values(&[name]).inc_by(u.requests);
        tokens.with_label_values(&[name]).inc_by(u.tokens);
    }
    r.register(Box::new(requests))?;
    r.register(Box::new(tokens))?;

    if !e.gpus.is_empty() {
        let labels = ["gpu", "uuid", "name"];
        let util = GaugeVec::new(
            Opts::new(
                "ratchet_gpu_utilization_ratio",
                "A GPU's utilization at nvidia-smi's last sample (0 to 1)",
            ),
            &labels,
        )?;
        let used = GaugeVec::new(
            Opts::new(
                "ratchet_gpu_memory_used_bytes",
                "A GPU's memory in use at nvidia-smi's last sample",
            ),
            &labels,
        )?;
        let total = GaugeVec::new(
            Opts::new("ratchet_gpu_memory_total_bytes", "A GPU's memory"),
            &labels,
        )?;
        let busy = GaugeVec::new(
            Opts::new(
                "ratchet_gpu_slot_busy",
                "1 while a run holds the GPU's slot",
            ),
            &labels,
        )?;
        const MIB: f64 = 1024.0 * 1024.0;
        for slot in &e.gpus {
            for d in &slot.devices {
                let l = [d.index.to_string(), d.uuid.clone(), d.name.clone()];
                total.with_label_values(&l).set(d.memory_mib as f64 * MIB);
                busy.with_label_values(&l)
                    .set(if slot.running.is_some() { 1.0 } else { 0.0 });
                if let Some(sample) = slot.latest.iter().find(|x| x.uuid == d.uuid) {
                    if let Some(u) = sample.util {
                        util.with_label_values(&l).set(u / 100.0);
                    }
                    if let Some(m) = sample.memory {
                        used.with_label_values(&l).set(m as f64 * MIB);
                    }
                }
            }
        }
        for g in [util, used, total, busy] {
            r.register(Box::new(g))?;
        }
    }

    let mut out = Vec::new();
    prometheus::TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn gauge(r: &Registry, name: &str, help: &str, v: f64) -> Result<(), prometheus::Error> {
    let g = Gauge::new(name, help)?;
    g.set(v);
    r.register(Box::new(g))
}
