//! A specialist: proposes trials for one surface when the executor asks.
//! `kind = "search"`: model-free local/global search over the declared space,
//! starting from the lineage incumbent, never proposing a configuration that
//! lineage already holds.
//! `kind = "manual"`: proposals written by hand as JSON files into
//! `<lineage_dir>/inbox/<name>/`, taken in file name order; a taken file moves
//! to `inbox/<name>/done/` named after its trial.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use super::executor::ExecutorMsg;
use super::CALL_TIMEOUT_MS;
use crate::config::{Experiment, Specialist as SpecialistConfig, SpecialistKind};
use crate::domain::{FailureLabel, Trial};
use crate::lineage::actor::LineageMsg;
use crate::lineage::NewTrial;
use crate::propose::rng::Rng;
use crate::propose::{reply, search};

/// Candidates drawn per proposal; the first one lineage has never seen wins.
const CANDIDATES: usize = 32;

pub enum SpecialistMsg {
    /// Propose one trial and send it (or `None`) to `reply_to`.
    Propose { reply_to: ActorRef<ExecutorMsg> },
}

pub struct Specialist;

pub struct SpecialistArgs {
    pub config: SpecialistConfig,
    pub experiment: Arc<Experiment>,
    pub lineage: ActorRef<LineageMsg>,
    pub seed: u64,
    /// Distinguishes restarts so a restarted specialist does not replay its stream.
    pub incarnation: u64,
    pub lineage_dir: PathBuf,
}

pub struct SpecialistState {
    config: SpecialistConfig,
    experiment: Arc<Experiment>,
    lineage: ActorRef<LineageMsg>,
    rng: Rng,
    /// `manual`: where proposals are dropped.
    inbox: PathBuf,
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
        Ok(SpecialistState {
            config: args.config,
            experiment: args.experiment,
            lineage: args.lineage,
            rng,
            inbox,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: SpecialistMsg,
        state: &mut SpecialistState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SpecialistMsg::Propose { reply_to } => {
                let trial = match state.config.kind {
                    SpecialistKind::Search => propose(state).await?,
                    SpecialistKind::Manual => propose_from_inbox(state).await?,
                };
                reply_to.cast(ExecutorMsg::Proposed {
                    specialist: state.config.name.clone(),
                    trial: trial.map(Box::new),
                })?;
            }
        }
        Ok(())
    }
}

async fn propose(
    state: &mut SpecialistState,
) -> Result<Option<crate::domain::Trial>, ActorProcessingErr> {
    let incumbent = ractor::call_t!(state.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
    let (base, parent) = match incumbent {
        Some(inc) => (inc.config, Some(inc.trial)),
        None => (state.experiment.defaults.clone(), None),
    };
    let surface = state
        .experiment
        .surface(&state.config.surface)
        .ok_or("surface vanished from the experiment")?;
    let candidates = search::candidates(&surface.params, &base, &mut state.rng, CANDIDATES);
    let configs = candidates.iter().map(|c| c.config.clone()).collect();
    let unknown = ractor::call_t!(state.lineage, LineageMsg::Unknown, CALL_TIMEOUT_MS, configs)?;
    let Some(pick) = candidates
        .into_iter()
        .zip(unknown)
        .find(|(_, u)| *u)
        .map(|(c, _)| c)
    else {
        debug!(specialist = %state.config.name, "no unmeasured configuration near the incumbent");
        return Ok(None);
    };
    let new = NewTrial {
        specialist: state.config.name.clone(),
        surface: Some(state.config.surface.clone()),
        parent,
        hypothesis: pick.hypothesis,
        changes: pick.changes,
        config: pick.config,
        ..Default::default()
    };
    let trial = ractor::call_t!(state.lineage, LineageMsg::Propose, CALL_TIMEOUT_MS, new)??;
    Ok(Some(trial))
}

/// The next proposal file of a manual specialist's inbox, recorded in lineage
/// (an unreadable one as `proposer_error`, with its text) and moved to `done/`.
async fn propose_from_inbox(
    state: &mut SpecialistState,
) -> Result<Option<Trial>, ActorProcessingErr> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&state.inbox)
        .map_err(|e| format!("cannot read inbox {}: {e}", state.inbox.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
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
    let parsed = text
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|t| reply::parse(t));
    let incumbent = ractor::call_t!(state.lineage, LineageMsg::Incumbent, CALL_TIMEOUT_MS)?;
    let (mut config, parent) = match incumbent {
        Some(inc) => (inc.config, Some(inc.trial)),
        None => (state.experiment.defaults.clone(), None),
    };
    let mut new = NewTrial {
        specialist: state.config.name.clone(),
        surface: Some(state.config.surface.clone()),
        parent,
        reply: Some(reply::cap(text.as_deref().unwrap_or(""))),
        ..Default::default()
    };
    match parsed {
        Ok(p) => {
            new.changes = reply::assignments(&p.edits);
            config.extend(new.changes.clone());
            new.config = config;
            new.hypothesis = p.hypothesis;
            new.edits = p.edits;
        }
        Err(e) => {
            new.config = config;
            new.hypothesis = format!("(unreadable proposal {name})");
            new.rejected = Some((FailureLabel::ProposerError, format!("{name}: {e}")));
        }
    }
    let trial = ractor::call_t!(state.lineage, LineageMsg::Propose, CALL_TIMEOUT_MS, new)??;
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
