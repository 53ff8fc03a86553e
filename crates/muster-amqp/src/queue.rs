//! Work queues on RabbitMQ: a durable queue named as the queue (so any
//! AMQP client can feed it: a plain JSON body to the default exchange with
//! the queue's name as routing key), persistent messages, publisher
//! confirms, manual acks after the handler, `<queue>.dead` for dead
//! letters. A retry or a dead letter is published (confirmed) before the
//! original is acknowledged: a job is never in neither place. A consumer's
//! prefetch is set again on every new channel, so it survives reconnects;
//! jobs held by a consumer whose connection breaks are redelivered.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Consumer};
use muster_core::queue::consumer::{self, Consuming, JobSource};
use muster_core::queue::{
    ConsumeOptions, Job, JobSink, Outcome, QueueCommand, QueueReply, QueueStats, dead_queue,
};
use muster_core::transport::BoxFuture;
use muster_core::{Error, ErrorKind};

use crate::Inner;
use crate::link::{Outgoing, Published, amqp_error};
use crate::props::{
    JOB_ATTEMPT, JOB_ID, JOB_REASON, JOB_TRACEPARENT, JOB_TXN, text_field, u32_field,
};

fn job_properties(job: &Job) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        JOB_ID.into(),
        AMQPValue::LongString(LongString::from(job.id.as_str())),
    );
    headers.insert(
        JOB_ATTEMPT.into(),
        AMQPValue::LongInt(i32::try_from(job.attempt).unwrap_or(i32::MAX)),
    );
    if let Some(t) = &job.transaction {
        headers.insert(
            JOB_TXN.into(),
            AMQPValue::LongString(LongString::from(t.as_str())),
        );
    }
    if let Some(r) = &job.reason {
        headers.insert(
            JOB_REASON.into(),
            AMQPValue::LongString(LongString::from(r.as_str())),
        );
    }
    if let Some(t) = &job.traceparent {
        headers.insert(
            JOB_TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(t.as_str())),
        );
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(job.id.as_str().into())
        .with_headers(headers)
}

/// A delivery as a job; a plain message (no muster headers) is attempt 1
/// with its `message_id`, or a fresh id.
fn delivery_job(props: &BasicProperties, body: &[u8]) -> Job {
    Job {
        id: text_field(props, JOB_ID)
            .or_else(|| props.message_id().as_ref().map(|m| m.as_str().to_owned()))
            .unwrap_or_else(muster_core::id::short_id),
        body: body.to_vec().into(),
        attempt: u32_field(props, JOB_ATTEMPT).unwrap_or(1).max(1),
        transaction: text_field(props, JOB_TXN),
        reason: text_field(props, JOB_REASON),
        expires_ms: None,
        traceparent: text_field(props, JOB_TRACEPARENT),
    }
}

/// Declares `queue` durable. A queue someone else made with other
/// arguments (a quorum queue, a length limit) is refused by the broker as
/// `PRECONDITION_FAILED`: it exists, and is used as it is.
async fn ensure_queue(inner: &Inner, queue: &str) -> Result<(), Error> {
    let (_, ch) = inner.link.channel().await?;
    let made = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = ch.close(0, "muster: declared".into()).await;
    match made {
        Ok(_) => Ok(()),
        Err(e) if soft_error(&e) == Some(AMQPSoftError::PRECONDITIONFAILED) => Ok(()),
        Err(e) => Err(amqp_error(&format!("declare the queue {queue:?}"), &e)),
    }
}

/// Queues this transport has declared (so an enqueue is one publish).
#[derive(Debug, Default)]
pub(crate) struct Declared(Mutex<HashSet<String>>);

impl Declared {
    fn has(&self, q: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(q)
    }
    fn add(&self, q: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(q.to_owned());
    }
    fn forget(&self, q: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(q);
    }
}

