//! Events on RabbitMQ: published to the topic exchange with the topic as
//! routing key; each subscription has an exclusive queue bound with the
//! patterns (`*` stays, `>` becomes `#`) and filters exactly. The queue is
//! bounded ([`BUFFER`] messages, oldest dropped first: RabbitMQ's
//! `drop-head`), so a slow subscriber cannot grow the broker without limit.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer, ExchangeKind};
use muster_core::topic::Pattern;
use muster_core::transport::{BoxFuture, EventSink, Subscribed};
use muster_core::wire::{Envelope, Header, Kind};
use muster_core::{Error, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::link::{Outgoing, amqp_error};
use crate::props::{read_header, with_header};

/// Events a subscriber's queue holds before the oldest are dropped.
pub(crate) const BUFFER: i32 = 10_000;

/// Declares the durable topic exchange (idempotent).
pub(crate) async fn declare_exchange(ch: &Channel, exchange: &str) -> Result<(), Error> {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| amqp_error(&format!("declare the exchange {exchange:?}"), &e))
}

pub(crate) async fn publish(inner: &Inner, event: Envelope) -> Result<(), Error> {
    let topic = muster_core::transport::check_event(&event, inner.options.max_message_size)?;
    // Persistent: an event a durable group's queue holds survives a
    // broker restart. (Persistence costs only where a message lands in a
    // durable queue; plain subscribers' queues are not.)
    let props = with_header(
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2),
        &event.header,
    );
    inner
        .fast
        .publish(
            Outgoing {
                exchange: &inner.options.exchange,
                routing_key: topic,
                body: &event.body,
                properties: props,
                mandatory: false,
            },
            inner.options.publish_wait,
        )
        .await
        .map(|_| ())
}

/// A pattern as an AMQP topic binding key.
pub(crate) fn binding(pattern: &Pattern) -> String {
    pattern
        .as_str()
        .split('.')
        .map(|t| if t == ">" { "#" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

#[derive(Debug)]
pub(crate) struct AmqpSubscribed {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AmqpSubscribed {
    pub(crate) fn new(stop: CancellationToken, task: tokio::task::JoinHandle<()>) -> Self {
        Self { stop, task }
    }
}

impl Subscribed for AmqpSubscribed {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.cancel();
            let _ = self.task.await;
        })
    }
}

async fn setup(
    ch: Channel,
    exchange: &str,
    bindings: &[String],
) -> Result<(Channel, Consumer), Error> {
    declare_exchange(&ch, exchange).await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(BUFFER));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(|e| amqp_error("declare a subscriber queue", &e))?;
    for b in bindings {
        ch.queue_bind(
            queue.name().clone(),
            exchange.into(),
            b.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error("bind a subscriber queue", &e))?;
    }
    let consumer = ch
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error("consume events", &e))?;
    Ok((ch, consumer))
}

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    patterns: &[String],
    sink: Arc<dyn EventSink>,
) -> Result<AmqpSubscribed, Error> {
    let patterns = patterns
        .iter()
        .map(|p| Pattern::parse(p).map_err(|e| Error::new(ErrorKind::Config, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let bindings: Vec<String> = patterns.iter().map(binding).collect();
    let exchange = inner.options.exchange.clone();
    // Bound before returning: later events are not lost.
    let (_, ch) = inner.link.channel().await?;
    let first = setup(ch, &exchange, &bindings).await?;
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
                            .with_retry(&stop, "resubscribe", |_, ch| {
                                let (exchange, bindings) = (exchange.clone(), bindings.clone());
                                async move { setup(ch, &exchange, &bindings).await }
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
                            let _ = ch.close(0, "muster: unsubscribed".into()).await;
                            return;
                        }
                        d = consumer.next() => d,
                    };
                    let Some(Ok(d)) = d else {
                        tracing::warn!("event subscription lost; resubscribing");
                        break;
                    };
                    let topic = d.routing_key.as_str();
                    if !patterns.iter().any(|p| p.matches(topic)) {
                        continue;
                    }
                    if d.data.len() > inner.options.max_message_size {
                        tracing::warn!(size = d.data.len(), "event over the size limit; dropped");
                        continue;
                    }
                    let header = read_header(&d.properties)
                        .filter(|h| h.kind == Kind::Event)
                        .unwrap_or_else(|| Header::new(Kind::Event).with_topic(topic));
                    sink.deliver(Envelope::new(header, d.data)).await;
                }
            }
        }
    });
    Ok(AmqpSubscribed { stop, task })
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns_become_bindings() {
        let b = |p| super::binding(&super::Pattern::parse(p).unwrap());
        assert_eq!(b("a.*.c"), "a.*.c");
        assert_eq!(b("a.>"), "a.#");
    }
}
