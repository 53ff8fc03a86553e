//! Work queues on JetStream: one stream per queue (`<P>_Q_<queue>`, file
//! storage, work-queue retention) on the subject `<p>.q.<queue>`, a job
//! per message (its body as the payload, its other fields in the
//! `Muster-Job` header), and one durable pull consumer `muster` that every
//! instance of the consuming service shares. A job is acknowledged after
//! its handler; a retry is the job enqueued again with `attempt + 1`, a
//! dead letter the job enqueued on `<queue>.dead` with its reason, each
//! before the original is acknowledged (at least once, never lost). A job
//! held by an instance that dies is delivered again once the consumer's
//! ack wait (`claim_after`, 30 s by default) has passed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use muster_core::queue::consumer::{self, Consuming, JobSource};
use muster_core::queue::{
    ConsumeOptions, Job, JobSink, Outcome, QueueCommand, QueueReply, QueueStats, dead_queue,
};
use muster_core::transport::BoxFuture;
use muster_core::{Error, ErrorKind};

use crate::{Inner, unavailable};

/// Jobs a queue holds at most; past it an enqueue is refused.
const MAX_JOBS: i64 = 1_000_000;
/// How long settled jobs' acks gather before they are sent together.
const ACK_GATHER: Duration = Duration::from_millis(1);
/// The consumer every instance shares.
const CONSUMER: &str = "muster";

/// A stream name for `queue`: stream names take no dots, so `.`, `:` and
/// `_` are written `_2E`, `_3A`, `_5F` (one name per queue, both ways).
fn stream_name(prefix: &str, queue: &str) -> String {
    let mut out = format!("{}_Q_", prefix.replace('.', "_2E"));
    for c in queue.chars() {
        match c {
            '.' => out.push_str("_2E"),
            ':' => out.push_str("_3A"),
            '_' => out.push_str("_5F"),
            c => out.push(c),
        }
    }
    out
}

fn subject(inner: &Inner, queue: &str) -> String {
    format!("{}.q.{queue}", inner.options.prefix)
}

fn check_name(queue: &str) -> Result<(), Error> {
    if muster_core::queue::is_valid_queue_name(queue) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Config,
            format!("invalid queue name {queue:?}: use letters, digits, _, -, . and :"),
        ))
    }
}

/// The queue's stream, made on first use.
async fn stream(inner: &Inner, queue: &str) -> Result<stream::Stream, Error> {
    check_name(queue)?;
    let name = stream_name(&inner.options.prefix, queue);
    if let Ok(s) = inner.jetstream.get_stream(&name).await {
        return Ok(s);
    }
    let made = inner
        .jetstream
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject(inner, queue)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_messages: MAX_JOBS,
            discard: stream::DiscardPolicy::New,
            ..stream::Config::default()
        })
        .await;
    // Made here or by another instance at the same moment: open it.
    inner
        .jetstream
        .get_stream(&name)
        .await
        .map_err(|e| match made {
            Err(made) => unavailable(&format!("create the JetStream stream {name}"), &made),
            Ok(_) => unavailable(&format!("open the JetStream stream {name}"), &e),
        })
}

/// Makes the queue's stream once per transport; after that an enqueue is
/// one publish.
async fn ensure(inner: &Inner, queue: &str) -> Result<(), Error> {
    let known = inner
        .queues
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(queue);
    if !known {
        stream(inner, queue).await?;
        inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned());
    }
    Ok(())
}

/// A producer's enqueue: JetStream drops a second copy of one attempt of
/// one job within its duplicate window (a retry after a lost ack).
pub(crate) async fn enqueue(inner: &Inner, queue: &str, job: &Job) -> Result<(), Error> {
    put(inner, queue, job, true).await
}

/// The NATS header that carries a job's own fields; the payload is the
/// job's body as it was enqueued. (A JSON job with the body inside as a
/// string cost an escape on the way in and an unescape and a copy on the
/// way out: a fifth of the consumer's time at prefetch 100.)
const JOB_HEADER: &str = "Muster-Job";

