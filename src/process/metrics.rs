//! How a program's output lines are read as metrics: the formats an
//! experiment may declare (`NAME=value`, `NAME: value` blocks, a pattern),
//! the values (numbers, units, truth values) and progress lines.

use serde::{Deserialize, Serialize};

/// How a program prints its metrics (`[metrics]` of experiment.toml). A
/// value is a number (`nan` and `inf` included), a number with a unit
/// (`45.2%`, `300s`, `1.5 GB`: the number), or `true`/`false` (1/0).
/// Progress lines are `NAME=value at=POSITION` in every format.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricFormat {
    /// `NAME=value` lines.
    #[default]
    Equals,
    /// `NAME: value` lines, as in autoresearch's summary block; a line
    /// `---` starts a new block, and only the last block's values count.
    Colon,
    /// A regular expression matched against each line: with the named
    /// groups `name` and `value`, one metric per line; otherwise every named
    /// group that matched is a metric of its name.
    Regex(String),
}

impl MetricFormat {
    /// The format ready to read lines (`Err`: the pattern does not compile
    /// or has no named group).
    pub fn reader(&self) -> Result<MetricReader, String> {
        let regex = match self {
            MetricFormat::Regex(p) => {
                let re = regex::Regex::new(p).map_err(|e| e.to_string())?;
                if re.capture_names().flatten().next().is_none() {
                    return Err("the pattern has no named group (`(?P<val_loss>...)`, or `name` and `value`)".into());
                }
                Some(re)
            }
            _ => None,
        };
        Ok(MetricReader {
            format: self.clone(),
            regex,
        })
    }
}

/// A compiled [`MetricFormat`].
pub struct MetricReader {
    format: MetricFormat,
    regex: Option<regex::Regex>,
}

impl MetricReader {
    /// In a block format the last value of a name stands; in `NAME=value`
    /// lines one that was ever non-finite stays so.
    pub fn last_wins(&self) -> bool {
        self.format != MetricFormat::Equals
    }

    /// The metrics of one line (`BlockStart` for a colon format's `---`).
    pub fn read<'a>(&self, line: &'a str) -> Read<'a> {
        match (&self.format, &self.regex) {
            (MetricFormat::Colon, _) if line.trim() == "---" => Read::BlockStart,
            (MetricFormat::Colon, _) => colon_metric(line).map_or(Read::None, |(n, v)| {
                Read::Metrics(vec![(std::borrow::Cow::Borrowed(n), v)])
            }),
            (MetricFormat::Regex(_), Some(re)) => {
                let Some(c) = re.captures(line) else {
                    return Read::None;
                };
                let mut out = Vec::new();
                if let (Some(n), Some(v)) = (c.name("name"), c.name("value")) {
                    if let Some(v) = read_value(v.as_str()) {
                        out.push((std::borrow::Cow::Owned(n.as_str().to_string()), v));
                    }
                } else {
                    for name in re.capture_names().flatten() {
                        if let Some(v) = c.name(name).and_then(|m| read_value(m.as_str())) {
                            out.push((std::borrow::Cow::Owned(name.to_string()), v));
                        }
                    }
                }
                Read::Metrics(out)
            }
            _ => parse_metric(line).map_or(Read::None, |(n, v)| {
                Read::Metrics(vec![(std::borrow::Cow::Borrowed(n), v)])
            }),
        }
    }
}

/// What one line said.
pub enum Read<'a> {
    None,
    /// A new block starts: what came before does not count.
    BlockStart,
    Metrics(Vec<(std::borrow::Cow<'a, str>, f64)>),
}

/// Whether `name` is a metric NAME: `[A-Za-z_][A-Za-z0-9_.]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// A printed value as a number: a float (`nan`, `inf` included), a number
/// with a unit (`45.2%`, `300s`, `1.5 GB`), or `true`/`false` (1/0).
pub fn read_value(value: &str) -> Option<f64> {
    let value = value.trim();
    let plain = |v: &str| {
        v.parse::<f64>()
            .ok()
            .or_else(|| match v.to_ascii_lowercase().as_str() {
                "nan" | "-nan" => Some(f64::NAN),
                "inf" | "+inf" | "infinity" => Some(f64::INFINITY),
                "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
                "true" => Some(1.0),
                "false" => Some(0.0),
                _ => None,
            })
    };
    if let Some(v) = plain(value) {
        return Some(v);
    }
    // A number, then a unit of letters, `%` or `/` (at most one space between).
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E')))
        .filter(|&i| i > 0)?;
    let (number, unit) = value.split_at(end);
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let is_unit = !unit.is_empty()
        && unit.len() <= 8
        && unit
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '%' || c == '/');
    is_unit.then(|| number.parse::<f64>().ok()).flatten()
}

