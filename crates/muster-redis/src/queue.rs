//! Work queues on Redis streams. A job is a stream entry of
//! `<p>:q:<queue>` with the fields `body` (JSON), and optionally `id`,
//! `attempt`, `txn` (anything that `XADD`s a `body` field is a producer).
//! Consumers read with the group `muster`; a settled job is acknowledged and
//! deleted in one `MULTI`, together with its retry or dead-letter copy
//! (`<p>:q:<queue>.dead`, with a `reason` field), so a job is never in
//! neither place. Settles that are ready together share one `MULTI`. Jobs pending on a consumer for `claim_after` are taken
//! over by another with `XAUTOCLAIM`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_core::queue::consumer::{self, Consuming, JobSource};
use muster_core::queue::{
    ConsumeOptions, Job, JobSink, Outcome, QueueCommand, QueueReply, QueueStats, dead_queue,
};
use muster_core::retry::Backoff;
use muster_core::transport::BoxFuture;
use muster_core::{Error, ErrorKind};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamRangeReply};
use redis::{RedisError, Value};
use tokio::sync::mpsc::error::TrySendError;

use crate::{Inner, unavailable};

/// The consumer group every muster consumer reads with.
pub(crate) const GROUP: &str = "muster";

fn job_fields(job: &Job) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![
        ("body", job.body.to_vec()),
        ("id", job.id.clone().into_bytes()),
        ("attempt", job.attempt.to_string().into_bytes()),
    ];
    if let Some(t) = &job.transaction {
        f.push(("txn", t.clone().into_bytes()));
    }
    if let Some(r) = &job.reason {
        f.push(("reason", r.clone().into_bytes()));
    }
    if let Some(t) = &job.traceparent {
        f.push(("traceparent", t.clone().into_bytes()));
    }
    f
}

fn xadd(pipe: &mut redis::Pipeline, key: &str, job: &Job) {
    pipe.cmd("XADD").arg(key).arg("*");
    for (k, v) in job_fields(job) {
        pipe.arg(k).arg(v);
    }
    pipe.ignore();
}

/// A stream entry parsed by the `redis` crate as a job (see [`fields_job`]).
fn entry_job(entry: &StreamId) -> Job {
    let fields = entry
        .map
        .iter()
        .flat_map(|(k, v)| [Value::BulkString(k.clone().into_bytes()), v.clone()])
        .collect();
    fields_job(&entry.id, fields)
}

/// The entries of an `XREADGROUP` reply, each as its id and its job, read
/// from the reply as it came (RESP2 arrays or a RESP3 map), moving each
/// body out of it. The `redis` crate's `StreamReadReply` clones the whole
/// reply and builds a map per entry: 5,700 of the consumer's 41,600
/// instructions per job (`scripts/callgrind-perjob.sh`, docs/benchmarks.md).
/// A reply of another shape gives no entries (`Err`), and `Nil` (a read
/// that timed out) none.
fn read_entries(reply: Value) -> Result<Vec<(String, Job)>, &'static str> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(pair) => <[Value; 2]>::try_from(pair)
                    .map(|[_, entries]| entries)
                    .map_err(|_| "a stream that is not [key, entries]"),
                _ => Err("a stream that is not an array"),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err("a reply that is neither an array nor a map"),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            return Err("entries that are not an array");
        };
        out.reserve(entries.len());
        for entry in entries {
            let Value::Array(entry) = entry else {
                return Err("an entry that is not an array");
            };
            let [id, fields] =
                <[Value; 2]>::try_from(entry).map_err(|_| "an entry that is not [id, fields]")?;
            let id = match id {
                Value::BulkString(b) => {
                    String::from_utf8(b).map_err(|_| "an id that is not UTF-8")?
                }
                Value::SimpleString(s) => s,
                _ => return Err("an id that is not a string"),
            };
            let fields = match fields {
                Value::Array(f) => f,
                // An entry deleted while pending reads as `nil` fields.
                Value::Nil => Vec::new(),
                _ => return Err("fields that are not an array"),
            };
            let job = fields_job(&id, fields);
            out.push((id, job));
        }
    }
    Ok(out)
}

