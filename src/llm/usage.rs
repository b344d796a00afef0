//! What this process asked of LLMs, by specialist: requests sent (every
//! attempt, retries included) and tokens (prompt and reply, as the server
//! counted them or, without its count, estimated). Counters of the process,
//! as Prometheus reads them (`/metrics`): they start at zero with it.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Requests and tokens of one specialist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub tokens: u64,
}

static USAGE: Mutex<BTreeMap<String, Usage>> = Mutex::new(BTreeMap::new());

/// Adds `requests` and `tokens` to `specialist`'s counts.
pub fn add(specialist: &str, requests: u64, tokens: u64) {
    let mut m = USAGE.lock().unwrap_or_else(|p| p.into_inner());
    let u = m.entry(specialist.to_string()).or_default();
    u.requests += requests;
    u.tokens += tokens;
}

/// Every specialist's counts so far.
pub fn snapshot() -> BTreeMap<String, Usage> {
    USAGE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}
