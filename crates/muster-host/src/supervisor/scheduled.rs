//! The schedule of a run-to-completion service: its next fire time, the
//! fire times that came while a run was going, the runs waiting to start
//! (catch-up), and the record of recent runs.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use muster::schedule::{Misfire, Schedule};

use crate::manifest::Scheduled;
use crate::status::{RunStatus, ScheduleStatus};

/// Runs kept for `ctl status`.
const RECENT: usize = 10;

#[derive(Debug)]
pub(super) struct SchedState {
    schedule: Schedule,
    expr: String,
    misfire: Misfire,
    /// The armed fire time.
    pub(super) next: Option<DateTime<Utc>>,
    /// Bumped when re-armed, so an older timer is ignored.
    pub(super) round: u64,
    /// Fire times to run, oldest first.
    queue: VecDeque<DateTime<Utc>>,
    /// Fire times that came while a run was going.
    missed: Vec<DateTime<Utc>>,
    /// Set by a stop asked for: no run starts until the service is started again.
    pub(super) paused: bool,
    /// The last fire time that came (persisted, for misfires across a host restart).
    pub(super) last_fire: Option<DateTime<Utc>>,
    runs: u64,
    succeeded: u64,
    failed: u64,
    skipped: u64,
    /// Fire times another host of the fleet claimed first.
    elsewhere: u64,
    recent: VecDeque<RunStatus>,
    /// The fire time of the run starting now, when a schedule (not an
    /// operator) started it: it is claimed before the process starts.
    pub(super) claim: Option<DateTime<Utc>>,
}

impl SchedState {
    pub(super) fn new(s: &Scheduled) -> Self {
        Self {
            schedule: s.schedule(),
            expr: s.expr.clone(),
            misfire: s.misfire,
            next: None,
            round: 0,
            queue: VecDeque::new(),
            missed: Vec::new(),
            paused: false,
            last_fire: None,
            runs: 0,
            succeeded: 0,
            failed: 0,
            skipped: 0,
            elsewhere: 0,
            recent: VecDeque::new(),
            claim: None,
        }
    }

    /// Arms the next fire time after `after`; fire times already past
    /// (`<= now`) are missed ones. Returns the new round and how long to
    /// wait, or `None` when the schedule never fires again.
    pub(super) fn arm(
        &mut self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<(u64, std::time::Duration)> {
        self.round += 1;
        let mut next = self.schedule.next_after(after)?;
        let mut late = Vec::new();
        while next <= now && late.len() < 10_000 {
            late.push(next);
            next = self.schedule.next_after(next)?;
        }
        if !late.is_empty() {
            self.missed.extend(late);
        }
        self.next = Some(next);
        Some((self.round, (next - now).to_std().unwrap_or_default()))
    }

    /// Fire times between `since` (exclusive) and `now`, missed while the
    /// host was down.
    pub(super) fn missed_since(&mut self, since: DateTime<Utc>, now: DateTime<Utc>) {
        let mut t = since;
        while let Some(n) = self.schedule.next_after(t) {
            if n > now || self.missed.len() >= 10_000 {
                break;
            }
            self.missed.push(n);
            t = n;
        }
    }

    /// The fire time came while a run was going.
    pub(super) fn busy(&mut self, fire: DateTime<Utc>) {
        self.missed.push(fire);
    }

    /// Applies the misfire policy to what was missed; returns the fire
    /// time to run now, if any.
    pub(super) fn take_next_run(&mut self) -> Option<DateTime<Utc>> {
        if !self.missed.is_empty() {
            let chosen = self.misfire.select(&self.missed);
            self.skipped += (self.missed.len() - chosen.len()) as u64;
            self.queue.extend(chosen);
            self.missed.clear();
        }
        self.queue.pop_front()
    }

    /// A run for `fire` starts.
    pub(super) fn started(&mut self, fire: DateTime<Utc>, now: DateTime<Utc>) {
        self.recent.push_back(RunStatus {
            fire: fire.to_rfc3339(),
            started: now.to_rfc3339(),
            outcome: None,
        });
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// The run ended: `ok` when it exited 0.
    pub(super) fn ended(&mut self, ok: bool, outcome: String) {
        self.runs += 1;
        if ok {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        if let Some(r) = self.recent.back_mut() {
            r.outcome = Some(outcome);
        }
    }

    /// Another host of the fleet claimed the fire time of the run that
    /// was starting: it does not run here.
    pub(super) fn ran_elsewhere(&mut self, holder: &str) {
        self.elsewhere += 1;
        if let Some(r) = self.recent.back_mut() {
            r.outcome = Some(format!("not run here: {holder}"));
        }
    }

    pub(super) fn status(&self) -> ScheduleStatus {
        ScheduleStatus {
            schedule: self.schedule.to_string(),
            expr: self.expr.clone(),
            next: self.next.map(|n| n.to_rfc3339()),
            paused: self.paused,
            runs: self.runs,
            succeeded: self.succeeded,
            failed: self.failed,
            skipped: self.skipped,
            elsewhere: self.elsewhere,
            recent: self.recent.iter().cloned().collect(),
        }
    }
}
