//! The layering of `src/`, stated and checked: which file may name which
//! module of the crate and which external crate. It reads every file with
//! syn (its `use` items and every path in its code, `#[cfg(test)]` items
//! left out) and fails naming the file and what it names against the rule.
//!
//! Where the code does not keep a rule yet, the exceptions are listed here
//! (`DEBT`), and a listed exception that the code has outgrown fails too, so
//! the lists only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Files of `src/` that may be longer than `MAX_LINES`: the fused kernels.
const LONG_FILES: &[&str] = &["tinylm/kernels.rs"];
const MAX_LINES: usize = 800;

/// Where each external crate may be named (module paths; `a::*` is `a` and
/// everything under it).
const CRATES: &[(&str, &[&str])] = &[
    ("sled", &["lineage::*"]),
    ("candle_core", &["tinylm::*", "localmodel::*"]),
    ("candle_nn", &["tinylm::*"]),
    ("candle_transformers", &["tinylm::*", "localmodel::*"]),
    // A local model's tokenizer, chat template and constrained decoding.
    ("tokenizers", &["localmodel::*"]),
    ("toktrie", &["localmodel::*"]),
    ("llguidance", &["localmodel::*"]),
    ("minijinja", &["localmodel::*"]),
    ("minijinja_contrib", &["localmodel::*"]),
    ("async_openai", &["llm"]),
    ("git2", &["provenance"]),
    ("anyhow", &["cli::*", "run", "bench::*", "main"]),
];
/// (debt) Modules that name a crate outside its room today.
const CRATES_DEBT: &[(&str, &[&str])] = &[];

/// The modules each module may name, where that is restricted.
/// (`a::*`: `a` and every module inside it, which may name each other.)
const ONLY: &[(&str, &[&str])] = &[
    // The vocabulary of the crate: below everything.
    ("domain::*", &[]),
    // What a recipe is made of, below config, edits and workspaces.
    ("recipe", &["domain::*"]),
    // The keep rule and the gates: pure.
    ("judge::*", &["domain::*", "config::*"]),
    ("allocation", &["domain::*"]),
];

/// Actors whose files (the actor's module and the modules inside it) may
/// not name another actor's (what they send each other is in
/// `actors::messages`); the supervisor spawns them and may.
const ACTORS: &[&str] = &[
    "actors::evaluator",
    "actors::executor",
    "actors::specialist",
];
const ACTOR_FILES: &[&str] = &[
    "actors::evaluator",
    "actors::executor",
    "actors::specialist",
    "actors::supervisor",
];

/// The layer below the actors, which drives nothing and names no actor.
const RUNNER: &str = "runner";

/// Who may name `provenance` (git): the runner's `Workshop`, which makes
/// every trial's commits and exports for the actors, and the command line
/// (`lineage checkout` reads a trial's tree with no daemon running).
const GIT_WORK: &[&str] = &["runner::*", "cli::*"];

struct Crate {
    /// Module path → file (relative to `src/`).
    files: BTreeMap<String, String>,
    /// Module path → the modules of the crate it names.
    uses: BTreeMap<String, BTreeSet<String>>,
    /// Module path → the external crates it names.
    externs: BTreeMap<String, BTreeSet<String>>,
    /// File → lines.
    lines: BTreeMap<String, usize>,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `actors/executor.rs` → `actors::executor`; `lineage/mod.rs` → `lineage`;
/// `lib.rs` → `` (the crate root); `main.rs` → `main`.
fn module_of(rel: &str) -> String {
    let rel = rel.trim_end_matches(".rs");
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    if rel == "lib" {
        return String::new();
    }
    rel.replace('/', "::")
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta.require_list().is_ok_and(|l| {
                l.tokens
                    .to_string()
                    .split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|w| w == "test")
            })
    })
}

/// Every path a file names: `use` trees flattened, and paths in code; and
/// the modules it declares `#[cfg(test)] mod name;` (files of tests).
#[derive(Default)]
struct Paths(Vec<Vec<String>>, Vec<String>);

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut p = prefix.clone();
                if n.ident != "self" {
                    p.push(n.ident.to_string());
                }
                self.0.push(p);
            }
            syn::UseTree::Rename(r) => {
                let mut p = prefix.clone();
                if r.ident != "self" {
                    p.push(r.ident.to_string());
                }
                self.0.push(p);
            }
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs = match i {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(m) => &m.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            _ => return syn::visit::visit_item(self, i),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_item(self, i);
        } else if let syn::Item::Mod(m) = i {
            if m.content.is_none() {
                self.1.push(m.ident.to_string());
            }
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.0
            .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside macro calls (`format!`, `call_t!`, `matches!`): read
        // their tokens as far as they parse as expressions.
        self.visit_path(&m.path);
        let parsed = m.parse_body_with(
            syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
        );
        if let Ok(exprs) = parsed {
            for e in &exprs {
                self.visit_expr(e);
            }
        }
    }
}

