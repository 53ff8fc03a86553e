//! What happens when a process ends: restart policies, the restart budget,
//! the strategies (one for one, one for all, rest for one), backoff, and
//! the timers that carry delays out.

use std::time::Duration;

use super::state::{End, Out, Phase, Svc, Txn, TxnState};
use super::{Effect, ExitStatus, StopSignal, Timer};
use crate::events::Lifecycle;
use crate::manifest::{RestartPolicy, ServiceSpec, Strategy};

impl Txn {
    /// A process ended (or never started).
    pub(super) fn ended(
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
    pub(super) fn policy_restart(
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
    pub(super) fn after_change(&mut self, out: &mut Out) {
        match self.state {
            TxnState::Stopping(_) => self.advance_stop(out),
            TxnState::Running => self.advance_group(out),
            _ => {}
        }
    }

    pub(super) fn on_timer(&mut self, out: &mut Out, timer: Timer) {
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
