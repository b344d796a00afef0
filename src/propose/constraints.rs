//! A failure model over the declared parameter space, fed by lineage labels:
//! a candidate whose nearest measured neighbours mostly failed (crash, budget
//! overrun, a gate, divergence, no metric) is predicted to fail too.
//!
//! Nearest-neighbour voting in the normalized space of every declared
//! parameter (all surfaces: a crash caused by another surface's value still
//! counts), with a radius: far from anything measured, the model has no
//! opinion and the search explores.

use std::collections::BTreeMap;

use crate::domain::{FailureLabel, ParamValue, Params, Trial, TrialStatus};
use crate::recipe::ParamSpec;

/// Neighbours that vote.
const K: usize = 3;
/// Beyond this normalized distance a measured point has no say.
const RADIUS: f64 = 0.2;

/// What a trial says about its configuration: `Some(true)` it failed,
/// `Some(false)` it ran and was scored, `None` no evidence (a trial that
/// edited files failed, or not, for its code, not for its parameter values).
pub fn evidence(t: &Trial) -> Option<bool> {
    if t.edits.iter().any(|e| e.path().is_some()) {
        return None;
    }
    failed(t)
}

/// Whether a trial's outcome says something about its configuration.
fn failed(t: &Trial) -> Option<bool> {
    match (t.status, t.label) {
        (TrialStatus::Kept | TrialStatus::Discarded, _) => Some(false),
        (
            TrialStatus::Failed,
            Some(
                FailureLabel::Crash
                | FailureLabel::BudgetOverrun
                | FailureLabel::SizeFailure
                | FailureLabel::GateMiss
                | FailureLabel::Diverged
                | FailureLabel::MetricMissing
                | FailureLabel::OutOfMemory
                | FailureLabel::GpuOutOfMemory,
            ),
        ) => Some(true),
        // Interrupted, refused edits, proposer errors, duplicates: no evidence.
        _ => None,
    }
}

pub struct FailureModel<'a> {
    space: &'a BTreeMap<String, ParamSpec>,
    points: Vec<(&'a Params, bool)>,
}

impl<'a> FailureModel<'a> {
    /// `space`: every declared parameter; `trials`: any lineage trials.
    pub fn new(space: &'a BTreeMap<String, ParamSpec>, trials: &'a [Trial]) -> FailureModel<'a> {
        let points = trials
            .iter()
            .filter_map(|t| evidence(t).map(|f| (&t.config, f)))
            .collect();
        FailureModel { space, points }
    }

    /// From configurations and whether each failed (see [`evidence`]).
    pub fn from_points(
        space: &'a BTreeMap<String, ParamSpec>,
        points: impl IntoIterator<Item = (&'a Params, bool)>,
    ) -> FailureModel<'a> {
        FailureModel {
            space,
            points: points.into_iter().collect(),
        }
    }

    /// The number of failures the model knows.
    pub fn failures(&self) -> usize {
        self.points.iter().filter(|(_, f)| *f).count()
    }

    /// The share of failures among the (up to) `K` nearest measured
    /// configurations within `RADIUS`, each weighted by the inverse of its
    /// distance (the nearest says most: a candidate just inside a crash
    /// region, beside both a crash and a success, is risky); 0 when none is
    /// that near.
    pub fn risk(&self, config: &Params) -> f64 {
        let mut near: Vec<(f64, bool)> = self
            .points
            .iter()
            .map(|(p, f)| (self.distance(config, p), *f))
            .filter(|(d, _)| *d <= RADIUS)
            .collect();
        if near.is_empty() {
            return 0.0;
        }
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        near.truncate(K);
        let weight = |d: f64| 1.0 / (d + RADIUS / 20.0);
        let failed: f64 = near
            .iter()
            .filter(|(_, f)| *f)
            .map(|(d, _)| weight(*d))
            .sum();
        let all: f64 = near.iter().map(|(d, _)| weight(*d)).sum();
        failed / all
    }

    /// Root-mean-square of per-parameter distances, each in [0, 1].
    fn distance(&self, a: &Params, b: &Params) -> f64 {
        let mut sum = 0.0;
        let mut n = 0usize;
        for (k, spec) in self.space {
            let d = match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) => axis(spec, x, y),
                (None, None) => 0.0,
                _ => 1.0,
            };
            sum += d * d;
            n += 1;
        }
        if n == 0 {
            0.0
        } else {
            (sum / n as f64).sqrt()
        }
    }
}

