//! Stop rules (`[daemon]` `stop_after`, `stop_when_no_keep_for`,
//! `stop_after_trials`): when one fires, the daemon drains as on SIGTERM
//! and exits 0. Pure: the daemon's loop feeds it the time, the keeps and
//! the executor's drain, and asks when to look again.

use std::time::Instant;

use crate::config::StopRules;

/// The stop rules of one daemon process.
#[derive(Clone, Debug)]
pub struct Watch {
    rules: StopRules,
    started: Instant,
    /// The last keep, or the start when none came since.
    last_keep: Instant,
}

impl Watch {
    /// The rules of a daemon that started at `now`.
    pub fn new(rules: StopRules, now: Instant) -> Watch {
        Watch {
            rules,
            started: now,
            last_keep: now,
        }
    }

    /// A trial was kept at `now`.
    pub fn kept(&mut self, now: Instant) {
        self.last_keep = now;
    }

    /// When a time rule fires next (for the loop's timer), if one is set.
    pub fn due(&self) -> Option<Instant> {
        let deadline = self.rules.after.map(|d| self.started + d);
        let grace = self.rules.no_keep_for.map(|d| self.last_keep + d);
        deadline.into_iter().chain(grace).min()
    }

    /// The time rule that has fired by `now`, described.
    pub fn fired(&self, now: Instant) -> Option<String> {
        if let Some(d) = self.rules.after {
            if now >= self.started + d {
                return Some(format!(
                    "stop_after = \"{}\": the daemon has run that long",
                    humantime::format_duration(d)
                ));
            }
        }
        if let Some(d) = self.rules.no_keep_for {
            if now >= self.last_keep + d {
                return Some(format!(
                    "stop_when_no_keep_for = \"{}\": no trial was kept for that long",
                    humantime::format_duration(d)
                ));
            }
        }
        None
    }

    /// The executor drained (it starts nothing more) with `trials` in
    /// lineage: the trial cap, when they reach it (the executor asks for
    /// no more than the cap leaves, so it drains there; it also drains
    /// when no specialist has a proposal, which is no reason to stop).
    pub fn drained(&self, trials: u64) -> Option<String> {
        let cap = self.rules.trials?;
        (trials >= cap).then(|| format!("stop_after_trials = {cap}: lineage holds {trials} trials"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rules(after: Option<u64>, no_keep: Option<u64>, trials: Option<u64>) -> StopRules {
        StopRules {
            after: after.map(Duration::from_secs),
            no_keep_for: no_keep.map(Duration::from_secs),
            trials,
        }
    }

    #[test]
    fn no_rule_never_fires() {
        let t0 = Instant::now();
        let w = Watch::new(StopRules::default(), t0);
        assert_eq!(w.due(), None);
        assert_eq!(w.fired(t0 + Duration::from_secs(1_000_000)), None);
        assert_eq!(w.drained(1_000), None);
    }

    #[test]
    fn the_deadline_counts_from_the_start() {
        let t0 = Instant::now();
        let mut w = Watch::new(rules(Some(3600), None, None), t0);
        w.kept(t0 + Duration::from_secs(3000));
        assert_eq!(
            w.due(),
            Some(t0 + Duration::from_secs(3600)),
            "a keep does not move it"
        );
        assert_eq!(w.fired(t0 + Duration::from_secs(3599)), None);
        let why = w.fired(t0 + Duration::from_secs(3600)).unwrap();
        assert!(why.contains("stop_after = \"1h\""), "{why}");
    }

    #[test]
    fn the_grace_period_counts_from_the_last_keep() {
        let t0 = Instant::now();
        let mut w = Watch::new(rules(Some(100), Some(30), None), t0);
        assert_eq!(w.due(), Some(t0 + Duration::from_secs(30)));
        w.kept(t0 + Duration::from_secs(20));
        assert_eq!(w.due(), Some(t0 + Duration::from_secs(50)));
        assert_eq!(w.fired(t0 + Duration::from_secs(49)), None);
        let why = w.fired(t0 + Duration::from_secs(50)).unwrap();
        assert!(why.contains("stop_when_no_keep_for = \"30s\""), "{why}");
        // Keeps until the deadline: the deadline fires.
        w.kept(t0 + Duration::from_secs(95));
        assert_eq!(w.due(), Some(t0 + Duration::from_secs(100)));
        assert!(w
            .fired(t0 + Duration::from_secs(100))
            .unwrap()
            .contains("stop_after"));
    }

    #[test]
    fn the_trial_cap_fires_on_a_drain_at_the_cap() {
        let t0 = Instant::now();
        let w = Watch::new(rules(None, None, Some(10)), t0);
        assert_eq!(w.due(), None);
        assert_eq!(
            w.drained(9),
            None,
            "drained below the cap: no proposals, not the cap"
        );
        let why = w.drained(10).unwrap();
        assert!(
            why.contains("stop_after_trials = 10: lineage holds 10"),
            "{why}"
        );
        assert!(
            w.drained(12).is_some(),
            "rebases may take lineage past the cap"
        );
    }
}
