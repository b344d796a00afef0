//! The evaluator: owns every score and every keep/discard decision. It runs
//! the experiment's eval command itself in the trial's workspace (numbers the
//! train command printed are never the score), applies the failure labels and
//! gates, compares with the incumbent by the metric's direction, and records
//! the outcome in lineage before telling anyone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::executor::ExecutorMsg;
use super::{interrupt_all, update_trial, CALL_TIMEOUT_MS};
use crate::config::Config;
use crate::domain::{
    Decision, FailureLabel, Incumbent, ProcessReport, Trial, TrialId, TrialStatus,
};
use crate::lineage::actor::LineageMsg;
use crate::process::{self, GroupGuard, GroupTask};
use crate::provenance::Provenance;
use crate::workspace::{secret_env, trial_argv, trial_env, TrialDirs};

pub enum EvaluatorMsg {
    /// A trial's train command ended; judge it.
    Evaluate { id: TrialId, train: ProcessReport },
    /// The eval command of a trial ended (from its task).
    EvalFinished { id: TrialId, eval: ProcessReport },
    /// Where to report incumbent changes (sent again after a restart).
    SetExecutor(ActorRef<ExecutorMsg>),
}

pub struct Evaluator;

pub struct EvaluatorArgs {
    pub config: Arc<Config>,
    pub lineage: ActorRef<LineageMsg>,
    pub provenance: Arc<Provenance>,
}

pub struct EvaluatorState {
    config: Arc<Config>,
    provenance: Arc<Provenance>,
    lineage: ActorRef<LineageMsg>,
    executor: Option<ActorRef<ExecutorMsg>>,
    incumbent: Option<Incumbent>,
    /// Evaluations in flight; dropping one kills its process group.
    running: HashMap<TrialId, GroupTask>,
}

/// What the evaluator concluded about a trial.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// `score` is kept when there was one (a gate miss, a size failure).
    Failed {
        label: FailureLabel,
        detail: String,
        score: Option<f64>,
    },
    Scored {
        score: f64,
        decision: Decision,
    },
}

impl Actor for Evaluator {
    type Msg = EvaluatorMsg;
    type State = EvaluatorState;
    type Arguments = EvaluatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: EvaluatorArgs,
    ) -> Result<EvaluatorState, ActorProcessingErr> {
        let incumbent = ractor::call_t!(args.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
        Ok(EvaluatorState {
            config: args.config,
            provenance: args.provenance,
            lineage: args.lineage,
            executor: None,
            incumbent,
            running: HashMap::new(),
        })
    }

    /// Evaluations cut short by the previous process are run again.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut EvaluatorState,
    ) -> Result<(), ActorProcessingErr> {
        let active = ractor::call_t!(state.lineage, LineageMsg::Active, CALL_TIMEOUT_MS)?;
        for t in active
            .into_iter()
            .filter(|t| t.status == TrialStatus::Evaluating)
        {
            info!(trial = %t.id, "re-running an evaluation cut short");
            myself.cast(EvaluatorMsg::Evaluate {
                id: t.id,
                train: t.train.unwrap_or_default(),
            })?;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut EvaluatorState,
    ) -> Result<(), ActorProcessingErr> {
        let ids: Vec<TrialId> = state.running.keys().copied().collect();
        state.running.clear();
        interrupt_all(&state.lineage, ids, "ratchet stopped during the evaluation").await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: EvaluatorMsg,
        state: &mut EvaluatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EvaluatorMsg::SetExecutor(e) => state.executor = Some(e),
            EvaluatorMsg::Evaluate { id, train } => {
                let report = train.clone();
                let trial = update_trial(
                    &state.lineage,
                    id,
                    Box::new(move |t| {
                        t.status = TrialStatus::Evaluating;
                        t.train = Some(report.clone());
                    }),
                )
                .await?;
                if !train.succeeded() {
                    let verdict = Verdict::Failed {
                        label: train.failure_label(),
                        detail: format!("train: {}", train.describe()),
                        score: None,
                    };
                    return record(state, &trial, verdict, None).await;
                }
                start_eval(&myself, state, &trial);
            }
            EvaluatorMsg::EvalFinished { id, eval } => {
                if let Some(done) = state.running.remove(&id) {
                    done.guard.disarm();
                }
                let trial = ractor::call_t!(state.lineage, LineageMsg::Get, CALL_TIMEOUT_MS, id)?
                    .ok_or_else(|| format!("trial {id} vanished from lineage"))?;
                let verdict = judge(&state.config, state.incumbent.as_ref(), &eval);
                record(state, &trial, verdict, Some(eval)).await?;
            }
        }
        Ok(())
    }
}

