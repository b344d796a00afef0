//! The JSON Schema of a proposal for one surface: the reply shape an LLM is
//! held to. A local model decodes under it (llguidance compiles it to a
//! grammar, so every reply parses); an OpenAI-compatible server gets it as
//! `response_format: json_schema`.
//!
//! It names only what the surface may change: its declared recipe keys,
//! each inside its declared space (more keys of any scalar value when the
//! surface lists free `keys`), and its files. What a schema cannot say
//! (a key a table allows, a search text that must occur once) is still
//! checked when the trial is recorded (`edit.rs`).

use serde_json::{json, Map, Value};

use crate::config::SurfaceSection;
use crate::recipe::ParamSpec;

/// The longest hypothesis a schema allows, in characters.
pub const MAX_HYPOTHESIS: usize = 400;
/// The most edits one proposal may carry.
const MAX_EDITS: usize = 4;

/// The schema of one proposal of `surface`.
pub fn proposal(surface: &SurfaceSection) -> Value {
    let mut kinds = Vec::new();
    if !surface.params.is_empty() || !surface.keys.is_empty() {
        kinds.push(set(surface));
    }
    if !surface.files.is_empty() {
        let path = json!({"type": "string", "pattern": path_pattern(&surface.files)});
        kinds.push(edit_kind(
            "search_replace",
            &[
                ("path", path.clone()),
                (
                    "search",
                    json!({"type": "string", "minLength": 1, "maxLength": 4000}),
                ),
                ("replace", json!({"type": "string", "maxLength": 4000})),
            ],
        ));
        kinds.push(edit_kind(
            "replace",
            &[
                ("path", path),
                ("content", json!({"type": "string", "maxLength": 32000})),
            ],
        ));
    }
    // One `set` says all a value surface can; file edits may need several.
    let max_edits = if surface.files.is_empty() {
        1
    } else {
        MAX_EDITS
    };
    let item = match kinds.len() {
        1 => kinds.pop().expect("one"),
        _ => json!({"anyOf": kinds}),
    };
    json!({
        "type": "object",
        "properties": {
            "hypothesis": {"type": "string", "minLength": 1, "maxLength": MAX_HYPOTHESIS},
            "edits": {"type": "array", "minItems": 1, "maxItems": max_edits, "items": item},
            "expected_delta": {"type": "number"},
        },
        "required": ["hypothesis", "edits"],
        "additionalProperties": false,
    })
}

fn edit_kind(kind: &str, fields: &[(&str, Value)]) -> Value {
    let mut properties = Map::new();
    properties.insert("kind".into(), json!({"const": kind}));
    let mut required = vec![json!("kind")];
    for (name, schema) in fields {
        properties.insert((*name).into(), schema.clone());
        required.push(json!(name));
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// `{"kind": "set", "values": {...}}` with the surface's keys in their spaces.
fn set(surface: &SurfaceSection) -> Value {
    let mut properties = Map::new();
    for (key, spec) in &surface.params {
        properties.insert(key.clone(), space(spec));
    }
    let extra = if surface.keys.is_empty() {
        json!(false)
    } else {
        json!({"type": ["number", "string", "boolean"]})
    };
    edit_kind(
        "set",
        &[(
            "values",
            json!({
                "type": "object",
                "properties": properties,
                "additionalProperties": extra,
                "minProperties": 1,
            }),
        )],
    )
}

fn space(spec: &ParamSpec) -> Value {
    match spec {
        ParamSpec::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        ParamSpec::Float { min, max } | ParamSpec::LogFloat { min, max } => {
            json!({"type": "number", "minimum": min, "maximum": max})
        }
        ParamSpec::Choice { values } => json!({"enum": values}),
    }
}

/// A surface file, or (for a directory) anything under it.
fn path_pattern(files: &[String]) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|f| format!("{}(?:/.+)?", regex::escape(f.trim_end_matches('/'))))
        .collect();
    format!("^(?:{})$", names.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ParamValue;

    fn surface(files: &[&str]) -> SurfaceSection {
        let mut s: SurfaceSection = toml::from_str(
            r#"
            name = "optimizer"
            [params]
            "optimizer.lr" = { type = "log_float", min = 0.0001, max = 0.1 }
            "optimizer.warmup" = { type = "int", min = 0, max = 100 }
            "optimizer.kind" = { type = "choice", values = ["adam", "sgd"] }
            "#,
        )
        .unwrap();
        s.files = files.iter().map(|f| f.to_string()).collect();
        s
    }

    #[test]
    fn a_value_surface_allows_its_keys_in_their_spaces_only() {
        let s = proposal(&surface(&[]));
        let set = &s["properties"]["edits"]["items"];
        assert_eq!(set["properties"]["kind"]["const"], "set");
        let values = &set["properties"]["values"];
        assert_eq!(values["additionalProperties"], false);
        assert_eq!(values["properties"]["optimizer.lr"]["maximum"], 0.1);
        assert_eq!(values["properties"]["optimizer.warmup"]["type"], "integer");
        assert_eq!(
            values["properties"]["optimizer.kind"]["enum"],
            json!([
                ParamValue::Str("adam".into()),
                ParamValue::Str("sgd".into())
            ])
        );
    }

    #[test]
    fn file_edits_name_the_surface_files() {
        let s = proposal(&surface(&["train.py", "model/"]));
        let kinds = s["properties"]["edits"]["items"]["anyOf"]
            .as_array()
            .unwrap();
        assert_eq!(kinds.len(), 3);
        let pattern = kinds[1]["properties"]["path"]["pattern"].as_str().unwrap();
        let re = regex::Regex::new(pattern).unwrap();
        assert!(re.is_match("train.py") && re.is_match("model/net.py"));
        assert!(!re.is_match("prepare.py") && !re.is_match("trainXpy"));
    }
}
