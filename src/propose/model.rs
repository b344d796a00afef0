//! A model of where good values of a surface lie, fed by every specialist's
//! scored trials that changed the surface: a tree-structured Parzen estimator (Bergstra et al. 2011,
//! what Optuna's TPE sampler does), one density per parameter. The scored
//! trials are split into the best quarter and the rest; a candidate ranks by
//! how much more its values look like the best trials' than like the rest's
//! (the sum over parameters of ln l(x)/g(x)). Failed trials count with the
//! rest. Search specialists draw candidates as before (local steps and
//! global samples) and propose the one the model ranks first.

use std::collections::BTreeMap;

use super::constraints;
use crate::domain::{Direction, ParamValue, Params};
use crate::recipe::ParamSpec;

/// Scored trials needed before the model has an opinion.
pub const MIN_SCORED: usize = 5;
/// Share of the scored trials that make up the good group.
const GAMMA: f64 = 0.25;
/// Kernel width on a parameter's normalized (log for `log_float`) axis.
const BANDWIDTH: f64 = 0.12;

/// A measured configuration: its score, or `None` when it failed, and
/// whether its trial changed a parameter of the ranked space.
pub struct Observation<'a> {
    pub config: &'a Params,
    pub score: Option<f64>,
    /// A trial that changed only other surfaces carries its parent's
    /// values of this one: fed those, the model would learn where the
    /// incumbent is, not where good values are. It is left out.
    pub changed: bool,
}

pub struct Ranker<'a> {
    axes: Vec<Axis<'a>>,
}

/// One parameter's densities in the good group and in the rest.
struct Axis<'a> {
    key: &'a str,
    spec: &'a ParamSpec,
    good: Parzen,
    bad: Parzen,
}

/// A Parzen density over one parameter, with a flat prior worth one
/// observation (so an empty group is uniform, never zero).
enum Parzen {
    /// Counts of each declared value.
    Choice { counts: Vec<f64>, n: f64 },
    /// Kernel centres on the normalized axis, each with the weight that
    /// makes up for the part of it outside [0, 1].
    Numeric { points: Vec<(f64, f64)>, n: f64 },
}

impl Parzen {
    fn new(spec: &ParamSpec, key: &str, group: &[&Params]) -> Parzen {
        let n = group.len() as f64;
        let values = group.iter().filter_map(|c| c.get(key));
        match spec {
            ParamSpec::Choice { values: choices } => {
                let mut counts = vec![0.0; choices.len()];
                for v in values {
                    if let Some(i) = choices.iter().position(|c| c == v) {
                        counts[i] += 1.0;
                    }
                }
                Parzen::Choice { counts, n }
            }
            _ => Parzen::Numeric {
                points: values
                    .filter_map(|v| unit(spec, v))
                    .map(|u| (u, truncation(u)))
                    .collect(),
                n,
            },
        }
    }

    fn density(&self, spec: &ParamSpec, v: &ParamValue) -> f64 {
        match (self, spec) {
            (Parzen::Choice { counts, n }, ParamSpec::Choice { values }) => {
                let same = values
                    .iter()
                    .position(|c| c == v)
                    .map_or(0.0, |i| counts[i]);
                (1.0 / values.len() as f64 + same) / (1.0 + n)
            }
            (Parzen::Numeric { points, n }, _) => {
                let Some(x) = unit(spec, v) else {
                    return 1.0;
                };
                let kernels: f64 = points
                    .iter()
                    .filter(|(u, _)| (x - u).abs() < 5.0 * BANDWIDTH)
                    .map(|(u, w)| gaussian(x - u) * w)
                    .sum();
                (1.0 + kernels) / (1.0 + n)
            }
            _ => 1.0,
        }
    }
}

