//! The strict TOML reader behind both files: every error with its file
//! and key path, the offending key removed and the rest read again.

use super::*;

pub(super) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A map key as it appears in a key path: bare when it can be, quoted otherwise.
pub(super) fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// Deserializes `text` into `T`, collecting every structural error (unknown key,
/// wrong type, missing key) instead of stopping at the first: each error's key
/// is removed and deserialization retried, so one run reports them all.
pub(super) fn parse_collecting<T: DeserializeOwned>(
    file: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            err(
                errors,
                file,
                ".",
                format!("invalid TOML: {}", one_line(&e.to_string())),
            );
            return None;
        }
    };
    let mut value = toml::Value::Table(table);
    let mut removed: Vec<Vec<String>> = Vec::new();
    let mut failed = false;
    for _ in 0..100 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return (!failed).then_some(v),
            Err(e) => e,
        };
        failed = true;
        let mut message = one_line(&e.inner().to_string());
        // toml appends ` in `key.path``; the path is reported separately.
        if let Some(i) = message.rfind(" in `").filter(|_| message.ends_with('`')) {
            message.truncate(i);
        }
        let mut path: Vec<String> = Vec::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Map { key } => path.push(key.clone()),
                serde_path_to_error::Segment::Seq { index } => path.push(format!("[{index}]")),
                _ => {}
            }
        }
        // An unknown field may be reported at its parent; the key is in the message.
        if let Some(name) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next())
        {
            if path.last().map(String::as_str) != Some(name) {
                path.push(name.to_string());
            }
        }
        // A missing key that we removed ourselves was already reported as wrong.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_string);
        let already = missing.as_ref().is_some_and(|name| {
            let mut full = path.clone();
            full.push(name.clone());
            removed.contains(&full)
        });
        if !already {
            let key = match &missing {
                Some(name) => render_path(&[path.clone(), vec![name.clone()]].concat()),
                None => render_path(&path),
            };
            err(errors, file, key, message);
        }
        if missing.is_some() || !remove_at(&mut value, &path) {
            return None;
        }
        removed.push(path);
    }
    None
}

pub(super) fn render_path(path: &[String]) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let mut out = String::new();
    for p in path {
        if p.starts_with('[') {
            out.push_str(p);
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&quote_key(p));
        }
    }
    out
}

pub(super) fn remove_at(value: &mut toml::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = value;
    for p in parents {
        current = match (
            p.strip_prefix('[').and_then(|s| s.strip_suffix(']')),
            current,
        ) {
            (Some(i), toml::Value::Array(a)) => {
                match i.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    Some(v) => v,
                    None => return false,
                }
            }
            (None, toml::Value::Table(t)) => match t.get_mut(p) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match current {
        toml::Value::Table(t) => t.remove(last).is_some(),
        toml::Value::Array(a) => match last.trim_matches(|c| c == '[' || c == ']').parse::<usize>()
        {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}
