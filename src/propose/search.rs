//! The built-in `search` strategy: local steps around the incumbent on one or two
//! parameters of the surface, and global samples of the whole surface for
//! exploration (a share the caller sets: high while a surface has no
//! confirmed improvement yet, low once it has). Every value stays inside the
//! declared space.

use std::collections::BTreeMap;

use super::rng::Rng;
use crate::domain::{format_float, ParamValue, Params};
use crate::recipe::ParamSpec;

/// Share of candidates drawn uniformly over the whole surface once the
/// surface has a confirmed improvement: mostly refine around it.
pub const GLOBAL_SHARE: f64 = 0.2;
/// The share before that. A noise band only lets through gains larger than
/// itself, and from a recipe nobody has tuned for this budget the large
/// gains are far away: local steps from it mostly give gains within the
/// band (`ratchet bench`: benches/peers/).
pub const EXPLORE_SHARE: f64 = 0.6;
/// Local step size as a share of the (log-)range.
const STEP: f64 = 0.15;

/// A proposed edit: the changed parameters, the full configuration, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub changes: Params,
    pub config: Params,
    pub hypothesis: String,
}

/// Draws up to `n` distinct candidates that each change at least one parameter of
/// `space`, starting from the configuration `base`; each is a global sample
/// of the surface with probability `global_share`, else a local step.
pub fn candidates(
    space: &BTreeMap<String, ParamSpec>,
    base: &Params,
    rng: &mut Rng,
    n: usize,
    global_share: f64,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::with_capacity(n);
    let keys: Vec<&String> = space.keys().collect();
    if keys.is_empty() {
        return out;
    }
    for _ in 0..n * 4 {
        if out.len() >= n {
            break;
        }
        let global = rng.unit() < global_share;
        let mut changes = Params::new();
        if global {
            for (k, spec) in space {
                let v = sample(spec, rng);
                if base.get(k) != Some(&v) {
                    changes.insert(k.clone(), v);
                }
            }
        } else {
            let count = if keys.len() > 1 && rng.unit() < 0.3 {
                2
            } else {
                1
            };
            for _ in 0..count {
                let k = keys[rng.below(keys.len())];
                let spec = &space[k];
                let v = match base.get(k) {
                    Some(current) => step(spec, current, rng),
                    None => sample(spec, rng),
                };
                if base.get(k) != Some(&v) {
                    changes.insert(k.clone(), v);
                }
            }
        }
        if changes.is_empty() {
            continue;
        }
        let mut config = base.clone();
        config.extend(changes.clone());
        if out.iter().any(|c| c.config == config) {
            continue;
        }
        let hypothesis = describe(global, &changes, base);
        out.push(Candidate {
            changes,
            config,
            hypothesis,
        });
    }
    out
}

fn describe(global: bool, changes: &Params, base: &Params) -> String {
    let parts: Vec<String> = changes
        .iter()
        .map(|(k, v)| match base.get(k) {
            Some(old) => format!("{k} {old} → {v}"),
            None => format!("{k} = {v}"),
        })
        .collect();
    let how = if global {
        "global sample"
    } else {
        "local step"
    };
    format!("{how}: {}", parts.join(", "))
}

/// A uniform sample of the parameter's space.
pub fn sample(spec: &ParamSpec, rng: &mut Rng) -> ParamValue {
    match spec {
        ParamSpec::Int { min, max } => {
            ParamValue::Int(min + rng.below((max - min + 1) as usize) as i64)
        }
        ParamSpec::Float { min, max } => {
            ParamValue::Float(round(min + rng.unit() * (max - min), *min, *max))
        }
        ParamSpec::LogFloat { min, max } => {
            let (a, b) = (min.ln(), max.ln());
            ParamValue::Float(round((a + rng.unit() * (b - a)).exp(), *min, *max))
        }
        ParamSpec::Choice { values } => values[rng.below(values.len())].clone(),
    }
}

