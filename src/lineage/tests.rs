use super::open_waiting as open;
use super::*;
use crate::domain::ParamValue;

fn new_trial(x: i64) -> NewTrial {
    let mut config = Params::new();
    config.insert("x".into(), ParamValue::Int(x));
    NewTrial {
        specialist: "s".into(),
        surface: Some("surf".into()),
        parent: None,
        hypothesis: format!("x={x}"),
        changes: config.clone(),
        config,
        ..Default::default()
    }
}

#[test]
fn ids_are_dense_and_history_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let a = store.propose(new_trial(1)).unwrap();
        let b = store.propose(new_trial(2)).unwrap();
        assert_eq!((a.id, b.id), (TrialId(1), TrialId(2)));
        store
            .walk(a.id, TrialStatus::Kept, |t| {
                t.score = Some(0.5);
            })
            .unwrap();
        store.db.flush().unwrap();
    }
    let store = open(dir.path());
    let a = store.get(TrialId(1)).unwrap().unwrap();
    assert_eq!(a.status, TrialStatus::Kept);
    assert_eq!(
        a.history.len(),
        5,
        "proposed, queued, running, evaluating, kept"
    );
    assert_eq!(store.incumbent().unwrap().unwrap().trial, TrialId(1));
    let active: Vec<TrialId> = store.active().unwrap().iter().map(|t| t.id).collect();
    assert_eq!(active, vec![TrialId(2)]);
    assert_eq!(store.propose(new_trial(3)).unwrap().id, TrialId(3));
}

#[test]
fn a_repeated_configuration_is_recorded_as_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.propose(new_trial(1)).unwrap();
    assert!(store.knows(&new_trial(1).config).unwrap());
    let dup = store.propose(new_trial(1)).unwrap();
    assert_eq!(dup.status, TrialStatus::Failed);
    assert_eq!(dup.label, Some(FailureLabel::Duplicate));
    assert!(store.active().unwrap().iter().all(|t| t.id != dup.id));
}

#[test]
fn the_same_file_edits_on_another_incumbent_are_another_measurement() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let edit = |parent: Option<u64>| NewTrial {
        specialist: "s".into(),
        surface: Some("code".into()),
        parent: parent.map(TrialId),
        hypothesis: "a larger learning rate".into(),
        edits: vec![crate::domain::Edit::SearchReplace {
            path: "train.py".into(),
            search: "LR = 0.1".into(),
            replace: "LR = 0.5".into(),
        }],
        ..Default::default()
    };
    assert_eq!(
        store.propose(edit(None)).unwrap().status,
        TrialStatus::Proposed
    );
    let again = store.propose(edit(None)).unwrap();
    assert_eq!(again.label, Some(FailureLabel::Duplicate));
    // A rebase re-applies the edits onto a newer incumbent: other files.
    let rebased = store.propose(edit(Some(1))).unwrap();
    assert_eq!(rebased.status, TrialStatus::Proposed, "{:?}", rebased.label);
    assert_eq!(
        store.propose(edit(Some(1))).unwrap().label,
        Some(FailureLabel::Duplicate)
    );
}

#[test]
fn the_summary_counts_outcomes_as_a_full_scan_would() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for x in 0..6 {
        let t = store.propose(new_trial(x)).unwrap();
        match x % 3 {
            0 => {
                store
                    .walk(t.id, TrialStatus::Kept, |t| {
                        t.decision = Some(crate::domain::Decision::Improved);
                        t.score = Some(-(x as f64));
                    })
                    .unwrap();
            }
            1 => {
                store
                    .walk(t.id, TrialStatus::Failed, |t| {
                        t.label = Some(FailureLabel::Crash);
                    })
                    .unwrap();
            }
            _ => {
                store.walk(t.id, TrialStatus::Running, |_| {}).unwrap();
            }
        }
    }
    store.propose(new_trial(0)).unwrap(); // a duplicate: terminal at once
    let s = store.summary().unwrap();
    assert_eq!((s.trials, s.active), (7, 2));
    let expect: BTreeMap<String, u64> = [
        ("kept".into(), 2),
        ("crash".into(), 2),
        ("duplicate".into(), 1),
    ]
    .into();
    assert_eq!(s.outcomes, expect);
    assert_eq!(s.finished_last_hour, 5);
    assert_eq!(s.keeps, 2);
    assert_eq!(s.incumbent.as_ref().map(|i| i.trial), Some(TrialId(4)));
    // By (specialist, outcome), as a scan counts them.
    let mut scanned: BTreeMap<(String, String), u64> = BTreeMap::new();
    for t in store.iter() {
        let t = t.unwrap();
        if t.status.is_terminal() {
            *scanned
                .entry((t.specialist.clone(), t.outcome().to_string()))
                .or_default() += 1;
        }
    }
    assert_eq!(scanned.values().sum::<u64>(), 5);
    assert_eq!(store.counts_by_specialist().unwrap(), scanned);
    // A lineage from before the counts is counted once at open.
    store.meta.remove(COUNTS_V2).unwrap();
    store.counts.clear().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.summary().unwrap().outcomes, expect);
    assert_eq!(store.counts_by_specialist().unwrap(), scanned);
    // An import counts as the research loop does.
    let other = tempfile::tempdir().unwrap();
    let imported = open(other.path());
    imported
        .import(store.iter().map(|t| t.unwrap()).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(imported.summary().unwrap().outcomes, expect);
    assert_eq!(imported.counts_by_specialist().unwrap(), scanned);
}

