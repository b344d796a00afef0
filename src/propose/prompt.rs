//! The prompt of an LLM specialist: its agent file, its surface and the
//! incumbent's files of that surface, and the shared lineage feedback (recent
//! trials of every specialist with outcome and metric delta, outcome counts,
//! the incumbent history, and what failures taught), cut to a token budget by
//! dropping the oldest feedback first.

use std::fmt::Write;

use crate::config::{ExperimentFile, SurfaceSection};
use crate::domain::{
    format_float, prefix_at_most, Decision, Direction, Incumbent, Trial, TrialId, TrialStatus,
};
use crate::lineage::Feedback;
use crate::recipe::ParamSpec;

/// Characters per token, for budgeting without a tokenizer.
const CHARS_PER_TOKEN: usize = 4;
/// The most of one trial's detail quoted in feedback.
const MAX_DETAIL: usize = 200;

/// How a reply must look; appended to every agent file.
pub const REPLY_FORMAT: &str = r#"# Reply format

Reply with one JSON object and nothing else:

{"hypothesis": "<one sentence: what you change and why it should improve the metric>",
 "edits": [<one or more edits>],
 "expected_delta": <optional: the change of the metric you expect, your trial's
                    score minus the incumbent's, in the metric's units>}

Edit kinds:
- {"kind": "set", "values": {"<recipe key>": <value>, ...}}: assign recipe keys
  of your surface; declared parameters must stay inside their spaces.
- {"kind": "search_replace", "path": "<file>", "search": "<exact text>", "replace": "<new text>"}:
  the search text must occur exactly once in the incumbent's file.
- {"kind": "replace", "path": "<file>", "content": "<whole new file>"}

Paths are relative to the experiment directory. Only your surface's recipe keys
and files may change; anything else is refused as illegal_edit and wastes a
trial. Propose something not already measured in the feedback below."#;

pub struct PromptInput<'a> {
    /// The agent file's text.
    pub instructions: &'a str,
    pub specialist: &'a str,
    pub experiment: &'a ExperimentFile,
    pub surface: &'a SurfaceSection,
    pub incumbent: Option<&'a Incumbent>,
    /// The incumbent's recipe values of the surface's parameters.
    pub values: &'a crate::domain::Params,
    /// The incumbent's files the surface may edit (the recipe first), with content.
    pub files: &'a [(String, String)],
    pub feedback: &'a Feedback,
    /// The last lines of stderr of failed recent trials, by id.
    pub stderr_tails: &'a std::collections::BTreeMap<TrialId, String>,
    /// The whole prompt's budget in tokens (estimated at 4 characters each).
    pub budget_tokens: usize,
}

/// The system and user messages.
pub fn build(input: &PromptInput<'_>) -> (String, String) {
    let system = format!("{}\n\n{REPLY_FORMAT}\n", input.instructions.trim_end());
    let budget = input.budget_tokens * CHARS_PER_TOKEN;
    let head = header(input);
    let history = incumbents(input);
    let (rows, constraints) = (rows(input), constraints(input));
    let fixed = system.len() + head.len() + history.len() + 400;

    // Files get what the fixed parts leave, each cut to its share if needed.
    let room_for_files = budget.saturating_sub(fixed) * 2 / 3;
    let files = files(input.files, &input.feedback.recent, room_for_files);

    let mut room = budget.saturating_sub(fixed + files.len());
    let mut kept_constraints = Vec::new();
    for c in &constraints {
        if c.len() > room {
            break;
        }
        room -= c.len();
        kept_constraints.push(c.as_str());
    }
    let mut kept_rows = Vec::new();
    for r in &rows {
        if r.len() > room {
            break;
        }
        room -= r.len();
        kept_rows.push(r.as_str());
    }

    let mut user = String::new();
    user.push_str(&head);
    user.push_str(&files);
    user.push_str("\n# Lineage feedback (every specialist's trials)\n\n");
    let f = input.feedback;
    if f.total == 0 {
        user.push_str("No trial has run yet.\n");
    } else {
        let counts: Vec<String> = f.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            user,
            "Outcomes of the latest {} of {} trials: {}.",
            f.scanned,
            f.total,
            counts.join(", ")
        );
    }
    user.push_str(&history);
    if !kept_rows.is_empty() {
        let _ = writeln!(
            user,
            "\nRecent trials, newest first ({} of {} shown):",
            kept_rows.len(),
            f.total
        );
        for r in &kept_rows {
            user.push_str(r);
        }
    }
    if !kept_constraints.is_empty() {
        user.push_str("\nConstraints learned from failures (do not repeat these):\n");
        for c in &kept_constraints {
            user.push_str(c);
        }
    }
    user.push_str("\nPropose one trial now, as the JSON object described.\n");
    (system, user)
}

