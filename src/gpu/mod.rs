//! GPU slots for local runs (`[executor] gpus`). The devices nvidia-smi
//! lists are grouped into fixed sets of `gpus_per_trial`; each set is one
//! slot, leased to one run at a time and handed to it as
//! `CUDA_VISIBLE_DEVICES` (UUIDs, so a renumbering cannot move a trial onto
//! another run's device). While any set is leased, one sampler asks
//! nvidia-smi for every device's utilization and memory each `poll`, and
//! each lease keeps its own peak and mean. A set leaves the rotation when
//! one of its devices is gone from nvidia-smi, or after repeated runs on it
//! failed with a device error; `ratchet status` shows why.
//!
//! ratchet never opens a device itself: nvidia-smi talks to the driver
//! (NVML, no CUDA context), and only trial commands use CUDA.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tracing::{info, warn};

use crate::config::{GpuChoice, GpuSettings};
use crate::domain::{GpuDevice, GpuUse, ProcessReport, TrialId};

/// The discovery query (`--format=csv,noheader`: memory as `81559 MiB`).
pub const DISCOVER: [&str; 2] = [
    "--query-gpu=index,uuid,name,memory.total",
    "--format=csv,noheader",
];

/// The sampler's query: every device, one line each.
const SAMPLE: [&str; 2] = [
    "--query-gpu=uuid,utilization.gpu,memory.used",
    "--format=csv,noheader,nounits",
];

/// Runs in a row on one set that failed with a device error before the set
/// leaves the rotation.
pub const DEVICE_ERRORS: u32 = 3;

/// Samples in a row without one of a set's devices before the set leaves
/// the rotation.
const MISSING: u32 = 2;

/// How long one nvidia-smi call may take (a wedged driver hangs it).
const SMI_TIMEOUT: Duration = Duration::from_secs(20);

/// Where trials run, as decided at start.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// CPU slots (`daemon.slots`); `why` when GPUs were asked for and none
    /// can be used (`gpus = "auto"` without nvidia-smi or without devices).
    Cpu { why: Option<String> },
    /// One slot per set of devices; `idle`: devices left over.
    Gpus {
        sets: Vec<Vec<GpuDevice>>,
        idle: Vec<GpuDevice>,
    },
}

impl Placement {
    /// One line for `ratchet check` and the log.
    pub fn describe(&self, cpu_slots: usize) -> String {
        match self {
            Placement::Cpu { why: None } => format!("trials run here, {cpu_slots} at once"),
            Placement::Cpu { why: Some(why) } => {
                format!("{why}: trials run here on CPU slots, {cpu_slots} at once")
            }
            Placement::Gpus { sets, idle } => {
                let per = sets.first().map_or(0, Vec::len);
                let list: Vec<String> = sets
                    .iter()
                    .flatten()
                    .map(|d| format!("{} {} ({} MiB)", d.index, d.name, d.memory_mib))
                    .collect();
                let mut s = format!(
                    "trials run here on GPUs, {} at once, {per} GPU(s) each: {}",
                    sets.len(),
                    list.join(", ")
                );
                if !idle.is_empty() {
                    let ix: Vec<String> = idle.iter().map(|d| d.index.to_string()).collect();
                    s += &format!(" (GPU {} left idle)", ix.join(", "));
                }
                s
            }
        }
    }
}

