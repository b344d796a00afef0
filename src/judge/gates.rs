//! The gates on one eval run, pure: what makes a run a failure with a
//! label (crash, timeout, NaN, a missing metric, the size, quality and
//! metric gates) before the keep rule sees its score; and the same gates
//! on what a pre-flight check projects, before a trial trains.

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

/// The program whose output is scored: `eval`, or `train` where the score
/// comes from the train run.
fn scorer(config: &Config) -> &'static str {
    match config.experiment.file.score_from {
        crate::config::ScoreFrom::Eval => "eval",
        crate::config::ScoreFrom::Train => "train",
    }
}

/// How a metric's line looks in the experiment's format, for messages.
fn metric_line(config: &Config, name: &str) -> String {
    use crate::config::FormatName;
    match config.experiment.file.metrics.format {
        FormatName::Equals => format!("`{name}=` line"),
        FormatName::Colon => format!("`{name}:` line in its last `---` block"),
        FormatName::Regex => format!("`{name}` value matching metrics.pattern"),
    }
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
            format!("{} printed a non-finite {}", scorer(config), exp.metric),
        ));
    }
    let Some(&score) = eval.metrics.get(&exp.metric) else {
        return Err(fail(
            FailureLabel::MetricMissing,
            format!(
                "{} printed no {}",
                scorer(config),
                metric_line(config, &exp.metric)
            ),
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
    for gate in &exp.gates.metric {
        let Some(value) = printed(eval, &gate.name) else {
            return Err(Failure {
                label: FailureLabel::MetricMissing,
                detail: format!(
                    "{} printed no {}, which a gate bounds",
                    scorer(config),
                    metric_line(config, &gate.name)
                ),
                score: Some(score),
            });
        };
        if let Some(why) = gate.miss(value) {
            return Err(Failure {
                label: FailureLabel::GateMiss,
                detail: format!("{why} (gates.metric)"),
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

/// What a run printed as `name=`: its value, NaN for a non-finite one,
/// `None` when it printed none.
fn printed(run: &ProcessReport, name: &str) -> Option<f64> {
    if run.non_finite.iter().any(|n| n == name) {
        Some(f64::NAN)
    } else {
        run.metrics.get(name).copied()
    }
}

/// The gates on a pre-flight run: it must succeed, and what it prints is
/// held to the gates it names: a projected `artifact_bytes=` to
/// `max_artifact_bytes`, any metric a `[[gates.metric]]` bounds (a gated
/// metric it does not print is not checked: training may still print it).
pub fn check_preflight(config: &Config, run: &ProcessReport) -> Result<(), Failure> {
    let exp = &config.experiment.file;
    let fail = |label, detail: String| Failure {
        label,
        detail: format!("preflight: {detail}"),
        score: None,
    };
    if !run.succeeded() {
        return Err(fail(FailureLabel::PreflightFailed, run.describe()));
    }
    if let (Some(limit), Some(&size)) = (
        exp.gates.max_artifact_bytes,
        run.metrics.get("artifact_bytes"),
    ) {
        if size > limit as f64 {
            return Err(fail(
                FailureLabel::SizeFailure,
                format!("projected artifact_bytes={size} over the gate {limit}"),
            ));
        }
    }
    for gate in &exp.gates.metric {
        let Some(value) = printed(run, &gate.name) else {
            continue;
        };
        if let Some(why) = gate.miss(value) {
            return Err(fail(
                FailureLabel::GateMiss,
                format!("{why} (gates.metric)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config around a minimal experiment with both gates.
    fn config(dir: &std::path::Path) -> Config {
        config_with(dir, "")
    }

    /// The same, with more TOML after `[gates]` (`[[gates.metric]]` tables).
    fn config_with(dir: &std::path::Path, more_gates: &str) -> Config {
        std::fs::write(dir.join("recipe.toml"), "[a]\nx = 1.0\n").unwrap();
        std::fs::write(
            dir.join("experiment.toml"),
            format!(
                "name = \"t\"\nrecipe = \"recipe.toml\"\nmetric = \"loss\"\ndirection = \"minimize\"\n\
                 budget_secs = 1\ntimeout_secs = 2\ntrain = [\"true\"]\n[eval]\nproxy = [\"true\"]\n\
                 [gates]\nmax_artifact_bytes = 100\nmin_quality = 5.0\n{more_gates}\n\
                 [[surface]]\nname = \"a\"\n[surface.params]\n\"a.x\" = {{ type = \"float\", min = 0.0, max = 2.0 }}\n"
            ),
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
            http: None,
            drain_timeout_secs: 1,
            max_attempts: 3,
            confirm_first: true,
            scouts: 0,
            allocation: Default::default(),
            stop: Default::default(),
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

    #[test]
    fn a_metric_gate_bounds_any_printed_metric() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_with(
            dir.path(),
            "[[gates.metric]]\nname = \"val_acc\"\nmin = 0.96\n\
             [[gates.metric]]\nname = \"train_secs\"\nmin = 1.0\nmax = 30.0\n",
        );
        use FailureLabel::*;
        let judge = |lines: &[(&str, f64)]| check(&c, &eval(lines));
        assert_eq!(
            judge(&[("loss", 1.0), ("val_acc", 0.96), ("train_secs", 30.0)]),
            Ok(1.0),
            "bounds are inclusive"
        );
        let low = judge(&[("loss", 1.0), ("val_acc", 0.95), ("train_secs", 9.0)]).unwrap_err();
        assert_eq!((low.label, low.score), (GateMiss, Some(1.0)));
        assert!(
            low.detail.contains("val_acc=0.95") && low.detail.contains("min 0.96"),
            "the metric, its value and the bound: {}",
            low.detail
        );
        let slow = judge(&[("loss", 1.0), ("val_acc", 0.99), ("train_secs", 31.5)]).unwrap_err();
        assert_eq!(slow.label, GateMiss);
        assert!(slow.detail.contains("train_secs=31.5") && slow.detail.contains("max 30"));
        let fast = judge(&[("loss", 1.0), ("val_acc", 0.99), ("train_secs", 0.5)]).unwrap_err();
        assert!(fast.detail.contains("min 1"), "{}", fast.detail);
        let missing = judge(&[("loss", 1.0), ("train_secs", 9.0)]).unwrap_err();
        assert_eq!(missing.label, MetricMissing);
        assert!(missing.detail.contains("val_acc"), "{}", missing.detail);
        let mut nan = eval(&[("loss", 1.0), ("train_secs", 9.0)]);
        nan.non_finite.push("val_acc".into());
        let nan = check(&c, &nan).unwrap_err();
        assert_eq!(nan.label, GateMiss);
        assert!(nan.detail.contains("not a finite value"), "{}", nan.detail);
        // min_quality still works beside them.
        assert_eq!(
            label(judge(&[
                ("loss", 5.5),
                ("val_acc", 0.99),
                ("train_secs", 9.0)
            ])),
            Some(GateMiss)
        );
    }

    #[test]
    fn a_preflight_is_held_to_the_gates_it_prints() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_with(
            dir.path(),
            "[[gates.metric]]\nname = \"params\"\nmax = 1000.0\n",
        );
        use FailureLabel::*;
        let pre = |lines: &[(&str, f64)]| check_preflight(&c, &eval(lines)).map_err(|f| f.label);
        assert_eq!(
            pre(&[]),
            Ok(()),
            "a gated metric it does not print is not checked"
        );
        assert_eq!(
            pre(&[("params", 1000.0), ("artifact_bytes", 100.0)]),
            Ok(())
        );
        assert_eq!(pre(&[("artifact_bytes", 101.0)]), Err(SizeFailure));
        assert_eq!(pre(&[("params", 1001.0)]), Err(GateMiss));
        let crashed = ProcessReport {
            exit_code: Some(2),
            ..Default::default()
        };
        let f = check_preflight(&c, &crashed).unwrap_err();
        assert_eq!(f.label, PreflightFailed);
        assert!(f.detail.starts_with("preflight: "), "{}", f.detail);
        let slow = ProcessReport {
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(
            check_preflight(&c, &slow).map_err(|f| f.label),
            Err(PreflightFailed)
        );
    }
}