fn header(input: &PromptInput<'_>) -> String {
    let e = input.experiment;
    let s = input.surface;
    let better = match e.direction {
        Direction::Minimize => "lower is better",
        Direction::Maximize => "higher is better",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Task\n\nYou are specialist `{}`, responsible for surface `{}` of experiment `{}`.\n\
         The metric is {} ({better}). Every trial trains for the same wall-clock budget of {} s,\n\
         so a change wins only if it learns more within that time.",
        input.specialist, s.name, e.name, e.metric, e.budget_secs
    );
    let _ = writeln!(out, "\n# Your surface `{}`\n", s.name);
    if let Some(recipe) = &e.recipe {
        let _ = writeln!(out, "Recipe file: {}", recipe.display());
    }
    if !s.params.is_empty() {
        out.push_str("Declared parameters (current value, space):\n");
        for (k, spec) in &s.params {
            let current = input
                .values
                .get(k)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into());
            let matters = match s.when.get(k) {
                Some(cond) => {
                    let parts: Vec<String> = cond
                        .iter()
                        .map(|(c, values)| {
                            let vs: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                            format!("{c} is {}", vs.join(" or "))
                        })
                        .collect();
                    format!("; matters only when {}", parts.join(" and "))
                }
                None => String::new(),
            };
            let _ = writeln!(out, "- {k} = {current}  ({}{matters})", space(spec));
        }
    }
    if !s.keys.is_empty() {
        let _ = writeln!(
            out,
            "More recipe keys you may set (any value): {}",
            s.keys.join(", ")
        );
    }
    if !s.files.is_empty() {
        let _ = writeln!(out, "Files you may edit: {}", s.files.join(", "));
    }
    if e.score_from == crate::config::ScoreFrom::Train {
        let names: Vec<String> = e.scored_names().iter().map(|n| format!("`{n}`")).collect();
        let _ = writeln!(
            out,
            "The train run prints the score itself: leave every line that names {} exactly as \
             it is (an edit that changes, adds or removes one is refused), and do not edit \
             the protected files ({}).",
            names.join(" or "),
            e.protected.join(", ")
        );
    }
    match input.incumbent {
        Some(inc) => {
            let _ = writeln!(
                out,
                "\nThe incumbent is trial #{} with {} = {}; your edit applies to its files.",
                inc.trial,
                e.metric,
                format_float(inc.score)
            );
        }
        None => {
            out.push_str("\nNo incumbent yet: your edit applies to the experiment's own files.\n")
        }
    }
    out
}

fn space(spec: &ParamSpec) -> String {
    match spec {
        ParamSpec::Int { min, max } => format!("integer {min}..={max}"),
        ParamSpec::Float { min, max } => format!("float {min}..={max}"),
        ParamSpec::LogFloat { min, max } => format!("float {min}..={max}, log scale"),
        ParamSpec::Choice { values } => {
            let v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            format!("one of {}", v.join(", "))
        }
    }
}