/// A job's fields but its body, as JSON in [`JOB_HEADER`] (JSON keeps any
/// line break in an id or a reason out of the NATS protocol).
#[derive(serde::Serialize, serde::Deserialize)]
struct JobFields {
    id: String,
    #[serde(default = "first_attempt")]
    attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transaction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

/// A job as a NATS message: its headers and payload.
fn encode(job: &Job, dedup: bool) -> (HeaderMap, bytes::Bytes) {
    let fields = JobFields {
        id: job.id.clone(),
        attempt: job.attempt,
        transaction: job.transaction.clone(),
        reason: job.reason.clone(),
        traceparent: job.traceparent.clone(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        JOB_HEADER,
        serde_json::to_string(&fields).unwrap_or_default(),
    );
    if dedup {
        headers.insert(
            "Nats-Msg-Id",
            crate::rpc::header_text(&format!("{}-{}", job.id, job.attempt)),
        );
    }
    (headers, job.body.clone())
}

/// The job a stored message holds. A message without [`JOB_HEADER`] (a
/// plain NATS client published it) is a first attempt at its payload,
/// named after its stream sequence.
fn decode(
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
    sequence: impl FnOnce() -> Option<u64>,
) -> Job {
    let fields = headers
        // A static name: a `&str` would be copied into a new one per job.
        .and_then(|h| h.get(async_nats::HeaderName::from_static(JOB_HEADER)))
        .and_then(|v| serde_json::from_str::<JobFields>(v.as_str()).ok());
    match fields {
        Some(f) => Job {
            id: f.id,
            body: payload,
            attempt: f.attempt,
            transaction: f.transaction,
            reason: f.reason,
            expires_ms: None,
            traceparent: f.traceparent,
        },
        None => {
            let mut job = Job::new(payload);
            if let Some(seq) = sequence() {
                job.id = format!("nats-{seq}");
            }
            job
        }
    }
}

async fn put(inner: &Inner, queue: &str, job: &Job, dedup: bool) -> Result<(), Error> {
    ensure(inner, queue).await?;
    let (headers, payload) = encode(job, dedup);
    let header_size = headers.get(JOB_HEADER).map_or(0, |v| v.as_str().len());
    let size = payload.len() + header_size;
    if size > inner.options.max_message_size {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "job of {size} bytes is over the limit of {}",
                inner.options.max_message_size
            ),
        ));
    }
    let ack = inner
        .jetstream
        .publish_with_headers(subject(inner, queue), headers, payload)
        .await
        .map_err(|e| unavailable(&format!("enqueue on {queue:?}"), &e))?;
    ack.await
        .map(|_| ())
        .map_err(|e| unavailable(&format!("enqueue on {queue:?} (not stored)"), &e))
}

async fn pull_consumer(stream: &stream::Stream, ack_wait: Duration) -> Result<PullConsumer, Error> {
    stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                // Muster counts attempts itself (a retry is a new message).
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..pull::Config::default()
            },
        )
        .await
        .map_err(|e| unavailable("create the JetStream consumer", &e))
}

/// One instance's hold on a queue: the messages it was given and not yet
/// settled, by tag.
struct Source {
    inner: Arc<Inner>,
    queue: String,
    consumer: PullConsumer,
    /// By tag, our own numbers: foldhash rather than SipHash.
    held: Mutex<foldhash::HashMap<u64, jetstream::Message>>,
    next: std::sync::atomic::AtomicU64,
    acks: Arc<Acks>,
    acker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Settled jobs whose acks wait to be sent. One task sends whatever has
/// gathered, back to back, so that the client writes many acks per
/// syscall: sent by each job's task as it finished, every ack was a write
/// of its own (1.1 writes per job against 0.04 for a plain loop, and half
/// its rate at prefetch 100).
#[derive(Default)]
struct Acks {
    pending: Mutex<Vec<jetstream::Message>>,
    /// The one sender's buffer, swapped with `pending`: both keep their
    /// room, so gathering acks allocates nothing once warm.
    sending: tokio::sync::Mutex<Vec<jetstream::Message>>,
    ready: tokio::sync::Notify,
    stop: tokio_util::sync::CancellationToken,
}

impl Acks {
    fn push(&self, msg: jetstream::Message) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(msg);
        self.ready.notify_one();
    }

    /// Sends what has gathered. Not waited for (`double_ack` would cost a
    /// round trip per job): a lost ack only means one more delivery after
    /// the ack wait, which at-least-once allows anyway. One sender at a
    /// time, so that a caller returns only once every ack gathered before
    /// it is on the connection.
    async fn send(&self) {
        let mut batch = self.sending.lock().await;
        std::mem::swap(
            &mut *batch,
            &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
        );
        for msg in batch.drain(..) {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "cannot acknowledge a job; it will be delivered again");
            }
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.ready.notified() => {
                    // Jobs settle one by one; let the acks of the next
                    // ones gather (a later ack costs nothing but a later
                    // redelivery, should this instance die meanwhile).
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(ACK_GATHER) => {}
                    }
                    self.send().await;
                }
            }
        }
        self.send().await;
    }
}

