//! Reading lineage by filter: `lineage list`, exports and the daemon's
//! read requests. A filter is answered from the narrowest secondary index
//! it allows (see the module docs of [`super`]), so `--label crash --limit 20`
//! over a million trials reads the crash trials, not the million.
//!
//! Proposal time grows with the id (both are assigned in one transaction by
//! one writer), so `--since` is a range of ids, found by binary search.

use serde::{Deserialize, Serialize};

use super::{decode_trial, key, LineageError, LineageStore};
use crate::domain::{Trial, TrialId, TrialStatus};

/// Which trials, in which order, how many.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specialist: Option<String>,
    /// An outcome (`Trial::outcome`): a failure label such as `crash`, or
    /// `kept`, `within_noise`, `regressed`, `false_peak`, `rebased`, `pruned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TrialStatus>,
    /// Proposed at or after this time (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Oldest first (exports) rather than newest first (`list`).
    #[serde(default)]
    pub oldest_first: bool,
}

impl Filter {
    pub fn matches(&self, t: &Trial) -> bool {
        self.specialist.as_ref().is_none_or(|s| *s == t.specialist)
            && self.label.as_ref().is_none_or(|l| l == t.outcome())
            && self.status.is_none_or(|s| s == t.status)
            && self.since_ms.is_none_or(|since| proposed_ms(t) >= since)
    }
}

fn proposed_ms(t: &Trial) -> u64 {
    t.history.first().map_or(0, |c| c.at_ms)
}

const SPECIALIST: u8 = b's';
const OUTCOME: u8 = b'o';
const STATUS: u8 = b't';
const FINISHED: u8 = b'f';

/// `<kind><value>\0`: the prefix of an index entry; the trial id follows.
fn prefix(kind: u8, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 10);
    k.push(kind);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    k
}

fn entry(kind: u8, value: &str, id: TrialId) -> Vec<u8> {
    let mut k = prefix(kind, value);
    k.extend_from_slice(&key(id));
    k
}

/// The finish-index key of a terminal trial: `f<finished ms><id>`.
pub(super) fn finish_key(t: &Trial) -> Vec<u8> {
    let finished = t
        .history
        .iter()
        .find(|c| c.status.is_terminal())
        .map_or(0, |c| c.at_ms);
    let mut f = vec![FINISHED];
    f.extend_from_slice(&finished.to_be_bytes());
    f.extend_from_slice(&key(t.id));
    f
}

/// The value of a finish-index entry: the trial's point in a progress plot,
/// `["outcome", score or null, "specialist"]`, so that a plot reads the
/// index and not every trial. (Entries written before are empty.)
pub(super) fn finish_value(t: &Trial) -> Vec<u8> {
    serde_json::to_vec(&(t.outcome(), t.plotted_score(), &t.specialist))
        .expect("a point serializes")
}

/// The index entries (key, value) of a terminal trial.
pub(super) fn terminal_entries(t: &Trial) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (entry(OUTCOME, t.outcome(), t.id), Vec::new()),
        (entry(STATUS, t.status.as_str(), t.id), Vec::new()),
        (finish_key(t), finish_value(t)),
    ]
}

/// Every index entry (key, value) of a trial as it is now.
pub(super) fn index_entries(t: &Trial) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = vec![(entry(SPECIALIST, &t.specialist, t.id), Vec::new())];
    if t.status.is_terminal() {
        entries.extend(terminal_entries(t));
    }
    entries
}

/// A finished trial as a progress plot draws it.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub id: TrialId,
    pub outcome: String,
    /// `Trial::plotted_score`.
    pub score: Option<f64>,
    pub specialist: String,
}

impl Point {
    /// The point of a terminal trial, from its record.
    pub fn of(t: &Trial) -> Point {
        Point {
            id: t.id,
            outcome: t.outcome().to_string(),
            score: t.plotted_score(),
            specialist: t.specialist.clone(),
        }
    }
}

/// Where the candidate ids come from.
enum Source {
    /// The trials tree itself: values are the records.
    Trials(sled::Iter),
    /// Keys that end with the trial id (an index range, or `active`).
    Ids(sled::Iter),
}

/// The trials a filter selects, read lazily (a `sled::Iter` holds no lock
/// and sees trials written while it runs, each whole).
pub struct Select {
    source: Source,
    trials: sled::Tree,
    filter: Filter,
    left: usize,
}

