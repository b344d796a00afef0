//! The gates on one eval run, pure: what makes a run a failure with a
//! label (crash, timeout, NaN, a missing metric, the size and quality
//! gates) before the keep rule sees its score.

use crate::config::Config;
use crate::domain::{FailureLabel, ProcessReport};

/// Why one eval run fails its gates.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub label: FailureLabel,
    pub detail: String,
    /// Kept when there was one (a gate miss, a size failure).
    pub score: Option<f64>,
}

/// The gates on one eval run, in order: the eval must succeed, print the
/// metric, print a finite metric, and pass the size and quality gates.
pub fn check(config: &Config, eval: &ProcessReport) -> Result<f64, Failure> {
    let exp = &config.experiment.file;
    let fail = |label, detail: String| Failure {
        label,
        detail,
        score: None,
    };
    if !eval.succeeded() {
        return Err(fail(
            eval.failure_label(),
            format!("eval: {}", eval.describe()),
        ));
    }
    if eval.non_finite.contains(&exp.metric) {
        return Err(fail(
            FailureLabel::Diverged,
            format!("eval printed a non-finite {}", exp.metric),
        ));
    }
    let Some(&score) = eval.metrics.get(&exp.metric) else {
        return Err(fail(
            FailureLabel::MetricMissing,
            format!("eval printed no `{}=` line", exp.metric),
        ));
    };
    if let (Some(limit), Some(&size)) = (
        exp.gates.max_artifact_bytes,
        eval.metrics.get("artifact_bytes"),
    ) {
        if size > limit as f64 {
            return Err(Failure {
                label: FailureLabel::SizeFailure,
                detail: format!("artifact_bytes={size} over the gate {limit}"),
                score: Some(score),
            });
        }
    }
    if let Some(min) = exp.gates.min_quality {
        if exp.direction.better(min, score) {
            return Err(Failure {
                label: FailureLabel::GateMiss,
                detail: format!("{}={score} misses the quality gate {min}", exp.metric),
                score: Some(score),
            });
        }
    }
    if exp.noise.scale.judged(score).is_none() {
        return Err(Failure {
            label: FailureLabel::GateMiss,
            detail: format!(
                "{}={score}: noise.scale = \"log\" takes positive scores only",
                exp.metric
            ),
            score: Some(score),
        });
    }
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            socket: dir.join("lineage/ratchet.sock"),
            drain_timeout_secs: 1,
            max_attempts: 3,
            confirm_first: true,
            scouts: 0,
            allocation: Default::default(),
            slurm: None,
            gpus: None,
            gpu_slots: false,
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

    fn label(r: Result<f64, Failure>) -> Option<FailureLabel> {
        r.err().map(|f| f.label)
    }

    #[test]
    fn every_gate_has_its_label() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let judge = |e: &ProcessReport| check(&c, e);
        use FailureLabel::*;
        let crashed = ProcessReport {
            exit_code: Some(1),
            ..Default::default()
        };
        assert_eq!(label(judge(&crashed)), Some(Crash));
        let timed_out = ProcessReport {
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(label(judge(&timed_out)), Some(BudgetOverrun));
        let hog = ProcessReport {
            memory_exceeded: true,
            ..Default::default()
        };
        assert_eq!(label(judge(&hog)), Some(OutOfMemory));
        let mut nan = eval(&[]);
        nan.non_finite.push("loss".into());
        assert_eq!(label(judge(&nan)), Some(Diverged));
        assert_eq!(label(judge(&eval(&[("acc", 1.0)]))), Some(MetricMissing));
        let big = judge(&eval(&[("loss", 1.0), ("artifact_bytes", 101.0)])).unwrap_err();
        assert_eq!(
            (big.label, big.score),
            (SizeFailure, Some(1.0)),
            "the score is kept"
        );
        assert_eq!(
            judge(&eval(&[("loss", 1.0), ("artifact_bytes", 100.0)])),
            Ok(1.0)
        );
        assert_eq!(label(judge(&eval(&[("loss", 5.5)]))), Some(GateMiss));
        // On noise.scale = "log" a score the log cannot take is a gate miss
        // that says why; a positive one passes.
        let mut log = c.clone();
        log.experiment.file.noise.scale = crate::config::Scale::Log;
        let r = check(&log, &eval(&[("loss", 0.0)]));
        assert!(
            r.as_ref()
                .is_err_and(|f| f.label == GateMiss && f.detail.contains("positive scores only")),
            "{r:?}"
        );
        assert!(check(&log, &eval(&[("loss", 0.5)])).is_ok());
    }
}