/// Publishes `job` on `queue`, confirmed.
pub(crate) async fn enqueue(inner: &Inner, queue: &str, job: &Job) -> Result<(), Error> {
    if job.body.len() > inner.options.max_message_size {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "job of {} bytes is over the limit of {}",
                job.body.len(),
                inner.options.max_message_size
            ),
        ));
    }
    for _ in 0..2 {
        if !inner.declared.has(queue) {
            ensure_queue(inner, queue).await?;
            inner.declared.add(queue);
        }
        let published = inner
            .confirmed
            .publish(
                Outgoing {
                    exchange: "",
                    routing_key: queue,
                    body: &job.body,
                    properties: job_properties(job),
                    mandatory: true,
                },
                inner.options.publish_wait,
            )
            .await?;
        match published {
            Published::Taken => return Ok(()),
            // The queue was deleted under us: declare it again.
            Published::Returned => inner.declared.forget(queue),
        }
    }
    Err(Error::new(
        ErrorKind::Unavailable,
        format!("the queue {queue:?} keeps disappearing; the job was not taken"),
    ))
}

pub(crate) async fn consume(
    inner: Arc<Inner>,
    queue: &str,
    options: ConsumeOptions,
    sink: Arc<dyn JobSink>,
) -> Result<Consuming, Error> {
    let source = Arc::new(AmqpSource {
        dead: dead_queue(queue),
        queue: queue.to_owned(),
        prefetch: u16::try_from(options.prefetch.clamp(1, 65_535)).unwrap_or(u16::MAX),
        tag_prefix: format!("muster-{}", options.holder),
        inner,
        live: tokio::sync::Mutex::new(None),
        held: Mutex::default(),
        next_tag: AtomicU64::new(0),
    });
    // The first set-up fails the start when the broker is unreachable.
    source.open().await?;
    Ok(consumer::spawn(source, sink, &options))
}

struct Live {
    channel: Channel,
    consumer: Consumer,
}

struct AmqpSource {
    inner: Arc<Inner>,
    queue: String,
    dead: String,
    prefetch: u16,
    tag_prefix: String,
    live: tokio::sync::Mutex<Option<Live>>,
    /// Deliveries handed to the consumer loop and not settled yet, with
    /// their jobs (stored again at a graceful release).
    held: Mutex<HashMap<u64, (Acker, Job)>>,
    next_tag: AtomicU64,
}

impl AmqpSource {
    /// (Re)opens the channel: declares both queues, sets the prefetch,
    /// consumes.
    async fn open(&self) -> Result<(), Error> {
        ensure_queue(&self.inner, &self.queue).await?;
        ensure_queue(&self.inner, &self.dead).await?;
        let (_, ch) = self.inner.link.channel().await?;
        ch.basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| amqp_error("set the prefetch", &e))?;
        let consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                format!("{}-{}", self.tag_prefix, muster_core::id::short_id())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| amqp_error(&format!("consume {:?}", self.queue), &e))?;
        *self.live.lock().await = Some(Live {
            channel: ch,
            consumer,
        });
        Ok(())
    }

    fn hold(&self, d: Delivery) -> (u64, Job) {
        let job = delivery_job(&d.properties, &d.data);
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tag, (d.acker, job.clone()));
        (tag, job)
    }

    /// A delivery the broker marks redelivered came back because a channel
    /// closed holding it: its consumer died (or lost the broker). That is
    /// an attempt (`docs/guarantees.md`): the job is stored again with
    /// `attempt + 1` and the reason, and this copy acknowledged; the new
    /// copy is run when it comes (a job past its attempts is then
    /// dead-lettered unrun). The broker's flag does not say how often, so
    /// the count lives in the job. `None` once done; the delivery back
    /// should the store fail (it is run uncounted rather than lost).
    async fn count_crash(&self, d: Delivery) -> Option<Delivery> {
        let job = delivery_job(&d.properties, &d.data);
        let job = Job {
            reason: Some("consumer died: its channel closed holding the job".to_owned()),
            ..job.next_attempt()
        };
        match enqueue(&self.inner, &self.queue, &job).await {
            Ok(()) => {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, job = %job.id, "cannot count a crash delivery; the job runs uncounted");
                Some(d)
            }
        }
    }

    /// Stores `job` again as it is and acknowledges its delivery: given
    /// back, not counted. Left unacknowledged (back with the channel, and
    /// counted) should the store fail.
    async fn give_back(&self, acker: Acker, job: &Job) {
        if enqueue(&self.inner, &self.queue, job).await.is_ok() {
            let _ = acker.ack(BasicAckOptions::default()).await;
        }
    }
}

