//! The live status line of `ratchet run` on a terminal (indicatif): one line
//! under the event lines, redrawn every second, with the trials done of the
//! total, the running trials against their budget, the time spent and left,
//! and the incumbent. When stdout is not a terminal, event lines only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The status line being drawn, if any: log lines go around it.
static ACTIVE: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

/// Runs `write` (a log line to stderr) with the status line taken off the
/// terminal and drawn again after, so the two never share a line.
pub fn around_status_line(write: impl FnOnce()) {
    let bar = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match bar {
        Some(b) => b.suspend(write),
        None => write(),
    }
}

use crate::domain::{format_float, TrialId, TrialStatus};

pub struct Live {
    bar: ProgressBar,
    started: Instant,
    /// The run's trial budget (`--trials`), if any.
    total: Option<u64>,
    budget_secs: u64,
    /// Trials past their proposal and not ended: since when their own run
    /// started, and whether they are being evaluated (or confirmed with
    /// seed re-runs) now.
    running: BTreeMap<TrialId, (Instant, bool)>,
}

impl Live {
    pub fn new(total: Option<u64>, budget_secs: u64) -> Live {
        // indicatif hides a stdout target that is not a terminal.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(ProgressStyle::with_template("{msg}").expect("a valid template"));
        if !bar.is_hidden() {
            *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
        }
        Live {
            bar,
            started: Instant::now(),
            total,
            budget_secs,
            running: BTreeMap::new(),
        }
    }

    /// One event line: above the status line on a terminal.
    pub fn line(&self, text: &str) {
        if self.bar.is_hidden() {
            // A closed pipe (`ratchet run | head`) must not stop the run.
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        } else {
            self.bar.println(text);
        }
    }

    pub fn trial(&mut self, id: TrialId, status: TrialStatus) {
        match status {
            TrialStatus::Running => {
                self.running.entry(id).or_insert((Instant::now(), false));
            }
            TrialStatus::Evaluating => {
                if let Some(r) = self.running.get_mut(&id) {
                    r.1 = true;
                }
            }
            _ => {
                self.running.remove(&id);
            }
        }
    }

    /// Redraws the status line (nothing when stdout is not a terminal).
    pub fn refresh(&self, done: u64, incumbent: Option<(TrialId, f64)>, metric: &str) {
        if self.bar.is_hidden() {
            return;
        }
        self.bar
            .set_message(self.text(done, incumbent, metric, Instant::now()));
    }

    fn text(
        &self,
        done: u64,
        incumbent: Option<(TrialId, f64)>,
        metric: &str,
        now: Instant,
    ) -> String {
        let elapsed = now.duration_since(self.started);
        let mut parts = vec![match self.total {
            Some(total) => format!("{done}/{total} trials"),
            None => format!("{done} trials"),
        }];
        let left = match self.total {
            Some(total) if done > 0 && total > done => {
                let each = elapsed.as_secs_f64() / done as f64;
                format!(
                    ", ~{} left",
                    clock(Duration::from_secs_f64(each * (total - done) as f64))
                )
            }
            _ => String::new(),
        };
        parts.push(format!("{} elapsed{left}", clock(elapsed)));
        if !self.running.is_empty() {
            let runs: Vec<String> = self
                .running
                .iter()
                .map(|(id, (since, evaluating))| match evaluating {
                    true => format!("#{id} evaluating"),
                    false => {
                        let secs = now.duration_since(*since).as_secs();
                        format!("#{id} {secs}s/{}s", self.budget_secs)
                    }
                })
                .collect();
            parts.push(format!("running {}", runs.join(", ")));
        }
        parts.push(match incumbent {
            Some((id, score)) => format!("incumbent #{id} {metric}={}", format_float(score)),
            None => "no incumbent yet".into(),
        });
        parts.join(" · ")
    }

    pub fn finish(&self) {
        ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.bar.finish_and_clear();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// `1:02:03`, `4:05`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=3599 => format!("{}:{:02}", s / 60, s % 60),
        _ => format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_trials_runs_time_left_and_the_incumbent() {
        let mut live = Live::new(Some(10), 60);
        let t0 = live.started;
        live.trial(TrialId(7), TrialStatus::Running);
        live.trial(TrialId(8), TrialStatus::Running);
        live.trial(TrialId(8), TrialStatus::Evaluating);
        let now = t0 + Duration::from_secs(125);
        let text = live.text(5, Some((TrialId(4), 0.25)), "val_loss", now);
        assert!(
            text.starts_with("5/10 trials · 2:05 elapsed, ~2:05 left · running #7 "),
            "{text}"
        );
        assert!(
            text.contains("s/60s, #8 evaluating · incumbent #4 val_loss=0.25"),
            "{text}"
        );
        live.trial(TrialId(8), TrialStatus::Discarded);
        assert!(!live.text(6, None, "m", now).contains("#8"));
        let none = Live::new(None, 60).text(0, None, "m", Instant::now());
        assert!(
            none.starts_with("0 trials · 0:00 elapsed · no incumbent yet"),
            "{none}"
        );
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
