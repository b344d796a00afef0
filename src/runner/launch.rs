//! The one launch path of every run of a trial: its train command (the
//! trial's own run or a seed re-run) and its eval commands, on every
//! backend: a process group of ratchet's (on CPU slots or with a GPU lease)
//! or a Slurm job. Where a train run runs is recorded in lineage before it is
//! waited for (recovery needs it); a run of a trial's own that `[prune]`
//! holds to the incumbent's curve is stopped when it is clearly behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tracing::{info, warn};

use crate::config::Config;
use crate::domain::{ProcessReport, Pruning, TrialId};
use crate::gpu::LeaseView;
use crate::judge::Bars;
use crate::lineage::actor::{measure_trial, update_trial, LineageMsg};
use crate::probe::{self, Stage};
use crate::process::{self, GroupGuard};
use crate::slurm::{JobKind, Outcome, Slurm};
use crate::workspace::{secret_env, trial_argv, trial_env, TrialDirs};

/// How a train run ended.
#[derive(Debug)]
pub enum Ran {
    /// The trial's own run did not start, and there is nothing to evaluate:
    /// its edits were refused or its files could not be made (it is
    /// recorded `failed`), or lineage would not record it `running` (it
    /// was cancelled meanwhile).
    NotRun,
    /// The experiment's pre-flight check failed the trial before it trained
    /// (recorded `failed`); `saved_ms`: the train time it did not spend.
    Preflight { saved_ms: u64 },
    /// The command ran (or could not start): its report goes to the evaluator.
    Report(Box<ProcessReport>),
    /// The cluster lost the run (a Slurm node failure, preemption, or a
    /// cancellation that was not ratchet's), or it failed on a GPU that
    /// is gone: it is queued again.
    Lost(String),
}

/// How a launched command ended.
pub enum Launched {
    /// It ran, or could not start.
    Ran(Box<ProcessReport>),
    /// It ran on GPUs of which one vanished meanwhile (why); its report too.
    DeviceGone(Box<ProcessReport>, String),
    /// The cluster lost its job.
    Lost(String),
}

impl Launched {
    /// A train run's ending: a run on a vanished device is run again.
    pub fn train(self) -> Ran {
        match self {
            Launched::Ran(r) => Ran::Report(r),
            Launched::DeviceGone(_, why) | Launched::Lost(why) => Ran::Lost(why),
        }
    }
}

/// What a run's task needs to start its command and record where it runs.
pub struct Launcher<'a> {
    pub config: &'a Arc<Config>,
    pub lineage: &'a ActorRef<LineageMsg>,
    pub guard: &'a GroupGuard,
    pub slurm: Option<&'a Arc<Slurm>>,
    /// The GPUs the run was given.
    pub gpus: Option<&'a LeaseView>,
    /// When the run left the queue (the dispatch probe).
    pub taken: Instant,
    /// What the run is held to while it trains (`[prune]`).
    pub bars: Option<Arc<(Bars, u64)>>,
}

impl Launcher<'_> {
    /// Runs a command of trial `id`'s run `seed` (`kind`: its train command
    /// or one of its evals) as a process group of ratchet's, on the GPUs it
    /// was given, or as a Slurm job. Where a train run runs is recorded in
    /// lineage (for recovery) before it is waited for; evals start over
    /// after a restart.
    pub async fn launch(
        &self,
        spec: &process::Spec,
        (id, seed, kind): (TrialId, u64, JobKind),
    ) -> Launched {
        let (what, started_stage) = match kind {
            JobKind::Train => ("trial", Stage::Dispatch),
            JobKind::Eval | JobKind::Full => ("eval", Stage::Evaluate),
        };
        let record = |handle| async move {
            probe::since(id, started_stage, self.taken);
            if kind == JobKind::Train {
                record_handle(self.lineage, id, seed, handle).await;
            }
        };
        let Some(slurm) = self.slurm else {
            let on_gpus;
            let spec = match self.gpus {
                Some(g) => {
                    let mut s = spec.clone();
                    s.env.push(("CUDA_VISIBLE_DEVICES".into(), g.visible()));
                    on_gpus = s;
                    &on_gpus
                }
                None => spec,
            };
            let started = match process::start(spec, self.guard).await {
                Ok(Ok(s)) => s,
                Ok(Err(report)) => return Launched::Ran(Box::new(report)),
                Err(e) => {
                    return Launched::Ran(Box::new(spawn_failed(
                        spec,
                        format!("cannot write {what} logs: {e}"),
                    )))
                }
            };
            record(Handle::Group(started.pgid)).await;
            let spawned = Instant::now();
            let bars = self.bars.as_ref().filter(|_| kind == JobKind::Train);
            let finished = match bars {
                Some(bars) => {
                    let stop = behind(started.progress.clone(), &bars.0);
                    process::finish_unless(started, spec, self.guard, stop).await
                }
                None => process::finish(started, spec, self.guard)
                    .await
                    .map(|r| (r, None)),
            };
            let mut report = match finished {
                Ok((mut r, stopped)) => {
                    if let (Some(mut p), Some(bars)) = (stopped, bars) {
                        p.saved_ms = bars.1.saturating_sub(r.duration_ms);
                        info!(trial = %id, "stopped early: {}", p.describe());
                        r.pruned = Some(Box::new(p));
                    }
                    r
                }
                Err(e) => spawn_failed(spec, format!("cannot capture {what} output: {e}")),
            };
            probe::since(id, Stage::Child, spawned);
            if let Some(g) = self.gpus {
                if let Some(why) = g.finish(&mut report).await {
                    return Launched::DeviceGone(Box::new(report), why);
                }
            }
            return Launched::Ran(Box::new(report));
        };
        match slurm
            .run_job(spec, self.guard, (id, seed, kind), |job| {
                record(Handle::Job(job))
            })
            .await
        {
            Outcome::Ran(report) => Launched::Ran(report),
            Outcome::Lost(why) => Launched::Lost(why),
        }
    }
}

