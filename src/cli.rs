//! The command line: clap arguments, resolved into plain values and dispatched.
//! The rest of the program never sees clap types.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod init;
mod lineage;

use crate::config::Config;
use crate::domain::now_ms;
use crate::lineage::LineageStore;
use lineage::LineageCommand;

#[derive(Parser, Debug)]
#[command(
    name = "ratchet",
    version,
    about = "Autonomous research on ML training recipes: specialists propose, an evaluator keeps only measured gains"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct ConfigArg {
    /// The specialists file (it names the experiment and the lineage directory).
    #[arg(long, short = 'c', default_value = "specialists.toml")]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the research loop in the foreground with live progress.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Stop after this many trials (the baseline counts as one).
        #[arg(long, short = 'n')]
        trials: Option<u64>,
    },
    /// Run until stopped, as a systemd service (Type=notify; SIGTERM drains,
    /// SIGHUP reloads; a control socket serves status, pause, resume, reload).
    Daemon {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// What the daemon is doing (or, with none running, what lineage holds).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Refresh every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Stop asking specialists for proposals (their running trials finish,
    /// unless --cancel). Stored in lineage: it survives restarts.
    Pause {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        which: Which,
        /// Also stop their trials that run or wait for a slot: killed (a
        /// Slurm job: scancel) and recorded `interrupted`.
        #[arg(long)]
        cancel: bool,
    },
    /// Ask paused specialists for proposals again.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        which: Which,
    },
    /// Make the running daemon re-read specialists.toml; an invalid file is
    /// refused with every error printed (exit status 2) and the running
    /// configuration stays.
    Reload {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Set up a directory of a known shape (`--from autoresearch`): writes
    /// experiment.toml, specialists.toml and agents/ from what its files say.
    Init {
        #[command(flatten)]
        args: init::InitArgs,
    },
    /// Validate specialists.toml and the experiment; exit status 2 when invalid.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The built-in tinylm experiment's programs (run by trials, or by hand).
    Tinylm {
        #[command(subcommand)]
        command: TinylmCommand,
    },
    /// What a Slurm job runs on its node (the Slurm backend writes the
    /// file): the command with ratchet's log caps, metrics and memory gate,
    /// its report written next to its logs.
    #[command(hide = true)]
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// A local model's process (what an LLM specialist with `model_path`
    /// talks to): loads the GGUF file, then answers one JSON request per
    /// stdin line with one JSON line on stdout.
    #[command(hide = true)]
    LlmWorker {
        #[arg(long)]
        model: PathBuf,
        /// `cpu`, or `cuda:N` in a build with --features cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Read the lineage: every trial, its edit, outcome and label.
    Lineage {
        #[command(flatten)]
        config: ConfigArg,
        /// Read this lineage directory instead of the one the config names.
        #[arg(long, global = true)]
        lineage: Option<PathBuf>,
        #[command(subcommand)]
        command: LineageCommand,
    },
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
struct Which {
    /// Specialist names.
    names: Vec<String>,
    /// Every configured specialist.
    #[arg(long)]
    all: bool,
}

impl Which {
    fn names(self) -> Option<Vec<String>> {
        (!self.all).then_some(self.names)
    }
}

#[derive(Subcommand, Debug)]
enum TinylmCommand {
    /// Train a recipe for the budget (RATCHET_BUDGET_SECS, or --budget-secs; default 30).
    Train {
        #[arg(long)]
        recipe: PathBuf,
        /// Output directory: model.safetensors, model.json, ckpt/ (resumed when present).
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        budget_secs: Option<f64>,
    },
    /// Score a trained model: prints val_bpb=... and diagnostics.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, value_parser = ["proxy", "full"], default_value = "proxy")]
        split: String,
        /// The evaluation mix, e.g. markov=0.35,arithmetic=0.25,brackets=0.15,copy=0.25.
        #[arg(long, default_value = crate::tinylm::DEFAULT_EVAL_MIX)]
        mix: String,
    },
    /// Without training: the recipe's parameter count and the bytes of its
    /// submitted weights (params=..., artifact_bytes=...), for pre-flight.
    Preflight {
        #[arg(long)]
        recipe: PathBuf,
    },
    /// The entropy floor of an evaluation mix: the lowest val_bpb possible.
    Floor {
        #[arg(long, default_value = crate::tinylm::DEFAULT_EVAL_MIX)]
        mix: String,
    },
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// Run the job file's command; exit with its status.
    Run { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// A synthetic lineage of N trials, then list, status and export
    /// latency, throughput and peak memory, in-process and through the CLI.
    Lineage {
        #[arg(long, default_value_t = 100_000)]
        trials: u64,
        /// Build it here (default: a new directory under the system's temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Leave the lineage on disk afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// The research loop on a no-op experiment: ratchet's own time per
    /// trial (p50/p99, by stage) and the slot time it leaves idle.
    Loop {
        #[arg(long, default_value_t = 1000)]
        trials: u64,
        #[arg(long, default_value_t = 2)]
        slots: usize,
        /// `daemon.confirm_first` of the bench's configuration.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        confirm_first: bool,
        /// Run it here (default: a new directory under the system's temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Leave the experiment and its lineage on disk afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// The dashboard and /metrics of a real daemon: each endpoint's latency
    /// at N trials, the daemon's extra memory with a page open, and the
    /// loop's speed with and without a client polling.
    Dashboard {
        #[arg(long, default_value_t = 100_000)]
        trials: u64,
        /// Trials of the no-op loop, run once without and once with a client.
        #[arg(long, default_value_t = 1000)]
        loop_trials: u64,
        /// Run it here (default: a new directory under the system's temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Leave the lineages on disk afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// The failure model on a synthetic experiment with size, slow and
    /// crash regions: the share of proposals after the first ten failures
    /// that land in one, labels read for their direction and not.
    Failures {
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Proposals per search.
        #[arg(long, default_value_t = 80)]
        proposals: usize,
    },
    /// A local model's prompt and reply tokens/s and seconds per proposal on
    /// a typical specialist prompt, constrained and free, and llama.cpp's on
    /// the same file when llama-cpp-python is importable (--python).
    Llm {
        /// The GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// Proposals to time (after one warm-up).
        #[arg(long, default_value_t = 3)]
        proposals: u32,
        /// The Python with llama-cpp-python installed (none: candle only).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// Training tokens/s and GFLOP/s of the default tinylm recipe, and the machine's matmul GFLOP/s.
    Tinylm {
        /// Seconds of training to measure.
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
    },
}

/// Exit status for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A daemon tells what it does; the other commands only what goes wrong.
    init_tracing(if matches!(cli.command, Command::Daemon { .. }) {
        "info"
    } else {
        "warn"
    });
    match dispatch(cli) {
        Ok(code) => code,
        // `ratchet lineage list | head`: the reader went away, which is fine.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().map(|io| io.kind());
        let json = c
            .downcast_ref::<serde_json::Error>()
            .and_then(|j| j.io_error_kind());
        io.or(json) == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs to stderr: colours only on a terminal; under systemd (stderr is the
/// journal, `JOURNAL_STREAM`) no timestamps, which journald adds itself.
/// Fields stay `key=value`, so `journalctl -u ratchet | grep trial=42` works.
fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RATCHET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| AroundStatusLine(Vec::new()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// A log line, written to stderr in one piece when tracing is done with it,
/// around `ratchet run`'s status line (log lines and the status line share
/// the terminal).
struct AroundStatusLine(Vec<u8>);

impl std::io::Write for AroundStatusLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for AroundStatusLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let bytes = std::mem::take(&mut self.0);
            crate::run::live::around_status_line(|| {
                let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &bytes);
            });
        }
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} error(s) in the configuration", errors.0.len());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config } => {
            let c = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            println!(
                "ok: {} specialist(s) on experiment `{}` ({} surface(s), {} parameter(s)); lineage {}",
                c.specialists.len(),
                c.experiment.file.name,
                c.experiment.file.surfaces.len(),
                c.experiment.defaults.len(),
                c.lineage_dir.display()
            );
            match &c.slurm {
                None => {
                    // The same decision a start makes, nvidia-smi asked.
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    match rt.block_on(crate::gpu::place(c.gpus.as_ref())) {
                        Ok(p) => println!("{}", p.describe(c.slots)),
                        Err(e) => {
                            eprintln!("error: {}: {e}", c.file.display());
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
                Some(s) => println!(
                    "trials run as Slurm jobs, {} at once (partition {}, {} GPU(s) per trial, {}-minute limit), evals {}",
                    c.slots,
                    s.partition.as_deref().unwrap_or("default"),
                    s.gpus_per_trial,
                    crate::slurm::minutes(std::time::Duration::from_secs(
                        c.experiment.file.timeout_secs
                    )),
                    match s.eval {
                        crate::config::EvalWhere::Local => "here",
                        crate::config::EvalWhere::Slurm => "as Slurm jobs",
                    }
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { args } => init::run(&args),
        Command::Daemon { config } => {
            let c = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(crate::daemon::daemon(c))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            json,
            watch,
        } => status_command(&config.config, json, watch),
        Command::Pause {
            config,
            which,
            cancel,
        } => pause_command(&config.config, which.names(), true, cancel),
        Command::Resume { config, which } => {
            pause_command(&config.config, which.names(), false, false)
        }
        Command::Reload { config } => reload_command(&config.config),
        Command::Run { config, trials } => {
            let c = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = tokio::runtime::Runtime::new()?;
            let summary = rt.block_on(crate::run::run(c, trials))?;
            Ok(if summary.interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Tinylm { command } => {
            use crate::tinylm::{self, data};
            match command {
                TinylmCommand::Train {
                    recipe,
                    out,
                    budget_secs,
                } => tinylm::train_command(&recipe, &out, budget_secs)?,
                TinylmCommand::Eval {
                    checkpoint,
                    split,
                    mix,
                } => {
                    let split = if split == "full" {
                        data::Split::Full
                    } else {
                        data::Split::Proxy
                    };
                    let mix = data::parse_mix(&mix).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
                    tinylm::eval_command(&checkpoint, split, &mix)?
                }
                TinylmCommand::Preflight { recipe } => tinylm::preflight_command(&recipe)?,
                TinylmCommand::Floor { mix } => tinylm::floor_command(
                    &data::parse_mix(&mix).map_err(|e| anyhow::anyhow!("--mix: {e}"))?,
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job {
            command: JobCommand::Run { file },
        } => {
            let code = crate::slurm::run_job_file(&file).map_err(anyhow::Error::msg)?;
            Ok(ExitCode::from(code))
        }
        Command::LlmWorker { model, device } => {
            crate::localmodel::worker::run(&model, &device).map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Llm {
                    model,
                    proposals,
                    python,
                },
        } => {
            crate::bench::llm::llm_command(&model, proposals, python.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Tinylm { secs },
        } => {
            crate::tinylm::bench_command(secs)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Failures { seeds, proposals },
        } => {
            crate::bench::failures::failures_command(seeds, proposals);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Dashboard {
                    trials,
                    loop_trials,
                    dir,
                    keep,
                },
        } => {
            crate::bench::dashboard::dashboard_command(trials, loop_trials, dir, keep)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Lineage { trials, dir, keep },
        } => {
            crate::bench::lineage_command(trials, dir, keep)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command:
                BenchCommand::Loop {
                    trials,
                    slots,
                    confirm_first,
                    dir,
                    keep,
                },
        } => {
            crate::bench::loop_command(trials, slots, confirm_first, dir, keep)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lineage {
            config,
            lineage,
            command,
        } => lineage::main(&config.config, lineage, command),
    }
}

/// The control socket of the daemon that uses this configuration (see
/// `lineage::socket_of`).
fn daemon_socket(config: &Path) -> anyhow::Result<PathBuf> {
    let lineage = crate::config::lineage_dir_of(config)?;
    Ok(lineage::socket_of(&lineage, config))
}

/// A request to the running daemon; `Ok(None)` when none listens.
fn call_daemon(
    config: &Path,
    command: crate::daemon::control::Command,
) -> anyhow::Result<Option<crate::daemon::control::Response>> {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    let socket = daemon_socket(config)?;
    match crate::daemon::control::call(&socket, command, std::time::Duration::from_secs(30)) {
        Ok(r) => Ok(Some(r)),
        Err(e) if matches!(e.kind(), NotFound | ConnectionRefused) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("control socket {}: {e}", socket.display())),
    }
}

fn status_command(config: &Path, json: bool, watch: bool) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    loop {
        let text = match call_daemon(config, crate::daemon::control::Command::Status)? {
            Some(r) if r.ok => {
                let status = r
                    .status
                    .ok_or_else(|| anyhow::anyhow!("the daemon sent no status"))?;
                if json {
                    serde_json::to_string(&status)? + "\n"
                } else {
                    crate::daemon::render_status(&status, now_ms())
                }
            }
            Some(r) => anyhow::bail!("{}", r.error.unwrap_or_default()),
            None => offline_status(config, json)?,
        };
        let mut out = std::io::stdout().lock();
        if watch && !json && std::io::stdout().is_terminal() {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        if !json {
            writeln!(out)?;
        }
    }
}

/// `status` with no daemon running: what lineage holds.
fn offline_status(config: &Path, json: bool) -> anyhow::Result<String> {
    let dir = crate::config::lineage_dir_of(config)?;
    if !dir.join("db").exists() {
        anyhow::bail!(
            "no daemon is running and there is no lineage at {} yet",
            dir.display()
        );
    }
    let store = LineageStore::open(&dir)?;
    let summary = store.summary()?;
    let specialists = Config::load(config)
        .map(|c| c.specialist_names())
        .unwrap_or_default();
    if json {
        let v = serde_json::json!({"daemon": null, "lineage": summary, "specialists": specialists});
        return Ok(v.to_string() + "\n");
    }
    Ok(format!(
        "no ratchet daemon is running (lineage {})\n{}",
        dir.display(),
        crate::daemon::render_lineage(&summary, &specialists, None, now_ms())
    ))
}

fn pause_command(
    config: &Path,
    names: Option<Vec<String>>,
    paused: bool,
    cancel: bool,
) -> anyhow::Result<ExitCode> {
    use crate::daemon::control::Command as C;
    let what = if paused { "paused" } else { "resumed" };
    let command = if paused {
        C::Pause {
            names: names.clone(),
            cancel,
        }
    } else {
        C::Resume {
            names: names.clone(),
        }
    };
    let mut cancelled = Vec::new();
    let changed = match call_daemon(config, command)? {
        Some(r) if r.ok => {
            cancelled = r.cancelled;
            r.changed.unwrap_or_default()
        }
        Some(r) => anyhow::bail!("{}", r.error.unwrap_or_default()),
        None => {
            if cancel {
                println!("no ratchet is running: nothing to cancel");
            }
            // No daemon: write it into lineage for the next start.
            let c = match load_config(config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let names = c.select_specialists(names).map_err(anyhow::Error::msg)?;
            LineageStore::open(&c.lineage_dir)?.set_paused(&names, paused)?
        }
    };
    if changed.is_empty() {
        println!("nothing changed: already {what}");
    } else {
        println!("{what}: {}", changed.join(", "));
    }
    if cancel && !cancelled.is_empty() {
        let ids: Vec<String> = cancelled.iter().map(|id| format!("#{id}")).collect();
        println!("cancelled: {}", ids.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn reload_command(config: &Path) -> anyhow::Result<ExitCode> {
    let Some(r) = call_daemon(config, crate::daemon::control::Command::Reload)? else {
        anyhow::bail!(
            "no ratchet daemon is listening on {}; nothing to reload",
            daemon_socket(config)?.display()
        );
    };
    if !r.ok {
        for e in &r.errors {
            eprintln!("{e}");
        }
        eprintln!("{}", r.error.unwrap_or_default());
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let rep = r.reload.unwrap_or_default();
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    println!(
        "reloaded: added {}; removed {}; changed {}",
        list(&rep.added),
        list(&rep.removed),
        list(&rep.changed)
    );
    if let Some((a, b)) = rep.slots {
        println!("slots: {a} -> {b}");
    }
    if !rep.at_restart.is_empty() {
        println!(
            "takes effect at the next start: {}",
            rep.at_restart.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