fn files(files: &[(String, String)], recent: &[Trial], room: usize) -> String {
    if files.is_empty() {
        return String::new();
    }
    let share = room / files.len();
    let mut out = String::from("\n# Current files\n");
    for (path, content) in files {
        let body = if content.len() > share {
            let body = excerpt(content, &changed_lines(recent, path), share);
            format!(
                "[An excerpt: the file has {} bytes; shown are its start and the parts recent \
                 trials changed. Search texts must come from the lines shown.]\n{body}",
                content.len()
            )
        } else {
            content.clone()
        };
        let _ = writeln!(out, "\n## {path}\n```\n{}\n```", body.trim_end());
    }
    out
}

/// Lines on either side of a changed line that an excerpt shows.
const CONTEXT_LINES: usize = 12;
/// The first lines of a file an excerpt always shows (imports, settings).
const HEAD_LINES: usize = 30;

/// The lines recent trials' search/replace edits of `path` searched for or
/// wrote, newest trial first (a file too long for the prompt is shown
/// around them).
fn changed_lines(recent: &[Trial], path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in recent {
        for e in &t.edits {
            if let crate::domain::Edit::SearchReplace {
                path: p,
                search,
                replace,
            } = e
            {
                if p == path {
                    out.extend(
                        replace
                            .lines()
                            .chain(search.lines())
                            .map(str::trim)
                            .filter(|l| l.len() >= 6)
                            .map(str::to_string),
                    );
                }
            }
        }
    }
    out
}

/// At most `room` bytes of `content`: its head, then windows around the
/// lines that match `changed` (in that order), then the rest from the top
/// as room allows; what is left out is marked with the line numbers.
fn excerpt(content: &str, changed: &[String], room: usize) -> String {
    let lines: Vec<&str> = content.lines().collect();
    let n = lines.len();
    let mut shown = vec![false; n];
    let mut used = 0usize;
    let mut take = |range: std::ops::Range<usize>, shown: &mut Vec<bool>| -> bool {
        let cost: usize = range
            .clone()
            .filter(|&i| !shown[i])
            .map(|i| lines[i].len() + 1)
            .sum();
        if used + cost > room {
            return false;
        }
        used += cost;
        range.for_each(|i| shown[i] = true);
        true
    };
    take(0..HEAD_LINES.min(n), &mut shown);
    let mut windows = Vec::new();
    for text in changed {
        for (i, l) in lines.iter().enumerate() {
            if l.trim() == text && !windows.contains(&i) {
                windows.push(i);
            }
        }
    }
    for i in windows {
        let range = i.saturating_sub(CONTEXT_LINES)..(i + CONTEXT_LINES + 1).min(n);
        if !take(range, &mut shown) {
            break;
        }
    }
    for i in 0..n {
        if !shown[i] && !take(i..i + 1, &mut shown) {
            break;
        }
    }
    let mut out = String::new();
    let mut i = 0;
    while i < n {
        if shown[i] {
            out.push_str(lines[i]);
            out.push('\n');
            i += 1;
        } else {
            let start = i;
            while i < n && !shown[i] {
                i += 1;
            }
            let _ = writeln!(out, "[... lines {}-{} not shown ...]", start + 1, i);
        }
    }
    out
}

fn incumbents(input: &PromptInput<'_>) -> String {
    let list = &input.feedback.incumbents;
    if list.is_empty() {
        return String::new();
    }
    // The first and the latest ten: how the ratchet moved.
    let skip = list.len().saturating_sub(10);
    let mut steps: Vec<String> = Vec::new();
    if skip > 0 {
        steps.push(format!(
            "#{} {}",
            list[0].trial,
            format_float(list[0].score)
        ));
        steps.push("…".into());
    }
    for inc in &list[skip..] {
        steps.push(format!("#{} {}", inc.trial, format_float(inc.score)));
    }
    format!("Incumbent history: {}.\n", steps.join(" → "))
}

