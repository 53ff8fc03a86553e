//! Durable event subscriptions on NATS: the events of one prefix
//! (`<p>.ev.>`) are captured by one JetStream stream, `<P>_EVENTS`, made
//! when the first group is declared, with interest retention (an event no
//! group wants is not kept, one is kept until every group that wants it
//! has it). Each group is a durable pull consumer on it, named as the
//! group and filtered to its pattern, starting at its declaration.
//!
//! NATS cannot capture one subject in two streams, so groups share the
//! stream, and its bounds are the largest any group asked for (a
//! group's own smaller bounds are not enforced on NATS). A group of
//! several patterns filters on the whole prefix and skips the rest
//! itself (one filter subject per consumer is what NATS 2.9 offers);
//! a group's patterns are fixed when its consumer is made (remove the
//! consumer to change them).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use muster_core::Error;
use muster_core::durable::{DurableGroup, Retention};
use muster_core::queue::ConsumeOptions;
use muster_core::topic::Pattern;
use muster_core::transport::EventSink;
use tokio_util::sync::CancellationToken;

use crate::events::{NatsSubscribed, event_of};
use crate::{Inner, unavailable};

/// The stream of a prefix's kept events.
fn stream_name(prefix: &str) -> String {
    format!("{}_EVENTS", prefix.replace('.', "_2E"))
}

/// A bound as JetStream writes it (`-1` none).
fn limit(n: u64) -> i64 {
    i64::try_from(n).map_or(-1, |n| if n == i64::MAX { -1 } else { n })
}

/// An age bound as JetStream takes it: nanoseconds in an `i64`, so an age
/// past a century is no bound (zero).
fn age_limit(age: Duration) -> Duration {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    if age > CENTURY { Duration::ZERO } else { age }
}

/// True when `have` (a stream limit, `-1` or `0` none) holds `want`.
fn holds(have: i64, want: i64) -> bool {
    have <= 0 || have >= want
}

/// The prefix's event stream, made or grown to hold `r`.
async fn events_stream(inner: &Inner, r: &Retention) -> Result<stream::Stream, Error> {
    let name = stream_name(&inner.options.prefix);
    let wanted = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}>", inner.subjects.event_prefix())],
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        max_messages: limit(r.max_events),
        max_bytes: limit(r.max_bytes),
        max_age: age_limit(r.max_age),
        discard: stream::DiscardPolicy::Old,
        ..stream::Config::default()
    };
    let mut s = match inner.jetstream.get_stream(&name).await {
        Ok(s) => s,
        Err(_) => {
            let made = inner.jetstream.create_stream(wanted.clone()).await;
            // Made here or by another member at the same moment: open it.
            return inner
                .jetstream
                .get_stream(&name)
                .await
                .map_err(|e| match made {
                    Err(made) => unavailable(&format!("create the JetStream stream {name}"), &made),
                    Ok(_) => unavailable(&format!("open the JetStream stream {name}"), &e),
                });
        }
    };
    let have = s
        .info()
        .await
        .map_err(|e| unavailable(&format!("read the JetStream stream {name}"), &e))?
        .config
        .clone();
    let age_held = have.max_age.is_zero() || have.max_age >= wanted.max_age;
    if !(holds(have.max_messages, wanted.max_messages)
        && holds(have.max_bytes, wanted.max_bytes)
        && age_held)
    {
        let grown = stream::Config {
            max_messages: have.max_messages.max(wanted.max_messages),
            max_bytes: have.max_bytes.max(wanted.max_bytes),
            max_age: if age_held {
                have.max_age
            } else {
                wanted.max_age
            },
            ..have
        };
        inner
            .jetstream
            .update_stream(grown)
            .await
            .map_err(|e| unavailable(&format!("grow the JetStream stream {name}"), &e))?;
    }
    Ok(s)
}

/// The group's consumer: made at the first declaration, from then on.
async fn group_consumer(
    inner: &Inner,
    stream: &stream::Stream,
    group: &DurableGroup,
    prefetch: usize,
) -> Result<PullConsumer, Error> {
    let filter = match group.patterns.as_slice() {
        [one] => inner.subjects.event(one),
        _ => format!("{}>", inner.subjects.event_prefix()),
    };
    stream
        .get_or_create_consumer(
            &group.name,
            pull::Config {
                durable_name: Some(group.name.clone()),
                filter_subject: filter,
                deliver_policy: DeliverPolicy::New,
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                max_ack_pending: i64::try_from(prefetch.max(1)).unwrap_or(i64::MAX),
                ..pull::Config::default()
            },
        )
        .await
        .map_err(|e| unavailable(&format!("join the durable group {:?}", group.name), &e))
}

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    group: &DurableGroup,
    options: ConsumeOptions,
    sink: Arc<dyn EventSink>,
) -> Result<NatsSubscribed, Error> {
    let patterns: Vec<Pattern> = group.check()?;
    let stream = events_stream(&inner, &group.retention).await?;
    let consumer = group_consumer(&inner, &stream, group, options.prefetch).await?;
    let stop = CancellationToken::new();
    let name = group.name.clone();
    let prefetch = options.prefetch.max(1);
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let prefix = inner.subjects.event_prefix();
            let max = inner.options.max_message_size;
            let mut backoff = muster_core::retry::Backoff::new();
            while !stop.is_cancelled() {
                let fetched = tokio::select! {
                    () = stop.cancelled() => return,
                    f = consumer.fetch().max_messages(prefetch).expires(Duration::from_secs(1)).messages() => f,
                };
                let mut batch = match fetched {
                    Ok(b) => {
                        backoff.succeeded();
                        b
                    }
                    Err(e) => {
                        let wait = backoff.failed();
                        if backoff.worth_logging() {
                            tracing::warn!(group = %name, error = %e, "cannot read the durable group; retrying");
                        }
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                };
                while let Some(m) = batch.next().await {
                    let Ok(msg) = m else { break };
                    // Left at a stop: handed back at once, in its place,
                    // rather than after the ack wait.
                    if stop.is_cancelled() {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        continue;
                    }
                    let topic = msg.subject.strip_prefix(prefix.as_str()).unwrap_or("");
                    if patterns.iter().any(|p| p.matches(topic))
                        && let Some(event) = event_of(&prefix, max, msg.message.clone())
                    {
                        // A member leaving while its handler runs: the
                        // event is handed back, unacknowledged.
                        tokio::select! {
                            () = stop.cancelled() => {
                                let _ = msg.ack_with(AckKind::Nak(None)).await;
                                continue;
                            }
                            () = sink.deliver(event) => {}
                        }
                    }
                    if let Err(e) = msg.ack().await {
                        tracing::warn!(group = %name, error = %e, "cannot acknowledge a kept event; it will be delivered again");
                    }
                }
            }
        }
    });
    Ok(NatsSubscribed::new(stop, task))
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_stream_per_prefix() {
        assert_eq!(super::stream_name("muster"), "muster_EVENTS");
        assert_eq!(super::stream_name("a.b"), "a_2Eb_EVENTS");
    }

    #[test]
    fn bounds_past_what_jetstream_takes_are_none() {
        assert_eq!(super::limit(u64::MAX), -1);
        assert_eq!(super::limit(10), 10);
        let long = std::time::Duration::from_secs(u64::MAX / 4);
        assert!(super::age_limit(long).is_zero());
    }

    #[test]
    fn limits_grow_only() {
        assert!(super::holds(-1, 10));
        assert!(super::holds(10, 10));
        assert!(!super::holds(5, 10));
    }
}
