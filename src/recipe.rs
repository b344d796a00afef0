//! What a recipe is made of, as data: its keys (read, flattened, set in the
//! text with its layout kept, merged three ways), the declared space of a
//! parameter, and the rule for the paths of an experiment's files. Below
//! config, edits and workspaces, which all read recipes; imports nothing of
//! the crate but the domain.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::domain::{ParamValue, Params};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParamSpec {
    Int { min: i64, max: i64 },
    Float { min: f64, max: f64 },
    LogFloat { min: f64, max: f64 },
    Choice { values: Vec<ParamValue> },
}

/// What a larger value of a parameter costs (`[surface.cost]`): the
/// failure model reads a size or time failure along these axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cost {
    /// A bigger model: more memory, a bigger artifact, and more work per
    /// step (layers, width).
    Size,
    /// More work per step or per budget, not a bigger artifact (batch
    /// size, sequence length).
    Work,
}

impl ParamSpec {
    /// Whether `v` is a legal value of this parameter.
    pub fn contains(&self, v: &ParamValue) -> bool {
        match (self, v) {
            (Self::Int { min, max }, ParamValue::Int(x)) => min <= x && x <= max,
            (Self::Float { min, max } | Self::LogFloat { min, max }, ParamValue::Float(x)) => {
                *min <= *x && *x <= *max
            }
            (Self::Float { min, max } | Self::LogFloat { min, max }, ParamValue::Int(x)) => {
                *min <= *x as f64 && *x as f64 <= *max
            }
            (Self::Choice { values }, v) => values.contains(v),
            _ => false,
        }
    }

