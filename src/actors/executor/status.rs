//! What the executor reports: its slot occupancy over time and
//! `ExecutorStatus` (`ratchet status`).

use super::*;

/// Slot time, integrated between the executor's state changes: busy (a run
/// in the slot), starved (a free slot while a proposal was being made) and
/// held (a free slot while a candidate is confirmed first). A free slot
/// with nothing on its way (the baseline being confirmed, the trial budget
/// spent, everyone exhausted or paused) is none of these.
pub(super) struct Occupancy {
    since: Instant,
    slots: usize,
    running: usize,
    free_while_waiting: usize,
    free_while_held: usize,
    total: Duration,
    busy: Duration,
    starved: Duration,
    held: Duration,
}

impl Occupancy {
    pub(super) fn new() -> Self {
        Occupancy {
            since: Instant::now(),
            slots: 0,
            running: 0,
            free_while_waiting: 0,
            free_while_held: 0,
            total: Duration::ZERO,
            busy: Duration::ZERO,
            starved: Duration::ZERO,
            held: Duration::ZERO,
        }
    }

    /// Accounts the time since the last change at the state then, and
    /// starts a new interval with this state: `slots`, runs in them, and
    /// free ones waiting for a proposal or held.
    pub(super) fn change(&mut self, slots: usize, running: usize, waiting: usize, held: usize) {
        self.change_at(Instant::now(), slots, running, waiting, held);
    }

    pub(super) fn change_at(
        &mut self,
        now: Instant,
        slots: usize,
        running: usize,
        waiting: usize,
        held: usize,
    ) {
        let dt = now.saturating_duration_since(self.since);
        self.total += dt * self.slots as u32;
        self.busy += dt * self.running as u32;
        self.starved += dt * self.free_while_waiting as u32;
        self.held += dt * self.free_while_held as u32;
        self.since = now;
        self.slots = slots;
        self.running = running;
        self.free_while_waiting = waiting;
        self.free_while_held = held;
    }

    /// Accounts the time up to now without a change of state.
    pub(super) fn catch_up(&mut self) {
        let (s, r, w, h) = (
            self.slots,
            self.running,
            self.free_while_waiting,
            self.free_while_held,
        );
        self.change(s, r, w, h);
    }
}

pub(super) fn status(state: &ExecutorState) -> ExecutorStatus {
    let mut running: Vec<RunInfo> = state
        .running
        .values()
        .map(|r| {
            let mut info = r.info.clone();
            info.job = r.task.guard.job();
            info.job_state = info.job.and_then(|j| state.slurm.as_ref()?.last_state(j));
            info
        })
        .collect();
    running.sort_by_key(|r| (r.since_ms, r.trial, r.seed));
    let specialists = state
        .specialists
        .iter()
        .map(|s| SpecialistInfo {
            name: s.name.clone(),
            outcomes: s.outcomes,
            state: if state.paused.contains(&s.name) {
                "paused"
            } else if s.asked {
                "asked"
            } else if s.resting {
                "resting"
            } else if s.exhausted {
                "exhausted"
            } else {
                "ready"
            }
            .into(),
        })
        .collect();
    ExecutorStatus {
        slots: state.slots(),
        gpus: state.gpus.as_ref().map(|g| g.status()).unwrap_or_default(),
        running,
        queued: state.queue.iter().map(Job::info).collect(),
        specialists,
        draining: state.draining,
        issued: state.issued,
        slot_busy_s: state.occupancy.busy.as_secs_f64(),
        slot_starved_s: state.occupancy.starved.as_secs_f64(),
        slot_held_s: state.occupancy.held.as_secs_f64(),
        slot_total_s: state.occupancy.total.as_secs_f64(),
        pruned: state.pruned,
        slot_saved_s: state.saved_ms as f64 / 1000.0,
        preflight_failed: state.preflight_failed,
        preflight_saved_s: state.preflight_saved_ms as f64 / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each interval is accounted at the state that held during it.
    #[test]
    fn occupancy_integrates_slot_time_by_state() {
        let mut o = Occupancy::new();
        let t0 = o.since;
        let at = |ms| t0 + Duration::from_millis(ms);
        // Before the first change nothing was known: 0 slots.
        o.change_at(at(100), 2, 0, 2, 0); // 2 free slots, a proposal coming
        o.change_at(at(400), 2, 1, 1, 0); // 300 ms: 2 slots starved
        o.change_at(at(1400), 2, 2, 0, 0); // 1 s: 1 busy, 1 starved
        o.change_at(at(2400), 2, 0, 0, 0); // 1 s: 2 busy
        o.change_at(at(3400), 3, 1, 0, 2); // 1 s: nothing running, nothing coming
        o.change_at(at(3900), 3, 1, 0, 0); // 0.5 s: 1 of 3 busy, 2 held
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(o.starved), 2 * 300 + 1000);
        assert_eq!(ms(o.busy), 1000 + 2 * 1000 + 500);
        assert_eq!(ms(o.held), 2 * 500);
        assert_eq!(
            ms(o.total),
            2 * 300 + 2 * 1000 + 2 * 1000 + 2 * 1000 + 3 * 500
        );
    }
}