/// Decides where trials run: the configured GPUs, grouped into slots, or
/// CPU slots. `Err` for a configuration that cannot be honoured: listed
/// GPUs that nvidia-smi cannot show, fewer GPUs than one trial takes.
pub async fn place(settings: Option<&GpuSettings>) -> Result<Placement, String> {
    let Some(settings) = settings else {
        return Ok(Placement::Cpu { why: None });
    };
    let found = match (discover().await, &settings.choice) {
        (Ok(found), _) => found,
        (Err(Discovery::NoTool), GpuChoice::Auto) => {
            return Ok(Placement::Cpu {
                why: Some("executor.gpus = \"auto\", but no nvidia-smi is on PATH".into()),
            })
        }
        (Err(Discovery::Failed(e)), GpuChoice::Auto) => {
            return Ok(Placement::Cpu {
                why: Some(format!("executor.gpus = \"auto\", but {e}")),
            })
        }
        (Err(Discovery::NoTool), GpuChoice::List(_)) => {
            return Err("executor.gpus lists GPUs, but no nvidia-smi is on PATH".into())
        }
        (Err(Discovery::Failed(e)), GpuChoice::List(_)) => {
            return Err(format!("executor.gpus lists GPUs, but {e}"))
        }
    };
    let chosen: Vec<GpuDevice> = match &settings.choice {
        GpuChoice::Auto => {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
            let found = restrict(found, visible.as_deref())?;
            if found.is_empty() {
                return Ok(Placement::Cpu {
                    why: Some(
                        "executor.gpus = \"auto\", but ratchet's CUDA_VISIBLE_DEVICES is empty"
                            .into(),
                    ),
                });
            }
            found
        }
        GpuChoice::List(indices) => {
            let mut chosen = Vec::new();
            for i in indices {
                match found.iter().find(|d| d.index == *i) {
                    Some(d) => chosen.push(d.clone()),
                    None => {
                        let have: Vec<String> = found.iter().map(|d| d.index.to_string()).collect();
                        return Err(format!(
                            "executor.gpus: GPU {i} is not among the GPUs nvidia-smi lists ({})",
                            have.join(", ")
                        ));
                    }
                }
            }
            chosen
        }
    };
    let per = settings.per_trial;
    if chosen.len() < per {
        return Err(format!(
            "executor.gpus_per_trial = {per}, but there are only {} GPU(s) to use",
            chosen.len()
        ));
    }
    let whole = chosen.len() / per * per;
    let idle = chosen[whole..].to_vec();
    let sets = chosen[..whole].chunks(per).map(<[_]>::to_vec).collect();
    Ok(Placement::Gpus { sets, idle })
}

/// `gpus = "auto"` under an inherited `CUDA_VISIBLE_DEVICES` (a unit or
/// a scheduler that gave ratchet some of the machine's GPUs): only those,
/// named by index or UUID (or a UUID's unique prefix, as CUDA takes them).
pub fn restrict(found: Vec<GpuDevice>, visible: Option<&str>) -> Result<Vec<GpuDevice>, String> {
    let Some(visible) = visible else {
        return Ok(found);
    };
    let mut kept: Vec<GpuDevice> = Vec::new();
    for entry in visible.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let matches: Vec<&GpuDevice> = match entry.parse::<u32>() {
            Ok(i) => found.iter().filter(|d| d.index == i).collect(),
            Err(_) if entry.starts_with("GPU-") => {
                found.iter().filter(|d| d.uuid.starts_with(entry)).collect()
            }
            Err(_) => {
                return Err(format!(
                    "ratchet's CUDA_VISIBLE_DEVICES has `{entry}`, which is neither a GPU index nor a GPU UUID (MIG instances are not slots)"
                ))
            }
        };
        match matches.as_slice() {
            [d] if !kept.contains(d) => kept.push((*d).clone()),
            [_] => {}
            [] => {
                return Err(format!(
                    "ratchet's CUDA_VISIBLE_DEVICES names `{entry}`, which nvidia-smi does not list"
                ))
            }
            _ => {
                return Err(format!(
                "ratchet's CUDA_VISIBLE_DEVICES names `{entry}`, which matches more than one GPU"
            ))
            }
        }
    }
    Ok(kept)
}

/// Why no device list came back.
#[derive(Debug, PartialEq)]
pub enum Discovery {
    /// No nvidia-smi on PATH.
    NoTool,
    /// nvidia-smi failed or listed nothing usable (the reason).
    Failed(String),
}

/// The GPUs nvidia-smi lists.
pub async fn discover() -> Result<Vec<GpuDevice>, Discovery> {
    let text = smi(&DISCOVER).await?;
    match parse_devices(&text) {
        Ok(d) if d.is_empty() => Err(Discovery::Failed("nvidia-smi lists no GPU".into())),
        Ok(d) => Ok(d),
        Err(e) => Err(Discovery::Failed(e)),
    }
}

