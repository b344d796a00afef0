//! The trial state machine as lineage enforces it, on a real sled database:
//! a move the machine does not allow is refused with a typed error and
//! changes nothing; a change may not set the status itself; each allowed
//! move is in the trial's history.

use ratchet::domain::{ParamValue, Params, TrialStatus};
use ratchet::lineage::{LineageError, LineageStore, NewTrial};

fn proposal(x: i64) -> NewTrial {
    let mut config = Params::new();
    config.insert("x".into(), ParamValue::Int(x));
    NewTrial {
        specialist: "s".into(),
        hypothesis: format!("x = {x}"),
        changes: config.clone(),
        config,
        ..Default::default()
    }
}

#[test]
fn lineage_refuses_a_move_the_state_machine_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let store = LineageStore::open(dir.path()).unwrap();
    let t = store.propose(proposal(1)).unwrap();
    assert_eq!(t.status, TrialStatus::Proposed);

    // Kept straight from proposed: never run, never judged.
    let e = store
        .update(t.id, Some(TrialStatus::Kept), |t| t.score = Some(1.0))
        .unwrap_err();
    match e {
        LineageError::BadTransition { id, status, to } => {
            assert_eq!(
                (id, status, to),
                (t.id, TrialStatus::Proposed, TrialStatus::Kept)
            )
        }
        e => panic!("expected BadTransition, got {e}"),
    }
    let after = store.get(t.id).unwrap().unwrap();
    assert_eq!(
        after, t,
        "a refused move changes nothing, not even the fields"
    );
    assert!(store.incumbent().unwrap().is_none(), "nothing was kept");

    // A setter that changes the status itself is refused too.
    let e = store
        .update(t.id, None, |t| t.status = TrialStatus::Running)
        .unwrap_err();
    assert!(
        matches!(e, LineageError::StatusBySetter(id) if id == t.id),
        "{e}"
    );
    assert_eq!(
        store.get(t.id).unwrap().unwrap().status,
        TrialStatus::Proposed
    );

    // The main line is allowed, each move recorded once.
    for to in [
        TrialStatus::Queued,
        TrialStatus::Running,
        TrialStatus::Evaluating,
    ] {
        assert_eq!(store.update(t.id, Some(to), |_| {}).unwrap().status, to);
    }
    // Evaluating cannot go back to running.
    let e = store
        .update(t.id, Some(TrialStatus::Running), |_| {})
        .unwrap_err();
    assert!(matches!(e, LineageError::BadTransition { .. }), "{e}");
    let kept = store
        .update(t.id, Some(TrialStatus::Kept), |t| t.score = Some(0.5))
        .unwrap();
    let history: Vec<TrialStatus> = kept.history.iter().map(|h| h.status).collect();
    assert_eq!(
        history,
        [
            TrialStatus::Proposed,
            TrialStatus::Queued,
            TrialStatus::Running,
            TrialStatus::Evaluating,
            TrialStatus::Kept
        ]
    );
    assert_eq!(store.incumbent().unwrap().unwrap().trial, t.id);
    // Nothing leaves a terminal status, and a terminal trial's fields stay.
    for to in [
        None,
        Some(TrialStatus::Queued),
        Some(TrialStatus::Discarded),
    ] {
        let e = store.update(t.id, to, |t| t.score = Some(9.0)).unwrap_err();
        assert!(
            matches!(e, LineageError::BadTransition { .. }),
            "{to:?}: {e}"
        );
    }
    assert_eq!(store.get(t.id).unwrap().unwrap().score, Some(0.5));
}

#[test]
fn a_run_started_again_goes_back_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = LineageStore::open(dir.path()).unwrap();
    let t = store.propose(proposal(2)).unwrap();
    store
        .update(t.id, Some(TrialStatus::Queued), |_| {})
        .unwrap();
    store
        .update(t.id, Some(TrialStatus::Running), |_| {})
        .unwrap();
    let again = store
        .update(t.id, Some(TrialStatus::Queued), |t| t.attempt += 1)
        .unwrap();
    assert_eq!((again.status, again.attempt), (TrialStatus::Queued, 2));
    // Queued again while queued is no move: no history entry.
    let same = store
        .update(t.id, Some(TrialStatus::Queued), |_| {})
        .unwrap();
    assert_eq!(same.history.len(), again.history.len());
}
