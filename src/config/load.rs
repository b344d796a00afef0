//! Loading and validating `specialists.toml` into a `Config`.

use super::*;

pub(super) fn err(
    errors: &mut Vec<ConfigError>,
    file: &Path,
    key: impl Into<String>,
    message: impl Into<String>,
) {
    errors.push(ConfigError {
        file: file.to_path_buf(),
        key: key.into(),
        message: message.into(),
    });
}

/// The `[executor]` section's semantic checks; the Slurm settings (paths
/// absolute) when the backend is Slurm.
pub(super) fn check_executor(
    e: &ExecutorSection,
    base: &Path,
    err: &mut dyn FnMut(&str, String),
) -> Option<SlurmSection> {
    if e.backend != BackendKind::Slurm {
        return None;
    }
    if e.gpus.is_some() {
        err(
            "executor.gpus",
            "GPU slots are for local runs; under Slurm, trials get GPUs with executor.slurm.gpus_per_trial".into(),
        );
    }
    let mut s = e.slurm.clone().unwrap_or_default();
    if s.max_jobs == Some(0) {
        err("executor.slurm.max_jobs", "must be at least 1".into());
    }
    if !(s.poll_secs.is_finite() && s.poll_secs >= 0.1) {
        err(
            "executor.slurm.poll_secs",
            format!("{} is not a number of seconds of at least 0.1", s.poll_secs),
        );
    }
    if let Some(bad) = s.sbatch_args.iter().find(|a| !a.starts_with('-')) {
        err(
            "executor.slurm.sbatch_args",
            format!("`{bad}` is not an option (each entry is one `--name=value`)"),
        );
    }
    if let Some(p) = &s.ratchet {
        s.ratchet = Some(base.join(p));
    }
    if !on_path("sbatch") {
        err(
            "executor.backend",
            "`slurm` needs Slurm's client commands (sbatch, squeue, scancel) on PATH; sbatch is not there".into(),
        );
    }
    Some(s)
}