fn start_eval(myself: &ActorRef<EvaluatorMsg>, state: &mut EvaluatorState, trial: &Trial) {
    let dirs = TrialDirs::new(&state.config.lineage_dir, trial.id);
    let spec = process::Spec {
        argv: trial_argv(
            &state.config.experiment.file.eval.proxy,
            &state.config,
            &dirs,
        ),
        cwd: dirs.work.clone(),
        env: trial_env(&state.config, &dirs, trial.id),
        env_remove: secret_env(&state.config),
        memory_limit: state.config.experiment.memory_limit(),
        timeout: Duration::from_secs(state.config.experiment.eval_timeout_secs()),
        stdout: dirs.root.join("eval.stdout"),
        stderr: dirs.root.join("eval.stderr"),
    };
    let guard = GroupGuard::default();
    let task_guard = guard.clone();
    let me = myself.clone();
    let id = trial.id;
    // Train ran in the same directory: put the protected files (the scoring
    // code, eval data) back exactly as committed before eval sees them.
    let mut protected = state.config.experiment.file.protected.clone();
    protected.push("experiment.toml".into());
    let restore = trial
        .commit
        .as_deref()
        .and_then(|c| git2::Oid::from_str(c).ok())
        .map(|commit| {
            (
                state.provenance.clone(),
                commit,
                dirs.work.clone(),
                protected,
            )
        });
    let task = tokio::spawn(async move {
        if let Some((provenance, commit, work, paths)) = restore {
            let task = move || provenance.restore(commit, &work, &paths);
            let failed = match tokio::task::spawn_blocking(task).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                let eval = ProcessReport {
                    spawn_error: Some(format!("cannot restore protected files: {e}")),
                    ..Default::default()
                };
                let _ = me.cast(EvaluatorMsg::EvalFinished { id, eval });
                return;
            }
        }
        let eval = match process::run(&spec, &task_guard).await {
            Ok(r) => r,
            Err(e) => ProcessReport {
                spawn_error: Some(format!("cannot capture eval output: {e}")),
                ..Default::default()
            },
        };
        let _ = me.cast(EvaluatorMsg::EvalFinished { id, eval });
    });
    state.running.insert(id, GroupTask { guard, task });
}