/// Runs nvidia-smi with `args`; its stdout.
async fn smi(args: &[&str]) -> Result<String, Discovery> {
    let mut cmd = Command::new("nvidia-smi");
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = match tokio::time::timeout(SMI_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(Discovery::Failed(format!(
                "nvidia-smi did not answer in {} s",
                SMI_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(Discovery::NoTool),
        Ok(Err(e)) => return Err(Discovery::Failed(format!("cannot run nvidia-smi: {e}"))),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        // nvidia-smi explains itself on stdout ("... couldn't communicate
        // with the NVIDIA driver").
        let said = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let said: String = said.trim().chars().take(300).collect();
        return Err(Discovery::Failed(format!(
            "nvidia-smi failed ({}): {said}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `0, GPU-8f6c..., NVIDIA H100 80GB HBM3, 81559 MiB` per line.
pub fn parse_devices(text: &str) -> Result<Vec<GpuDevice>, String> {
    let mut devices = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let bad = || format!("cannot read nvidia-smi's line `{line}`");
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 4 {
            return Err(bad());
        }
        let index = fields[0].parse().map_err(|_| bad())?;
        let uuid = fields[1].to_string();
        if uuid.is_empty() || uuid.contains(char::is_whitespace) {
            return Err(bad());
        }
        // A name with a comma in it spans the middle fields.
        let name = fields[2..fields.len() - 1].join(", ");
        let memory_mib = leading_number(fields[fields.len() - 1]).ok_or_else(bad)? as u64;
        devices.push(GpuDevice {
            index,
            uuid,
            name,
            memory_mib,
        });
    }
    Ok(devices)
}

/// One device in one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub uuid: String,
    /// Percent; `None` where the device does not report it (`[N/A]`).
    pub util: Option<f64>,
    /// MiB in use.
    pub memory: Option<u64>,
}

/// `GPU-8f6c..., 97, 40211` per line; unreadable lines are left out.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(',').map(str::trim);
            let uuid = f.next().filter(|u| !u.is_empty())?.to_string();
            let util = f.next().and_then(leading_number);
            let memory = f.next().and_then(leading_number).map(|m| m as u64);
            Some(Sample { uuid, util, memory })
        })
        .collect()
}

/// A sampler answer: its samples, or, when not one line can be read (a
/// warning instead of the table, a changed format), a failure, which says
/// nothing about the devices. Reading no line at all must not take every
/// set out of rotation.
fn answer_of(text: &str) -> Result<Vec<Sample>, String> {
    let samples = parse_samples(text);
    if samples
        .iter()
        .any(|s| s.memory.is_some() || s.util.is_some())
    {
        return Ok(samples);
    }
    let first = text.lines().next().unwrap_or("").trim();
    Err(format!(
        "nvidia-smi's answer has no readable line: `{}`",
        first.chars().take(200).collect::<String>()
    ))
}

/// The number a field starts with (`81559 MiB`, `97 %`); `None` for `[N/A]`.
fn leading_number(field: &str) -> Option<f64> {
    let n = field.split_whitespace().next()?;
    n.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

// ---------------------------------------------------------------------------
// The pool of GPU slots.

/// The GPU slots of one ratchet process, shared by the executor (leases)
/// and the runs' tasks (telemetry, health). Its sampler task ends when the
/// pool is dropped.
pub struct Gpus {
    pool: Mutex<Pool>,
    /// Called when an eval's lease frees a set (the executor, whose queued
    /// runs may wait for one).
    waker: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

struct Pool {
    sets: Vec<Set>,
    /// Evals waiting for a set: while any waits, train runs get none.
    waiting_evals: usize,
    /// The sampler's last failure, so it is logged once, not every poll.
    smi_error: Option<String>,
}

struct Set {
    devices: Vec<GpuDevice>,
    /// The run holding it.
    holder: Option<Holder>,
    /// Why it is out of rotation.
    out: Option<String>,
    /// Out because a device is gone (a run failing on it then is the
    /// device's fault, not the trial's).
    vanished: bool,
    /// Runs in a row that failed with a device error.
    errors: u32,
    /// Samples in a row that lacked one of its devices.
    missing: u32,
    usage: Usage,
    /// Its devices' last samples.
    latest: Vec<Sample>,
}

/// Telemetry of the current lease.
#[derive(Clone, Copy, Default)]
struct Usage {
    samples: u32,
    util_sum: f64,
    util_n: u32,
    peak: Option<u64>,
}

/// Who holds a set: a train run (a trial's own, seed 0, or a seed re-run)
/// or an eval of one (`evals_on_gpus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub trial: TrialId,
    pub seed: u64,
    #[serde(default)]
    pub eval: bool,
}

/// A GPU slot, for `ratchet status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuSlot {
    pub devices: Vec<GpuDevice>,
    /// The run that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Holder>,
    /// Why it is out of rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<String>,
    /// Each device's last nvidia-smi sample (taken while any slot is
    /// leased), in the order of `devices`; empty before the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latest: Vec<Sample>,
}

impl Gpus {
    /// The pool of `sets`, its sampler asking nvidia-smi every `poll`
    /// while a set is leased.
    pub fn start(sets: Vec<Vec<GpuDevice>>, poll: Duration) -> Arc<Gpus> {
        let gpus = Arc::new(Gpus {
            pool: Mutex::new(Pool {
                sets: sets
                    .into_iter()
                    .map(|devices| Set {
                        devices,
                        holder: None,
                        out: None,
                        vanished: false,
                        errors: 0,
                        missing: 0,
                        usage: Usage::default(),
                        latest: Vec::new(),
                    })
                    .collect(),
                smi_error: None,
                waiting_evals: 0,
            }),
            waker: Mutex::new(None),
        });
        tokio::spawn(sampler(Arc::downgrade(&gpus), poll));
        gpus
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        // The pool's invariants hold between statements: a panic elsewhere
        // leaves nothing half-done.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots: the sets in rotation, and those out of it whose run has not
    /// ended yet.
    pub fn slots(&self) -> usize {
        self.pool()
            .sets
            .iter()
            .filter(|s| s.out.is_none() || s.holder.is_some())
            .count()
    }

    /// A free set in rotation for trial `id`'s train run `seed`; none
    /// while an eval waits for one. Dropping the lease frees it.
    pub fn lease(self: &Arc<Self>, id: TrialId, seed: u64) -> Option<Lease> {
        let mut pool = self.pool();
        if pool.waiting_evals > 0 {
            return None;
        }
        self.take(&mut pool, id, seed, false)
    }

    fn take(
        self: &Arc<Self>,
        pool: &mut Pool,
        id: TrialId,
        seed: u64,
        eval: bool,
    ) -> Option<Lease> {
        let (set, s) = pool
            .sets
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.holder.is_none() && s.out.is_none())?;
        let holder = Holder {
            trial: id,
            seed,
            eval,
        };
        s.holder = Some(holder);
        s.usage = Usage::default();
        Some(Lease {
            gpus: self.clone(),
            set,
            holder,
            devices: s.devices.clone(),
        })
    }

    /// A set for an eval of trial `id`'s run `seed`, as soon as one is
    /// free, ahead of train runs; `None` when no set is in rotation at all.
    pub async fn lease_eval(self: &Arc<Self>, id: TrialId, seed: u64) -> Option<Lease> {
        /// Counts an eval as waiting for as long as it waits (also when
        /// its task is aborted meanwhile).
        struct Waiting<'a>(&'a Gpus);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.pool().waiting_evals -= 1;
            }
        }
        let mut waiting = None;
        loop {
            {
                let mut pool = self.pool();
                if let Some(lease) = self.take(&mut pool, id, seed, true) {
                    drop(pool);
                    drop(waiting);
                    return Some(lease);
                }
                if pool.sets.iter().all(|s| s.out.is_some()) {
                    return None;
                }
                if waiting.is_none() {
                    pool.waiting_evals += 1;
                    waiting = Some(Waiting(self));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Who to call when an eval frees a set.
    pub fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker);
    }

    pub fn status(&self) -> Vec<GpuSlot> {
        self.pool()
            .sets
            .iter()
            .map(|s| GpuSlot {
                devices: s.devices.clone(),
                running: s.holder,
                out: s.out.clone(),
                latest: s.latest.clone(),
            })
            .collect()
    }

    fn forget_samples(&self) {
        for set in &mut self.pool().sets {
            set.latest.clear();
        }
    }

    fn busy(&self) -> bool {
        self.pool().sets.iter().any(|s| s.holder.is_some())
    }

    /// Takes one nvidia-smi answer (or its failure) into every leased set's
    /// telemetry, and takes sets whose devices are gone out of rotation.
    fn sampled(&self, answer: Result<Vec<Sample>, String>) {
        let mut pool = self.pool();
        let samples = match answer {
            Ok(s) => s,
            Err(e) => {
                // No verdict on the devices from a tool that does not answer.
                if pool.smi_error.as_ref() != Some(&e) {
                    warn!(error = %e, "cannot sample GPU telemetry");
                    pool.smi_error = Some(e);
                }
                return;
            }
        };
        if pool.smi_error.take().is_some() {
            info!("nvidia-smi answers again");
        }
        let mut went_out = false;
        for set in &mut pool.sets {
            let mut gone = None;
            let leased = set.holder.is_some();
            set.latest.clear();
            if leased {
                set.usage.samples += 1;
            }
            for d in &set.devices {
                let Some(s) = samples.iter().find(|s| s.uuid == d.uuid) else {
                    gone = Some(d);
                    continue;
                };
                set.latest.push(s.clone());
                if leased {
                    if let Some(u) = s.util {
                        set.usage.util_sum += u;
                        set.usage.util_n += 1;
                    }
                    if let Some(m) = s.memory {
                        set.usage.peak = Some(set.usage.peak.map_or(m, |p| p.max(m)));
                    }
                }
            }
            match gone {
                None => set.missing = 0,
                Some(d) => {
                    set.missing += 1;
                    if set.missing >= MISSING && !set.vanished {
                        let why = format!("GPU {} ({}) is gone from nvidia-smi", d.index, d.uuid);
                        warn!(reason = %why, "GPU slot taken out of rotation");
                        set.out = Some(why);
                        set.vanished = true;
                        went_out = true;
                    }
                }
            }
        }
        if went_out && pool.sets.iter().all(|s| s.vanished) {
            tracing::error!(
                "every GPU slot is out of rotation: no trial starts until ratchet is restarted"
            );
        }
    }
}

/// Asks nvidia-smi about every device each `poll` while a set is leased.
async fn sampler(gpus: Weak<Gpus>, poll: Duration) {
    loop {
        tokio::time::sleep(poll).await;
        match gpus.upgrade() {
            None => return,
            Some(g) if !g.busy() => {
                // No sample is taken while no set is leased: forget the
                // last, or an idle GPU would show its last run's load.
                g.forget_samples();
                continue;
            }
            Some(_) => {}
        }
        let answer = match smi(&SAMPLE).await {
            Ok(text) => answer_of(&text),
            Err(Discovery::NoTool) => Err("nvidia-smi is no longer on PATH".to_string()),
            Err(Discovery::Failed(e)) => Err(e),
        };
        match gpus.upgrade() {
            None => return,
            Some(g) => g.sampled(answer),
        }
    }
}

/// A set of GPUs held by one run; dropping it frees the set. The run's
/// task works through a [`LeaseView`].
pub struct Lease {
    gpus: Arc<Gpus>,
    set: usize,
    holder: Holder,
    devices: Vec<GpuDevice>,
}

impl Lease {
    /// The set goes on to an eval of the same run (`evals_on_gpus`): it
    /// is shown as an eval's, its telemetry starts over, and freeing it
    /// wakes the executor.
    pub fn to_eval(&mut self) {
        let mut pool = self.gpus.pool();
        if let Some(s) = pool.sets.get_mut(self.set) {
            if s.holder == Some(self.holder) {
                self.holder.eval = true;
                s.holder = Some(self.holder);
                s.usage = Usage::default();
            }
        }
    }

    pub fn view(&self) -> LeaseView {
        LeaseView {
            gpus: self.gpus.clone(),
            set: self.set,
            holder: self.holder,
            devices: self.devices.clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut pool = self.gpus.pool();
            if let Some(s) = pool.sets.get_mut(self.set) {
                if s.holder == Some(self.holder) {
                    s.holder = None;
                }
            }
        }
        if self.holder.eval {
            if let Some(wake) = &*self.gpus.waker.lock().unwrap_or_else(|p| p.into_inner()) {
                wake();
            }
        }
    }
}

/// What a run's task sees of its lease: the devices, the telemetry so far,
/// and the set's health. Once the lease is gone (the run was cancelled),
/// it reads and changes nothing of the set's next holder.
#[derive(Clone)]
pub struct LeaseView {
    gpus: Arc<Gpus>,
    set: usize,
    holder: Holder,
    devices: Vec<GpuDevice>,
}

impl LeaseView {
    /// `CUDA_VISIBLE_DEVICES` for the run.
    pub fn visible(&self) -> String {
        let ids: Vec<&str> = self.devices.iter().map(|d| d.uuid.as_str()).collect();
        ids.join(",")
    }

    /// What the run used of its devices so far.
    pub fn usage(&self) -> GpuUse {
        let pool = self.gpus.pool();
        let u = pool
            .sets
            .get(self.set)
            .filter(|s| s.holder == Some(self.holder))
            .map(|s| s.usage)
            .unwrap_or_default();
        GpuUse {
            devices: self.devices.clone(),
            samples: u.samples,
            peak_memory_mib: u.peak,
            mean_util_pct: (u.util_n > 0).then(|| u.util_sum / f64::from(u.util_n)),
            out_of_memory: false,
            device_error: None,
        }
    }

    /// Adds the run's telemetry to its finished report and, for a failed
    /// run, what its logs say about the device: out of memory (the label),
    /// or a device error, counted towards the set's health. `Some(why)`:
    /// the run failed on a device that is gone, which is the device's
    /// loss, not the trial's.
    pub async fn finish(&self, report: &mut ProcessReport) -> Option<String> {
        let mut usage = self.usage();
        if !report.succeeded() && report.spawn_error.is_none() {
            let logs = [report.stderr.clone(), report.stdout.clone()];
            let verdict = tokio::task::spawn_blocking(move || read_logs(&[&logs[0], &logs[1]]))
                .await
                .unwrap_or_default();
            usage.out_of_memory = verdict.out_of_memory;
            usage.device_error = verdict.device_error;
            if let Some(why) = self.vanished() {
                return Some(format!("{why}; the run on it failed"));
            }
        }
        self.finished(usage.device_error.as_deref());
        report.gpu = Some(Box::new(usage));
        None
    }

    /// Why the set left the rotation, if one of its devices is gone.
    pub fn vanished(&self) -> Option<String> {
        let pool = self.gpus.pool();
        let s = pool.sets.get(self.set)?;
        s.vanished.then(|| s.out.clone()).flatten()
    }

    /// Counts a finished run towards the set's health: `error`, the log
    /// line of a device error, or `None` for a run without one. After
    /// [`DEVICE_ERRORS`] in a row the set leaves the rotation, unless it is
    /// the last one in rotation (then the fault is more likely the
    /// experiment's than every device's).
    pub fn finished(&self, error: Option<&str>) {
        let mut pool = self.gpus.pool();
        let others = pool
            .sets
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != self.set && s.out.is_none())
            .count();
        let Some(s) = pool.sets.get_mut(self.set) else {
            return;
        };
        if s.holder != Some(self.holder) {
            return;
        }
        let Some(line) = error else {
            s.errors = 0;
            return;
        };
        s.errors += 1;
        if s.errors < DEVICE_ERRORS || s.out.is_some() {
            return;
        }
        let ix: Vec<String> = s.devices.iter().map(|d| d.index.to_string()).collect();
        if others == 0 {
            warn!(
                gpus = %ix.join(","), error = %line,
                "runs on the last GPU slot in rotation keep failing with device errors; it stays in rotation"
            );
            return;
        }
        let why = format!(
            "{} runs in a row failed with a device error: {line}",
            s.errors
        );
        warn!(gpus = %ix.join(","), reason = %why, "GPU slot taken out of rotation");
        s.out = Some(why);
    }
}

mod logs;

pub use logs::{read_logs, LogVerdict};

#[cfg(test)]
mod tests;
