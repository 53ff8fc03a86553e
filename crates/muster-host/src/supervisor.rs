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
//!
//! Here: the [`Supervisor`] and its inputs. Beside it: `effects` (what
//! comes out), `state` (transactions, services, slots), `lifecycle`
//! (start, ready, stop, fail, events and triggers), `policy` (what an
//! ended process leads to: restart policies, strategies, budget, backoff,
//! timers), `reload`, `schedule_runs` and `scheduled` (services on a
//! schedule), `refusal` (why a command was refused).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use muster::schedule::{Clock, SystemClock};
use serde_json::Value;
use tokio::time::Instant;

use crate::events::{ContextChange, Lifecycle};
use crate::manifest::{ContextSpec, Readiness};
use crate::status::Status;

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

    /// The scheduled run of `generation` was not started: its fire time
    /// was claimed by another host of the fleet, or could not be claimed
    /// (`holder` says which); the next fire time runs as usual.
    pub fn ran_elsewhere(
        &mut self,
        now: Instant,
        transaction: &str,
        generation: u64,
        holder: &str,
    ) -> Vec<Effect> {
        self.begin(now);
        let _ = self.with_txn(transaction, |txn, out| {
            txn.ran_elsewhere(out, generation, holder);
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
            host: String::new(),
            fleet: Vec::new(),
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

mod effects;
mod lifecycle;
mod policy;
mod refusal;
mod reload;
mod schedule_runs;
mod scheduled;
mod state;

pub use effects::{
    Effect, ExitStatus, Persisted, ReloadReport, ScheduleClaim, Spawn, StopSignal, Timer,
};
pub use refusal::{Refusal, RefusalKind};
use state::{End, Out, Phase, Svc, Txn, TxnState};

#[cfg(test)]
mod tests;