/// A local move from `current`, clamped to the space.
pub fn step(spec: &ParamSpec, current: &ParamValue, rng: &mut Rng) -> ParamValue {
    match (spec, current) {
        (ParamSpec::Int { min, max }, ParamValue::Int(x)) => {
            let width = (max - min) as f64;
            let mut d = (rng.normal() * STEP * width).round() as i64;
            if d == 0 {
                d = if rng.unit() < 0.5 { -1 } else { 1 };
            }
            ParamValue::Int((x + d).clamp(*min, *max))
        }
        (ParamSpec::Float { min, max }, ParamValue::Float(x)) => ParamValue::Float(round(
            (x + rng.normal() * STEP * (max - min)).clamp(*min, *max),
            *min,
            *max,
        )),
        (ParamSpec::LogFloat { min, max }, ParamValue::Float(x)) if *x > 0.0 => {
            let width = max.ln() - min.ln();
            let v = (x.ln() + rng.normal() * STEP * width).exp();
            ParamValue::Float(round(v.clamp(*min, *max), *min, *max))
        }
        (ParamSpec::Choice { values }, current) => {
            let others: Vec<&ParamValue> = values.iter().filter(|v| *v != current).collect();
            if others.is_empty() {
                current.clone()
            } else {
                others[rng.below(others.len())].clone()
            }
        }
        // A current value of another type than the space (or a non-positive
        // log value): start over from a uniform sample.
        (spec, _) => sample(spec, rng),
    }
}

/// Rounds to four significant digits (readable configs, fewer near-duplicates),
/// staying inside [min, max].
fn round(x: f64, min: f64, max: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x.clamp(min, max);
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits);
    let r = (x * f).round() / f;
    let r: f64 = format_float(r).parse().unwrap_or(r);
    r.clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> BTreeMap<String, ParamSpec> {
        let mut s = BTreeMap::new();
        s.insert(
            "o.lr".to_string(),
            ParamSpec::LogFloat {
                min: 1e-4,
                max: 1.0,
            },
        );
        s.insert("o.steps".to_string(), ParamSpec::Int { min: 1, max: 100 });
        s.insert(
            "o.mom".to_string(),
            ParamSpec::Float {
                min: 0.0,
                max: 0.99,
            },
        );
        s.insert(
            "o.kind".to_string(),
            ParamSpec::Choice {
                values: vec![ParamValue::Str("a".into()), ParamValue::Str("b".into())],
            },
        );
        s
    }

    fn base() -> Params {
        let mut p = Params::new();
        p.insert("o.lr".into(), ParamValue::Float(0.01));
        p.insert("o.steps".into(), ParamValue::Int(10));
        p.insert("o.mom".into(), ParamValue::Float(0.9));
        p.insert("o.kind".into(), ParamValue::Str("a".into()));
        p.insert("other.x".into(), ParamValue::Int(1));
        p
    }

    #[test]
    fn candidates_stay_in_space_change_something_and_keep_other_surfaces() {
        let space = space();
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            for c in candidates(&space, &base(), &mut rng, 8, GLOBAL_SHARE) {
                assert!(!c.changes.is_empty());
                for (k, v) in &c.changes {
                    assert!(space[k].contains(v), "{k}={v} outside {:?}", space[k]);
                    assert_ne!(base().get(k), Some(v));
                }
                assert_eq!(c.config.get("other.x"), Some(&ParamValue::Int(1)));
                assert_eq!(c.config.len(), base().len());
            }
        }
    }

    #[test]
    fn candidates_are_distinct_and_deterministic() {
        let a = candidates(&space(), &base(), &mut Rng::new(9), 16, GLOBAL_SHARE);
        let b = candidates(&space(), &base(), &mut Rng::new(9), 16, GLOBAL_SHARE);
        assert_eq!(a, b);
        for (i, x) in a.iter().enumerate() {
            assert!(a[i + 1..].iter().all(|y| y.config != x.config));
        }
    }

    #[test]
    fn a_tiny_space_runs_out_instead_of_repeating() {
        let mut s = BTreeMap::new();
        s.insert(
            "k".to_string(),
            ParamSpec::Choice {
                values: vec![ParamValue::Int(1), ParamValue::Int(2), ParamValue::Int(3)],
            },
        );
        let mut b = Params::new();
        b.insert("k".into(), ParamValue::Int(1));
        let c = candidates(&s, &b, &mut Rng::new(1), 10, GLOBAL_SHARE);
        assert!(c.len() <= 2, "{c:?}");
    }
}
