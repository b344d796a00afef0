//! Where `ratchet lineage ...` reads from: the database itself when no
//! ratchet holds it, else the running ratchet's control socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::control::ReadError;
use crate::domain::{Incumbent, Trial, TrialId};
use crate::export;
use crate::lineage::query::{Filter, Read};
use crate::lineage::{Event, LineageError, LineageStore};

/// Where lineage is read from.
pub enum Source {
    /// The database, opened by this process (no ratchet holds it).
    Local(LineageStore),
    /// A running ratchet's control socket.
    Daemon(PathBuf),
}

/// How long a read waits for the daemon between two items.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a command waits for another command's lock on the database.
const LOCK_WAIT: Duration = Duration::from_secs(10);

impl Source {
    /// Opens `dir` directly, or, while a ratchet holds it, its socket.
    pub fn open(dir: &Path, config: &Path) -> anyhow::Result<Source> {
        if !dir.join("db").exists() {
            anyhow::bail!(
                "no lineage at {} yet (run `ratchet run` first)",
                dir.display()
            );
        }
        // Another CLI command holding the database for a moment (sled
        // locks it whole) is waited out; a ratchet holding it answers on
        // its socket.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match LineageStore::open(dir) {
                Ok(store) => return Ok(Source::Local(store)),
                Err(locked @ LineageError::Locked { .. }) => {
                    let socket = socket_of(dir, config);
                    match std::os::unix::net::UnixStream::connect(&socket) {
                        Ok(_) => return Ok(Source::Daemon(socket)),
                        Err(_) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(100))
                        }
                        Err(e) => anyhow::bail!(
                            "{locked}; its control socket {} does not answer ({e}); waited {} s",
                            socket.display(),
                            LOCK_WAIT.as_secs()
                        ),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn trials(
        &self,
        filter: &Filter,
    ) -> anyhow::Result<Box<dyn Iterator<Item = Result<Trial, export::SourceError>>>> {
        match self {
            Source::Local(store) => Ok(Box::new(store.select(filter)?.map(|t| Ok(t?)))),
            Source::Daemon(socket) => {
                let read = Read::Trials {
                    filter: filter.clone(),
                };
                Ok(Box::new(remote(socket, read)?.map(|t| Ok(t?))))
            }
        }
    }

    pub fn trial(&self, id: TrialId) -> anyhow::Result<Option<Trial>> {
        match self {
            Source::Local(store) => Ok(store.get(id)?),
            Source::Daemon(socket) => Ok(remote(socket, Read::Trial { id })?.next().transpose()?),
        }
    }

    /// Every incumbent, oldest first (the last is the current one).
    pub fn incumbents(&self) -> anyhow::Result<Vec<Incumbent>> {
        match self {
            Source::Local(store) => Ok(store.incumbent_history()?),
            Source::Daemon(socket) => {
                Ok(remote(socket, Read::Incumbents)?.collect::<Result<_, _>>()?)
            }
        }
    }

    pub fn events(&self) -> anyhow::Result<Vec<Event>> {
        match self {
            Source::Local(store) => Ok(store.events()?),
            Source::Daemon(socket) => Ok(remote(socket, Read::Events)?.collect::<Result<_, _>>()?),
        }
    }
}

/// A read answered by the ratchet listening on `socket`.
fn remote<T: serde::de::DeserializeOwned + 'static>(
    socket: &Path,
    read: Read,
) -> anyhow::Result<Box<dyn Iterator<Item = Result<T, ReadError>>>> {
    match crate::daemon::control::read::<T>(socket, read, READ_TIMEOUT) {
        Ok(Ok(items)) => Ok(Box::new(items)),
        Ok(Err(r)) => anyhow::bail!(
            "the daemon refused the read: {}",
            r.error.unwrap_or_default()
        ),
        Err(e) => anyhow::bail!("control socket {}: {e}", socket.display()),
    }
}

/// The control socket of whatever holds lineage `dir`: the one its pointer
/// file names (what the running ratchet bound, even after the file's
/// `socket` was edited), else the one the configuration names, else the
/// default.
pub(in crate::cli) fn socket_of(dir: &Path, config: &Path) -> PathBuf {
    let pointer = std::fs::read(crate::daemon::control::pointer_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::daemon::control::Pointer>(&b).ok());
    match pointer {
        Some(p) => p.socket,
        None => crate::config::configured_socket_of(config)
            .unwrap_or_else(|| crate::config::default_socket(dir)),
    }
}