/// One line per recent trial, newest first.
fn rows(input: &PromptInput<'_>) -> Vec<String> {
    let metric = &input.experiment.metric;
    input
        .feedback
        .recent
        .iter()
        .map(|t| {
            let mut line = format!("- #{} [{}] {}", t.id, t.specialist, outcome(t));
            if let Some(s) = t.score {
                let _ = write!(line, " {metric}={}", format_float(s));
                if let Some(p) = t.parent_score {
                    let _ = write!(line, " (Δ {:+.4} vs {})", s - p, format_float(p));
                }
            }
            // Its own predictions against what was measured.
            if let Some(e) = t
                .expected_delta
                .filter(|_| t.specialist == input.specialist)
            {
                let _ = write!(line, " (you expected Δ {e:+.4})");
            }
            let _ = write!(
                line,
                " — \"{}\" — edit: {}",
                one_line(&t.hypothesis, 300),
                one_line(&t.edit_summary(), 300)
            );
            // How close a trial on GPUs came to their memory (batch sizes,
            // widths and out-of-memory failures are read against it).
            if let Some(g) = t.train.as_ref().and_then(|r| r.gpu.as_deref()) {
                if let (Some(peak), Some(total)) = (
                    g.peak_memory_mib,
                    g.devices.iter().map(|d| d.memory_mib).min(),
                ) {
                    let _ = write!(line, " — GPU memory peak {peak} of {total} MiB");
                }
            }
            if t.false_peak || t.decision == Some(Decision::Pruned) {
                // Which stage did not confirm the proxy's win, by how much;
                // where a stopped run's curve stood against the incumbent's.
                if let Some(d) = &t.detail {
                    let _ = write!(line, " — {}", one_line(d, MAX_DETAIL));
                }
            }
            if t.label.is_some() {
                if let Some(d) = &t.detail {
                    let _ = write!(line, " — {}", one_line(d, MAX_DETAIL));
                }
                if let Some(tail) = input.stderr_tails.get(&t.id) {
                    let _ = write!(line, " — stderr: {}", one_line(tail, MAX_DETAIL));
                }
            }
            line.push('\n');
            line
        })
        .collect()
}

/// The failures among the recent trials, as things not to do again.
fn constraints(input: &PromptInput<'_>) -> Vec<String> {
    input
        .feedback
        .recent
        .iter()
        .filter(|t| t.status == TrialStatus::Failed)
        .filter_map(|t| {
            let label = t.label?;
            Some(format!(
                "- {label} (#{}): {}{}\n",
                t.id,
                one_line(&t.edit_summary(), 300),
                t.detail
                    .as_deref()
                    .map(|d| format!(" → {}", one_line(d, MAX_DETAIL)))
                    .unwrap_or_default()
            ))
        })
        .take(20)
        .collect()
}

