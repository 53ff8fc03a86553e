//! A consumer of a work queue held by the bus: long-polls `take`, sends
//! `settle`, and `release` when it stops.

use std::sync::Arc;
use std::time::Duration;

use muster_core::queue::consumer::JobSource;
use muster_core::queue::{Job, Outcome};
use muster_core::transport::BoxFuture;
use muster_core::{Error, ErrorKind};

use super::ControlClient;
use crate::control::{self, Ack, Release, Settle, Take, TakeReply};

/// How long the bus holds a `take` open waiting for a job.
const TAKE_WAIT: Duration = Duration::from_secs(1);

pub(super) struct ZmqSource {
    pub(super) control: Arc<ControlClient>,
    pub(super) queue: String,
    pub(super) holder: String,
    pub(super) timeout: Duration,
}

impl JobSource for ZmqSource {
    fn take(&self, max: usize) -> BoxFuture<'_, Result<Vec<(u64, Job)>, Error>> {
        let req = Take {
            queue: self.queue.clone(),
            holder: self.holder.clone(),
            max,
            wait_ms: u64::try_from(TAKE_WAIT.as_millis()).unwrap_or(1000),
        };
        Box::pin(async move {
            let reply: TakeReply = self
                .control
                .call(control::TAKE, &req, TAKE_WAIT + self.timeout.max(TAKE_WAIT))
                .await?;
            if let Some(e) = reply.error {
                return Err(Error::new(ErrorKind::Protocol, e));
            }
            Ok(reply.jobs.into_iter().map(|t| (t.tag, t.job)).collect())
        })
    }

    fn settle<'a>(
        &'a self,
        tag: u64,
        _job: &'a Job,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let (outcome, reason) = match outcome {
            Outcome::Ack => ("ack", None),
            Outcome::Retry { reason, .. } => ("retry", Some(reason.clone())),
            Outcome::Dead { reason } => ("dead", Some(reason.clone())),
        };
        let req = Settle {
            queue: self.queue.clone(),
            tag,
            outcome: outcome.to_owned(),
            reason,
        };
        Box::pin(async move {
            let reply: Ack = self
                .control
                .call(control::SETTLE, &req, self.timeout)
                .await?;
            reply
                .error
                .map_or(Ok(()), |e| Err(Error::new(ErrorKind::Protocol, e)))
        })
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        let req = Release {
            holder: self.holder.clone(),
        };
        Box::pin(async move {
            let released: Result<Ack, Error> = self
                .control
                .call(control::RELEASE, &req, self.timeout)
                .await;
            if let Err(e) = released {
                tracing::warn!(queue = %self.queue, error = %e, "cannot give back held jobs; the bus will when this consumer goes silent");
            }
        })
    }
}