impl Iterator for Select {
    type Item = Result<Trial, LineageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 {
            let step =
                |it: &mut sled::Iter, rev: bool| if rev { it.next_back() } else { it.next() };
            let rev = !self.filter.oldest_first;
            let trial = match &mut self.source {
                Source::Trials(it) => match step(it, rev)? {
                    Ok((k, v)) => decode_trial(&k, &v),
                    Err(e) => Err(e.into()),
                },
                Source::Ids(it) => match step(it, rev)? {
                    Ok((k, _)) => {
                        let id = &k[k.len().saturating_sub(8)..];
                        match self.trials.get(id) {
                            Ok(Some(v)) => decode_trial(id, &v),
                            // Indexed but gone: cannot happen in one
                            // transaction; skip rather than fail a read.
                            Ok(None) => continue,
                            Err(e) => Err(e.into()),
                        }
                    }
                    Err(e) => Err(e.into()),
                },
            };
            match trial {
                Ok(t) if !self.filter.matches(&t) => continue,
                Ok(t) => {
                    self.left -= 1;
                    return Some(Ok(t));
                }
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

/// A read of lineage as the control socket carries it (`lineage list`,
/// `show`, `best`, `events` and exports while a daemon holds the database).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Read {
    /// The trials a filter selects, one JSON object each.
    Trials {
        filter: Filter,
    },
    /// One trial, or nothing.
    Trial {
        id: TrialId,
    },
    /// Every incumbent, oldest first.
    Incumbents,
    Events,
}

/// A cursor of the finish index `ms` milliseconds before `cursor` (for a
/// reader that reads a trailing window again); empty stays empty.
pub fn finish_cursor_before(cursor: &[u8], ms: u64) -> Vec<u8> {
    match cursor.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        Some(at) => {
            let mut k = vec![FINISHED];
            k.extend_from_slice(&u64::from_be_bytes(at).saturating_sub(ms).to_be_bytes());
            k
        }
        None => Vec::new(),
    }
}

impl LineageStore {
    /// Answers a read as JSON items handed to `emit` one by one (it
    /// returns false to stop early: the reader went away). Returns how
    /// many items were emitted.
    pub fn read(
        &self,
        read: &Read,
        emit: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, LineageError> {
        let mut n = 0;
        let mut send = |bytes: Vec<u8>| {
            n += 1;
            emit(bytes)
        };
        fn json<T: Serialize>(v: &T) -> Vec<u8> {
            serde_json::to_vec(v).expect("lineage records serialize")
        }
        match read {
            Read::Trials { filter } => {
                for t in self.select(filter)? {
                    if !send(json(&t?)) {
                        break;
                    }
                }
            }
            Read::Trial { id } => {
                if let Some(t) = self.get(*id)? {
                    send(json(&t));
                }
            }
            Read::Incumbents => {
                for i in self.incumbent_history()? {
                    if !send(json(&i)) {
                        break;
                    }
                }
            }
            Read::Events => {
                for e in self.events()? {
                    if !send(json(&e)) {
                        break;
                    }
                }
            }
        }
        Ok(n)
    }

    /// The trials `filter` selects, newest first unless `oldest_first`.
    pub fn select(&self, filter: &Filter) -> Result<Select, LineageError> {
        let first = match filter.since_ms {
            Some(since) => self.first_proposed_at_or_after(since)?,
            None => TrialId(0),
        };
        let from = key(first);
        let range = |kind: u8, value: &str| {
            let p = prefix(kind, value);
            let mut start = p.clone();
            start.extend_from_slice(&from);
            let mut end = p;
            *end.last_mut().expect("prefix ends with 0") = 1;
            self.index.range(start..end)
        };
        let source = match (filter.status, &filter.label, &filter.specialist) {
            (Some(s), _, _) if !s.is_terminal() => Source::Ids(self.active.range(from..)),
            (_, Some(label), _) => Source::Ids(range(OUTCOME, label)),
            (_, _, Some(name)) => Source::Ids(range(SPECIALIST, name)),
            (Some(s), _, _) => Source::Ids(range(STATUS, s.as_str())),
            _ => Source::Trials(self.trials.range(from..)),
        };
        Ok(Select {
            source,
            trials: self.trials.clone(),
            filter: filter.clone(),
            left: filter.limit.unwrap_or(usize::MAX),
        })
    }

    /// The smallest id proposed at or after `since` (one past the last id
    /// when none is): a binary search over ids, which grow with time.
    fn first_proposed_at_or_after(&self, since: u64) -> Result<TrialId, LineageError> {
        let Some((last, _)) = self.trials.last()? else {
            return Ok(TrialId(0));
        };
        let last = u64::from_be_bytes(last.as_ref().try_into().unwrap_or([0; 8]));
        let (mut lo, mut hi) = (0u64, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = match self.trials.range(key(TrialId(mid))..).next() {
                Some(kv) => {
                    let (k, v) = kv?;
                    proposed_ms(&decode_trial(&k, &v)?)
                }
                None => u64::MAX,
            };
            if at >= since {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(TrialId(lo))
    }

    /// Terminal trials in the order they finished, after `cursor` (a key
    /// of the finish index; empty: from the first): at most the newest `cap`
    /// of them, oldest first, and the cursor after the newest. What a
    /// proposer that keeps its own memory of outcomes reads each time: only
    /// what is new since it last asked.
    pub fn finished_after(
        &self,
        cursor: &[u8],
        cap: usize,
    ) -> Result<(Vec<Trial>, Vec<u8>), LineageError> {
        let start = if cursor.is_empty() {
            vec![FINISHED]
        } else {
            // The smallest key after `cursor`.
            let mut k = cursor.to_vec();
            k.push(0);
            k
        };
        let mut newest = cursor.to_vec();
        let mut out = Vec::new();
        for kv in self.index.range(start..vec![FINISHED + 1]).rev().take(cap) {
            let (k, _) = kv?;
            if out.is_empty() {
                newest = k.to_vec();
            }
            let id = &k[k.len() - 8..];
            if let Some(b) = self.trials.get(id)? {
                out.push(decode_trial(id, &b)?);
            }
        }
        out.reverse();
        Ok((out, newest))
    }

    /// Hands the plot point of every terminal trial that finished after
    /// `cursor` (as in [`Self::finished_after`]) to `each`, oldest first,
    /// read from the finish index alone (a trial record only for entries
    /// written before the index held points); returns the cursor after the
    /// last.
    pub fn each_point_after(
        &self,
        cursor: &[u8],
        each: &mut dyn FnMut(Point),
    ) -> Result<Vec<u8>, LineageError> {
        let mut start = cursor.to_vec();
        if start.is_empty() {
            start.push(FINISHED);
        } else {
            start.push(0);
        }
        let mut last = cursor.to_vec();
        for kv in self.index.range(start..vec![FINISHED + 1]) {
            let (k, v) = kv?;
            let id = &k[k.len() - 8..];
            let trial = TrialId(u64::from_be_bytes(id.try_into().unwrap_or([0; 8])));
            let stored = serde_json::from_slice::<(String, Option<f64>, String)>(&v).ok();
            let point = match stored {
                Some((outcome, score, specialist)) => Some(Point {
                    id: trial,
                    outcome,
                    score,
                    specialist,
                }),
                None => match self.trials.get(id)? {
                    Some(b) => Some(Point::of(&decode_trial(id, &b)?)),
                    None => None,
                },
            };
            if let Some(p) = point {
                each(p);
            }
            last = k.to_vec();
        }
        Ok(last)
    }

    /// How many trials reached their outcome at or after `since` (ms).
    pub fn finished_since(&self, since: u64) -> Result<u64, LineageError> {
        let mut start = vec![FINISHED];
        start.extend_from_slice(&since.to_be_bytes());
        let mut n = 0;
        for kv in self.index.range(start..vec![FINISHED + 1]) {
            kv?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FailureLabel, ParamValue, Params};
    use crate::lineage::NewTrial;

    fn propose(store: &LineageStore, specialist: &str, x: i64) -> Trial {
        let mut config = Params::new();
        config.insert("x".into(), ParamValue::Int(x));
        store
            .propose(NewTrial {
                specialist: specialist.into(),
                hypothesis: format!("x={x}"),
                changes: config.clone(),
                config,
                ..Default::default()
            })
            .unwrap()
    }

    fn ids(store: &LineageStore, f: Filter) -> Vec<u64> {
        store.select(&f).unwrap().map(|t| t.unwrap().id.0).collect()
    }

    /// A reader with a cursor sees every trial that finishes exactly once,
    /// in finish order (not id order), and never an unfinished one; a cap
    /// keeps the newest.
    #[test]
    fn finished_after_reads_each_outcome_once_in_finish_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::lineage::open_waiting(dir.path());
        let trials: Vec<Trial> = (0..6).map(|x| propose(&store, "a", x)).collect();
        let finish = |i: usize| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            store.walk(trials[i].id, TrialStatus::Kept, |_| {}).unwrap();
        };
        let read = |cursor: &[u8], cap| {
            let (got, next) = store.finished_after(cursor, cap).unwrap();
            (got.iter().map(|t| t.id.0).collect::<Vec<_>>(), next)
        };
        let (got, cursor) = read(&[], 100);
        assert!(got.is_empty() && cursor.is_empty());
        finish(4);
        finish(1);
        let (got, cursor) = read(&cursor, 100);
        assert_eq!(got, [5, 2], "ids are 1-based; trial 5 finished first");
        let (got, same) = read(&cursor, 100);
        assert!(got.is_empty());
        assert_eq!(same, cursor, "no news keeps the cursor");
        finish(0);
        finish(3);
        finish(5);
        let (got, _) = read(&cursor, 2);
        assert_eq!(got, [4, 6], "capped to the newest two, oldest first");
        let (got, _) = read(&cursor, 100);
        assert_eq!(got, [1, 4, 6]);
        let (got, _) = read(&[], 100);
        assert_eq!(got, [5, 2, 1, 4, 6], "from the start: every finished trial");
        // The streaming reader agrees, and its cursor is the same.
        let each = |cursor: &[u8]| {
            let mut ids = Vec::new();
            let next = store
                .each_point_after(cursor, &mut |p| ids.push(p.id.0))
                .unwrap();
            (ids, next)
        };
        let (ids, next) = each(&[]);
        assert_eq!(ids, [5, 2, 1, 4, 6]);
        assert_eq!(next, read(&[], 100).1);
        assert_eq!(
            each(&next),
            (vec![], next.clone()),
            "no news keeps the cursor"
        );
        assert_eq!(each(&cursor).0, [1, 4, 6]);
        // A trailing window read again: everything finished in the last minute.
        assert_eq!(
            each(&finish_cursor_before(&next, 60_000)).0,
            [5, 2, 1, 4, 6]
        );
        assert_eq!(
            each(&finish_cursor_before(&next, 0)).0,
            [6],
            "the last millisecond"
        );
        assert!(finish_cursor_before(&[], 1000).is_empty());
    }

    /// The finish index carries each trial's plot point, equal to what its
    /// record gives, after a measurement too; an entry written before the
    /// points (empty) is read from the record.
    #[test]
    fn finish_entries_hold_the_points_their_trials_give() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::lineage::open_waiting(dir.path());
        let a = propose(&store, "a", 1);
        let b = propose(&store, "b", 2);
        store
            .walk(a.id, TrialStatus::Kept, |t| {
                t.decision = Some(crate::domain::Decision::Improved);
                t.score = Some(1.5);
            })
            .unwrap();
        store
            .walk(b.id, TrialStatus::Failed, |t| {
                t.label = Some(FailureLabel::Crash);
                t.score = Some(9.0);
            })
            .unwrap();
        store.measure(a.id, |t| t.score = Some(1.25)).unwrap();
        let points = |store: &LineageStore| {
            let mut v = Vec::new();
            store.each_point_after(&[], &mut |p| v.push(p)).unwrap();
            v
        };
        let expect: Vec<Point> = [a.id, b.id]
            .iter()
            .map(|id| {
                let t = store.get(*id).unwrap().unwrap();
                Point {
                    id: t.id,
                    outcome: t.outcome().into(),
                    score: t.plotted_score(),
                    specialist: t.specialist,
                }
            })
            .collect();
        assert_eq!(expect[0].score, Some(1.25), "measured");
        assert_eq!(expect[1].score, None, "a failure has no plotted score");
        assert_eq!(points(&store), expect);
        // Entries as older lineages wrote them.
        let keys: Vec<_> = store
            .index
            .range(vec![FINISHED]..vec![FINISHED + 1])
            .map(|kv| kv.unwrap().0)
            .collect();
        for k in keys {
            store.index.insert(k, &[]).unwrap();
        }
        assert_eq!(points(&store), expect);
    }

    /// Every filter gives what a scan with `Filter::matches` gives, whichever
    /// index answers it, in both orders and with limits.
    #[test]
    fn indexed_selection_equals_a_filtered_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::lineage::open_waiting(dir.path());
        for x in 0..60 {
            let t = propose(&store, ["a", "b", "c"][x as usize % 3], x);
            match x % 5 {
                0 => store.walk(t.id, TrialStatus::Kept, |_| {}),
                1 => store.walk(t.id, TrialStatus::Failed, |t| {
                    t.label = Some(FailureLabel::Crash);
                }),
                2 => store.walk(t.id, TrialStatus::Running, |_| {}),
                3 => store.walk(t.id, TrialStatus::Discarded, |t| {
                    t.decision = Some(crate::domain::Decision::Regressed);
                }),
                _ => Ok(t),
            }
            .unwrap();
            if x == 30 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        propose(&store, "a", 3); // a duplicate: failed at once
        let since = store.get(TrialId(32)).unwrap().unwrap().history[0].at_ms;
        let all: Vec<Trial> = store.iter().map(|t| t.unwrap()).collect();
        let status = |s| Some(s);
        let filters = [
            Filter::default(),
            Filter {
                specialist: Some("b".into()),
                ..Default::default()
            },
            Filter {
                label: Some("crash".into()),
                ..Default::default()
            },
            Filter {
                label: Some("duplicate".into()),
                ..Default::default()
            },
            Filter {
                label: Some("regressed".into()),
                specialist: Some("a".into()),
                ..Default::default()
            },
            Filter {
                status: status(TrialStatus::Running),
                ..Default::default()
            },
            Filter {
                status: status(TrialStatus::Proposed),
                specialist: Some("c".into()),
                ..Default::default()
            },
            Filter {
                status: status(TrialStatus::Kept),
                ..Default::default()
            },
            Filter {
                since_ms: Some(since),
                ..Default::default()
            },
            Filter {
                since_ms: Some(since),
                label: Some("crash".into()),
                ..Default::default()
            },
            Filter {
                since_ms: Some(u64::MAX),
                ..Default::default()
            },
            Filter {
                specialist: Some("nobody".into()),
                ..Default::default()
            },
        ];
        for f in filters {
            for oldest_first in [false, true] {
                for limit in [None, Some(3)] {
                    let f = Filter {
                        oldest_first,
                        limit,
                        ..f.clone()
                    };
                    let mut expect: Vec<u64> = all
                        .iter()
                        .filter(|t| f.matches(t))
                        .map(|t| t.id.0)
                        .collect();
                    if !oldest_first {
                        expect.reverse();
                    }
                    expect.truncate(limit.unwrap_or(usize::MAX));
                    assert_eq!(ids(&store, f.clone()), expect, "{f:?}");
                }
            }
        }
        assert_eq!(
            ids(
                &store,
                Filter {
                    since_ms: Some(since),
                    oldest_first: true,
                    limit: Some(1),
                    ..Default::default()
                }
            ),
            vec![32]
        );
    }

    #[test]
    fn the_index_is_rebuilt_for_a_lineage_written_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::lineage::open_waiting(dir.path());
        for x in 0..5 {
            let t = propose(&store, "a", x);
            store.walk(t.id, TrialStatus::Kept, |_| {}).unwrap();
        }
        let kept = Filter {
            status: Some(TrialStatus::Kept),
            ..Default::default()
        };
        assert_eq!(ids(&store, kept.clone()).len(), 5);
        assert_eq!(store.finished_since(0).unwrap(), 5);
        store.index.clear().unwrap();
        store.meta.remove(super::super::INDEX_V1).unwrap();
        drop(store);
        let store = crate::lineage::open_waiting(dir.path());
        assert_eq!(ids(&store, kept), vec![5, 4, 3, 2, 1]);
        assert_eq!(store.finished_since(0).unwrap(), 5);
        assert_eq!(store.finished_since(u64::MAX).unwrap(), 0);
    }
}
