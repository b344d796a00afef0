use super::*;
use crate::domain::Decision;
use crate::propose::rng::Rng;

fn by(v: &[(u64, f64)]) -> BTreeMap<u64, f64> {
    v.iter().copied().collect()
}

/// An error whose noise is a share of its level (10% here): recipes
/// measured at 0.3 pool a spread that, on the metric itself, drowns a
/// 15% gain at 0.012; on its log (`noise.scale = "log"`) the same
/// gain is kept.
#[test]
fn a_relative_gain_stands_out_on_the_log_scale_only() {
    use crate::config::Scale;
    let rule = Rule {
        false_keep_rate: 0.1,
        max_runs: 3,
    };
    let noisy = |level: f64| [level * 0.9, level, level * 1.1];
    let look = |scale: Scale| {
        let on = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| scale.judged(*x).unwrap()).collect() };
        let mut pool = Pool::default();
        for level in [0.35, 0.3, 0.3, 0.2] {
            pool.add(&on(&noisy(level)));
        }
        let incumbent: BTreeMap<u64, f64> = on(&noisy(0.012))
            .into_iter()
            .enumerate()
            .map(|(s, v)| (s as u64, v))
            .collect();
        pool.add(&incumbent.values().copied().collect::<Vec<_>>());
        let candidate: BTreeMap<u64, f64> = on(&noisy(0.0102))
            .into_iter()
            .enumerate()
            .map(|(s, v)| (s as u64, v))
            .collect();
        look(
            rule,
            &pool,
            Direction::Minimize,
            &candidate,
            &incumbent,
            false,
        )
        .unwrap()
    };
    let linear = look(Scale::Linear);
    assert_ne!(linear.call, Call::Keep, "{linear:?}");
    assert!(
        linear.bound > 0.01,
        "a bound the size of the error itself: {linear:?}"
    );
    let log = look(Scale::Log);
    assert_eq!(log.call, Call::Keep, "{log:?}");
    assert!(
        (log.gain - (0.012f64 / 0.0102).ln()).abs() < 1e-9,
        "{log:?}"
    );
    assert_eq!(Scale::Log.judged(0.0), None);
    assert_eq!(Scale::Linear.judged(-1.0), Some(-1.0));
}

#[test]
fn gains_are_per_seed_differences_as_far_as_same_seed_runs_move_together() {
    // Seed 1 is a bad seed for the reference (mean 4/3).
    let reference = by(&[(0, 1.0), (1, 2.0), (2, 1.0)]);
    let at = |c: &[(u64, f64)], rho: f64| {
        estimate(Direction::Minimize, &by(c), &reference, (0.1, 0.1, rho)).unwrap()
    };
    // Every seed: the mean per-seed difference, whatever the correlation.
    for rho in [0.0, 0.5, 0.9] {
        let e = at(&[(0, 0.9), (1, 1.9), (2, 0.9)], rho);
        assert!((e.gain - 0.1).abs() < 1e-12, "{e:?}");
        assert_eq!(e.weight, 1.0);
        let v = (0.1 + 0.1 - 2.0 * rho * 0.1) / 3.0;
        assert!((e.variance - v).abs() < 1e-12, "{e:?}");
    }
    // One run, seeds independent: against the reference's mean, with a
    // third of its variance (not all of it, as against its seed-0 run).
    let e = at(&[(0, 0.9)], 0.0);
    assert!((e.gain - (4.0 / 3.0 - 0.9)).abs() < 1e-12, "{e:?}");
    assert!((e.weight - 1.0 / 3.0).abs() < 1e-12, "{e:?}");
    assert!((e.variance - (0.1 + 0.1 / 3.0)).abs() < 1e-12, "{e:?}");
    // Seeds that fix most of the noise: mostly the same-seed run.
    let e = at(&[(0, 0.9)], 0.9);
    assert!(e.weight > 0.9, "{e:?}");
    assert!(e.gain < 0.15, "{e:?}");
    assert!(e.variance < 0.1 + 0.1 / 3.0, "{e:?}");
    // A reference with no spread at all (a trainer that ignores the
    // seed): its plain mean, not a weight of 0/0.
    let e = estimate(
        Direction::Minimize,
        &by(&[(0, 0.9)]),
        &by(&[(0, 1.0), (1, 1.0), (2, 1.0)]),
        (0.0, 0.0, 0.0),
    )
    .unwrap();
    assert!((e.weight - 1.0 / 3.0).abs() < 1e-12, "{e:?}");
    assert!((e.gain - 0.1).abs() < 1e-12 && e.variance == 0.0, "{e:?}");
    // A seed the reference has no run of: its mean.
    let e = at(&[(3, 1.0)], 0.9);
    assert_eq!(e.weight, 0.0);
    assert!((e.gain - 1.0 / 3.0).abs() < 1e-12, "{e:?}");
    let e = estimate(
        Direction::Maximize,
        &by(&[(0, 2.0)]),
        &by(&[(0, 1.5)]),
        (0.1, 0.1, 0.0),
    )
    .unwrap();
    assert!((e.gain - 0.5).abs() < 1e-12, "{e:?}");
    assert_eq!(
        estimate(Direction::Minimize, &by(&[]), &reference, (0.1, 0.1, 0.0)),
        None
    );
}

