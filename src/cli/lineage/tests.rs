use super::*;

#[test]
fn since_takes_ages_and_utc_times() {
    let now = 1_795_430_096_000; // 2026-11-23 10:34:56 UTC
    assert_eq!(parse_since_at("30m", now), Ok(now - 30 * 60_000));
    assert_eq!(parse_since_at("2d", now), Ok(now - 2 * 86_400_000));
    assert_eq!(parse_since_at("1h 30m", now), Ok(now - 5_400_000));
    assert_eq!(parse_since_at("1h30m", now), Ok(now - 5_400_000));
    assert_eq!(
        export::utc(parse_since_at("2026-11-23", now).unwrap()),
        "2026-11-23 00:00:00"
    );
    assert_eq!(
        export::utc(parse_since_at("2024-02-29T14:05:09", now).unwrap()),
        "2024-02-29 14:05:09"
    );
    assert_eq!(
        export::utc(parse_since_at("2026-01-01 08:30", now).unwrap()),
        "2026-01-01 08:30:00"
    );
    for bad in [
        "yesterday",
        "3x",
        "2026-13-01",
        "2026-11",
        "-5m",
        "2026-11-23T25:00",
    ] {
        assert!(parse_since_at(bad, now).is_err(), "{bad}");
    }
}

#[test]
fn every_outcome_a_label_filter_accepts_is_one_lineage_gives() {
    for l in [
        FailureLabel::Crash,
        FailureLabel::BudgetOverrun,
        FailureLabel::SizeFailure,
        FailureLabel::GateMiss,
        FailureLabel::MetricMissing,
        FailureLabel::Diverged,
        FailureLabel::IllegalEdit,
        FailureLabel::PatchFailed,
        FailureLabel::Duplicate,
        FailureLabel::ProposerError,
        FailureLabel::Interrupted,
        FailureLabel::OutOfMemory,
        FailureLabel::GpuOutOfMemory,
        FailureLabel::PreflightFailed,
    ] {
        assert!(OUTCOMES.contains(&l.as_str()), "{l}");
    }
    assert_eq!(OUTCOMES.len(), 14 + 6);
}
