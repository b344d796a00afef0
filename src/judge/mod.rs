//! The keep rule: a sequential, paired test with a stated false-keep rate.
//! Pure (no actors, no I/O); the evaluator feeds it scores by seed and acts
//! on the call it returns.
//!
//! - **Paired**: a candidate's run with `RATCHET_SEED = s` is compared with
//!   its reference's run with the same seed (same initialisation and data
//!   order) as far as same-seed runs move together, and with the
//!   reference's other runs as far as they do not ([`estimate`]). How much
//!   they move together is measured, not assumed: the correlation of
//!   same-seed runs of a recipe and its parent, pooled over every such pair
//!   ([`Pairing`]) and shrunk toward none. With none (each seed a fresh
//!   draw, as on tinylm (0.14–0.25) and the regression example (−0.11)),
//!   a candidate's first run is compared with the reference's mean over
//!   all its runs, not with one of them; with seeds that fix most of the
//!   noise, with that seed's run (the per-seed difference). Once the
//!   candidate has every seed the reference has, both are the mean of the
//!   per-seed differences.
//! - **Pooled spread**: the run-to-run variance of a recipe is estimated
//!   from every recipe measured with several seeds (within-recipe squares,
//!   pooled by degrees of freedom), and a recipe's own runs move it only as
//!   far as their number warrants (shrinkage toward the pool, the pool
//!   counting as at most [`PRIOR_DF`] degrees of freedom).
//! - **Sequential**: after each run (look) the candidate is kept as soon as
//!   the lower bound of its gain is above zero, and stopped as soon as it is
//!   not on course (its gain at most half of what the last look would need);
//!   otherwise it gets one more run, up to `max_runs`. The bounds are
//!   two-sided at `false_keep_rate`, and the looks split it between them
//!   (the early ones share [`EARLY_SHARE`] of it, the last one has the
//!   rest; Bonferroni), with Student-t quantiles on the pooled degrees of
//!   freedom, so a candidate that is no better than its reference is kept
//!   with probability at most half of `false_keep_rate`, however many
//!   looks it gets. That half is what keeps the share of keeps that are no
//!   true gain within the rate in a search where most candidates are not
//!   better (the simulation test); the share itself depends on that mix.

use std::collections::BTreeMap;

use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::domain::{Call, Direction, Evidence, Pruning, SameSeed, TrialId};

mod gates;
mod pools;

pub use gates::{check, check_preflight, Failure};
pub use pools::{curves, judged_by_seed, scores_by_seed, Pools};

/// The most degrees of freedom the pool counts for when a recipe's own
/// spread is shrunk toward it: recipes differ in how noisy they are (a high
/// learning rate is noisier), so many runs of other recipes must not drown
/// a recipe's own evidence.
pub const PRIOR_DF: f64 = 10.0;

/// The share of the false-keep rate the looks before the last one spend
/// together: most of it is kept for the last look, where most of the
/// evidence is, so a modest gain is kept after every run and a large one
/// after the first.
pub const EARLY_SHARE: f64 = 0.2;

/// A candidate continues only while its gain is above this share of the
/// bound the last look would need.
pub const ON_COURSE: f64 = 0.5;

/// The within-recipe spread pooled over recipes: the sum of squared
/// deviations from each recipe's mean, and its degrees of freedom.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pool {
    pub sum_sq: f64,
    pub df: u32,
    /// How same-seed runs of related recipes move together.
    pub pairing: Pairing,
}

impl Pool {
    /// Adds one recipe's scores over its runs (fewer than two add nothing).
    pub fn add(&mut self, values: &[f64]) {
        if let Some((ss, df)) = squares(values) {
            self.sum_sq += ss;
            self.df += df;
        }
    }

    /// The pooled variance, once any recipe has several runs.
    pub fn variance(&self) -> Option<f64> {
        (self.df > 0).then(|| self.sum_sq / self.df as f64)
    }

