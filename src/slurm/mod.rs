//! The Slurm backend: a run's command submitted as a batch job with sbatch,
//! tracked with squeue (sacct once squeue has forgotten a job), cancelled
//! with scancel.
//!
//! A job runs `ratchet job run <file>` on its node: the same child-process
//! code as a local run (own process group, capped logs, `NAME=value`
//! metrics, the memory gate), which writes the run's `ProcessReport` as
//! JSON next to its logs. Slurm enforces the time limit (`timeout_secs`,
//! rounded up to whole minutes). The job's end state and that report make
//! the run's outcome ([`outcome`]).
//!
//! Jobs are named `<tag>-<trial>-<seed>-<stage>`; the tag is a hash of the
//! lineage directory, so the jobs of one lineage can be found again after a
//! restart (recovery adopts a trial's train job that is still in Slurm
//! instead of submitting it again) and told apart from other lineages'.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{Config, EvalWhere, SlurmSection};
use crate::domain::{ProcessReport, SlurmJob, TrialId};
use crate::process::{self, GroupGuard, Spec};

/// Margin past Slurm's time limit after which the job's wrapper kills the
/// command itself (Slurm checks time limits about every 30 s).
const WRAPPER_GRACE: Duration = Duration::from_secs(90);

/// How many polls in a row a job may be missing from squeue before it is
/// looked up in sacct (a job appears in squeue as soon as sbatch returns;
/// this only guards against a flaky answer).
const MISSING_POLLS: u32 = 2;

/// What a job is for; the last part of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Train,
    Eval,
    Full,
}

impl JobKind {
    fn as_str(self) -> &'static str {
        match self {
            JobKind::Train => "train",
            JobKind::Eval => "eval",
            JobKind::Full => "full",
        }
    }
}

/// A job's state as squeue or sacct names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState(pub String);

impl JobState {
    /// Slurm is done with the job; anything else (pending, running,
    /// requeued, suspended, completing, ...) is still coming.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.0.as_str(),
            "COMPLETED"
                | "FAILED"
                | "TIMEOUT"
                | "OUT_OF_MEMORY"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "CANCELLED"
                | "REVOKED"
                | "SPECIAL_EXIT"
        )
    }
}

/// How a job ended, as far as Slurm knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEnd {
    pub state: JobState,
    /// squeue's reason (`TimeLimit`, `NonZeroExitCode`, ...), or empty.
    pub reason: String,
    pub node: String,
}

impl JobEnd {
    /// Neither squeue nor sacct knows the job any more.
    fn unknown() -> Self {
        JobEnd {
            state: JobState("UNKNOWN".into()),
            reason: "Slurm no longer knows the job (no accounting?)".into(),
            node: String::new(),
        }
    }
}

/// What a run on Slurm came to.
#[derive(Debug)]
pub enum Outcome {
    /// The command ran (or was killed by a limit): its report.
    Ran(Box<ProcessReport>),
    /// The job was lost to the cluster (node failure, preemption, a
    /// cancellation that was not ratchet's): the run should be queued again.
    Lost(String),
}

/// One job's files, next to the run's logs: `<stage>.job.json` (what the
/// wrapper runs), `<stage>.sbatch`, `<stage>.report.json` (what it
/// reports) and `<stage>.slurm.log` (Slurm's own output of the job).
pub struct JobFiles {
    pub job: PathBuf,
    pub script: PathBuf,
    pub report: PathBuf,
    pub log: PathBuf,
}

impl JobFiles {
    /// The files of a run whose stdout goes to `.../<stage>.stdout`.
    pub fn of(spec: &Spec) -> JobFiles {
        let dir = spec.stdout.parent().unwrap_or(Path::new("."));
        let stem = spec
            .stdout
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        let at = |ext: &str| dir.join(format!("{stem}.{ext}"));
        JobFiles {
            job: at("job.json"),
            script: at("sbatch"),
            report: at("report.json"),
            log: at("slurm.log"),
        }
    }
}

/// The file a job's wrapper reads: what to run and where to report.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobFile {
    pub spec: Spec,
    pub report: PathBuf,
}

/// The Slurm backend of one ratchet process: settings, the job-name tag of
/// its lineage and the tracker that polls squeue for every waited-on job.
pub struct Slurm {
    settings: SlurmSection,
    tag: String,
    ratchet: PathBuf,
    /// Variables sbatch (and so the job) must not inherit.
    env_remove: Vec<String>,
    tracker: Mutex<Tracker>,
}

