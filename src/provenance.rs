//! Provenance with git2: every trial is a commit on `ratchet/trials/<id>` whose
//! parent is the commit it was proposed against, `ratchet/incumbent` moves only
//! on a keep, and each trial runs in an export of its own commit.
//!
//! The experiment directory's repository is used as it is found (or created
//! when there is none): ratchet writes objects and `refs/heads/ratchet/*` only.
//! It never checks out, never touches the index, HEAD or the working copy.
//! Trial commits hold the experiment directory's files at their tree root.
//! All of it is blocking: call from `spawn_blocking`.

use std::path::{Path, PathBuf};

use git2::{
    build::TreeUpdateBuilder, FileMode, ObjectType, Oid, Repository, Signature, TreeWalkMode,
    TreeWalkResult,
};

use crate::domain::{CommitId, Edit, Params, TrialId};
use crate::edit::{Entry, Rejection, Rules};

pub const BASE_REF: &str = "refs/heads/ratchet/base";
pub const INCUMBENT_REF: &str = "refs/heads/ratchet/incumbent";

/// The largest diff kept in lineage; longer ones are cut with a note.
const MAX_DIFF: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recipe {path} in commit {commit}: {message}")]
    Recipe {
        path: String,
        commit: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvenanceError + '_ {
    move |source| ProvenanceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A merged tree (from `rebase_tree` or `combine_tree`), to be committed
/// with `commit_rebased`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergedTree(Oid);

/// git's id of a commit lineage names.
fn git_id(c: &CommitId) -> Result<Oid, ProvenanceError> {
    Ok(Oid::from_str(c.as_str())?)
}

fn commit_id(o: Oid) -> CommitId {
    o.to_string().parse().expect("git's ids are 40 hex digits")
}

/// Where an experiment's provenance lives.
#[derive(Clone, Debug)]
pub struct Provenance {
    /// The experiment directory (its files are the commits' trees).
    pub experiment_dir: PathBuf,
    /// The repository's `.git` directory.
    pub git_dir: PathBuf,
}

impl Provenance {
    /// Finds the repository holding the experiment directory, or creates one
    /// in it. Creating a repository writes `.git` inside the experiment
    /// directory and nothing else.
    pub fn open_or_init(experiment_dir: &Path) -> Result<Provenance, ProvenanceError> {
        let repo = match Repository::discover(experiment_dir) {
            Ok(r) => r,
            Err(e) if e.code() == git2::ErrorCode::NotFound => Repository::init(experiment_dir)?,
            Err(e) => return Err(e.into()),
        };
        Ok(Provenance {
            experiment_dir: experiment_dir.to_path_buf(),
            git_dir: repo.path().to_path_buf(),
        })
    }

    /// Opens an existing repository (for reading: `lineage checkout`).
    pub fn open(experiment_dir: &Path) -> Result<Provenance, ProvenanceError> {
        let repo = Repository::discover(experiment_dir)?;
        Ok(Provenance {
            experiment_dir: experiment_dir.to_path_buf(),
            git_dir: repo.path().to_path_buf(),
        })
    }

    fn repo(&self) -> Result<Repository, ProvenanceError> {
        Ok(Repository::open(&self.git_dir)?)
    }

    /// The commit the first trials start from: `ratchet/base`, a snapshot of the
    /// experiment directory made on first use and reused afterwards (restarts
    /// continue the same history). `skip` is left out (the lineage directory).
    pub fn base(&self, skip: &Path) -> Result<CommitId, ProvenanceError> {
        let repo = self.repo()?;
        if let Ok(r) = repo.find_reference(BASE_REF) {
            if let Some(oid) = r.target() {
                return Ok(commit_id(oid));
            }
        }
        let tree = snapshot(&repo, &self.experiment_dir, skip)?;
        let tree = repo.find_tree(tree)?;
        let sig = signature(&repo);
        let message = format!(
            "ratchet: base snapshot of {}\n",
            self.experiment_dir.display()
        );
        let oid = repo.commit(None, &sig, &sig, &message, &tree, &[])?;
        repo.reference(BASE_REF, oid, false, "ratchet: base snapshot")?;
        Ok(commit_id(oid))
    }

    /// Commits a trial on `ratchet/trials/<id>`: the parent's tree with
    /// `config` written into `recipe` (empty: no recipe, the parent's tree
    /// as it is). Returns the commit and its diff.
    pub fn commit_trial(
        &self,
        id: TrialId,
        parent: &CommitId,
        recipe: &str,
        config: &Params,
        message: &str,
    ) -> Result<(CommitId, String), ProvenanceError> {
        let repo = self.repo()?;
        let parent = repo.find_commit(git_id(parent)?)?;
        let base_tree = parent.tree()?;
        if recipe.is_empty() {
            // An experiment without a recipe: the trial is its parent's files
            // (a baseline, or a re-measure), a commit of its own.
            let sig = signature(&repo);
            let oid = repo.commit(None, &sig, &sig, message, &base_tree, &[&parent])?;
            repo.reference(&trial_ref(id), oid, true, "ratchet: trial")?;
            return Ok((commit_id(oid), String::new()));
        }
        let entry = base_tree
            .get_path(Path::new(recipe))
            .map_err(|_| ProvenanceError::Recipe {
                path: recipe.into(),
                commit: parent.id().to_string(),
                message: "not in the commit".into(),
            })?;
        let blob = repo.find_blob(entry.id())?;
        let text = std::str::from_utf8(blob.content()).map_err(|e| ProvenanceError::Recipe {
            path: recipe.into(),
            commit: parent.id().to_string(),
            message: e.to_string(),
        })?;
        let updated = crate::recipe::apply(text, config).map_err(|e| ProvenanceError::Recipe {
            path: recipe.into(),
            commit: parent.id().to_string(),
            message: format!("{e:?}"),
        })?;
        let new_blob = repo.blob(updated.as_bytes())?;
        let mut update = TreeUpdateBuilder::new();
        update.upsert(recipe, new_blob, FileMode::Blob);
        let tree = repo.find_tree(update.create_updated(&repo, &base_tree)?)?;
        let sig = signature(&repo);
        let oid = repo.commit(None, &sig, &sig, message, &tree, &[&parent])?;
        repo.reference(&trial_ref(id), oid, true, "ratchet: trial")?;
        let diff = diff_text(&repo, &base_tree, &tree)?;
        Ok((commit_id(oid), diff))
    }

    /// Commits a trial whose proposal came as edits: they are checked against
    /// `rules` and applied to the parent commit's files in memory. A refused
    /// edit writes nothing (not even an object) and is returned as the inner
    /// `Err`. On success: the commit, its diff, and the edited recipe's text.
    pub fn commit_edits(
        &self,
        id: TrialId,
        parent: &CommitId,
        rules: &Rules<'_>,
        edits: &[Edit],
        message: &str,
    ) -> Result<Result<(CommitId, String, String), Rejection>, ProvenanceError> {
        let repo = self.repo()?;
        let parent = repo.find_commit(git_id(parent)?)?;
        let base_tree = parent.tree()?;
        let reader = |path: &str| -> Entry {
            let Ok(entry) = base_tree.get_path(Path::new(path)) else {
                return Entry::Missing;
            };
            match (entry.kind(), entry.filemode()) {
                (_, m) if m == i32::from(FileMode::Link) => Entry::Link,
                (Some(ObjectType::Tree), _) => Entry::Dir,
                (Some(ObjectType::Blob), _) => repo
                    .find_blob(entry.id())
                    .map(|b| Entry::File(b.content().to_vec()))
                    .unwrap_or(Entry::Missing),
                _ => Entry::Link,
            }
        };
        let files = match rules.apply(edits, &reader) {
            Ok(f) => f,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let mut update = TreeUpdateBuilder::new();
        for (path, content) in &files {
            // A replaced file keeps its mode (an executable stays executable).
            let mode = match base_tree.get_path(Path::new(path)) {
                Ok(e) if e.filemode() == i32::from(FileMode::BlobExecutable) => {
                    FileMode::BlobExecutable
                }
                _ => FileMode::Blob,
            };
            update.upsert(path, repo.blob(content)?, mode);
        }
        let tree = repo.find_tree(update.create_updated(&repo, &base_tree)?)?;
        let sig = signature(&repo);
        let oid = repo.commit(None, &sig, &sig, message, &tree, &[&parent])?;
        repo.reference(&trial_ref(id), oid, true, "ratchet: trial")?;
        let diff = diff_text(&repo, &base_tree, &tree)?;
        let recipe = rules.experiment.recipe_path();
        let recipe_text = match files.get(recipe.as_str()) {
            Some(c) => String::from_utf8_lossy(c).into_owned(),
            None => match base_tree.get_path(Path::new(&recipe)) {
                Ok(e) => String::from_utf8_lossy(repo.find_blob(e.id())?.content()).into_owned(),
                Err(_) => String::new(),
            },
        };
        Ok(Ok((commit_id(oid), diff, recipe_text)))
    }

    /// The text files of a commit at `paths` (a directory stands for every
    /// file under it), in order, each cut to `max_bytes`; missing paths,
    /// symlinks and binary files are left out.
    pub fn read_files(
        &self,
        commit: &CommitId,
        paths: &[String],
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, ProvenanceError> {
        let repo = self.repo()?;
        let tree = repo.find_commit(git_id(commit)?)?.tree()?;
        let mut out: Vec<(String, String)> = Vec::new();
        let push = |path: String, id: Oid, out: &mut Vec<(String, String)>| {
            if out.iter().any(|(p, _)| *p == path) {
                return;
            }
            if let Ok(blob) = repo.find_blob(id) {
                if let Ok(text) = std::str::from_utf8(blob.content()) {
                    let end = crate::domain::prefix_at_most(text, max_bytes).len();
                    let mut body = text[..end].to_string();
                    if end < text.len() {
                        body.push_str(&format!("\n[... {} more bytes]", text.len() - end));
                    }
                    out.push((path, body));
                }
            }
        };
        for path in paths {
            let Ok(entry) = tree.get_path(Path::new(path)) else {
                continue;
            };
            match entry.kind() {
                Some(ObjectType::Blob) if entry.filemode() != i32::from(FileMode::Link) => {
                    push(path.clone(), entry.id(), &mut out)
                }
                Some(ObjectType::Tree) => {
                    let sub = repo.find_tree(entry.id())?;
                    let mut found = Vec::new();
                    sub.walk(TreeWalkMode::PreOrder, |root, e| {
                        if e.kind() == Some(ObjectType::Blob)
                            && e.filemode() != i32::from(FileMode::Link)
                        {
                            let name = e.name().unwrap_or("_");
                            found.push((format!("{path}/{root}{name}"), e.id()));
                        }
                        TreeWalkResult::Ok
                    })?;
                    for (p, id) in found {
                        push(p, id, &mut out);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Re-applies a trial's change (its commit against its parent commit)
    /// onto `onto`, the incumbent that moved since it was proposed: each file
    /// the trial changed is taken from the trial unless `onto` changed it as
    /// well; the recipe is then merged key by key (`recipe::merge_recipe`), any
    /// other file changed on both sides is a conflict. Returns the merged
    /// tree (objects written, no commit, no ref) and its recipe text, or the
    /// conflict in words.
    pub fn rebase_tree(
        &self,
        trial: &CommitId,
        onto: &CommitId,
        recipe: &str,
    ) -> Result<Result<(MergedTree, String), String>, ProvenanceError> {
        let repo = self.repo()?;
        let (trial, onto) = (git_id(trial)?, git_id(onto)?);
        let Ok(parent) = repo.find_commit(trial)?.parent(0) else {
            return Ok(Err("the trial's commit has no parent to rebase from".into()));
        };
        Ok(merge_tree(&repo, parent.id(), trial, onto, recipe)?.map(|(t, r)| (MergedTree(t), r)))
    }

    /// The displaced incumbent's recipe combined with the trial that
    /// replaced it: what changed from the kept trial's parent to
    /// `displaced` (every keep in between) applied onto `kept`, as
    /// `rebase_tree` does. `Ok(Err(..))` on a conflict, or when `kept`
    /// already has all of it (nothing to combine).
    pub fn combine_tree(
        &self,
        displaced: &CommitId,
        kept: &CommitId,
        recipe: &str,
    ) -> Result<Result<(MergedTree, String), String>, ProvenanceError> {
        let repo = self.repo()?;
        let (displaced, kept) = (git_id(displaced)?, git_id(kept)?);
        let Ok(parent) = repo.find_commit(kept)?.parent(0) else {
            return Ok(Err("the kept commit has no parent to combine from".into()));
        };
        let merged = merge_tree(&repo, parent.id(), displaced, kept, recipe)?;
        let same = |tree: &Oid| -> Result<bool, ProvenanceError> {
            Ok(*tree == repo.find_commit(kept)?.tree_id())
        };
        Ok(match merged {
            Ok((tree, _)) if same(&tree)? => Err("the kept trial already has every change".into()),
            m => m.map(|(t, r)| (MergedTree(t), r)),
        })
    }

    /// Commits a rebased tree (from `rebase_tree`) on `ratchet/trials/<id>`,
    /// with `onto` as its parent. Returns the commit and its diff.
    pub fn commit_rebased(
        &self,
        id: TrialId,
        tree: MergedTree,
        onto: &CommitId,
        message: &str,
    ) -> Result<(CommitId, String), ProvenanceError> {
        let repo = self.repo()?;
        let parent = repo.find_commit(git_id(onto)?)?;
        let tree = repo.find_tree(tree.0)?;
        let sig = signature(&repo);
        let oid = repo.commit(None, &sig, &sig, message, &tree, &[&parent])?;
        repo.reference(&trial_ref(id), oid, true, "ratchet: rebased trial")?;
        let diff = diff_text(&repo, &parent.tree()?, &tree)?;
        Ok((commit_id(oid), diff))
    }

    /// A merge commit on `incumbent` and `trial` whose files are exactly the
    /// trial's: the keep of a trial whose incumbent moved while it was
    /// measured. No ref is moved.
    pub fn commit_keep(
        &self,
        trial: &CommitId,
        incumbent: &CommitId,
        message: &str,
    ) -> Result<CommitId, ProvenanceError> {
        let repo = self.repo()?;
        let (trial, incumbent) = (
            repo.find_commit(git_id(trial)?)?,
            repo.find_commit(git_id(incumbent)?)?,
        );
        let (sig, tree) = (signature(&repo), trial.tree()?);
        let oid = repo.commit(None, &sig, &sig, message, &tree, &[&incumbent, &trial])?;
        Ok(commit_id(oid))
    }

    /// Moves `ratchet/incumbent` to a kept trial's commit.
    pub fn set_incumbent(&self, commit: &CommitId) -> Result<(), ProvenanceError> {
        self.repo()?
            .reference(INCUMBENT_REF, git_id(commit)?, true, "ratchet: keep")?;
        Ok(())
    }

    /// Where `ratchet/incumbent` points, if anywhere.
    pub fn incumbent(&self) -> Result<Option<CommitId>, ProvenanceError> {
        Ok(self
            .repo()?
            .find_reference(INCUMBENT_REF)
            .ok()
            .and_then(|r| r.target())
            .map(commit_id))
    }

    /// Writes a commit's files into `dir` (created; must not hold other files).
    pub fn export(&self, commit: &CommitId, dir: &Path) -> Result<(), ProvenanceError> {
        let repo = self.repo()?;
        let tree = repo.find_commit(git_id(commit)?)?.tree()?;
        write_tree(&repo, &tree, dir)
    }

    /// Puts `paths` (files or directories) in `dir` back exactly as they are
    /// in `commit`: whatever a trial's train command did to them is undone,
    /// and a path the commit lacks is removed.
    pub fn restore(
        &self,
        commit: &CommitId,
        dir: &Path,
        paths: &[String],
    ) -> Result<(), ProvenanceError> {
        let repo = self.repo()?;
        let tree = repo.find_commit(git_id(commit)?)?.tree()?;
        for path in paths {
            let path = path.trim_end_matches('/');
            let target = dir.join(path);
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&target).map_err(io(&target))?,
                Ok(_) => std::fs::remove_file(&target).map_err(io(&target))?,
                Err(_) => {}
            }
            let Ok(entry) = tree.get_path(Path::new(path)) else {
                continue;
            };
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            match entry.kind() {
                Some(ObjectType::Blob) => write_blob(&repo, entry.id(), entry.filemode(), &target)?,
                Some(ObjectType::Tree) => write_tree(&repo, &repo.find_tree(entry.id())?, &target)?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes a tree's files under `dir` (created).
fn write_tree(repo: &Repository, tree: &git2::Tree<'_>, dir: &Path) -> Result<(), ProvenanceError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut failure: Option<ProvenanceError> = None;
    tree.walk(TreeWalkMode::PreOrder, |root, entry| {
        let path = dir.join(root).join(entry.name().unwrap_or("_"));
        let result = match entry.kind() {
            Some(ObjectType::Tree) => std::fs::create_dir_all(&path).map_err(io(&path)),
            Some(ObjectType::Blob) => write_blob(repo, entry.id(), entry.filemode(), &path),
            _ => Ok(()),
        };
        match result {
            Ok(()) => TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(e);
                TreeWalkResult::Abort
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub fn trial_ref(id: TrialId) -> String {
    format!("refs/heads/ratchet/trials/{}", id.0)
}

fn signature(repo: &Repository) -> Signature<'static> {
    repo.signature().unwrap_or_else(|_| {
        Signature::now("ratchet", "ratchet@localhost").expect("a valid signature")
    })
}

fn write_blob(repo: &Repository, id: Oid, mode: i32, path: &Path) -> Result<(), ProvenanceError> {
    let blob = repo.find_blob(id)?;
    std::fs::write(path, blob.content()).map_err(io(path))?;
    if mode == i32::from(FileMode::BlobExecutable) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))?;
    }
    Ok(())
}

/// A tree of the regular files under `dir` (hidden entries, symlinks and
/// `skip` left out), written as git objects.
fn snapshot(repo: &Repository, dir: &Path, skip: &Path) -> Result<Oid, ProvenanceError> {
    let mut builder = repo.treebuilder(None)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') || path == skip {
            continue;
        }
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            let sub = snapshot(repo, &path, skip)?;
            if !repo.find_tree(sub)?.is_empty() {
                builder.insert(&name, sub, i32::from(FileMode::Tree))?;
            }
        } else if kind.is_file() {
            let content = std::fs::read(&path).map_err(io(&path))?;
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                let exec = entry.metadata().map_err(io(&path))?.permissions().mode() & 0o111 != 0;
                if exec {
                    FileMode::BlobExecutable
                } else {
                    FileMode::Blob
                }
            };
            builder.insert(&name, repo.blob(&content)?, i32::from(mode))?;
        }
    }
    Ok(builder.write()?)
}

fn diff_text(
    repo: &Repository,
    old: &git2::Tree<'_>,
    new: &git2::Tree<'_>,
) -> Result<String, ProvenanceError> {
    let diff = repo.diff_tree_to_tree(Some(old), Some(new), None)?;
    let mut out = String::new();
    diff.print(git2::DiffFormat::Patch, |_, _, line| {
        let prefix = match line.origin() {
            '+' | '-' | ' ' => line.origin().to_string(),
            _ => String::new(),
        };
        out.push_str(&prefix);
        out.push_str(&String::from_utf8_lossy(line.content()));
        out.len() < MAX_DIFF
    })
    .or_else(|e| {
        if out.len() >= MAX_DIFF {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    if out.len() >= MAX_DIFF {
        out.truncate(MAX_DIFF);
        out.push_str("\n[diff cut at 64 KiB]\n");
    }
    Ok(out)
}

/// Three-way merge of commits' trees: the changes from `base` to
/// `theirs` applied onto `ours`.
fn merge_tree(
    repo: &Repository,
    base: Oid,
    theirs: Oid,
    ours: Oid,
    recipe: &str,
) -> Result<Result<(Oid, String), String>, ProvenanceError> {
    let (base, theirs, ours) = (
        repo.find_commit(base)?.tree()?,
        repo.find_commit(theirs)?.tree()?,
        repo.find_commit(ours)?.tree()?,
    );
    let entry = |tree: &git2::Tree<'_>, path: &str| {
        tree.get_path(Path::new(path))
            .ok()
            .map(|e| (e.id(), e.filemode()))
    };
    let text = |tree: &git2::Tree<'_>, path: &str| -> Result<String, ProvenanceError> {
        Ok(match tree.get_path(Path::new(path)) {
            Ok(e) => String::from_utf8_lossy(repo.find_blob(e.id())?.content()).into_owned(),
            Err(_) => String::new(),
        })
    };
    let diff = repo.diff_tree_to_tree(Some(&base), Some(&theirs), None)?;
    let mut paths = Vec::new();
    for delta in diff.deltas() {
        let file = delta.new_file().path().or(delta.old_file().path());
        if let Some(p) = file.and_then(|p| p.to_str()) {
            paths.push(p.to_string());
        }
    }
    let mut update = TreeUpdateBuilder::new();
    for path in &paths {
        let (was, want, now) = (entry(&base, path), entry(&theirs, path), entry(&ours, path));
        if now == want {
            continue;
        }
        if now == was {
            match want {
                Some((id, mode)) => {
                    let mode = if mode == i32::from(FileMode::BlobExecutable) {
                        FileMode::BlobExecutable
                    } else {
                        FileMode::Blob
                    };
                    update.upsert(path, id, mode);
                }
                None => {
                    update.remove(path);
                }
            }
            continue;
        }
        if path != recipe {
            return Ok(Err(format!("`{path}` was changed by both")));
        }
        let merged = match crate::recipe::merge_recipe(
            &text(&base, path)?,
            &text(&theirs, path)?,
            &text(&ours, path)?,
        ) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("{recipe}: {e}"))),
        };
        update.upsert(path, repo.blob(merged.as_bytes())?, FileMode::Blob);
    }
    let tree = repo.find_tree(update.create_updated(repo, &ours)?)?;
    let recipe_text = text(&tree, recipe)?;
    Ok(Ok((tree.id(), recipe_text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ParamValue;

    fn experiment() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("recipe.toml"), "# r\n[a]\nx = 1 # the x\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/train.sh"), "echo hi\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("sub/train.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        dir
    }

    #[test]
    fn trials_commit_on_their_branch_and_export_exactly() {
        let exp = experiment();
        let p = Provenance::open_or_init(exp.path()).unwrap();
        let base = p.base(Path::new("/nonexistent")).unwrap();
        assert_eq!(
            p.base(Path::new("/nonexistent")).unwrap(),
            base,
            "the base is reused"
        );
        let mut config = Params::new();
        config.insert("a.x".into(), ParamValue::Int(5));
        let (commit, diff) = p
            .commit_trial(TrialId(1), &base, "recipe.toml", &config, "trial 1")
            .unwrap();
        assert!(
            diff.contains("-x = 1 # the x") && diff.contains("+x = 5 # the x"),
            "{diff}"
        );
        let repo = Repository::open(&p.git_dir).unwrap();
        assert_eq!(
            repo.find_reference(&trial_ref(TrialId(1)))
                .unwrap()
                .target()
                .map(commit_id),
            Some(commit.clone())
        );
        assert_eq!(
            commit_id(
                repo.find_commit(git_id(&commit).unwrap())
                    .unwrap()
                    .parent_id(0)
                    .unwrap()
            ),
            base
        );

        let out = tempfile::tempdir().unwrap();
        p.export(&commit, &out.path().join("w")).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("w/recipe.toml")).unwrap(),
            "# r\n[a]\nx = 5 # the x\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.path().join("w/sub/train.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o100 != 0, "executable bit lost");
        // The experiment directory itself is untouched.
        assert_eq!(
            std::fs::read_to_string(exp.path().join("recipe.toml")).unwrap(),
            "# r\n[a]\nx = 1 # the x\n"
        );

        assert_eq!(p.incumbent().unwrap(), None);
        p.set_incumbent(&commit).unwrap();
        assert_eq!(p.incumbent().unwrap(), Some(commit));
    }

    /// A commit on top of `parent` with `files` replaced.
    fn commit_files(p: &Provenance, parent: &CommitId, files: &[(&str, &str)]) -> CommitId {
        let repo = Repository::open(&p.git_dir).unwrap();
        let parent = repo.find_commit(git_id(parent).unwrap()).unwrap();
        let mut update = TreeUpdateBuilder::new();
        for (path, text) in files {
            let mode = if path.ends_with(".sh") {
                FileMode::BlobExecutable
            } else {
                FileMode::Blob
            };
            update.upsert(*path, repo.blob(text.as_bytes()).unwrap(), mode);
        }
        let tree = update
            .create_updated(&repo, &parent.tree().unwrap())
            .unwrap();
        let tree = repo.find_tree(tree).unwrap();
        let sig = signature(&repo);
        commit_id(
            repo.commit(None, &sig, &sig, "t", &tree, &[&parent])
                .unwrap(),
        )
    }

    #[test]
    fn a_rebase_takes_the_trials_files_and_refuses_a_file_both_changed() {
        let exp = experiment();
        std::fs::write(exp.path().join("recipe.toml"), "[a]\nx = 1\ny = 1\n").unwrap();
        let p = Provenance::open_or_init(exp.path()).unwrap();
        let base = p.base(Path::new("/nonexistent")).unwrap();
        let incumbent = commit_files(
            &p,
            &base,
            &[
                ("recipe.toml", "[a]\nx = 2\ny = 1\n"),
                ("notes.txt", "inc\n"),
            ],
        );
        let trial = commit_files(
            &p,
            &base,
            &[
                ("recipe.toml", "[a]\nx = 1\ny = 3\n"),
                ("sub/train.sh", "echo new\n"),
            ],
        );
        let (tree, recipe) = p
            .rebase_tree(&trial, &incumbent, "recipe.toml")
            .unwrap()
            .expect("no conflict");
        assert_eq!(recipe, "[a]\nx = 2\ny = 3\n");
        let (commit, diff) = p
            .commit_rebased(TrialId(9), tree, &incumbent, "rebased")
            .unwrap();
        assert!(
            diff.contains("+y = 3") && diff.contains("+echo new"),
            "{diff}"
        );
        assert!(
            !diff.contains("notes.txt"),
            "the incumbent's own file is no change: {diff}"
        );
        let out = tempfile::tempdir().unwrap();
        p.export(&commit, &out.path().join("w")).unwrap();
        let read = |f: &str| std::fs::read_to_string(out.path().join("w").join(f)).unwrap();
        assert_eq!(read("notes.txt"), "inc\n");
        assert_eq!(read("sub/train.sh"), "echo new\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.path().join("w/sub/train.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert!(
            mode & 0o100 != 0,
            "the trial's file keeps its executable bit"
        );

        let clash = commit_files(&p, &base, &[("notes.txt", "mine\n")]);
        let e = p
            .rebase_tree(&clash, &incumbent, "recipe.toml")
            .unwrap()
            .unwrap_err();
        assert_eq!(e, "`notes.txt` was changed by both");
        let key = commit_files(&p, &base, &[("recipe.toml", "[a]\nx = 5\ny = 1\n")]);
        let e = p
            .rebase_tree(&key, &incumbent, "recipe.toml")
            .unwrap()
            .unwrap_err();
        assert!(e.contains("`a.x` was changed by both"), "{e}");
    }
}
