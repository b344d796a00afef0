//! Which specialist is asked for the next trial (`daemon.allocation`).
//! Pure: the executor keeps the counts and acts on the pick.
//!
//! - `turns`: each in turn.
//! - `yield` (the default): asks are shared out in proportion to each
//!   specialist's smoothed keep rate, `(kept + 1) / (decided + 2)` over
//!   the trials it proposed (stride scheduling: the one with the least
//!   `pass` is asked, and its pass grows by the inverse of its share). A
//!   surface whose trials are never kept (a checkpoint setting that changes
//!   nothing at this budget, say) is asked less as the evidence grows but
//!   never stops being asked; with no outcomes yet it is `turns`.

use serde::{Deserialize, Serialize};

use crate::domain::{Decision, Trial, TrialStatus};

/// How asks are shared between specialists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocation {
    /// Each specialist in turn.
    Turns,
    /// In proportion to each specialist's smoothed keep rate.
    #[default]
    Yield,
}

/// A specialist's outcomes: trials that reached a decision or failed, and
/// how many of those were kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    pub decided: u32,
    pub kept: u32,
}

impl Outcomes {
    /// Counts a settled trial: kept, or not (discarded, pruned, failed).
    /// A trial re-applied onto a newer incumbent counts through the trial
    /// that re-applied it; an interrupted one decided nothing.
    pub fn add(&mut self, trial: &Trial) {
        if let Some(kept) = counts(trial) {
            self.decided += 1;
            self.kept += kept as u32;
        }
    }

    /// The smoothed keep rate (Laplace): 1/2 with no outcomes.
    pub fn share(&self) -> f64 {
        (self.kept as f64 + 1.0) / (self.decided as f64 + 2.0)
    }
}

/// Whether a settled trial counts, and whether it was kept.
pub fn counts(trial: &Trial) -> Option<bool> {
    match trial.status {
        TrialStatus::Kept => Some(true),
        TrialStatus::Discarded if trial.decision == Some(Decision::Rebased) => None,
        TrialStatus::Discarded | TrialStatus::Failed => Some(false),
        _ => None,
    }
}

/// The one to ask among `eligible` (index, pass, outcomes), in the order
/// given (the rotation from the last one asked): the least pass, the first
/// of equals; `turns` takes the first.
pub fn pick(how: Allocation, eligible: &[(usize, f64, Outcomes)]) -> Option<usize> {
    match how {
        Allocation::Turns => eligible.first().map(|e| e.0),
        Allocation::Yield => eligible
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|e| e.0),
    }
}

/// The pass after an ask.
pub fn advance(pass: f64, outcomes: Outcomes) -> f64 {
    pass + 1.0 / outcomes.share()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks `rounds` times among specialists with fixed outcomes, all
    /// always eligible; how many asks each got.
    fn simulate(how: Allocation, outcomes: &[Outcomes], rounds: usize) -> Vec<u32> {
        let n = outcomes.len();
        let mut pass = vec![0.0; n];
        let mut asked = vec![0; n];
        let mut next = 0;
        for _ in 0..rounds {
            let eligible: Vec<(usize, f64, Outcomes)> = (0..n)
                .map(|k| (next + k) % n)
                .map(|i| (i, pass[i], outcomes[i]))
                .collect();
            let i = pick(how, &eligible).unwrap();
            pass[i] = advance(pass[i], outcomes[i]);
            asked[i] += 1;
            next = (i + 1) % n;
        }
        asked
    }

    #[test]
    fn with_no_outcomes_yield_is_turns() {
        let none = [Outcomes::default(); 4];
        assert_eq!(simulate(Allocation::Yield, &none, 12), vec![3, 3, 3, 3]);
        assert_eq!(simulate(Allocation::Turns, &none, 12), vec![3, 3, 3, 3]);
    }

    #[test]
    fn asks_follow_the_keep_rate_and_never_stop() {
        let o = |decided, kept| Outcomes { decided, kept };
        // Kept 3 of 8 (share 0.4), 1 of 8 (0.2), 0 of 8 (0.1).
        let asked = simulate(Allocation::Yield, &[o(8, 3), o(8, 1), o(8, 0)], 70);
        assert_eq!(asked.iter().sum::<u32>(), 70);
        assert!(asked[0] > asked[1] && asked[1] > asked[2], "{asked:?}");
        // In proportion: 40, 20 and 10 of 70.
        for (got, want) in asked.iter().zip([40, 20, 10]) {
            assert!(got.abs_diff(want) <= 1, "{asked:?}");
        }
        // Turns ignores the outcomes.
        let turns = simulate(Allocation::Turns, &[o(8, 3), o(8, 1), o(8, 0)], 72);
        assert_eq!(turns, vec![24, 24, 24]);
    }

    #[test]
    fn outcomes_count_decisions_not_rebases_or_interruptions() {
        let trial = |status: TrialStatus, decision: Option<Decision>| {
            let mut t = crate::domain::test_trial(Default::default());
            t.status = status;
            t.decision = decision;
            t
        };
        let mut o = Outcomes::default();
        o.add(&trial(TrialStatus::Kept, Some(Decision::Improved)));
        o.add(&trial(TrialStatus::Discarded, Some(Decision::WithinNoise)));
        o.add(&trial(TrialStatus::Discarded, Some(Decision::Pruned)));
        o.add(&trial(TrialStatus::Failed, None));
        o.add(&trial(TrialStatus::Discarded, Some(Decision::Rebased)));
        o.add(&trial(TrialStatus::Interrupted, None));
        o.add(&trial(TrialStatus::Evaluating, None));
        assert_eq!(
            o,
            Outcomes {
                decided: 4,
                kept: 1
            }
        );
        assert!((o.share() - 2.0 / 6.0).abs() < 1e-12);
    }
}