fn outcome(t: &Trial) -> String {
    match (t.label, t.decision) {
        (Some(l), _) => format!("failed: {l}"),
        (None, Some(d)) if t.status == TrialStatus::Kept => format!("kept ({})", d.as_str()),
        (None, Some(Decision::Rebased)) => match t.rebased_as {
            Some(to) => format!("won, rebased onto the new incumbent as #{to}"),
            None => "won, rebased onto the new incumbent".into(),
        },
        (None, Some(d)) if t.false_peak => format!("discarded ({}, false peak)", d.as_str()),
        (None, Some(d)) => format!("discarded ({})", d.as_str()),
        (None, None) => t.status.to_string(),
    }
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() <= max {
        return s;
    }
    format!("{}…", prefix_at_most(&s, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FailureLabel, Params};

    fn experiment() -> ExperimentFile {
        toml::from_str(
            r#"
            name = "t"
            recipe = "recipe.toml"
            metric = "loss"
            direction = "minimize"
            budget_secs = 20
            timeout_secs = 60
            train = ["true"]
            [eval]
            proxy = ["true"]
            [[surface]]
            name = "opt"
            files = ["model.py"]
            [surface.params]
            "opt.lr" = { type = "log_float", min = 0.0001, max = 0.1 }
            "#,
        )
        .unwrap()
    }

    fn trial(id: u64, hypothesis: &str, label: Option<FailureLabel>) -> Trial {
        let mut t: Trial = serde_json::from_value(serde_json::json!({
            "id": id, "attempt": 1, "specialist": "opt", "surface": "opt", "parent": null,
            "hypothesis": hypothesis, "changes": {}, "config": {}, "status": "failed",
            "label": null, "decision": null, "score": null, "parent_score": null,
            "detail": null, "history": [], "trial_dir": null, "pgid": null,
            "train": null, "eval": null
        }))
        .unwrap();
        t.label = label;
        if label.is_none() {
            t.status = TrialStatus::Discarded;
            t.decision = Some(crate::domain::Decision::Regressed);
            t.score = Some(2.0);
            t.parent_score = Some(1.5);
        } else {
            t.detail = Some("exit status 3".into());
        }
        t.id = TrialId(id);
        t
    }

    fn prompt(feedback: &Feedback, budget: usize) -> (String, String) {
        prompt_of(&experiment(), feedback, budget)
    }

    fn prompt_of(exp: &ExperimentFile, feedback: &Feedback, budget: usize) -> (String, String) {
        let files = vec![("model.py".to_string(), "x = 1\n".repeat(10))];
        build(&PromptInput {
            instructions: "You tune optimizers.",
            specialist: "opt",
            experiment: exp,
            surface: &exp.surfaces[0],
            incumbent: None,
            values: &Params::new(),
            files: &files,
            feedback,
            stderr_tails: &Default::default(),
            budget_tokens: budget,
        })
    }

    #[test]
    fn feedback_names_trials_labels_and_deltas() {
        let mut f = Feedback {
            recent: vec![
                trial(7, "crash on purpose", Some(FailureLabel::Crash)),
                trial(6, "slower lr", None),
            ],
            total: 7,
            scanned: 7,
            ..Default::default()
        };
        let mut peak = trial(5, "warmup helps", None);
        peak.decision = Some(Decision::WithinNoise);
        peak.false_peak = true;
        peak.detail = Some("false peak: won on proxy (1.2), not on full 1.49".into());
        let mut stale = trial(4, "wider", None);
        stale.decision = Some(Decision::Rebased);
        stale.rebased_as = Some(TrialId(8));
        f.recent.extend([peak, stale]);
        f.recent[1].train = Some(crate::domain::ProcessReport {
            gpu: Some(Box::new(crate::domain::GpuUse {
                devices: vec![crate::domain::GpuDevice {
                    index: 0,
                    uuid: "GPU-1".into(),
                    name: "H100".into(),
                    memory_mib: 81559,
                }],
                samples: 3,
                peak_memory_mib: Some(70123),
                mean_util_pct: Some(90.0),
                ..Default::default()
            })),
            ..Default::default()
        });
        let (system, user) = prompt(&f, 8000);
        assert!(
            user.contains("\"slower lr\" — edit: (no change) — GPU memory peak 70123 of 81559 MiB"),
            "{user}"
        );
        assert!(
            user.contains("#5 [opt] discarded (within_noise, false peak)")
                && user.contains("not on full 1.49"),
            "{user}"
        );
        assert!(
            user.contains("#4 [opt] won, rebased onto the new incumbent as #8"),
            "{user}"
        );
        assert!(system.starts_with("You tune optimizers.") && system.contains("search_replace"));
        assert!(system.contains("expected_delta"), "{system}");
        assert!(user.contains("#7 [opt] failed: crash"), "{user}");
        assert!(user.contains("\"crash on purpose\""), "{user}");
        assert!(user.contains("loss=2.0 (Δ +0.5000 vs 1.5)"), "{user}");
        assert!(user.contains("- crash (#7)"), "{user}");
        assert!(
            user.contains("opt.lr = -  (float 0.0001..=0.1, log scale)"),
            "{user}"
        );
        assert!(user.contains("## model.py"), "{user}");
    }

    #[test]
    fn the_oldest_feedback_goes_first_when_over_budget() {
        let recent: Vec<Trial> = (1..=200)
            .rev()
            .map(|i| {
                trial(
                    i,
                    &format!("hypothesis number {i} {}", "pad ".repeat(20)),
                    None,
                )
            })
            .collect();
        let f = Feedback {
            recent,
            total: 200,
            scanned: 200,
            ..Default::default()
        };
        let (system, user) = prompt(&f, 2000);
        assert!(
            (system.len() + user.len()) / CHARS_PER_TOKEN <= 2000,
            "{}",
            user.len()
        );
        assert!(user.contains("#200 "), "the newest trial must stay");
        assert!(!user.contains("#1 [opt]"), "the oldest trial must go");
    }

    #[test]
    fn a_specialist_sees_its_own_predictions_beside_the_measurements() {
        let mut mine = trial(3, "mine", None);
        mine.expected_delta = Some(-0.25);
        let mut theirs = trial(2, "theirs", None);
        theirs.specialist = "data".into();
        theirs.expected_delta = Some(-0.75);
        let f = Feedback {
            recent: vec![mine, theirs],
            total: 3,
            scanned: 3,
            ..Default::default()
        };
        let (_, user) = prompt(&f, 8000);
        assert!(
            user.contains("(Δ +0.5000 vs 1.5) (you expected Δ -0.2500)"),
            "{user}"
        );
        assert!(
            !user.contains("-0.7500"),
            "another's prediction is not this one's: {user}"
        );
    }

    #[test]
    fn a_train_scored_prompt_says_which_lines_stay() {
        let mut exp = experiment();
        let (_, user) = prompt(&Feedback::default(), 4000);
        assert!(!user.contains("prints the score itself"), "{user}");
        exp.score_from = crate::config::ScoreFrom::Train;
        exp.protected = vec!["prepare.py".into()];
        let (_, user) = prompt_of(&exp, &Feedback::default(), 4000);
        assert!(
            user.contains("leave every line that names `loss` exactly as it is")
                && user.contains("(prepare.py)"),
            "{user}"
        );
    }

    #[test]
    fn a_file_too_long_for_the_prompt_is_shown_around_what_recent_trials_changed() {
        let content: String = (1..=600).map(|i| format!("line_{i:03} = {i}\n")).collect();
        let mut t = trial(7, "edit", None);
        t.edits = vec![crate::domain::Edit::SearchReplace {
            path: "train.py".into(),
            search: "line_400 = 400".into(),
            replace: "line_400 = 401".into(),
        }];
        let recent = vec![t];
        // The incumbent holds the trial's replace text: its line is found.
        let content = content.replace("line_400 = 400", "line_400 = 401");
        let room = 3000;
        let shown = excerpt(&content, &changed_lines(&recent, "train.py"), room);
        assert!(shown.len() <= room + 200, "{} bytes", shown.len());
        assert!(shown.starts_with("line_001 = 1\n"));
        for around in ["line_388 = 388", "line_400 = 401", "line_412 = 412"] {
            assert!(shown.contains(around), "{around} missing:\n{shown}");
        }
        assert!(!shown.contains("line_300 = 300\n"));
        assert!(shown.contains("[... lines "), "{shown}");
        // Every line shown is a line of the file, in order (search texts
        // copied from it apply).
        let lines: Vec<&str> = content.lines().collect();
        let mut at = 0;
        for l in shown.lines().filter(|l| !l.starts_with("[... ")) {
            at += lines[at..]
                .iter()
                .position(|x| x == &l)
                .expect("a line of the file");
        }
        // Another file's edits do not move the windows.
        let other = excerpt(&content, &changed_lines(&recent, "prepare.py"), room);
        assert!(!other.contains("line_400 = 401"));
        // A file that fits is shown whole.
        let files = vec![("train.py".to_string(), content.clone())];
        assert!(files_of(&files, &recent, content.len() + 10).contains("line_600 = 600"));
    }

    fn files_of(files: &[(String, String)], recent: &[Trial], room: usize) -> String {
        super::files(files, recent, room)
    }
}
