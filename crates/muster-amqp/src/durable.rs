//! Durable event subscriptions on RabbitMQ: a durable queue per group,
//! `<exchange>.durable.<group>`, bound to the event exchange with the
//! group's patterns, so the broker keeps the group's events while no
//! member consumes. Its retention is the queue's own limits
//! (`x-max-length`, `x-max-length-bytes`, `x-message-ttl`, oldest dropped
//! first). Members consume it with manual acks, each event acknowledged
//! after the sink has it; one that dies holding events gets them
//! redelivered by the broker, in their place.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use muster_core::durable::{DurableGroup, Retention};
use muster_core::queue::ConsumeOptions;
use muster_core::topic::Pattern;
use muster_core::transport::EventSink;
use muster_core::wire::{Envelope, Header, Kind};
use muster_core::{Error, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::events::{AmqpSubscribed, binding, declare_exchange};
use crate::link::amqp_error;
use crate::props::read_header;
use crate::queue::soft_error;

/// The queue that keeps a group's events.
fn queue_name(exchange: &str, group: &DurableGroup) -> String {
    format!("{exchange}.durable.{}", group.name)
}

/// The queue arguments that make the broker enforce a retention. A
/// message TTL past RabbitMQ's largest (2^32 - 1 ms, about 49 days) is
/// left out: no age bound.
fn retention_args(r: &Retention) -> FieldTable {
    let long = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), long(r.max_events));
    args.insert("x-max-length-bytes".into(), long(r.max_bytes));
    if let Ok(ttl) = u32::try_from(r.max_age.as_millis()) {
        args.insert("x-message-ttl".into(), long(u64::from(ttl)));
    }
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    args
}

/// Declares the group's queue and its bindings, then consumes it.
async fn setup(
    inner: &Inner,
    ch: Channel,
    group: &DurableGroup,
    prefetch: u16,
    tag: &str,
) -> Result<(Channel, Consumer), Error> {
    let exchange = &inner.options.exchange;
    declare_exchange(&ch, exchange).await?;
    let queue = queue_name(exchange, group);
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            retention_args(&group.retention),
        )
        .await;
    // A queue made with another retention is refused (and its channel
    // closed) by the broker: it is kept as it is, on a new channel, once
    // it is known to exist (arguments the broker cannot take are refused
    // the same way, and then there is no queue).
    let ch = match declared {
        Ok(_) => ch,
        Err(e) if soft_error(&e) == Some(AMQPSoftError::PRECONDITIONFAILED) => {
            let ch = inner.link.channel().await?.1;
            let exists = ch
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            if exists.is_err() {
                return Err(amqp_error(&format!("declare the queue {queue:?}"), &e));
            }
            tracing::warn!(
                queue,
                "the durable group's queue exists with another retention; it is used as it is (delete the queue to change it)"
            );
            inner.link.channel().await?.1
        }
        Err(e) => return Err(amqp_error(&format!("declare the queue {queue:?}"), &e)),
    };
    for p in &group.patterns {
        let pattern =
            Pattern::parse(p).map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            binding(&pattern).as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(&format!("bind the queue {queue:?}"), &e))?;
    }
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| amqp_error("set the prefetch", &e))?;
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            format!("{tag}-{}", muster_core::id::short_id())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(&format!("consume {queue:?}"), &e))?;
    Ok((ch, consumer))
}

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    group: &DurableGroup,
    options: ConsumeOptions,
    sink: Arc<dyn EventSink>,
) -> Result<AmqpSubscribed, Error> {
    let patterns = group.check()?;
    let group = group.clone();
    let prefetch = u16::try_from(options.prefetch.clamp(1, 65_535)).unwrap_or(u16::MAX);
    let tag = format!("muster-{}", options.holder);
    // Declared and bound before returning: from then on the group's
    // events are kept.
    let (_, ch) = inner.link.channel().await?;
    let first = setup(&inner, ch, &group, prefetch, &tag).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut next = Some(first);
            loop {
                let (ch, mut consumer) = match next.take() {
                    Some(s) => s,
                    None => {
                        let got = inner
                            .link
                            .with_retry(&stop, "join the durable group again", |_, ch| {
                                let (inner, group, tag) =
                                    (inner.clone(), group.clone(), tag.clone());
                                async move { setup(&inner, ch, &group, prefetch, &tag).await }
                            })
                            .await;
                        match got {
                            Some(s) => s,
                            None => return,
                        }
                    }
                };
                loop {
                    let d = tokio::select! {
                        () = stop.cancelled() => {
                            // Events delivered and not acknowledged go back
                            // to the queue, in their place.
                            let _ = ch.close(0, "muster: left the durable group".into()).await;
                            return;
                        }
                        d = consumer.next() => d,
                    };
                    let Some(Ok(d)) = d else {
                        tracing::warn!(group = %group.name, "durable subscription lost; joining again");
                        break;
                    };
                    let topic = d.routing_key.as_str();
                    // Past the size limit, or on a topic the group no
                    // longer keeps (a binding of an earlier declaration):
                    // acknowledged and not delivered.
                    let wanted = patterns.iter().any(|p| p.matches(topic))
                        && d.data.len() <= inner.options.max_message_size;
                    if wanted {
                        let header = read_header(&d.properties)
                            .filter(|h| h.kind == Kind::Event)
                            .unwrap_or_else(|| Header::new(Kind::Event).with_topic(topic));
                        // A member leaving while its handler runs: the event
                        // goes back with the channel, unacknowledged.
                        tokio::select! {
                            () = stop.cancelled() => {
                                let _ = ch.close(0, "muster: left the durable group".into()).await;
                                return;
                            }
                            () = sink.deliver(Envelope::new(header, d.data.clone())) => {}
                        }
                    }
                    if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
                        tracing::warn!(error = %e, "cannot acknowledge a kept event; it will be delivered again");
                    }
                }
            }
        }
    });
    Ok(AmqpSubscribed::new(stop, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_becomes_queue_limits() {
        let r = Retention::default()
            .max_events(10)
            .max_bytes(2048)
            .max_age(std::time::Duration::from_secs(60));
        let args = retention_args(&r);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(10)));
        assert_eq!(
            get("x-max-length-bytes"),
            Some(AMQPValue::LongLongInt(2048))
        );
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(60_000)));
        let forever = retention_args(&r.max_age(std::time::Duration::from_secs(u64::MAX / 4)));
        assert_eq!(
            forever.inner().get("x-message-ttl"),
            None,
            "no age bound past 2^32 ms"
        );
    }
}