impl JobSource for AmqpSource {
    fn take(&self, max: usize) -> BoxFuture<'_, Result<Vec<(u64, Job)>, Error>> {
        Box::pin(async move {
            let broken = {
                let live = self.live.lock().await;
                live.as_ref()
                    .is_none_or(|l| !l.channel.status().connected())
            };
            if broken {
                // Jobs held on the old channel are back in the queue.
                self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
                *self.live.lock().await = None;
                self.open().await?;
                tracing::info!(queue = %self.queue, prefetch = self.prefetch, "consuming again after a broker reconnect");
            }
            let mut live = self.live.lock().await;
            let Some(l) = live.as_mut() else {
                return Ok(Vec::new());
            };
            let first = match tokio::time::timeout(Duration::from_secs(1), l.consumer.next()).await
            {
                Err(_) => return Ok(Vec::new()),
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(e))) => {
                    *live = None;
                    return Err(amqp_error("take jobs", &e));
                }
                Ok(None) => {
                    *live = None;
                    return Err(Error::new(ErrorKind::Unavailable, "the job consumer ended"));
                }
            };
            let mut out = Vec::new();
            let mut next = Some(first);
            while let Some(d) = next.take() {
                let d = if d.redelivered {
                    self.count_crash(d).await
                } else {
                    Some(d)
                };
                if let Some(d) = d {
                    out.push(self.hold(d));
                }
                if out.len() < max
                    && let Some(Some(Ok(d))) = l.consumer.next().now_or_never()
                {
                    next = Some(d);
                }
            }
            Ok(out)
        })
    }

    fn settle<'a>(
        &'a self,
        tag: u64,
        job: &'a Job,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let copy = match outcome {
                Outcome::Ack => None,
                Outcome::Retry { .. } => Some((self.queue.as_str(), job.next_attempt())),
                Outcome::Dead { reason } => Some((self.dead.as_str(), job.dead(reason))),
            };
            if let Some((queue, copy)) = copy {
                // Published (confirmed) before the ack: never in neither place.
                enqueue(&self.inner, queue, &copy).await?;
            }
            let acker = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&tag);
            if let Some((acker, _)) = acker
                && let Err(e) = acker.ack(BasicAckOptions::default()).await
            {
                // The channel went away: the broker delivers the job again.
                tracing::debug!(error = %e, job = %job.id, "ack failed; the job will be delivered again");
            }
            Ok(())
        })
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(mut l) = self.live.lock().await.take() {
                // A graceful stop is not a crash: what this consumer holds,
                // and what waits in its channel, is stored again as it is
                // and acknowledged, rather than handed back with the
                // channel (the broker would mark it redelivered, and that
                // counts as an attempt). Deliveries stop first.
                let _ = l
                    .channel
                    .basic_cancel(l.consumer.tag(), BasicCancelOptions::default())
                    .await;
                let held: Vec<(Acker, Job)> = self
                    .held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain()
                    .map(|(_, h)| h)
                    .collect();
                for (acker, job) in held {
                    self.give_back(acker, &job).await;
                }
                while let Some(Some(Ok(d))) = l.consumer.next().now_or_never() {
                    let job = delivery_job(&d.properties, &d.data);
                    self.give_back(d.acker, &job).await;
                }
                // Anything left goes back with the channel.
                let _ = l.channel.close(0, "muster: consumer stopped".into()).await;
            }
        })
    }
}