#[derive(Default)]
struct Tracker {
    waiting: HashMap<u64, Vec<oneshot::Sender<JobEnd>>>,
    /// Each waited-on job's state at squeue's last answer, for `status`.
    last: HashMap<u64, String>,
    missing: HashMap<u64, u32>,
    polling: bool,
}

/// A job of this lineage found in Slurm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub job: u64,
    pub trial: TrialId,
    pub seed: u64,
    pub kind: JobKind,
    pub state: JobState,
}

impl Slurm {
    /// The backend of `config`, or `None` when trials run locally.
    pub fn of(config: &Config) -> Option<Arc<Slurm>> {
        let settings = config.slurm.clone()?;
        let ratchet = settings
            .ratchet
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("ratchet"));
        Some(Arc::new(Slurm {
            tag: lineage_tag(&config.lineage_dir),
            ratchet,
            env_remove: crate::workspace::secret_env(config),
            settings,
            tracker: Mutex::default(),
        }))
    }

    /// Whether eval commands run as jobs too.
    pub fn evals_on_slurm(&self) -> bool {
        self.settings.eval == EvalWhere::Slurm
    }

    /// The name of a job of this lineage.
    pub fn job_name(&self, trial: TrialId, seed: u64, kind: JobKind) -> String {
        format!("{}-{trial}-{seed}-{}", self.tag, kind.as_str())
    }

    /// Submits `spec` as a job: writes its files, calls sbatch and returns
    /// the job id (the job may already be running). `Err`: sbatch refused
    /// it or could not run, with what it said.
    pub async fn submit(
        &self,
        spec: &Spec,
        trial: TrialId,
        seed: u64,
        kind: JobKind,
    ) -> Result<u64, String> {
        let files = JobFiles::of(spec);
        let limit = minutes(spec.timeout);
        let mut wrapped = spec.clone();
        // Slurm enforces the limit; the wrapper's own timeout is a backstop.
        wrapped.timeout = Duration::from_secs(limit * 60) + WRAPPER_GRACE;
        // The thread share ratchet computes is for its own machine's cores;
        // on the node, the job's allocation decides (see `run_job_file`).
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            wrapped.env.retain(|(k, _)| k != "RAYON_NUM_THREADS");
        }
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            wrapped.env.retain(|(k, _)| k != "OMP_NUM_THREADS");
        }
        let job = JobFile {
            spec: wrapped,
            report: files.report.clone(),
        };
        let script = format!(
            "#!/bin/sh\n# ratchet trial {trial}, seed {seed}, {}\nexec {} job run {}\n",
            kind.as_str(),
            quote(&self.ratchet.to_string_lossy()),
            quote(&files.job.to_string_lossy()),
        );
        let written = (|| -> std::io::Result<()> {
            if let Some(dir) = files.job.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // A report left by an earlier attempt must not stand for this one.
            match std::fs::remove_file(&files.report) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::write(&files.job, serde_json::to_vec_pretty(&job)?)?;
            std::fs::write(&files.script, script)
        })();
        if let Err(e) = written {
            return Err(format!(
                "cannot write the job's files in {}: {e}",
                files.job.parent().unwrap_or(Path::new(".")).display()
            ));
        }
        let s = &self.settings;
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={}", self.job_name(trial, seed, kind)),
            format!("--time={limit}"),
            format!("--chdir={}", spec.cwd.display()),
            format!("--output={}", files.log.display()),
            format!("--error={}", files.log.display()),
        ];
        if let Some(p) = &s.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(a) = &s.account {
            args.push(format!("--account={a}"));
        }
        let gpus = match kind {
            JobKind::Train => s.gpus_per_trial,
            JobKind::Eval | JobKind::Full => s.eval_gpus,
        };
        if gpus > 0 {
            args.push(format!("--gres=gpu:{gpus}"));
        }
        args.extend(s.sbatch_args.iter().cloned());
        args.push(files.script.display().to_string());
        let mut cmd = Command::new("sbatch");
        cmd.args(&args);
        for var in &self.env_remove {
            cmd.env_remove(var);
        }
        let out = run(cmd).await?;
        // `--parsable`: `<id>` or `<id>;<cluster>`.
        let text = out.trim();
        text.split(';')
            .next()
            .and_then(|id| id.trim().parse().ok())
            .ok_or_else(|| format!("sbatch answered `{text}`, not a job id"))
    }

    /// Asks sbatch whether it would take a train job with these settings
    /// (`--test-only`: nothing is submitted), so that a bad partition or
    /// account stops ratchet at its start instead of failing every trial.
    /// A controller that does not answer now is not an error.
    pub async fn check(&self) -> Result<(), String> {
        let s = &self.settings;
        let mut cmd = Command::new("sbatch");
        cmd.args([
            "--test-only",
            "--time=1",
            "--output=/dev/null",
            "--wrap=true",
        ])
        .arg(format!("--job-name={}-check", self.tag));
        if let Some(p) = &s.partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(a) = &s.account {
            cmd.arg(format!("--account={a}"));
        }
        if s.gpus_per_trial > 0 {
            cmd.arg(format!("--gres=gpu:{}", s.gpus_per_trial));
        }
        cmd.args(&s.sbatch_args);
        match run(cmd).await {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => {
                warn!(error = %e, "cannot check the Slurm settings now; going on");
                Ok(())
            }
            Err(e) => Err(format!(
                "the Slurm settings in [executor.slurm] are refused: {e}"
            )),
        }
    }

    /// Waits until Slurm is done with `job` (one poller asks squeue about
    /// every waited-on job at once).
    pub async fn wait(self: &Arc<Self>, job: u64) -> JobEnd {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut t = self.tracker.lock().expect("tracker lock");
            t.waiting.entry(job).or_default().push(tx);
            !std::mem::replace(&mut t.polling, true)
        };
        if start {
            tokio::spawn(self.clone().poll());
        }
        rx.await.unwrap_or_else(|_| JobEnd::unknown())
    }

    async fn poll(self: Arc<Self>) {
        let period = Duration::from_secs_f64(self.settings.poll_secs);
        let mut failing = false;
        loop {
            tokio::time::sleep(period).await;
            let ids: Vec<u64> = {
                let mut guard = self.tracker.lock().expect("tracker lock");
                let t = &mut *guard;
                t.waiting.retain(|_, senders| {
                    senders.retain(|s| !s.is_closed());
                    !senders.is_empty()
                });
                t.last.retain(|id, _| t.waiting.contains_key(id));
                t.missing.retain(|id, _| t.waiting.contains_key(id));
                if t.waiting.is_empty() {
                    t.polling = false;
                    return;
                }
                t.waiting.keys().copied().collect()
            };
            let known = match squeue(&ids).await {
                Ok(k) => k,
                Err(e) => {
                    // Once per outage, not at every poll.
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, "squeue failed; asking again at every poll until it answers");
                    }
                    continue;
                }
            };
            if std::mem::replace(&mut failing, false) {
                info!("squeue answers again");
            }
            let mut ended: Vec<(u64, JobEnd)> = Vec::new();
            let mut gone = Vec::new();
            {
                let mut t = self.tracker.lock().expect("tracker lock");
                for id in &ids {
                    match known.get(id) {
                        Some(end) => {
                            t.missing.remove(id);
                            t.last.insert(*id, end.state.0.clone());
                            if end.state.is_terminal() {
                                ended.push((*id, end.clone()));
                            }
                        }
                        // Not listed: sacct, after a second look.
                        None => {
                            let n = t.missing.entry(*id).or_default();
                            *n += 1;
                            if *n >= MISSING_POLLS {
                                gone.push(*id);
                            }
                        }
                    }
                }
            }
            for id in gone {
                ended.push((id, sacct(id).await.unwrap_or_else(JobEnd::unknown)));
            }
            let mut t = self.tracker.lock().expect("tracker lock");
            for (id, end) in ended {
                t.missing.remove(&id);
                t.last.remove(&id);
                for tx in t.waiting.remove(&id).unwrap_or_default() {
                    let _ = tx.send(end.clone());
                }
            }
        }
    }

    /// A waited-on job's state at squeue's last answer.
    pub fn last_state(&self, job: u64) -> Option<String> {
        self.tracker
            .lock()
            .expect("tracker lock")
            .last
            .get(&job)
            .cloned()
    }

    /// Every job of this lineage that Slurm still lists, by its name.
    pub async fn ours(&self) -> Result<Vec<Found>, String> {
        let mut cmd = Command::new("squeue");
        cmd.args(["--noheader", "--states=all", "--format=%i|%j|%T"]);
        let out = run(cmd).await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split('|');
                let job = f.next()?.trim().parse().ok()?;
                let name = f.next()?.trim();
                let state = JobState(f.next()?.trim().to_string());
                let (trial, seed, kind) = self.parse_name(name)?;
                Some(Found {
                    job,
                    trial,
                    seed,
                    kind,
                    state,
                })
            })
            .collect())
    }

    /// The newest job of this run that Slurm has not finished, if any.
    async fn live_job(&self, trial: TrialId, seed: u64, kind: JobKind) -> Option<u64> {
        self.ours()
            .await
            .ok()?
            .into_iter()
            .filter(|f| (f.trial, f.seed, f.kind) == (trial, seed, kind) && !f.state.is_terminal())
            .map(|f| f.job)
            .max()
    }

    fn parse_name(&self, name: &str) -> Option<(TrialId, u64, JobKind)> {
        let rest = name.strip_prefix(&self.tag)?.strip_prefix('-')?;
        let mut f = rest.split('-');
        let trial = TrialId(f.next()?.parse().ok()?);
        let seed = f.next()?.parse().ok()?;
        let kind = match f.next()? {
            "train" => JobKind::Train,
            "eval" => JobKind::Eval,
            "full" => JobKind::Full,
            _ => return None,
        };
        f.next().is_none().then_some((trial, seed, kind))
    }

    /// Runs `spec` as a job and waits for it: `submitted` learns the job id
    /// first (to record it), `guard` holds it so that dropping the run
    /// cancels the job.
    pub async fn run_job<F, Fut>(
        self: &Arc<Self>,
        spec: &Spec,
        guard: &GroupGuard,
        (trial, seed, kind): (TrialId, u64, JobKind),
        submitted: F,
    ) -> Outcome
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        // A controller that is down or busy, or a submit limit reached, is
        // waited out (the run keeps its slot; pause --cancel or a stop ends
        // it); any other refusal is the run's failure, with sbatch's words.
        let mut pause = Duration::from_secs_f64(self.settings.poll_secs);
        let job = loop {
            match self.submit(spec, trial, seed, kind).await {
                Ok(job) => break job,
                Err(e) if transient(&e) => {
                    warn!(trial = %trial, seed, error = %e, retry_in = ?pause, "sbatch refused for now; submitting again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_SUBMIT_PAUSE);
                    // An sbatch that timed out may have submitted after all.
                    if let Some(job) = self.live_job(trial, seed, kind).await {
                        break job;
                    }
                }
                Err(e) => {
                    return Outcome::Ran(Box::new(ProcessReport {
                        spawn_error: Some(format!("sbatch: {e}")),
                        stdout: spec.stdout.clone(),
                        stderr: spec.stderr.clone(),
                        ..Default::default()
                    }))
                }
            }
        };
        guard.set_job(job, cancel_now);
        submitted(job).await;
        self.follow(spec, guard, job).await
    }

    /// Waits for a submitted (or adopted) job and makes its outcome.
    pub async fn follow(self: &Arc<Self>, spec: &Spec, guard: &GroupGuard, job: u64) -> Outcome {
        guard.set_job(job, cancel_now);
        let end = self.wait(job).await;
        guard.disarm();
        let report = read_report(&JobFiles::of(spec).report);
        outcome(job, &end, report, spec)
    }
}

