//! The ratchet's statistics on `tests/fixtures/noisy`, an experiment with a
//! known noise level: the seed shifts the loss by fixed amounts (spread about
//! 0.05), plus a jitter of ±0.005 from the OS random source, so repeated runs
//! differ. The keep rule counts on no pairing (the sum of both recipes'
//! variances, about 0.07 sd per paired gain): at `false_keep_rate = 0.05`
//! a change of at most 0.02 (`b`) is never clear of it, one of 0.25
//! (`a = 0.5`) is after two runs.

mod common;

use common::{str_of, Dir};
use git2::{Oid, Repository};
use serde_json::{json, Value};

/// One manual specialist on surface `s` with these proposals.
fn setup(dir: &Dir, slots: usize, proposals: &[(&str, Value)]) {
    dir.manual(slots, proposals);
}

/// `ratchet run --trials <proposals>` (the baseline counts as one).
fn run(dir: &Dir, proposals: usize) -> Vec<Value> {
    dir.ratchet_ok(&["run", "--trials", &proposals.to_string()]);
    dir.trials()
}

fn by_hypothesis<'a>(trials: &'a [Value], prefix: &str) -> &'a Value {
    trials
        .iter()
        .find(|t| str_of(t, "hypothesis").starts_with(prefix) && t["rebased_from"].is_null())
        .unwrap_or_else(|| panic!("no trial `{prefix}` in {trials:#?}"))
}

