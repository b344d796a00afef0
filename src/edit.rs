//! Edits proposed as files and recipe assignments: the surface legality check,
//! then application to the parent commit's files.
//!
//! Everything here is pure: files are read through a [`Reader`] (a git tree in
//! production, a map in tests) and the result is the new content of each
//! edited file. Nothing is written anywhere; provenance turns the result into
//! a commit, and only an export of that commit reaches the disk, inside the
//! trial's own checkout.
//!
//! Order of checks: every edit's legality first (paths, protected files,
//! surface ownership, declared spaces), then application in order (a search
//! text that is not there is `patch_failed`), then the edited recipe is
//! compared key by key with the parent's, so a whole-file replacement of the
//! recipe cannot change keys outside the surface either. Where the train run
//! prints the score (`score_from = "train"`), no edit may change a line that
//! names a scored metric.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::config::{ExperimentFile, ScoreFrom, SurfaceSection};
use crate::domain::{Edit, FailureLabel};
use crate::recipe::{self, check_relative, param_of};

/// Why an edit was refused before anything ran.
#[derive(Clone, Debug, PartialEq)]
pub enum Rejection {
    /// Outside what the surface may touch: `illegal_edit`.
    Illegal { path: String, reason: String },
    /// Legal, but it does not apply to the parent's files: `patch_failed`.
    Patch { path: String, reason: String },
}

impl Rejection {
    pub fn label(&self) -> FailureLabel {
        match self {
            Self::Illegal { .. } => FailureLabel::IllegalEdit,
            Self::Patch { .. } => FailureLabel::PatchFailed,
        }
    }

    /// The offending path (`recipe.toml:optimizer.lr` for a recipe key).
    pub fn path(&self) -> &str {
        match self {
            Self::Illegal { path, .. } | Self::Patch { path, .. } => path,
        }
    }

    /// One line for lineage: the offending path first.
    pub fn detail(&self) -> String {
        match self {
            Self::Illegal { path, reason } => format!("illegal edit of `{path}`: {reason}"),
            Self::Patch { path, reason } => format!("edit of `{path}` does not apply: {reason}"),
        }
    }
}

/// What a path names in the parent's files.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Missing,
    File(Vec<u8>),
    Dir,
    /// A symlink (or a submodule): never followed, never written through.
    Link,
}

/// Reads a `/`-separated path of the parent's files.
pub trait Reader {
    fn read(&self, path: &str) -> Entry;
}

impl<F: Fn(&str) -> Entry> Reader for F {
    fn read(&self, path: &str) -> Entry {
        self(path)
    }
}

/// The first of `names` whose lines (those containing it) differ between
/// `before` and `after`, compared as sorted lists: moving such a line is
/// allowed, changing, adding or removing one is not.
fn changed_score_line<'n>(names: &[&'n str], before: &[u8], after: &[u8]) -> Option<&'n str> {
    let (before, after) = (
        String::from_utf8_lossy(before),
        String::from_utf8_lossy(after),
    );
    let naming = |text: &str, name: &str| {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| names_word(l, name))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    names
        .iter()
        .find(|n| naming(&before, n) != naming(&after, n))
        .copied()
}

/// Whether `line` holds `name` as a whole word (not inside a longer
/// identifier: `loss` is not in `loss_fn`).
fn names_word(line: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(name).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + name.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The rules one trial's edits are checked against.
pub struct Rules<'a> {
    pub experiment: &'a ExperimentFile,
    pub surface: &'a SurfaceSection,
    /// The experiment directory on disk: a path that is a symlink there is
    /// refused even though snapshots leave symlinks out.
    pub experiment_dir: &'a Path,
}

