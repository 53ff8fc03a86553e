//! Events on Redis pub/sub: `PUBLISH <p>:ev:<topic> blob`; a subscription
//! `PSUBSCRIBE`s the literal prefix of each pattern and filters exactly.
//!
//! Redis pub/sub has no back-pressure, so a subscriber keeps at most
//! [`BUFFER`] events waiting for its handler and drops newer ones beyond
//! that, counting them in the log (the documented drop policy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use muster_core::retry::Backoff;
use muster_core::topic::Pattern;
use muster_core::transport::{BoxFuture, EventSink, Subscribed};
use muster_core::wire::Envelope;
use muster_core::{Error, ErrorKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Inner, unavailable};

/// Events held for a slow subscriber before newer ones are dropped.
pub(crate) const BUFFER: usize = 10_000;

pub(crate) async fn publish(inner: &Inner, event: Envelope) -> Result<(), Error> {
    let topic = muster_core::transport::check_event(&event, inner.options.max_message_size)?;
    let blob = event.to_blob();
    if blob.len() > inner.options.max_message_size {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "event of {} bytes is over the limit of {}",
                blob.len(),
                inner.options.max_message_size
            ),
        ));
    }
    crate::durable::publish(inner, &inner.keys.event(topic), topic, &blob).await
}

/// A live subscription.
#[derive(Debug)]
pub(crate) struct RedisSubscribed {
    stop: CancellationToken,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Subscribed for RedisSubscribed {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.cancel();
            for t in self.tasks {
                let _ = t.await;
            }
        })
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    patterns: &[String],
    sink: Arc<dyn EventSink>,
) -> Result<RedisSubscribed, Error> {
    let parsed = patterns
        .iter()
        .map(|p| Pattern::parse(p).map_err(|e| Error::new(ErrorKind::Config, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let globs: Vec<String> = parsed
        .iter()
        .map(|p| {
            format!(
                "{}{}*",
                inner.keys.event_prefix(),
                glob_escape(&p.literal_prefix())
            )
        })
        .collect();
    // Subscribed before returning: later events are not lost.
    let pubsub = open(&inner, &globs).await?;
    let (tx, mut rx) = mpsc::channel::<Envelope>(BUFFER);
    let stop = CancellationToken::new();
    let reader = tokio::spawn(read(inner.clone(), pubsub, globs, parsed, tx, stop.clone()));
    let deliver = {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => break,
                    e = rx.recv() => match e { Some(e) => e, None => break },
                };
                sink.deliver(event).await;
            }
        })
    };
    Ok(RedisSubscribed {
        stop,
        tasks: [reader, deliver],
    })
}

async fn open(inner: &Inner, globs: &[String]) -> Result<redis::aio::PubSub, Error> {
    let mut pubsub = inner
        .client
        .get_async_pubsub()
        .await
        .map_err(|e| unavailable("subscribe", &e))?;
    pubsub
        .psubscribe(globs)
        .await
        .map_err(|e| unavailable("subscribe", &e))?;
    Ok(pubsub)
}

async fn read(
    inner: Arc<Inner>,
    first: redis::aio::PubSub,
    globs: Vec<String>,
    patterns: Vec<Pattern>,
    tx: mpsc::Sender<Envelope>,
    stop: CancellationToken,
) {
    let prefix = inner.keys.event_prefix();
    let dropped = AtomicU64::new(0);
    let mut pubsub = Some(first);
    let mut backoff = Backoff::new();
    while !stop.is_cancelled() && !inner.shutdown.is_cancelled() {
        let conn = match pubsub.take() {
            Some(p) => p,
            None => match open(&inner, &globs).await {
                Ok(p) => {
                    tracing::info!("event subscription to Redis restored");
                    backoff.succeeded();
                    p
                }
                Err(e) => {
                    let wait = backoff.failed();
                    if backoff.worth_logging() {
                        tracing::warn!(error = %e, failures = backoff.failures(), "cannot resubscribe to Redis; retrying");
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            },
        };
        let mut messages = conn.into_on_message();
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                m = messages.next() => m,
            };
            let Some(msg) = msg else {
                tracing::warn!("event subscription to Redis lost; resubscribing");
                break;
            };
            let topic = msg.get_channel_name().strip_prefix(&prefix).unwrap_or("");
            if !patterns.iter().any(|p| p.matches(topic)) {
                continue;
            }
            let payload = msg.get_payload_bytes();
            if payload.len() > inner.options.max_message_size {
                tracing::warn!(size = payload.len(), "event over the size limit; dropped");
                continue;
            }
            match Envelope::from_blob(payload) {
                Ok(env) => {
                    if tx.try_send(env).is_err() {
                        let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(
                                dropped = n,
                                "subscriber is {BUFFER} events behind; newer events dropped"
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable event; dropped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs_are_escaped() {
        assert_eq!(super::glob_escape("a.b"), "a.b");
        assert_eq!(super::glob_escape("a*[x]?\\"), "a\\*\\[x\\]\\?\\\\");
    }
}
