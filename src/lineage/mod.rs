//! The lineage store: every trial, its state changes and the incumbent, in sled.
//!
//! Durability: every write is flushed before the call returns, so a trial is on
//! disk before its process starts and its outcome before anyone acts on it.
//! Layout (trees): `trials` id → Trial (deflated JSON), `active` id → () for
//! non-terminal trials, `configs` SHA-1 of a canonical config → id,
//! `incumbents` id → Incumbent (history, newest last), `meta` (`next_id`,
//! `incumbent`, markers of one-time migrations),
//! `events` seq → Event, `counts` outcome → number of terminal trials with
//! that outcome, and `\x01<specialist>\0<outcome>` → those of one specialist
//! (kept in the same transaction as the trial, so `status` and `/metrics`
//! do not scan), `paused` specialist name → since (ms), and `index`: secondary
//! keys written in the same transactions as the trial (see [`query`]):
//! `s<specialist>\0<id>` for every trial, and for terminal ones
//! `o<outcome>\0<id>`, `t<status>\0<id>` and `f<finished ms><id>` (whose
//! value is the trial's plot point, [`query::Point`]).

pub mod actor;
pub mod query;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::domain::{
    config_key, now_ms, Edit, FailureLabel, Incumbent, Params, StatusChange, Trial, TrialId,
    TrialStatus,
};

#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("lineage at {path} is in use by another ratchet process (sled holds a lock on it); stop it or point --config at another lineage_dir")]
    Locked { path: PathBuf },
    #[error("cannot open lineage at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("lineage storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("lineage record of trial {id} is unreadable: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("no trial {0} in lineage")]
    NoSuchTrial(TrialId),
    #[error("trial {id} is {status} and cannot become {to}")]
    BadTransition {
        id: TrialId,
        status: TrialStatus,
        to: TrialStatus,
    },
    #[error("trial {0}: a measurement may add seed runs, a noise band and their mean score, nothing else")]
    NotAMeasurement(TrialId),
    #[error("trial {0}: a change set the status itself; a status moves only as a request of the state machine")]
    StatusBySetter(TrialId),
}

/// A proposal before lineage gives it an id.
#[derive(Clone, Debug, Default)]
pub struct NewTrial {
    pub specialist: String,
    pub surface: Option<String>,
    pub parent: Option<TrialId>,
    pub hypothesis: String,
    pub changes: Params,
    pub config: Params,
    /// File edits and recipe assignments (inbox and LLM proposals).
    pub edits: Vec<Edit>,
    /// The proposer's raw reply, capped.
    pub reply: Option<String>,
    /// Refused before it could be queued (a garbled reply): recorded `Failed`
    /// with this label and detail.
    pub rejected: Option<(FailureLabel, String)>,
    /// The trial whose change this one re-applies onto a newer incumbent.
    pub rebased_from: Option<TrialId>,
    /// The change of the metric the proposer expected.
    pub expected_delta: Option<f64>,
}

impl NewTrial {
    /// What makes two proposals the same measurement: the configuration, and
    /// for proposals that edit files, the file edits and the incumbent they
    /// apply to (the same edits on a newer incumbent, as a rebase makes,
    /// are other files).
    fn dedup_key(&self) -> String {
        let mut k = config_key(&self.config);
        let files: Vec<&Edit> = self.edits.iter().filter(|e| e.path().is_some()).collect();
        if !files.is_empty() {
            let json = serde_json::to_vec(&files).expect("edits serialize");
            k.push_str("\nfiles ");
            for b in blob_hash(&json) {
                k.push_str(&format!("{b:02x}"));
            }
            match self.parent {
                Some(p) => k.push_str(&format!(" on {p}")),
                None => k.push_str(" on base"),
            }
        }
        k
    }
}

/// What a feedback read returns.
#[derive(Clone, Copy, Debug)]
pub struct FeedbackQuery {
    /// The newest trials returned in full.
    pub recent: usize,
    /// The newest trials the label counts cover (bounded, so a long lineage
    /// costs the same as a short one).
    pub scan: usize,
}

/// The shared lineage as every proposer sees it.
#[derive(Clone, Debug, Default)]
pub struct Feedback {
    /// Newest first.
    pub recent: Vec<Trial>,
    /// Outcome → count over the `scanned` newest trials: a failure label, or
    /// `kept`/`false_peak`/`within_noise`/`regressed`/`rebased` for scored
    /// trials, or the status of unfinished ones.
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub scanned: usize,
    pub total: usize,
    /// Every incumbent, oldest first.
    pub incumbents: Vec<Incumbent>,
}

