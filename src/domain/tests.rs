use super::*;

#[test]
fn trial_id_parses_with_and_without_hash() {
    assert_eq!("42".parse::<TrialId>().unwrap(), TrialId(42));
    assert_eq!("#7".parse::<TrialId>().unwrap(), TrialId(7));
    assert!("x".parse::<TrialId>().is_err());
}

/// The moves of the state machine are exactly the documented ones, and
/// from every status a terminal one can be reached.
#[test]
fn the_state_machine_allows_the_documented_moves_only() {
    use TrialStatus::*;
    let all = [
        Proposed,
        Queued,
        Running,
        Evaluating,
        Kept,
        Discarded,
        Failed,
        Interrupted,
    ];
    let documented = [
        (Proposed, Queued),
        (Proposed, Failed),
        (Proposed, Interrupted),
        (Queued, Running),
        (Queued, Failed),
        (Queued, Interrupted),
        (Running, Evaluating),
        (Running, Queued),
        (Running, Failed),
        (Running, Interrupted),
        (Evaluating, Kept),
        (Evaluating, Discarded),
        (Evaluating, Failed),
        (Evaluating, Interrupted),
    ];
    for from in all {
        for to in all {
            assert_eq!(
                from.may_become(to),
                documented.contains(&(from, to)),
                "{from} → {to}"
            );
        }
        assert_eq!(
            from.is_terminal(),
            all.iter().all(|&to| !from.may_become(to)),
            "{from}: terminal exactly when nothing leaves it"
        );
        let (mut seen, mut next) = (vec![from], vec![from]);
        while let Some(s) = next.pop() {
            for to in all.into_iter().filter(|&to| s.may_become(to)) {
                if !seen.contains(&to) {
                    seen.push(to);
                    next.push(to);
                }
            }
        }
        assert!(
            seen.iter().any(|s| s.is_terminal()),
            "{from}: no way to an outcome"
        );
    }
    // A decision is made only on an evaluated trial.
    for from in all {
        for to in [Kept, Discarded] {
            assert_eq!(from.may_become(to), from == Evaluating, "{from} → {to}");
        }
    }
}

#[test]
fn direction_compares_strictly() {
    assert!(Direction::Minimize.better(1.0, 2.0));
    assert!(!Direction::Minimize.better(2.0, 2.0));
    assert!(Direction::Maximize.better(3.0, 2.0));
}

#[test]
fn param_values_round_trip_through_json() {
    let mut p = Params::new();
    p.insert("a".into(), ParamValue::Int(3));
    p.insert("b".into(), ParamValue::Float(0.5));
    p.insert("c".into(), ParamValue::Str("x".into()));
    p.insert("d".into(), ParamValue::Bool(true));
    let back: Params = serde_json::from_str(&config_key(&p)).unwrap();
    assert_eq!(back, p);
}

#[test]
fn float_formatting_is_compact() {
    assert_eq!(format_float(0.5), "0.5");
    assert_eq!(format_float(3.0), "3.0");
    assert_eq!(format_float(1e-4), "1.0000e-4");
}
