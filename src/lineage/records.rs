//! The records besides trials: daemon events, the specialists' pause
//! state, bulk import (benchmarks), and the trial counts by specialist.

use super::*;

impl LineageStore {
    pub fn record_event(
        &self,
        kind: &str,
        subject: &str,
        detail: &str,
    ) -> Result<(), LineageError> {
        let seq = self.db.generate_id()?;
        let ev = Event {
            at_ms: now_ms(),
            kind: kind.into(),
            subject: subject.into(),
            detail: detail.into(),
        };
        self.events.insert(seq.to_be_bytes(), encode(&ev))?;
        Ok(())
    }

    /// Records whole trials as given, in batches, with their derived data
    /// (active set, known configurations, counts, index, incumbents): for
    /// benchmarks and imports, not for the research loop, whose trials go
    /// through `propose` and `update`. Ids must be new and increasing;
    /// kept trials become incumbents in id order.
    pub fn import(&self, trials: impl IntoIterator<Item = Trial>) -> Result<u64, LineageError> {
        let mut next = self
            .meta
            .get(NEXT_ID)?
            .map(|b| u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(1);
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for kv in self.counts.iter() {
            let (k, v) = kv?;
            counts.insert(
                k.to_vec(),
                u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
            );
        }
        let mut n = 0;
        let mut incumbent = None;
        let mut it = trials.into_iter().peekable();
        while it.peek().is_some() {
            // One batch per tree: trials, active, configs, incumbents, index.
            let mut tb = sled::Batch::default();
            let mut ab = sled::Batch::default();
            let mut cb = sled::Batch::default();
            let mut ib = sled::Batch::default();
            let mut xb = sled::Batch::default();
            for t in it.by_ref().take(10_000) {
                assert!(t.id.0 >= next, "import: trial {} is not new", t.id);
                next = t.id.0 + 1;
                let k = key(t.id);
                if t.status.is_terminal() {
                    *counts.entry(t.outcome().as_bytes().to_vec()).or_default() += 1;
                    *counts
                        .entry(super::by_specialist_key(&t.specialist, t.outcome()))
                        .or_default() += 1;
                } else {
                    ab.insert(&k, &[]);
                }
                cb.insert(&known_key(&config_key(&t.config)), &k);
                for (x, v) in query::index_entries(&t) {
                    xb.insert(x, v);
                }
                if t.status == TrialStatus::Kept {
                    let inc = Incumbent {
                        trial: t.id,
                        score: t.score.unwrap_or(f64::NAN),
                        config: t.config.clone(),
                        since_ms: t.history.last().map_or(0, |c| c.at_ms),
                        commit: t.keep_commit.clone().or_else(|| t.commit.clone()),
                        noise: t.noise,
                    };
                    let bytes = encode(&inc);
                    ib.insert(&k, bytes.clone());
                    incumbent = Some(bytes);
                }
                tb.insert(&k, encode_trial(&t));
                n += 1;
            }
            self.trials.apply_batch(tb)?;
            self.active.apply_batch(ab)?;
            self.configs.apply_batch(cb)?;
            self.incumbents.apply_batch(ib)?;
            self.index.apply_batch(xb)?;
        }
        for (k, v) in counts {
            self.counts.insert(k, &v.to_be_bytes())?;
        }
        if let Some(inc) = incumbent {
            self.meta.insert(INCUMBENT, inc)?;
        }
        self.meta.insert(NEXT_ID, &next.to_be_bytes())?;
        self.db.flush()?;
        Ok(n)
    }

    /// Pauses (or resumes) specialists by name; returns the names whose
    /// state changed. Durable once this returns.
    pub fn set_paused(&self, names: &[String], paused: bool) -> Result<Vec<String>, LineageError> {
        let mut changed = Vec::new();
        for name in names {
            let was = self.paused.contains_key(name.as_bytes())?;
            if was == paused {
                continue;
            }
            if paused {
                self.paused
                    .insert(name.as_bytes(), &now_ms().to_be_bytes())?;
            } else {
                self.paused.remove(name.as_bytes())?;
            }
            changed.push(name.clone());
        }
        self.db.flush()?;
        Ok(changed)
    }

    /// Paused specialists and since when (ms).
    pub fn paused(&self) -> Result<BTreeMap<String, u64>, LineageError> {
        let mut out = BTreeMap::new();
        for kv in self.paused.iter() {
            let (k, v) = kv?;
            let at = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            out.insert(String::from_utf8_lossy(&k).into_owned(), at);
        }
        Ok(out)
    }

    pub fn events(&self) -> Result<Vec<Event>, LineageError> {
        let mut out = Vec::new();
        for kv in self.events.iter() {
            let (_, v) = kv?;
            if let Ok(e) = serde_json::from_slice(&v) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The newest event of `kind` for each subject, among the last `scan`
    /// events (newest first: a long lineage is not read whole).
    pub fn latest_events(
        &self,
        kind: &str,
        scan: usize,
    ) -> Result<BTreeMap<String, Event>, LineageError> {
        let mut out = BTreeMap::new();
        for kv in self.events.iter().rev().take(scan) {
            let (_, v) = kv?;
            if let Ok(e) = serde_json::from_slice::<Event>(&v) {
                if e.kind == kind && !out.contains_key(&e.subject) {
                    out.insert(e.subject.clone(), e);
                }
            }
        }
        Ok(out)
    }

    /// Terminal trials by (specialist, outcome), without a scan.
    pub fn counts_by_specialist(&self) -> Result<BTreeMap<(String, String), u64>, LineageError> {
        let mut out = BTreeMap::new();
        for kv in self
            .counts
            .range([super::BY_SPECIALIST]..[super::BY_SPECIALIST + 1])
        {
            let (k, v) = kv?;
            let n = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            let text = String::from_utf8_lossy(&k[1..]);
            if let Some((specialist, outcome)) = text.split_once('\0') {
                out.insert((specialist.to_string(), outcome.to_string()), n);
            }
        }
        Ok(out)
    }

    /// The trials of the newest `n` incumbents, newest first.
    pub fn incumbent_history_tail(&self, n: usize) -> Result<Vec<TrialId>, LineageError> {
        let mut out = Vec::new();
        for kv in self.incumbents.iter().rev().take(n) {
            let (k, _) = kv?;
            out.push(TrialId(u64::from_be_bytes(
                k.as_ref().try_into().unwrap_or([0; 8]),
            )));
        }
        Ok(out)
    }
}
