//! Loading and validating an experiment directory: `experiment.toml`
//! and the defaults its recipe holds.

use super::*;

/// Loads and validates `<dir>/experiment.toml` and reads the recipe defaults.
pub fn load_experiment(dir: &Path, errors: &mut Vec<ConfigError>) -> Option<Experiment> {
    let dir = absolute(dir);
    let file = dir.join("experiment.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            err(errors, &file, ".", format!("cannot read: {e}"));
            return None;
        }
    };
    let exp: ExperimentFile = parse_collecting(&file, &text, errors)?;
    let before = errors.len();
    if exp.metric.is_empty() {
        err(errors, &file, "metric", "must not be empty");
    }
    if exp.budget_secs == 0 {
        err(errors, &file, "budget_secs", "must be at least 1");
    }
    if exp.timeout_secs < exp.budget_secs {
        err(
            errors,
            &file,
            "timeout_secs",
            format!(
                "{} is below budget_secs {}: every trial would be killed",
                exp.timeout_secs, exp.budget_secs
            ),
        );
    }
    if exp.train.is_empty() {
        err(errors, &file, "train", "needs a program");
    }
    match exp.score_from {
        ScoreFrom::Eval if exp.eval.proxy.is_empty() => err(
            errors,
            &file,
            "eval.proxy",
            "needs a program (or `score_from = \"train\"`)",
        ),
        ScoreFrom::Train if !exp.eval.proxy.is_empty() => err(
            errors,
            &file,
            "eval.proxy",
            "is not run when `score_from = \"train\"`: the train run's output is the first \
             score (an `eval.full` may confirm it)",
        ),
        ScoreFrom::Train if exp.protected.is_empty() => err(
            errors,
            &file,
            "protected",
            "must name the files that compute the score when `score_from = \"train\"` \
             (autoresearch: [\"prepare.py\"]): ratchet refuses edits of them and restores \
             them before every run",
        ),
        ScoreFrom::Train => {
            for (i, p) in exp.protected.iter().enumerate() {
                if !dir.join(p.trim_end_matches('/')).exists() {
                    err(
                        errors,
                        &file,
                        format!("protected[{i}]"),
                        format!("`{p}` is not in the experiment directory, so it cannot compute the score"),
                    );
                }
            }
        }
        ScoreFrom::Eval => {}
    }
    match (exp.metrics.format, &exp.metrics.pattern) {
        (FormatName::Regex, None) => err(
            errors,
            &file,
            "metrics.pattern",
            "`format = \"regex\"` needs a pattern with named groups",
        ),
        (FormatName::Regex, Some(_)) => {
            if let Err(m) = exp.metrics.format().reader() {
                err(errors, &file, "metrics.pattern", m);
            }
        }
        (_, Some(_)) => err(
            errors,
            &file,
            "metrics.pattern",
            "is read only with `format = \"regex\"`",
        ),
        _ => {}
    }
    if exp.eval.full.as_ref().is_some_and(|f| f.is_empty()) {
        err(errors, &file, "eval.full", "needs a program");
    }
    if exp.noise.band.is_some() {
        err(
            errors,
            &file,
            "noise.band",
            "was replaced by noise.false_keep_rate: the most a change that is no better may be \
             kept (for example 0.05); a keep now needs a gain clear of the pooled noise at that rate",
        );
    }
    let rate = exp.noise.false_keep_rate;
    if !(rate.is_finite() && rate > 0.0 && rate < 0.5) {
        err(
            errors,
            &file,
            "noise.false_keep_rate",
            "must be a probability above 0 and below 0.5 (for example 0.05)",
        );
    }
    if let Some(prune) = &exp.prune {
        let rate = prune.false_prune_rate;
        if !(rate.is_finite() && rate > 0.0 && rate < 0.5) {
            err(
                errors,
                &file,
                "prune.false_prune_rate",
                "must be a probability above 0 and below 0.5 (for example 0.05)",
            );
        }
        if prune.looks.is_empty()
            || prune
                .looks
                .iter()
                .any(|f| !(f.is_finite() && *f > 0.0 && *f < 1.0))
            || prune.looks.windows(2).any(|w| w[0] >= w[1])
        {
            err(
                errors,
                &file,
                "prune.looks",
                "must be increasing shares of the curve between 0 and 1 (for example [0.25, 0.5, 0.75])",
            );
        }
        if !crate::process::is_metric_name(&prune.metric) {
            err(
                errors,
                &file,
                "prune.metric",
                "must be the NAME of progress lines NAME=value at=POSITION",
            );
        }
        for s in prune.surfaces.iter().flatten() {
            if !exp.surfaces.iter().any(|d| &d.name == s) {
                err(
                    errors,
                    &file,
                    "prune.surfaces",
                    format!("names surface {s:?}, which the experiment does not declare"),
                );
            }
        }
    }
    if exp.noise.seeds > 64 {
        err(errors, &file, "noise.seeds", "at most 64 seed re-runs");
    }
    let mut gated = BTreeSet::new();
    for (i, g) in exp.gates.metric.iter().enumerate() {
        let key = format!("gates.metric[{i}]");
        if let Err(m) = g.check() {
            err(errors, &file, key, m);
        } else if !gated.insert(g.name.as_str()) {
            err(
                errors,
                &file,
                key,
                format!("a second gate on `{}`: give one gate both bounds", g.name),
            );
        }
    }
    if let Some(pre) = &exp.preflight {
        if pre.command.is_empty() {
            err(errors, &file, "preflight.command", "needs a program");
        }
        if pre.timeout_secs == 0 {
            err(
                errors,
                &file,
                "preflight.timeout_secs",
                "must be at least 1",
            );
        }
    }
    if exp.gates.max_memory_mb == Some(0) {
        err(errors, &file, "gates.max_memory_mb", "must be at least 1");
    }
    if exp.eval.timeout_secs == Some(0) {
        err(errors, &file, "eval.timeout_secs", "must be at least 1");
    }
    // One spelling of the recipe's path: edits and surfaces compare by text.
    let recipe_str = exp.recipe_path();
    if exp.recipe.is_none() {
        for (i, s) in exp.surfaces.iter().enumerate() {
            if !(s.params.is_empty() && s.keys.is_empty()) {
                err(
                    errors,
                    &file,
                    format!("surface[{i}]"),
                    "declares recipe keys, but the experiment names no `recipe`",
                );
            }
        }
    } else if let Err(m) = crate::recipe::check_relative(&recipe_str) {
        err(
            errors,
            &file,
            "recipe",
            format!("must be a plain relative path inside the experiment directory: {m}"),
        );
    }
    for (i, p) in exp.protected.iter().enumerate() {
        if let Err(m) = crate::recipe::check_relative(p.trim_end_matches('/')) {
            err(errors, &file, format!("protected[{i}]"), m);
        }
    }
    if exp.recipe.is_some() && exp.is_protected(&recipe_str) {
        err(
            errors,
            &file,
            "protected",
            format!("protects the recipe `{recipe_str}`, which every surface edits"),
        );
    }
    let mut surface_names = BTreeSet::new();
    let mut param_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, s) in exp.surfaces.iter().enumerate() {
        if !surface_names.insert(s.name.as_str()) {
            err(
                errors,
                &file,
                format!("surface[{i}].name"),
                format!("duplicate surface `{}`", s.name),
            );
        }
        for (j, f) in s.files.iter().enumerate() {
            let key = format!("surface[{i}].files[{j}]");
            if let Err(m) = crate::recipe::check_relative(f.trim_end_matches('/')) {
                err(errors, &file, key, m);
            } else if exp.is_protected(f) {
                err(errors, &file, key, format!("`{f}` is protected"));
            } else if exp.recipe.is_some() && under(&recipe_str, f, '/') {
                err(
                    errors,
                    &file,
                    key,
                    format!(
                        "the recipe `{recipe_str}` is edited through params and keys, not files"
                    ),
                );
            }
        }
        for (j, k) in s.keys.iter().enumerate() {
            let others = exp.surfaces.iter().filter(|o| o.name != s.name);
            let taken = others
                .flat_map(|o| o.params.keys().chain(&o.keys).map(move |p| (o, p)))
                .find(|(_, p)| under(p, k, '.') || under(k, p, '.'));
            if let Some((o, p)) = taken {
                err(
                    errors,
                    &file,
                    format!("surface[{i}].keys[{j}]"),
                    format!("`{k}` overlaps `{p}` of surface `{}`", o.name),
                );
            }
            if k.is_empty() || k.split('.').any(str::is_empty) {
                err(
                    errors,
                    &file,
                    format!("surface[{i}].keys[{j}]"),
                    format!("`{k}` is not a dotted recipe key"),
                );
            }
        }
        for (k, cond) in &s.when {
            let key = format!("surface[{i}].when.{}", quote_key(k));
            if !s.params.contains_key(k) {
                err(
                    errors,
                    &file,
                    key.clone(),
                    format!("`{k}` is not a parameter of surface `{}`", s.name),
                );
            }
            if cond.is_empty() {
                err(errors, &file, key.clone(), "names no parameter".to_string());
            }
            for (c, values) in cond {
                let spec = exp.params().find(|(p, _)| *p == c).map(|(_, spec)| spec);
                match spec {
                    None => err(
                        errors,
                        &file,
                        format!("{key}.{}", quote_key(c)),
                        format!("`{c}` is not a declared parameter"),
                    ),
                    Some(_) if c == k => err(
                        errors,
                        &file,
                        format!("{key}.{}", quote_key(c)),
                        "a parameter cannot depend on itself".to_string(),
                    ),
                    Some(_) if values.is_empty() => err(
                        errors,
                        &file,
                        format!("{key}.{}", quote_key(c)),
                        "lists no value".to_string(),
                    ),
                    Some(spec) => {
                        for v in values.iter().filter(|v| !spec.contains(&spec.normalize(v))) {
                            err(
                                errors,
                                &file,
                                format!("{key}.{}", quote_key(c)),
                                format!("{v} is outside the declared space of `{c}`"),
                            );
                        }
                    }
                }
            }
        }
        for k in s.cost.keys() {
            let key = format!("surface[{i}].cost.{}", quote_key(k));
            match s.params.get(k) {
                None => err(
                    errors,
                    &file,
                    key,
                    format!("`{k}` is not a parameter of surface `{}`", s.name),
                ),
                Some(spec) if !crate::recipe::is_ordered(spec) => err(
                    errors,
                    &file,
                    key,
                    format!("`{k}` has no order (a choice of values that are not all numbers): a cost needs larger values"),
                ),
                Some(_) => {}
            }
        }
        for (k, spec) in &s.params {
            let key = format!("surface[{i}].params.{}", quote_key(k));
            if let Err(m) = spec.check() {
                err(errors, &file, key.clone(), m);
            }
            if let Some(other) = param_owner.insert(k, &s.name) {
                err(
                    errors,
                    &file,
                    key,
                    format!("parameter already belongs to surface `{other}`"),
                );
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    let defaults = match &exp.recipe {
        Some(recipe) => read_defaults(&dir.join(recipe), &exp, errors)?,
        None => Params::new(),
    };
    Some(Experiment {
        dir,
        file: exp,
        defaults,
    })
}

/// Reads the recipe's value of every declared parameter and checks it against its space.
pub(super) fn read_defaults(
    recipe: &Path,
    exp: &ExperimentFile,
    errors: &mut Vec<ConfigError>,
) -> Option<Params> {
    let text = match std::fs::read_to_string(recipe) {
        Ok(t) => t,
        Err(e) => {
            err(errors, recipe, ".", format!("cannot read the recipe: {e}"));
            return None;
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            err(
                errors,
                recipe,
                ".",
                format!("invalid TOML: {}", one_line(&e.to_string())),
            );
            return None;
        }
    };
    let mut defaults = Params::new();
    let before = errors.len();
    for s in &exp.surfaces {
        for (k, spec) in &s.params {
            match param_of(&table, k, spec) {
                None => err(errors, recipe, k.clone(), format!("surface `{}` declares this parameter but the recipe has no such key (or not a number, string or bool)", s.name)),
                Some(v) if !spec.contains(&v) => err(errors, recipe, k.clone(), format!("value {v} is outside the declared space {spec:?}")),
                Some(v) => {
                    defaults.insert(k.clone(), v);
                }
            }
        }
    }
    (errors.len() == before).then_some(defaults)
}