/// A daemon-level event that is not a trial state change (a specialist crash, a recovery).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

/// Handle to the sled database. Only one process opens it (sled locks the
/// directory): the lineage actor while ratchet runs, or a CLI command when
/// none does. Clones share the open database; the daemon's control socket
/// reads through one, without queueing behind the actor.
#[derive(Clone)]
pub struct LineageStore {
    db: sled::Db,
    trials: sled::Tree,
    active: sled::Tree,
    configs: sled::Tree,
    incumbents: sled::Tree,
    meta: sled::Tree,
    events: sled::Tree,
    counts: sled::Tree,
    paused: sled::Tree,
    index: sled::Tree,
}

const NEXT_ID: &[u8] = b"next_id";
const INCUMBENT: &[u8] = b"incumbent";
/// Present once `counts` holds every terminal trial by outcome and by
/// (specialist, outcome) (lineages written before are counted once, at open).
const COUNTS_V2: &[u8] = b"counts_v2";
/// Present once `index` holds every trial.
const INDEX_V1: &[u8] = b"index_v1";
/// Present once `configs` is keyed by hashes.
const CONFIGS_HASHED: &[u8] = b"configs_hashed";
/// sled's page cache. Its default (1 GiB) would let a long-running daemon
/// or an export of a large lineage grow to that size; reads of old trials
/// are sequential scans that gain little from a cache. (sled's resident
/// memory is several times this figure: `ratchet bench lineage`.)
const CACHE_BYTES: u64 = 16 << 20;

/// The whole lineage in figures, without a scan (what `ratchet status` shows).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub trials: u64,
    /// Trials not yet terminal.
    pub active: u64,
    /// Terminal trials by outcome (`Trial::outcome`).
    pub outcomes: BTreeMap<String, u64>,
    /// Trials that reached their outcome in the last hour.
    pub finished_last_hour: u64,
    pub incumbent: Option<Incumbent>,
    /// The newest incumbents, oldest first (at most `SUMMARY_INCUMBENTS`).
    pub incumbents: Vec<Incumbent>,
    /// How many incumbents there were in all.
    pub keeps: u64,
    /// Paused specialists and since when (ms).
    pub paused: BTreeMap<String, u64>,
    /// Each LLM specialist's last reply: its speed (`llm_reply` events).
    #[serde(default)]
    pub llm: BTreeMap<String, Event>,
}

pub const SUMMARY_INCUMBENTS: usize = 10;
/// How many of the newest events a summary looks through.
const SUMMARY_EVENTS: usize = 2000;

/// Adds a terminal trial to the counts of its outcome and of its
/// (specialist, outcome) pair, inside a transaction.
fn count(counts: &sled::transaction::TransactionalTree, trial: &Trial) -> TxResult<()> {
    let outcome = trial.outcome();
    for k in [
        outcome.as_bytes().to_vec(),
        by_specialist_key(&trial.specialist, outcome),
    ] {
        let n = counts
            .get(&k)?
            .map(|b| u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        counts.insert(k, &(n + 1).to_be_bytes())?;
    }
    Ok(())
}

/// The first byte of a `counts` key by (specialist, outcome); outcome keys
/// are plain words, so they sort after every such key.
const BY_SPECIALIST: u8 = 1;

/// `counts` key of one specialist's trials with one outcome:
/// `\x01<specialist>\0<outcome>`.
fn by_specialist_key(specialist: &str, outcome: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(specialist.len() + outcome.len() + 2);
    k.push(BY_SPECIALIST);
    k.extend_from_slice(specialist.as_bytes());
    k.push(0);
    k.extend_from_slice(outcome.as_bytes());
    k
}

type TxResult<T> = Result<T, ConflictableTransactionError<LineageError>>;

fn abort<T>(e: LineageError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn from_tx(e: TransactionError<LineageError>) -> LineageError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => LineageError::Sled(e),
    }
}

/// The `configs` key of a dedup key: its SHA-1 (20 bytes), not the
/// configuration's text (hundreds of bytes per trial, which sled would hold
/// in memory and replay at every open).
fn known_key(dedup: &str) -> [u8; 20] {
    blob_hash(dedup.as_bytes())
}