fn read_crate() -> Crate {
    let root = src();
    let mut paths = Vec::new();
    rs_files(&root, &mut paths);
    let mut files = BTreeMap::new();
    let mut lines = BTreeMap::new();
    let mut named = BTreeMap::new();
    let mut test_files = BTreeSet::new();
    for p in &paths {
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(p).unwrap();
        lines.insert(rel.clone(), text.lines().count());
        let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let mut v = Paths::default();
        v.visit_file(&file);
        let m = module_of(&rel);
        for t in v.1 {
            test_files.insert(if m.is_empty() { t } else { format!("{m}::{t}") });
        }
        files.insert(m.clone(), rel);
        named.insert(m, v.0);
    }
    // A file of tests (`#[cfg(test)] mod tests;`) is test code: left out.
    for t in &test_files {
        files.remove(t);
        named.remove(t);
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut uses = BTreeMap::new();
    let mut externs = BTreeMap::new();
    for (m, list) in &named {
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p).to_string();
        let mut to = BTreeSet::new();
        let mut ext = BTreeSet::new();
        for path in list {
            let Some(first) = path.first() else { continue };
            let rest: Vec<String> = match first.as_str() {
                "crate" => path[1..].to_vec(),
                "super" => {
                    let mut r: Vec<String> = parent
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                    r.extend(path[1..].iter().cloned());
                    r
                }
                "self" => {
                    let mut r: Vec<String> = m
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                    r.extend(path[1..].iter().cloned());
                    r
                }
                name => {
                    if path.len() > 1 || named.contains_key(name) {
                        ext.insert(name.to_string());
                    }
                    continue;
                }
            };
            // The longest prefix that is a module of the crate. A module
            // and the modules inside it are one room: a child naming its
            // parent (`use super::*`) is no edge, the parent naming its
            // children is.
            for k in (1..=rest.len()).rev() {
                let c = rest[..k].join("::");
                if modules.contains(&c) {
                    if &c != m && !m.starts_with(&format!("{c}::")) {
                        to.insert(c);
                    }
                    break;
                }
            }
        }
        uses.insert(m.clone(), to);
        externs.insert(m.clone(), ext);
    }
    Crate {
        files,
        uses,
        externs,
        lines,
    }
}

fn matches(pattern: &str, module: &str) -> bool {
    match pattern.strip_suffix("::*") {
        Some(p) => module == p || module.starts_with(&format!("{p}::")),
        None => module == pattern,
    }
}

fn debt_for<'a>(table: &'a [(&str, &'a [&'a str])], key: &str) -> &'a [&'a str] {
    table
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(&[][..], |(_, v)| *v)
}

#[test]
fn no_import_cycle_between_files() {
    let c = read_crate();
    // Tarjan's strongly connected components over "names a module of".
    struct T<'a> {
        uses: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        cycles: Vec<Vec<&'a str>>,
    }
    fn strong<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.uses.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                strong(t, w);
                let l = t.low[v].min(t.low[w]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.low[v].min(t.index[w]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w);
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.cycles.push(comp);
            }
        }
    }
    let mut t = T {
        uses: &c.uses,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        cycles: Vec::new(),
    };
    for m in c.uses.keys() {
        if !t.index.contains_key(m.as_str()) {
            strong(&mut t, m);
        }
    }
    let shown: Vec<String> = t
        .cycles
        .iter()
        .map(|comp| {
            let names: Vec<String> = comp
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = c.uses[*m]
                        .iter()
                        .filter(|u| comp.contains(&u.as_str()))
                        .map(String::as_str)
                        .collect();
                    format!("{} → {}", c.files[*m], inside.join(", "))
                })
                .collect();
            names.join("; ")
        })
        .collect();
    assert!(shown.is_empty(), "import cycles:\n{}", shown.join("\n"));
}

