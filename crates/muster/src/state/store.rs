//! Where an owner keeps its state across restarts: a snapshot plus the
//! changes after it, appended as changes happen (so a `kill -9` loses
//! nothing already acknowledged) and folded into a new snapshot every
//! 10,000 changes.
//!
//! Each kind of store is a [`Backend`] in a module of its own; Redis and
//! PostgreSQL are compiled only with their cargo features, and a build
//! without one answers [`StoreError::LeftOut`] for its URLs.
//!
//! - a file path ([`file`]): the first line is the snapshot, each further
//!   line a change;
//! - `redis://...` ([`redis`]): the snapshot in
//!   `muster:state:<service>:<name>:snap`, the changes in the list `...:log`;
//! - `postgres://...` ([`postgres`]): the tables `muster_state` and
//!   `muster_state_log` (created if missing);
//! - `nats://...[?prefix=P]` ([`nats`]): a JetStream stream per state,
//!   `<P>_STATE_<service>_<name>`.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StateKind;
use crate::BoxError;

mod file;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

/// Changes appended before the store folds them into one snapshot.
const COMPACT_EVERY: usize = 10_000;

/// A state store that could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file of the file store.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store's server could not be reached.
    #[error("cannot reach {store} at {target}: {source}")]
    Unreachable {
        /// `Redis` or `PostgreSQL`.
        store: &'static str,
        /// The URL given.
        target: String,
        /// Why.
        source: BoxError,
    },
    /// The store's server refused or failed a command.
    #[error("{store}: {source}")]
    Backend {
        /// `Redis` or `PostgreSQL`.
        store: &'static str,
        /// Why.
        source: BoxError,
    },
    /// What the store holds is not a saved state.
    #[error("not a saved state: {0}")]
    Corrupt(#[source] serde_json::Error),
    /// The state could not be encoded.
    #[error("cannot encode the state: {0}")]
    Encode(#[source] serde_json::Error),
    /// A URL for a store this build leaves out.
    #[error(
        "{target}: this build of muster has no {feature} store (the muster crate's cargo feature `{feature}`, on by default, is off)"
    )]
    LeftOut {
        /// The URL given.
        target: String,
        /// The cargo feature that has it.
        feature: &'static str,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// The snapshot as stored: `{"epoch", "seq", "value"}`.
#[derive(Serialize, Deserialize)]
struct Head<E, S> {
    epoch: E,
    seq: u64,
    value: S,
}

/// One change as stored: `{"seq", "change"}`.
#[derive(Serialize, Deserialize)]
struct Line<C> {
    seq: u64,
    change: C,
}

/// What a store held, as text: the snapshot (a [`Head`]) and the changes
/// after it ([`Line`]s), oldest first.
type Stored = (Option<String>, Vec<String>);

/// One kind of store. Values come and go as JSON text: replaying and
/// compacting are the same for all kinds ([`Store`]).
trait Backend: Send {
    /// The snapshot and the changes after it.
    fn read(&mut self) -> BoxFuture<'_, Result<Stored>>;
    /// Replaces everything with the snapshot `value` (JSON) as of `seq`.
    fn reset<'a>(
        &'a mut self,
        epoch: &'a str,
        seq: u64,
        value: String,
    ) -> BoxFuture<'a, Result<()>>;
    /// Appends the change numbered `seq` (JSON).
    fn append(&mut self, seq: u64, change: String) -> BoxFuture<'_, Result<()>>;
}

/// What a store held.
pub(crate) struct Loaded<S> {
    pub(crate) epoch: String,
    pub(crate) seq: u64,
    pub(crate) value: S,
}

/// An open store.
pub(crate) struct Store {
    backend: Box<dyn Backend>,
    appended: usize,
}