    /// A recipe's variance: its own runs' shrunk toward the pool, and the
    /// degrees of freedom that estimate has. `None` with no pool and fewer
    /// than two runs of its own.
    pub fn shrunk(&self, own: &[f64]) -> Option<(f64, f64)> {
        let prior = self.variance().map(|v| (v, (self.df as f64).min(PRIOR_DF)));
        match (prior, squares(own)) {
            (Some((v, k)), Some((ss, df))) => {
                let df = df as f64;
                Some(((k * v + ss) / (k + df), k + df))
            }
            (Some((v, k)), None) => Some((v, k)),
            (None, Some((ss, df))) => Some((ss / df as f64, df as f64)),
            (None, None) => None,
        }
    }
}

/// The correlation of same-seed runs of two related recipes (a trial and
/// its parent), pooled over pairs: the cross products and squares of each
/// pair's deviations from its means over the seeds both ran.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pairing {
    pub cross: f64,
    pub sq_a: f64,
    pub sq_b: f64,
    pub df: u32,
}

impl Pairing {
    /// Adds a pair of recipes' runs by seed (fewer than two seeds in
    /// common add nothing).
    pub fn add(&mut self, a: &BTreeMap<u64, f64>, b: &BTreeMap<u64, f64>) {
        let common: Vec<(f64, f64)> = a
            .iter()
            .filter_map(|(s, x)| Some((*x, *b.get(s)?)))
            .collect();
        if common.len() < 2 {
            return;
        }
        let n = common.len() as f64;
        let ma = common.iter().map(|p| p.0).sum::<f64>() / n;
        let mb = common.iter().map(|p| p.1).sum::<f64>() / n;
        for (x, y) in common.iter() {
            self.cross += (x - ma) * (y - mb);
            self.sq_a += (x - ma) * (x - ma);
            self.sq_b += (y - mb) * (y - mb);
        }
        self.df += common.len() as u32 - 1;
    }

    /// The pooled correlation, shrunk toward none as a recipe's spread is
    /// toward the pool (the prior counting as [`PRIOR_DF`] degrees of
    /// freedom): a few pairs that happen to move together must not make
    /// the rule count on pairing. 0 with no pairs.
    pub fn correlation(&self) -> f64 {
        let denominator = (self.sq_a * self.sq_b).sqrt();
        if self.df == 0 || denominator <= 0.0 {
            return 0.0;
        }
        let df = self.df as f64;
        (self.cross / denominator).clamp(-1.0, 1.0) * df / (df + PRIOR_DF)
    }
}

/// Sum of squared deviations from the mean and its degrees of freedom.
fn squares(values: &[f64]) -> Option<(f64, u32)> {
    if values.len() < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let ss = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    Some((ss, values.len() as u32 - 1))
}

/// The settings of the rule (`[noise]` in experiment.toml).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// The most a candidate no better than its reference may be kept.
    pub false_keep_rate: f64,
    /// The most runs a decision may take (its own and `noise.seeds` re-runs).
    pub max_runs: u32,
}

impl Rule {
    /// The one-sided level of the look after `runs` runs. The bounds are
    /// two-sided at the false-keep rate (a keep needs the gain's interval
    /// above zero, a regression below it), so a change that is no better is
    /// kept at most half the rate; that keeps the share of keeps that are
    /// no true gain within the rate in a search where most candidates are
    /// not (the simulation test). Of that, the early looks share
    /// [`EARLY_SHARE`] (a keep there must be very clear), the last look has
    /// the rest. The shares add up, so the rate holds over the whole
    /// sequence (Bonferroni).
    pub fn level(&self, runs: u32, last: bool) -> f64 {
        let rate = self.false_keep_rate / 2.0;
        let early = self.max_runs.saturating_sub(1);
        if early == 0 {
            rate
        } else if last || runs >= self.max_runs {
            rate * (1.0 - EARLY_SHARE)
        } else {
            rate * EARLY_SHARE / early as f64
        }
    }
}