#[test]
fn pauses_are_stored_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        store.set_paused(&names(&["a", "b"]), true).unwrap(),
        names(&["a", "b"])
    );
    let since = store.paused().unwrap()["a"];
    // Pausing again changes nothing, not even the time.
    assert!(store.set_paused(&names(&["a"]), true).unwrap().is_empty());
    assert_eq!(store.paused().unwrap()["a"], since);
    assert_eq!(
        store.set_paused(&names(&["b", "c"]), false).unwrap(),
        names(&["b"])
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.paused().unwrap().into_keys().collect::<Vec<_>>(),
        names(&["a"])
    );
}

#[test]
fn trials_are_stored_deflated_and_plain_json_records_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut t = store.propose(new_trial(1)).unwrap();
    let stored = store.trials.get(key(t.id)).unwrap().unwrap();
    assert_eq!(stored[0], DEFLATED);
    t.hypothesis = "a long hypothesis, repeated. ".repeat(40);
    t.id = TrialId(2);
    let json = encode(&t);
    let deflated = encode_trial(&t);
    assert!(
        deflated.len() * 3 < json.len(),
        "{} vs {}",
        deflated.len(),
        json.len()
    );
    // A record written before compression: plain JSON.
    store.trials.insert(key(t.id), json).unwrap();
    assert_eq!(store.get(t.id).unwrap().unwrap(), t);
    assert_eq!(decode_trial(&key(t.id), &deflated).unwrap(), t);
    let mut bad = deflated.clone();
    bad.truncate(bad.len() / 2);
    assert!(matches!(
        decode_trial(&key(t.id), &bad),
        Err(LineageError::Corrupt { .. })
    ));
}

#[test]
fn configurations_keyed_by_text_are_rekeyed_by_hash_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let config = new_trial(7).config;
    // As a lineage from before the hashing stored it.
    store
        .configs
        .insert(config_key(&config).as_bytes(), &key(TrialId(1)))
        .unwrap();
    store.meta.remove(CONFIGS_HASHED).unwrap();
    assert!(!store.knows(&config).unwrap());
    drop(store);
    let store = open(dir.path());
    assert!(store.knows(&config).unwrap());
    assert!(!store.knows(&new_trial(8).config).unwrap());
    assert_eq!(store.configs.len(), 1);
    drop(store);
    // A second open changes nothing.
    let store = open(dir.path());
    assert!(store.knows(&config).unwrap());
    let dup = store.propose(new_trial(7)).unwrap();
    assert_eq!(dup.label, Some(FailureLabel::Duplicate));
}

/// Lineages written before keep their keys: the hash is git's blob hash
/// (`printf 'hello\n' | git hash-object --stdin`).
#[test]
fn keys_are_git_blob_hashes() {
    let hex: String = blob_hash(b"hello\n")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, "ce013625030ba8dba906f756967f9e9ca394464a");
}

#[test]
fn terminal_trials_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store.propose(new_trial(1)).unwrap();
    store.walk(a.id, TrialStatus::Discarded, |_| {}).unwrap();
    let e = store.walk(a.id, TrialStatus::Running, |_| {}).unwrap_err();
    assert!(matches!(e, LineageError::BadTransition { .. }), "{e}");
}

#[test]
fn a_second_open_reports_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match LineageStore::open(dir.path()) {
        Err(LineageError::Locked { .. }) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
}