impl<'a> Ranker<'a> {
    /// `space`: the parameters candidates differ in (a surface's). `None`
    /// until `MIN_SCORED` observations that changed the space have a score.
    pub fn new(
        space: &'a BTreeMap<String, ParamSpec>,
        observations: impl IntoIterator<Item = Observation<'a>>,
        direction: Direction,
    ) -> Option<Ranker<'a>> {
        let mut scored: Vec<(f64, &'a Params)> = Vec::new();
        let mut bad: Vec<&'a Params> = Vec::new();
        for o in observations.into_iter().filter(|o| o.changed) {
            match o.score.filter(|s| s.is_finite()) {
                Some(s) => scored.push((s, o.config)),
                None => bad.push(o.config),
            }
        }
        if scored.len() < MIN_SCORED {
            return None;
        }
        scored.sort_by(|a, b| match direction {
            Direction::Minimize => a.0.total_cmp(&b.0),
            Direction::Maximize => b.0.total_cmp(&a.0),
        });
        let n_good = ((scored.len() as f64 * GAMMA).ceil() as usize).max(1);
        let good: Vec<&Params> = scored[..n_good].iter().map(|(_, c)| *c).collect();
        bad.extend(scored[n_good..].iter().map(|(_, c)| *c));
        let axes = space
            .iter()
            .map(|(key, spec)| Axis {
                key,
                spec,
                good: Parzen::new(spec, key, &good),
                bad: Parzen::new(spec, key, &bad),
            })
            .collect();
        Some(Ranker { axes })
    }

    /// ln l(x)/g(x) summed over the space's parameters: higher is more like
    /// the best trials.
    pub fn score(&self, config: &Params) -> f64 {
        self.axes
            .iter()
            .filter_map(|a| {
                let v = config.get(a.key)?;
                Some(a.good.density(a.spec, v).ln() - a.bad.density(a.spec, v).ln())
            })
            .sum()
    }
}

fn gaussian(d: f64) -> f64 {
    let z = d / BANDWIDTH;
    (-0.5 * z * z).exp() / (BANDWIDTH * (2.0 * std::f64::consts::PI).sqrt())
}

/// The share of a kernel at `y` that falls inside [0, 1], inverted, so a
/// value at an edge of the space weighs as much as one in the middle.
fn truncation(y: f64) -> f64 {
    let cdf = |z: f64| 0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2));
    let inside = cdf((1.0 - y) / BANDWIDTH) - cdf(-y / BANDWIDTH);
    1.0 / inside.max(1e-6)
}