/// The actor `module` belongs to, if any (`actors::executor::asks` →
/// `actors::executor`).
fn actor_of(module: &str) -> Option<&'static str> {
    ACTOR_FILES
        .iter()
        .find(|a| matches(&format!("{a}::*"), module))
        .copied()
}

#[test]
fn actor_files_do_not_name_each_other_but_the_supervisor() {
    let c = read_crate();
    let mut wrong = Vec::new();
    for (m, uses) in &c.uses {
        let Some(mine) = actor_of(m).filter(|a| ACTORS.contains(a)) else {
            continue;
        };
        for u in uses {
            if actor_of(u).is_some_and(|other| other != mine) {
                wrong.push(format!("{} names {u}", c.files[m]));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_runner_names_no_actor() {
    let c = read_crate();
    let mut wrong = Vec::new();
    for (m, uses) in &c.uses {
        if !matches(&format!("{RUNNER}::*"), m) {
            continue;
        }
        for u in uses {
            if matches("actors::*", u) {
                wrong.push(format!("{} names {u}", c.files[m]));
            }
        }
    }
    assert!(
        c.files.keys().any(|m| m.starts_with(RUNNER)),
        "no runner module"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn git_work_goes_through_the_workshop() {
    let c = read_crate();
    let mut wrong = Vec::new();
    for (m, uses) in &c.uses {
        if m == "provenance" || GIT_WORK.iter().any(|p| matches(p, m)) {
            continue;
        }
        if uses.iter().any(|u| matches("provenance", u)) {
            wrong.push(format!("{} names provenance", c.files[m]));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn restricted_modules_name_only_what_they_may() {
    let c = read_crate();
    let mut wrong = Vec::new();
    for (room, allowed) in ONLY {
        let inside: Vec<&String> = c.uses.keys().filter(|m| matches(room, m)).collect();
        assert!(!inside.is_empty(), "no module {room}");
        for m in inside {
            for u in &c.uses[m] {
                let ok = matches(room, u) || allowed.iter().any(|a| matches(a, u));
                if !ok {
                    wrong.push(format!(
                        "{} names {u} (it may name {allowed:?})",
                        c.files[m]
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn external_crates_stay_in_their_rooms() {
    let c = read_crate();
    let mut wrong = Vec::new();
    for (krate, rooms) in CRATES {
        let debt = debt_for(CRATES_DEBT, krate);
        for (m, ext) in &c.externs {
            let inside = rooms.iter().any(|r| matches(r, m));
            let owed = debt.contains(&m.as_str());
            match (ext.contains(*krate), inside, owed) {
                (true, false, false) => {
                    wrong.push(format!("{} names {krate} (only {rooms:?} may)", c.files[m]))
                }
                (false, _, true) => wrong.push(format!(
                    "{} no longer names {krate}: take it off CRATES_DEBT",
                    c.files[m]
                )),
                _ => {}
            }
        }
        for m in debt {
            assert!(c.files.contains_key(*m), "CRATES_DEBT names no module {m}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_file_is_longer_than_the_limit() {
    let c = read_crate();
    let wrong: Vec<String> = c
        .lines
        .iter()
        .filter(|(file, n)| **n > MAX_LINES && !LONG_FILES.contains(&file.as_str()))
        .map(|(file, n)| format!("src/{file} has {n} lines (at most {MAX_LINES})"))
        .collect();
    for f in LONG_FILES {
        assert!(c.lines.contains_key(*f), "LONG_FILES names no file {f}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The reader itself: it sees a path named only inside a macro call and
/// one in a nested `use` group, and leaves `#[cfg(test)]` items out.
#[test]
fn the_reader_sees_paths_in_macros_and_groups_and_skips_tests() {
    let file = syn::parse_file(
        "use crate::{a::{b, c as d}, e};\n\
         fn f() { let _ = format!(\"{}\", crate::g::h()); }\n\
         #[cfg(test)] mod tests { use crate::z; }\n",
    )
    .unwrap();
    let mut v = Paths::default();
    v.visit_file(&file);
    let got: BTreeSet<String> = v.0.iter().map(|p| p.join("::")).collect();
    for want in ["crate::a::b", "crate::a::c", "crate::e", "crate::g::h"] {
        assert!(got.contains(want), "{want} not seen in {got:?}");
    }
    assert!(!got.iter().any(|p| p.contains("z")), "{got:?}");
}