fn f(t: &Value, key: &str) -> f64 {
    t[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {t:#}"))
}

/// A trial's full-eval scores by seed (seed 0: its own run).
fn by_seed(t: &Value) -> std::collections::BTreeMap<u64, f64> {
    let mut out: std::collections::BTreeMap<u64, f64> = t["seed_runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["seed"].as_u64()?, r["full_score"].as_f64()?)))
        .collect();
    out.insert(0, f(t, "full_score"));
    out
}

/// How much lower `b` scores than `a`, mean over the seeds both ran.
fn paired_gain(a: &Value, b: &Value) -> f64 {
    let (a, b) = (by_seed(a), by_seed(b));
    let common: Vec<f64> = a.iter().filter_map(|(s, x)| Some(x - b.get(s)?)).collect();
    common.iter().sum::<f64>() / common.len() as f64
}

/// The fixture's per-seed shifts (train.py's SEED_NOISE).
const SEED_NOISE: [f64; 4] = [0.0, 0.06, -0.05, 0.03];

#[test]
fn a_change_inside_the_noise_band_is_never_kept_and_a_real_one_is() {
    for round in 0..3 {
        let dir = Dir::with_fixture("noisy");
        // A second run (a restart) proposes on top of the incumbent the
        // first one left: proposals are asked for ahead of need, so within
        // one run they would be proposed against the baseline.
        let first = [
            ("1-b-small", json!({"s.b": 0.1})),
            ("2-b-full", json!({"s.b": 1.0})),
            ("3-lucky", json!({"s.lucky": true})),
            ("4-a", json!({"s.a": 0.5})),
        ];
        setup(&dir, 1, &first);
        run(&dir, first.len() + 1);
        let second = [
            ("5-b-on-a", json!({"s.b": 1.0})),
            ("6-lucky-on-a", json!({"s.lucky": true})),
        ];
        setup(&dir, 1, &second);
        let trials = run(&dir, second.len());
        let ctx = format!("round {round}: {trials:#?}");

        // The baseline is measured over seeds 0..=3 before it is kept: its
        // spread is the fixture's seed spread.
        let baseline = &trials[0];
        assert_eq!(str_of(baseline, "status"), "kept", "{ctx}");
        let runs = baseline["seed_runs"].as_array().unwrap();
        assert_eq!(
            runs.iter()
                .map(|r| r["seed"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            [1, 2, 3],
            "{ctx}"
        );
        // Each seed reached its run: the loss moved by that seed's shift.
        let own = f(baseline, "full_score");
        for r in runs {
            let seed = r["seed"].as_u64().unwrap() as usize;
            let shift = f(r, "full_score") - own;
            assert!(
                (shift - SEED_NOISE[seed]).abs() <= 0.011,
                "seed {seed} shifted {shift}: {ctx}"
            );
        }
        let sd = f(&baseline["noise"]["confirmed"], "sd");
        let expected_sd = 0.04787; // sample sd of SEED_NOISE
        assert!((sd - expected_sd).abs() < 0.006, "spread {sd}: {ctx}");
        assert_eq!(baseline["noise"]["confirmed"]["n"], 4, "{ctx}");
        let mean = f(&baseline["noise"]["confirmed"], "mean");
        assert!((f(baseline, "score") - mean).abs() < 1e-12, "{ctx}");

        // b = 0.1: gains 0.032 on proxy, too little to screen in.
        let half = by_hypothesis(&trials, "1-b-small");
        assert_eq!(str_of(half, "status"), "discarded", "{ctx}");
        assert_eq!(str_of(half, "decision"), "within_noise", "{ctx}");
        assert!(str_of(half, "detail").starts_with("proxy"), "{ctx}");
        assert!(half["full_score"].is_null(), "{ctx}");

        // b = 1: the proxy flatters it (0.32), the full eval does not (0.02).
        let flattered = by_hypothesis(&trials, "2-b-full");
        assert_eq!(str_of(flattered, "decision"), "within_noise", "{ctx}");
        assert_eq!(flattered["false_peak"], true, "{ctx}");
        assert!(str_of(flattered, "detail").contains("not on full"), "{ctx}");
        assert!(
            flattered["seed_runs"].as_array().unwrap().is_empty(),
            "{ctx}"
        );

        // lucky: 0.2 better on seed 0 only. It passes both screens, is ahead
        // but not clearly after its first run, and fails the confirmation:
        // a mean gain of 0.05 over its runs. (With one slot, `a` may be kept
        // while lucky waits for a seed run: then lucky is re-applied onto
        // `a` and fails there.)
        let lucky = by_hypothesis(&trials, "3-lucky");
        let lucky = match str_of(lucky, "decision") {
            "rebased" => trials
                .iter()
                .find(|t| t["id"] == lucky["rebased_as"])
                .unwrap_or_else(|| panic!("no rebased lucky: {ctx}")),
            _ => lucky,
        };
        assert_eq!(str_of(lucky, "status"), "discarded", "{ctx}");
        assert_eq!(str_of(lucky, "decision"), "within_noise", "{ctx}");
        assert_eq!(lucky["false_peak"], true, "{ctx}");
        assert!(
            !lucky["seed_runs"].as_array().unwrap().is_empty(),
            "it got more runs while ahead: {ctx}"
        );
        assert!(
            str_of(lucky, "detail").contains("not the confirmation"),
            "{ctx}"
        );
        // What the decision rested on is recorded with it.
        let evidence = &lucky["evidence"];
        assert_eq!(
            evidence["runs"].as_u64(),
            Some(lucky["seed_runs"].as_array().unwrap().len() as u64 + 1),
            "{ctx}"
        );
        assert!(f(evidence, "gain") < f(evidence, "bound"), "{ctx}");
        assert_eq!(evidence["rate"], 0.05, "{ctx}");

        // a = 0.5 gains 0.25 on every seed: kept, and once kept it is
        // trained with every seed (its band, and the seeds later candidates
        // pair with); its score is the mean over them.
        let real = by_hypothesis(&trials, "4-a");
        assert_eq!(str_of(real, "status"), "kept", "{ctx}");
        assert_eq!(str_of(real, "decision"), "improved", "{ctx}");
        let gain = f(baseline, "score") - f(real, "score");
        assert!((gain - 0.25).abs() < 0.011, "gain {gain}: {ctx}");
        assert_eq!(real["noise"]["confirmed"]["n"], 4, "{ctx}");
        assert!(
            (f(real, "score") - f(&real["noise"]["confirmed"], "mean")).abs() < 1e-12,
            "{ctx}"
        );

        // On top of the new incumbent, the same in-band changes stay out.
        // (lucky on a was measured already when lucky was rebased onto a.)
        let rebased = !lucky["rebased_from"].is_null();
        for name in ["5-b-on-a", "6-lucky-on-a"] {
            let t = by_hypothesis(&trials, name);
            assert_eq!(t["parent"], real["id"], "{ctx}");
            if rebased && name == "6-lucky-on-a" {
                assert_eq!(str_of(t, "label"), "duplicate", "{name}: {ctx}");
            } else {
                assert_eq!(str_of(t, "decision"), "within_noise", "{name}: {ctx}");
            }
        }
        // The fixture's seed shifts are shared by every recipe: the
        // restarted evaluator measured that from lucky's runs against its
        // parent's, and b-on-a was compared partly seed by seed.
        let same_seed = &by_hypothesis(&trials, "5-b-on-a")["evidence"]["same_seed"];
        assert!(f(same_seed, "correlation") > 0.0, "{ctx}");
        assert!(f(same_seed, "weight") > 0.25, "{ctx}");

        // Nothing in the band was ever kept: exactly the baseline and `a`.
        let kept: Vec<&Value> = trials
            .iter()
            .filter(|t| str_of(t, "status") == "kept")
            .collect();
        assert_eq!(kept.len(), 2, "{ctx}");
        let best = dir.ratchet_ok(&["lineage", "best"]);
        assert!(best.contains(&format!("trial {} ", real["id"])), "{best}");
    }
}

#[test]
fn a_winner_proposed_before_the_incumbent_moved_is_rebased_and_confirmed_again() {
    let dir = Dir::with_fixture("noisy");
    // Two slots: `a` and `c` start together against the baseline; `a` is
    // quick and kept first (a gain of 0.3 is clear after two runs; 0.25
    // sits on the bound there and may need a third, by which time `a2`
    // could be kept first), `c` trains 3 s and beats the baseline (by 0.2)
    // after the incumbent moved, but not `a`; `a2` (another value of `a`,
    // 0.2 better than the baseline, proposed against it too) conflicts
    // with the kept `a`.
    let proposals = [
        ("1-a", json!({"s.a": 0.6})),
        ("2-c", json!({"s.c": 0.5, "s.slow": 3.0})),
        ("3-a2", json!({"s.a": 0.4, "s.slow": 1.0})),
    ];
    setup(&dir, 2, &proposals);
    let trials = run(&dir, proposals.len() + 1);
    let ctx = format!("{trials:#?}");
    let baseline = &trials[0];
    let a = by_hypothesis(&trials, "1-a");
    let c = by_hypothesis(&trials, "2-c");
    let a2 = by_hypothesis(&trials, "3-a2");
    for t in [a, c, a2] {
        assert_eq!(t["parent"], baseline["id"], "{ctx}");
    }
    assert_eq!(str_of(a, "status"), "kept", "{ctx}");

    // c beat the baseline, but the incumbent had moved to a, which c alone
    // does not beat: it is re-applied onto a as a new trial, which is
    // measured and confirmed on its own.
    assert_eq!(str_of(c, "status"), "discarded", "{ctx}");
    assert_eq!(str_of(c, "decision"), "rebased", "{ctx}");
    let rebased = trials
        .iter()
        .find(|t| t["id"] == c["rebased_as"])
        .unwrap_or_else(|| panic!("no rebased trial: {ctx}"));
    assert_eq!(rebased["rebased_from"], c["id"], "{ctx}");
    assert_eq!(rebased["parent"], a["id"], "{ctx}");
    assert_eq!(rebased["config"]["s.a"], json!(0.6), "{ctx}");
    assert_eq!(rebased["config"]["s.c"], json!(0.5), "{ctx}");
    assert_eq!(str_of(rebased, "status"), "kept", "{ctx}");
    assert_eq!(rebased["seed_runs"].as_array().unwrap().len(), 3, "{ctx}");
    // Paired by seed: `a` may have been replaced before all its seeds ran.
    let gain = paired_gain(a, rebased);
    assert!((gain - 0.2).abs() < 0.011, "gain {gain}: {ctx}");

    // a2 changed the key a had changed: the rebase conflicts.
    assert_eq!(str_of(a2, "status"), "failed", "{ctx}");
    assert_eq!(str_of(a2, "label"), "patch_failed", "{ctx}");
    assert!(
        str_of(a2, "detail").contains("`s.a` was changed by both"),
        "{ctx}"
    );
    assert!(a2["rebased_as"].is_null(), "{ctx}");

    // The rebased commit sits on the kept a's commit, and is the incumbent.
    let repo = Repository::open(dir.path().join("experiment")).unwrap();
    let commit = |t: &Value| Oid::from_str(str_of(t, "commit")).unwrap();
    let rc = repo.find_commit(commit(rebased)).unwrap();
    assert_eq!(rc.parent_id(0).unwrap(), commit(a));
    let incumbent = repo
        .find_reference("refs/heads/ratchet/incumbent")
        .unwrap()
        .target()
        .unwrap();
    assert_eq!(incumbent, rc.id());
    let recipe = rc.tree().unwrap().get_path("recipe.toml".as_ref()).unwrap();
    let text = String::from_utf8(repo.find_blob(recipe.id()).unwrap().content().to_vec()).unwrap();
    assert!(
        text.contains("a = 0.6") && text.contains("c = 0.5"),
        "{text}"
    );
}

#[test]
fn a_winner_that_beats_the_moved_incumbent_too_is_kept_as_measured_then_combined() {
    let dir = Dir::with_fixture("noisy");
    // `a` (0.2 better than the baseline) is quick and kept while `c` (0.4
    // better, 0.2 better than `a`) trains 3 s against the baseline. c is
    // kept as it was measured, without a's change (rebasing it would throw
    // away a measured win and run it again); then what a had over the
    // baseline is re-applied onto c as a combination, which wins again.
    let proposals = [
        ("1-a", json!({"s.a": 0.4})),
        ("2-c", json!({"s.c": 1.0, "s.slow": 3.0})),
    ];
    setup(&dir, 2, &proposals);
    let trials = run(&dir, proposals.len() + 2);
    let ctx = format!("{trials:#?}");
    let a = by_hypothesis(&trials, "1-a");
    let c = by_hypothesis(&trials, "2-c");
    assert_eq!(str_of(a, "status"), "kept", "{ctx}");
    assert_eq!(c["parent"], trials[0]["id"], "{ctx}");
    assert_eq!(str_of(c, "status"), "kept", "{ctx}");
    assert!(c["rebased_as"].is_null(), "{ctx}");
    assert_eq!(c["config"]["s.a"], json!(0.0), "{ctx}");
    let detail = str_of(c, "detail");
    assert!(
        detail.contains(&format!("against #{}", a["id"])) && detail.contains("was replaced"),
        "{ctx}"
    );
    let gain = paired_gain(a, c);
    assert!((gain - 0.2).abs() < 0.011, "gain {gain}: {ctx}");
    // The current incumbent is the combination.
    let combined = by_hypothesis(&trials, "combination");
    assert_eq!(combined["parent"], c["id"], "{ctx}");
    assert_eq!(
        str_of(combined, "specialist"),
        str_of(a, "specialist"),
        "{ctx}"
    );
    assert_eq!(combined["config"]["s.a"], json!(0.4), "{ctx}");
    assert_eq!(combined["config"]["s.c"], json!(1.0), "{ctx}");
    assert_eq!(str_of(combined, "status"), "kept", "{ctx}");
    let best: Value =
        serde_json::from_str(&dir.ratchet_ok(&["lineage", "best", "--json"])).unwrap();
    assert_eq!(best["trial"], combined["id"], "{best:#}");
    let gain = paired_gain(c, combined);
    assert!((gain - 0.2).abs() < 0.011, "gain {gain}: {ctx}");

    // The kept tree is the measured one: c's keep is a merge on a's commit
    // holding c's files exactly, and the combination's commit sits on it.
    let repo = Repository::open(dir.path().join("experiment")).unwrap();
    let commit = |t: &Value| Oid::from_str(str_of(t, "commit")).unwrap();
    let keep = repo
        .find_commit(Oid::from_str(str_of(c, "keep_commit")).unwrap())
        .unwrap();
    assert_eq!(
        keep.tree_id(),
        repo.find_commit(commit(c)).unwrap().tree_id()
    );
    assert_eq!(
        keep.parent_ids().collect::<Vec<_>>(),
        [commit(a), commit(c)]
    );
    let cc = repo.find_commit(commit(combined)).unwrap();
    assert_eq!(cc.parent_id(0).unwrap(), keep.id());
    let kept = trials.iter().filter(|t| str_of(t, "status") == "kept");
    assert_eq!(kept.count(), 4, "baseline, a, c, the combination: {ctx}");
    let shown = dir.ratchet_ok(&["lineage", "show", &c["id"].to_string()]);
    assert!(
        shown.contains(&format!("kept as: {}", keep.id())),
        "{shown}"
    );
}

#[test]
fn an_incumbent_kept_without_a_band_is_measured_again_at_start_before_any_decision() {
    let dir = Dir::with_fixture("noisy");
    let toml = dir.path().join("experiment/experiment.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("seeds = 3", "seeds = 0")).unwrap();
    setup(&dir, 1, &[]);
    let trials = run(&dir, 1);
    assert_eq!(str_of(&trials[0], "status"), "kept");
    assert!(trials[0]["seed_runs"].as_array().unwrap().is_empty());
    assert_eq!(trials[0]["noise"]["confirmed"]["n"], 1, "{:#}", trials[0]);

    // noise.seeds raised: the next start trains the incumbent again with
    // seeds 1..=3; a flattered in-band change is judged against that band.
    std::fs::write(&toml, text).unwrap();
    setup(&dir, 1, &[("1-b", json!({"s.b": 1.0}))]);
    let trials = run(&dir, 1);
    let ctx = format!("{trials:#?}");
    let baseline = &trials[0];
    assert_eq!(str_of(baseline, "status"), "kept", "{ctx}");
    assert_eq!(baseline["seed_runs"].as_array().unwrap().len(), 3, "{ctx}");
    assert_eq!(baseline["noise"]["confirmed"]["n"], 4, "{ctx}");
    let sd = f(&baseline["noise"]["confirmed"], "sd");
    assert!(sd > 0.03, "{ctx}");
    let b = by_hypothesis(&trials, "1-b");
    assert_eq!(str_of(b, "decision"), "within_noise", "{ctx}");
    assert_eq!(b["false_peak"], true, "{ctx}");
    assert!(
        !str_of(b, "detail").ends_with("band 0.0)") && !str_of(b, "detail").ends_with("band 0.0"),
        "judged without the band: {ctx}"
    );
    // The incumbent record carries the band too.
    let best = dir.ratchet_ok(&["lineage", "best", "--json"]);
    assert!(best.contains("\"noise\""), "{best}");
}

/// When the entry of `status` in a trial's history was made (ms).
fn at(t: &Value, status: &str) -> u64 {
    t["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == status)
        .and_then(|c| c["at_ms"].as_u64())
        .unwrap_or_else(|| panic!("no `{status}` in {t:#}"))
}

#[test]
fn no_new_trial_starts_while_a_candidate_is_confirmed_unless_told_to() {
    // Six slots, up to three seed re-runs: `a` wins after more than one
    // run; twenty proposals whose change is far inside the noise band keep
    // the queue full. While a's seed runs train, five slots are free for
    // them, unless the executor confirms first.
    let mut proposals = vec![("00-a".to_string(), json!({"s.a": 0.5}))];
    for i in 1..=20 {
        // Slow enough (1 s) that the queue still holds some when a's seed runs start.
        proposals.push((
            format!("{i:02}-b"),
            json!({"s.b": 0.001 * i as f64, "s.slow": 1.0}),
        ));
    }
    let proposals: Vec<(&str, Value)> = proposals
        .iter()
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    for confirm_first in [true, false] {
        let dir = Dir::with_fixture("noisy");
        setup(&dir, 6, &proposals);
        if !confirm_first {
            let path = dir.path().join("specialists.toml");
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.replace("seed = 1\n", "seed = 1\nconfirm_first = false\n");
            std::fs::write(&path, text).unwrap();
        }
        let trials = run(&dir, proposals.len() + 1);
        // Each trial's history, in ms from the first entry, and its seed runs' starts.
        let t0 = at(&trials[0], "proposed");
        let seed_starts = |t: &Value| -> Vec<u64> {
            t["seed_runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["train"]["started_ms"].as_u64())
                .collect()
        };
        let timeline: Vec<String> = trials
            .iter()
            .map(|t| {
                let h: Vec<String> = t["history"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        let ms = c["at_ms"].as_u64().unwrap() - t0;
                        format!("{}@{ms}", str_of(c, "status"))
                    })
                    .collect();
                let seeds: Vec<u64> = seed_starts(t).iter().map(|s| s - t0).collect();
                format!(
                    "#{} {}: {} seeds@{seeds:?}",
                    t["id"],
                    str_of(t, "hypothesis"),
                    h.join(" ")
                )
            })
            .collect();
        let ctx = format!("confirm_first = {confirm_first}:\n{}", timeline.join("\n"));
        let a = by_hypothesis(&trials, "00-a");
        assert_eq!(str_of(a, "status"), "kept", "{ctx}");
        // From a's first seed run to its keep.
        let from = *seed_starts(a).iter().min().expect("seed runs");
        let to = at(a, "kept");
        let inside = trials
            .iter()
            .filter(|t| t["id"] != a["id"] && t["specialist"] == "hand")
            .filter(|t| (from..to).contains(&at(t, "running")))
            .count();
        if confirm_first {
            assert_eq!(inside, 0, "trials started during a's confirmation: {ctx}");
        } else {
            assert!(
                inside > 0,
                "no trial started during a's confirmation: {ctx}"
            );
        }
    }
}