/// tinylm's trial 12 of a benchmark lineage: seeds 0 and 1 at 3.022, seed
/// 2 at 3.459 (a run that failed to learn one task). Compared seed by
/// seed, a challenger at 2.92 on seed 0 gains 0.10 with the
/// incumbent's whole spread in the way, and was stopped; against the
/// incumbent's mean it gains 0.25 and gets its next run.
#[test]
fn an_incumbent_with_a_lucky_seed_zero_does_not_stop_a_challenger_at_once() {
    let rule = Rule {
        false_keep_rate: 0.1,
        max_runs: 3,
    };
    let mut pool = Pool::default();
    for level in [3.9, 3.7, 3.5] {
        pool.add(&[level, level + 0.03, level - 0.03]);
    }
    let incumbent = by(&[(0, 3.022), (1, 3.022), (2, 3.459)]);
    pool.add(&incumbent.values().copied().collect::<Vec<_>>());
    let e = look(
        rule,
        &pool,
        Direction::Minimize,
        &by(&[(0, 2.92)]),
        &incumbent,
        false,
    )
    .unwrap();
    let mean = (3.022 + 3.022 + 3.459) / 3.0;
    assert!((e.gain - (mean - 2.92)).abs() < 1e-9, "{e:?}");
    assert_eq!(e.call, Call::Continue, "{e:?}");
    // On every seed, the estimate is the mean per-seed difference.
    let e = look(
        rule,
        &pool,
        Direction::Minimize,
        &by(&[(0, 2.92), (1, 2.92), (2, 3.357)]),
        &incumbent,
        false,
    )
    .unwrap();
    assert!((e.gain - 0.102).abs() < 1e-9, "{e:?}");
    assert_eq!(e.same_seed.map(|p| p.weight), Some(1.0));
}

#[test]
fn same_seed_correlation_is_pooled_over_pairs_and_shrunk_toward_none() {
    let mut p = Pairing::default();
    assert_eq!(p.correlation(), 0.0);
    p.add(&by(&[(0, 1.0)]), &by(&[(0, 2.0)]));
    assert_eq!(p.correlation(), 0.0, "one common seed says nothing");
    // Seed shifts shared exactly: correlation 1, shrunk by 2 / (2 + PRIOR_DF).
    p.add(
        &by(&[(0, 1.0), (1, 1.5), (2, 0.5), (7, 9.0)]),
        &by(&[(0, 2.0), (1, 2.5), (2, 1.5)]),
    );
    let r = p.correlation();
    assert!((r - 2.0 / (2.0 + PRIOR_DF)).abs() < 1e-12, "{r}");
    // Many pairs moving together: close to 1.
    for _ in 0..100 {
        p.add(&by(&[(0, 1.0), (1, 2.0)]), &by(&[(0, 3.0), (1, 4.0)]));
    }
    assert!(p.correlation() > 0.9, "{p:?}");
    // Opposite moves pull it down.
    let mut q = Pairing::default();
    for _ in 0..20 {
        q.add(&by(&[(0, 1.0), (1, 2.0)]), &by(&[(0, 4.0), (1, 3.0)]));
    }
    assert!(q.correlation() < -0.5, "{q:?}");
}

