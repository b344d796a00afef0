//! Start-up recovery: what a previous ratchet process left proposed,
//! queued or running (and the Slurm jobs it left) is queued again, adopted
//! or recorded `interrupted`, so every trial gets exactly one terminal record.

use std::sync::Arc;

use ractor::{ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use crate::domain::{Trial, TrialId, TrialStatus};
use crate::lineage::actor::{
    advance_trial, interrupt, update_trial, LineageCallError, LineageMsg, CALL_TIMEOUT_MS,
};
use crate::process;
use crate::slurm::{Found, JobKind, Slurm};

/// What start-up recovery found: trials to queue again, and runs whose
/// Slurm jobs are still the cluster's (trial, seed, job) to wait for.
pub struct Recovered {
    pub requeued: Vec<Trial>,
    pub adopted: Vec<(Trial, u64, u64)>,
}

/// Start-up recovery of trials that were proposed, queued or running when
/// the previous ratchet process died (or stopped with them still queued).
/// A run on Slurm whose job the cluster still knows (recorded in lineage,
/// or found by its name when ratchet died before recording it) is adopted:
/// waited for, not submitted again; train jobs of this lineage that no
/// trial needs are cancelled. Otherwise the recorded process groups are
/// killed, and the trials are returned `Queued` to run again (same id;
/// `attempt` + 1 for one that had started), or, after `max_attempts`
/// starts, recorded `interrupted`. (Evaluating trials are evaluated again
/// by the evaluator; the recorded groups of their seed runs, and of the
/// incumbent's while it was re-measured, are killed here.)
pub async fn recover(
    lineage: &ActorRef<LineageMsg>,
    max_attempts: u32,
    slurm: Option<&Arc<Slurm>>,
) -> Result<Recovered, ActorProcessingErr> {
    let found = match slurm {
        Some(s) => s.ours().await.unwrap_or_else(|e| {
            warn!(error = %e, "recovering: cannot list this lineage's Slurm jobs; adopting only recorded ones");
            Vec::new()
        }),
        None => Vec::new(),
    };
    let mut out = Recovered {
        requeued: Vec::new(),
        adopted: Vec::new(),
    };
    // The job of a run: recorded, or the newest of its name.
    let job_of = |id: TrialId, seed: u64, recorded: Option<u64>| {
        slurm?;
        recorded.or_else(|| {
            found
                .iter()
                .filter(|f| (f.trial, f.seed, f.kind) == (id, seed, JobKind::Train))
                .map(|f| f.job)
                .max()
        })
    };
    // Seed runs that were training: the incumbent's own (a re-measurement)
    // and those of evaluating trials; the evaluator asks for them again,
    // and finds adopted ones running.
    let mut seeded = Vec::new();
    if let Some(inc) = ractor::call_t!(lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)? {
        if let Some(t) = ractor::call_t!(lineage, LineageMsg::Get, CALL_TIMEOUT_MS, inc.trial)? {
            seeded.push(t);
        }
    }
    let active = ractor::call_t!(lineage, LineageMsg::Active, CALL_TIMEOUT_MS)?;
    seeded.extend(
        active
            .iter()
            .filter(|t| t.status == TrialStatus::Evaluating)
            .cloned(),
    );
    for t in seeded {
        for run in t.seed_runs.iter().filter(|r| r.train.is_none()) {
            if let Some(job) = job_of(t.id, run.seed, run.slurm_job) {
                info!(trial = %t.id, seed = run.seed, job, "recovering: adopting the seed run's Slurm job");
                out.adopted.push((t.clone(), run.seed, job));
            } else if let Some(pgid) = run.pgid {
                process::kill_group(pgid);
            }
        }
    }
    for t in active {
        if t.status == TrialStatus::Evaluating {
            continue;
        }
        if t.status == TrialStatus::Running {
            if let Some(job) = job_of(t.id, 0, t.slurm_job) {
                info!(trial = %t.id, job, "recovering: adopting the trial's Slurm job");
                let t = if t.slurm_job == Some(job) {
                    t
                } else {
                    update_trial(lineage, t.id, Box::new(move |t| t.slurm_job = Some(job))).await?
                };
                out.adopted.push((t, 0, job));
                continue;
            }
        }
        if let Some(pgid) = t.pgid {
            process::kill_group(pgid);
        }
        let started = t.status == TrialStatus::Running;
        if started && t.attempt >= max_attempts {
            warn!(trial = %t.id, attempt = t.attempt, "recovering: trial was cut short {} times; giving up", t.attempt);
            interrupt(
                lineage,
                t.id,
                "ratchet stopped while the trial ran, at every attempt".into(),
            )
            .await?;
            continue;
        }
        warn!(trial = %t.id, status = %t.status, attempt = t.attempt, "recovering: trial was in flight when ratchet stopped; queued again");
        let trial = requeue(lineage, t.id, started).await?;
        if started {
            lineage.cast(LineageMsg::Event {
                kind: "requeued".into(),
                subject: trial.id.to_string(),
                detail: format!(
                    "ratchet stopped while it ran; attempt {} of {max_attempts}",
                    trial.attempt
                ),
            })?;
        }
        out.requeued.push(trial);
    }
    // Train jobs of this lineage that nothing waits for any more.
    let orphans: Vec<u64> = found
        .iter()
        .filter(|f: &&Found| f.kind == JobKind::Train && !f.state.is_terminal())
        .filter(|f| !out.adopted.iter().any(|(_, _, job)| *job == f.job))
        .map(|f| f.job)
        .collect();
    if !orphans.is_empty() {
        warn!(jobs = ?orphans, "recovering: cancelling Slurm jobs of this lineage that no trial waits for");
        tokio::task::spawn_blocking(move || crate::slurm::cancel_now(&orphans)).await?;
    }
    Ok(out)
}

/// Records a trial `Queued` to run again (`attempt` + 1 when it had started).
pub async fn requeue(
    lineage: &ActorRef<LineageMsg>,
    id: TrialId,
    started: bool,
) -> Result<Trial, LineageCallError> {
    advance_trial(
        lineage,
        id,
        TrialStatus::Queued,
        Box::new(move |t| {
            t.pgid = None;
            t.slurm_job = None;
            if started {
                t.attempt += 1;
            }
        }),
    )
    .await
}