/// The gain of a candidate over a reference and its variance, given the
/// variance of one run of each (`vc`, `vr`) and the correlation `rho` of
/// same-seed runs. The candidate's mean over its runs is compared with a
/// weighted mean of the reference's runs: those with the candidate's seeds
/// (weight `a`) and the rest (`1 - a`), `a` the weight that makes the
/// variance of the gain least. Uncorrelated, that is the reference's mean
/// over all its runs; fully correlated, its runs with the candidate's
/// seeds (the mean per-seed difference). `None` without candidate runs or
/// reference runs.
pub fn estimate(
    direction: Direction,
    candidate: &BTreeMap<u64, f64>,
    reference: &BTreeMap<u64, f64>,
    (vc, vr, rho): (f64, f64, f64),
) -> Option<Estimate> {
    if candidate.is_empty() || reference.is_empty() {
        return None;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for (s, v) in reference {
        if candidate.contains_key(s) {
            same.push(*v);
        } else {
            other.push(*v);
        }
    }
    let n = candidate.len();
    let weight = same_seed_weight(n, same.len(), other.len(), (vc, vr, rho));
    let theirs = weight * mean(&same) + (1.0 - weight) * mean(&other);
    let mine = mean(&candidate.values().copied().collect::<Vec<_>>());
    Some(Estimate {
        gain: direction.gain(mine, theirs),
        variance: variance(n, same.len(), other.len(), weight, (vc, vr, rho)),
        weight,
    })
}

/// A gain, its variance and the weight of the reference's same-seed runs in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub gain: f64,
    pub variance: f64,
    pub weight: f64,
}

/// The weight on the reference's `same` runs (those with seeds of the
/// candidate's `n`) against its `other` runs that makes the gain's
/// variance least.
fn same_seed_weight(n: usize, same: usize, other: usize, (vc, vr, rho): (f64, f64, f64)) -> f64 {
    match (same, other) {
        (0, _) => 0.0,
        (_, 0) => 1.0,
        _ => {
            let (n, k, r) = (n as f64, same as f64, other as f64);
            let c = rho * (vc * vr).sqrt();
            let weight = (vr / r + c / n) / (vr / k + vr / r);
            // No spread of the reference's runs: its plain mean.
            if weight.is_finite() {
                weight.clamp(0.0, 1.0)
            } else {
                k / (k + r)
            }
        }
    }
}

/// The variance of the candidate's mean over `n` runs less the weighted
/// mean of the reference's runs (`weight` on `same`, the rest on `other`):
/// only same-seed runs covary.
fn variance(
    n: usize,
    same: usize,
    other: usize,
    weight: f64,
    (vc, vr, rho): (f64, f64, f64),
) -> f64 {
    let n = n as f64;
    let c = rho * (vc * vr).sqrt();
    let mut v = vc / n;
    if same > 0 {
        v += weight * weight * vr / same as f64 - 2.0 * weight * c / n;
    }
    if other > 0 {
        v += (1.0 - weight) * (1.0 - weight) * vr / other as f64;
    }
    v.max(0.0)
}

/// One look at a candidate's runs against its reference's. `last` forces a
/// decision (no more runs may be had). Without any spread estimate (no
/// seed re-runs configured) the candidate must strictly beat its reference.
pub fn look(
    rule: Rule,
    pool: &Pool,
    direction: Direction,
    candidate: &BTreeMap<u64, f64>,
    reference: &BTreeMap<u64, f64>,
    last: bool,
) -> Option<Evidence> {
    let runs = candidate.len() as u32;
    let last = last || runs >= rule.max_runs;
    let mine: Vec<f64> = candidate.values().copied().collect();
    let theirs: Vec<f64> = reference.values().copied().collect();
    let spread = pool.shrunk(&mine).zip(pool.shrunk(&theirs));
    let Some(((vc, dfc), (vr, dfr))) = spread else {
        let gain = estimate(direction, candidate, reference, (1.0, 1.0, 0.0))?.gain;
        let call = if gain > 0.0 { Call::Keep } else { Call::Stop };
        return Some(Evidence {
            runs,
            gain,
            se: 0.0,
            bound: 0.0,
            futility: 0.0,
            df: 0.0,
            rate: rule.false_keep_rate,
            call,
            log: false,
            same_seed: None,
        });
    };
    let rho = pool.pairing.correlation();
    let e = estimate(direction, candidate, reference, (vc, vr, rho))?;
    let df = dfc.min(dfr);
    let se = e.variance.sqrt();
    let max_runs = rule.max_runs.max(runs);
    let bound = quantile(1.0 - rule.level(runs, last), df) * se;
    // The last look: the candidate has run the reference's seeds first.
    let (m, n) = (reference.len(), max_runs as usize);
    let (same, other) = (n.min(m), m - n.min(m));
    let weight = same_seed_weight(n, same, other, (vc, vr, rho));
    let last_se = variance(n, same, other, weight, (vc, vr, rho)).sqrt();
    let last_bound = quantile(1.0 - rule.level(max_runs, true), df) * last_se;
    let futility = ON_COURSE * last_bound;
    let call = if e.gain > bound {
        Call::Keep
    } else if last || e.gain <= futility {
        Call::Stop
    } else {
        Call::Continue
    };
    Some(Evidence {
        runs,
        gain: e.gain,
        se,
        bound,
        futility,
        df,
        rate: rule.false_keep_rate,
        call,
        log: false,
        same_seed: Some(SameSeed {
            weight: e.weight,
            correlation: rho,
        }),
    })
}