impl Rules<'_> {
    fn recipe(&self) -> String {
        self.experiment.recipe_path()
    }

    fn illegal(path: impl Into<String>, reason: impl Into<String>) -> Rejection {
        Rejection::Illegal {
            path: path.into(),
            reason: reason.into(),
        }
    }

    fn patch(path: impl Into<String>, reason: impl Into<String>) -> Rejection {
        Rejection::Patch {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The legality of one edit, before anything is applied.
    fn check(&self, edit: &Edit, reader: &impl Reader) -> Result<(), Rejection> {
        let recipe = self.recipe();
        let surface = &self.surface.name;
        match edit {
            Edit::Set { values } => {
                if values.is_empty() {
                    return Err(Self::patch(&recipe, "a `set` edit with no values"));
                }
                for (key, value) in values {
                    let at = format!("{recipe}:{key}");
                    if !self.surface.owns_key(key) {
                        return Err(Self::illegal(
                            at,
                            format!("recipe key outside surface `{surface}`"),
                        ));
                    }
                    if let Some(spec) = self.surface.params.get(key) {
                        if !spec.contains(value) {
                            return Err(Self::illegal(
                                at,
                                format!("value {value} is outside the declared space {spec:?}"),
                            ));
                        }
                    }
                }
                Ok(())
            }
            Edit::Replace { path, .. } | Edit::SearchReplace { path, .. } => {
                check_relative(path).map_err(|m| Self::illegal(path, m))?;
                if self.experiment.is_protected(path) {
                    return Err(Self::illegal(path, "a protected file"));
                }
                if *path != recipe && !self.surface.owns_file(path) {
                    let files = if self.surface.files.is_empty() {
                        "it declares none".to_string()
                    } else {
                        self.surface.files.join(", ")
                    };
                    return Err(Self::illegal(
                        path,
                        format!("file outside surface `{surface}` (its files: {files})"),
                    ));
                }
                let parts: Vec<&str> = path.split('/').collect();
                for n in 1..=parts.len() {
                    let prefix = parts[..n].join("/");
                    let on_disk = self
                        .experiment_dir
                        .join(&prefix)
                        .symlink_metadata()
                        .is_ok_and(|m| m.file_type().is_symlink());
                    let entry = reader.read(&prefix);
                    if on_disk || entry == Entry::Link {
                        return Err(Self::illegal(
                            path,
                            format!("`{prefix}` is a symlink; edits never go through one"),
                        ));
                    }
                    if n < parts.len() && matches!(entry, Entry::File(_)) {
                        return Err(Self::patch(path, format!("`{prefix}` is a file")));
                    }
                    if n == parts.len() && entry == Entry::Dir {
                        return Err(Self::patch(path, "is a directory"));
                    }
                }
                Ok(())
            }
        }
    }

    /// Checks and applies `edits` to the parent's files. Returns the new
    /// content of every file the edits touched.
    pub fn apply(
        &self,
        edits: &[Edit],
        reader: &impl Reader,
    ) -> Result<BTreeMap<String, Vec<u8>>, Rejection> {
        if edits.is_empty() {
            return Err(Self::patch("", "the proposal has no edits"));
        }
        // Declared parameters are written in their own type (`2` → `2.0`
        // for a float): a number's spelling is not a reason to refuse it.
        let edits: Vec<Edit> = edits
            .iter()
            .map(|e| match e {
                Edit::Set { values } => Edit::Set {
                    values: values
                        .iter()
                        .map(|(k, v)| {
                            let v = match self.surface.params.get(k) {
                                Some(spec) => spec.normalize(v),
                                None => v.clone(),
                            };
                            (k.clone(), v)
                        })
                        .collect(),
                },
                other => other.clone(),
            })
            .collect();
        let edits = edits.as_slice();
        for edit in edits {
            self.check(edit, reader)?;
        }
        let recipe = self.recipe();
        let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let current = |out: &BTreeMap<String, Vec<u8>>, path: &str| -> Option<Vec<u8>> {
            match out.get(path) {
                Some(c) => Some(c.clone()),
                None => match reader.read(path) {
                    Entry::File(c) => Some(c),
                    _ => None,
                },
            }
        };
        let text = |path: &str, bytes: Vec<u8>| {
            String::from_utf8(bytes).map_err(|_| Self::patch(path, "not UTF-8 text"))
        };
        for edit in edits {
            match edit {
                Edit::Set { values } => {
                    let before = current(&out, &recipe)
                        .ok_or_else(|| Self::patch(&recipe, "the recipe is missing"))?;
                    let after =
                        recipe::apply(&text(&recipe, before)?, values).map_err(|e| match e {
                            recipe::ApplyError::Missing(k) => {
                                Self::patch(format!("{recipe}:{k}"), "no such key in the recipe")
                            }
                            recipe::ApplyError::Parse(m) => Self::patch(&recipe, m),
                        })?;
                    out.insert(recipe.clone(), after.into_bytes());
                }
                Edit::Replace { path, content } => {
                    out.insert(path.clone(), content.clone().into_bytes());
                }
                Edit::SearchReplace {
                    path,
                    search,
                    replace,
                } => {
                    let before = current(&out, path)
                        .ok_or_else(|| Self::patch(path, "no such file to search in"))?;
                    let before = text(path, before)?;
                    if search.is_empty() {
                        return Err(Self::patch(path, "the search text is empty"));
                    }
                    match before.matches(search.as_str()).count() {
                        0 => return Err(Self::patch(path, "the search text is not in the file")),
                        1 => {}
                        n => {
                            return Err(Self::patch(
                                path,
                                format!("the search text occurs {n} times; it must occur once"),
                            ))
                        }
                    }
                    out.insert(
                        path.clone(),
                        before.replacen(search, replace, 1).into_bytes(),
                    );
                }
            }
        }
        // A file and a directory of the same name cannot both be written.
        for path in out.keys() {
            if let Some(dir) = out.keys().find(|d| path.starts_with(&format!("{d}/"))) {
                return Err(Self::patch(
                    path,
                    format!("another edit writes `{dir}` as a file"),
                ));
            }
        }
        if let Some(after) = out.get(&recipe) {
            let before = match reader.read(&recipe) {
                Entry::File(c) => text(&recipe, c)?,
                _ => return Err(Self::patch(&recipe, "the recipe is missing")),
            };
            self.check_recipe(&before, &text(&recipe, after.clone())?)?;
        }
        if self.experiment.score_from == ScoreFrom::Train {
            for (path, after) in &out {
                let before = match reader.read(path) {
                    Entry::File(c) => c,
                    _ => Vec::new(),
                };
                if let Some(name) =
                    changed_score_line(&self.experiment.scored_names(), &before, after)
                {
                    return Err(Self::illegal(
                        path,
                        format!(
                            "changes a line that names `{name}`: the train run prints the score \
                             (score_from = \"train\"), so the lines naming a scored metric stay \
                             exactly as they are"
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// The edited recipe may differ from the parent's only in keys the
    /// surface owns, and its declared parameters stay in their spaces.
    fn check_recipe(&self, before: &str, after: &str) -> Result<(), Rejection> {
        let recipe = self.recipe();
        let old: toml::Table = before.parse().map_err(|e: toml::de::Error| {
            Self::patch(&recipe, format!("the parent's recipe is not TOML: {e}"))
        })?;
        let new: toml::Table = after.parse().map_err(|e: toml::de::Error| {
            Self::patch(
                &recipe,
                format!(
                    "the edited recipe is not valid TOML: {}",
                    e.message().trim()
                ),
            )
        })?;
        let (old_keys, new_keys) = (recipe::leaves(&old), recipe::leaves(&new));
        let keys: BTreeSet<&Vec<String>> = old_keys.keys().chain(new_keys.keys()).collect();
        for path in keys {
            if old_keys.get(path) == new_keys.get(path) {
                continue;
            }
            let key = path.join(".");
            // `"a.b" = 1` and `[a] b = 1` would both read as `a.b`.
            if path.iter().any(|segment| segment.contains('.')) {
                return Err(Self::illegal(
                    format!("{recipe}:{key}"),
                    "a quoted key with `.` in it reads like another key; write tables instead",
                ));
            }
            if !self.surface.owns_key(&key) {
                return Err(Self::illegal(
                    format!("{recipe}:{key}"),
                    format!(
                        "changes a recipe key outside surface `{}`",
                        self.surface.name
                    ),
                ));
            }
        }
        // Every surface's declared parameters stay present and in their spaces.
        for (key, spec) in self.experiment.params() {
            let at = format!("{recipe}:{key}");
            match param_of(&new, key, spec) {
                None => return Err(Self::illegal(at, "removes a declared parameter")),
                Some(v) if !spec.contains(&v) => {
                    return Err(Self::illegal(
                        at,
                        format!("value {v} is outside the declared space {spec:?}"),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ParamValue, Params};
    use crate::recipe::ParamSpec;

    const RECIPE: &str = "[opt]\nlr = 0.1 # step\nsteps = 10\n[data]\nseed = 1\n";

    fn experiment() -> ExperimentFile {
        toml::from_str(
            r#"
            name = "t"
            recipe = "recipe.toml"
            metric = "loss"
            direction = "minimize"
            budget_secs = 1
            timeout_secs = 2
            train = ["true"]
            protected = ["eval", "score.py"]
            [eval]
            proxy = ["true"]
            [[surface]]
            name = "opt"
            keys = ["opt.steps"]
            files = ["model.py", "lib"]
            [surface.params]
            "opt.lr" = { type = "float", min = 0.0, max = 1.0 }
            "#,
        )
        .unwrap()
    }

    fn files() -> BTreeMap<String, Entry> {
        let mut m = BTreeMap::new();
        m.insert("recipe.toml".into(), Entry::File(RECIPE.into()));
        m.insert(
            "model.py".into(),
            Entry::File(b"x = 1\ny = 2\ny = 2\n".to_vec()),
        );
        m.insert("lib".into(), Entry::Dir);
        m.insert("lib/link".into(), Entry::Link);
        m
    }

    fn run(edits: &[Edit]) -> Result<BTreeMap<String, Vec<u8>>, Rejection> {
        let exp = experiment();
        let files = files();
        let rules = Rules {
            experiment: &exp,
            surface: &exp.surfaces[0],
            experiment_dir: Path::new("/nonexistent-ratchet-test"),
        };
        rules.apply(edits, &|p: &str| {
            files.get(p).cloned().unwrap_or(Entry::Missing)
        })
    }

    fn set(key: &str, v: ParamValue) -> Edit {
        let mut values = Params::new();
        values.insert(key.into(), v);
        Edit::Set { values }
    }

    fn replace(path: &str, content: &str) -> Edit {
        Edit::Replace {
            path: path.into(),
            content: content.into(),
        }
    }

    fn sr(path: &str, search: &str, replace: &str) -> Edit {
        Edit::SearchReplace {
            path: path.into(),
            search: search.into(),
            replace: replace.into(),
        }
    }

    fn label(r: Result<BTreeMap<String, Vec<u8>>, Rejection>) -> (FailureLabel, String) {
        let e = r.expect_err("the edit should be refused");
        (e.label(), e.path().to_string())
    }

    #[test]
    fn a_train_scored_edit_may_not_change_the_lines_that_print_the_score() {
        let exp: ExperimentFile = toml::from_str(
            r#"
            name = "t"
            metric = "val_bpb"
            direction = "minimize"
            budget_secs = 1
            timeout_secs = 2
            train = ["python3", "train.py"]
            score_from = "train"
            protected = ["prepare.py"]
            [[gates.metric]]
            name = "val_pass"
            min = 1
            [[surface]]
            name = "train"
            files = ["train.py"]
            "#,
        )
        .unwrap();
        let train = "LR = 0.1\nval_bpb = evaluate_bpb(model)\nprint(f\"val_bpb: {val_bpb:.6f}\")\n\
                     print(f\"val_pass: {passed}\")\n";
        let rules = Rules {
            experiment: &exp,
            surface: &exp.surfaces[0],
            experiment_dir: Path::new("/nonexistent-ratchet-test"),
        };
        let apply = |edits: &[Edit]| {
            rules.apply(edits, &|p: &str| match p {
                "train.py" => Entry::File(train.into()),
                "prepare.py" => Entry::File(b"def evaluate_bpb(m): ...\n".to_vec()),
                _ => Entry::Missing,
            })
        };
        // An ordinary change applies; so does moving a scored line as it is.
        assert!(apply(&[sr("train.py", "LR = 0.1", "LR = 0.2")]).is_ok());
        // A longer name that holds the metric's is another name.
        assert!(apply(&[sr("train.py", "LR = 0.1", "LR = 0.1\nval_bpb_ema = 0")]).is_ok());
        let moved = "val_bpb = evaluate_bpb(model)\nLR = 0.1\nprint(f\"val_bpb: {val_bpb:.6f}\")\n\
                     print(f\"val_pass: {passed}\")\n";
        assert!(apply(&[replace("train.py", moved)]).is_ok());
        for (search, replace_with, name) in [
            ("val_bpb = evaluate_bpb(model)", "val_bpb = 0.5", "val_bpb"),
            ("LR = 0.1\n", "LR = 0.1\nprint('val_bpb: 0.1')\n", "val_bpb"),
            ("{val_bpb:.6f}", "0.5", "val_bpb"),
            ("print(f\"val_pass: ", "print(f\"val_pass:  ", "val_pass"),
        ] {
            let e = apply(&[sr("train.py", search, replace_with)]).unwrap_err();
            assert_eq!(e.label(), FailureLabel::IllegalEdit, "{search:?}");
            assert!(e.detail().contains(&format!("`{name}`")), "{}", e.detail());
        }
        let e = apply(&[replace("prepare.py", "def evaluate_bpb(m): return 0\n")]).unwrap_err();
        assert_eq!(e.detail(), "illegal edit of `prepare.py`: a protected file");
    }

    #[test]
    fn legal_edits_apply_in_order() {
        let out = run(&[
            set("opt.lr", ParamValue::Float(0.5)),
            set("opt.steps", ParamValue::Int(20)),
            sr("model.py", "x = 1", "x = 3"),
            replace("lib/new.py", "pass\n"),
        ])
        .unwrap();
        assert_eq!(
            String::from_utf8(out["recipe.toml"].clone()).unwrap(),
            "[opt]\nlr = 0.5 # step\nsteps = 20\n[data]\nseed = 1\n"
        );
        assert_eq!(out["model.py"], b"x = 3\ny = 2\ny = 2\n");
        assert_eq!(out["lib/new.py"], b"pass\n");
    }

    #[test]
    fn paths_outside_the_checkout_are_illegal() {
        use FailureLabel::IllegalEdit as I;
        for path in [
            "/etc/passwd",
            "../x.py",
            "lib/../../x",
            "lib//a",
            ".git/config",
            "./model.py",
        ] {
            assert_eq!(label(run(&[replace(path, "")])), (I, path.into()), "{path}");
        }
        assert_eq!(
            label(run(&[replace("lib/link/a", "")])),
            (I, "lib/link/a".into())
        );
        assert_eq!(
            label(run(&[replace("experiment.toml", "")])),
            (I, "experiment.toml".into())
        );
        assert_eq!(
            label(run(&[replace("eval/data.txt", "")])),
            (I, "eval/data.txt".into())
        );
        assert_eq!(
            label(run(&[replace("other.py", "")])),
            (I, "other.py".into())
        );
    }

    #[test]
    fn recipe_keys_outside_the_surface_or_space_are_illegal() {
        use FailureLabel::IllegalEdit as I;
        assert_eq!(
            label(run(&[set("data.seed", ParamValue::Int(2))])),
            (I, "recipe.toml:data.seed".into())
        );
        assert_eq!(
            label(run(&[set("opt.lr", ParamValue::Float(7.0))])),
            (I, "recipe.toml:opt.lr".into())
        );
        // A whole-file replacement is compared key by key.
        let sneaky = RECIPE.replace("seed = 1", "seed = 9").replace("0.1", "0.2");
        assert_eq!(
            label(run(&[replace("recipe.toml", &sneaky)])),
            (I, "recipe.toml:data.seed".into())
        );
        let quoted = format!(
            "\"data.seed\" = 1\n{}",
            RECIPE.replace("seed = 1", "seed = 9")
        );
        assert_eq!(
            label(run(&[replace("recipe.toml", &quoted)])).0,
            I,
            "a quoted dotted key must not mask a change"
        );
        let dropped = RECIPE.replace("lr = 0.1 # step\n", "");
        assert_eq!(
            label(run(&[replace("recipe.toml", &dropped)])),
            (I, "recipe.toml:opt.lr".into())
        );
        // Comments and layout are free; owned keys may change.
        let fine = format!("# tuned\n{}", RECIPE.replace("0.1", "0.25"));
        assert!(run(&[replace("recipe.toml", &fine)]).is_ok());
    }

    #[test]
    fn numbers_are_written_in_the_declared_type() {
        let out = run(&[set("opt.lr", ParamValue::Int(1))]).unwrap();
        assert!(
            String::from_utf8_lossy(&out["recipe.toml"]).contains("lr = 1.0 # step"),
            "{}",
            String::from_utf8_lossy(&out["recipe.toml"])
        );
        let choice = ParamSpec::Choice {
            values: vec![ParamValue::Float(2.0), ParamValue::Int(4)],
        };
        assert_eq!(
            choice.normalize(&ParamValue::Int(2)),
            ParamValue::Float(2.0)
        );
        assert_eq!(
            choice.normalize(&ParamValue::Float(4.0)),
            ParamValue::Int(4)
        );
        assert_eq!(choice.normalize(&ParamValue::Int(3)), ParamValue::Int(3));
    }

    #[test]
    fn edits_that_do_not_apply_fail_as_patches() {
        use FailureLabel::PatchFailed as P;
        assert_eq!(label(run(&[sr("model.py", "z = 1", "")])).0, P);
        assert_eq!(label(run(&[sr("model.py", "y = 2", "")])).0, P, "ambiguous");
        assert_eq!(label(run(&[sr("lib/none.py", "a", "b")])).0, P);
        assert_eq!(label(run(&[replace("recipe.toml", "[opt\n")])).0, P);
        assert_eq!(label(run(&[])).0, P);
        assert_eq!(
            label(run(&[replace("lib/a", "x"), replace("lib/a/b", "y")])),
            (P, "lib/a/b".into())
        );
        let mut spec_less = Params::new();
        spec_less.insert("opt.steps.deep".into(), ParamValue::Int(1));
        assert_eq!(label(run(&[Edit::Set { values: spec_less }])).0, P);
    }

    #[test]
    fn surface_ownership_follows_tables_and_directories() {
        let exp = experiment();
        let s = &exp.surfaces[0];
        assert!(s.owns_key("opt.lr") && s.owns_key("opt.steps") && !s.owns_key("opt.stepsx"));
        assert!(s.owns_file("lib/a/b.py") && !s.owns_file("libx.py") && s.owns_file("model.py"));
        assert!(exp.is_protected("eval/x") && exp.is_protected("experiment.toml"));
        assert!(!exp.is_protected("evaluate.py"));
        assert!(matches!(
            exp.surfaces[0].params["opt.lr"],
            ParamSpec::Float { .. }
        ));
    }
}