/// The SHA-1 git gives `bytes` as a blob (`git hash-object`): the hash
/// lineages have always been keyed by.
fn blob_hash(bytes: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()));
    h.update(bytes);
    h.finalize().into()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("lineage records serialize")
}

/// The tag of a deflated trial record. Trial records are stored as JSON
/// deflated behind this byte: about a third of the bytes, and sled's memory
/// and its time to open grow with the bytes it holds. Records written
/// before start with `{` and are read as they are.
const DEFLATED: u8 = 1;

fn encode_trial(t: &Trial) -> Vec<u8> {
    use std::io::Write;
    let json = encode(t);
    let mut z = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(json.len() / 3 + 16),
        flate2::Compression::fast(),
    );
    z.write_all(&json).expect("writing to memory");
    let mut out = z.finish().expect("writing to memory");
    out.insert(0, DEFLATED);
    out
}

fn decode_trial(key: &[u8], bytes: &[u8]) -> Result<Trial, LineageError> {
    let corrupt = |source| LineageError::Corrupt {
        id: id_string(key),
        source,
    };
    match bytes.split_first() {
        Some((&DEFLATED, z)) => {
            use std::io::Read;
            let mut json = Vec::with_capacity(z.len() * 4);
            flate2::read::ZlibDecoder::new(z)
                .read_to_end(&mut json)
                .map_err(|e| corrupt(serde_json::Error::io(e)))?;
            serde_json::from_slice(&json).map_err(corrupt)
        }
        _ => serde_json::from_slice(bytes).map_err(corrupt),
    }
}

fn id_string(key: &[u8]) -> String {
    key.try_into()
        .map(|b: [u8; 8]| u64::from_be_bytes(b).to_string())
        .unwrap_or_else(|_| format!("{key:?}"))
}

fn key(id: TrialId) -> [u8; 8] {
    id.0.to_be_bytes()
}

impl LineageStore {
    /// Opens (or creates) the database under `dir/db`.
    pub fn open(dir: &Path) -> Result<LineageStore, LineageError> {
        let path = dir.join("db");
        std::fs::create_dir_all(dir).map_err(|e| LineageError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    LineageError::Locked { path: path.clone() }
                }
                _ => LineageError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let store = LineageStore {
            trials: db.open_tree("trials")?,
            active: db.open_tree("active")?,
            configs: db.open_tree("configs")?,
            incumbents: db.open_tree("incumbents")?,
            meta: db.open_tree("meta")?,
            events: db.open_tree("events")?,
            counts: db.open_tree("counts")?,
            paused: db.open_tree("paused")?,
            index: db.open_tree("index")?,
            db,
        };
        if !store.meta.contains_key(COUNTS_V2)? || !store.meta.contains_key(INDEX_V1)? {
            store.rebuild_derived()?;
        }
        if !store.meta.contains_key(CONFIGS_HASHED)? {
            store.hash_configs()?;
        }
        Ok(store)
    }

    /// Re-keys `configs` from configuration texts to their hashes (once,
    /// for a lineage written before they were hashed).
    fn hash_configs(&self) -> Result<(), LineageError> {
        let old: Vec<(sled::IVec, sled::IVec)> = self.configs.iter().collect::<Result<_, _>>()?;
        // One transaction with the marker: a crash cannot leave keys
        // hashed twice.
        (&self.configs, &self.meta)
            .transaction(|(configs, meta)| {
                for (k, v) in &old {
                    configs.remove(k)?;
                    configs.insert(&known_key(&String::from_utf8_lossy(k)), v)?;
                }
                meta.insert(CONFIGS_HASHED, &[])?;
                Ok::<_, ConflictableTransactionError<LineageError>>(())
            })
            .map_err(from_tx)?;
        self.db.flush()?;
        Ok(())
    }