/// The evaluator's rules, in order: the eval must succeed, print the metric,
/// print a finite metric, pass the gates; then it is compared with the incumbent.
pub fn judge(config: &Config, incumbent: Option<&Incumbent>, eval: &ProcessReport) -> Verdict {
    let exp = &config.experiment.file;
    let fail = |label, detail: String| Verdict::Failed {
        label,
        detail,
        score: None,
    };
    if !eval.succeeded() {
        return fail(eval.failure_label(), format!("eval: {}", eval.describe()));
    }
    if eval.non_finite.contains(&exp.metric) {
        return fail(
            FailureLabel::Diverged,
            format!("eval printed a non-finite {}", exp.metric),
        );
    }
    let Some(&score) = eval.metrics.get(&exp.metric) else {
        return fail(
            FailureLabel::MetricMissing,
            format!("eval printed no `{}=` line", exp.metric),
        );
    };
    if let (Some(limit), Some(&size)) = (
        exp.gates.max_artifact_bytes,
        eval.metrics.get("artifact_bytes"),
    ) {
        if size > limit as f64 {
            let detail = format!("artifact_bytes={size} over the gate {limit}");
            return Verdict::Failed {
                label: FailureLabel::SizeFailure,
                detail,
                score: Some(score),
            };
        }
    }
    if let Some(min) = exp.gates.min_quality {
        if exp.direction.better(min, score) {
            let detail = format!("{}={score} misses the quality gate {min}", exp.metric);
            return Verdict::Failed {
                label: FailureLabel::GateMiss,
                detail,
                score: Some(score),
            };
        }
    }
    let decision = match incumbent {
        None => Decision::Improved,
        Some(inc) if exp.direction.better(score, inc.score) => Decision::Improved,
        Some(inc) if score == inc.score => Decision::WithinNoise,
        Some(_) => Decision::Regressed,
    };
    Verdict::Scored { score, decision }
}

