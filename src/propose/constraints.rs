//! A failure model over the declared parameter space, fed by lineage labels:
//! a candidate whose nearest measured neighbours mostly failed (crash, budget
//! overrun, a gate, divergence, no metric) is predicted to fail too.
//!
//! Nearest-neighbour voting in the normalized space of every declared
//! parameter (all surfaces: a crash caused by another surface's value still
//! counts), with a radius: far from anything measured, the model has no
//! opinion and the search explores.
//!
//! Some labels also say which way the trouble lies. Along the parameters an
//! experiment declares as costs (`[surface.cost]`), a size failure
//! (`size_failure`, `out_of_memory`, `gpu_out_of_memory`) is a wall: a
//! recipe at least as large on every size axis is predicted to fail too,
//! however far it is; a `budget_overrun` is a wall on the size and work
//! axes together. A crash, a divergence or a failed pre-flight marks only
//! its neighbourhood.

use std::collections::BTreeMap;

use crate::domain::{FailureLabel, ParamValue, Params, Trial, TrialStatus};
use crate::recipe::{ordinal, Cost, ParamSpec};

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
                | FailureLabel::GpuOutOfMemory
                | FailureLabel::PreflightFailed,
            ),
        ) => Some(true),
        // Interrupted, refused edits, proposer errors, duplicates: no evidence.
        _ => None,
    }
}

/// The cost a failure label says its recipe was over: its size, or its
/// work for the time budget. `None`: the label marks a region, no direction.
pub fn cost_of(label: FailureLabel) -> Option<Cost> {
    match label {
        FailureLabel::SizeFailure | FailureLabel::OutOfMemory | FailureLabel::GpuOutOfMemory => {
            Some(Cost::Size)
        }
        FailureLabel::BudgetOverrun => Some(Cost::Work),
        _ => None,
    }
}