/// The job a message holds, its attempt counting the deliveries before
/// this one that ended without an ack (the consumer died holding it, and
/// JetStream delivered it again after the ack wait): a crash is an
/// attempt (`docs/guarantees.md`). A graceful release does not count: it
/// stores the job again rather than handing the message back.
fn job_of(msg: &jetstream::Message) -> Job {
    let delivery = msg.reply.as_deref().and_then(crate::ack_subject::delivery);
    let mut job = decode(msg.headers.as_ref(), msg.payload.clone(), || {
        delivery.map(|(_, sequence)| sequence)
    });
    let crashes = delivery.map_or(0, |(delivered, _)| delivered.saturating_sub(1));
    if crashes > 0 {
        job.attempt = job
            .attempt
            .saturating_add(u32::try_from(crashes).unwrap_or(u32::MAX));
        job.reason = Some("consumer died: its ack wait ran out".to_owned());
    }
    job
}

impl Source {
    /// Hands the message of a settled job to the acker.
    fn ack(&self, tag: u64) {
        let msg = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&tag);
        if let Some(msg) = msg {
            self.acks.push(msg);
        }
    }
}

impl JobSource for Source {
    fn take(&self, max: usize) -> BoxFuture<'_, Result<Vec<(u64, Job)>, Error>> {
        Box::pin(async move {
            // The acks of finished jobs go before the request for more: the
            // server reads a connection in order, so a job taken next that
            // kills this process cannot take the acks of the finished ones
            // with it (they would come back, counted as crashes). Sending
            // them only when nothing runs measured the same at prefetch 100
            // (0.66-0.68 of plain async-nats), so this stays simple.
            self.acks.send().await;
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(max)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| unavailable(&format!("take jobs from {:?}", self.queue), &e))?;
            let mut out = Vec::new();
            while let Some(m) = batch.next().await {
                let msg = match m {
                    Ok(msg) => msg,
                    Err(e) if out.is_empty() => {
                        return Err(unavailable(&format!("take jobs from {:?}", self.queue), &e));
                    }
                    // The jobs already taken are held: hand them over.
                    Err(e) => {
                        tracing::warn!(error = %e, queue = %self.queue, "taking jobs stopped mid-batch");
                        break;
                    }
                };
                let tag = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                out.push((tag, job_of(&msg)));
                self.held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(tag, msg);
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
        // An ack is only handed to the acker: no future of the size of the
        // copy's `put` to box for it (700 instructions a job, callgrind).
        let (queue, copy, dedup) = match outcome {
            Outcome::Ack => {
                self.ack(tag);
                return Box::pin(std::future::ready(Ok(())));
            }
            Outcome::Retry { .. } => (self.queue.clone(), job.next_attempt(), true),
            // A job may die again after an operator requeued it: no
            // deduplication, or the second death would be dropped.
            Outcome::Dead { reason } => (dead_queue(&self.queue), job.dead(reason), false),
        };
        Box::pin(async move {
            put(&self.inner, &queue, &copy, dedup).await?;
            self.ack(tag);
            Ok(())
        })
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The acks of settled jobs first, then the rest back.
            self.acks.stop.cancel();
            let acker = self
                .acker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(acker) = acker {
                let _ = acker.await;
            }
            self.acks.send().await;
            let held: Vec<jetstream::Message> = self
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain()
                .map(|(_, m)| m)
                .collect();
            for m in held {
                // Back to the queue at once, for another instance: stored
                // again with its attempt as it is, then acknowledged, so
                // that the delivery is not counted as a crash (a NAK would
                // raise JetStream's delivery count). Should the store
                // fail, the NAK is the fallback: a counted attempt rather
                // than a lost job.
                let job = job_of(&m);
                let kind = match put(&self.inner, &self.queue, &job, false).await {
                    Ok(()) => AckKind::Ack,
                    Err(_) => AckKind::Nak(None),
                };
                let _ = m.ack_with(kind).await;
            }
        })
    }
}

pub(crate) async fn consume(
    inner: Arc<Inner>,
    queue: &str,
    options: ConsumeOptions,
    sink: Arc<dyn JobSink>,
) -> Result<Consuming, Error> {
    let stream = stream(&inner, queue).await?;
    let consumer = pull_consumer(&stream, options.claim_after.max(Duration::from_secs(1))).await?;
    let acks = Arc::new(Acks::default());
    let source = Arc::new(Source {
        inner,
        queue: queue.to_owned(),
        consumer,
        held: Mutex::default(),
        next: std::sync::atomic::AtomicU64::new(0),
        acker: Mutex::new(Some(tokio::spawn(acks.clone().run()))),
        acks,
    });
    Ok(consumer::spawn(source, sink, &options))
}