/// Abramowitz and Stegun 7.1.26 (absolute error under 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// A numeric value's position in its range, on a log axis for `log_float`.
fn unit(spec: &ParamSpec, v: &ParamValue) -> Option<f64> {
    let (f, lo, hi) = constraints::scale(spec)?;
    let x = f(constraints::number(v)?);
    if hi > lo {
        Some(((x - lo) / (hi - lo)).clamp(0.0, 1.0))
    } else {
        Some(0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> BTreeMap<String, ParamSpec> {
        let mut s = BTreeMap::new();
        s.insert(
            "lr".to_string(),
            ParamSpec::LogFloat {
                min: 1e-4,
                max: 1e-1,
            },
        );
        s.insert(
            "act".to_string(),
            ParamSpec::Choice {
                values: vec![ParamValue::Str("a".into()), ParamValue::Str("b".into())],
            },
        );
        s
    }

    fn config(lr: f64, act: &str) -> Params {
        let mut p = Params::new();
        p.insert("lr".into(), ParamValue::Float(lr));
        p.insert("act".into(), ParamValue::Str(act.into()));
        p
    }

    /// Scores fall with lr and `b` is better: the model ranks a candidate
    /// with a high lr and `b` above one with a low lr and `a`, and the order
    /// flips when the metric is maximized.
    #[test]
    fn ranks_candidates_like_the_best_trials_first() {
        let space = space();
        let lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 2e-4];
        let configs: Vec<Params> = lrs
            .iter()
            .enumerate()
            .map(|(i, lr)| config(*lr, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let observe = |configs: &'_ [Params]| -> Vec<(f64, usize)> {
            configs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let lr = match c["lr"] {
                        ParamValue::Float(x) => x,
                        _ => unreachable!(),
                    };
                    let b = if c["act"] == ParamValue::Str("b".into()) {
                        0.5
                    } else {
                        0.0
                    };
                    (-lr.log10() - b, i)
                })
                .collect()
        };
        let obs = observe(&configs);
        let ranker = |direction| {
            Ranker::new(
                &space,
                obs.iter().map(|(s, i)| Observation {
                    config: &configs[*i],
                    score: Some(*s),
                    changed: true,
                }),
                direction,
            )
            .expect("enough observations")
        };
        let (good, bad) = (config(5e-2, "b"), config(2e-4, "a"));
        let min = ranker(Direction::Minimize);
        assert!(min.score(&good) > min.score(&bad));
        let max = ranker(Direction::Maximize);
        assert!(max.score(&good) < max.score(&bad));
    }

    #[test]
    fn no_opinion_before_enough_scores_and_failures_count_as_bad() {
        let space = space();
        let configs: Vec<Params> = (0..6).map(|i| config(1e-3 * (i + 1) as f64, "a")).collect();
        let few = Ranker::new(
            &space,
            configs.iter().take(MIN_SCORED - 1).map(|c| Observation {
                config: c,
                score: Some(1.0),
                changed: true,
            }),
            Direction::Minimize,
        );
        assert!(few.is_none());
        // Every act=b trial failed; the scored ones are all act=a.
        let failed: Vec<Params> = (0..6).map(|i| config(1e-3 * (i + 1) as f64, "b")).collect();
        let r = Ranker::new(
            &space,
            configs
                .iter()
                .enumerate()
                .map(|(i, c)| Observation {
                    config: c,
                    score: Some(i as f64),
                    changed: true,
                })
                .chain(failed.iter().map(|c| Observation {
                    config: c,
                    score: None,
                    changed: true,
                })),
            Direction::Minimize,
        )
        .expect("enough scores");
        assert!(r.score(&config(1e-3, "a")) > r.score(&config(1e-3, "b")));
    }

    /// The incumbent's lr is 1e-3, and trials on other surfaces, all with
    /// that lr, scored best; the trials that changed lr show that a high
    /// one is better. Only those teach the model: it ranks a high lr first.
    #[test]
    fn trials_that_did_not_change_the_space_do_not_teach_it() {
        let space = space();
        let others: Vec<Params> = (0..12).map(|_| config(1e-3, "a")).collect();
        let changed: Vec<Params> = [1e-4, 2e-4, 5e-4, 2e-3, 1e-2, 3e-2, 5e-2]
            .iter()
            .map(|lr| config(*lr, "a"))
            .collect();
        let observations = || {
            others
                .iter()
                .enumerate()
                .map(|(i, c)| Observation {
                    config: c,
                    score: Some(i as f64 * 0.01),
                    changed: false,
                })
                .chain(changed.iter().map(|c| {
                    let lr = match c["lr"] {
                        ParamValue::Float(x) => x,
                        _ => unreachable!(),
                    };
                    Observation {
                        config: c,
                        score: Some(1.0 - lr.log10()),
                        changed: true,
                    }
                }))
        };
        let r = Ranker::new(&space, observations(), Direction::Minimize).expect("enough");
        let (high, incumbent) = (config(4e-2, "a"), config(1e-3, "a"));
        assert!(r.score(&high) > r.score(&incumbent));
        // Fed every trial, the model would rank the incumbent's value first.
        let all = observations().map(|o| Observation { changed: true, ..o });
        let r = Ranker::new(&space, all, Direction::Minimize).expect("enough");
        assert!(r.score(&high) < r.score(&incumbent));
        // Without enough trials that changed the space: no opinion.
        let few = others.iter().map(|c| Observation {
            config: c,
            score: Some(1.0),
            changed: false,
        });
        assert!(Ranker::new(&space, few, Direction::Minimize).is_none());
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (-2.0, -0.995_322_265),
        ] {
            assert!((erf(x) - want).abs() < 1e-6, "erf({x})");
        }
    }
}
