//! `ratchet check`: every configuration error at once, with file and key path.

mod common;

use common::{stderr, Dir};

#[test]
fn unknown_key_and_wrong_type_are_both_named() {
    let dir = Dir::with_fixture("faulty");
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nslots = \"two\"\n\n[[specialist]]\nname = \"x\"\nsurface = \"search\"\nkind = \"search\"\ntemprature = 0.7\n",
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("specialists.toml: daemon.slots: invalid type"),
        "{err}"
    );
    assert!(
        err.contains("specialists.toml: specialist[0].temprature: unknown field"),
        "{err}"
    );
}

#[test]
fn experiment_errors_are_reported_with_the_experiment_file() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "nosuchsurface")]);
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &exp.replace("budget_secs = 1", "budget_secs = 1\nbugdet = 3")
            .replace("timeout_secs = 2", "timeout_secs = \"2\""),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("experiment.toml: bugdet: unknown field"),
        "{err}"
    );
    assert!(
        err.contains("experiment.toml: timeout_secs: invalid type"),
        "{err}"
    );

    // Once the experiment is fixed, the specialist's unknown surface is reported.
    dir.write("experiment/experiment.toml", &exp);
    let err = stderr(&dir.ratchet(&["check"]));
    assert!(
        err.contains("specialist[0].surface: no surface `nosuchsurface`"),
        "{err}"
    );
}

