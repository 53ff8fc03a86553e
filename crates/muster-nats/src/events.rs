//! Events on NATS subjects: a topic `a.b` is published on `<p>.ev.a.b`
//! with muster's header in `Muster-Header`, and a pattern subscribes
//! `<p>.ev.<pattern>` (muster's `*` and `>` are NATS's own). A message a
//! plain NATS client publishes there is delivered too, as an event with
//! the subject's topic.
//!
//! NATS does not wait for a slow subscriber: past
//! [`NatsOptions::subscription_capacity`](crate::NatsOptions) waiting
//! messages it drops newer ones for that subscription and reports a slow
//! consumer, which the transport counts
//! ([`NatsTransport::slow_consumers`](crate::NatsTransport::slow_consumers))
//! and logs (`docs/guarantees.md`, "NATS").

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::Either;
use futures_util::stream::SelectAll;
use muster_core::topic::Pattern;
use muster_core::transport::{BoxFuture, EventSink, StreamSubscription, Subscribed};
use muster_core::wire::{Envelope, Header, Kind, WireError};
use muster_core::{Error, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::{Inner, unavailable};

/// The NATS header that carries muster's own header on an event. (An
/// event keeps its body as the payload, so a plain NATS subscriber reads
/// it as it is; RPC carries the header in the payload instead.)
pub(crate) const MUSTER_HEADER: &str = "Muster-Header";

/// The muster header of a message, when it has one. `Err` when it has
/// one that cannot be read.
fn header_of(msg: &async_nats::Message) -> Option<Result<Header, WireError>> {
    let raw = msg.headers.as_ref()?.get(MUSTER_HEADER)?;
    Some(muster_core::wire::decode_header(raw.as_str().as_bytes()))
}

fn headers_with(header: &Header) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    let json = String::from_utf8(muster_core::wire::encode_header(header)).unwrap_or_default();
    h.insert(MUSTER_HEADER, json.as_str());
    h
}

pub(crate) async fn publish(inner: &Inner, event: Envelope) -> Result<(), Error> {
    let topic = muster_core::transport::check_event(&event, inner.options.max_message_size)?;
    let subject = inner
        .event_subjects
        .get(topic, || inner.subjects.event(topic));
    // An event that says no more than its subject (no transaction, JSON)
    // goes without `Muster-Header`: the subscriber rebuilds the header
    // from the subject, and encoding one would cost more than the rest of
    // the publish (measured: 182,000 against 1,600,000 publishes/s).
    let sent = if carries_only_its_topic(&event.header) {
        inner.client.publish(subject, event.body).await
    } else {
        inner
            .client
            .publish_with_headers(subject, headers_with(&event.header), event.body)
            .await
    };
    sent.map_err(|e| unavailable("publish on NATS", &e))
}

/// The NATS subjects of the topics this transport published on lately.
///
/// Why: a publisher mostly repeats a few topics, and making the subject
/// anew (joining the prefix and the topic, then a `Subject` whose first
/// clone, inside async-nats, allocates again) was 500 of the 12,900
/// instructions one NATS event cost (callgrind, `examples/perevent.rs`).
/// A cached subject is shared: a clone is a reference count.
#[derive(Debug, Default)]
pub(crate) struct SubjectCache {
    /// Keyed by topic. Cleared when full: bounded however many topics
    /// come, and a few hot ones are back at their next publish.
    subjects: std::sync::Mutex<foldhash::HashMap<Box<str>, async_nats::Subject>>,
}

/// Topics cached at most.
const CACHED_SUBJECTS: usize = 1_024;
/// Longer topics are not cached (their subject is made each time).
const CACHED_TOPIC_LEN: usize = 256;

impl SubjectCache {
    /// The subject of `topic`, `make` making it when it is not cached.
    pub(crate) fn get(&self, topic: &str, make: impl FnOnce() -> String) -> async_nats::Subject {
        if topic.len() > CACHED_TOPIC_LEN {
            return async_nats::Subject::from(make());
        }
        let mut subjects = self
            .subjects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subject) = subjects.get(topic) {
            return subject.clone();
        }
        if subjects.len() >= CACHED_SUBJECTS {
            subjects.clear();
        }
        // The clone makes the buffer shared, so that the cached one's
        // clones are reference counts from now on.
        let subject = async_nats::Subject::from(make());
        subjects.insert(topic.into(), subject.clone());
        subject
    }
}