#[test]
fn a_recipe_spread_is_shrunk_toward_the_pool() {
    let mut pool = Pool::default();
    assert_eq!(pool.variance(), None);
    pool.add(&[1.0]);
    assert_eq!(pool.variance(), None, "one run says nothing of the spread");
    pool.add(&[1.0, 1.2, 1.4]); // ss 0.08, 2 df
    pool.add(&[2.0, 2.2]); // ss 0.02, 1 df
    let v = pool.variance().unwrap();
    assert!((v - 0.1 / 3.0).abs() < 1e-12, "{v}");
    // Two runs of a wild recipe: 1 df of its own against the pool's 3.
    let (v, df) = pool.shrunk(&[0.0, 1.0]).unwrap();
    assert!((v - (0.1 + 0.5) / 4.0).abs() < 1e-12, "{v}");
    assert_eq!(df, 4.0);
    // One run: the pool's estimate.
    assert_eq!(pool.shrunk(&[5.0]), Some((0.1 / 3.0, 3.0)));
    // The pool counts for at most PRIOR_DF.
    for _ in 0..50 {
        pool.add(&[1.0, 1.1]);
    }
    let (_, df) = pool.shrunk(&[0.0, 1.0, 2.0]).unwrap();
    assert_eq!(df, PRIOR_DF + 2.0);
}

#[test]
fn a_look_keeps_continues_or_stops() {
    let rule = Rule {
        false_keep_rate: 0.05,
        max_runs: 3,
    };
    let mut pool = Pool::default();
    for _ in 0..10 {
        pool.add(&[1.0, 1.1, 0.9]); // sd 0.1
    }
    let reference = by(&[(0, 1.0), (1, 1.0), (2, 1.0)]);
    let at = |c: &[(u64, f64)]| {
        look(rule, &pool, Direction::Minimize, &by(c), &reference, false).unwrap()
    };
    let far = at(&[(0, 0.2)]);
    assert_eq!(far.call, Call::Keep, "{far:?}");
    assert_eq!(far.decision(), Decision::Improved);
    let ahead = at(&[(0, 0.8)]);
    assert_eq!(ahead.call, Call::Continue, "{ahead:?}");
    assert!(ahead.describe().contains("over 1 run(s)"));
    let level = at(&[(0, 1.0)]);
    assert_eq!(level.call, Call::Stop);
    assert_eq!(level.decision(), Decision::WithinNoise);
    let worse = at(&[(0, 1.6)]);
    assert_eq!(worse.decision(), Decision::Regressed, "{worse:?}");
    // The same gain of 0.2, seen three times, is clear.
    let three = at(&[(0, 0.8), (1, 0.8), (2, 0.8)]);
    assert_eq!(three.call, Call::Keep, "{three:?}");
    // The last look decides: ahead but not clearly is not kept.
    let last = at(&[(0, 0.9), (1, 0.9), (2, 0.9)]);
    assert_eq!(last.call, Call::Stop, "{last:?}");
    // No spread known (no seed re-runs): it must strictly beat it.
    let none = Pool::default();
    let strict = |c: f64| {
        look(
            rule,
            &none,
            Direction::Minimize,
            &by(&[(0, c)]),
            &by(&[(0, 1.0)]),
            false,
        )
        .unwrap()
        .call
    };
    assert_eq!(strict(0.99), Call::Keep);
    assert_eq!(strict(1.0), Call::Stop);
}