pub(crate) async fn command(
    inner: &Arc<Inner>,
    queue: &str,
    command: QueueCommand,
) -> Result<QueueReply, Error> {
    let mut s = stream(inner, queue).await?;
    match command {
        QueueCommand::Stats => {
            let messages = s
                .info()
                .await
                .map_err(|e| unavailable("read the queue", &e))?
                .state
                .messages;
            // Held jobs stay in a work-queue stream until acknowledged:
            // what waits is what the consumer has not delivered yet.
            let (ready, in_flight, consumers) = match s.consumer_info(CONSUMER).await {
                Ok(c) => (
                    c.num_pending,
                    c.num_ack_pending as u64,
                    c.num_waiting as u64,
                ),
                Err(_) => (messages, 0, 0),
            };
            let mut dead = stream(inner, &dead_queue(queue)).await?;
            let dead = dead
                .info()
                .await
                .map_err(|e| unavailable("read the queue", &e))?
                .state
                .messages;
            Ok(QueueReply::Stats(QueueStats {
                queue: queue.to_owned(),
                ready,
                in_flight: Some(in_flight),
                dead,
                consumers,
            }))
        }
        QueueCommand::Peek { count } => {
            let state = s
                .info()
                .await
                .map_err(|e| unavailable("read the queue", &e))?
                .state
                .clone();
            let mut jobs = Vec::new();
            let mut seq = state.first_sequence;
            while jobs.len() < count && seq <= state.last_sequence && seq > 0 {
                if let Ok(m) = s.get_raw_message(seq).await {
                    jobs.push(decode(Some(&m.headers), m.payload, || Some(m.sequence)));
                }
                seq += 1;
            }
            Ok(QueueReply::Jobs(jobs))
        }
        QueueCommand::Purge => {
            let purged = s
                .purge()
                .await
                .map_err(|e| unavailable("purge the queue", &e))?
                .purged;
            Ok(QueueReply::Count(purged))
        }
        QueueCommand::RequeueDead => {
            let dead = stream(inner, &dead_queue(queue)).await?;
            let consumer = pull_consumer(&dead, Duration::from_secs(30)).await?;
            let mut moved = 0;
            loop {
                let mut batch = consumer
                    .fetch()
                    .max_messages(100)
                    .expires(Duration::from_millis(500))
                    .messages()
                    .await
                    .map_err(|e| unavailable("read the dead letters", &e))?;
                let mut got = 0;
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| unavailable("read the dead letters", &e))?;
                    let job = job_of(&m);
                    let again = Job {
                        attempt: 1,
                        reason: None,
                        ..job
                    };
                    put(inner, queue, &again, false).await?;
                    m.double_ack()
                        .await
                        .map_err(|e| unavailable("acknowledge a dead letter", &e))?;
                    got += 1;
                }
                moved += got;
                if got == 0 {
                    break;
                }
            }
            Ok(QueueReply::Count(moved))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_comes_back_as_it_went_and_a_plain_message_is_a_first_attempt() {
        let mut job = Job::new(bytes::Bytes::from_static(b"{\"to\":\"a@b\"}"));
        job.attempt = 3;
        job.transaction = Some("t-1".into());
        job.reason = Some("line one\r\nPUB x 1".into());
        let (headers, payload) = encode(&job, true);
        for (_, values) in headers.iter() {
            for v in values {
                assert!(!v.as_str().contains(['\r', '\n']), "{v:?}");
            }
        }
        assert_eq!(decode(Some(&headers), payload, || None), job);
        let plain = decode(None, bytes::Bytes::from_static(b"hello"), || Some(7));
        assert_eq!(
            (plain.id.as_str(), plain.attempt, &plain.body[..]),
            ("nats-7", 1, &b"hello"[..])
        );
    }

    #[test]
    fn stream_names_are_one_per_queue() {
        assert_eq!(stream_name("muster", "mail"), "muster_Q_mail");
        assert_eq!(stream_name("muster", "a.b"), "muster_Q_a_2Eb");
        assert_ne!(stream_name("muster", "a_2Eb"), stream_name("muster", "a.b"));
        assert_eq!(stream_name("muster", "x:y"), "muster_Q_x_3Ay");
    }
}
