//! What the keep rule and early stopping pool and compare: a trial's
//! scores by seed (on the scale the rule judges them), and the spreads
//! pooled over every recipe measured with several seeds (`Pools`).

use std::collections::BTreeMap;

use super::Pool;
use crate::config::Config;
use crate::domain::{Incumbent, Trial};

/// Scores by seed (seed 0: the trial's own run): the deciding eval's when
/// `deciding`, the proxy's otherwise.
pub fn scores_by_seed(trial: &Trial, full: bool, deciding: bool) -> BTreeMap<u64, f64> {
    let pick = |proxy: Option<f64>, f: Option<f64>| if deciding && full { f } else { proxy };
    let mut out = BTreeMap::new();
    if let Some(s) = pick(trial.proxy_score, trial.full_score) {
        out.insert(0, s);
    }
    for r in &trial.seed_runs {
        if let Some(s) = pick(r.proxy_score, r.full_score) {
            out.insert(r.seed, s);
        }
    }
    out
}

/// `scores_by_seed` as the keep rule compares them (`noise.scale`).
pub fn judged_by_seed(
    scale: crate::config::Scale,
    trial: &Trial,
    full: bool,
    deciding: bool,
) -> BTreeMap<u64, f64> {
    scores_by_seed(trial, full, deciding)
        .into_iter()
        .filter_map(|(seed, s)| Some((seed, scale.judged(s)?)))
        .collect()
}

/// The spreads the keep rule pools: every recipe measured with several
/// seeds, except the current incumbent (whose runs are still being added;
/// they join at each decision, and for good when it is replaced); and, with
/// `[prune]`, the spread of their progress curves at each look.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    pub proxy: Pool,
    pub deciding: Pool,
    /// By look of `[prune]` (empty without it).
    pub curve: Vec<Pool>,
    prune: Option<super::PruneRule>,
    scale: crate::config::Scale,
}

impl Pools {
    pub fn new(config: &Config) -> Pools {
        let exp = &config.experiment.file;
        let prune = exp.prune.as_ref().map(|p| p.rule(exp.direction));
        Pools {
            curve: vec![Pool::default(); prune.as_ref().map_or(0, |p| p.looks.len())],
            prune,
            scale: exp.noise.scale,
            ..Default::default()
        }
    }

    /// Adds a recipe's runs, and how they moved with its parent's same-seed runs.
    pub fn add(&mut self, trial: &Trial, parent: Option<&Trial>, full: bool) {
        for (pool, deciding) in [(&mut self.proxy, false), (&mut self.deciding, true)] {
            let on = |t| judged_by_seed(self.scale, t, full, deciding);
            let mine = on(trial);
            pool.add(&mine.values().copied().collect::<Vec<_>>());
            if let Some(p) = parent {
                pool.pairing.add(&mine, &on(p));
            }
        }
        if let Some(rule) = &self.prune {
            let curves = curves(trial, &rule.metric);
            for (k, vals) in super::look_values(&curves, &rule.looks).iter().enumerate() {
                self.curve[k].add(vals);
            }
        }
    }

    /// The pool for a decision against `reference`, with the incumbent's
    /// runs when the reference is the incumbent.
    pub fn with(
        &self,
        reference: &Trial,
        full: bool,
        deciding: bool,
        incumbent: Option<&Incumbent>,
    ) -> Pool {
        let mut pool = if deciding { self.deciding } else { self.proxy };
        if incumbent.is_some_and(|i| i.trial == reference.id) {
            pool.add(&self.judged(reference, full, deciding));
        }
        pool
    }

    fn judged(&self, trial: &Trial, full: bool, deciding: bool) -> Vec<f64> {
        judged_by_seed(self.scale, trial, full, deciding)
            .into_values()
            .collect()
    }

    /// What the incumbent's runs hold a running trial to (`[prune]`), with
    /// its mean train time (the slot time a stopped run saves is reckoned
    /// from it). `None` without `[prune]` or without curves and a spread.
    pub fn bars(&self, incumbent: &Trial) -> Option<(super::Bars, u64)> {
        let rule = self.prune.as_ref()?;
        let curves = curves(incumbent, &rule.metric);
        let bars = super::Bars::new(rule, incumbent.id, &curves, &self.curve)?;
        let times: Vec<u64> = std::iter::once(incumbent.train.as_ref())
            .chain(incumbent.seed_runs.iter().map(|r| r.train.as_ref()))
            .flatten()
            .filter(|t| t.pruned.is_none() && t.succeeded())
            .map(|t| t.duration_ms)
            .collect();
        let mean = times.iter().sum::<u64>() / times.len().max(1) as u64;
        Some((bars, mean))
    }
}

/// The progress curves `metric` of a trial's finished runs (seed 0 and its
/// seed runs; a failed or stopped run has none that counts).
pub fn curves<'a>(trial: &'a Trial, metric: &str) -> Vec<&'a [(f64, f64)]> {
    // A stopped run's report carries `pruned`, filtered below.
    let own = trial
        .label
        .is_none()
        .then_some(trial.train.as_ref())
        .flatten();
    own.into_iter()
        .chain(
            trial
                .seed_runs
                .iter()
                .filter(|r| r.failure.is_none())
                .filter_map(|r| r.train.as_ref()),
        )
        .filter(|t| t.succeeded() && t.pruned.is_none())
        .filter_map(|t| t.progress.get(metric))
        .filter(|c| !c.is_empty())
        .map(|c| c.as_slice())
        .collect()
}