/// Parses one `NAME: value` line (see [`read_value`]).
fn colon_metric(line: &str) -> Option<(&str, f64)> {
    let (name, value) = line.trim().split_once(':')?;
    let name = name.trim_end();
    is_metric_name(name).then_some(())?;
    Some((name, read_value(value)?))
}

/// Parses one `NAME=value` line: NAME is `[A-Za-z_][A-Za-z0-9_.]*`, the
/// value as [`read_value`] reads it. Anything else on stdout is ordinary output.
pub fn parse_metric(line: &str) -> Option<(&str, f64)> {
    let (name, value) = line.trim().split_once('=')?;
    let name = name.trim_end();
    if !is_metric_name(name) || value.contains('=') {
        return None;
    }
    Some((name, read_value(value)?))
}

/// Parses one progress line `NAME=value at=POSITION` (see [`parse_metric`]
/// for NAME and value; POSITION is a float: seconds of budget or a step).
pub fn parse_progress(line: &str) -> Option<(&str, f64, f64)> {
    let mut parts = line.split_whitespace();
    let (first, second) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (name, value) = parse_metric(first)?;
    let at = second.strip_prefix("at=")?.parse::<f64>().ok()?;
    Some((name, value, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_parse() {
        assert_eq!(parse_metric("val_bpb=1.25"), Some(("val_bpb", 1.25)));
        assert_eq!(parse_metric(" loss = 2 "), Some(("loss", 2.0)));
        assert!(parse_metric("loss=nan").unwrap().1.is_nan());
        assert_eq!(parse_metric("a.b=inf").unwrap().1, f64::INFINITY);
        assert_eq!(parse_metric("hello world"), None);
        assert_eq!(parse_metric("1x=3"), None);
        assert_eq!(parse_metric("x=three"), None);
        assert_eq!(parse_metric("acc=45.5%"), Some(("acc", 45.5)));
        assert_eq!(parse_metric("passed=true"), Some(("passed", 1.0)));
    }

    #[test]
    fn values_with_units_and_truth_values_read_as_numbers() {
        assert_eq!(read_value("39.80"), Some(39.8));
        assert_eq!(read_value(" 12.5 % "), Some(12.5));
        assert_eq!(read_value("300s"), Some(300.0));
        assert_eq!(read_value("1.5 GB"), Some(1.5));
        assert_eq!(read_value("2e-3 s"), Some(2e-3));
        assert_eq!(read_value("True"), Some(1.0));
        assert_eq!(read_value("false"), Some(0.0));
        assert_eq!(read_value("1.5 GB of 80"), None);
        assert_eq!(read_value("fast"), None);
        assert_eq!(read_value("-"), None);
    }

    #[test]
    fn progress_lines_parse_and_are_not_metrics() {
        assert_eq!(
            parse_progress("train_loss=3.25 at=4.5"),
            Some(("train_loss", 3.25, 4.5))
        );
        assert_eq!(
            parse_progress("  loss=1 at=100 "),
            Some(("loss", 1.0, 100.0))
        );
        assert_eq!(parse_progress("loss=1 at=x"), None);
        assert_eq!(parse_progress("loss=1 step=3"), None);
        assert_eq!(parse_progress("loss=1 at=3 more"), None);
        assert_eq!(parse_progress("loss=1"), None);
        assert_eq!(parse_metric("loss=1 at=3"), None);
    }
}
