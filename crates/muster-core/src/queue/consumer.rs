//! The consumer loop every transport runs: take jobs up to the prefetch,
//! hand each to the sink, wait out a retry's delay, settle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{ConsumeOptions, Job, JobSink, Outcome};
use crate::Error;
use crate::transport::{BoxFuture, Subscribed};

/// Where a consumer loop takes jobs from and settles them: one per
/// transport.
pub trait JobSource: Send + Sync + 'static {
    /// Up to `max` jobs with their settling tags. May wait (about a second
    /// at most) for the first; an empty answer is fine.
    fn take(&self, max: usize) -> BoxFuture<'_, Result<Vec<(u64, Job)>, Error>>;

    /// Settles a job taken earlier: ack, retry (enqueue `attempt + 1`, then
    /// ack) or dead-letter (enqueue on `<queue>.dead`, then ack).
    /// The job and outcome are borrowed: a settle that fails is tried again
    /// with the same ones, and most settles (an ack) need neither.
    fn settle<'a>(
        &'a self,
        tag: u64,
        job: &'a Job,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Called once after the loop ends: give back whatever is still held.
    fn release(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// How long a stopping consumer waits for the jobs it is running.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running consumer loop; [`Subscribed::cancel`] stops taking jobs,
/// waits up to [`STOP_GRACE`] for the running ones and gives back the rest.
#[derive(Debug)]
pub struct Consuming {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscribed for Consuming {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.stop.send(true);
            let _ = self.task.await;
        })
    }
}

/// Starts the consumer loop of `source` on the current runtime, with the
/// prefetch and stop grace of `options`.
pub fn spawn<S: JobSource>(
    source: Arc<S>,
    sink: Arc<dyn JobSink>,
    options: &ConsumeOptions,
) -> Consuming {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(
        source,
        sink,
        options.prefetch.max(1),
        options.stop_grace,
        stopped,
    ));
    Consuming { stop, task }
}

async fn run<S: JobSource>(
    source: Arc<S>,
    sink: Arc<dyn JobSink>,
    prefetch: usize,
    grace: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(prefetch));
    let mut running = JoinSet::new();
    let mut inline = crate::inline::Inline::default();
    let mut backoff = crate::retry::Backoff::new();
    loop {
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let free = 1 + slots.available_permits();
        let taken = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            t = source.take(free) => t,
        };
        let jobs = match taken {
            Ok(jobs) => {
                backoff.succeeded();
                jobs
            }
            Err(e) => {
                let wait = backoff.failed();
                if backoff.worth_logging() {
                    tracing::warn!(error = %e, retry_in = ?wait, failures = backoff.failures(), "cannot take jobs");
                }
                drop(first);
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let mut first = Some(first);
        for (tag, job) in jobs {
            let permit = match first.take() {
                Some(p) => p,
                // Only this loop takes slots, so the ones counted are free;
                // still, a job must never be dropped unsettled: wait.
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let source = source.clone();
            // Handed over here, in the order taken: a sink that keeps
            // order (a durable group's) sees the jobs in queue order even
            // when their tasks run in another.
            let handled = sink.handle(job.clone());
            let work = Box::pin(async move {
                let outcome = handled.await;
                if let Outcome::Retry { after, reason } = &outcome {
                    tracing::debug!(job = %job.id, attempt = job.attempt, %reason, "job will be retried");
                    tokio::time::sleep(*after).await;
                }
                settle(&*source, tag, job, outcome).await;
                drop(permit);
            });
            // Quick jobs run here, the rest in their own task.
            if let Some(pending) = inline.poll_once(work) {
                running.spawn(pending);
            }
        }
    }
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("jobs still running at stop; they go back to the queue");
        running.abort_all();
    }
    source.release().await;
}

/// Settles with a few attempts: a settle lost to a broken connection leaves
/// the job to be delivered again (at least once), never lost.
async fn settle<S: JobSource + ?Sized>(source: &S, tag: u64, job: Job, outcome: Outcome) {
    let mut backoff = None;
    for _ in 0..3 {
        match source.settle(tag, &job, &outcome).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "cannot settle job; it will be delivered again if this keeps failing");
                let backoff = backoff.get_or_insert_with(|| {
                    crate::retry::Backoff::between(
                        Duration::from_millis(200),
                        Duration::from_secs(1),
                    )
                });
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}