/// One simulated decision: a candidate with true gain `gain` against a
/// reference measured `ref_runs` times, each run `N(true, sd²)` with a
/// shift per seed shared by both (what a seed fixes) of `seed_sd`.
/// Returns (kept, runs the candidate used).
#[allow(clippy::too_many_arguments)]
fn decision(
    rng: &mut Rng,
    rule: Rule,
    pool: &mut Pool,
    gain: f64,
    sd_c: f64,
    sd_r: f64,
    seed_sd: f64,
    ref_runs: u64,
) -> (bool, u32) {
    let shifts: Vec<f64> = (0..rule.max_runs as u64 + ref_runs)
        .map(|_| seed_sd * rng.normal())
        .collect();
    let reference: BTreeMap<u64, f64> = (0..ref_runs)
        .map(|s| (s, 10.0 + shifts[s as usize] + sd_r * rng.normal()))
        .collect();
    let mut candidate = BTreeMap::new();
    for s in 0..rule.max_runs as u64 {
        candidate.insert(s, 10.0 - gain + shifts[s as usize] + sd_c * rng.normal());
        let e = look(
            rule,
            pool,
            Direction::Minimize,
            &candidate,
            &reference,
            false,
        )
        .unwrap();
        match e.call {
            Call::Continue => continue,
            Call::Keep | Call::Stop => {
                let mine: Vec<f64> = candidate.values().copied().collect();
                pool.add(&mine);
                pool.pairing.add(&candidate, &reference);
                return (e.call == Call::Keep, e.runs);
            }
        }
    }
    unreachable!("the last look decides")
}

/// The rule's error rate on a synthetic objective with known true gains
/// and known noise, over many decisions: the share of keeps that are no
/// true improvement stays at or below the configured rate, also when
/// recipes differ in how noisy they are. Prints the figures (README).
#[test]
fn simulated_decisions_keep_the_stated_false_keep_rate() {
    let seed = 20261201;
    let mut rng = Rng::new(seed);
    println!("seed {seed}");
    // Seeds that fix none of the noise, some, and most of it.
    for (rate, max_runs, seed_sd) in [0.05, 0.1]
        .into_iter()
        .flat_map(|r| [3u32, 4].map(|m| (r, m)))
        .flat_map(|(r, m)| [0.0, 0.5, 2.0].map(|s| (r, m, s)))
    {
        let rule = Rule {
            false_keep_rate: rate,
            max_runs,
        };
        // The baseline measured over every seed starts the pool.
        let sd = 1.0;
        let mut pool = Pool::default();
        let base: Vec<f64> = (0..max_runs)
            .map(|_| sd * rng.normal() + seed_sd * rng.normal())
            .collect();
        pool.add(&base);
        let n = 4000;
        let decide = |rng: &mut Rng, pool: &mut Pool, gain: f64, sd_c: f64| {
            decision(rng, rule, pool, gain, sd_c, sd, seed_sd, max_runs as u64)
        };
        // Null candidates (no gain), some with twice the noise.
        let (mut false_keeps, mut null_runs) = (0, 0);
        for i in 0..n {
            let sd_c = if i % 3 == 0 { 2.0 * sd } else { sd };
            let (kept, runs) = decide(&mut rng, &mut pool, 0.0, sd_c);
            false_keeps += kept as u32;
            null_runs += runs;
        }
        let null_rate = false_keeps as f64 / n as f64;
        // True improvements of one noise sd, and of two.
        let mut power = Vec::new();
        for g in [1.0, 2.0] {
            let (mut kept, mut runs) = (0, 0);
            for _ in 0..n {
                let (k, r) = decide(&mut rng, &mut pool, g, sd);
                kept += k as u32;
                runs += r;
            }
            power.push((kept as f64 / n as f64, runs as f64 / n as f64));
        }
        // A search-like mix: most candidates worse, some level, a few better.
        let (mut keeps, mut wrong, mut mix_runs) = (0, 0, 0);
        for i in 0..n {
            let g = match i % 10 {
                0 => 1.0,
                1 => 2.0,
                2..=4 => 0.0,
                _ => -1.0 - (i % 7) as f64 * 0.5,
            };
            let (k, r) = decide(&mut rng, &mut pool, g, sd);
            keeps += k as u32;
            wrong += (k && g <= 0.0) as u32;
            mix_runs += r;
        }
        let share = wrong as f64 / keeps.max(1) as f64;
        println!(
            "rate {rate}, at most {max_runs} runs, seed sd {seed_sd}: no-gain candidates kept {null_rate:.4} \
             ({:.2} runs each); 1-sd gains kept {:.3} ({:.2} runs), 2-sd gains kept {:.3} \
             ({:.2} runs); search mix: {keeps} keeps, {share:.4} of them no true gain, \
             {:.2} runs per decision; same-seed correlation {:.2}",
            null_runs as f64 / n as f64,
            power[0].0,
            power[0].1,
            power[1].0,
            power[1].1,
            mix_runs as f64 / n as f64,
            pool.pairing.correlation(),
        );
        assert!(
            null_rate <= rate / 2.0,
            "seed {seed}: no-gain candidates kept at {null_rate} > half of {rate}"
        );
        assert!(
            share <= rate,
            "seed {seed}: {share} of keeps were no true gain > {rate}"
        );
        assert!(
            power[1].0 > power[0].0 && power[0].0 > null_rate,
            "seed {seed}: larger gains must be kept more often: {power:?}"
        );
    }
}