/// The job of the entry `id` with the flat `fields` `[name, value, ...]`,
/// the body moved out, not copied. A missing or odd field gives what it
/// can: no `id` is the entry's id, a missing body is an empty one (which
/// goes to the dead-letter queue).
fn fields_job(id: &str, fields: Vec<Value>) -> Job {
    let text = |v: Value| -> Option<String> {
        match v {
            Value::BulkString(b) => Some(
                String::from_utf8(b)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
            Value::SimpleString(s) => Some(s),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    };
    let mut job = Job {
        id: String::new(),
        body: Default::default(),
        attempt: 1,
        transaction: None,
        reason: None,
        expires_ms: None,
        traceparent: None,
    };
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = match &name {
            Value::BulkString(b) => b.as_slice(),
            Value::SimpleString(s) => s.as_bytes(),
            _ => continue,
        };
        match name {
            b"body" => {
                if let Value::BulkString(b) = value {
                    job.body = b.into();
                }
            }
            b"id" => job.id = text(value).unwrap_or_default(),
            b"attempt" => {
                job.attempt = text(value).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
            }
            b"txn" => job.transaction = text(value),
            b"reason" => job.reason = text(value),
            b"traceparent" => job.traceparent = text(value),
            _ => {}
        }
    }
    if job.id.is_empty() {
        id.clone_into(&mut job.id);
    }
    job
}

/// How often each of `entries` (just claimed) was delivered, from
/// `XPENDING`; an entry missing from the answer counts as delivered twice
/// (once before, once now).
async fn delivery_counts(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
    entries: &[StreamId],
) -> HashMap<String, usize> {
    if entries.is_empty() {
        return HashMap::new();
    }
    let mut pipe = redis::pipe();
    for e in entries {
        pipe.cmd("XPENDING")
            .arg(key)
            .arg(GROUP)
            .arg(&e.id)
            .arg(&e.id)
            .arg(1);
    }
    let replies: Vec<StreamPendingCountReply> = pipe.query_async(conn).await.unwrap_or_default();
    replies
        .into_iter()
        .flat_map(|r| r.ids)
        .map(|p| (p.id, p.times_delivered))
        .collect()
}

pub(crate) async fn enqueue(inner: &Inner, queue: &str, job: &Job) -> Result<(), Error> {
    let key = inner.keys.queue(queue);
    let deadline = Instant::now() + inner.options.publish_wait;
    let mut backoff = Backoff::between(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let mut pipe = redis::pipe();
        xadd(&mut pipe, &key, job);
        let mut conn = inner.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => return Ok(()),
            // Redis refused it (out of memory, wrong type): no use waiting.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    || is_refusal(&e) =>
            {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("Redis refused the job for {queue:?}: {e}"),
                ));
            }
            Err(e) => {
                let wait = backoff.failed();
                if Instant::now() + wait > deadline {
                    return Err(unavailable(
                        &format!(
                            "enqueue on {queue:?} (Redis unreachable for {:?})",
                            inner.options.publish_wait
                        ),
                        &e,
                    ));
                }
                tracing::warn!(error = %e, "Redis unreachable; the enqueue waits");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn is_refusal(e: &RedisError) -> bool {
    e.code().is_some_and(|c| c == "OOM" || c == "WRONGTYPE")
}

async fn ensure_group(conn: &mut redis::aio::ConnectionManager, key: &str) -> Result<(), Error> {
    let created: Result<(), RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(unavailable("create the consumer group", &e)),
    }
}

pub(crate) async fn consume(
    inner: Arc<Inner>,
    queue: &str,
    options: ConsumeOptions,
    sink: Arc<dyn JobSink>,
) -> Result<Consuming, Error> {
    let mut conn = inner.dedicated().await?;
    let key = inner.keys.queue(queue);
    ensure_group(&mut conn, &key).await?;
    let (settler, settles) = tokio::sync::mpsc::channel(SETTLES_QUEUED);
    tokio::spawn(settle_batches(inner.clone(), key.clone(), settles));
    let source = Arc::new(RedisSource {
        dead_key: inner.keys.queue(&dead_queue(queue)),
        settler,
        inner,
        key,
        consumer: format!("{}-{}", options.holder, muster_core::id::short_id()),
        claim_after: options.claim_after,
        conn: tokio::sync::Mutex::new(conn),
        tags: Mutex::default(),
        next_tag: AtomicU64::new(1),
        last_claim: Mutex::new(None),
    });
    Ok(consumer::spawn(source, sink, &options))
}

struct RedisSource {
    inner: Arc<Inner>,
    key: String,
    dead_key: String,
    consumer: String,
    claim_after: Duration,
    /// The blocking connection (only `take` uses it).
    conn: tokio::sync::Mutex<redis::aio::ConnectionManager>,
    /// tag -> stream entry id.
    tags: Mutex<HashMap<u64, String, foldhash::fast::RandomState>>,
    next_tag: AtomicU64,
    last_claim: Mutex<Option<Instant>>,
    /// Settles go to one task that writes every settle already queued in
    /// one `MULTI` (jobs finish together at high prefetch).
    settler: tokio::sync::mpsc::Sender<Settling>,
}

/// How many settles may wait for the settling task; past it, a job's settle
/// waits for room, so that acks not yet written stay bounded.
const SETTLES_QUEUED: usize = 1024;

/// How often the settling task tries to write an ack before it leaves the
/// job to be delivered again.
const ACK_TRIES: u32 = 5;

/// What the settling task is asked to write.
enum Settling {
    /// Acknowledge and delete a finished job's entry. Nobody waits for it:
    /// the job's slot is free at once. Should the write fail, it is tried
    /// again; until it succeeds the entry stays pending, and is delivered
    /// again after `claim_after` (a duplicate, never a loss).
    Ack(String),
    /// A retry or dead-letter copy of `entry`'s job, written in the same
    /// `MULTI` as its ack; `done` says how the write went.
    Copy {
        entry: String,
        stream: String,
        job: Job,
        done: tokio::sync::oneshot::Sender<Result<(), Error>>,
    },
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Writes queued settles, each batch in one `MULTI`: the copies, one
/// `XACK` and one `XDEL` of all their entries.
///
/// Acks whose write failed are kept and written with the next batch, or
/// within a second if none comes, up to [`ACK_TRIES`] times: a finished job
/// is acknowledged once Redis answers again, and is not left behind in the
/// stream when its consumer leaves the group. They are at most the jobs
/// this consumer had taken, since nothing more can be taken while Redis
/// does not answer. Acks given up on leave their entries pending, delivered
/// again after `claim_after`.
async fn settle_batches(
    inner: Arc<Inner>,
    key: String,
    mut rx: tokio::sync::mpsc::Receiver<Settling>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut acks: Vec<String> = Vec::new();
    let mut failures = 0;
    loop {
        let open = if acks.is_empty() {
            rx.recv_many(&mut batch, 256).await > 0
        } else {
            tokio::time::timeout(Duration::from_secs(1), rx.recv_many(&mut batch, 256))
                .await
                .map_or(true, |n| n > 0)
        };
        if !open && acks.is_empty() {
            return;
        }
        let mut copies = Vec::new();
        let mut flushes = Vec::new();
        for s in batch.drain(..) {
            match s {
                Settling::Ack(entry) => acks.push(entry),
                Settling::Copy {
                    entry,
                    stream,
                    job,
                    done,
                } => copies.push((entry, stream, job, done)),
                Settling::Flush(done) => flushes.push(done),
            }
        }
        let written = if acks.is_empty() && copies.is_empty() {
            Ok(())
        } else {
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut entries: Vec<&str> = acks.iter().map(String::as_str).collect();
            for (entry, stream, job, _) in &copies {
                xadd(&mut pipe, stream, job);
                entries.push(entry);
            }
            pipe.cmd("XACK").arg(&key).arg(GROUP).arg(&entries).ignore();
            pipe.cmd("XDEL").arg(&key).arg(&entries).ignore();
            let mut conn = inner.conn.clone();
            pipe.query_async::<()>(&mut conn).await
        };
        match &written {
            Ok(()) => {
                acks.clear();
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures < ACK_TRIES {
                    tracing::warn!(error = %e, queue = %key, acks = acks.len(), "cannot acknowledge finished jobs; trying again");
                } else {
                    tracing::warn!(error = %e, queue = %key, acks = acks.len(), "cannot acknowledge finished jobs; they will be delivered again");
                    acks.clear();
                    failures = 0;
                }
            }
        }
        for (_, _, _, done) in copies {
            let _ = done.send(
                written
                    .as_ref()
                    .copied()
                    .map_err(|e| unavailable("settle a job", e)),
            );
        }
        for done in flushes {
            let _ = done.send(());
        }
        if !open {
            return;
        }
    }
}

impl RedisSource {
    fn tag(&self, entry: String) -> u64 {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        tags.insert(tag, entry);
        tag
    }

    /// Queues the ack of `tag`'s entry. Not waited for (see
    /// `Settling::Ack`): only a full queue makes it wait for room, so
    /// there is no future to box for it otherwise.
    fn ack(&self, tag: u64) -> BoxFuture<'_, Result<(), Error>> {
        let entry = self
            .tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tag);
        let Some(entry) = entry else {
            return Box::pin(std::future::ready(Ok(())));
        };
        match self.settler.try_send(Settling::Ack(entry)) {
            Ok(()) => Box::pin(std::future::ready(Ok(()))),
            Err(TrySendError::Full(ack)) => Box::pin(self.queue_settle(ack)),
            Err(TrySendError::Closed(_)) => Box::pin(std::future::ready(Err(Error::new(
                ErrorKind::Closed,
                "the settling task ended",
            )))),
        }
    }

    /// Queues `settling` for the settling task.
    async fn queue_settle(&self, settling: Settling) -> Result<(), Error> {
        self.settler
            .send(settling)
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "the settling task ended"))
    }

    fn claim_due(&self) -> bool {
        let mut last = self.last_claim.lock().unwrap_or_else(|p| p.into_inner());
        let every = (self.claim_after / 2).max(Duration::from_millis(100));
        if last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

impl JobSource for RedisSource {
    fn take(&self, max: usize) -> BoxFuture<'_, Result<Vec<(u64, Job)>, Error>> {
        Box::pin(async move {
            let mut conn = self.conn.lock().await;
            let mut out = Vec::new();
            if self.claim_due() {
                let idle = u64::try_from(self.claim_after.as_millis()).unwrap_or(u64::MAX);
                let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&self.key)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut *conn)
                    .await
                    .map_err(|e| unavailable("claim pending jobs", &e))?;
                if !claimed.claimed.is_empty() {
                    tracing::info!(jobs = claimed.claimed.len(), queue = %self.key, "took over jobs pending on a silent consumer");
                }
                let delivered = delivery_counts(&mut conn, &self.key, &claimed.claimed).await;
                for e in &claimed.claimed {
                    let mut job = entry_job(e);
                    // Each delivery before this one ended with its consumer
                    // silent past `claim_after`: a crash, and an attempt.
                    let crashes = delivered.get(&e.id).map_or(1, |n| n.saturating_sub(1));
                    job.attempt = job
                        .attempt
                        .saturating_add(u32::try_from(crashes).unwrap_or(u32::MAX));
                    job.reason = Some(format!(
                        "consumer died: silent for {:?} holding it",
                        self.claim_after
                    ));
                    out.push((self.tag(e.id.clone()), job));
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            }
            let read: Result<Value, RedisError> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(">")
                .query_async(&mut *conn)
                .await;
            let read = match read {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // The stream was deleted (or Redis restarted empty).
                    ensure_group(&mut conn, &self.key).await?;
                    return Ok(out);
                }
                Err(e) => return Err(unavailable("take jobs", &e)),
            };
            let entries = read_entries(read).map_err(|what| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("take jobs: XREADGROUP answered with {what}"),
                )
            })?;
            for (entry, job) in entries {
                out.push((self.tag(entry), job));
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
        let (stream, job) = match outcome {
            Outcome::Ack => return self.ack(tag),
            Outcome::Retry { .. } => (self.key.clone(), job.next_attempt()),
            Outcome::Dead { reason } => (self.dead_key.clone(), job.dead(reason)),
        };
        Box::pin(async move {
            let entry = self
                .tags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&tag)
                .cloned();
            let Some(entry) = entry else {
                return Ok(());
            };
            let (done, written) = tokio::sync::oneshot::channel();
            self.queue_settle(Settling::Copy {
                entry,
                stream,
                job,
                done,
            })
            .await?;
            written
                .await
                .map_err(|_| Error::new(ErrorKind::Closed, "the settling task ended"))??;
            self.tags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&tag);
            Ok(())
        })
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The acks queued so far first: an entry still pending when
            // this consumer is deleted below would stay in the stream.
            let (flushed, written) = tokio::sync::oneshot::channel();
            if self.queue_settle(Settling::Flush(flushed)).await.is_ok() {
                let _ = written.await;
            }
            // Unsettled entries stay pending on this consumer; handing them
            // back at once spares the others the claim wait.
            let held: Vec<String> = self
                .tags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain()
                .map(|(_, e)| e)
                .collect();
            let mut conn = self.inner.conn.clone();
            for entry in held {
                let mut pipe = redis::pipe();
                pipe.atomic();
                let read: Result<StreamRangeReply, _> = redis::cmd("XRANGE")
                    .arg(&self.key)
                    .arg(&entry)
                    .arg(&entry)
                    .query_async(&mut conn)
                    .await;
                let Ok(read) = read else { continue };
                for e in &read.ids {
                    xadd(&mut pipe, &self.key, &entry_job(e));
                }
                pipe.cmd("XACK")
                    .arg(&self.key)
                    .arg(GROUP)
                    .arg(&entry)
                    .ignore();
                pipe.cmd("XDEL").arg(&self.key).arg(&entry).ignore();
                let _ = pipe.query_async::<()>(&mut conn).await;
            }
            let _: Result<(), _> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&self.key)
                .arg(GROUP)
                .arg(&self.consumer)
                .query_async(&mut conn)
                .await;
        })
    }
}