impl Store {
    /// Opens `target` (a path, `redis://...` or `postgres://...`) for the
    /// state `service/name` and reads what it holds.
    pub(crate) async fn open<S: StateKind>(
        target: &str,
        service: &str,
        name: &str,
    ) -> Result<(Self, Option<Loaded<S>>)> {
        let backend: Box<dyn Backend> =
            if target.starts_with("redis://") || target.starts_with("rediss://") {
                redis_store(target, service, name).await?
            } else if target.starts_with("postgres://") || target.starts_with("postgresql://") {
                postgres_store(target, service, name).await?
            } else if target.starts_with("nats://") {
                nats_store(target, service, name).await?
            } else {
                Box::new(file::FileStore::new(target.into()))
            };
        let mut store = Self {
            backend,
            appended: 0,
        };
        let loaded = store.load::<S>().await?;
        Ok((store, loaded))
    }

    async fn load<S: StateKind>(&mut self) -> Result<Option<Loaded<S>>> {
        let (head, lines) = self.backend.read().await?;
        let Some(head) = head else { return Ok(None) };
        let head: Head<String, S> = serde_json::from_str(&head).map_err(StoreError::Corrupt)?;
        let mut loaded = Loaded {
            epoch: head.epoch,
            seq: head.seq,
            value: head.value,
        };
        for line in lines {
            // A torn last line (a crash mid-write) ends the replay.
            let Ok(l) = serde_json::from_str::<Line<S::Change>>(&line) else {
                break;
            };
            if l.seq == loaded.seq + 1 {
                loaded.value.apply(l.change);
                loaded.seq = l.seq;
            }
        }
        Ok(Some(loaded))
    }

    /// Replaces what the store holds with `value` as of `seq`.
    pub(crate) async fn reset<S: Serialize>(
        &mut self,
        epoch: &str,
        seq: u64,
        value: &S,
    ) -> Result<()> {
        self.appended = 0;
        let value = serde_json::to_string(value).map_err(StoreError::Encode)?;
        self.backend.reset(epoch, seq, value).await
    }

    /// Appends a change; now and then folds everything into one snapshot
    /// (`current` gives the value then).
    pub(crate) async fn append<S: Serialize, C: Serialize>(
        &mut self,
        epoch: &str,
        seq: u64,
        change: &C,
        current: impl FnOnce() -> S,
    ) -> Result<()> {
        if self.appended >= COMPACT_EVERY {
            return self.reset(epoch, seq, &current()).await;
        }
        self.appended += 1;
        let change = serde_json::to_string(change).map_err(StoreError::Encode)?;
        self.backend.append(seq, change).await
    }
}

/// The snapshot line `{"epoch", "seq", "value"}` with `value` already JSON.
fn head_text(epoch: &str, seq: u64, value: &str) -> String {
    format!(
        r#"{{"epoch":{},"seq":{seq},"value":{value}}}"#,
        serde_json::Value::from(epoch)
    )
}

/// The change line `{"seq", "change"}` with `change` already JSON.
fn line_text(seq: u64, change: &str) -> String {
    format!(r#"{{"seq":{seq},"change":{change}}}"#)
}

#[cfg(feature = "redis")]
async fn redis_store(target: &str, service: &str, name: &str) -> Result<Box<dyn Backend>> {
    Ok(Box::new(
        redis::RedisStore::open(target, service, name).await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn redis_store(target: &str, _: &str, _: &str) -> Result<Box<dyn Backend>> {
    Err(StoreError::LeftOut {
        target: target.to_owned(),
        feature: "redis",
    })
}

#[cfg(feature = "nats")]
async fn nats_store(target: &str, service: &str, name: &str) -> Result<Box<dyn Backend>> {
    Ok(Box::new(
        nats::NatsStore::open(target, service, name).await?,
    ))
}

#[cfg(not(feature = "nats"))]
async fn nats_store(target: &str, _: &str, _: &str) -> Result<Box<dyn Backend>> {
    Err(StoreError::LeftOut {
        target: target.to_owned(),
        feature: "nats",
    })
}

#[cfg(feature = "postgres")]
async fn postgres_store(target: &str, service: &str, name: &str) -> Result<Box<dyn Backend>> {
    Ok(Box::new(
        postgres::PostgresStore::open(target, service, name).await?,
    ))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_store(target: &str, _: &str, _: &str) -> Result<Box<dyn Backend>> {
    Err(StoreError::LeftOut {
        target: target.to_owned(),
        feature: "postgres",
    })
}