// ---------------------------------------------------------------------------
// Early stopping: a run's progress curve against the incumbent's.
//
// A trial's own run is looked at a few times while it trains (`looks`,
// shares of the incumbent's curve). At each look its progress value is
// compared with the incumbent's mean curve at the same position, and the
// run is stopped when it is behind by more than `t · se`: `se` from the
// incumbent's spread at that look over its seed runs, shrunk toward the
// spread pooled over every recipe measured with several runs (as the keep
// rule does), plus one run's variance for the candidate; `t` at
// `false_prune_rate` split evenly over the looks (Bonferroni). A run whose
// curve is not behind the incumbent's is thus stopped with probability at
// most `false_prune_rate`. (Whether a curve behind at one position ends
// behind is the experiment's business: a surface that changes what the
// progress metric measures is left out with `prune.surfaces`.)

/// The value of a curve of (position, value) points at `at`, by linear
/// interpolation between the points around it; `None` outside the curve.
pub fn curve_at(curve: &[(f64, f64)], at: f64) -> Option<f64> {
    let first = curve.first()?;
    if at < first.0 {
        return None;
    }
    for w in curve.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if at <= x1 {
            if x1 <= x0 {
                return Some(y1);
            }
            return Some(y0 + (y1 - y0) * (at - x0) / (x1 - x0));
        }
    }
    let last = curve.last()?;
    (at <= last.0).then_some(last.1)
}

/// The value a run reports at a look: its first point at or after `at`
/// (what a running curve is judged on, so the spreads are of the same
/// kind: single points, not interpolations that average two of them).
pub fn curve_from(curve: &[(f64, f64)], at: f64) -> Option<f64> {
    curve.iter().find(|p| p.0 >= at).map(|p| p.1)
}

/// Where a recipe's runs are all looked at: `share` of the shortest curve.
fn look_positions(curves: &[&[(f64, f64)]], looks: &[f64]) -> Option<(Vec<f64>, f64)> {
    let end = curves
        .iter()
        .map(|c| c.last().map(|p| p.0))
        .collect::<Option<Vec<f64>>>()?
        .into_iter()
        .reduce(f64::min)?;
    (end > 0.0).then(|| (looks.iter().map(|f| f * end).collect(), end))
}

/// The values of a recipe's run curves at each look (for the pools): one
/// list per look, empty where a curve does not reach.
pub fn look_values(curves: &[&[(f64, f64)]], looks: &[f64]) -> Vec<Vec<f64>> {
    let Some((at, _)) = look_positions(curves, looks) else {
        return vec![Vec::new(); looks.len()];
    };
    at.iter()
        .map(|&a| curves.iter().filter_map(|c| curve_from(c, a)).collect())
        .collect()
}

/// The settings of early stopping (`[prune]` in experiment.toml).
#[derive(Clone, Debug, PartialEq)]
pub struct PruneRule {
    pub metric: String,
    pub direction: Direction,
    /// The most a run that is not behind may be stopped, over all looks.
    pub false_prune_rate: f64,
    /// Shares of the incumbent's curve where runs are looked at.
    pub looks: Vec<f64>,
}