/// Where a run's command runs, for recovery.
enum Handle {
    Group(i32),
    Job(u64),
}

/// Records a run's process group or Slurm job: the trial's own (seed 0) or
/// one of its seed runs (a measurement: the trial may be the kept incumbent
/// being re-measured).
async fn record_handle(lineage: &ActorRef<LineageMsg>, id: TrialId, seed: u64, handle: Handle) {
    let set = move |pgid: &mut Option<i32>, job: &mut Option<u64>| match handle {
        Handle::Group(g) => *pgid = Some(g),
        Handle::Job(j) => *job = Some(j),
    };
    let recorded = if seed == 0 {
        update_trial(
            lineage,
            id,
            Box::new(move |t| set(&mut t.pgid, &mut t.slurm_job)),
        )
        .await
    } else {
        measure_trial(
            lineage,
            id,
            Box::new(move |t| {
                if let Some(r) = t.seed_runs.iter_mut().find(|r| r.seed == seed) {
                    set(&mut r.pgid, &mut r.slurm_job);
                }
            }),
        )
        .await
    };
    if let Err(e) = recorded {
        warn!(trial = %id, seed, error = %e, "could not record where the run runs");
    }
}

/// Resolves when the run's progress is clearly behind the bars: where it stood.
async fn behind(
    mut progress: tokio::sync::watch::Receiver<process::Latest>,
    bars: &Bars,
) -> Pruning {
    let mut next = 0;
    while next < bars.bars.len() && progress.changed().await.is_ok() {
        let point = progress.borrow_and_update().get(&bars.metric).copied();
        if let Some((at, value)) = point {
            if let Some(p) = bars.look(&mut next, at, value) {
                return p;
            }
        }
    }
    // Every look made, or the output ended: the run finishes as it will.
    std::future::pending().await
}

/// The eval command of one run (`JobKind::Eval`: the proxy, `Full`: the
/// full eval where the experiment has one), in `dirs.work`, logs in
/// `dirs.root` as `eval.*` or `full.*`.
pub fn eval_spec(config: &Config, dirs: &TrialDirs, id: TrialId, kind: JobKind) -> process::Spec {
    let exp = &config.experiment.file;
    let (argv, name) = match (kind, &exp.eval.full) {
        (JobKind::Full, Some(full)) => (full, "full"),
        _ => (&exp.eval.proxy, "eval"),
    };
    process::Spec {
        argv: trial_argv(argv, config, dirs),
        cwd: dirs.work.clone(),
        env: trial_env(config, dirs, id),
        env_remove: secret_env(config),
        memory_limit: config.experiment.memory_limit(),
        timeout: Duration::from_secs(config.experiment.eval_timeout_secs()),
        stdout: dirs.root.join(format!("{name}.stdout")),
        stderr: dirs.root.join(format!("{name}.stderr")),
        metrics: exp.metrics.format(),
    }
}

/// The experiment's pre-flight command for a trial's own run, if it has
/// one: in `dirs.work`, on the daemon's machine with no GPU visible, logs in
/// `dirs.root` as `preflight.*`.
pub fn preflight_spec(config: &Config, dirs: &TrialDirs, id: TrialId) -> Option<process::Spec> {
    let pre = config.experiment.file.preflight.as_ref()?;
    let mut env = trial_env(config, dirs, id);
    env.retain(|(k, _)| k != "CUDA_VISIBLE_DEVICES");
    env.push(("CUDA_VISIBLE_DEVICES".into(), String::new()));
    Some(process::Spec {
        argv: trial_argv(&pre.command, config, dirs),
        cwd: dirs.work.clone(),
        env,
        env_remove: secret_env(config),
        memory_limit: config.experiment.memory_limit(),
        timeout: Duration::from_secs(pre.timeout_secs),
        stdout: dirs.root.join("preflight.stdout"),
        stderr: dirs.root.join("preflight.stderr"),
        metrics: config.experiment.file.metrics.format(),
    })
}

/// The train command of one run, in `dirs.work`, logs in `dirs.root`.
pub fn train_spec(config: &Config, dirs: &TrialDirs, id: TrialId) -> process::Spec {
    let exp = &config.experiment;
    process::Spec {
        argv: trial_argv(&exp.file.train, config, dirs),
        cwd: dirs.work.clone(),
        env: trial_env(config, dirs, id),
        env_remove: secret_env(config),
        memory_limit: exp.memory_limit(),
        timeout: Duration::from_secs(exp.file.timeout_secs),
        stdout: dirs.root.join("train.stdout"),
        stderr: dirs.root.join("train.stderr"),
        metrics: exp.file.metrics.format(),
    }
}

pub fn spawn_failed(spec: &process::Spec, e: String) -> ProcessReport {
    ProcessReport {
        spawn_error: Some(e),
        stdout: spec.stdout.clone(),
        stderr: spec.stderr.clone(),
        ..Default::default()
    }
}
