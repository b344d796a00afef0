//! What the executor asks for and queues: the baseline, the scouts, and
//! the specialists' proposals (`fill`, which also starts what a free slot
//! can take), with each specialist's outcomes for the allocation.

use super::*;

/// The outcomes of each listed specialist's settled trials, from lineage.
pub(super) async fn outcomes(
    state: &mut ExecutorState,
    list: &[(String, ActorRef<SpecialistMsg>)],
) -> Result<Vec<Outcomes>, ActorProcessingErr> {
    let store = ractor::call_t!(state.lineage, LineageMsg::Reader, CALL_TIMEOUT_MS)?;
    let mut out = Vec::with_capacity(list.len());
    // Through lineage's index by specialist: each reads only its own trials.
    for (name, _) in list {
        let filter = Filter {
            specialist: Some(name.clone()),
            ..Default::default()
        };
        let mut o = Outcomes::default();
        for t in store.select(&filter)? {
            let t = t?;
            if allocation::counts(&t).is_some() {
                state.counted.insert(t.id);
            }
            o.add(&t);
        }
        out.push(o);
    }
    Ok(out)
}

/// Counts a settled trial toward its specialist's outcomes, once.
pub(super) async fn count_outcome(
    state: &mut ExecutorState,
    id: TrialId,
) -> Result<(), ActorProcessingErr> {
    if state.counted.contains(&id) {
        return Ok(());
    }
    let Some(t) = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)? else {
        return Ok(());
    };
    if allocation::counts(&t).is_none() {
        return Ok(());
    }
    if let Some(s) = state
        .specialists
        .iter_mut()
        .find(|s| s.name == t.specialist)
    {
        s.outcomes.add(&t);
        state.counted.insert(id);
    }
    Ok(())
}

/// Records a proposed trial `Queued` and queues its own run: behind the
/// other proposals, or (`priority`, the evaluator's) ahead of them. A
/// duplicate is already terminal in lineage: counted, not run.
pub(super) async fn queue(
    state: &mut ExecutorState,
    trial: Trial,
    priority: bool,
) -> Result<(), ActorProcessingErr> {
    if trial.status != TrialStatus::Proposed {
        // A duplicate (failed already) counts against its specialist.
        return count_outcome(state, trial.id).await;
    }
    let t0 = Instant::now();
    let queued = advance_trial(
        &state.lineage,
        trial.id,
        TrialStatus::Queued,
        Box::new(|_| {}),
    )
    .await?;
    probe::since(trial.id, Stage::Record, t0);
    if priority {
        state.push_priority(queued, 0);
    } else {
        state.queue.push_back(Job {
            trial: queued,
            seed: 0,
            priority: false,
            since_ms: now_ms(),
        });
    }
    Ok(())
}

/// Samples a scout draws before it settles for one lineage has not seen.
pub(super) const SCOUT_DRAWS: usize = 16;

/// A scout recorded in lineage: a global sample of every parameter the
/// experiment declares, against the incumbent. `None`, and no more scouts,
/// without an incumbent (the baseline failed: nothing to judge them
/// against) or when every draw is a configuration lineage knows.
pub(super) async fn scout(state: &mut ExecutorState) -> Result<Option<Trial>, ActorProcessingErr> {
    let Some(inc) = ractor::call_t!(state.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)? else {
        state.scouts_left = 0;
        return Ok(None);
    };
    let space = state.config.experiment.file.space();
    let drawn = search::candidates(&space, &inc.config, &mut state.scout_rng, SCOUT_DRAWS, 1.0);
    let configs = drawn.iter().map(|c| c.config.clone()).collect();
    let unknown = ractor::call_t!(state.lineage, LineageMsg::Unknown, CALL_TIMEOUT_MS, configs)?;
    let Some(pick) = drawn
        .into_iter()
        .zip(unknown)
        .find_map(|(c, u)| u.then_some(c))
    else {
        state.scouts_left = 0;
        return Ok(None);
    };
    let new = NewTrial {
        specialist: SCOUT.into(),
        surface: None,
        parent: Some(inc.trial),
        hypothesis: format!("scout, every surface at once: {}", pick.hypothesis),
        changes: pick.changes,
        config: pick.config,
        ..Default::default()
    };
    let trial = propose_trial(&state.lineage, new).await?;
    Ok(Some(trial))
}