/// True for the header of an event with nothing but its kind and topic.
fn carries_only_its_topic(h: &Header) -> bool {
    // Destructured so that a member added to `Header` must be named here.
    let Header {
        id,
        kind,
        service,
        method,
        topic: _,
        transaction,
        deadline_ms,
        content_type,
        seq,
        publisher,
        instance,
        auth,
        count,
        traceparent,
        tracestate,
        caller,
    } = h;
    id.is_empty()
        && *kind == Kind::Event
        && service.is_none()
        && method.is_none()
        && transaction.is_none()
        && deadline_ms.is_none()
        && content_type.is_none()
        && seq.is_none()
        && publisher.is_none()
        && instance.is_none()
        && auth.is_none()
        && count.is_none()
        && traceparent.is_none()
        && tracestate.is_none()
        && caller.is_none()
}

/// A live subscription: one task delivering, in order, what its NATS
/// subscriptions receive.
#[derive(Debug)]
pub(crate) struct NatsSubscribed {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl NatsSubscribed {
    pub(crate) fn new(stop: CancellationToken, task: tokio::task::JoinHandle<()>) -> Self {
        Self { stop, task }
    }
}

impl Subscribed for NatsSubscribed {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.cancel();
            let _ = self.task.await;
        })
    }
}

/// NATS subscriptions to `patterns`, live on the server when this returns.
async fn messages(inner: &Inner, patterns: &[String]) -> Result<Messages, Error> {
    let mut subs = Vec::new();
    for p in patterns {
        let pattern =
            Pattern::parse(p).map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        subs.push(
            inner
                .client
                .subscribe(inner.subjects.event(pattern.as_str()))
                .await
                .map_err(|e| unavailable("subscribe on NATS", &e))?,
        );
    }
    inner
        .client
        .flush()
        .await
        .map_err(|e| unavailable("subscribe on NATS", &e))?;
    // One pattern (the common case) is read as it is: merging streams
    // costs a poll of a FuturesUnordered per event.
    Ok(if subs.len() == 1 {
        Either::Left(subs.remove(0))
    } else {
        Either::Right(futures_util::stream::select_all(subs))
    })
}

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    patterns: &[String],
    sink: Arc<dyn EventSink>,
) -> Result<NatsSubscribed, Error> {
    let messages = messages(&inner, patterns).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(deliver(inner.clone(), messages, sink, stop.clone()));
    Ok(NatsSubscribed { stop, task })
}

/// A subscription its reader polls: async-nats's own queue of the
/// subscription's messages, each turned into an event as it is read. No
/// task sits in between, and dropping the stream unsubscribes.
pub(crate) async fn subscribe_stream(
    inner: Arc<Inner>,
    patterns: &[String],
) -> Result<StreamSubscription, Error> {
    let messages = messages(&inner, patterns).await?;
    let stop = CancellationToken::new();
    let prefix = inner.subjects.event_prefix();
    let max = inner.options.max_message_size;
    let events = messages.filter_map(move |msg| std::future::ready(event_of(&prefix, max, msg)));
    Ok(StreamSubscription {
        events: Box::pin(UntilStopped::new(
            events,
            stop.clone(),
            inner.shutdown.clone(),
        )),
        handle: Box::new(StreamStop(stop)),
    })
}

/// A stream that ends once either token is cancelled.
///
/// Why not `take_until`: it polls its future on every item, and that
/// future here (either of two cancellations) cost 400 of the 12,900
/// instructions one NATS event cost (callgrind, `examples/perevent.rs`).
/// This one asks the tokens before each item, and waits on them only
/// while no message is there, which is when a cancel must wake it.
struct UntilStopped<S> {
    inner: S,
    stop: CancellationToken,
    shutdown: CancellationToken,
    ended: futures_util::future::Select<
        std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
        std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    >,
    done: bool,
}

impl<S> UntilStopped<S> {
    fn new(inner: S, stop: CancellationToken, shutdown: CancellationToken) -> Self {
        let ended = futures_util::future::select(
            Box::pin(stop.clone().cancelled_owned()),
            Box::pin(shutdown.clone().cancelled_owned()),
        );
        Self {
            inner,
            stop,
            shutdown,
            ended,
            done: false,
        }
    }
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for UntilStopped<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        use std::task::Poll;
        if self.done || self.stop.is_cancelled() || self.shutdown.is_cancelled() {
            self.done = true;
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(item) => {
                self.done = item.is_none();
                Poll::Ready(item)
            }
            Poll::Pending => {
                // Nothing to read: wait on the tokens too.
                if std::pin::Pin::new(&mut self.ended).poll(cx).is_ready() {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending
            }
        }
    }
}

/// Ends a [`subscribe_stream`] stream.
#[derive(Debug)]
struct StreamStop(CancellationToken);

impl Subscribed for StreamStop {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.0.cancel();
        Box::pin(std::future::ready(()))
    }
}