    /// `v` in this parameter's own type where a number of the other type
    /// means the same value (`2` for a float space or for the choice `2.0`):
    /// what an edit writes into the recipe.
    pub fn normalize(&self, v: &ParamValue) -> ParamValue {
        match (self, v) {
            (Self::Float { .. } | Self::LogFloat { .. }, ParamValue::Int(i)) => {
                ParamValue::Float(*i as f64)
            }
            (Self::Choice { values }, ParamValue::Int(i)) if !values.contains(v) => values
                .iter()
                .find(|c| matches!(c, ParamValue::Float(f) if *f == *i as f64))
                .cloned()
                .unwrap_or_else(|| v.clone()),
            (Self::Choice { values }, ParamValue::Float(f)) if !values.contains(v) => values
                .iter()
                .find(|c| matches!(c, ParamValue::Int(i) if *i as f64 == *f))
                .cloned()
                .unwrap_or_else(|| v.clone()),
            _ => v.clone(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            Self::Int { min, max } if min >= max => {
                Err(format!("min {min} must be below max {max}"))
            }
            Self::Float { min, max } if !ordered(*min, *max) => {
                Err(format!("min {min} must be below max {max}"))
            }
            Self::LogFloat { min, max } if !(ordered(0.0, *min) && ordered(*min, *max)) => Err(
                format!("log_float needs 0 < min < max, got min {min} max {max}"),
            ),
            Self::Choice { values } if values.len() < 2 => {
                Err("choice needs at least two values".into())
            }
            _ => Ok(()),
        }
    }
}

/// `a < b`, both finite.
fn ordered(a: f64, b: f64) -> bool {
    a.is_finite() && b.is_finite() && a.partial_cmp(&b) == Some(std::cmp::Ordering::Less)
}

/// A declared parameter's value in a parsed recipe. `momentum = 0` in a float
/// space is the float 0.0: one value, one config key.
/// A parameter's value as a number on its order, if it has one: ints and
/// floats, and choices of numbers.
pub fn ordinal(v: &ParamValue) -> Option<f64> {
    match v {
        ParamValue::Int(i) => Some(*i as f64),
        ParamValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// Whether a parameter's values have an order (numbers).
pub fn is_ordered(spec: &ParamSpec) -> bool {
    match spec {
        ParamSpec::Choice { values } => values.iter().all(|v| ordinal(v).is_some()),
        _ => true,
    }
}

pub fn param_of(table: &toml::Table, key: &str, spec: &ParamSpec) -> Option<ParamValue> {
    lookup(table, key)
        .and_then(param_value)
        .map(|v| match (spec, v) {
            (ParamSpec::Float { .. } | ParamSpec::LogFloat { .. }, ParamValue::Int(i)) => {
                ParamValue::Float(i as f64)
            }
            (_, v) => v,
        })
}

/// Looks up a dotted key path in a TOML table.
pub fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut current = table.get(parts.next()?)?;
    for part in parts {
        current = current.as_table()?.get(part)?;
    }
    Some(current)
}

fn param_value(v: &toml::Value) -> Option<ParamValue> {
    match v {
        toml::Value::Integer(i) => Some(ParamValue::Int(*i)),
        toml::Value::Float(f) => Some(ParamValue::Float(*f)),
        toml::Value::String(s) => Some(ParamValue::Str(s.clone())),
        toml::Value::Boolean(b) => Some(ParamValue::Bool(*b)),
        _ => None,
    }
}

/// Checks that `path` is a plain relative path inside the experiment
/// directory: not absolute, no `..`, `.` or empty components, not in `.git`.
pub fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.starts_with('/') {
        return Err(
            "an absolute path; edits name files relative to the experiment directory".into(),
        );
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("the path holds a NUL or a backslash".into());
    }
    for part in path.split('/') {
        match part {
            ".." => return Err("`..` leaves the experiment directory".into()),
            "" | "." => {
                return Err("empty or `.` path components (`//`, `./`, trailing `/`)".into())
            }
            ".git" => return Err("inside `.git`".into()),
            _ => {}
        }
    }
    Ok(())
}

/// Every leaf value of a TOML table (tables are walked, arrays are leaves),
/// by key path.
pub fn leaves(table: &toml::Table) -> BTreeMap<Vec<String>, toml::Value> {
    fn walk(t: &toml::Table, path: &mut Vec<String>, out: &mut BTreeMap<Vec<String>, toml::Value>) {
        for (k, v) in t {
            path.push(k.clone());
            match v {
                toml::Value::Table(sub) => walk(sub, path, out),
                leaf => {
                    out.insert(path.clone(), leaf.clone());
                }
            }
            path.pop();
        }
    }
    let mut out = BTreeMap::new();
    walk(table, &mut Vec::new(), &mut out);
    out
}

#[derive(Debug, PartialEq)]
pub enum ApplyError {
    Parse(String),
    Missing(String),
}

/// Sets each dotted key of `config` in the TOML text, keeping its layout and comments.
pub fn apply(text: &str, config: &Params) -> Result<String, ApplyError> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ApplyError::Parse(e.to_string()))?;
    for (key, value) in config {
        let mut parts = key.split('.').peekable();
        let mut item: &mut toml_edit::Item = doc.as_item_mut();
        while let Some(part) = parts.next() {
            let next = match item.get_mut(part) {
                Some(i) if !i.is_none() => i,
                _ => return Err(ApplyError::Missing(key.clone())),
            };
            if parts.peek().is_none() {
                let decor = next.as_value().map(|v| v.decor().clone());
                let mut new = to_edit(value);
                if let Some(d) = decor {
                    *new.decor_mut() = d;
                }
                *next = toml_edit::Item::Value(new);
            }
            item = next;
        }
    }
    Ok(doc.to_string())
}

fn to_edit(v: &ParamValue) -> toml_edit::Value {
    match v {
        ParamValue::Bool(b) => (*b).into(),
        ParamValue::Int(i) => (*i).into(),
        ParamValue::Float(f) => (*f).into(),
        ParamValue::Str(s) => s.as_str().into(),
    }
}