/// The `executor.gpus*` keys' checks; the settings when `gpus` is set.
pub(super) fn check_gpus(
    e: &ExecutorSection,
    err: &mut dyn FnMut(&str, String),
) -> Option<GpuSettings> {
    let Some(choice) = e.gpus.clone() else {
        for (key, set) in [
            ("executor.gpus_per_trial", e.gpus_per_trial.is_some()),
            ("executor.gpu_poll_secs", e.gpu_poll_secs.is_some()),
            ("executor.evals_on_gpus", e.evals_on_gpus.is_some()),
        ] {
            if set {
                err(key, "only takes effect with executor.gpus".into());
            }
        }
        return None;
    };
    if let GpuChoice::List(list) = &choice {
        if list.is_empty() {
            err(
                "executor.gpus",
                "lists no GPU (leave it out for CPU slots, or say \"auto\")".into(),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = list.iter().find(|i| !seen.insert(**i)) {
            err("executor.gpus", format!("lists GPU {dup} twice"));
        }
    }
    let per_trial = e.gpus_per_trial.unwrap_or(1);
    if per_trial == 0 {
        err("executor.gpus_per_trial", "must be at least 1".into());
    }
    let poll = e.gpu_poll_secs.unwrap_or(1.0);
    if !(poll.is_finite() && (0.1..=3600.0).contains(&poll)) {
        err(
            "executor.gpu_poll_secs",
            format!("{poll} is not a number of seconds between 0.1 and 3600"),
        );
    }
    Some(GpuSettings {
        choice,
        per_trial,
        poll: std::time::Duration::from_secs_f64(poll.clamp(0.1, 3600.0)),
        evals: e.evals_on_gpus.unwrap_or(false),
    })
}

/// Whether `program` is an executable file in a directory of `PATH`.
pub(super) fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

pub(super) fn load_inner(file: &Path, errors: &mut Vec<ConfigError>) -> Option<Config> {
    let file = absolute(file);
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            err(errors, &file, ".", format!("cannot read: {e}"));
            return None;
        }
    };
    let parsed: Option<SpecialistsFile> = parse_collecting(&file, &text, errors);

    // The experiment is validated even when specialists.toml has errors, as long as
    // its path could be read, so one `ratchet check` shows everything.
    let experiment_dir = parsed
        .as_ref()
        .map(|p| p.daemon.experiment.clone())
        .or_else(|| daemon_value(&text, "experiment"))
        .map(|p| base.join(p));
    let experiment = experiment_dir.and_then(|dir| load_experiment(&dir, errors));

    let parsed = parsed?;
    let d = &parsed.daemon;
    if d.slots == 0 {
        err(errors, &file, "daemon.slots", "must be at least 1");
    }
    if d.max_attempts == 0 {
        err(errors, &file, "daemon.max_attempts", "must be at least 1");
    }
    let slurm = check_executor(&parsed.executor, &base, &mut |k, m| {
        err(errors, &file, k, m)
    });
    let gpus = check_gpus(&parsed.executor, &mut |k, m| err(errors, &file, k, m));
    let lineage_dir = base.join(&d.lineage_dir);
    let socket = match &d.socket {
        Some(p) => base.join(p),
        None => default_socket(&lineage_dir),
    };
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        err(
            errors,
            &file,
            "daemon.socket",
            format!(
                "{} is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH} (set daemon.socket to a shorter one)",
                socket.display(),
                socket.as_os_str().len()
            ),
        );
    }
    let http = d.http.as_deref().and_then(|a| match a.parse::<std::net::SocketAddr>() {
        Ok(addr) if !addr.ip().is_loopback() && !d.http_allow_remote => {
            err(
                errors,
                &file,
                "daemon.http",
                format!("{addr} is not a loopback address: anyone who reaches it reads the lineage (use an SSH tunnel to a 127.0.0.1 address, or set daemon.http_allow_remote = true)"),
            );
            None
        }
        Ok(addr) => Some(addr),
        Err(e) => {
            err(
                errors,
                &file,
                "daemon.http",
                format!("{a:?} is not an address and port such as \"127.0.0.1:8787\": {e}"),
            );
            None
        }
    });
    let mut names = BTreeSet::new();
    for (i, s) in parsed.specialists.iter().enumerate() {
        let key = |k: &str| format!("specialist[{i}].{k}");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            err(
                errors,
                &file,
                key("name"),
                format!(
                    "`{}` must be non-empty and use only letters, digits, `_` and `-`",
                    s.name
                ),
            );
        }
        if !names.insert(s.name.clone()) {
            err(
                errors,
                &file,
                key("name"),
                format!("duplicate specialist name `{}`", s.name),
            );
        }
        if s.name == "baseline" {
            err(
                errors,
                &file,
                key("name"),
                "`baseline` is reserved for the experiment's own recipe",
            );
        }
        if s.name == "scout" {
            err(
                errors,
                &file,
                key("name"),
                "`scout` is reserved for the trials of `daemon.scouts`",
            );
        }
        if let Some(exp) = &experiment {
            match exp.surface(&s.surface) {
                None => {
                    let known: Vec<&str> =
                        exp.file.surfaces.iter().map(|s| s.name.as_str()).collect();
                    err(
                        errors,
                        &file,
                        key("surface"),
                        format!(
                            "no surface `{}` in {} (surfaces: {})",
                            s.surface,
                            exp.dir.join("experiment.toml").display(),
                            known.join(", ")
                        ),
                    );
                }
                Some(surface)
                    if matches!(s.kind, SpecialistKind::Manual | SpecialistKind::Llm)
                        && !surface.is_editable() =>
                {
                    err(
                        errors,
                        &file,
                        key("surface"),
                        format!(
                            "surface `{}` declares no params, keys or files to edit",
                            s.surface
                        ),
                    );
                }
                Some(surface) if s.kind == SpecialistKind::Search && surface.params.is_empty() => {
                    err(
                        errors,
                        &file,
                        key("surface"),
                        format!(
                            "surface `{}` declares no params for a search specialist",
                            s.surface
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        check_llm(s, &base, &mut |k, m| err(errors, &file, key(k), m));
        if let Some(path) = &s.instructions {
            if !base.join(path).is_file() {
                err(
                    errors,
                    &file,
                    key("instructions"),
                    format!("file {} does not exist", base.join(path).display()),
                );
            }
        }
    }
    if let Some(path) = &parsed.program {
        if !base.join(path).is_file() {
            err(
                errors,
                &file,
                "program",
                format!("file {} does not exist", base.join(path).display()),
            );
        }
    }
    if parsed.specialists.is_empty() {
        err(
            errors,
            &file,
            "specialist",
            "no [[specialist]] is configured",
        );
    }
    let stop = stop_rules(d, &file, errors);
    let experiment = experiment?;
    Some(Config {
        lineage_dir,
        // Under Slurm, the jobs in the cluster at once take the place of slots.
        slots: slurm.as_ref().and_then(|s| s.max_jobs).unwrap_or(d.slots),
        seed: d.seed,
        socket,
        http,
        drain_timeout_secs: d.drain_timeout_secs,
        max_attempts: d.max_attempts,
        confirm_first: d.confirm_first,
        scouts: d.scouts,
        allocation: d.allocation,
        stop,
        slurm,
        gpus,
        gpu_slots: false,
        specialists: parsed
            .specialists
            .iter()
            .map(|s| Specialist {
                name: s.name.clone(),
                surface: s.surface.clone(),
                kind: s.kind,
                instructions: s.instructions.as_ref().map(|p| base.join(p)),
                program: parsed.program.as_ref().map(|p| base.join(p)),
                llm: (s.kind == SpecialistKind::Llm)
                    .then(|| s.llm_section())
                    .flatten()
                    .map(|mut l| {
                        l.model_path = l.model_path.map(|p| base.join(p));
                        l
                    }),
            })
            .collect(),
        experiment,
        file,
    })
}

/// The llm keys are there exactly for `kind = "llm"`, with sane values.
pub(super) fn check_llm(s: &SpecialistSection, base: &Path, report: &mut dyn FnMut(&str, String)) {
    if s.kind != SpecialistKind::Llm {
        for k in s.llm_keys_set() {
            report(k, "only a kind = \"llm\" specialist takes this key".into());
        }
        return;
    }
    if let Some(path) = &s.model_path {
        check_local(s, &base.join(path), report);
    } else {
        for (k, missing) in [
            ("base_url", s.base_url.is_none()),
            ("model", s.model.is_none()),
        ] {
            if missing {
                report(
                    k,
                    "required for kind = \"llm\" (or model_path, a local GGUF file)".into(),
                );
            }
        }
        for (k, set) in [("device", s.device.is_some())] {
            if set {
                report(k, "only a local model (model_path) takes this key".into());
            }
        }
    }
    if s.instructions.is_none() {
        report(
            "instructions",
            "an llm specialist needs its agent file (agents/<name>.md)".into(),
        );
    }
    let Some(llm) = s.llm_section() else {
        return;
    };
    if llm.model_path.is_none()
        && !(llm.base_url.starts_with("http://") || llm.base_url.starts_with("https://"))
    {
        report(
            "base_url",
            format!("`{}` is not an http:// or https:// URL", llm.base_url),
        );
    }
    if llm.model.trim().is_empty() {
        report("model", "must not be empty".into());
    }
    if let Some(var) = &llm.api_key_env {
        let valid = !var.is_empty()
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !var.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            report("api_key_env", format!("`{var}` is not an environment variable name (the key itself never goes in this file)"));
        } else if std::env::var_os(var).is_none() {
            report(
                "api_key_env",
                format!("environment variable {var} is not set"),
            );
        }
    }
    if let Some(p) = llm.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        report("top_p", format!("{p} is outside (0, 1]"));
    }
    if !(0.0..=2.0).contains(&llm.temperature) {
        report(
            "temperature",
            format!("{} is outside 0..=2", llm.temperature),
        );
    }
    for (k, small) in [
        ("timeout_secs", llm.timeout_secs == 0),
        ("max_requests_per_hour", llm.max_requests_per_hour == 0),
        ("max_tokens_per_hour", llm.max_tokens_per_hour == 0),
        ("max_reply_tokens", llm.max_reply_tokens == 0),
        ("prompt_tokens", llm.prompt_tokens < 500),
    ] {
        if small {
            report(k, "is too small".into());
        }
    }
}

/// A local model: no endpoint keys, and a file the worker can run (its
/// GGUF header read here, so `ratchet check` names what is wrong).
fn check_local(s: &SpecialistSection, path: &Path, report: &mut dyn FnMut(&str, String)) {
    for (k, set) in [
        ("base_url", s.base_url.is_some()),
        ("api_key_env", s.api_key_env.is_some()),
    ] {
        if set {
            report(
                k,
                "a local model (model_path) takes no endpoint keys".into(),
            );
        }
    }
    if let Err(e) = crate::localmodel::inspect(path) {
        report("model_path", e);
    }
    if let Some(device) = &s.device {
        let cuda = device
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if device != "cpu" && !cuda {
            report("device", format!("`{device}`: expected `cpu` or `cuda:N`"));
        } else if cuda && !cfg!(feature = "cuda") {
            report(
                "device",
                format!("`{device}` needs a ratchet built with --features cuda"),
            );
        }
    }
}

/// `[daemon]`'s stop rules; each bad key is an error.
fn stop_rules(d: &DaemonSection, file: &Path, errors: &mut Vec<ConfigError>) -> StopRules {
    let mut duration = |key: &str, text: &Option<String>| {
        let text = text.as_deref()?;
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                err(
                    errors,
                    file,
                    format!("daemon.{key}"),
                    "must be longer than zero",
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                err(
                    errors,
                    file,
                    format!("daemon.{key}"),
                    format!("{text:?} is not a duration ({e}); for example \"48h\", \"90m\" or \"1h 30m\""),
                );
                None
            }
        }
    };
    let after = duration("stop_after", &d.stop_after);
    let no_keep_for = duration("stop_when_no_keep_for", &d.stop_when_no_keep_for);
    if d.stop_after_trials == Some(0) {
        err(
            errors,
            file,
            "daemon.stop_after_trials",
            "must be at least 1",
        );
    }
    StopRules {
        after,
        no_keep_for,
        trials: d.stop_after_trials,
    }
}