/// Writes the outcome to lineage (the incumbent moves in the same write when
/// kept), then tells the executor if the incumbent moved.
async fn record(
    state: &mut EvaluatorState,
    trial: &Trial,
    verdict: Verdict,
    eval: Option<ProcessReport>,
) -> Result<(), ActorProcessingErr> {
    let parent_score = state.incumbent.as_ref().map(|i| i.score);
    // A keep needs the commit the incumbent ref will point at, made (as an
    // unreferenced object) before lineage records the keep.
    let keep_commit = match (
        &verdict,
        trial
            .commit
            .as_deref()
            .and_then(|c| git2::Oid::from_str(c).ok()),
    ) {
        (
            Verdict::Scored {
                decision: Decision::Improved,
                ..
            },
            Some(commit),
        ) => {
            let current = state
                .incumbent
                .as_ref()
                .and_then(|i| i.commit.as_deref())
                .and_then(|c| git2::Oid::from_str(c).ok());
            let (provenance, id) = (state.provenance.clone(), trial.id);
            let made =
                tokio::task::spawn_blocking(move || provenance.keep_commit(id, commit, current))
                    .await?;
            Some(made?.to_string())
        }
        _ => None,
    };
    let v = verdict.clone();
    let updated = update_trial(
        &state.lineage,
        trial.id,
        Box::new(move |t| {
            t.eval = eval.clone();
            t.parent_score = parent_score;
            match &v {
                Verdict::Failed {
                    label,
                    detail,
                    score,
                } => {
                    t.status = TrialStatus::Failed;
                    t.label = Some(*label);
                    t.detail = Some(detail.clone());
                    t.score = *score;
                }
                Verdict::Scored { score, decision } => {
                    t.status = if *decision == Decision::Improved {
                        TrialStatus::Kept
                    } else {
                        TrialStatus::Discarded
                    };
                    t.score = Some(*score);
                    t.decision = Some(*decision);
                    t.keep_commit = keep_commit.clone();
                }
            }
        }),
    )
    .await?;
    match verdict {
        Verdict::Scored {
            score,
            decision: Decision::Improved,
        } => {
            info!(trial = %trial.id, score, "new incumbent");
            let keep = updated
                .keep_commit
                .clone()
                .or_else(|| updated.commit.clone());
            state.incumbent = Some(Incumbent {
                trial: trial.id,
                score,
                config: updated.config.clone(),
                since_ms: crate::domain::now_ms(),
                commit: keep.clone(),
            });
            // Lineage holds the keep; the ref follows (and is re-pointed from
            // lineage at the next start if this write is lost).
            if let Some(commit) = keep.and_then(|c| git2::Oid::from_str(&c).ok()) {
                let provenance = state.provenance.clone();
                let moved =
                    tokio::task::spawn_blocking(move || provenance.set_incumbent(commit)).await;
                let error = match moved {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = error {
                    warn!(trial = %trial.id, error = %e, "could not move ratchet/incumbent");
                }
            }
            if let Some(e) = &state.executor {
                e.cast(ExecutorMsg::IncumbentChanged)?;
            }
        }
        Verdict::Failed { label, .. } => info!(trial = %trial.id, label = %label, "trial failed"),
        Verdict::Scored { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Params, TrialId};

    /// A config around a minimal experiment with both gates.
    fn config(dir: &std::path::Path) -> Config {
        std::fs::write(dir.join("recipe.toml"), "[a]\nx = 1.0\n").unwrap();
        std::fs::write(
            dir.join("experiment.toml"),
            "name = \"t\"\nrecipe = \"recipe.toml\"\nmetric = \"loss\"\ndirection = \"minimize\"\n\
             budget_secs = 1\ntimeout_secs = 2\ntrain = [\"true\"]\n[eval]\nproxy = [\"true\"]\n\
             [gates]\nmax_artifact_bytes = 100\nmin_quality = 5.0\n\
             [[surface]]\nname = \"a\"\n[surface.params]\n\"a.x\" = { type = \"float\", min = 0.0, max = 2.0 }\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let experiment =
            crate::config::load_experiment(dir, &mut errors).expect("valid experiment");
        Config {
            file: dir.join("specialists.toml"),
            lineage_dir: dir.join("lineage"),
            slots: 1,
            seed: 0,
            specialists: Vec::new(),
            experiment,
        }
    }

    fn eval(lines: &[(&str, f64)]) -> ProcessReport {
        ProcessReport {
            exit_code: Some(0),
            metrics: lines.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    fn label(v: Verdict) -> Option<FailureLabel> {
        match v {
            Verdict::Failed { label, .. } => Some(label),
            Verdict::Scored { .. } => None,
        }
    }

    #[test]
    fn every_gate_has_its_label_and_scores_are_compared_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let judge = |e: &ProcessReport, inc: Option<f64>| {
            let inc = inc.map(|score| Incumbent {
                trial: TrialId(1),
                score,
                config: Params::new(),
                since_ms: 0,
                commit: None,
            });
            judge(&c, inc.as_ref(), e)
        };
        use FailureLabel::*;
        let crashed = ProcessReport {
            exit_code: Some(1),
            ..Default::default()
        };
        assert_eq!(label(judge(&crashed, None)), Some(Crash));
        let timed_out = ProcessReport {
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(label(judge(&timed_out, None)), Some(BudgetOverrun));
        let hog = ProcessReport {
            memory_exceeded: true,
            ..Default::default()
        };
        assert_eq!(label(judge(&hog, None)), Some(OutOfMemory));
        let mut nan = eval(&[]);
        nan.non_finite.push("loss".into());
        assert_eq!(label(judge(&nan, None)), Some(Diverged));
        assert_eq!(
            label(judge(&eval(&[("acc", 1.0)]), None)),
            Some(MetricMissing)
        );
        match judge(&eval(&[("loss", 1.0), ("artifact_bytes", 101.0)]), None) {
            Verdict::Failed { label, score, .. } => {
                assert_eq!(
                    (label, score),
                    (SizeFailure, Some(1.0)),
                    "the score is kept"
                )
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            label(judge(
                &eval(&[("loss", 1.0), ("artifact_bytes", 100.0)]),
                None
            )),
            None
        );
        assert_eq!(label(judge(&eval(&[("loss", 5.5)]), None)), Some(GateMiss));
        let decision = |score, inc| match judge(&eval(&[("loss", score)]), inc) {
            Verdict::Scored { decision, .. } => decision,
            v => panic!("{v:?}"),
        };
        assert_eq!(decision(1.0, None), Decision::Improved);
        assert_eq!(decision(1.0, Some(1.5)), Decision::Improved);
        assert_eq!(decision(1.5, Some(1.5)), Decision::WithinNoise);
        assert_eq!(decision(2.0, Some(1.5)), Decision::Regressed);
    }
}
