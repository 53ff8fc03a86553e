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
    // A `Subject` made from the `String` takes its buffer; async-nats
    // would copy a `String` given as it is.
    let subject = async_nats::Subject::from(inner.subjects.event(topic));
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
    let ended = futures_util::future::select(
        Box::pin(stop.clone().cancelled_owned()),
        Box::pin(inner.shutdown.clone().cancelled_owned()),
    );
    let prefix = inner.subjects.event_prefix();
    let max = inner.options.max_message_size;
    let events = messages
        .filter_map(move |msg| std::future::ready(event_of(&prefix, max, msg)))
        .take_until(ended);
    Ok(StreamSubscription {
        events: Box::pin(events),
        handle: Box::new(StreamStop(stop)),
    })
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
            Header::new(Kind::Event).with_topic(topic)
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