pub(crate) async fn command(
    inner: &Inner,
    queue: &str,
    command: QueueCommand,
) -> Result<QueueReply, Error> {
    match command {
        QueueCommand::Stats => {
            let (ready, consumers) = counts(inner, queue).await?;
            let (dead, _) = counts(inner, &dead_queue(queue)).await?;
            Ok(QueueReply::Stats(QueueStats {
                queue: queue.to_owned(),
                ready,
                in_flight: None,
                dead,
                consumers,
            }))
        }
        QueueCommand::Peek { count } => {
            let (_, ch) = inner.link.channel().await?;
            let mut jobs = Vec::new();
            while jobs.len() < count {
                match ch.basic_get(queue.into(), BasicGetOptions::default()).await {
                    Ok(Some(m)) => {
                        jobs.push(delivery_job(&m.delivery.properties, &m.delivery.data))
                    }
                    _ => break,
                }
            }
            // Closing without acks puts them back (marked redelivered).
            let _ = ch.close(0, "muster: peek".into()).await;
            Ok(QueueReply::Jobs(jobs))
        }
        QueueCommand::Purge => {
            let (_, ch) = inner.link.channel().await?;
            let n = ch
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await;
            let _ = ch.close(0, "muster: purge".into()).await;
            match n {
                Ok(n) => Ok(QueueReply::Count(u64::from(n))),
                Err(e) if is_not_found(&e) => Ok(QueueReply::Count(0)),
                Err(e) => Err(amqp_error("purge", &e)),
            }
        }
        QueueCommand::RequeueDead => {
            let dead = dead_queue(queue);
            let (_, ch) = inner.link.channel().await?;
            let mut moved = 0u64;
            loop {
                let got = match ch
                    .basic_get(dead.as_str().into(), BasicGetOptions::default())
                    .await
                {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) if is_not_found(&e) => break,
                    Err(e) => return Err(amqp_error("read the dead-letter queue", &e)),
                };
                let job = Job {
                    attempt: 1,
                    reason: None,
                    ..delivery_job(&got.delivery.properties, &got.delivery.data)
                };
                enqueue(inner, queue, &job).await?;
                got.delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| amqp_error("ack a dead letter", &e))?;
                moved += 1;
            }
            let _ = ch.close(0, "muster: requeue-dead".into()).await;
            Ok(QueueReply::Count(moved))
        }
    }
}

/// (ready messages, consumers) of a queue; (0, 0) when it does not exist.
async fn counts(inner: &Inner, queue: &str) -> Result<(u64, u64), Error> {
    let (_, ch) = inner.link.channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = ch.close(0, "muster: stats".into()).await;
    match q {
        Ok(q) => Ok((u64::from(q.message_count()), u64::from(q.consumer_count()))),
        Err(e) if is_not_found(&e) => Ok((0, 0)),
        Err(e) => Err(amqp_error("queue stats", &e)),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    soft_error(e) == Some(AMQPSoftError::NOTFOUND)
}

/// The broker's channel-level refusal (404 NOT_FOUND, 406
/// PRECONDITION_FAILED, ...), if that is what `e` is.
pub(crate) fn soft_error(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// One winner per key: a queue `<exchange>.claim.<key>` declared with
/// arguments derived from the holder. RabbitMQ refuses (406) a declaration
/// whose arguments differ from the existing queue's, so a second holder
/// loses while the first's queue lives; `x-expires` removes it after `ttl`.
pub(crate) async fn claim(
    inner: &Inner,
    key: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, Error> {
    let name = format!("{}.claim.{key}", inner.options.exchange);
    if name.len() > 255 {
        return Err(Error::new(
            ErrorKind::Config,
            format!("claim key too long: {key:?}"),
        ));
    }
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongInt(i32::try_from(ttl.as_millis().max(1)).unwrap_or(i32::MAX)),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongInt(holder_number(holder)),
    );
    let (_, ch) = inner.link.channel().await?;
    let declared = ch
        .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
        .await;
    let _ = ch.close(0, "muster: claim".into()).await;
    match declared {
        Ok(_) => Ok(true),
        Err(e) if soft_error(&e) == Some(AMQPSoftError::PRECONDITIONFAILED) => Ok(false),
        Err(e) => Err(amqp_error("claim", &e)),
    }
}

/// A positive number standing for a holder (FNV-1a, folded to 31 bits).
fn holder_number(holder: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in holder.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i32::try_from((h ^ (h >> 32)) & 0x7fff_ffff)
        .unwrap_or(1)
        .max(1)
}
