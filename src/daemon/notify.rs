//! systemd notifications (`sd_notify(3)`) through the sd-notify crate:
//! READY, RELOADING, STOPPING, STATUS and WATCHDOG datagrams to the socket
//! named by `NOTIFY_SOCKET`, and the watchdog interval from `WATCHDOG_USEC`.
//! Without `NOTIFY_SOCKET` (not under systemd) there is no notifier.

use std::time::Duration;

pub use sd_notify::NotifyState as State;
use tracing::debug;

/// systemd asked for notifications.
pub struct Notifier;

impl Notifier {
    pub fn from_env() -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET").map(|_| Notifier)
    }

    /// Sends one datagram of `states`. Failures are logged: systemd going
    /// away must not stop the research.
    pub fn send(&self, states: &[State]) {
        if let Err(e) = sd_notify::notify(states) {
            debug!(error = %e, "sd_notify failed");
        }
    }
}

/// `STATUS=`, on one line (what `systemctl status` shows).
pub fn status(line: &str) -> String {
    line.replace('\n', " ")
}

/// `RELOADING=1` with the `MONOTONIC_USEC=` that systemd 253 and newer
/// require beside it.
pub fn reloading() -> Vec<State<'static>> {
    let mut states = vec![State::Reloading];
    states.extend(State::monotonic_usec_now().ok());
    states
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when that is set
/// for this process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The datagrams themselves are read from a real socket by
    // tests/daemon.rs (sd-notify reads NOTIFY_SOCKET from the environment,
    // which a unit test must not set under other threads).
    #[test]
    fn a_reload_carries_the_monotonic_time_and_status_is_one_line() {
        let states: Vec<String> = reloading().iter().map(|s| s.to_string()).collect();
        assert_eq!(states[0], "RELOADING=1");
        let usec: i128 = states[1]
            .strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{states:?}"));
        assert!(usec > 0);
        assert_eq!(status("3 running\nsecond line"), "3 running second line");
    }
}
