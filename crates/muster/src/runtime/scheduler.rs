//! Runs a service's scheduled jobs: one task per job that sleeps until
//! the next fire time, claims it on the bus (so one instance of the
//! service runs it), runs it, and applies the misfire policy to the fire
//! times that passed while it was busy or not looking. Runs of one job
//! never overlap; a failing or panicking run is logged and counted and the
//! schedule goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use muster_core::transport::SharedTransport;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Ctx;
use crate::schedule::{Clock, Misfire, Schedule, sleep_until};
use crate::service::HookFn;
use crate::stats::MethodStats;

/// One scheduled job of a service.
pub(crate) struct Job {
    pub(crate) schedule: Schedule,
    pub(crate) misfire: Misfire,
    pub(crate) at_startup: bool,
    pub(crate) run: HookFn,
}

/// Names for `$stats` and claims: `schedule:<expression>`, with `#2`,
/// `#3`... for a second and third job on the same expression.
pub(crate) fn job_names(jobs: &[Arc<Job>]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(jobs.len());
    for j in jobs {
        let base = format!("schedule:{}", j.schedule);
        let n = names
            .iter()
            .filter(|x| **x == base || x.starts_with(&format!("{base}#")))
            .count();
        names.push(if n == 0 {
            base
        } else {
            format!("{base}#{}", n + 1)
        });
    }
    names
}

/// What a job's task needs besides the job.
pub(crate) struct Runner {
    /// The job's name, unique in the service (see `ServiceDispatch`).
    pub(crate) name: String,
    pub(crate) ctx: Ctx,
    pub(crate) transport: SharedTransport,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) stats: Arc<MethodStats>,
    pub(crate) shutdown: CancellationToken,
}

/// Fire times collected at once, at most (a clock that jumped years).
const MAX_DUE: usize = 10_000;

impl Runner {
    /// Drives `job` until shutdown.
    pub(crate) async fn drive(self, job: Arc<Job>) {
        if job.at_startup {
            self.run(&job, None).await;
        }
        let mut cursor = self.clock.now();
        loop {
            let Some(first) = job.schedule.next_after(cursor) else {
                tracing::info!(job = %self.name, "no further fire time");
                self.shutdown.cancelled().await;
                return;
            };
            let waited = first > self.clock.now();
            if waited {
                tokio::select! {
                    () = sleep_until(self.clock.as_ref(), first) => {}
                    () = self.shutdown.cancelled() => return,
                }
            }
            if self.shutdown.is_cancelled() {
                return;
            }
            let now = self.clock.now();
            let mut due = vec![first];
            while due.len() < MAX_DUE {
                match job.schedule.next_after(*due.last().unwrap_or(&first)) {
                    Some(n) if n <= now => due.push(n),
                    _ => break,
                }
            }
            cursor = *due.last().unwrap_or(&first);
            // On time: the one fire time we slept for. Anything else passed
            // while a run was going or while nobody looked: a misfire.
            let runs = if waited && due.len() == 1 {
                due.clone()
            } else {
                job.misfire.select(&due)
            };
            let skipped = due.len() - runs.len();
            if skipped > 0 {
                self.stats.skipped(skipped as u64);
                tracing::info!(job = %self.name, skipped, policy = ?job.misfire, "fire times missed while busy or away");
            }
            for fire in runs {
                if self.shutdown.is_cancelled() {
                    return;
                }
                self.run(&job, Some(fire)).await;
            }
        }
    }

    /// One run (for `fire`, claimed first; `None` at start-up).
    async fn run(&self, job: &Job, fire: Option<DateTime<Utc>>) {
        if let Some(fire) = fire {
            let key = format!(
                "{}/{}/{}",
                self.ctx.service(),
                self.name,
                fire.timestamp_millis()
            );
            match self
                .transport
                .claim(&key, self.ctx.instance(), claim_ttl(&job.schedule, fire))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(job = %self.name, %fire, "another instance runs this one");
                    return;
                }
                Err(e) => {
                    // Never twice: without a claim, do not run.
                    tracing::warn!(job = %self.name, %fire, error = %e, "cannot claim the run; skipped");
                    self.stats.skipped(1);
                    return;
                }
            }
        }
        // Each run is the first span of a trace of its own: the calls,
        // events and jobs it makes are its children.
        let trace = crate::sampling::span_for(None);
        let ctx = self.ctx.scoped(crate::ctx::CallScope {
            trace: Some(trace),
            ..crate::ctx::CallScope::default()
        });
        let span = tracing::info_span!(
            "schedule",
            job = %self.name,
            trace_id = %trace.trace_id_text(),
        );
        let export =
            super::span_export::exported_schedule_span(&self.name, fire, ctx.instance(), trace);
        self.stats.begin();
        let started = Instant::now();
        let outcome = tokio::spawn((job.run)(ctx).instrument(span)).await;
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the job panicked: {e}")),
        };
        if let Some(e) = &error {
            tracing::error!(job = %self.name, fire = ?fire, error = %e, "scheduled job failed");
        } else {
            tracing::debug!(job = %self.name, fire = ?fire, "scheduled job done");
        }
        if let Some(export) = export {
            export.end(error.as_deref().map(crate::RpcError::internal).as_ref());
        }
        self.stats.end(started.elapsed(), error.as_deref());
    }
}

/// How long a claim is kept: longer than any instance could still try the
/// same fire time (a misfire run after a long job).
fn claim_ttl(schedule: &Schedule, fire: DateTime<Utc>) -> Duration {
    let period = schedule
        .next_after(fire)
        .and_then(|n| (n - fire).to_std().ok())
        .unwrap_or_default();
    (period * 3).clamp(Duration::from_secs(600), Duration::from_secs(86_400))
}
