//! Provenance with real git repositories: every trial is a commit whose diff
//! lineage holds, kept trials are ancestors of `ratchet/incumbent`, and a
//! user's repository keeps its working copy, index and HEAD.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{str_of, Dir};
use git2::{Oid, Repository};
use serde_json::Value;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` (but `.git` and `lineage`) with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".git" || name == "lineage" {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The patch between a commit and its first parent, as git itself prints it.
fn patch(repo: &Repository, commit: Oid) -> String {
    let c = repo.find_commit(commit).unwrap();
    let diff = repo
        .diff_tree_to_tree(
            Some(&c.parent(0).unwrap().tree().unwrap()),
            Some(&c.tree().unwrap()),
            None,
        )
        .unwrap();
    let mut s = String::new();
    diff.print(git2::DiffFormat::Patch, |_, _, l| {
        if matches!(l.origin(), '+' | '-' | ' ') {
            s.push(l.origin());
        }
        s.push_str(&String::from_utf8_lossy(l.content()));
        true
    })
    .unwrap();
    s
}

fn oid(t: &Value) -> Oid {
    Oid::from_str(str_of(t, "commit")).unwrap_or_else(|_| panic!("trial without a commit: {t:#}"))
}

#[test]
fn every_trial_is_a_commit_whose_diff_lineage_holds_and_keeps_lead_to_the_incumbent() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(2, &[("x", "search"), ("fault", "fault")]);
    dir.ratchet_ok(&["run", "--trials", "8"]);
    let repo = Repository::open(dir.path().join("experiment")).unwrap();
    let trials = dir.trials();
    assert_eq!(trials.len(), 8);
    let incumbent = repo
        .find_reference("refs/heads/ratchet/incumbent")
        .unwrap()
        .target()
        .unwrap();
    let best: Value =
        serde_json::from_str(&dir.ratchet_ok(&["lineage", "best", "--json"])).unwrap();
    assert_eq!(
        str_of(&best, "commit"),
        incumbent.to_string(),
        "ratchet/incumbent is not lineage's incumbent: {}",
        trials
            .iter()
            .map(|t| format!(
                "{} {} {:?} {} {}",
                t["id"],
                str_of(t, "status"),
                t["parent"],
                str_of(t, "commit"),
                t["keep_commit"]
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for t in &trials {
        let c = oid(t);
        let branch = format!("refs/heads/ratchet/trials/{}", t["id"]);
        assert_eq!(
            repo.find_reference(&branch).unwrap().target(),
            Some(c),
            "{branch}"
        );
        assert_eq!(
            patch(&repo, c),
            str_of(t, "diff"),
            "lineage diff of trial {} differs from git's",
            t["id"]
        );
        let msg = repo.find_commit(c).unwrap().message().unwrap().to_string();
        assert!(
            msg.contains(&format!("ratchet trial {}", t["id"]))
                && msg.contains(str_of(t, "hypothesis")),
            "{msg}"
        );
        // The diff is the edit: each changed key appears with its new value.
        for (k, v) in t["changes"].as_object().unwrap() {
            let key = k.rsplit('.').next().unwrap();
            let shown = match v {
                Value::String(s) => format!("+{key} = \"{s}\""),
                other => format!("+{key} = {other}"),
            };
            assert!(
                str_of(t, "diff").contains(&shown),
                "{shown} not in\n{}",
                str_of(t, "diff")
            );
        }
        if let Some(keep) = t["keep_commit"].as_str().map(|k| Oid::from_str(k).unwrap()) {
            // A keep over a moved incumbent is a merge holding exactly the measured files.
            let (kc, tc) = (
                repo.find_commit(keep).unwrap(),
                repo.find_commit(c).unwrap(),
            );
            assert_eq!(
                kc.tree_id(),
                tc.tree_id(),
                "keep of trial {} changed the files",
                t["id"]
            );
            assert!(keep == c || kc.parent_ids().any(|p| p == c));
        }
        if str_of(t, "status") == "kept" {
            assert!(
                c == incumbent || repo.graph_descendant_of(incumbent, c).unwrap(),
                "kept trial {} is not an ancestor of the incumbent",
                t["id"]
            );
        }
        // Each trial's parent commit is the commit of the trial it was proposed against.
        let parent = repo.find_commit(c).unwrap().parent_id(0).unwrap();
        match t["parent"].as_u64() {
            Some(p) => {
                let p = &trials[p as usize - 1];
                let keep = p["keep_commit"].as_str().map(|k| Oid::from_str(k).unwrap());
                assert_eq!(
                    parent,
                    keep.unwrap_or_else(|| oid(p)),
                    "trial {} does not start from its parent's keep",
                    t["id"]
                );
            }
            None => assert_eq!(
                Some(parent),
                repo.find_reference("refs/heads/ratchet/base")
                    .unwrap()
                    .target()
            ),
        }
    }
    // Show --diff prints it; checkout materialises the trial's exact files.
    let t = trials
        .iter()
        .find(|t| !t["changes"].as_object().unwrap().is_empty())
        .unwrap();
    let id = t["id"].to_string();
    let shown = dir.ratchet_ok(&["lineage", "show", &id, "--diff"]);
    assert!(shown.contains(str_of(t, "diff").trim()), "{shown}");
    dir.ratchet_ok(&["lineage", "checkout", &id, "copy"]);
    // The checkout holds the commit's files, byte for byte what the trial ran
    // with (its work directory also holds what the trial wrote, like result.json).
    let copy = files(&dir.path().join("copy"));
    let work = files(&Path::new(str_of(t, "trial_dir")).join("work"));
    let names: Vec<&String> = copy.keys().collect();
    assert_eq!(
        names,
        ["eval.py", "experiment.toml", "recipe.toml", "train.py"]
    );
    for (name, bytes) in &copy {
        assert!(
            work.get(name) == Some(bytes),
            "{name} differs from the trial's"
        );
    }
    let out = dir.ratchet(&["lineage", "checkout", &id, "copy"]);
    assert!(!out.status.success() && common::stderr(&out).contains("not empty"));
}

#[test]
fn a_users_repository_keeps_its_head_index_and_working_copy() {
    let dir = Dir::with_fixture("faulty");
    let root = dir.path();
    dir.specialists(2, &[("x", "search")]);
    git(root, &["init", "-q", "-b", "main"]);
    git(
        root,
        &["-c", "user.name=u", "-c", "user.email=u@x", "add", "-A"],
    );
    git(
        root,
        &[
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@x",
            "commit",
            "-q",
            "-m",
            "mine",
        ],
    );
    // An uncommitted edit and an untracked file that ratchet must leave alone.
    std::fs::write(
        root.join("experiment/recipe.toml"),
        "[search]\nx = 4.5\n\n[fault]\nmode = \"none\"\n",
    )
    .unwrap();
    std::fs::write(root.join("notes.txt"), "mine\n").unwrap();
    let head = git(root, &["rev-parse", "HEAD"]);
    let branch = git(root, &["symbolic-ref", "HEAD"]);
    let status = git(root, &["status", "--porcelain", "--untracked-files=all"]);
    let index = std::fs::read(root.join(".git/index")).unwrap();
    let before = files(root);

    dir.ratchet_ok(&["run", "--trials", "4"]);

    assert_eq!(git(root, &["rev-parse", "HEAD"]), head);
    assert_eq!(git(root, &["symbolic-ref", "HEAD"]), branch);
    assert_eq!(
        std::fs::read(root.join(".git/index")).unwrap(),
        index,
        "the index changed"
    );
    assert_eq!(files(root), before, "the working copy changed");
    // (lineage/ is new and untracked; everything else is as it was.)
    let after = git(root, &["status", "--porcelain", "--untracked-files=all"]);
    let after: Vec<&str> = after.lines().filter(|l| !l.contains("lineage/")).collect();
    assert_eq!(after, status.lines().collect::<Vec<_>>());
    // The trials started from the working copy as it was (x = 4.5), not from HEAD.
    let trials = dir.trials();
    assert_eq!(trials[0]["config"]["search.x"].as_f64(), Some(4.5));
    let refs = git(
        root,
        &["for-each-ref", "--format=%(refname)", "refs/heads/ratchet"],
    );
    assert!(
        refs.contains("refs/heads/ratchet/base") && refs.contains("refs/heads/ratchet/trials/4"),
        "{refs}"
    );
}

#[test]
fn a_restart_reuses_the_repository_and_continues_the_branches() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    dir.ratchet_ok(&["run", "--trials", "3"]);
    let repo = Repository::open(dir.path().join("experiment")).unwrap();
    let base = repo
        .find_reference("refs/heads/ratchet/base")
        .unwrap()
        .target()
        .unwrap();
    let incumbent = repo
        .find_reference("refs/heads/ratchet/incumbent")
        .unwrap()
        .target()
        .unwrap();
    dir.ratchet_ok(&["run", "--trials", "2"]);
    assert_eq!(
        repo.find_reference("refs/heads/ratchet/base")
            .unwrap()
            .target(),
        Some(base),
        "a second base was made"
    );
    let trials = dir.trials();
    assert_eq!(trials.len(), 5);
    // The first trial of the second run builds on the first run's incumbent.
    let fourth = repo.find_commit(oid(&trials[3])).unwrap();
    assert!(
        fourth.parent_id(0).unwrap() == incumbent
            || repo
                .graph_descendant_of(fourth.parent_id(0).unwrap(), incumbent)
                .unwrap()
    );
    for id in 1..=5 {
        assert!(
            repo.find_reference(&format!("refs/heads/ratchet/trials/{id}"))
                .is_ok(),
            "no branch for trial {id}"
        );
    }
}
