//! A specialist: proposes trials for one surface when the executor asks.
//! `kind = "search"`: model-free local/global search over the declared space,
//! starting from the lineage incumbent, never proposing a configuration that
//! lineage already holds.
//! `kind = "manual"`: proposals written by hand as JSON files into
//! `<lineage_dir>/inbox/<name>/`, taken in file name order; a taken file moves
//! to `inbox/<name>/done/` named after its trial. An empty inbox is looked at
//! every second, and a file that arrives wakes the executor's asks.
//! `kind = "llm"`: a model behind an OpenAI-compatible endpoint. The prompt
//! (agent file, surface files of the incumbent, lineage feedback) is built
//! here; the request runs in a task that reports back with `Replied`, so the
//! actor stays responsive. A request that fails for good is a
//! `proposer_error` event, and the specialist rests (doubling per failure)
//! while the others go on; at the end of a rest it sends the executor `Wake`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, info, warn};

use super::messages::{ExecutorMsg, Replied, SpecialistMsg};
use super::{propose_trial, CALL_TIMEOUT_MS};
use crate::config::{Experiment, Specialist as SpecialistConfig, SpecialistKind};
use crate::domain::{FailureLabel, Params, Trial, TrialId, TrialStatus};
use crate::lineage::actor::LineageMsg;
use crate::lineage::{FeedbackQuery, LineageStore, NewTrial};
use crate::llm::{Failure, LlmClient, LlmError};
use crate::probe;
use crate::propose::constraints::{self, FailureModel};
use crate::propose::model::{Observation, Ranker};
use crate::propose::rng::Rng;
use crate::propose::{prompt, reply, search};
use crate::runner::Workshop;

/// Follows a shared program written for an agent that runs its own loop
/// (autoresearch's program.md): here ratchet does that part.
const PROGRAM_NOTE: &str = "# How this runs here\n\n\
ratchet runs the loop described above for you: it commits, runs, scores, logs and \
reverts every trial, on several machines at once. Ignore the steps about running \
commands, git, run.log or results.tsv; propose one change per reply, as below. \
Your own focus follows.";

/// Candidates drawn per proposal; the first one lineage has never seen wins.
const CANDIDATES: usize = 32;
/// The outcomes a search specialist's failure model remembers (the newest).
const SEARCH_MEMORY: usize = 2000;
/// Trials shown in full in an LLM prompt, and trials its outcome counts cover.
const FEEDBACK: FeedbackQuery = FeedbackQuery {
    recent: 40,
    scan: 5000,
};
/// The most of one file read for a prompt (one that does not fit the
/// prompt's budget is shown as an excerpt).
const MAX_FILE: usize = 256 << 10;
/// The longest rest after repeated request failures.
const MAX_REST: Duration = Duration::from_secs(3600);

pub struct Specialist;

pub struct SpecialistArgs {
    pub config: SpecialistConfig,
    pub experiment: Arc<Experiment>,
    pub lineage: ActorRef<LineageMsg>,
    pub seed: u64,
    /// Distinguishes restarts so a restarted specialist does not replay its stream.
    pub incarnation: u64,
    pub lineage_dir: PathBuf,
    /// The experiment's repository (the incumbent's files are read there).
    pub workshop: Workshop,
}

pub struct SpecialistState {
    store: LineageStore,
    config: SpecialistConfig,
    experiment: Arc<Experiment>,
    lineage: ActorRef<LineageMsg>,
    rng: Rng,
    /// `manual`: where proposals are dropped.
    inbox: PathBuf,
    workshop: Workshop,
    /// `llm`: the client, absent while a request task holds it.
    llm: Option<LlmClient>,
    /// The watcher of the request task, and the request task.
    request: Option<(JoinHandle<()>, AbortHandle)>,
    resting_until: Option<Instant>,
    /// Consecutive failed requests.
    failures: u32,
    /// A `Wake` (the end of a rest) or a `WatchInbox` is on its way.
    wake_scheduled: bool,
    executor: Option<ActorRef<ExecutorMsg>>,
    /// `search`: what the failure model knows (configuration, failed), the
    /// newest `SEARCH_MEMORY` outcomes in the order trials finished, and the
    /// finish-index cursor after them: each proposal reads only what
    /// finished since the last.
    outcomes: std::collections::VecDeque<Outcome>,
    cursor: Vec<u8>,
    /// `search`: its own kept trials seen in that memory. Until the first,
    /// it explores its surface more boldly.
    keeps: u64,
}

