//! The supervisor as a state machine: inputs (a process ended, an instance
//! registered, a timer fired, an operator asked) go in, [`Effect`]s (spawn,
//! signal, set a timer, publish, persist) come out. It does no I/O, so the
//! rules (restart policies, strategies, budgets, triggers, ordering) are
//! tested here without processes, and the driver in `host` only carries
//! effects out.
//!
//! Every lifecycle event comes from exactly one state change of one slot,
//! and its trigger runs right there: that is how each event fires its
//! trigger exactly once. Process generations are unique, so a late exit or
//! timer from an older process of a slot is recognised and ignored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster::schedule::{Clock, SystemClock};
use serde_json::Value;
use tokio::time::Instant;

use self::scheduled::SchedState;

use crate::events::{
    CONTEXT_TOPIC, ContextChange, ContextEvent, InstanceEvent, Lifecycle, control_topic,
};
use crate::manifest::{Actions, ContextSpec, Readiness, RestartPolicy, ServiceSpec, Strategy};
use crate::status::{InstanceStatus, ServiceStatus, Status, TransactionStatus};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    fn describe(self) -> String {
        match self {
            Self::Code(c) => format!("exit code {c}"),
            Self::Signal(s) => format!("killed by signal {s}"),
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
    /// Start a process for a slot; answer with [`Supervisor::spawned`] or
    /// [`Supervisor::spawn_failed`], then [`Supervisor::exited`].
    Spawn(Spawn),
    /// Signal a process (its whole process group).
    Signal {
        /// Process id.
        pid: u32,
        /// Which signal.
        signal: StopSignal,
    },
    /// Call [`Supervisor::timer`] with `timer` after `after`.
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
    /// write [`Supervisor::persisted`] to disk.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
    fn has_process(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Stopping)
    }

    fn name(self) -> &'static str {
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
struct Slot {
    index: u32,
    generation: u64,
    instance: String,
    phase: Phase,
    pid: Option<u32>,
    restarts: u32,
    failures_in_row: u32,
    ready_at: Option<Instant>,
    /// Set when the host kills the process for its own reasons (missed
    /// heartbeats, not ready in time): its end is a failure, not a stop.
    kill_reason: Option<String>,
    /// A stop was asked: its end is `stopped`.
    stop_requested: bool,
    last_exit: Option<String>,
}

#[derive(Debug)]
struct Svc {
    spec: Arc<ServiceSpec>,
    wanted: bool,
    slots: Vec<Slot>,
    sched: Option<SchedState>,
}

impl Svc {
    fn new(spec: Arc<ServiceSpec>) -> Self {
        let slots = (0..spec.instances).map(Slot::new).collect();
        Self {
            sched: spec.schedule.as_ref().map(SchedState::new),
            spec,
            wanted: false,
            slots,
        }
    }

    fn has_process(&self) -> bool {
        self.slots.iter().any(|s| s.phase.has_process())
    }

    fn ready(&self) -> bool {
        self.slots.iter().all(|s| s.phase == Phase::Running)
    }
}

impl Slot {
    fn new(index: u32) -> Self {
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
enum End {
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
enum TxnState {
    Running,
    Stopping(End),
    Stopped,
    Failed(String),
    /// Ended with `exit`; dropped at the end of the current input.
    Exited,
}

#[derive(Debug)]
struct Group {
    services: BTreeSet<String>,
    delay: Duration,
    round: u64,
    timer_set: bool,
}

#[derive(Debug)]
struct Txn {
    id: String,
    context: Arc<ContextSpec>,
    state: TxnState,
    services: Vec<Svc>,
    /// Services removed by a reload, stopping.
    retired: Vec<Svc>,
    restarts: VecDeque<Instant>,
    group: Option<Group>,
    /// Stopped by the host's shutdown: to be brought back at the next start.
    resume: bool,
}

/// The shared output side: effects, time and generation numbers.
#[derive(Debug)]
struct Out {
    effects: Vec<Effect>,
    now: Instant,
    /// Wall-clock time of the current input (schedules).
    wall: DateTime<Utc>,
    next_generation: u64,
}

impl Out {
    fn publish<T: serde::Serialize>(&mut self, topic: String, body: &T) {
        self.effects.push(Effect::Publish {
            topic,
            body: serde_json::to_value(body).unwrap_or_default(),
        });
    }
}

/// The supervisor of every transaction the host runs.
#[derive(Debug)]
pub struct Supervisor {
    contexts: BTreeMap<String, Arc<ContextSpec>>,
    txns: BTreeMap<String, Txn>,
    out: Out,
    shutting_down: bool,
    clock: Arc<dyn Clock>,
}

impl Supervisor {
    /// A supervisor for `contexts`, running nothing yet.
    pub fn new(contexts: &[Arc<ContextSpec>]) -> Self {
        Self {
            contexts: contexts
                .iter()
                .map(|c| (c.name.clone(), c.clone()))
                .collect(),
            txns: BTreeMap::new(),
            out: Out {
                effects: Vec::new(),
                now: Instant::now(),
                wall: Utc::now(),
                next_generation: 1,
            },
            shutting_down: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// Reads wall-clock time for schedules from `clock` (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn begin(&mut self, now: Instant) {
        self.out.now = now;
        self.out.wall = self.clock.now();
    }

    fn finish(&mut self) -> Vec<Effect> {
        self.txns.retain(|_, t| t.state != TxnState::Exited);
        std::mem::take(&mut self.out.effects)
    }

    /// Starts a transaction of `context` under `transaction` (or a new id).
    ///
    /// # Errors
    /// Unknown context, a bad id, or a transaction of that id running.
    pub fn start(
        &mut self,
        now: Instant,
        context: Option<&str>,
        transaction: Option<String>,
    ) -> (Result<String, Refusal>, Vec<Effect>) {
        self.begin(now);
        let r = self.start_txn(context, transaction);
        (r, self.finish())
    }

    fn start_txn(
        &mut self,
        context: Option<&str>,
        transaction: Option<String>,
    ) -> Result<String, Refusal> {
        if self.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        let existing = transaction.as_ref().and_then(|t| self.txns.get(t));
        let context_name = match (context, existing) {
            (Some(c), _) => c.to_owned(),
            (None, Some(t)) => t.context.name.clone(),
            (None, None) if self.contexts.len() == 1 => {
                self.contexts.keys().next().cloned().unwrap_or_default()
            }
            (None, None) => {
                return Err(Refusal::ContextNeeded(
                    self.contexts.keys().cloned().collect(),
                ));
            }
        };
        let Some(spec) = self.contexts.get(&context_name).cloned() else {
            return Err(Refusal::UnknownContext(context_name));
        };
        let id = match transaction {
            Some(t) if !valid_transaction(&t) => {
                return Err(Refusal::BadTransactionId(t));
            }
            Some(t) => t,
            None => muster_core::id::transaction_id(),
        };
        if let Some(t) = self.txns.get(&id) {
            if t.context.name != context_name {
                return Err(Refusal::OtherContext {
                    transaction: id,
                    context: t.context.name.clone(),
                });
            }
            if matches!(t.state, TxnState::Running | TxnState::Stopping(_)) {
                return Err(Refusal::AlreadyRunning(id));
            }
        }
        let txn = Txn {
            id: id.clone(),
            services: spec.services.iter().cloned().map(Svc::new).collect(),
            context: spec,
            state: TxnState::Running,
            retired: Vec::new(),
            restarts: VecDeque::new(),
            group: None,
            resume: false,
        };
        let out = &mut self.out;
        let txn = self.txns.entry(id.clone()).insert_entry(txn).into_mut();
        txn.context_event(out, ContextChange::Started, None);
        for i in 0..txn.services.len() {
            if txn.services[i].spec.autostart {
                txn.start_service(out, i);
            }
        }
        txn.arm_schedules(out);
        out.effects.push(Effect::Persist);
        Ok(id)
    }

    /// Stops a transaction (or one of its services); it can be started again.
    ///
    /// # Errors
    /// Unknown transaction or service.
    pub fn stop(
        &mut self,
        now: Instant,
        transaction: &str,
        service: Option<&str>,
    ) -> (Result<(), Refusal>, Vec<Effect>) {
        self.begin(now);
        let r = self.with_txn(transaction, |txn, out| match service {
            None => {
                txn.end(out, End::Stop);
                Ok(())
            }
            Some(s) => {
                let i = txn.index(s)?;
                txn.stop_service(out, i);
                txn.after_change(out);
                Ok(())
            }
        });
        (r, self.finish())
    }

    /// Restarts a transaction (or one service); a stopped one starts again.
    ///
    /// # Errors
    /// Unknown transaction or service.
    pub fn restart(
        &mut self,
        now: Instant,
        transaction: &str,
        service: Option<&str>,
    ) -> (Result<(), Refusal>, Vec<Effect>) {
        self.begin(now);
        let stopped = self
            .txns
            .get(transaction)
            .is_some_and(|t| matches!(t.state, TxnState::Stopped | TxnState::Failed(_)));
        let r = if stopped && service.is_none() {
            self.start_txn(None, Some(transaction.to_owned()))
                .map(|_| ())
        } else {
            self.with_txn(transaction, |txn, out| {
                if txn.state != TxnState::Running {
                    return Err(Refusal::NotRunning(txn.id.clone()));
                }
                let names = match service {
                    Some(s) => vec![txn.services[txn.index(s)?].spec.name.clone()],
                    None => txn.services.iter().map(|s| s.spec.name.clone()).collect(),
                };
                txn.restart_group(out, names, Duration::ZERO);
                Ok(())
            })
        };
        (r, self.finish())
    }

    /// Ends a transaction: stops everything and forgets it.
    ///
    /// # Errors
    /// Unknown transaction.
    pub fn exit(&mut self, now: Instant, transaction: &str) -> (Result<(), Refusal>, Vec<Effect>) {
        self.begin(now);
        let r = self.with_txn(transaction, |txn, out| {
            txn.end(out, End::Exit);
            Ok(())
        });
        (r, self.finish())
    }

    /// Stops every transaction, in reverse dependency order, remembering
    /// the running ones for the next start. Wait for [`Self::is_idle`].
    pub fn shutdown(&mut self, now: Instant) -> Vec<Effect> {
        self.begin(now);
        self.shutting_down = true;
        for txn in self.txns.values_mut() {
            if txn.state == TxnState::Running {
                txn.end(&mut self.out, End::Shutdown);
            }
        }
        self.finish()
    }

    /// True when no process runs.
    pub fn is_idle(&self) -> bool {
        self.txns.values().all(|t| {
            t.services
                .iter()
                .chain(&t.retired)
                .all(|s| !s.has_process())
        })
    }

    /// The transactions to bring back after a host restart.
    pub fn persisted(&self) -> Vec<Persisted> {
        self.txns
            .values()
            .filter(|t| t.state == TxnState::Running || t.resume)
            .map(|t| Persisted {
                transaction: t.id.clone(),
                context: t.context.name.clone(),
                last_fires: t
                    .services
                    .iter()
                    .filter_map(|s| {
                        let f = s.sched.as_ref()?.last_fire?;
                        Some((s.spec.name.clone(), f.timestamp_millis()))
                    })
                    .collect(),
            })
            .collect()
    }

    /// The driver started the process of `generation`.
    pub fn spawned(
        &mut self,
        now: Instant,
        transaction: &str,
        generation: u64,
        pid: u32,
    ) -> Vec<Effect> {
        self.begin(now);
        let _ = self.with_txn(transaction, |txn, out| {
            let Some((i, j)) = txn.find(generation) else {
                return Ok(());
            };
            let svc = &mut txn.services[i];
            let slot = &mut svc.slots[j];
            slot.pid = Some(pid);
            match svc.spec.ready {
                Readiness::Spawned => txn.ready(out, i, j),
                Readiness::Registered => out.effects.push(Effect::Timer {
                    after: svc.spec.ready_timeout,
                    timer: Timer::Ready {
                        transaction: txn.id.clone(),
                        generation,
                    },
                }),
            }
            Ok(())
        });
        self.finish()
    }

    /// The driver could not start the process of `generation`.
    pub fn spawn_failed(
        &mut self,
        now: Instant,
        transaction: &str,
        generation: u64,
        error: &str,
    ) -> Vec<Effect> {
        self.begin(now);
        let _ = self.with_txn(transaction, |txn, out| {
            txn.ended(
                out,
                generation,
                None,
                Some(format!("failed start: {error}")),
            );
            Ok(())
        });
        self.finish()
    }

    /// The process of `generation` ended.
    pub fn exited(
        &mut self,
        now: Instant,
        transaction: &str,
        generation: u64,
        status: ExitStatus,
    ) -> Vec<Effect> {
        self.begin(now);
        let _ = self.with_txn(transaction, |txn, out| {
            txn.ended(out, generation, Some(status), None);
            Ok(())
        });
        self.finish()
    }

    /// An instance registered on the bus.
    pub fn registered(&mut self, now: Instant, instance: &str) -> Vec<Effect> {
        self.on_instance(now, instance, |txn, out, i, j| {
            if txn.services[i].slots[j].phase == Phase::Starting {
                txn.ready(out, i, j);
            }
        })
    }

    /// An instance missed its heartbeats: kill it; it has failed.
    pub fn expired(&mut self, now: Instant, instance: &str) -> Vec<Effect> {
        self.on_instance(now, instance, |txn, out, i, j| {
            txn.fail(out, i, j, "missed heartbeats".into(), StopSignal::Kill);
        })
    }

    /// An instance went over a resource limit: stop it (SIGTERM, then
    /// SIGKILL after `stop_timeout`); its end is a failure with `reason`,
    /// restarted as its policy says.
    pub fn over_limit(&mut self, now: Instant, instance: &str, reason: &str) -> Vec<Effect> {
        self.on_instance(now, instance, |txn, out, i, j| {
            tracing::warn!(instance = %txn.services[i].slots[j].instance, reason, "over a resource limit: restarting");
            txn.fail(out, i, j, reason.to_owned(), StopSignal::Term);
        })
    }

    /// An instance reported progress with `ctx.update`.
    pub fn updated(&mut self, now: Instant, instance: &str, status: Value) -> Vec<Effect> {
        self.on_instance(now, instance, |txn, out, i, j| {
            if matches!(
                txn.services[i].slots[j].phase,
                Phase::Starting | Phase::Running
            ) {
                txn.event(out, i, j, Lifecycle::Updated, None, None, Some(status));
            }
        })
    }

    /// Runs `f` on the slot whose live process registered as `instance`.
    fn on_instance(
        &mut self,
        now: Instant,
        instance: &str,
        f: impl FnOnce(&mut Txn, &mut Out, usize, usize),
    ) -> Vec<Effect> {
        self.begin(now);
        if let Some((t, i, j)) = self.locate(instance)
            && let Some(txn) = self.txns.get_mut(&t)
        {
            f(txn, &mut self.out, i, j);
        }
        self.finish()
    }

    /// A timer the supervisor set has fired.
    pub fn timer(&mut self, now: Instant, timer: Timer) -> Vec<Effect> {
        self.begin(now);
        let (Timer::Restart { transaction, .. }
        | Timer::Kill { transaction, .. }
        | Timer::Ready { transaction, .. }
        | Timer::Group { transaction, .. }
        | Timer::Fire { transaction, .. }) = &timer;
        let transaction = transaction.clone();
        let _ = self.with_txn(&transaction, |txn, out| {
            txn.on_timer(out, timer);
            Ok(())
        });
        self.finish()
    }

    /// Applies a new manifest: new services start, removed ones stop,
    /// changed ones restart, the rest is left alone.
    pub fn reload(
        &mut self,
        now: Instant,
        contexts: &[Arc<ContextSpec>],
    ) -> (ReloadReport, Vec<Effect>) {
        self.begin(now);
        let mut report = ReloadReport::default();
        self.contexts = contexts
            .iter()
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        for txn in self.txns.values_mut() {
            let live = matches!(txn.state, TxnState::Running);
            match self.contexts.get(&txn.context.name) {
                None => {
                    if live || matches!(txn.state, TxnState::Stopping(_)) {
                        txn.end(&mut self.out, End::Exit);
                    }
                    report.ended_transactions.push(txn.id.clone());
                }
                Some(spec) => txn.apply(&mut self.out, spec.clone(), &mut report),
            }
        }
        let booted: BTreeSet<String> = self.txns.values().map(|t| t.context.name.clone()).collect();
        let new_boot: Vec<String> = self
            .contexts
            .values()
            .filter(|c| c.boot && !booted.contains(&c.name))
            .map(|c| c.name.clone())
            .collect();
        for c in new_boot {
            if let Ok(id) = self.start_txn(Some(&c), None) {
                report.new_transactions.push(id);
            }
        }
        self.out.effects.push(Effect::Persist);
        (report, self.finish())
    }

    /// Boots: brings back `restored` transactions, then starts one for each
    /// boot context that has none.
    pub fn boot(&mut self, now: Instant, restored: &[Persisted]) -> (Vec<String>, Vec<Effect>) {
        self.begin(now);
        let mut started = Vec::new();
        for p in restored {
            match self.start_txn(Some(&p.context), Some(p.transaction.clone())) {
                Ok(id) => {
                    if let Some(txn) = self.txns.get_mut(&id) {
                        txn.missed_while_down(&mut self.out, &p.last_fires);
                    }
                    started.push(id);
                }
                Err(e) => tracing::warn!(transaction = %p.transaction, "not brought back: {e}"),
            }
        }
        let boots: Vec<String> = self
            .contexts
            .values()
            .filter(|c| c.boot && !self.txns.values().any(|t| t.context.name == c.name))
            .map(|c| c.name.clone())
            .collect();
        for c in boots {
            if let Ok(id) = self.start_txn(Some(&c), None) {
                started.push(id);
            }
        }
        (started, self.finish())
    }

    /// Resource limits by `transaction/service`, for the monitor.
    pub fn limits(&self) -> std::collections::HashMap<String, crate::monitor::Limits> {
        self.txns
            .values()
            .flat_map(|t| {
                t.services
                    .iter()
                    .map(move |s| (format!("{}/{}", t.id, s.spec.name), s.spec.limits))
            })
            .collect()
    }

    /// What `ctl status` shows.
    pub fn status(&self, now: Instant, transaction: Option<&str>) -> Status {
        Status {
            transactions: self
                .txns
                .values()
                .filter(|t| transaction.is_none_or(|id| id == t.id))
                .map(|t| t.status(now))
                .collect(),
        }
    }

    /// The transaction ids, running ones first.
    pub fn transactions(&self) -> Vec<(String, String, bool)> {
        self.txns
            .values()
            .map(|t| {
                (
                    t.id.clone(),
                    t.context.name.clone(),
                    t.state == TxnState::Running,
                )
            })
            .collect()
    }

    fn with_txn<R>(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut Txn, &mut Out) -> Result<R, Refusal>,
    ) -> Result<R, Refusal> {
        let txn = self
            .txns
            .get_mut(id)
            .ok_or_else(|| Refusal::UnknownTransaction(id.to_owned()))?;
        f(txn, &mut self.out)
    }

    fn locate(&self, instance: &str) -> Option<(String, usize, usize)> {
        self.txns.values().find_map(|t| {
            t.services.iter().enumerate().find_map(|(i, s)| {
                s.slots
                    .iter()
                    .position(|sl| sl.phase.has_process() && same_instance(&sl.instance, instance))
                    .map(|j| (t.id.clone(), i, j))
            })
        })
    }
}

/// The instance ids a process registers under: `MUSTER_INSTANCE` itself,
/// or `MUSTER_INSTANCE-<service>` for each service of a `Group`.
fn same_instance(slot: &str, registered: &str) -> bool {
    registered
        .strip_prefix(slot)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

fn valid_transaction(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Txn {
    fn index(&self, service: &str) -> Result<usize, Refusal> {
        self.services
            .iter()
            .position(|s| s.spec.name == service)
            .ok_or_else(|| Refusal::UnknownService {
                service: service.to_owned(),
                within: format!("context {}", self.context.name),
            })
    }

    fn has_process(&self) -> bool {
        self.services
            .iter()
            .chain(&self.retired)
            .any(Svc::has_process)
    }

    fn find(&self, generation: u64) -> Option<(usize, usize)> {
        self.services.iter().enumerate().find_map(|(i, s)| {
            s.slots
                .iter()
                .position(|sl| sl.generation == generation)
                .map(|j| (i, j))
        })
    }

    fn context_event(&self, out: &mut Out, event: ContextChange, reason: Option<String>) {
        tracing::info!(transaction = %self.id, context = %self.context.name, ?event, reason = reason.as_deref().unwrap_or(""), "context");
        out.publish(
            CONTEXT_TOPIC.to_owned(),
            &ContextEvent {
                transaction: self.id.clone(),
                context: self.context.name.clone(),
                event,
                reason,
            },
        );
    }

    /// Publishes an instance event and runs its trigger (once: this is the
    /// only place events are made).
    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        out: &mut Out,
        i: usize,
        j: usize,
        event: Lifecycle,
        reason: Option<String>,
        exit: Option<ExitStatus>,
        status: Option<Value>,
    ) {
        let svc = &self.services[i];
        let slot = &svc.slots[j];
        tracing::info!(
            transaction = %self.id,
            service = %svc.spec.name,
            instance = %slot.instance,
            pid = slot.pid.unwrap_or(0),
            ?event,
            reason = reason.as_deref().unwrap_or(""),
            "instance"
        );
        out.publish(
            control_topic(&self.id),
            &InstanceEvent {
                transaction: self.id.clone(),
                context: self.context.name.clone(),
                service: svc.spec.name.clone(),
                instance: slot.instance.clone(),
                slot: slot.index,
                event,
                pid: slot.pid,
                restarts: slot.restarts,
                reason,
                exit_code: match exit {
                    Some(ExitStatus::Code(c)) => Some(c),
                    _ => None,
                },
                signal: match exit {
                    Some(ExitStatus::Signal(s)) => Some(s),
                    _ => None,
                },
                status,
            },
        );
        if self.state != TxnState::Running {
            return;
        }
        let t = &svc.spec.triggers;
        let actions = match event {
            Lifecycle::Started => &t.on_start,
            Lifecycle::Updated => &t.on_update,
            Lifecycle::Failed => &t.on_fail,
            Lifecycle::Exited => &t.on_exit,
            Lifecycle::Stopped => return,
        };
        if !actions.is_empty() {
            let actions = actions.clone();
            self.run_actions(out, &actions);
        }
    }

    fn run_actions(&mut self, out: &mut Out, actions: &Actions) {
        if actions.exit {
            self.end(out, End::Exit);
            return;
        }
        for s in &actions.stop {
            if let Ok(i) = self.index(s) {
                self.stop_service(out, i);
            }
        }
        if !actions.restart.is_empty() {
            self.restart_group(out, actions.restart.clone(), Duration::ZERO);
        }
        for s in &actions.start {
            if let Ok(i) = self.index(s) {
                self.start_service(out, i);
            }
        }
    }

    /// Wants service `i` up: spawns each slot without a process (or marks
    /// it waiting for its `after` services). Slots starting, running or in
    /// backoff are left as they are.
    fn start_service(&mut self, out: &mut Out, i: usize) {
        self.start_run(out, i, None);
    }

    /// Starts service `i`; for a scheduled one, a run for `fire` (now, when
    /// started by hand or by a trigger).
    fn start_run(&mut self, out: &mut Out, i: usize, fire: Option<DateTime<Utc>>) {
        if self.state != TxnState::Running {
            return;
        }
        let idle = !self.services[i].has_process();
        if let Some(sc) = &mut self.services[i].sched {
            sc.paused = false;
            if idle {
                sc.started(fire.unwrap_or(out.wall), out.wall);
            }
        }
        self.services[i].wanted = true;
        let deps_ready = self.deps_ready(i);
        for j in 0..self.services[i].slots.len() {
            let phase = self.services[i].slots[j].phase;
            if matches!(
                phase,
                Phase::Idle
                    | Phase::Waiting
                    | Phase::Exited
                    | Phase::Failed
                    | Phase::Stopped
                    | Phase::Held
            ) {
                if deps_ready {
                    self.spawn(out, i, j);
                } else {
                    self.services[i].slots[j].phase = Phase::Waiting;
                }
            }
        }
    }

    fn deps_ready(&self, i: usize) -> bool {
        self.services[i].spec.after.iter().all(|d| {
            self.services
                .iter()
                .find(|s| &s.spec.name == d)
                .is_none_or(Svc::ready)
        })
    }

    fn spawn(&mut self, out: &mut Out, i: usize, j: usize) {
        let generation = out.next_generation;
        out.next_generation += 1;
        let svc = &mut self.services[i];
        let slot = &mut svc.slots[j];
        slot.generation = generation;
        slot.instance = format!(
            "{}-{}-{}",
            svc.spec.name,
            slot.index,
            &muster_core::id::short_id()[..6]
        );
        slot.phase = Phase::Starting;
        slot.pid = None;
        slot.ready_at = None;
        slot.kill_reason = None;
        slot.stop_requested = false;
        out.effects.push(Effect::Spawn(Spawn {
            transaction: self.id.clone(),
            generation,
            instance: slot.instance.clone(),
            slot: slot.index,
            spec: svc.spec.clone(),
        }));
    }

    fn ready(&mut self, out: &mut Out, i: usize, j: usize) {
        let slot = &mut self.services[i].slots[j];
        slot.phase = Phase::Running;
        slot.ready_at = Some(out.now);
        self.event(out, i, j, Lifecycle::Started, None, None, None);
        self.wake_waiting(out);
    }

    /// Starts the waiting services whose `after` services are now ready.
    fn wake_waiting(&mut self, out: &mut Out) {
        if self.state != TxnState::Running {
            return;
        }
        for i in 0..self.services.len() {
            let waiting = self.services[i]
                .slots
                .iter()
                .any(|s| s.phase == Phase::Waiting);
            if waiting && self.deps_ready(i) {
                for j in 0..self.services[i].slots.len() {
                    if self.services[i].slots[j].phase == Phase::Waiting {
                        self.spawn(out, i, j);
                    }
                }
            }
        }
    }

    fn signal_slot(out: &mut Out, txn: &str, slot: &mut Slot, stop_timeout: Duration) {
        slot.stop_requested = true;
        if slot.phase == Phase::Stopping {
            return;
        }
        slot.phase = Phase::Stopping;
        match slot.pid {
            Some(pid) => {
                out.effects.push(Effect::Signal {
                    pid,
                    signal: StopSignal::Term,
                });
                out.effects.push(Effect::Timer {
                    after: stop_timeout,
                    timer: Timer::Kill {
                        transaction: txn.to_owned(),
                        generation: slot.generation,
                    },
                });
            }
            // Spawn still in flight: the exit that follows `spawned` is
            // handled as a stop; kill it as soon as its pid is known.
            None => out.effects.push(Effect::Timer {
                after: Duration::ZERO,
                timer: Timer::Kill {
                    transaction: txn.to_owned(),
                    generation: slot.generation,
                },
            }),
        }
    }

    /// Ends a starting or running instance for the host's own `reason`
    /// (missed heartbeats, not ready in time, over a limit): its end is a
    /// failure with that reason. `Term` stops it gracefully (SIGKILL after
    /// `stop_timeout`), `Kill` at once.
    fn fail(&mut self, out: &mut Out, i: usize, j: usize, reason: String, signal: StopSignal) {
        let id = self.id.clone();
        let timeout = self.services[i].spec.stop_timeout;
        let slot = &mut self.services[i].slots[j];
        if !matches!(slot.phase, Phase::Starting | Phase::Running) {
            return;
        }
        slot.kill_reason = Some(reason);
        match (signal, slot.pid) {
            (StopSignal::Term, _) => Self::signal_slot(out, &id, slot, timeout),
            (StopSignal::Kill, Some(pid)) => out.effects.push(Effect::Signal { pid, signal }),
            (StopSignal::Kill, None) => {}
        }
    }

    /// Stops service `i` on request: it stays down.
    fn stop_service(&mut self, out: &mut Out, i: usize) {
        let id = self.id.clone();
        let svc = &mut self.services[i];
        svc.wanted = false;
        if let Some(sc) = &mut svc.sched {
            sc.paused = true;
        }
        if let Some(g) = &mut self.group {
            g.services.remove(&svc.spec.name);
        }
        let timeout = svc.spec.stop_timeout;
        for slot in &mut svc.slots {
            match slot.phase {
                Phase::Starting | Phase::Running | Phase::Stopping => {
                    Self::signal_slot(out, &id, slot, timeout);
                }
                Phase::Waiting | Phase::Backoff | Phase::Held => {
                    slot.phase = Phase::Stopped;
                    slot.generation = 0;
                }
                _ => {}
            }
        }
    }

    /// Stops the services named, then starts them again after `delay`.
    fn restart_group(&mut self, out: &mut Out, names: Vec<String>, delay: Duration) {
        let round = out.next_generation;
        out.next_generation += 1;
        let group = self.group.get_or_insert(Group {
            services: BTreeSet::new(),
            delay,
            round,
            timer_set: false,
        });
        group.delay = group.delay.max(delay);
        let before = group.services.len();
        group.services.extend(names);
        if group.services.len() > before && group.timer_set {
            // New members while the delay runs: wait for them to be down
            // too, under a new round (the pending timer is ignored).
            group.round = round;
            group.timer_set = false;
        }
        let id = self.id.clone();
        let members = group.services.clone();
        for svc in &mut self.services {
            if !members.contains(&svc.spec.name) {
                continue;
            }
            svc.wanted = true;
            let timeout = svc.spec.stop_timeout;
            for slot in &mut svc.slots {
                match slot.phase {
                    Phase::Starting | Phase::Running => Self::signal_slot(out, &id, slot, timeout),
                    Phase::Stopping => {}
                    _ => {
                        slot.phase = Phase::Held;
                        slot.generation = 0;
                    }
                }
            }
        }
        self.advance_group(out);
    }

    /// Once every member of the pending group restart is down, waits its
    /// delay (then [`Timer::Group`] starts them).
    fn advance_group(&mut self, out: &mut Out) {
        let Some(group) = &mut self.group else { return };
        if group.timer_set {
            return;
        }
        let down = self
            .services
            .iter()
            .filter(|s| group.services.contains(&s.spec.name))
            .all(|s| !s.has_process());
        if down {
            group.timer_set = true;
            out.effects.push(Effect::Timer {
                after: group.delay,
                timer: Timer::Group {
                    transaction: self.id.clone(),
                    round: group.round,
                },
            });
        }
    }

    /// Ends the transaction: stops everything in reverse dependency order.
    fn end(&mut self, out: &mut Out, end: End) {
        if let TxnState::Stopping(current) = &self.state {
            // A harder end wins (exit over stop); never downgrade.
            if *current == End::Exit || end == End::Stop || end == End::Shutdown {
                return;
            }
        }
        let was_stopping = matches!(self.state, TxnState::Stopping(_));
        if !was_stopping && matches!(self.state, TxnState::Stopped | TxnState::Failed(_)) {
            if end == End::Exit {
                self.state = TxnState::Stopping(End::Exit);
                self.finish_if_down(out);
            }
            return;
        }
        self.state = TxnState::Stopping(end.clone());
        self.resume = end == End::Shutdown;
        self.group = None;
        if !was_stopping {
            let reason = match &end {
                End::Fail(r) => Some(r.clone()),
                End::Shutdown => Some("host shutting down".into()),
                _ => None,
            };
            self.context_event(out, ContextChange::Stopping, reason);
        }
        for svc in &mut self.services {
            svc.wanted = false;
            for slot in &mut svc.slots {
                if matches!(slot.phase, Phase::Waiting | Phase::Backoff | Phase::Held) {
                    slot.phase = Phase::Stopped;
                    slot.generation = 0;
                }
            }
        }
        if end != End::Shutdown {
            out.effects.push(Effect::Persist);
        }
        self.advance_stop(out);
    }

    /// Signals each service whose dependents are all down.
    fn advance_stop(&mut self, out: &mut Out) {
        let id = self.id.clone();
        let mut to_stop = Vec::new();
        for (i, svc) in self.services.iter().enumerate() {
            if !svc
                .slots
                .iter()
                .any(|s| matches!(s.phase, Phase::Starting | Phase::Running))
            {
                continue;
            }
            let dependents_up = self
                .services
                .iter()
                .any(|d| d.spec.after.contains(&svc.spec.name) && d.has_process());
            if !dependents_up {
                to_stop.push(i);
            }
        }
        for i in to_stop {
            let svc = &mut self.services[i];
            let timeout = svc.spec.stop_timeout;
            for slot in &mut svc.slots {
                if matches!(slot.phase, Phase::Starting | Phase::Running) {
                    Self::signal_slot(out, &id, slot, timeout);
                }
            }
        }
        self.finish_if_down(out);
    }

    fn finish_if_down(&mut self, out: &mut Out) {
        let TxnState::Stopping(end) = &self.state else {
            return;
        };
        if self.has_process() {
            return;
        }
        let end = end.clone();
        self.state = match &end {
            End::Fail(r) => TxnState::Failed(r.clone()),
            End::Exit => TxnState::Exited,
            End::Stop | End::Shutdown => TxnState::Stopped,
        };
        let (change, reason) = match end {
            End::Stop | End::Shutdown => (ContextChange::Stopped, None),
            End::Exit => (ContextChange::Exited, None),
            End::Fail(r) => (ContextChange::Failed, Some(r)),
        };
        self.context_event(out, change, reason);
    }

    /// A process ended (or never started).
    fn ended(
        &mut self,
        out: &mut Out,
        generation: u64,
        status: Option<ExitStatus>,
        spawn_error: Option<String>,
    ) {
        if let Some(k) = self
            .retired
            .iter()
            .position(|s| s.slots.iter().any(|sl| sl.generation == generation))
        {
            for sl in &mut self.retired[k].slots {
                if sl.generation == generation {
                    sl.phase = Phase::Stopped;
                    sl.pid = None;
                }
            }
            self.retired.retain(Svc::has_process);
            self.after_change(out);
            return;
        }
        let Some((i, j)) = self.find(generation) else {
            return;
        };
        let now = out.now;
        let svc = &mut self.services[i];
        let policy = svc.spec.restart;
        let slot = &mut svc.slots[j];
        if !slot.phase.has_process() {
            return;
        }
        let was_starting = slot.phase == Phase::Starting;
        let (event, reason) = if let Some(e) = spawn_error {
            (Lifecycle::Failed, Some(e))
        } else if let Some(r) = slot.kill_reason.take() {
            (Lifecycle::Failed, Some(r))
        } else if slot.stop_requested {
            (Lifecycle::Stopped, None)
        } else {
            match status {
                Some(ExitStatus::Code(0)) => (Lifecycle::Exited, None),
                Some(s) if was_starting => (
                    Lifecycle::Failed,
                    Some(format!("failed start: {}", s.describe())),
                ),
                Some(s) => (Lifecycle::Failed, Some(s.describe())),
                None => (Lifecycle::Failed, Some("ended".into())),
            }
        };
        slot.last_exit = Some(match (&reason, status) {
            (Some(r), _) => r.clone(),
            (None, Some(s)) => s.describe(),
            (None, None) => String::new(),
        });
        slot.phase = match event {
            Lifecycle::Stopped => Phase::Stopped,
            Lifecycle::Exited => Phase::Exited,
            _ => Phase::Failed,
        };
        let ran_for = slot.ready_at.map(|t| now.saturating_duration_since(t));
        let outcome = slot.last_exit.clone().unwrap_or_default();
        if let Some(sc) = &mut svc.sched {
            sc.ended(event == Lifecycle::Exited, outcome);
        }
        // Publish with the pid it had, then forget it.
        self.event(out, i, j, event, reason.clone(), status, None);
        self.services[i].slots[j].pid = None;
        self.next_scheduled_run(out, i);

        let restart = self.state == TxnState::Running
            && self.services[i].wanted
            && event != Lifecycle::Stopped
            && match policy {
                RestartPolicy::Permanent => true,
                RestartPolicy::Transient => event == Lifecycle::Failed,
                RestartPolicy::Temporary => false,
            }
            // The trigger may have restarted or stopped it already.
            && matches!(self.services[i].slots[j].phase, Phase::Exited | Phase::Failed);
        if restart {
            let what = format!(
                "{} {}",
                self.services[i].slots[j].instance,
                reason.unwrap_or_else(|| "exited".into())
            );
            self.policy_restart(out, i, j, ran_for, &what);
        }
        self.after_change(out);
    }

    /// Restarts after an instance ended, as the strategy says, within the
    /// budget.
    fn policy_restart(
        &mut self,
        out: &mut Out,
        i: usize,
        j: usize,
        ran_for: Option<Duration>,
        what: &str,
    ) {
        let now = out.now;
        let window = self.context.within;
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() > self.context.max_restarts as usize {
            let reason = format!(
                "more than {} restarts within {}s (last: {what})",
                self.context.max_restarts,
                window.as_secs()
            );
            self.end(out, End::Fail(reason));
            return;
        }
        let spec = self.services[i].spec.clone();
        let slot = &mut self.services[i].slots[j];
        if ran_for.is_some_and(|d| d >= spec.backoff.reset_after) {
            slot.failures_in_row = 0;
        }
        let delay = backoff_delay(&spec, slot.failures_in_row);
        slot.failures_in_row = slot.failures_in_row.saturating_add(1);
        match self.context.strategy {
            Strategy::OneForOne => {
                slot.phase = Phase::Backoff;
                out.effects.push(Effect::Timer {
                    after: delay,
                    timer: Timer::Restart {
                        transaction: self.id.clone(),
                        generation: slot.generation,
                    },
                });
            }
            Strategy::OneForAll => {
                let names = self.services.iter().map(|s| s.spec.name.clone()).collect();
                self.restart_group(out, names, delay);
            }
            Strategy::RestForOne => {
                let names = self.services[i..]
                    .iter()
                    .map(|s| s.spec.name.clone())
                    .collect();
                self.restart_group(out, names, delay);
            }
        }
    }

    /// After any change: progress a stop or a group restart.
    fn after_change(&mut self, out: &mut Out) {
        match self.state {
            TxnState::Stopping(_) => self.advance_stop(out),
            TxnState::Running => self.advance_group(out),
            _ => {}
        }
    }

    fn on_timer(&mut self, out: &mut Out, timer: Timer) {
        match timer {
            Timer::Restart { generation, .. } => {
                let Some((i, j)) = self.find(generation) else {
                    return;
                };
                if self.state != TxnState::Running
                    || !self.services[i].wanted
                    || self.services[i].slots[j].phase != Phase::Backoff
                {
                    return;
                }
                self.services[i].slots[j].restarts += 1;
                if self.deps_ready(i) {
                    self.spawn(out, i, j);
                } else {
                    self.services[i].slots[j].phase = Phase::Waiting;
                }
            }
            Timer::Kill { generation, .. } => {
                let Some((i, j)) = self.find(generation) else {
                    return;
                };
                let slot = &self.services[i].slots[j];
                if slot.phase == Phase::Stopping {
                    match slot.pid {
                        Some(pid) => out.effects.push(Effect::Signal {
                            pid,
                            signal: StopSignal::Kill,
                        }),
                        None => out.effects.push(Effect::Timer {
                            after: Duration::from_millis(10),
                            timer: Timer::Kill {
                                transaction: self.id.clone(),
                                generation,
                            },
                        }),
                    }
                }
            }
            Timer::Ready { generation, .. } => {
                let Some((i, j)) = self.find(generation) else {
                    return;
                };
                let timeout = self.services[i].spec.ready_timeout;
                if self.services[i].slots[j].phase == Phase::Starting {
                    let reason =
                        format!("failed start: not registered on the bus within {timeout:?}");
                    self.fail(out, i, j, reason, StopSignal::Kill);
                }
            }
            Timer::Fire { service, round, .. } => {
                let Ok(i) = self.index(&service) else { return };
                let busy = self.services[i].has_process();
                let Some(sc) = &mut self.services[i].sched else {
                    return;
                };
                if sc.round != round || self.state != TxnState::Running {
                    return;
                }
                let Some(fire) = sc.next else { return };
                sc.last_fire = Some(fire);
                if busy {
                    // Runs never overlap: this one waits for the misfire policy.
                    sc.busy(fire);
                } else if !sc.paused {
                    self.start_run(out, i, Some(fire));
                }
                self.arm(out, i, fire);
                out.effects.push(Effect::Persist);
            }
            Timer::Group { round, .. } => {
                let Some(group) = self.group.take_if(|g| g.round == round) else {
                    return;
                };
                if self.state != TxnState::Running {
                    return;
                }
                for i in 0..self.services.len() {
                    if !group.services.contains(&self.services[i].spec.name) {
                        continue;
                    }
                    for slot in &mut self.services[i].slots {
                        if (!slot.phase.has_process() && slot.generation != 0)
                            || slot.phase == Phase::Held
                        {
                            slot.restarts += 1;
                        }
                    }
                    self.start_service(out, i);
                }
            }
        }
    }

    /// Applies a reloaded context spec to this transaction.
    fn apply(&mut self, out: &mut Out, spec: Arc<ContextSpec>, report: &mut ReloadReport) {
        let id = self.id.clone();
        let running = self.state == TxnState::Running;
        let mut old: Vec<Svc> = std::mem::take(&mut self.services);
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for new in &spec.services {
            match old.iter().position(|s| s.spec.name == new.name) {
                Some(k) => {
                    let mut svc = old.remove(k);
                    if *svc.spec == **new {
                        report.unchanged.push(format!("{id}/{}", new.name));
                    } else {
                        // Extra slots beyond the new count retire.
                        if svc.slots.len() > new.instances as usize {
                            let extra = svc.slots.split_off(new.instances as usize);
                            self.retired.push(Svc {
                                spec: svc.spec.clone(),
                                wanted: false,
                                slots: extra,
                                sched: None,
                            });
                        }
                        while svc.slots.len() < new.instances as usize {
                            let n = u32::try_from(svc.slots.len()).unwrap_or(u32::MAX);
                            svc.slots.push(Slot::new(n));
                        }
                        if svc.spec.schedule != new.schedule {
                            svc.sched = new.schedule.as_ref().map(SchedState::new);
                        }
                        svc.spec = new.clone();
                        if svc.wanted || svc.has_process() {
                            changed.push(new.name.clone());
                            report.restarted.push(format!("{id}/{}", new.name));
                        } else {
                            report.unchanged.push(format!("{id}/{}", new.name));
                        }
                    }
                    self.services.push(svc);
                }
                None => {
                    self.services.push(Svc::new(new.clone()));
                    if new.autostart {
                        added.push(self.services.len() - 1);
                        report.started.push(format!("{id}/{}", new.name));
                    }
                }
            }
        }
        for gone in old {
            report.stopped.push(format!("{id}/{}", gone.spec.name));
            self.retired.push(gone);
        }
        for svc in &mut self.retired {
            svc.wanted = false;
            let timeout = svc.spec.stop_timeout;
            for slot in &mut svc.slots {
                if matches!(slot.phase, Phase::Starting | Phase::Running) {
                    Self::signal_slot(out, &id, slot, timeout);
                }
            }
        }
        self.retired.retain(Svc::has_process);
        self.context = spec;
        if !running {
            return;
        }
        if !changed.is_empty() {
            self.restart_group(out, changed, Duration::ZERO);
        }
        for i in added {
            self.start_service(out, i);
        }
        self.arm_schedules(out);
        self.context_event(out, ContextChange::Reloaded, None);
    }

    /// Arms every schedule not armed yet.
    fn arm_schedules(&mut self, out: &mut Out) {
        for i in 0..self.services.len() {
            if self.services[i]
                .sched
                .as_ref()
                .is_some_and(|sc| sc.next.is_none())
            {
                self.arm(out, i, out.wall);
            }
        }
    }

    /// Arms service `i`'s next fire time after `after`.
    fn arm(&mut self, out: &mut Out, i: usize, after: DateTime<Utc>) {
        let id = self.id.clone();
        let name = self.services[i].spec.name.clone();
        let Some(sc) = &mut self.services[i].sched else {
            return;
        };
        match sc.arm(after, out.wall) {
            Some((round, wait)) => out.effects.push(Effect::Timer {
                after: wait,
                timer: Timer::Fire {
                    transaction: id,
                    service: name,
                    round,
                },
            }),
            None => tracing::info!(service = %name, "schedule has no further fire time"),
        }
        self.next_scheduled_run(out, i);
    }

    /// When service `i` is idle, starts the next run the misfire policy
    /// kept (fire times missed while busy or while the host was down).
    fn next_scheduled_run(&mut self, out: &mut Out, i: usize) {
        if self.state != TxnState::Running || self.services[i].has_process() {
            return;
        }
        let Some(sc) = &mut self.services[i].sched else {
            return;
        };
        if sc.paused {
            return;
        }
        if let Some(fire) = sc.take_next_run() {
            self.start_run(out, i, Some(fire));
        }
    }

    /// After a host restart: the fire times that passed while it was down.
    fn missed_while_down(&mut self, out: &mut Out, last_fires: &BTreeMap<String, i64>) {
        for i in 0..self.services.len() {
            let name = self.services[i].spec.name.clone();
            let Some(sc) = &mut self.services[i].sched else {
                continue;
            };
            let Some(last) = last_fires
                .get(&name)
                .and_then(|ms| DateTime::<Utc>::from_timestamp_millis(*ms))
            else {
                continue;
            };
            sc.last_fire = Some(last);
            // Everything after the last fire up to the armed one was missed.
            let armed = sc.next.unwrap_or(out.wall);
            sc.missed_since(last, armed.min(out.wall));
            self.next_scheduled_run(out, i);
        }
    }

    fn status(&self, now: Instant) -> TransactionStatus {
        let (state, reason) = match &self.state {
            TxnState::Running => ("running", None),
            TxnState::Exited => ("exited", None),
            TxnState::Stopping(_) => ("stopping", None),
            TxnState::Stopped => ("stopped", None),
            TxnState::Failed(r) => ("failed", Some(r.clone())),
        };
        TransactionStatus {
            transaction: self.id.clone(),
            context: self.context.name.clone(),
            state: state.to_owned(),
            reason,
            recent_restarts: self
                .restarts
                .iter()
                .filter(|t| now.saturating_duration_since(**t) <= self.context.within)
                .count(),
            services: self
                .services
                .iter()
                .map(|s| ServiceStatus {
                    name: s.spec.name.clone(),
                    wanted: s.wanted,
                    instances: s
                        .slots
                        .iter()
                        .map(|sl| InstanceStatus {
                            slot: sl.index,
                            instance: sl.instance.clone(),
                            pid: sl.pid,
                            state: sl.phase.name().to_owned(),
                            restarts: sl.restarts,
                            uptime_secs: (sl.phase == Phase::Running)
                                .then(|| {
                                    sl.ready_at
                                        .map(|t| now.saturating_duration_since(t).as_secs_f64())
                                })
                                .flatten(),
                            last_exit: sl.last_exit.clone(),
                        })
                        .collect(),
                    schedule: s.sched.as_ref().map(SchedState::status),
                })
                .collect(),
        }
    }
}

/// `initial * 2^failures`, at most `max`, plus up to 20% jitter.
fn backoff_delay(spec: &ServiceSpec, failures: u32) -> Duration {
    let b = spec.backoff;
    let base = b
        .initial
        .saturating_mul(1u32 << failures.min(20))
        .min(b.max);
    let jitter = (muster_core::id::random_u64() % 1000) as f64 / 5000.0;
    base.mul_f64(1.0 + jitter).min(b.max.max(b.initial))
}

mod refusal;
mod scheduled;

pub use refusal::{Refusal, RefusalKind};
#[cfg(test)]
mod tests;