/// Three-way merge of a TOML recipe, key by key: every key `theirs` changed
/// relative to `base` is written into `onto` (layout and comments of `onto`
/// kept). A key `onto` changed too, to another value, is a conflict: the
/// error names it. This is how a trial's change is re-applied onto an
/// incumbent that moved after it was proposed.
pub fn merge_recipe(base: &str, theirs: &str, onto: &str) -> Result<String, String> {
    let parse = |which: &str, text: &str| {
        text.parse::<toml::Table>()
            .map(|t| leaves(&t))
            .map_err(|e| format!("the {which} recipe does not parse: {e}"))
    };
    let (b, t, o) = (
        parse("parent's", base)?,
        parse("trial's", theirs)?,
        parse("incumbent's", onto)?,
    );
    let mut doc: toml_edit::DocumentMut = onto
        .parse()
        .map_err(|e| format!("the incumbent's recipe does not parse: {e}"))?;
    let keys: BTreeSet<&Vec<String>> = b.keys().chain(t.keys()).collect();
    for key in keys {
        let (was, want) = (b.get(key), t.get(key));
        if was == want {
            continue;
        }
        let now = o.get(key);
        if now != was && now != want {
            return Err(format!(
                "`{}` was changed by both (incumbent: {}, trial: {})",
                key.join("."),
                now.map_or("unset".into(), |v| v.to_string()),
                want.map_or("unset".into(), |v| v.to_string()),
            ));
        }
        if now == want {
            continue;
        }
        let (last, tables) = key.split_last().expect("a leaf has a name");
        let mut table: &mut toml_edit::Table = doc.as_table_mut();
        for part in tables {
            let item = table
                .entry(part)
                .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
            table = item.as_table_mut().ok_or_else(|| {
                format!(
                    "`{}` is not a table in the incumbent's recipe",
                    key.join(".")
                )
            })?;
        }
        match want {
            Some(v) => {
                let value: toml_edit::Value = v
                    .to_string()
                    .parse()
                    .map_err(|e| format!("`{}`: {e}", key.join(".")))?;
                let decor = table
                    .get(last)
                    .and_then(|i| i.as_value())
                    .map(|v| v.decor().clone());
                let mut value = value;
                if let Some(d) = decor {
                    *value.decor_mut() = d;
                }
                table.insert(last, toml_edit::Item::Value(value));
            }
            None => {
                table.remove(last);
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_sets_nested_keys_and_keeps_comments() {
        let text = "# recipe\n[optimizer]\nlr = 0.1 # learning rate\nsteps = 10\n[model]\nkind = \"mlp\"\n";
        let mut p = Params::new();
        p.insert("optimizer.lr".into(), ParamValue::Float(0.25));
        p.insert("model.kind".into(), ParamValue::Str("linear".into()));
        let out = apply(text, &p).unwrap();
        assert!(out.contains("lr = 0.25 # learning rate"), "{out}");
        assert!(out.contains("kind = \"linear\""), "{out}");
        assert!(out.contains("steps = 10"), "{out}");
        assert!(out.starts_with("# recipe"), "{out}");
    }

    #[test]
    fn apply_refuses_unknown_keys() {
        let mut p = Params::new();
        p.insert("optimizer.momentum".into(), ParamValue::Float(0.9));
        assert_eq!(
            apply("[optimizer]\nlr = 0.1\n", &p),
            Err(ApplyError::Missing("optimizer.momentum".into()))
        );
    }

    #[test]
    fn a_recipe_merge_takes_the_trials_keys_and_refuses_a_key_both_changed() {
        let base = "[opt]\nlr = 0.1 # step\nwd = 0.0\n[arch]\nwidth = 64\n";
        let theirs = "[opt]\nlr = 0.1\nwd = 0.05\n[arch]\nwidth = 64\n";
        let onto = "# incumbent\n[opt]\nlr = 0.3 # step\nwd = 0.0\n[arch]\nwidth = 64\n";
        let merged = merge_recipe(base, theirs, onto).unwrap();
        assert!(merged.starts_with("# incumbent"), "{merged}");
        assert!(merged.contains("lr = 0.3 # step"), "{merged}");
        assert!(merged.contains("wd = 0.05"), "{merged}");
        // Adjacent lines are no conflict: keys are merged, not lines.
        let t: toml::Table = merged.parse().unwrap();
        assert_eq!(t["arch"]["width"].as_integer(), Some(64));

        let clash = "[opt]\nlr = 0.01\nwd = 0.0\n[arch]\nwidth = 64\n";
        let e = merge_recipe(base, clash, onto).unwrap_err();
        assert!(e.contains("`opt.lr` was changed by both"), "{e}");
        // The same change on both sides is no conflict.
        assert!(merge_recipe(base, onto, onto).is_ok());
        assert!(merge_recipe("[a", theirs, onto).is_err());
    }
}
