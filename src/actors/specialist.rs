//! A specialist: proposes trials for one surface when the executor asks.
//! `kind = "search"`: model-free local/global search over the declared space,
//! starting from the lineage incumbent, never proposing a configuration that
//! lineage already holds.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::debug;

use super::executor::ExecutorMsg;
use super::CALL_TIMEOUT_MS;
use crate::config::{Experiment, Specialist as SpecialistConfig};
use crate::lineage::actor::LineageMsg;
use crate::lineage::NewTrial;
use crate::propose::rng::Rng;
use crate::propose::search;

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
}

pub struct SpecialistState {
    config: SpecialistConfig,
    experiment: Arc<Experiment>,
    lineage: ActorRef<LineageMsg>,
    rng: Rng,
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
        Ok(SpecialistState {
            config: args.config,
            experiment: args.experiment,
            lineage: args.lineage,
            rng,
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
                let trial = propose(state).await?;
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
    };
    let trial = ractor::call_t!(state.lineage, LineageMsg::Propose, CALL_TIMEOUT_MS, new)??;
    Ok(Some(trial))
}