pub(crate) async fn command(
    inner: &Inner,
    queue: &str,
    command: QueueCommand,
) -> Result<QueueReply, Error> {
    let key = inner.keys.queue(queue);
    let dead_key = inner.keys.queue(&dead_queue(queue));
    let mut conn = inner.conn.clone();
    let fail = |e: RedisError| unavailable("queue command", &e);
    match command {
        QueueCommand::Stats => {
            let (len, dead): (u64, u64) = redis::pipe()
                .cmd("XLEN")
                .arg(&key)
                .cmd("XLEN")
                .arg(&dead_key)
                .query_async(&mut conn)
                .await
                .map_err(fail)?;
            let groups: Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap_or(Value::Nil);
            let (pending, consumers) = group_counts(&groups);
            Ok(QueueReply::Stats(QueueStats {
                queue: queue.to_owned(),
                ready: len.saturating_sub(pending),
                in_flight: Some(pending),
                dead,
                consumers,
            }))
        }
        QueueCommand::Peek { count } => {
            let read: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await
                .map_err(fail)?;
            Ok(QueueReply::Jobs(read.ids.iter().map(entry_job).collect()))
        }
        QueueCommand::Purge => {
            let len: u64 = redis::cmd("XLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(fail)?;
            let _: u64 = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MAXLEN")
                .arg(0)
                .query_async(&mut conn)
                .await
                .map_err(fail)?;
            Ok(QueueReply::Count(len))
        }
        QueueCommand::RequeueDead => {
            let mut moved = 0u64;
            loop {
                let read: StreamRangeReply = redis::cmd("XRANGE")
                    .arg(&dead_key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await
                    .map_err(fail)?;
                if read.ids.is_empty() {
                    break;
                }
                let mut pipe = redis::pipe();
                pipe.atomic();
                for e in &read.ids {
                    let job = Job {
                        attempt: 1,
                        reason: None,
                        ..entry_job(e)
                    };
                    xadd(&mut pipe, &key, &job);
                    pipe.cmd("XDEL").arg(&dead_key).arg(&e.id).ignore();
                }
                pipe.query_async::<()>(&mut conn).await.map_err(fail)?;
                moved += read.ids.len() as u64;
            }
            Ok(QueueReply::Count(moved))
        }
    }
}

/// (pending, consumers) of the group `muster` in an `XINFO GROUPS` reply.
fn group_counts(groups: &Value) -> (u64, u64) {
    let Value::Array(groups) = groups else {
        return (0, 0);
    };
    for g in groups {
        let fields: Vec<(String, i64)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|c| match c {
                    [Value::BulkString(k), Value::Int(v)] => {
                        Some((String::from_utf8_lossy(k).into_owned(), *v))
                    }
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        let name = match g {
            Value::Array(kv) => kv.chunks(2).find_map(|c| match c {
                [Value::BulkString(k), Value::BulkString(v)] if k == b"name" => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            }),
            _ => None,
        };
        if name.as_deref() != Some(GROUP) {
            continue;
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _)| n == k)
                .map_or(0, |(_, v)| u64::try_from(*v).unwrap_or(0))
        };
        return (get("pending"), get("consumers"));
    }
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn a_resp2_reply_gives_each_entry_with_its_job() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("muster:q:jobs"),
            Value::Array(vec![
                entry(
                    "1-0",
                    &["body", "{\"n\":1}", "id", "j1", "attempt", "3", "txn", "t"],
                ),
                // A plain producer's entry: a body and nothing else.
                entry("2-0", &["body", "[2]"]),
            ]),
        ])]);
        let got = read_entries(reply).expect("entries");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(got[0].1.id, "j1");
        assert_eq!(&got[0].1.body[..], b"{\"n\":1}");
        assert_eq!(got[0].1.attempt, 3);
        assert_eq!(got[0].1.transaction.as_deref(), Some("t"));
        assert_eq!((got[1].1.id.as_str(), got[1].1.attempt), ("2-0", 1));
        assert_eq!(&got[1].1.body[..], b"[2]");
    }

    #[test]
    fn a_resp3_map_reads_the_same() {
        let reply = Value::Map(vec![(
            bulk("muster:q:jobs"),
            Value::Array(vec![entry("1-0", &["body", "{}", "attempt", "0"])]),
        )]);
        let got = read_entries(reply).expect("entries");
        assert_eq!((got[0].1.id.as_str(), got[0].1.attempt), ("1-0", 1));
    }

    #[test]
    fn a_timed_out_read_has_no_entries_and_a_deleted_one_an_empty_body() {
        assert!(read_entries(Value::Nil).expect("nil").is_empty());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Nil])]),
        ])]);
        let got = read_entries(reply).expect("entries");
        assert!(got[0].1.body.is_empty());
    }

    #[test]
    fn a_reply_of_another_shape_is_refused() {
        for reply in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("k")])]),
            Value::Array(vec![Value::Array(vec![bulk("k"), Value::Int(2)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("k"),
                Value::Array(vec![Value::Array(vec![Value::Int(3), Value::Nil])]),
            ])]),
        ] {
            assert!(read_entries(reply.clone()).is_err(), "{reply:?}");
        }
    }

    #[test]
    fn a_parsed_entry_reads_as_its_fields_do() {
        let e = StreamId {
            id: "5-1".into(),
            map: [
                ("body".to_string(), bulk("1")),
                ("attempt".to_string(), Value::Int(2)),
            ]
            .into_iter()
            .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        };
        let job = entry_job(&e);
        assert_eq!(
            (job.id.as_str(), job.attempt, &job.body[..]),
            ("5-1", 2, &b"1"[..])
        );
    }
}