#[test]
fn curves_interpolate_inside_and_have_no_value_outside() {
    let c = [(1.0, 10.0), (2.0, 8.0), (4.0, 4.0)];
    assert_eq!(curve_at(&c, 0.5), None);
    assert_eq!(curve_at(&c, 1.0), Some(10.0));
    assert_eq!(curve_at(&c, 1.5), Some(9.0));
    assert_eq!(curve_at(&c, 3.0), Some(6.0));
    assert_eq!(curve_at(&c, 4.0), Some(4.0));
    assert_eq!(curve_at(&c, 4.1), None);
    assert_eq!(curve_at(&[], 1.0), None);
}

/// A curve of `points` positions 1..=points: a falling loss, a shift
/// for the whole run of sd `sd` (what a seed does) and a jitter per
/// point of 0.3 `sd`, plus `offset`.
fn curve(rng: &mut Rng, points: usize, offset: f64, sd: f64) -> Vec<(f64, f64)> {
    let shift = sd * rng.normal();
    (1..=points)
        .map(|i| {
            let x = i as f64;
            (x, 3.0 + 5.0 / x + offset + shift + 0.3 * sd * rng.normal())
        })
        .collect()
}

fn rule(rate: f64) -> PruneRule {
    PruneRule {
        metric: "train_loss".into(),
        direction: Direction::Minimize,
        false_prune_rate: rate,
        looks: vec![0.25, 0.5, 0.75],
    }
}

fn bars_min(refs: &[&[(f64, f64)]]) -> Bars {
    Bars::new(&rule(0.05), TrialId(7), refs, &[]).unwrap()
}

