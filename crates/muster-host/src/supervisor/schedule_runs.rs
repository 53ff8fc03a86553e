//! Services started on a schedule: arming the next fire time, starting a
//! run, catching up on fire times missed while the host was down.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::state::{Out, Txn, TxnState};
use super::{Effect, Timer};

impl Txn {
    /// Arms every schedule not armed yet.
    pub(super) fn arm_schedules(&mut self, out: &mut Out) {
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
    pub(super) fn arm(&mut self, out: &mut Out, i: usize, after: DateTime<Utc>) {
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
    pub(super) fn next_scheduled_run(&mut self, out: &mut Out, i: usize) {
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
    pub(super) fn missed_while_down(&mut self, out: &mut Out, last_fires: &BTreeMap<String, i64>) {
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
}
