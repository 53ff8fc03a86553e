//! What the supervisor asks its driver to do, and what it reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::manifest::ServiceSpec;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// `exit code 3`, `killed by signal 6 (SIGABRT)`.
    pub(crate) fn describe(self) -> String {
        match self {
            Self::Code(c) => format!("exit code {c}"),
            Self::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(name) => format!("killed by signal {s} ({name})"),
                Err(_) => format!("killed by signal {s}"),
            },
        }
    }
}

/// The signal a stop sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: please stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
}

/// What the supervisor asks its driver to do.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Start a process for a slot; answer with
    /// [`Supervisor::spawned`](super::Supervisor::spawned) or
    /// [`Supervisor::spawn_failed`](super::Supervisor::spawn_failed), then
    /// [`Supervisor::exited`](super::Supervisor::exited).
    Spawn(Spawn),
    /// Signal a process (its whole process group).
    Signal {
        /// Process id.
        pid: u32,
        /// Which signal.
        signal: StopSignal,
    },
    /// Call [`Supervisor::timer`](super::Supervisor::timer) with `timer` after `after`.
    Timer {
        /// Delay.
        after: Duration,
        /// What to hand back.
        timer: Timer,
    },
    /// Publish `body` on `topic`.
    Publish {
        /// Topic.
        topic: String,
        /// JSON body.
        body: Value,
    },
    /// The set of transactions to bring back after a host restart changed:
    /// write [`Supervisor::persisted`](super::Supervisor::persisted) to disk.
    Persist,
}

/// A process to start.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The transaction.
    pub transaction: String,
    /// Unique per process; hand it back with the outcome.
    pub generation: u64,
    /// Instance id (`MUSTER_INSTANCE`).
    pub instance: String,
    /// Slot number.
    pub slot: u32,
    /// What to run.
    pub spec: Arc<ServiceSpec>,
    /// A scheduled run: the claim to win on the bus first, so that one
    /// host of a fleet runs each fire time (`docs/scheduling.md`).
    pub claim: Option<ScheduleClaim>,
}

/// The fleet-wide claim of one fire time of a host's scheduled service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleClaim {
    /// `host-schedule/<context>/<service>/<fire time in Unix ms>`: the
    /// same on every host that runs the context.
    pub key: String,
}

/// A timer the supervisor set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// The backoff of a slot is over.
    Restart {
        /// The transaction.
        transaction: String,
        /// The slot's generation when the timer was set.
        generation: u64,
    },
    /// A stopping process had its `stop_timeout`: SIGKILL it.
    Kill {
        /// The transaction.
        transaction: String,
        /// The process's generation.
        generation: u64,
    },
    /// A starting process had its `ready_timeout`.
    Ready {
        /// The transaction.
        transaction: String,
        /// The process's generation.
        generation: u64,
    },
    /// The delay before a group restart is over.
    Group {
        /// The transaction.
        transaction: String,
        /// Which group restart.
        round: u64,
    },
    /// A scheduled service's fire time came.
    Fire {
        /// The transaction.
        transaction: String,
        /// The service.
        service: String,
        /// Which arming of its schedule.
        round: u64,
    },
}

/// A transaction to bring back after a host restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    /// Transaction id.
    pub transaction: String,
    /// Its context.
    pub context: String,
    /// Scheduled services: the last fire time that came (Unix ms), so a
    /// host that was down applies the misfire policy to what it missed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub last_fires: BTreeMap<String, i64>,
}

/// What a reload changed.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct ReloadReport {
    /// `transaction/service` started because they are new.
    pub started: Vec<String>,
    /// `transaction/service` stopped because they are gone.
    pub stopped: Vec<String>,
    /// `transaction/service` restarted because they changed.
    pub restarted: Vec<String>,
    /// `transaction/service` left alone.
    pub unchanged: Vec<String>,
    /// Transactions started for new boot contexts.
    pub new_transactions: Vec<String>,
    /// Transactions ended because their context is gone.
    pub ended_transactions: Vec<String>,
}