/// The event a NATS message carries; `None` (logged) for one over the size
/// limit or with a muster header that cannot be read. A message without
/// that header is an event of the subject's topic.
pub(crate) fn event_of(prefix: &str, max: usize, msg: async_nats::Message) -> Option<Envelope> {
    if msg.payload.len() > max {
        tracing::warn!(
            size = msg.payload.len(),
            "event over the size limit; dropped"
        );
        return None;
    }
    let header = match header_of(&msg) {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            tracing::warn!(error = %e, subject = %msg.subject, "event with an unreadable header; dropped");
            return None;
        }
        None => {
            let topic = msg.subject.strip_prefix(prefix).unwrap_or(&msg.subject);
            // Filled in place, not moved through a builder.
            let mut header = Header::new(Kind::Event);
            header.topic = Some(topic.to_owned());
            header
        }
    };
    Some(Envelope::new(header, msg.payload))
}

type Messages = Either<async_nats::Subscriber, SelectAll<async_nats::Subscriber>>;

async fn deliver(
    inner: Arc<Inner>,
    mut messages: Messages,
    sink: Arc<dyn EventSink>,
    stop: CancellationToken,
) {
    let prefix = inner.subjects.event_prefix();
    let max = inner.options.max_message_size;
    // Made once, not per event: each is a registration with its token.
    let mut stopped = std::pin::pin!(stop.cancelled());
    let mut shut_down = std::pin::pin!(inner.shutdown.cancelled());
    loop {
        let msg = tokio::select! {
            () = &mut stopped => break,
            () = &mut shut_down => break,
            m = messages.next() => match m { Some(m) => m, None => break },
        };
        if let Some(event) = event_of(&prefix, max, msg) {
            sink.deliver(event).await;
        }
    }
    match messages {
        Either::Left(mut s) => {
            let _ = s.unsubscribe().await;
        }
        Either::Right(all) => {
            for mut s in all {
                let _ = s.unsubscribe().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_cache_gives_each_topic_its_own_subject_and_stays_bounded() {
        let cache = SubjectCache::default();
        let subject = |t: &str| format!("p.ev.{t}");
        for round in 0..2 {
            for n in 0..3 * CACHED_SUBJECTS {
                let topic = format!("t.{n}");
                let got = cache.get(&topic, || subject(&topic));
                assert_eq!(got.as_str(), subject(&topic), "round {round}");
            }
        }
        let cached = cache.subjects.lock().expect("lock").len();
        assert!((1..=CACHED_SUBJECTS).contains(&cached), "{cached}");
        // A long topic is made each time, not kept.
        let long = "x".repeat(CACHED_TOPIC_LEN + 1);
        assert_eq!(cache.get(&long, || subject(&long)).as_str(), subject(&long));
        assert!(
            !cache
                .subjects
                .lock()
                .expect("lock")
                .contains_key(long.as_str())
        );
    }

    #[tokio::test]
    async fn a_stream_until_stopped_ends_on_either_token_busy_or_idle() {
        use futures_util::stream;
        for by_shutdown in [false, true] {
            // Busy: items always ready, so only the check before each one
            // can end it.
            let (stop, shutdown) = (CancellationToken::new(), CancellationToken::new());
            let mut busy = UntilStopped::new(stream::iter(0..), stop.clone(), shutdown.clone());
            assert_eq!(busy.next().await, Some(0));
            if by_shutdown { &shutdown } else { &stop }.cancel();
            assert_eq!(busy.next().await, None);
            assert_eq!(busy.next().await, None, "ended for good");

            // Idle: nothing comes, so the cancel must wake the reader.
            let (stop, shutdown) = (CancellationToken::new(), CancellationToken::new());
            let mut idle =
                UntilStopped::new(stream::pending::<u32>(), stop.clone(), shutdown.clone());
            let canceller = if by_shutdown { shutdown } else { stop };
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                canceller.cancel();
            });
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), idle.next());
            assert_eq!(ended.await.expect("woken by the cancel"), None);
        }
    }

    #[test]
    fn only_a_bare_event_goes_without_its_header() {
        let bare = Header::new(Kind::Event).with_topic("a.b");
        assert!(carries_only_its_topic(&bare));
        let mut in_transaction = bare.clone();
        in_transaction.transaction = Some("t1".into());
        assert!(!carries_only_its_topic(&in_transaction));
        let mut numbered = bare.clone();
        numbered.seq = Some(3);
        assert!(!carries_only_its_topic(&numbered));
        let mut msgpack = bare;
        msgpack.content_type = Some("application/msgpack".into());
        assert!(!carries_only_its_topic(&msgpack));
    }
}
