//! What the supervisor remembers: transactions, their services, each
//! service's slots (one per instance) and the phase of each.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::Effect;
use super::scheduled::SchedState;
use crate::manifest::{ContextSpec, ServiceSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not started (or not wanted).
    Idle,
    /// Wanted, waiting for its `after` services to be ready.
    Waiting,
    /// Spawned, not yet registered.
    Starting,
    /// Ready.
    Running,
    /// Signalled to stop.
    Stopping,
    /// Waiting out the restart delay.
    Backoff,
    /// Down while its group restarts.
    Held,
    /// Exited 0 on its own and not restarted.
    Exited,
    /// Failed and not restarted.
    Failed,
    /// Stopped on request.
    Stopped,
}

impl Phase {
    pub(super) fn has_process(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Stopping)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Backoff => "backoff",
            Self::Held => "restarting",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) index: u32,
    pub(super) generation: u64,
    pub(super) instance: String,
    pub(super) phase: Phase,
    pub(super) pid: Option<u32>,
    pub(super) restarts: u32,
    pub(super) failures_in_row: u32,
    pub(super) ready_at: Option<Instant>,
    /// Set when the host kills the process for its own reasons (missed
    /// heartbeats, not ready in time): its end is a failure, not a stop.
    pub(super) kill_reason: Option<String>,
    /// A stop was asked: its end is `stopped`.
    pub(super) stop_requested: bool,
    pub(super) last_exit: Option<String>,
}

#[derive(Debug)]
pub(super) struct Svc {
    pub(super) spec: Arc<ServiceSpec>,
    pub(super) wanted: bool,
    pub(super) slots: Vec<Slot>,
    pub(super) sched: Option<SchedState>,
}

impl Svc {
    pub(super) fn new(spec: Arc<ServiceSpec>) -> Self {
        let slots = (0..spec.instances).map(Slot::new).collect();
        Self {
            sched: spec.schedule.as_ref().map(SchedState::new),
            spec,
            wanted: false,
            slots,
        }
    }

    pub(super) fn has_process(&self) -> bool {
        self.slots.iter().any(|s| s.phase.has_process())
    }

    pub(super) fn ready(&self) -> bool {
        self.slots.iter().all(|s| s.phase == Phase::Running)
    }
}

impl Slot {
    pub(super) fn new(index: u32) -> Self {
        Self {
            index,
            generation: 0,
            instance: String::new(),
            phase: Phase::Idle,
            pid: None,
            restarts: 0,
            failures_in_row: 0,
            ready_at: None,
            kill_reason: None,
            stop_requested: false,
            last_exit: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum End {
    /// `ctl stop`: the transaction stays, stopped.
    Stop,
    /// `exit`: the transaction ends and is forgotten.
    Exit,
    /// Over budget: the transaction stays, failed.
    Fail(String),
    /// The host stops: remember the transaction for the next start.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum TxnState {
    Running,
    Stopping(End),
    Stopped,
    Failed(String),
    /// Ended with `exit`; dropped at the end of the current input.
    Exited,
}

#[derive(Debug)]
pub(super) struct Group {
    pub(super) services: BTreeSet<String>,
    pub(super) delay: Duration,
    pub(super) round: u64,
    pub(super) timer_set: bool,
}

#[derive(Debug)]
pub(super) struct Txn {
    pub(super) id: String,
    pub(super) context: Arc<ContextSpec>,
    pub(super) state: TxnState,
    pub(super) services: Vec<Svc>,
    /// Services removed by a reload, stopping.
    pub(super) retired: Vec<Svc>,
    pub(super) restarts: VecDeque<Instant>,
    pub(super) group: Option<Group>,
    /// Stopped by the host's shutdown: to be brought back at the next start.
    pub(super) resume: bool,
}

/// The shared output side: effects, time and generation numbers.
#[derive(Debug)]
pub(super) struct Out {
    pub(super) effects: Vec<Effect>,
    pub(super) now: Instant,
    /// Wall-clock time of the current input (schedules).
    pub(super) wall: DateTime<Utc>,
    pub(super) next_generation: u64,
}

impl Out {
    pub(super) fn publish<T: serde::Serialize>(&mut self, topic: String, body: &T) {
        self.effects.push(Effect::Publish {
            topic,
            body: serde_json::to_value(body).unwrap_or_default(),
        });
    }
}