/// The job's outcome from its end state and its wrapper's report (absent
/// when the wrapper was killed or never started).
pub fn outcome(job: u64, end: &JobEnd, report: Option<ProcessReport>, spec: &Spec) -> Outcome {
    let slurm = SlurmJob {
        id: job,
        state: end.state.0.clone(),
        node: end.node.clone(),
    };
    let log = JobFiles::of(spec).log;
    let bare = || ProcessReport {
        stdout: spec.stdout.clone(),
        stderr: spec.stderr.clone(),
        ..Default::default()
    };
    let mut r = match end.state.0.as_str() {
        // The wrapper reported how the command ended.
        "COMPLETED" | "FAILED" | "UNKNOWN" if report.is_some() => report.unwrap_or_default(),
        "COMPLETED" | "FAILED" => ProcessReport {
            spawn_error: Some(format!(
                "Slurm job {job} {} ({}) without a report from its wrapper; see {}",
                end.state.0,
                end.reason,
                log.display()
            )),
            ..bare()
        },
        "TIMEOUT" | "DEADLINE" => ProcessReport {
            timed_out: true,
            ..report.unwrap_or_else(bare)
        },
        "OUT_OF_MEMORY" => ProcessReport {
            memory_exceeded: true,
            ..report.unwrap_or_else(bare)
        },
        other => {
            return Outcome::Lost(format!(
                "Slurm job {job} ended {other}{}{}",
                if end.reason.is_empty() || end.reason == "None" {
                    String::new()
                } else {
                    format!(" ({})", end.reason)
                },
                if end.node.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", end.node)
                }
            ))
        }
    };
    r.slurm = Some(slurm);
    Outcome::Ran(Box::new(r))
}