#[test]
fn a_run_far_behind_is_stopped_and_one_level_is_not() {
    let inc: Vec<Vec<(f64, f64)>> = (0..3)
        .map(|s| {
            (1..=20)
                .map(|i| (i as f64, 4.0 - 0.1 * i as f64 + 0.01 * s as f64))
                .collect()
        })
        .collect();
    let refs: Vec<&[(f64, f64)]> = inc.iter().map(|c| c.as_slice()).collect();
    let bars = Bars::new(&rule(0.05), TrialId(7), &refs, &[]).unwrap();
    assert_eq!(bars.end, 20.0);
    assert_eq!(bars.bars.len(), 3);
    let first = bars.bars[0].unwrap();
    assert_eq!(first.at, 5.0);
    // Before the first look nothing is decided, however bad.
    let mut next = 0;
    assert_eq!(bars.look(&mut next, 4.0, 100.0), None);
    assert_eq!(next, 0);
    // Just inside the bound at the first look: on; far behind at the
    // second: stopped. The bound is t·se at the rate over 3 looks.
    let t = quantile(1.0 - 0.05 / 3.0, first.df);
    assert!((first.bound - t * first.se).abs() < 1e-12, "{first:?}");
    let mean5 = curve_at(&bars.mean, 5.0).unwrap();
    assert_eq!(bars.look(&mut next, 5.0, mean5 + 0.99 * first.bound), None);
    assert_eq!(next, 1);
    let p = bars.look(&mut next, 10.0, 9.0).expect("far behind");
    assert_eq!((p.look, p.looks, p.against), (2, 3, TrialId(7)));
    assert!((p.reference - 3.01).abs() < 1e-9, "{p:?}");
    assert!(p.behind > p.bound && p.bound > 0.0, "{p:?}");
    // Maximized metrics: behind is lower.
    let mut up = rule(0.05);
    up.direction = Direction::Maximize;
    let bars = Bars::new(&up, TrialId(7), &refs, &[]).unwrap();
    let mut next = 0;
    assert!(bars.look(&mut next, 5.0, 9.0).is_none());
    assert!(bars.look(&mut next, 10.0, -5.0).is_some());
    // Just outside it: stopped at the first look.
    let mut next = 0;
    let mean5 = curve_at(&bars_min(&refs).mean, 5.0).unwrap();
    let p = bars_min(&refs)
        .look(&mut next, 5.0, mean5 + 1.01 * first.bound)
        .expect("just behind the bound");
    assert_eq!(p.look, 1);
    // A pool of many recipes narrows the bars (more df, a spread of its own).
    let mut pool = Pool::default();
    for _ in 0..20 {
        pool.add(&[0.0, 0.01, 0.02]);
    }
    let pooled = Bars::new(&rule(0.05), TrialId(7), &refs, &[pool; 3]).unwrap();
    let b = pooled.bars[0].unwrap();
    assert!(
        b.df > first.df && b.bound < first.bound,
        "{b:?} vs {first:?}"
    );
    // One run of the incumbent and no pool: no spread, no bars.
    assert!(Bars::new(&rule(0.05), TrialId(7), &refs[..1], &[]).is_none());
    // A curve without points: none either.
    assert!(Bars::new(&rule(0.05), TrialId(7), &[&[]], &[]).is_none());
}

/// The stated rate on simulated curves: runs of a recipe no worse than
/// the incumbent are stopped at most `false_prune_rate` of the time;
/// the share of runs 1 and 3 noise sd behind that are stopped is
/// printed (README).
#[test]
fn simulated_runs_are_pruned_at_the_stated_rate() {
    let seed = 20261202;
    let mut rng = Rng::new(seed);
    println!("seed {seed}");
    for rate in [0.05, 0.1] {
        let rule = rule(rate);
        let sd = 0.1;
        // The pools: 10 other recipes over 3 runs each.
        let mut pools = vec![Pool::default(); rule.looks.len()];
        for _ in 0..10 {
            let runs: Vec<Vec<(f64, f64)>> = (0..3).map(|_| curve(&mut rng, 20, 0.0, sd)).collect();
            let refs: Vec<&[(f64, f64)]> = runs.iter().map(|c| c.as_slice()).collect();
            for (k, vals) in look_values(&refs, &rule.looks).iter().enumerate() {
                pools[k].add(vals);
            }
        }
        let n = 3000;
        let mut shares = Vec::new();
        for offset in [0.0, -0.5 * sd, 1.0 * sd, 3.0 * sd] {
            let mut stopped = 0;
            for _ in 0..n {
                let inc: Vec<Vec<(f64, f64)>> =
                    (0..3).map(|_| curve(&mut rng, 20, 0.0, sd)).collect();
                let refs: Vec<&[(f64, f64)]> = inc.iter().map(|c| c.as_slice()).collect();
                let bars = Bars::new(&rule, TrialId(1), &refs, &pools).unwrap();
                let run = curve(&mut rng, 20, offset, sd);
                let mut next = 0;
                stopped += run
                    .iter()
                    .any(|&(at, v)| bars.look(&mut next, at, v).is_some())
                    as u32;
            }
            shares.push(stopped as f64 / n as f64);
        }
        println!(
            "false_prune_rate {rate}: level runs stopped {:.4}, better runs {:.4}, \
             1 sd behind {:.3}, 3 sd behind {:.3}",
            shares[0], shares[1], shares[2], shares[3]
        );
        assert!(shares[0] <= rate, "seed {seed}: {} > {rate}", shares[0]);
        assert!(shares[1] <= shares[0] + 0.01, "seed {seed}: {shares:?}");
        assert!(
            shares[3] > shares[2] && shares[2] > shares[0],
            "seed {seed}: {shares:?}"
        );
    }
}
