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

/// The scheduler's clock: the pass of the last one asked. A specialist
/// that was not eligible for a while (paused, resting, out of ideas) comes
/// back at the clock, not at the pass it left with, so it does not take
/// every ask until it has caught up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stride {
    now: f64,
}

impl Stride {
    /// The one to ask among `eligible` (index, pass, outcomes), in the
    /// order given (the rotation from the last one asked), and its pass
    /// after the ask: the least pass (at least the clock), the first of
    /// equals; `turns` takes the first.
    pub fn pick(
        &mut self,
        how: Allocation,
        eligible: &[(usize, f64, Outcomes)],
    ) -> Option<(usize, f64)> {
        let lifted = |e: &(usize, f64, Outcomes)| e.1.max(self.now);
        let chosen = match how {
            Allocation::Turns => eligible.first(),
            Allocation::Yield => eligible
                .iter()
                .min_by(|a, b| lifted(a).total_cmp(&lifted(b))),
        }?;
        let at = lifted(chosen);
        self.now = at;
        Some((chosen.0, at + 1.0 / chosen.2.share()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks `rounds` times among specialists with fixed outcomes, those
    /// `away(round, i)` not eligible; who was asked, in order.
    fn run(
        how: Allocation,
        outcomes: &[Outcomes],
        rounds: usize,
        away: impl Fn(usize, usize) -> bool,
    ) -> Vec<usize> {
        let n = outcomes.len();
        let mut pass = vec![0.0; n];
        let mut stride = Stride::default();
        let mut order = Vec::new();
        let mut next = 0;
        for round in 0..rounds {
            let eligible: Vec<(usize, f64, Outcomes)> = (0..n)
                .map(|k| (next + k) % n)
                .filter(|&i| !away(round, i))
                .map(|i| (i, pass[i], outcomes[i]))
                .collect();
            let (i, after) = stride.pick(how, &eligible).unwrap();
            pass[i] = after;
            order.push(i);
            next = (i + 1) % n;
        }
        order
    }

    /// How many asks each got, all always eligible.
    fn simulate(how: Allocation, outcomes: &[Outcomes], rounds: usize) -> Vec<u32> {
        let mut asked = vec![0; outcomes.len()];
        for i in run(how, outcomes, rounds, |_, _| false) {
            asked[i] += 1;
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
    fn one_back_from_a_pause_does_not_take_every_ask() {
        // Three level specialists; the third is away for rounds 3..30.
        let order = run(
            Allocation::Yield,
            &[Outcomes::default(); 3],
            45,
            |round, i| i == 2 && (3..30).contains(&round),
        );
        let back = &order[30..];
        let longest = back
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap();
        assert!(longest <= 2, "{back:?}");
        assert_eq!(back.iter().filter(|&&i| i == 2).count(), 5, "{back:?}");
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