pub struct FailureModel<'a> {
    space: &'a BTreeMap<String, ParamSpec>,
    points: Vec<(&'a Params, bool)>,
    /// What larger values of each cost parameter cost.
    costs: BTreeMap<&'a str, Cost>,
    /// Recipes that failed for a cost: `Size` (too big) or `Work` (too slow).
    walls: Vec<(&'a Params, Cost)>,
}

impl<'a> FailureModel<'a> {
    /// `space`: every declared parameter; `trials`: any lineage trials.
    pub fn new(space: &'a BTreeMap<String, ParamSpec>, trials: &'a [Trial]) -> FailureModel<'a> {
        let points = trials
            .iter()
            .filter_map(|t| evidence(t).map(|f| (&t.config, f)))
            .collect();
        FailureModel {
            space,
            points,
            costs: BTreeMap::new(),
            walls: Vec::new(),
        }
    }

    /// From configurations and whether each failed (see [`evidence`]).
    pub fn from_points(
        space: &'a BTreeMap<String, ParamSpec>,
        points: impl IntoIterator<Item = (&'a Params, bool)>,
    ) -> FailureModel<'a> {
        FailureModel {
            space,
            points: points.into_iter().collect(),
            costs: BTreeMap::new(),
            walls: Vec::new(),
        }
    }

    /// The experiment's cost parameters, and the recipes that failed for a
    /// cost (see [`cost_of`]): walls along those axes.
    pub fn with_costs(
        mut self,
        costs: &'a BTreeMap<String, Cost>,
        failures: impl IntoIterator<Item = (&'a Params, Cost)>,
    ) -> FailureModel<'a> {
        self.costs = costs.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        if !self.costs.is_empty() {
            self.walls = failures.into_iter().collect();
        }
        self
    }

    /// The cost a recipe is predicted to fail for: it is at least as large,
    /// on every axis of that cost, as a recipe that failed for it (a size
    /// failure: the size axes; an overrun: the size and work axes).
    pub fn beyond(&self, config: &Params) -> Option<Cost> {
        self.walls.iter().find_map(|(wall, cost)| {
            let axes: Vec<&str> = self
                .costs
                .iter()
                .filter(|(_, c)| **c == Cost::Size || *cost == Cost::Work)
                .map(|(k, _)| *k)
                .collect();
            let at_least = |k: &&str| {
                let v = config.get(*k).and_then(ordinal);
                let w = wall.get(*k).and_then(ordinal);
                matches!((v, w), (Some(v), Some(w)) if v >= w)
            };
            (!axes.is_empty() && axes.iter().all(at_least)).then_some(*cost)
        })
    }

    /// The number of failures the model knows.
    pub fn failures(&self) -> usize {
        self.points.iter().filter(|(_, f)| *f).count()
    }

    /// 1 past a wall ([`beyond`](Self::beyond)); else the share of
    /// failures among the (up to) `K` nearest measured configurations
    /// within `RADIUS`, each weighted by the inverse of its distance (the
    /// nearest says most: a candidate just inside a crash region, beside
    /// both a crash and a success, is risky); 0 when none is that near.
    pub fn risk(&self, config: &Params) -> f64 {
        if self.beyond(config).is_some() {
            return 1.0;
        }
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

    #[test]
    fn a_size_failure_walls_off_every_larger_recipe_and_a_crash_only_its_neighbourhood() {
        let mut space = BTreeMap::new();
        space.insert("w".to_string(), ParamSpec::Int { min: 1, max: 100 });
        space.insert("b".to_string(), ParamSpec::Int { min: 1, max: 100 });
        space.insert("lr".to_string(), ParamSpec::Float { min: 0.0, max: 1.0 });
        let p = |w: i64, b: i64, lr: f64| -> Params {
            [
                ("w".to_string(), ParamValue::Int(w)),
                ("b".to_string(), ParamValue::Int(b)),
                ("lr".to_string(), ParamValue::Float(lr)),
            ]
            .into_iter()
            .collect()
        };
        let costs: BTreeMap<String, Cost> =
            [("w".to_string(), Cost::Size), ("b".to_string(), Cost::Work)].into();
        let (big, slow, crashed) = (p(60, 10, 0.5), p(20, 50, 0.5), p(10, 10, 0.9));
        let points = [(&big, true), (&slow, true), (&crashed, true)];
        let walls = [(&big, Cost::Size), (&slow, Cost::Work)];
        let m = FailureModel::from_points(&space, points).with_costs(&costs, walls);
        // Far from the size failure, but larger: walled off, whatever else.
        assert_eq!(m.beyond(&p(95, 1, 0.0)), Some(Cost::Size));
        assert_eq!(m.risk(&p(95, 1, 0.0)), 1.0);
        // Smaller than it, and less work than the overrun: free.
        assert_eq!(m.beyond(&p(59, 49, 0.0)), None);
        // As large and as much work as the overrun: too slow.
        assert_eq!(m.beyond(&p(25, 50, 0.1)), Some(Cost::Work));
        // Less work on one axis than the overrun: not predicted.
        assert_eq!(m.beyond(&p(25, 40, 0.1)), None);
        // A crash has no direction: its neighbourhood only.
        assert!(m.risk(&p(10, 10, 0.88)) > 0.5);
        assert_eq!(m.beyond(&p(10, 10, 0.88)), None);
        assert_eq!(m.risk(&p(10, 10, 0.2)), 0.0, "far from the crash");
        // Without declared costs the same failures are local only.
        let none = BTreeMap::new();
        let plain = FailureModel::from_points(&space, points).with_costs(&none, walls);
        assert_eq!(plain.risk(&p(95, 1, 0.0)), 0.0);
        assert_eq!(cost_of(FailureLabel::GpuOutOfMemory), Some(Cost::Size));
        assert_eq!(cost_of(FailureLabel::BudgetOverrun), Some(Cost::Work));
        assert_eq!(cost_of(FailureLabel::PreflightFailed), None);
    }
}
