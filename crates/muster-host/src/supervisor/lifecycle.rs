//! A transaction's services through their lives: started in dependency
//! order, spawned, ready, stopped, failed; lifecycle events and their
//! triggers, fired from the one state change that causes each.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::time::Instant;

use super::scheduled::SchedState;
use super::state::{End, Group, Out, Phase, Slot, Svc, Txn, TxnState};
use super::{Effect, ExitStatus, Refusal, ScheduleClaim, Spawn, StopSignal, Timer};
use crate::events::{
    CONTEXT_TOPIC, ContextChange, ContextEvent, InstanceEvent, Lifecycle, control_topic,
};
use crate::manifest::Actions;
use crate::status::{InstanceStatus, ServiceStatus, TransactionStatus};

impl Txn {
    pub(super) fn index(&self, service: &str) -> Result<usize, Refusal> {
        self.services
            .iter()
            .position(|s| s.spec.name == service)
            .ok_or_else(|| Refusal::UnknownService {
                service: service.to_owned(),
                within: format!("context {}", self.context.name),
            })
    }

    pub(super) fn has_process(&self) -> bool {
        self.services
            .iter()
            .chain(&self.retired)
            .any(Svc::has_process)
    }

    pub(super) fn find(&self, generation: u64) -> Option<(usize, usize)> {
        self.services.iter().enumerate().find_map(|(i, s)| {
            s.slots
                .iter()
                .position(|sl| sl.generation == generation)
                .map(|j| (i, j))
        })
    }

    pub(super) fn context_event(
        &self,
        out: &mut Out,
        event: ContextChange,
        reason: Option<String>,
    ) {
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
    pub(super) fn event(
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

    pub(super) fn run_actions(&mut self, out: &mut Out, actions: &Actions) {
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
    pub(super) fn start_service(&mut self, out: &mut Out, i: usize) {
        self.start_run(out, i, None);
    }

    /// Starts service `i`; for a scheduled one, a run for `fire` (now, when
    /// started by hand or by a trigger).
    pub(super) fn start_run(&mut self, out: &mut Out, i: usize, fire: Option<DateTime<Utc>>) {
        if self.state != TxnState::Running {
            return;
        }
        let idle = !self.services[i].has_process();
        if let Some(sc) = &mut self.services[i].sched {
            sc.paused = false;
            if idle {
                sc.started(fire.unwrap_or(out.wall), out.wall);
                sc.claim = fire;
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

    pub(super) fn deps_ready(&self, i: usize) -> bool {
        self.services[i].spec.after.iter().all(|d| {
            self.services
                .iter()
                .find(|s| &s.spec.name == d)
                .is_none_or(Svc::ready)
        })
    }

    pub(super) fn spawn(&mut self, out: &mut Out, i: usize, j: usize) {
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
        let claim = svc
            .sched
            .as_mut()
            .and_then(|sc| sc.claim.take())
            .map(|fire| ScheduleClaim {
                key: format!(
                    "host-schedule/{}/{}/{}",
                    self.context.name,
                    svc.spec.name,
                    fire.timestamp_millis()
                ),
            });
        out.effects.push(Effect::Spawn(Spawn {
            transaction: self.id.clone(),
            generation,
            instance: slot.instance.clone(),
            slot: slot.index,
            spec: svc.spec.clone(),
            claim,
        }));
    }

    /// The run of `generation` was not started: another host of the fleet
    /// claimed its fire time (`holder` says which, or why the claim could
    /// not be made).
    pub(super) fn ran_elsewhere(&mut self, out: &mut Out, generation: u64, holder: &str) {
        let Some((i, j)) = self.find(generation) else {
            return;
        };
        let slot = &mut self.services[i].slots[j];
        if slot.phase != Phase::Starting || slot.pid.is_some() {
            return;
        }
        slot.phase = Phase::Exited;
        slot.last_exit = Some(format!("not run here: {holder}"));
        if let Some(sc) = &mut self.services[i].sched {
            sc.ran_elsewhere(holder);
        }
        self.next_scheduled_run(out, i);
    }

    pub(super) fn ready(&mut self, out: &mut Out, i: usize, j: usize) {
        let slot = &mut self.services[i].slots[j];
        slot.phase = Phase::Running;
        slot.ready_at = Some(out.now);
        self.event(out, i, j, Lifecycle::Started, None, None, None);
        self.wake_waiting(out);
    }

    /// Starts the waiting services whose `after` services are now ready.
    pub(super) fn wake_waiting(&mut self, out: &mut Out) {
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

    pub(super) fn signal_slot(out: &mut Out, txn: &str, slot: &mut Slot, stop_timeout: Duration) {
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
    pub(super) fn fail(
        &mut self,
        out: &mut Out,
        i: usize,
        j: usize,
        reason: String,
        signal: StopSignal,
    ) {
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
    pub(super) fn stop_service(&mut self, out: &mut Out, i: usize) {
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
    pub(super) fn restart_group(&mut self, out: &mut Out, names: Vec<String>, delay: Duration) {
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
    pub(super) fn advance_group(&mut self, out: &mut Out) {
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
    pub(super) fn end(&mut self, out: &mut Out, end: End) {
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
    pub(super) fn advance_stop(&mut self, out: &mut Out) {
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

    pub(super) fn finish_if_down(&mut self, out: &mut Out) {
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

    pub(super) fn status(&self, now: Instant) -> TransactionStatus {
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