fn read_report(path: &Path) -> Option<ProcessReport> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The longest wait between two submissions of a job sbatch refused for now.
const MAX_SUBMIT_PAUSE: Duration = Duration::from_secs(60);

/// sbatch's refusals that pass: the controller is down, busy or slow, or a
/// limit on submitted jobs is reached.
fn transient(error: &str) -> bool {
    [
        "Unable to contact slurm controller",
        "Socket timed out",
        "temporarily unable",
        "Resource temporarily unavailable",
        "MaxSubmit",
        "did not answer",
        "Connection refused",
    ]
    .iter()
    .any(|p| error.contains(p))
}

/// What squeue says of `ids` (finished jobs included, while slurmctld
/// remembers them: `MinJobAge`); ids it does not know are left out.
async fn squeue(ids: &[u64]) -> Result<HashMap<u64, JobEnd>, String> {
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    let mut cmd = Command::new("squeue");
    cmd.args(["--noheader", "--states=all", "--format=%i|%T|%r|%N"])
        .arg(format!("--jobs={}", list.join(",")));
    let out = match run(cmd).await {
        Ok(out) => out,
        // Asked about one job it has forgotten, squeue fails.
        Err(e) if e.contains("Invalid job id") => String::new(),
        Err(e) => return Err(e),
    };
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            let id = f.next()?.parse().ok()?;
            let state = JobState(f.next()?.to_string());
            let reason = f.next().unwrap_or_default().to_string();
            let node = f.next().unwrap_or_default().to_string();
            Some((
                id,
                JobEnd {
                    state,
                    reason,
                    node,
                },
            ))
        })
        .collect())
}