/// A finished trial as a search specialist remembers it.
struct Outcome {
    config: Params,
    /// It changed this specialist's surface (what its model of good
    /// values learns from).
    on_surface: bool,
    /// It failed for its configuration (a crash, a gate, ...).
    failed: bool,
    /// The cost it failed for, when its label says (too big, too slow).
    cost: Option<crate::recipe::Cost>,
    /// Its score, when it ran and was scored.
    score: Option<f64>,
}

/// Where a manual specialist's proposals are dropped.
pub fn inbox_dir(lineage_dir: &Path, name: &str) -> PathBuf {
    lineage_dir.join("inbox").join(name)
}

impl Actor for Specialist {
    type Msg = SpecialistMsg;
    type State = SpecialistState;
    type Arguments = SpecialistArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SpecialistArgs,
    ) -> Result<SpecialistState, ActorProcessingErr> {
        let rng = Rng::for_name(args.seed, &args.config.name, args.incarnation);
        let inbox = inbox_dir(&args.lineage_dir, &args.config.name);
        if args.config.kind == SpecialistKind::Manual {
            std::fs::create_dir_all(inbox.join("done"))
                .map_err(|e| format!("cannot create inbox {}: {e}", inbox.display()))?;
            info!(specialist = %args.config.name, inbox = %inbox.display(), "manual specialist reads proposals from its inbox");
        }
        let llm = llm_client(&args.config, &args.experiment)?;
        if llm.is_some() {
            // Its counters are shown (at zero) before its first request.
            crate::llm::usage::add(&args.config.name, 0, 0);
        }
        // Reads (incumbent, outcomes, which candidates are new) go straight
        // to the database, not through the lineage actor's mailbox behind
        // every other actor's writes; proposals are still written by it.
        let store = ractor::call_t!(args.lineage, LineageMsg::Reader, CALL_TIMEOUT_MS)?;
        Ok(SpecialistState {
            store,
            config: args.config,
            experiment: args.experiment,
            lineage: args.lineage,
            rng,
            inbox,
            workshop: args.workshop,
            llm,
            request: None,
            resting_until: None,
            failures: 0,
            wake_scheduled: false,
            executor: None,
            outcomes: Default::default(),
            cursor: Vec::new(),
            keeps: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SpecialistState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((watcher, request)) = state.request.take() {
            request.abort();
            watcher.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SpecialistMsg,
        state: &mut SpecialistState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SpecialistMsg::Propose { reply_to } => {
                let t0 = std::time::Instant::now();
                let trial = match state.config.kind {
                    SpecialistKind::Search => propose(state).await?,
                    SpecialistKind::Manual => {
                        // Whoever asked last is told when a file arrives.
                        state.executor = Some(reply_to.clone());
                        let trial = propose_from_inbox(state).await?;
                        if trial.is_none() {
                            watch_inbox(&myself, state);
                        }
                        trial
                    }
                    SpecialistKind::Llm => {
                        match ask_model(&myself, state, &reply_to).await? {
                            // Answered when the request task reports back.
                            Asked::Pending => return Ok(()),
                            Asked::Resting => {
                                reply_to.cast(ExecutorMsg::Resting(state.config.name.clone()))?;
                                return Ok(());
                            }
                        }
                    }
                };
                if let Some(t) = &trial {
                    probe::since(t.id, probe::Stage::Propose, t0);
                }
                reply_to.cast(ExecutorMsg::Proposed {
                    specialist: state.config.name.clone(),
                    trial: trial.map(Box::new),
                })?;
            }
            SpecialistMsg::Replied(replied) => {
                let Replied {
                    client,
                    result,
                    parent,
                    config,
                } = *replied;
                state.llm = match client {
                    Some(c) => Some(c),
                    None => llm_client(&state.config, &state.experiment)?,
                };
                state.request = None;
                // The newest executor that asked (it may have been restarted
                // during the request); set before any request starts.
                let reply_to = state
                    .executor
                    .clone()
                    .ok_or("a model reply without an executor that asked")?;
                let trial = match result {
                    Ok(completion) => {
                        crate::llm::usage::add(
                            &state.config.name,
                            completion.attempts.into(),
                            completion.tokens,
                        );
                        state.failures = 0;
                        debug!(specialist = %state.config.name, tokens = completion.tokens, attempts = completion.attempts, "model replied");
                        for (kind, detail) in completion.events {
                            let _ = state.lineage.cast(LineageMsg::Event {
                                kind: kind.into(),
                                subject: state.config.name.clone(),
                                detail,
                            });
                        }
                        let new = proposal_trial(
                            state,
                            Ok(completion.text),
                            "the model's reply",
                            parent,
                            config,
                        );
                        Some(propose_trial(&state.lineage, new).await?)
                    }
                    Err(failure) => {
                        crate::llm::usage::add(&state.config.name, failure.attempts.into(), 0);
                        rest_after_failure(&myself, state, failure);
                        reply_to.cast(ExecutorMsg::Resting(state.config.name.clone()))?;
                        return Ok(());
                    }
                };
                reply_to.cast(ExecutorMsg::Proposed {
                    specialist: state.config.name.clone(),
                    trial: trial.map(Box::new),
                })?;
            }
            SpecialistMsg::Wake => {
                state.wake_scheduled = false;
                if let Some(executor) = &state.executor {
                    executor.cast(ExecutorMsg::Wake(state.config.name.clone()))?;
                }
            }
            SpecialistMsg::WatchInbox => {
                state.wake_scheduled = false;
                // An unreadable inbox fails the next ask, not the watch.
                if inbox_files(&state.inbox).map_or(true, |f| f.is_empty()) {
                    watch_inbox(&myself, state);
                } else if let Some(executor) = &state.executor {
                    // An executor restarted meanwhile asks anew by itself.
                    let _ = executor.cast(ExecutorMsg::Wake(state.config.name.clone()));
                }
            }
        }
        Ok(())
    }
}

async fn propose(
    state: &mut SpecialistState,
) -> Result<Option<crate::domain::Trial>, ActorProcessingErr> {
    let incumbent = state.store.incumbent()?;
    let (base, parent) = match incumbent {
        Some(inc) => (inc.config, Some(inc.trial)),
        None => (state.experiment.defaults.clone(), None),
    };
    let surface = state
        .experiment
        .surface(&state.config.surface)
        .ok_or("surface vanished from the experiment")?;
    // What finished since the last proposal (any specialist's trials): the
    // failure model and the model of good values learn from it.
    let (finished, cursor) = state.store.finished_after(&state.cursor, SEARCH_MEMORY)?;
    state.cursor = cursor;
    for t in finished {
        if t.status == TrialStatus::Kept && t.specialist == state.config.name {
            state.keeps += 1;
        }
        if let Some(failed) = constraints::evidence(&t) {
            state.outcomes.push_back(Outcome {
                score: if failed { None } else { t.score },
                on_surface: t.changes.keys().any(|k| surface.params.contains_key(k)),
                config: t.config,
                failed,
                cost: t.label.filter(|_| failed).and_then(constraints::cost_of),
            });
        }
    }
    while state.outcomes.len() > SEARCH_MEMORY {
        state.outcomes.pop_front();
    }
    let candidates = search::candidates(
        &surface.params,
        &base,
        &mut state.rng,
        CANDIDATES,
        if state.keeps == 0 {
            search::EXPLORE_SHARE
        } else {
            search::GLOBAL_SHARE
        },
    );
    let mut fresh: Vec<search::Candidate> = Vec::with_capacity(candidates.len());
    for c in candidates {
        // A change only of what does not matter at its values is the same
        // recipe in effect (`[surface.when]`).
        if !state.experiment.file.changes_matter(&c.changes, &c.config) {
            continue;
        }
        if !state.store.knows(&c.config)? {
            fresh.push(c);
        }
    }
    let space = state.experiment.file.space();
    let costs = state.experiment.file.costs();
    let model =
        FailureModel::from_points(&space, state.outcomes.iter().map(|o| (&o.config, o.failed)))
            .with_costs(
                &costs,
                state
                    .outcomes
                    .iter()
                    .filter_map(|o| Some((&o.config, o.cost?))),
            );
    // Which values of this surface the best trials that changed it (anyone's)
    // have: candidates in the model's order (without a model: as drawn).
    // Trials on other surfaces carry the incumbent's values of this one,
    // so fed those the model would favour staying near the incumbent.
    let ranker = Ranker::new(
        &surface.params,
        state.outcomes.iter().map(|o| Observation {
            config: &o.config,
            score: o.score,
            changed: o.on_surface,
        }),
        state.experiment.file.direction,
    );
    let mut order: Vec<usize> = (0..fresh.len()).collect();
    if let Some(r) = &ranker {
        let scores: Vec<f64> = fresh.iter().map(|c| r.score(&c.config)).collect();
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    }
    // The first whose nearest measured neighbours did not mostly fail;
    // when every one's did, the least risky.
    let mut risks = Vec::with_capacity(order.len());
    let mut index = None;
    let mut walled = 0;
    for &i in &order {
        walled += model.beyond(&fresh[i].config).is_some() as usize;
        let risk = model.risk(&fresh[i].config);
        if risk < 0.5 {
            index = Some(i);
            break;
        }
        risks.push((risk, i));
    }
    let skipped = risks.len();
    let index = index.or_else(|| {
        risks
            .iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, i)| *i)
    });
    let Some(index) = index else {
        debug!(specialist = %state.config.name, "no unmeasured configuration near the incumbent");
        return Ok(None);
    };
    let ranked_among = ranker.is_some().then_some(fresh.len()).filter(|n| *n > 1);
    let rank = order.iter().position(|i| *i == index).unwrap_or(0) + 1;
    let mut pick = fresh.into_iter().nth(index).expect("index in range");
    if let Some(n) = ranked_among {
        pick.hypothesis
            .push_str(&format!(" (model of good values: rank {rank} of {n})"));
    }
    if skipped > 0 {
        let walled = if walled > 0 {
            format!(", {walled} of them as large or as slow as a recipe that failed for that")
        } else {
            String::new()
        };
        pick.hypothesis.push_str(&format!(
            " (skipped {skipped} candidate(s) near failed trials{walled}; {} failures known)",
            model.failures()
        ));
    }
    let new = NewTrial {
        specialist: state.config.name.clone(),
        surface: Some(state.config.surface.clone()),
        parent,
        hypothesis: pick.hypothesis,
        changes: pick.changes,
        config: pick.config,
        ..Default::default()
    };
    let trial = propose_trial(&state.lineage, new).await?;
    Ok(Some(trial))
}