    /// Counts the terminal trials by outcome and indexes every trial from
    /// scratch (once, for a lineage written before they were kept).
    fn rebuild_derived(&self) -> Result<(), LineageError> {
        let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        self.index.clear()?;
        let mut batch = sled::Batch::default();
        for t in self.iter() {
            let t = t?;
            if t.status.is_terminal() {
                *counts.entry(t.outcome().as_bytes().to_vec()).or_default() += 1;
                *counts
                    .entry(by_specialist_key(&t.specialist, t.outcome()))
                    .or_default() += 1;
            }
            for (k, v) in query::index_entries(&t) {
                batch.insert(k, v);
            }
        }
        self.index.apply_batch(batch)?;
        self.counts.clear()?;
        for (k, n) in counts {
            self.counts.insert(k, &n.to_be_bytes())?;
        }
        self.meta.insert(COUNTS_V2, &[])?;
        self.meta.insert(INDEX_V1, &[])?;
        self.db.flush()?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), LineageError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Records a new trial as `Proposed`. A configuration that was already
    /// recorded is stored as `Failed(duplicate)` instead: that is a proposer bug.
    pub fn propose(&self, new: NewTrial) -> Result<Trial, LineageError> {
        let ck = new.dedup_key();
        (
            &self.trials,
            &self.active,
            &self.configs,
            &self.meta,
            &self.counts,
            &self.index,
        )
            .transaction(|(trials, active, configs, meta, counts, index)| {
                let next = match meta.get(NEXT_ID)? {
                    Some(b) => u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8])),
                    None => 1,
                };
                let id = TrialId(next);
                meta.insert(NEXT_ID, &(next + 1).to_be_bytes())?;
                let now = now_ms();
                let mut trial = Trial {
                    id,
                    attempt: 1,
                    specialist: new.specialist.clone(),
                    surface: new.surface.clone(),
                    parent: new.parent,
                    hypothesis: new.hypothesis.clone(),
                    changes: new.changes.clone(),
                    config: new.config.clone(),
                    status: TrialStatus::Proposed,
                    label: None,
                    decision: None,
                    score: None,
                    parent_score: None,
                    detail: None,
                    history: vec![StatusChange {
                        status: TrialStatus::Proposed,
                        at_ms: now,
                    }],
                    trial_dir: None,
                    pgid: None,
                    slurm_job: None,
                    expected_delta: new.expected_delta,
                    preflight: None,
                    train: None,
                    eval: None,
                    commit: None,
                    diff: None,
                    keep_commit: None,
                    edits: new.edits.clone(),
                    reply: new.reply.clone(),
                    proxy_score: None,
                    full_eval: None,
                    full_score: None,
                    seed_runs: Vec::new(),
                    noise: None,
                    false_peak: false,
                    rebased_from: new.rebased_from,
                    rebased_as: None,
                    evidence: None,
                };
                if let Some((label, detail)) = &new.rejected {
                    trial.status = TrialStatus::Failed;
                    trial.label = Some(*label);
                    trial.detail = Some(detail.clone());
                    trial.history.push(StatusChange {
                        status: TrialStatus::Failed,
                        at_ms: now,
                    });
                } else if let Some(existing) = configs.get(known_key(&ck))? {
                    trial.status = TrialStatus::Failed;
                    trial.label = Some(FailureLabel::Duplicate);
                    trial.detail = Some(format!(
                        "configuration already measured by trial {}",
                        id_string(&existing)
                    ));
                    trial.history.push(StatusChange {
                        status: TrialStatus::Failed,
                        at_ms: now,
                    });
                } else {
                    configs.insert(&known_key(&ck), &key(id))?;
                    active.insert(&key(id), &[])?;
                }
                if trial.status.is_terminal() {
                    count(counts, &trial)?;
                }
                for (k, v) in query::index_entries(&trial) {
                    index.insert(k, v)?;
                }
                trials.insert(&key(id), encode_trial(&trial))?;
                Ok(trial)
            })
            .map_err(from_tx)
    }

    /// Applies `set` to a non-terminal trial and moves it to `to`, where the
    /// state machine allows that move (`TrialStatus::may_become`); `set`
    /// itself may not touch the status. Records the move in its history.
    pub fn update(
        &self,
        id: TrialId,
        to: Option<TrialStatus>,
        set: impl Fn(&mut Trial),
    ) -> Result<Trial, LineageError> {
        (
            &self.trials,
            &self.active,
            &self.meta,
            &self.incumbents,
            &self.configs,
            &self.counts,
            &self.index,
        )
            .transaction(
                |(trials, active, meta, incumbents, configs, counts, index)| {
                    let Some(bytes) = trials.get(key(id))? else {
                        return abort(LineageError::NoSuchTrial(id));
                    };
                    let mut trial = match decode_trial(&key(id), &bytes) {
                        Ok(t) => t,
                        Err(e) => return abort(e),
                    };
                    let before = trial.status;
                    let config_before = config_key(&trial.config);
                    set(&mut trial);
                    if trial.status != before {
                        return abort(LineageError::StatusBySetter(id));
                    }
                    // An edited trial measures what its committed files say:
                    // that configuration is known from now on.
                    let config_after = config_key(&trial.config);
                    if config_after != config_before
                        && configs.get(known_key(&config_after))?.is_none()
                    {
                        configs.insert(&known_key(&config_after), &key(id))?;
                    }
                    let after = to.unwrap_or(before);
                    if before.is_terminal() || (after != before && !before.may_become(after)) {
                        return abort(LineageError::BadTransition {
                            id,
                            status: before,
                            to: after,
                        });
                    }
                    trial.status = after;
                    if trial.status != before {
                        trial.history.push(StatusChange {
                            status: trial.status,
                            at_ms: now_ms(),
                        });
                    }
                    if trial.status.is_terminal() {
                        active.remove(&key(id))?;
                        count(counts, &trial)?;
                        for (k, v) in query::terminal_entries(&trial) {
                            index.insert(k, v)?;
                        }
                    }
                    if trial.status == TrialStatus::Kept {
                        let inc = Incumbent {
                            trial: id,
                            score: trial.score.unwrap_or(f64::NAN),
                            config: trial.config.clone(),
                            since_ms: now_ms(),
                            commit: trial.keep_commit.clone().or_else(|| trial.commit.clone()),
                            noise: trial.noise,
                        };
                        meta.insert(INCUMBENT, encode(&inc))?;
                        incumbents.insert(&key(id), encode(&inc))?;
                    }
                    trials.insert(&key(id), encode_trial(&trial))?;
                    Ok(trial)
                },
            )
            .map_err(from_tx)
    }

    /// Moves a trial to `to` along the main line of the state machine
    /// (`queued`, `running`, `evaluating`) as far as it must go first, with
    /// `set` at the last move: a test's way to a status.
    #[cfg(test)]
    pub(crate) fn walk(
        &self,
        id: TrialId,
        to: TrialStatus,
        set: impl Fn(&mut Trial),
    ) -> Result<Trial, LineageError> {
        let mut now = self.get(id)?.ok_or(LineageError::NoSuchTrial(id))?.status;
        for step in [
            TrialStatus::Queued,
            TrialStatus::Running,
            TrialStatus::Evaluating,
        ] {
            if now.may_become(to) || now == to {
                break;
            }
            now = self.update(id, Some(step), |_| {})?.status;
        }
        self.update(id, Some(to), set)
    }

    /// Adds measurements to a trial in any status, terminal included: only
    /// its `seed_runs`, `noise` and `score` (the mean over its runs) may
    /// change (an incumbent completed with the seeds later candidates pair
    /// with). A change of the incumbent's band and score is written to the
    /// incumbent too.
    pub fn measure(&self, id: TrialId, change: impl Fn(&mut Trial)) -> Result<Trial, LineageError> {
        (&self.trials, &self.meta, &self.incumbents, &self.index)
            .transaction(|(trials, meta, incumbents, index)| {
                let Some(bytes) = trials.get(key(id))? else {
                    return abort(LineageError::NoSuchTrial(id));
                };
                let before = match decode_trial(&key(id), &bytes) {
                    Ok(t) => t,
                    Err(e) => return abort(e),
                };
                let mut after = before.clone();
                change(&mut after);
                let mut rest = after.clone();
                rest.seed_runs = before.seed_runs.clone();
                rest.noise = before.noise;
                rest.score = before.score;
                if rest != before {
                    return abort(LineageError::NotAMeasurement(id));
                }
                let k_id = key(id);
                for (tree, k) in [(meta, INCUMBENT), (incumbents, &k_id[..])] {
                    let Some(b) = tree.get(k)? else { continue };
                    if let Ok(mut inc) = serde_json::from_slice::<Incumbent>(&b) {
                        if inc.trial == id {
                            inc.noise = after.noise;
                            if let Some(score) = after.score {
                                inc.score = score;
                            }
                            tree.insert(k, encode(&inc))?;
                        }
                    }
                }
                if after.status.is_terminal() {
                    // Its point in the finish index moves with its score.
                    index.insert(query::finish_key(&after), query::finish_value(&after))?;
                }
                trials.insert(&key(id), encode_trial(&after))?;
                Ok(after)
            })
            .map_err(from_tx)
    }

    pub fn get(&self, id: TrialId) -> Result<Option<Trial>, LineageError> {
        self.trials
            .get(key(id))?
            .map(|b| decode_trial(&key(id), &b))
            .transpose()
    }

    pub fn incumbent(&self) -> Result<Option<Incumbent>, LineageError> {
        Ok(self
            .meta
            .get(INCUMBENT)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Every incumbent the ratchet has stood on, oldest first.
    pub fn incumbent_history(&self) -> Result<Vec<Incumbent>, LineageError> {
        let mut out = Vec::new();
        for kv in self.incumbents.iter() {
            let (_, v) = kv?;
            if let Ok(inc) = serde_json::from_slice(&v) {
                out.push(inc);
            }
        }
        // Keyed by trial id; a trial kept over an incumbent proposed after
        // it (its parent was replaced meanwhile) comes after that one.
        out.sort_by_key(|i: &Incumbent| (i.since_ms, i.trial));
        Ok(out)
    }

    /// Whether this exact configuration was already recorded by any trial.
    pub fn knows(&self, config: &Params) -> Result<bool, LineageError> {
        Ok(self.configs.contains_key(known_key(&config_key(config)))?)
    }

    /// The newest trials, outcome counts and the incumbent history.
    pub fn feedback(&self, q: FeedbackQuery) -> Result<Feedback, LineageError> {
        let mut f = Feedback {
            total: self.trial_count(),
            incumbents: self.incumbent_history()?,
            ..Default::default()
        };
        for t in self.iter().rev().take(q.scan.max(q.recent)) {
            let t = t?;
            *f.outcomes.entry(t.outcome().to_string()).or_default() += 1;
            f.scanned += 1;
            if f.recent.len() < q.recent {
                f.recent.push(t);
            }
        }
        Ok(f)
    }

    /// Trials that are not yet in a terminal state, in id order (keys are
    /// big-endian ids).
    pub fn active(&self) -> Result<Vec<Trial>, LineageError> {
        let mut out = Vec::new();
        for kv in self.active.iter() {
            let (k, _) = kv?;
            if let Some(b) = self.trials.get(&k)? {
                out.push(decode_trial(&k, &b)?);
            }
        }
        Ok(out)
    }

    /// All trials in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Result<Trial, LineageError>> + '_ {
        self.trials.iter().map(|kv| {
            let (k, v) = kv?;
            decode_trial(&k, &v)
        })
    }

    /// Ids are dense from 1, so this is the next id less one (sled's
    /// `len` would walk the whole tree).
    pub fn trial_count(&self) -> usize {
        self.meta.get(NEXT_ID).ok().flatten().map_or(0, |b| {
            u64::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 8])) - 1
        }) as usize
    }

    /// The lineage in figures: counts are kept and the hourly rate is a
    /// range of the finish-time index, so nothing is scanned.
    pub fn summary(&self) -> Result<Summary, LineageError> {
        let now = now_ms();
        let mut s = Summary {
            trials: self.trial_count() as u64,
            active: self.active.len() as u64,
            incumbent: self.incumbent()?,
            paused: self.paused()?,
            ..Default::default()
        };
        for kv in self.counts.range([BY_SPECIALIST + 1]..) {
            let (k, v) = kv?;
            let n = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            s.outcomes
                .insert(String::from_utf8_lossy(&k).into_owned(), n);
        }
        // Every kept trial became an incumbent (counting the tree would
        // walk it).
        s.keeps = s.outcomes.get("kept").copied().unwrap_or(0);
        for kv in self.incumbents.iter().rev().take(SUMMARY_INCUMBENTS) {
            let (_, v) = kv?;
            if let Ok(inc) = serde_json::from_slice(&v) {
                s.incumbents.insert(0, inc);
            }
        }
        const HOUR: u64 = 3_600_000;
        s.finished_last_hour = self.finished_since(now.saturating_sub(HOUR))?;
        s.llm = self.latest_events("llm_reply", SUMMARY_EVENTS)?;
        Ok(s)
    }
}

/// Opens the store in a test; a reopen right after a drop may find sled's
/// lock still held by its flusher thread for a moment (the CLI waits out a
/// lock the same way), so `Locked` is retried for up to 5 s.
#[cfg(test)]
pub(crate) fn open_waiting(dir: &Path) -> LineageStore {
    let t0 = std::time::Instant::now();
    loop {
        match LineageStore::open(dir) {
            Err(LineageError::Locked { .. }) if t0.elapsed().as_secs() < 5 => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r.unwrap(),
        }
    }
}

mod records;

#[cfg(test)]
mod tests;