#[test]
fn a_recipe_value_outside_its_space_is_an_error() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    dir.write(
        "experiment/recipe.toml",
        "[search]\nx = 9.0\n\n[fault]\nmode = \"none\"\n",
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("recipe.toml: search.x: value 9.0 is outside"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_valid_config_passes_and_run_refuses_an_invalid_one() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(2, &[("x", "search")]);
    let out = dir.ratchet(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nslot = 2\n",
    );
    let out = dir.ratchet(&["run", "--trials", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !dir.path().join("lineage").exists(),
        "an invalid config must not start anything"
    );
}

#[test]
fn surface_files_that_escape_or_are_protected_are_errors() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &exp.replace(
            "files = [\"train.py\", \"offset.txt\"]",
            "files = [\"../up.py\", \"eval.py\", \"recipe.toml\", \"lib/\"]\nkeys = [\"fault..mode\", \"fault\"]",
        )
        .replace(
            "protected = [\"eval.py\"]",
            "protected = [\"eval.py\", \"/abs\"]",
        ),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        !err.contains("protected[2]"),
        "a trailing / names a directory: {err}"
    );
    assert!(
        !err.contains("files[3]"),
        "a trailing / names a directory: {err}"
    );
    for expected in [
        "protected[1]: an absolute path",
        "surface[0].files[0]: `..` leaves the experiment directory",
        "surface[0].files[1]: `eval.py` is protected",
        "surface[0].files[2]: the recipe `recipe.toml` is edited through params and keys",
        "surface[0].keys[0]: `fault..mode` is not a dotted recipe key",
        "surface[0].keys[1]: `fault` overlaps `fault.mode` of surface `fault`",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn llm_specialists_are_checked_before_any_request() {
    let dir = Dir::with_fixture("faulty");
    dir.write("agents/a.md", "instructions\n");
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\n\n\
         [[specialist]]\nname = \"a\"\nsurface = \"search\"\nkind = \"llm\"\ninstructions = \"agents/a.md\"\n\
         base_url = \"127.0.0.1:8080\"\nmodel = \"m\"\napi_key_env = \"RATCHET_SURELY_UNSET_VAR\"\n\n\
         [[specialist]]\nname = \"b\"\nsurface = \"search\"\nkind = \"llm\"\n\n\
         [[specialist]]\nname = \"c\"\nsurface = \"search\"\nkind = \"search\"\nmodel = \"m\"\n\n\
         [[specialist]]\nname = \"d\"\nsurface = \"search\"\nkind = \"llm\"\ninstructions = \"agents/a.md\"\n\
         base_url = \"http://x/v1\"\nmodel = \"m\"\napi_key = \"sk-123\"\n",
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("specialist[3].api_key: unknown field"),
        "{err}"
    );
    assert!(
        !err.contains("sk-123"),
        "a key written in the file is never echoed:\n{err}"
    );

    // With the structure fixed, the values are checked.
    let text = std::fs::read_to_string(dir.path().join("specialists.toml")).unwrap();
    dir.write(
        "specialists.toml",
        &text.replace("api_key = \"sk-123\"\n", ""),
    );
    let err = stderr(&dir.ratchet(&["check"]));
    for expected in [
        "specialist[0].base_url: `127.0.0.1:8080` is not an http:// or https:// URL",
        "specialist[0].api_key_env: environment variable RATCHET_SURELY_UNSET_VAR is not set",
        "specialist[1].base_url: required for kind = \"llm\"",
        "specialist[1].model: required for kind = \"llm\"",
        "specialist[1].instructions: an llm specialist needs its agent file",
        "specialist[2].model: only a kind = \"llm\" specialist takes this key",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

#[test]
fn the_slurm_executor_is_checked() {
    let dir = Dir::with_fixture("faulty");
    let base = "[daemon]\nexperiment = \"experiment\"\nslots = 2\n\n[[specialist]]\nname = \"x\"\nsurface = \"search\"\nkind = \"search\"\n\n";
    dir.write(
        "specialists.toml",
        &format!("{base}[executor]\nbackend = \"slurm\"\n[executor.slurm]\npartition = \"gpu\"\nmax_jobs = 8\ngpus_per_trial = 1\neval = \"slurm\"\n"),
    );
    // sbatch is on PATH where these tests run (.ci/run installs Slurm).
    let out = common::stdout(&dir.ratchet(&["check"]));
    assert!(
        out.contains("trials run as Slurm jobs, 8 at once (partition gpu, 1 GPU(s) per trial, 1-minute limit), evals as Slurm jobs"),
        "{out}"
    );

    dir.write(
        "specialists.toml",
        &format!("{base}[executor]\nbackend = \"slurm\"\n[executor.slurm]\nmax_jobs = 0\npoll_secs = 0\nsbatch_args = [\"mem=1G\"]\n"),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        "executor.slurm.max_jobs: must be at least 1",
        "executor.slurm.poll_secs: 0 is not a number of seconds of at least 0.1",
        "executor.slurm.sbatch_args: `mem=1G` is not an option",
    ] {
        assert!(err.contains(expected), "{expected}: {err}");
    }

    dir.write(
        "specialists.toml",
        &format!("{base}[executor]\nbackend = \"kubernetes\"\n[executor.slurm]\nqueue = \"x\"\n"),
    );
    let err = stderr(&dir.ratchet(&["check"]));
    assert!(
        err.contains("executor.backend: unknown variant `kubernetes`"),
        "{err}"
    );
    assert!(err.contains("executor.slurm.queue: unknown field"), "{err}");

    // Without Slurm's commands on PATH the backend cannot work: said at once.
    dir.write(
        "specialists.toml",
        &format!("{base}[executor]\nbackend = \"slurm\"\n"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratchet"))
        .arg("check")
        .current_dir(dir.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("executor.backend: `slurm` needs Slurm's client commands"),
        "{}",
        stderr(&out)
    );

    // The local backend says so.
    dir.write("specialists.toml", base);
    assert!(common::stdout(&dir.ratchet(&["check"])).contains("trials run here, 2 at once"));
}

/// `noise.band` (the keep rule's multiplier before the stated error rate)
/// is refused with the name of its replacement; a rate that is no
/// probability is refused too.
#[test]
fn the_old_noise_band_is_refused_with_its_replacement_named() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    dir.write(
        "experiment/experiment.toml",
        &format!("{exp}\n[noise]\nseeds = 2\nband = 2.0\n"),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("experiment.toml: noise.band: was replaced by noise.false_keep_rate"),
        "{err}"
    );
    dir.write(
        "experiment/experiment.toml",
        &format!("{exp}\n[noise]\nseeds = 2\nfalse_keep_rate = 1.5\n"),
    );
    let err = stderr(&dir.ratchet(&["check"]));
    assert!(
        err.contains("noise.false_keep_rate: must be a probability above 0 and below 0.5"),
        "{err}"
    );
    dir.write(
        "experiment/experiment.toml",
        &format!("{exp}\n[noise]\nseeds = 2\nfalse_keep_rate = 0.1\n"),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // noise.scale: linear or log, nothing else.
    dir.write(
        "experiment/experiment.toml",
        &format!("{exp}\n[noise]\nseeds = 2\nscale = \"log\"\n"),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    dir.write(
        "experiment/experiment.toml",
        &format!("{exp}\n[noise]\nseeds = 2\nscale = \"cubic\"\n"),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("noise.scale") && err.contains("linear") && err.contains("log"),
        "{err}"
    );
}

/// `[prune]` is checked whole: a rate that is no probability, looks that
/// are not increasing shares, a metric that is no progress line name and
/// a surface the experiment does not declare are each named; a good one
/// passes.
#[test]
fn a_bad_prune_section_is_refused_key_by_key() {
    let dir = Dir::with_fixture("curves");
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\nlineage_dir = \"lineage\"\n\n\
         [[specialist]]\nname = \"x\"\nsurface = \"s\"\nkind = \"search\"\n",
    );
    let ok = common::stdout(&dir.ratchet(&["check"]));
    assert!(ok.contains("ok:"), "the fixture's [prune] passes: {ok}");
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    let good = "[prune]\nmetric = \"train_loss\"\nfalse_prune_rate = 0.05\n";
    assert!(exp.contains(good));
    dir.write(
        "experiment/experiment.toml",
        &exp.replace(
            good,
            "[prune]\nmetric = \"1 bad\"\nfalse_prune_rate = 0.7\nlooks = [0.5, 0.25]\nsurfaces = [\"nope\"]\n",
        ),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for key in [
        "prune.false_prune_rate: must be a probability",
        "prune.looks: must be increasing shares",
        "prune.metric: must be the NAME of progress lines",
        "prune.surfaces: names surface \"nope\"",
    ] {
        assert!(err.contains(key), "{key} missing in {err}");
    }
    dir.write(
        "experiment/experiment.toml",
        &exp.replace(
            good,
            "[prune]\nmetric = \"train_loss\"\nlooks = [0.5, 1.0]\n",
        ),
    );
    assert!(stderr(&dir.ratchet(&["check"])).contains("prune.looks"));
}

#[test]
fn the_names_ratchet_proposes_under_are_reserved() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("baseline", "search"), ("scout", "fault")]);
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("specialist[0].name: `baseline` is reserved"),
        "{err}"
    );
    assert!(
        err.contains("specialist[1].name: `scout` is reserved"),
        "{err}"
    );
}

#[test]
fn a_bad_when_section_is_refused_key_by_key() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    let bad = format!(
        "{exp}[surface.when]\n\
         \"fault.mode\" = {{ \"search.x\" = [1.0] }}\n\
         \"fault.nosuch\" = {{ \"fault.mode\" = [\"none\"] }}\n"
    )
    .replace(
        "files = [\"train.py\", \"offset.txt\"]\n",
        "files = [\"train.py\", \"offset.txt\"]\n[surface.when]\n\
         \"search.x\" = { \"fault.mode\" = [\"crash\", \"explode\"], \"search.y\" = [1] }\n",
    );
    dir.write("experiment/experiment.toml", &bad);
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for want in [
        "surface[0].when.\"search.x\".\"fault.mode\": \"explode\" is outside the declared space of `fault.mode`",
        "surface[0].when.\"search.x\".\"search.y\": `search.y` is not a declared parameter",
        "surface[1].when.\"fault.nosuch\": `fault.nosuch` is not a parameter of surface `fault`",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    // A parameter may depend on another surface's, at a legal value.
    assert!(!err.contains("surface[1].when.\"fault.mode\""), "{err}");

    let good = format!("{exp}[surface.when]\n\"fault.mode\" = {{ \"search.x\" = [1.0, 2] }}\n");
    dir.write("experiment/experiment.toml", &good);
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_bad_metric_gate_is_refused_gate_by_gate() {
    let dir = Dir::with_fixture("faulty");
    dir.specialists(1, &[("x", "search")]);
    let exp = std::fs::read_to_string(dir.path().join("experiment/experiment.toml")).unwrap();
    let bad = format!(
        "{exp}\n[[gates.metric]]\nname = \"val_acc\"\n\
         [[gates.metric]]\nname = \"1acc\"\nmin = 0.5\n\
         [[gates.metric]]\nname = \"secs\"\nmin = 10.0\nmax = 5.0\n\
         [[gates.metric]]\nname = \"loss\"\nmax = 4.0\n\
         [[gates.metric]]\nname = \"loss\"\nmin = 0.0\n\
         [[gates.metric]]\nname = \"acc\"\nminimum = 0.5\n"
    );
    dir.write("experiment/experiment.toml", &bad);
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    // An unknown key is a parse error: it is named alone, first.
    assert!(err.contains("minimum"), "{err}");
    dir.write(
        "experiment/experiment.toml",
        &bad.replace(
            "name = \"acc\"\nminimum = 0.5\n",
            "name = \"acc\"\nmin = 0.5\n",
        ),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for want in [
        "gates.metric[0]: gate on `val_acc` has neither min nor max",
        "gates.metric[1]: name \"1acc\" is not a metric NAME",
        "gates.metric[2]: gate on `secs`: min 10 is above max 5",
        "gates.metric[4]: a second gate on `loss`",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    assert!(!err.contains("gates.metric[3]"), "{err}");
    assert!(!err.contains("gates.metric[5]"), "{err}");

    let good = format!("{exp}\n[[gates.metric]]\nname = \"val_acc\"\nmin = 0.96\n");
    dir.write("experiment/experiment.toml", &good);
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_score_from_train_needs_its_scorer_protected_and_a_metric_format_that_reads() {
    let dir = Dir::with_fixture("autoresearch");
    dir.write(
        "specialists.toml",
        "[daemon]\nexperiment = \"experiment\"\n\n[[specialist]]\nname = \"hand\"\nsurface = \"train\"\nkind = \"manual\"\n",
    );
    let head = "name = \"t\"\nmetric = \"val_bpb\"\ndirection = \"minimize\"\nbudget_secs = 2\n\
                timeout_secs = 10\ntrain = [\"python3\", \"train.py\"]\n";
    let surface = "\n[[surface]]\nname = \"train\"\nfiles = [\"train.py\"]\n";
    let refused = |body: &str, wants: &[&str]| {
        dir.write(
            "experiment/experiment.toml",
            &format!("{head}{body}{surface}"),
        );
        let out = dir.ratchet(&["check"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{body}: {err}");
        for want in wants {
            assert!(err.contains(want), "missing {want:?} in: {err}");
        }
    };
    refused(
        "score_from = \"train\"\n",
        &["protected: must name the files that compute the score"],
    );
    refused(
        "score_from = \"train\"\nprotected = [\"scorer.py\"]\n",
        &["protected[0]: `scorer.py` is not in the experiment directory"],
    );
    refused(
        "score_from = \"train\"\nprotected = [\"prepare.py\"]\n[eval]\nproxy = [\"python3\", \"eval.py\"]\n",
        &["eval.proxy: is not run when `score_from = \"train\"`"],
    );
    refused(
        "protected = [\"prepare.py\"]\n",
        &["eval.proxy: needs a program (or `score_from = \"train\"`)"],
    );
    let train = "score_from = \"train\"\nprotected = [\"prepare.py\"]\n";
    refused(
        &format!("{train}[metrics]\nformat = \"regex\"\n"),
        &["metrics.pattern: `format = \"regex\"` needs a pattern"],
    );
    refused(
        &format!("{train}[metrics]\nformat = \"regex\"\npattern = \"loss (\\\\S+)\"\n"),
        &["metrics.pattern: the pattern has no named group"],
    );
    refused(
        &format!("{train}[metrics]\nformat = \"colon\"\npattern = \"x\"\n"),
        &["metrics.pattern: is read only with `format = \"regex\"`"],
    );
    // Without a recipe, a surface has files only.
    dir.write(
        "experiment/experiment.toml",
        &format!("{head}{train}{surface}[surface.params]\n\"opt.lr\" = {{ type = \"float\", min = 0.0, max = 1.0 }}\n"),
    );
    let out = dir.ratchet(&["check"]);
    assert!(
        stderr(&out)
            .contains("surface[0]: declares recipe keys, but the experiment names no `recipe`"),
        "{}",
        stderr(&out)
    );
    dir.write(
        "experiment/experiment.toml",
        &format!("{head}{train}[metrics]\nformat = \"colon\"\n{surface}"),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A GGUF header (version 3, no tensors) with these string metadata.
fn gguf_header(metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
        b.extend(8u32.to_le_bytes()); // a string
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    }
    b
}

#[test]
fn a_local_model_the_worker_cannot_run_is_refused_with_its_path_and_reason() {
    let dir = Dir::with_fixture("faulty");
    dir.write("agents/a.md", "instructions\n");
    dir.write("models/notes.gguf", "these are notes, not a model\n");
    std::fs::write(
        dir.path().join("models/bert.gguf"),
        gguf_header(&[
            ("general.architecture", "bert"),
            ("tokenizer.ggml.model", "gpt2"),
        ]),
    )
    .unwrap();
    let mut truncated = gguf_header(&[("general.architecture", "llama")]);
    truncated.truncate(truncated.len() - 3);
    std::fs::write(dir.path().join("models/cut.gguf"), truncated).unwrap();
    let specialist = |name: &str, extra: &str| {
        format!(
            "\n[[specialist]]\nname = \"{name}\"\nsurface = \"search\"\nkind = \"llm\"\n\
             instructions = \"agents/a.md\"\n{extra}\n"
        )
    };
    dir.write(
        "specialists.toml",
        &format!(
            "[daemon]\nexperiment = \"experiment\"\n{}{}{}{}{}",
            specialist("missing", "model_path = \"models/absent.gguf\""),
            specialist("text", "model_path = \"models/notes.gguf\""),
            specialist("arch", "model_path = \"models/bert.gguf\""),
            specialist("cut", "model_path = \"models/cut.gguf\""),
            specialist(
                "both",
                "model_path = \"models/absent.gguf\"\nbase_url = \"http://127.0.0.1:1/v1\"\ndevice = \"gpu\"\ntop_p = 1.5"
            ),
        ),
    );
    let out = dir.ratchet(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let models = dir.path().join("models");
    for expected in [
        format!("specialist[0].model_path: model {}/absent.gguf: cannot open", models.display()),
        format!("specialist[1].model_path: model {}/notes.gguf: not a GGUF file", models.display()),
        format!("specialist[2].model_path: model {}/bert.gguf: architecture `bert` is not supported (supported: llama, mistral, qwen2, qwen3)", models.display()),
        format!("specialist[3].model_path: model {}/cut.gguf: the GGUF header cannot be read", models.display()),
        "specialist[4].base_url: a local model (model_path) takes no endpoint keys".to_string(),
        "specialist[4].device: `gpu`: expected `cpu` or `cuda:N`".to_string(),
        "specialist[4].top_p: 1.5 is outside (0, 1]".to_string(),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    }
}