/// One look: a run at or past `at` is stopped when behind by more than `bound`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub at: f64,
    pub bound: f64,
    pub se: f64,
    pub df: f64,
}

/// What a running curve is held to: the incumbent's mean curve and a bar
/// per look (`None` where no spread is known there).
#[derive(Clone, Debug, PartialEq)]
pub struct Bars {
    pub against: TrialId,
    pub metric: String,
    pub direction: Direction,
    pub rate: f64,
    pub mean: Vec<(f64, f64)>,
    pub bars: Vec<Option<Bar>>,
    /// The incumbent's shortest curve ends here.
    pub end: f64,
}

impl Bars {
    /// The bars for runs compared with `against`, whose runs' curves are
    /// `curves`; `pools[k]`: the spreads at look `k` of other recipes.
    /// `None` when the incumbent has no curve or no look has a spread.
    pub fn new(
        rule: &PruneRule,
        against: TrialId,
        curves: &[&[(f64, f64)]],
        pools: &[Pool],
    ) -> Option<Bars> {
        let (at, end) = look_positions(curves, &rule.looks)?;
        let shortest = curves
            .iter()
            .find(|c| c.last().is_some_and(|p| p.0 == end))?;
        let mean: Vec<(f64, f64)> = shortest
            .iter()
            .filter_map(|&(x, _)| {
                let vals: Vec<f64> = curves.iter().filter_map(|c| curve_at(c, x)).collect();
                (vals.len() == curves.len())
                    .then(|| (x, vals.iter().sum::<f64>() / vals.len() as f64))
            })
            .collect();
        let looks = rule.looks.len().max(1) as f64;
        let level = rule.false_prune_rate / looks;
        let bars: Vec<Option<Bar>> = at
            .iter()
            .enumerate()
            .map(|(k, &a)| {
                let own: Vec<f64> = curves.iter().filter_map(|c| curve_from(c, a)).collect();
                let pool = pools.get(k).copied().unwrap_or_default();
                let (vr, dfr) = pool.shrunk(&own)?;
                // One run of the candidate: the pool's spread, else the incumbent's.
                let (vc, dfc) = pool.shrunk(&[]).unwrap_or((vr, dfr));
                let var = vc + vr / own.len().max(1) as f64;
                if !(var.is_finite() && var > 0.0) {
                    return None;
                }
                let (se, df) = (var.sqrt(), dfc.min(dfr));
                Some(Bar {
                    at: a,
                    bound: quantile(1.0 - level, df) * se,
                    se,
                    df,
                })
            })
            .collect();
        (mean.len() >= 2 && bars.iter().any(Option::is_some)).then(|| Bars {
            against,
            metric: rule.metric.clone(),
            direction: rule.direction,
            rate: rule.false_prune_rate,
            mean,
            bars,
            end,
        })
    }

    /// A run's latest point (`at`, `value`): the looks it has reached from
    /// `next` on are made; `Some` when one says stop. `next` moves past
    /// every look made.
    pub fn look(&self, next: &mut usize, at: f64, value: f64) -> Option<Pruning> {
        while let Some(bar) = self.bars.get(*next) {
            let Some(bar) = bar else {
                *next += 1;
                continue;
            };
            if at < bar.at {
                return None;
            }
            *next += 1;
            let Some(reference) = curve_at(&self.mean, at) else {
                continue;
            };
            let behind = -self.direction.gain(value, reference);
            if behind > bar.bound {
                return Some(Pruning {
                    against: self.against,
                    metric: self.metric.clone(),
                    at,
                    value,
                    reference,
                    behind,
                    bound: bar.bound,
                    se: bar.se,
                    df: bar.df,
                    look: *next as u32,
                    looks: self.bars.len() as u32,
                    rate: self.rate,
                    end: self.end,
                    saved_ms: 0,
                });
            }
        }
        None
    }
}

/// The `p` quantile of Student's t with `df` degrees of freedom.
fn quantile(p: f64, df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df.max(1.0)) {
        Ok(t) => t.inverse_cdf(p),
        // Unreachable for df ≥ 1; a normal quantile's worst case instead.
        Err(_) => 10.0,
    }
}

#[cfg(test)]
mod tests;
