//! Proposals that arrive as text (an inbox file, an LLM's reply): the JSON
//! object `{"hypothesis": "...", "edits": [...]}` (see [`Edit`] for the edit
//! kinds), alone or inside a ```` ```json ```` fence or surrounding prose.

use crate::domain::{Edit, Params, Proposal};

/// The most of a reply lineage keeps.
pub const MAX_REPLY: usize = 16 << 10;

/// Parses a proposal, with an error that says what is wrong and where.
pub fn parse(text: &str) -> Result<Proposal, String> {
    let candidates = [Some(text.trim()), fenced(text), braced(text)];
    let mut first_error = None;
    for candidate in candidates.into_iter().flatten() {
        match serde_json::from_str::<Proposal>(candidate) {
            Ok(p) => return validate(p),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Err(format!(
        "not a proposal (expected JSON {{\"hypothesis\": ..., \"edits\": [...]}}): {}",
        first_error.unwrap_or_else(|| "empty reply".into())
    ))
}

fn validate(p: Proposal) -> Result<Proposal, String> {
    if p.hypothesis.trim().is_empty() {
        return Err("the proposal's hypothesis is empty".into());
    }
    if p.edits.is_empty() {
        return Err("the proposal has no edits".into());
    }
    Ok(p)
}

/// The body of the first ```` ``` ```` fence.
fn fenced(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let rest = &text[start + 3..];
    let body = &rest[rest.find('\n')? + 1..];
    Some(body[..body.find("```")?].trim())
}

/// From the first `{` to the last `}`.
fn braced(text: &str) -> Option<&str> {
    let (a, b) = (text.find('{')?, text.rfind('}')?);
    (a < b).then(|| &text[a..=b])
}

/// `text` cut to [`MAX_REPLY`] bytes on a character boundary, with a note.
pub fn cap(text: &str) -> String {
    if text.len() <= MAX_REPLY {
        return text.to_string();
    }
    format!(
        "{}\n[reply cut at {} KiB]",
        crate::domain::prefix_at_most(text, MAX_REPLY),
        MAX_REPLY >> 10
    )
}

/// The recipe assignments of a proposal, merged in order.
pub fn assignments(edits: &[Edit]) -> Params {
    let mut out = Params::new();
    for e in edits {
        if let Edit::Set { values } = e {
            out.extend(values.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ParamValue;

    #[test]
    fn plain_fenced_and_embedded_json_parse() {
        let json =
            r#"{"hypothesis": "lower lr", "edits": [{"kind": "set", "values": {"opt.lr": 0.01}}]}"#;
        for text in [
            json.to_string(),
            format!("Here you go:\n```json\n{json}\n```\nGood luck."),
            format!("I propose {json} because."),
        ] {
            let p = parse(&text).unwrap();
            assert_eq!(p.hypothesis, "lower lr");
            assert_eq!(
                assignments(&p.edits).get("opt.lr"),
                Some(&ParamValue::Float(0.01))
            );
        }
    }

    #[test]
    fn garbage_and_schema_violations_are_errors() {
        assert!(parse("no json here").is_err());
        assert!(
            parse(r#"{"hypothesis": "x", "edits": [{"kind": "delete", "path": "a"}]}"#)
                .unwrap_err()
                .contains("delete")
        );
        assert!(parse(r#"{"hypothesis": "x", "edits": []}"#).is_err());
        assert!(parse(
            r#"{"hypothesis": " ", "edits": [{"kind": "replace", "path": "a", "content": ""}]}"#
        )
        .is_err());
        assert!(parse(r#"{"hypothesis": "x", "edits": [], "extra": 1}"#).is_err());
    }

    #[test]
    fn long_replies_are_capped_on_a_char_boundary() {
        let long = "é".repeat(MAX_REPLY);
        let capped = cap(&long);
        assert!(capped.len() < MAX_REPLY + 64);
        assert!(capped.ends_with("KiB]"));
    }

    #[test]
    fn an_expected_delta_is_read_when_given() {
        let p = parse(
            r#"{"hypothesis": "x", "edits": [{"kind": "set", "values": {"a": 1}}], "expected_delta": -0.05}"#,
        )
        .unwrap();
        assert_eq!(p.expected_delta, Some(-0.05));
        let p = parse(r#"{"hypothesis": "x", "edits": [{"kind": "set", "values": {"a": 1}}]}"#)
            .unwrap();
        assert_eq!(p.expected_delta, None);
        assert!(parse(
            r#"{"hypothesis": "x", "edits": [{"kind": "set", "values": {"a": 1}}], "expected_delta": "big"}"#
        )
        .is_err());
    }
}