/// What Slurm's accounting says of a job squeue has forgotten; `None`
/// without accounting (or without the job in it).
async fn sacct(id: u64) -> Option<JobEnd> {
    let mut cmd = Command::new("sacct");
    cmd.args(["--noheader", "--allocations", "--parsable2"])
        .args(["--format=State,Reason,NodeList"])
        .arg(format!("--jobs={id}"));
    let out = run(cmd).await.ok()?;
    let line = out.lines().next()?;
    let mut f = line.split('|').map(str::trim);
    // `CANCELLED by 1000`: the state is the first word.
    let state = f.next()?.split_whitespace().next()?.to_string();
    Some(JobEnd {
        state: JobState(state),
        reason: f.next().unwrap_or_default().to_string(),
        node: f.next().unwrap_or_default().to_string(),
    })
}

/// Cancels jobs now (a dropped run, a shutdown); failures are logged.
pub fn cancel_now(jobs: &[u64]) {
    if jobs.is_empty() {
        return;
    }
    let out = std::process::Command::new("scancel")
        .args(jobs.iter().map(u64::to_string))
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            warn!(?jobs, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "scancel failed")
        }
        Err(e) => warn!(?jobs, error = %e, "cannot run scancel"),
    }
}

/// Slurm's `--time` in minutes for a timeout: rounded up, at least 1.
pub fn minutes(timeout: Duration) -> u64 {
    timeout.as_secs().div_ceil(60).max(1)
}

/// The job-name tag of a lineage: `ratchet-` and 8 hex digits of an FNV-1a
/// hash of its directory (stable across ratchet versions, so a restarted
/// daemon finds its jobs).
pub fn lineage_tag(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ratchet-{:08x}", (h >> 32) as u32 ^ h as u32)
}

/// A word for /bin/sh: single-quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `ratchet job run FILE`, on the job's node: runs the file's command as a
/// local run would be (own process group, capped logs, metrics, memory
/// gate), writes its report (atomically) and returns its exit status.
/// Without `RAYON_NUM_THREADS`/`OMP_NUM_THREADS`, the command gets the
/// job's `SLURM_CPUS_PER_TASK`, when set.
pub fn run_job_file(file: &Path) -> Result<u8, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut job: JobFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a ratchet job file: {e}", file.display()))?;
    if let Ok(cpus) = std::env::var("SLURM_CPUS_PER_TASK") {
        for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS"] {
            if std::env::var_os(var).is_none() && !job.spec.env.iter().any(|(k, _)| k == var) {
                job.spec.env.push((var.into(), cpus.clone()));
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let report = rt
        .block_on(process::run(&job.spec, &GroupGuard::default()))
        .map_err(|e| format!("cannot capture the command's output: {e}"))?;
    let tmp = job.report.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&report).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &job.report))
        .map_err(|e| format!("cannot write {}: {e}", job.report.display()))?;
    Ok(if report.succeeded() {
        0
    } else {
        report
            .exit_code
            .and_then(|c| u8::try_from(c).ok())
            .filter(|&c| c != 0)
            .unwrap_or(1)
    })
}

/// Runs a Slurm client command; its stdout, or what went wrong.
async fn run(mut cmd: Command) -> Result<String, String> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| format!("{program} did not answer in 60 s"))?
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests;
