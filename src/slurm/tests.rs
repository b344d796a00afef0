use super::*;

fn spec() -> Spec {
    Spec {
        argv: vec!["true".into()],
        cwd: "/t/work".into(),
        env: Vec::new(),
        env_remove: Vec::new(),
        memory_limit: None,
        timeout: Duration::from_secs(5),
        stdout: "/t/train.stdout".into(),
        stderr: "/t/train.stderr".into(),
        metrics: Default::default(),
    }
}

fn end(state: &str) -> JobEnd {
    JobEnd {
        state: JobState(state.into()),
        reason: "Reason".into(),
        node: "n1".into(),
    }
}

fn ran(o: Outcome) -> ProcessReport {
    match o {
        Outcome::Ran(r) => *r,
        Outcome::Lost(why) => panic!("lost: {why}"),
    }
}

/// The issue's table: COMPLETED and FAILED are what the wrapper
/// reported, TIMEOUT a budget overrun, OUT_OF_MEMORY its own label,
/// node failures, preemption and outside cancellations are lost runs.
#[test]
fn end_states_map_to_reports_and_labels() {
    use crate::domain::FailureLabel;
    let wrapped = ProcessReport {
        exit_code: Some(3),
        duration_ms: 1200,
        ..Default::default()
    };
    let r = ran(outcome(7, &end("FAILED"), Some(wrapped.clone()), &spec()));
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.failure_label(), FailureLabel::Crash);
    assert_eq!(
        r.slurm.as_ref().map(|j| (j.id, j.state.as_str())),
        Some((7, "FAILED"))
    );
    assert!(
        r.describe().contains("Slurm job 7 FAILED"),
        "{}",
        r.describe()
    );

    let ok = ProcessReport {
        exit_code: Some(0),
        ..Default::default()
    };
    assert!(ran(outcome(7, &end("COMPLETED"), Some(ok), &spec())).succeeded());
    // Completed without a report: the wrapper never ran (a bad
    // `ratchet` path on the nodes, say).
    let r = ran(outcome(7, &end("COMPLETED"), None, &spec()));
    assert!(!r.succeeded());
    assert!(r.spawn_error.unwrap().contains("/t/train.slurm.log"));

    let r = ran(outcome(7, &end("TIMEOUT"), None, &spec()));
    assert_eq!(r.failure_label(), FailureLabel::BudgetOverrun);
    assert_eq!(
        r.describe(),
        "killed by Slurm at the time limit (Slurm job 7 TIMEOUT)"
    );
    let r = ran(outcome(7, &end("OUT_OF_MEMORY"), None, &spec()));
    assert_eq!(r.failure_label(), FailureLabel::OutOfMemory);

    for state in ["NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "CANCELLED"] {
        match outcome(7, &end(state), Some(wrapped.clone()), &spec()) {
            Outcome::Lost(why) => {
                assert!(why.contains(state) && why.contains("n1"), "{why}")
            }
            Outcome::Ran(r) => panic!("{state} ran: {r:?}"),
        }
    }
    // Forgotten by Slurm: the wrapper's report decides; without one,
    // nobody knows what happened, so it runs again.
    assert_eq!(
        ran(outcome(7, &JobEnd::unknown(), Some(wrapped), &spec())).exit_code,
        Some(3)
    );
    assert!(matches!(
        outcome(7, &JobEnd::unknown(), None, &spec()),
        Outcome::Lost(_)
    ));
}

#[test]
fn terminal_states() {
    for s in [
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "CANCELLED",
    ] {
        assert!(JobState(s.into()).is_terminal(), "{s}");
    }
    for s in [
        "PENDING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "SUSPENDED",
        "CONFIGURING",
    ] {
        assert!(!JobState(s.into()).is_terminal(), "{s}");
    }
}

#[test]
fn job_names_round_trip_within_their_lineage_only() {
    let slurm = |tag: &str| Slurm {
        settings: SlurmSection::default(),
        tag: tag.into(),
        ratchet: "ratchet".into(),
        env_remove: Vec::new(),
        tracker: Mutex::default(),
    };
    let a = slurm("ratchet-0000abcd");
    let name = a.job_name(TrialId(42), 3, JobKind::Full);
    assert_eq!(name, "ratchet-0000abcd-42-3-full");
    assert_eq!(a.parse_name(&name), Some((TrialId(42), 3, JobKind::Full)));
    assert_eq!(slurm("ratchet-0000abce").parse_name(&name), None);
    assert_eq!(a.parse_name("ratchet-0000abcd-42-3-full-x"), None);
    assert_eq!(a.parse_name("wrap"), None);
}

#[test]
fn tags_are_stable_and_differ_by_lineage() {
    // A restarted (or upgraded) ratchet must find its jobs: the hash
    // is FNV-1a of the path, folded to 32 bits (checked against an
    // independent implementation in Python).
    assert_eq!(
        lineage_tag(Path::new("/nonexistent/lineage")),
        "ratchet-d8b263d3"
    );
    assert_ne!(
        lineage_tag(Path::new("/nonexistent/a")),
        lineage_tag(Path::new("/nonexistent/b"))
    );
}

#[test]
fn time_limits_round_up_to_minutes() {
    assert_eq!(minutes(Duration::from_secs(1)), 1);
    assert_eq!(minutes(Duration::from_secs(60)), 1);
    assert_eq!(minutes(Duration::from_secs(61)), 2);
    assert_eq!(minutes(Duration::ZERO), 1);
}

/// What sbatch says when the controller is down or a submit limit is
/// reached is waited out; a configuration it refuses is not.
#[test]
fn transient_sbatch_refusals() {
    for e in [
        "sbatch failed (exit status: 1): sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
        "sbatch failed (exit status: 1): sbatch: error: QOSMaxSubmitJobPerUserLimit",
        "sbatch did not answer in 60 s",
        "sbatch failed (exit status: 1): sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
    ] {
        assert!(transient(e), "{e}");
    }
    for e in [
        "sbatch failed (exit status: 1): sbatch: error: Batch job submission failed: Invalid partition name specified",
        "sbatch failed (exit status: 1): sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
        "cannot run sbatch: No such file or directory (os error 2)",
    ] {
        assert!(!transient(e), "{e}");
    }
}

#[test]
fn shell_quoting() {
    assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
}