/// How often an empty inbox is looked at again.
const INBOX_POLL: Duration = Duration::from_secs(1);

/// The proposals waiting in an inbox, in name order.
fn inbox_files(inbox: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(inbox)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Looks at the inbox again after `INBOX_POLL` (once at a time).
fn watch_inbox(myself: &ActorRef<SpecialistMsg>, state: &mut SpecialistState) {
    if !state.wake_scheduled {
        state.wake_scheduled = true;
        myself.send_after(INBOX_POLL, || SpecialistMsg::WatchInbox);
    }
}

/// The next proposal file of a manual specialist's inbox, recorded in lineage
/// (an unreadable one as `proposer_error`, with its text) and moved to `done/`.
async fn propose_from_inbox(
    state: &mut SpecialistState,
) -> Result<Option<Trial>, ActorProcessingErr> {
    // An inbox that cannot be read fails the specialist (it is restarted).
    let files = inbox_files(&state.inbox)
        .map_err(|e| format!("cannot read inbox {}: {e}", state.inbox.display()))?;
    let Some(file) = files.into_iter().next() else {
        return Ok(None);
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::fs::read(&file)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| format!("cannot read the file: {e}"));
    let incumbent = ractor::call_t!(state.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
    let (config, parent) = match incumbent {
        Some(inc) => (inc.config, Some(inc.trial)),
        None => (state.experiment.defaults.clone(), None),
    };
    let new = proposal_trial(state, text, &name, parent, config);
    let trial = propose_trial(&state.lineage, new).await?;
    let done = state
        .inbox
        .join("done")
        .join(format!("{:06}-{name}", trial.id.0));
    if let Err(e) = std::fs::rename(&file, &done) {
        warn!(file = %file.display(), error = %e, "cannot move a taken proposal to done/; removing it");
        let _ = std::fs::remove_file(&file);
    }
    Ok(Some(trial))
}

/// An LLM specialist's client, its replies held to its surface's proposal schema.
fn llm_client(
    config: &SpecialistConfig,
    experiment: &Experiment,
) -> Result<Option<LlmClient>, String> {
    match (&config.kind, &config.llm) {
        (SpecialistKind::Llm, Some(section)) => {
            let schema = experiment
                .surface(&config.surface)
                .map(crate::propose::schema::proposal);
            LlmClient::new(section, schema).map(Some)
        }
        _ => Ok(None),
    }
}

/// What became of an ask to an LLM specialist.
enum Asked {
    /// A request is under way; its `Replied` answers the executor.
    Pending,
    /// Resting (after failed requests, or over the hourly budget): the
    /// executor hears `Resting` now and `Wake` when the rest is over.
    Resting,
}

/// Starts a model request for a proposal, unless the specialist rests.
async fn ask_model(
    myself: &ActorRef<SpecialistMsg>,
    state: &mut SpecialistState,
    reply_to: &ActorRef<ExecutorMsg>,
) -> Result<Asked, ActorProcessingErr> {
    state.executor = Some(reply_to.clone());
    let now = Instant::now();
    let Some(client) = state.llm.as_mut() else {
        // A request is already in flight (asked again by a restarted
        // executor): its reply goes to the newest executor.
        return Ok(Asked::Pending);
    };
    let rest = state
        .resting_until
        .map(|t| t.saturating_duration_since(now))
        .unwrap_or_default()
        .max(client.budget_wait(now));
    if !rest.is_zero() {
        debug!(specialist = %state.config.name, rest_s = rest.as_secs(), "resting");
        schedule_wake(myself, state, rest);
        return Ok(Asked::Resting);
    }
    let incumbent = ractor::call_t!(state.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
    let feedback = ractor::call_t!(
        state.lineage,
        LineageMsg::Feedback,
        CALL_TIMEOUT_MS,
        FEEDBACK
    )?;
    let exp = state.experiment.clone();
    let surface = exp
        .surface(&state.config.surface)
        .ok_or("surface vanished from the experiment")?;
    let (config, parent, commit) = match &incumbent {
        Some(inc) => (
            inc.config.clone(),
            Some(inc.trial),
            inc.commit
                .clone()
                .unwrap_or_else(|| state.workshop.base().clone()),
        ),
        None => (exp.defaults.clone(), None, state.workshop.base().clone()),
    };
    // The agent file is read at every request: editing it steers the next one.
    // So is the program every specialist shares, first.
    let read = |path: &std::path::PathBuf| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut instructions = match &state.config.program {
        Some(path) => format!("{}\n\n{PROGRAM_NOTE}\n\n", read(path)?.trim_end()),
        None => String::new(),
    };
    if let Some(path) = &state.config.instructions {
        instructions.push_str(&read(path)?);
    }
    let mut paths: Vec<String> = exp
        .file
        .recipe
        .iter()
        .map(|_| exp.file.recipe_path())
        .collect();
    paths.extend(surface.files.iter().cloned());
    let files = state
        .workshop
        .read_files(commit, paths, MAX_FILE)
        .await
        .map_err(|e| format!("reading the incumbent's files: {e}"))?;
    let values: Params = config
        .iter()
        .filter(|(k, _)| surface.params.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let stderr_tails = stderr_tails(&feedback.recent);
    let budget = state.llm.as_ref().map_or(12_000, LlmClient::prompt_budget);
    let (system, user) = prompt::build(&prompt::PromptInput {
        instructions: &instructions,
        specialist: &state.config.name,
        experiment: &exp.file,
        surface,
        incumbent: incumbent.as_ref(),
        values: &values,
        files: &files,
        feedback: &feedback,
        stderr_tails: &stderr_tails,
        budget_tokens: budget,
    });
    let mut client = state.llm.take().expect("checked above");
    let mut jitter = Rng::new(state.rng.next_u64());
    let me = myself.clone();
    // The request runs in its own task, watched by another: even if it
    // panicked, the executor's ask is answered and the client rebuilt.
    let request = tokio::spawn(async move {
        let result = client.complete(&system, &user, &mut jitter).await;
        (client, result)
    });
    let abort = request.abort_handle();
    let watcher = tokio::spawn(async move {
        let (client, result) = match request.await {
            Ok((client, result)) => (Some(client), result),
            Err(e) => (
                None,
                Err(Failure {
                    error: LlmError::Other(format!("the request task failed: {e}")),
                    attempts: 0,
                }),
            ),
        };
        let _ = me.cast(SpecialistMsg::Replied(Box::new(Replied {
            client,
            result,
            parent,
            config,
        })));
    });
    state.request = Some((watcher, abort));
    Ok(Asked::Pending)
}

/// Records a request that failed for good and rests: the configured backoff,
/// doubling per consecutive failure, at least what the server asked for.
fn rest_after_failure(
    myself: &ActorRef<SpecialistMsg>,
    state: &mut SpecialistState,
    failure: Failure,
) {
    state.failures += 1;
    let base = state
        .config
        .llm
        .as_ref()
        .map_or(30, |l| l.failure_backoff_secs);
    let rest = Duration::from_secs(base)
        .saturating_mul(1 << (state.failures - 1).min(16))
        .min(MAX_REST)
        .max(failure.error.retry_after().unwrap_or_default());
    state.resting_until = Some(Instant::now() + rest);
    let detail = format!(
        "request failed after {} attempt(s): {}; resting {} s",
        failure.attempts,
        failure.error,
        rest.as_secs()
    );
    warn!(specialist = %state.config.name, "{detail}");
    let _ = state.lineage.cast(LineageMsg::Event {
        kind: "proposer_error".into(),
        subject: state.config.name.clone(),
        detail,
    });
    schedule_wake(myself, state, rest);
}

fn schedule_wake(myself: &ActorRef<SpecialistMsg>, state: &mut SpecialistState, after: Duration) {
    if !state.wake_scheduled {
        state.wake_scheduled = true;
        myself.send_after(after, || SpecialistMsg::Wake);
    }
}

/// A lineage record of a proposal that came as text: its edits, or, when the
/// text is not a proposal, a `proposer_error` trial that keeps the text.
fn proposal_trial(
    state: &SpecialistState,
    text: Result<String, String>,
    origin: &str,
    parent: Option<TrialId>,
    mut config: Params,
) -> NewTrial {
    let parsed = text
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|t| reply::parse(t));
    let mut new = NewTrial {
        specialist: state.config.name.clone(),
        surface: Some(state.config.surface.clone()),
        parent,
        reply: Some(reply::cap(text.as_deref().unwrap_or(""))),
        ..Default::default()
    };
    match parsed {
        Ok(p) => {
            // `2` for a float parameter is the value `2.0`: one config, one key.
            new.changes = reply::assignments(&p.edits)
                .into_iter()
                .map(|(k, v)| {
                    let spec = state.experiment.file.params().find(|(p, _)| **p == k);
                    let v = spec.map_or(v.clone(), |(_, spec)| spec.normalize(&v));
                    (k, v)
                })
                .collect();
            config.extend(new.changes.clone());
            new.hypothesis = p.hypothesis;
            new.edits = p.edits;
            new.expected_delta = p.expected_delta.filter(|d| d.is_finite());
        }
        Err(e) => {
            new.hypothesis = format!("(unreadable proposal: {origin})");
            new.rejected = Some((FailureLabel::ProposerError, format!("{origin}: {e}")));
        }
    }
    new.config = config;
    new
}

/// The last lines of the failing command's stderr for each failed trial:
/// the most useful thing a model can read about a crash.
fn stderr_tails(trials: &[Trial]) -> std::collections::BTreeMap<TrialId, String> {
    let mut out = std::collections::BTreeMap::new();
    for t in trials.iter().filter(|t| t.label.is_some()) {
        // The eval's stderr when eval ran and failed, else train's, else
        // the pre-flight check's (a trial it failed never trained).
        let report = match (&t.eval, &t.train, &t.preflight) {
            (Some(e), _, _) if !e.succeeded() => e,
            (_, Some(tr), _) => tr,
            (_, None, Some(p)) => p,
            _ => continue,
        };
        let text = crate::process::log_tail(&report.stderr, 4096);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if !tail.is_empty() {
            out.insert(t.id, tail);
        }
    }
    out
}