/// Starts queued trials on free slots and asks specialists for more proposals
/// until the queue holds one trial per slot; reports when all work is drained.
pub(super) async fn fill(
    myself: &ActorRef<ExecutorMsg>,
    state: &mut ExecutorState,
) -> Result<(), ActorProcessingErr> {
    if state.baseline_needed && state.budget_left() > 0 && !state.draining {
        state.baseline_needed = false;
        let defaults = state.config.experiment.defaults.clone();
        let new = NewTrial {
            specialist: "baseline".into(),
            surface: None,
            parent: None,
            hypothesis: "the experiment's recipe as it is".into(),
            changes: Default::default(),
            config: defaults,
            ..Default::default()
        };
        let trial = propose_trial(&state.lineage, new).await?;
        state.baseline = Some(trial.id);
        myself.cast(ExecutorMsg::Proposed {
            specialist: "baseline".into(),
            trial: Some(Box::new(trial)),
        })?;
        return Ok(());
    }
    // Inherited waits that lineage shows settled hold nothing back (their
    // `Settled` may have gone to the process before this one).
    if !state.inherited.is_empty() && state.running.is_empty() && state.queue.is_empty() {
        let mut settled = Vec::new();
        for id in &state.inherited {
            let t = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, *id)?;
            if t.is_none_or(|t| t.status.is_terminal()) {
                settled.push(*id);
            }
        }
        for id in settled {
            state.settled(id);
        }
    }
    // Scouts before the specialists are asked, once the baseline is settled.
    while state.scouts_left > 0
        && (state.queue.len() as u64 + state.asked()) < state.slots() as u64
        && state.budget_left() > 0
        && state.baseline.is_none()
        && !state.draining
        && !state.holding()
    {
        let Some(trial) = scout(state).await? else {
            break;
        };
        state.scouts_left -= 1;
        state.issued += 1;
        // A duplicate is terminal already: nothing to wait for.
        if trial.status == TrialStatus::Proposed {
            state.scouting.insert(trial.id);
        }
        queue(state, trial, false).await?;
    }
    // On GPU slots, a run starts when a set of devices is free.
    while state.gpus.is_some() || state.running.len() < state.config.slots {
        // Draining: only seed re-runs of trials already being evaluated.
        // Confirming first: only the evaluator's jobs and recovered trials.
        let next = if state.draining {
            state.queue.iter().position(|j| j.seed != 0)
        } else if state.holding() {
            state.queue.iter().position(|j| j.priority)
        } else if state.queue.is_empty() {
            None
        } else {
            Some(0)
        };
        let Some((i, job)) = next.and_then(|i| Some((i, state.queue.remove(i)?))) else {
            break;
        };
        let lease = match &state.gpus {
            None => None,
            Some(g) => match g.lease(job.trial.id, job.seed) {
                Some(l) => Some(l),
                None => {
                    state.queue.insert(i, job);
                    break;
                }
            },
        };
        start(myself, state, job, lease);
    }
    let n = state.specialists.len();
    while (state.queue.len() as u64 + state.asked()) < state.slots() as u64
        && state.budget_left() > 0
        && state.baseline.is_none()
        && state.scouts_left == 0
        && state.scouting.is_empty()
        && !state.draining
        && !state.holding()
    {
        let eligible: Vec<(usize, f64, Outcomes)> = (0..n)
            .map(|k| (state.next + k) % n)
            .filter(|&i| {
                let s = &state.specialists[i];
                !s.asked && !s.exhausted && !s.resting && !state.paused.contains(&s.name)
            })
            .map(|i| (i, state.specialists[i].pass, state.specialists[i].outcomes))
            .collect();
        let Some((i, pass)) = state.stride.pick(state.config.allocation, &eligible) else {
            break;
        };
        state.next = (i + 1) % n;
        let slot = &mut state.specialists[i];
        slot.pass = pass;
        slot.asked = true;
        slot.actor.cast(SpecialistMsg::Propose {
            reply_to: myself.clone(),
        })?;
    }
    // A resting specialist still has work to give, unless the trial budget
    // is spent (a paused one gives none until it is resumed).
    let resting = state.budget_left() > 0
        && state
            .specialists
            .iter()
            .any(|s| s.resting && !state.paused.contains(&s.name));
    let scouts_coming = state.scouts_left > 0 && state.budget_left() > 0 && !state.draining;
    let idle = state.ready
        && state.baseline.is_none()
        && state.scouting.is_empty()
        && !scouts_coming
        && state.running.is_empty()
        && state.queue.is_empty()
        && state.asked() == 0
        && !resting;
    if idle && !state.drained_sent {
        state.drained_sent = true;
        info!(
            issued = state.issued,
            "executor drained: no trial running and none coming"
        );
        if let Some(o) = &state.observer {
            let _ = o.send(RunEvent::Drained {
                issued: state.issued,
            });
        }
    } else if !idle {
        state.drained_sent = false;
    }
    let slots = state.slots();
    let free = slots.saturating_sub(state.running.len());
    let (waiting, held) = if state.draining {
        (0, 0)
    } else if state.asked() > 0 {
        (free, 0)
    } else if state.holding() {
        (0, free)
    } else {
        (0, 0)
    };
    state
        .occupancy
        .change(slots, state.running.len(), waiting, held);
    Ok(())
}