pub(super) fn number(v: &ParamValue) -> Option<f64> {
    match v {
        ParamValue::Int(i) => Some(*i as f64),
        ParamValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// A numeric parameter's axis: the transform of its values (log for
/// `log_float`) and the ends of its range, transformed.
pub(super) type Scale = (fn(f64) -> f64, f64, f64);

/// The axis of a numeric parameter; `None` for a choice.
pub(super) fn scale(spec: &ParamSpec) -> Option<Scale> {
    fn same(v: f64) -> f64 {
        v
    }
    fn log(v: f64) -> f64 {
        v.max(f64::MIN_POSITIVE).ln()
    }
    match spec {
        ParamSpec::Int { min, max } => Some((same, *min as f64, *max as f64)),
        ParamSpec::Float { min, max } => Some((same, *min, *max)),
        ParamSpec::LogFloat { min, max } => Some((log, log(*min), log(*max))),
        ParamSpec::Choice { .. } => None,
    }
}

/// Distance along one parameter, normalized to [0, 1].
fn axis(spec: &ParamSpec, x: &ParamValue, y: &ParamValue) -> f64 {
    match (scale(spec), number(x), number(y)) {
        (None, ..) if x == y => 0.0,
        (None, ..) => 1.0,
        (Some((f, lo, hi)), Some(a), Some(b)) => ((f(a) - f(b)) / (hi - lo)).abs().min(1.0),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(x: f64, status: TrialStatus, label: Option<FailureLabel>) -> Trial {
        let mut t = crate::domain::test_trial(at(x));
        t.status = status;
        t.label = label;
        t
    }

    fn at(x: f64) -> Params {
        let mut p = Params::new();
        p.insert("x".into(), ParamValue::Float(x));
        p
    }

    #[test]
    fn risk_follows_nearby_failures_and_ignores_non_evidence() {
        let mut space = BTreeMap::new();
        space.insert(
            "x".to_string(),
            ParamSpec::Float {
                min: 0.0,
                max: 10.0,
            },
        );
        let crash = Some(FailureLabel::Crash);
        let trials = vec![
            trial(8.0, TrialStatus::Failed, crash),
            trial(8.5, TrialStatus::Failed, crash),
            trial(7.5, TrialStatus::Discarded, None),
            trial(2.0, TrialStatus::Kept, None),
            trial(5.0, TrialStatus::Failed, Some(FailureLabel::Interrupted)),
        ];
        let m = FailureModel::new(&space, &trials);
        assert_eq!(m.failures(), 2);
        assert!(m.risk(&at(8.6)) > 0.5, "{}", m.risk(&at(8.6)));
        assert_eq!(m.risk(&at(2.1)), 0.0);
        assert_eq!(m.risk(&at(5.0)), 0.0, "an interruption is no evidence");
        assert_eq!(m.risk(&at(4.5)), 0.0, "nothing measured nearby");
        // Beside one crash and two successes a little farther off: the
        // nearest counts most, so the candidate is risky (an unweighted
        // vote would say 1 in 3).
        let edge = vec![
            trial(4.1, TrialStatus::Failed, crash),
            trial(3.9, TrialStatus::Discarded, None),
            trial(3.8, TrialStatus::Discarded, None),
        ];
        let m = FailureModel::new(&space, &edge);
        assert!(m.risk(&at(4.06)) > 0.5, "{}", m.risk(&at(4.06)));
        assert!(m.risk(&at(3.9)) < 0.5, "{}", m.risk(&at(3.9)));
    }
}
