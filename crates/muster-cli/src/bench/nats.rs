//! NATS baselines: the same topologies as muster's, written with plain
//! `async-nats` (no muster), against the same server in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;

use super::broker::{job_body, plain_url, unique};

/// A plain request/reply server: a queue subscription that answers each
/// JSON-RPC-shaped request with a JSON-RPC result (what muster's echo
/// does, without muster).
pub(super) async fn plain_rpc_server(
    url: &str,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let client = async_nats::connect(plain_url(url)).await?;
    let subject = unique("bench.plain.echo");
    let mut sub = client.queue_subscribe(subject.clone(), "q".into()).await?;
    client.flush().await?;
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(to) = m.reply else { continue };
            let req: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let body = serde_json::to_vec(
                &serde_json::json!({"jsonrpc": "2.0", "result": req["params"][0], "id": req["id"]}),
            )
            .unwrap_or_default();
            let _ = client.publish(to, body.into()).await;
        }
    });
    Ok((subject, task))
}

/// Calls/s of `lanes` plain callers, each one request at a time.
pub(super) async fn plain_calls(
    url: &str,
    subject: &str,
    payload: &str,
    lanes: usize,
    d: Duration,
) -> anyhow::Result<f64> {
    let client = async_nats::connect(plain_url(url)).await?;
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..lanes)
        .map(|_| {
            let (client, count, subject, payload) = (
                client.clone(),
                count.clone(),
                subject.to_owned(),
                payload.to_owned(),
            );
            tokio::spawn(async move {
                let mut id = 0u64;
                while started.elapsed() < d {
                    // Encoded per call, as muster's client does and as a
                    // real caller must (its arguments change).
                    id += 1;
                    let body = serde_json::to_vec(&serde_json::json!(
                        {"jsonrpc": "2.0", "method": "echo", "params": [&payload], "id": id}
                    ))
                    .unwrap_or_default();
                    if let Ok(m) = client.request(subject.clone(), body.into()).await {
                        let _: serde_json::Value =
                            serde_json::from_slice(&m.payload).unwrap_or_default();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Events/s from one publisher to one subscriber (other connections),
/// the publisher held to [`Window::AHEAD`] events ahead of the subscriber:
/// `(rate, received)`.
pub(super) async fn plain_events(
    url: &str,
    events: u64,
    size: usize,
) -> anyhow::Result<(f64, u64)> {
    let publisher = async_nats::connect(plain_url(url)).await?;
    let subscriber = async_nats::ConnectOptions::new()
        .subscription_capacity(65_536)
        .connect(plain_url(url))
        .await?;
    let subject = unique("bench.plain.ev");
    let sub = subscriber.subscribe(subject.clone()).await?;
    subscriber.flush().await?;
    let value = super::broker::job_body(size);
    let window = Arc::new(Window::default());
    let counted = window.clone();
    let reader = tokio::spawn(async move {
        let decoded = sub.map(|m| {
            let _: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        });
        counted.count(events, decoded).await
    });
    let started = Instant::now();
    for sent in 0..events {
        window.room_for(sent).await;
        // Encoded per event, as muster does and as a real publisher must.
        let body = serde_json::to_vec(&value)?;
        publisher.publish(subject.clone(), body.into()).await?;
    }
    publisher.flush().await?;
    let last = reader.await?;
    let n = window.got.load(Ordering::Relaxed);
    Ok((n as f64 / last.duration_since(started).as_secs_f64(), n))
}

/// Holds an event publisher to a number of events ahead of its subscriber,
/// so that neither muster nor the plain loop overruns NATS's per-subscriber
/// bound and the rate compared is of events delivered, none dropped.
#[derive(Default)]
pub(super) struct Window {
    pub(super) got: AtomicU64,
    more: tokio::sync::Notify,
}

impl Window {
    /// Events the publisher may be ahead (below the 65,536 messages both
    /// subscribers may hold).
    pub(super) const AHEAD: u64 = 10_000;

    /// Counts one event received; returns how many so far.
    pub(super) fn received(&self) -> u64 {
        let n = self.got.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(1_000) {
            self.more.notify_one();
        }
        n
    }

    /// Counts what `arrivals` yields until `events` have come or none has
    /// for a second; returns when the last one came.
    pub(super) async fn count(&self, events: u64, arrivals: impl futures_util::Stream) -> Instant {
        let mut arrivals = std::pin::pin!(arrivals);
        let mut last = Instant::now();
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), arrivals.next()).await
        {
            last = Instant::now();
            if self.received() == events {
                break;
            }
        }
        last
    }

    /// Waits until event number `sent` may go.
    pub(super) async fn room_for(&self, sent: u64) {
        while sent >= self.got.load(Ordering::Relaxed) + Self::AHEAD {
            // `notify_one` keeps a wake-up for a waiter still to come.
            self.more.notified().await;
        }
    }
}

/// Jobs/s of a plain JetStream work queue: `jobs` published (acks awaited
/// together), then taken `prefetch` at a time by a pull consumer and
/// acknowledged one by one.
pub(super) async fn plain_jobs(
    url: &str,
    prefetch: usize,
    jobs: u64,
    size: usize,
) -> anyhow::Result<f64> {
    let client = async_nats::connect(plain_url(url)).await?;
    let js = jetstream::new(client);
    let name = unique("BENCH_PLAIN").replace('-', "_");
    let subject = format!("bench.plain.q.{name}");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..stream::Config::default()
        })
        .await?;
    let body = serde_json::to_vec(&job_body(size))?;
    let acks = futures_util::stream::iter(0..jobs)
        .map(|_| {
            let (js, subject, body) = (js.clone(), subject.clone(), body.clone());
            async move { js.publish(subject, body.into()).await?.await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for a in acks {
        a?;
    }
    let consumer = stream
        .get_or_create_consumer(
            "plain",
            pull::Config {
                durable_name: Some("plain".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..pull::Config::default()
            },
        )
        .await?;
    let mut started = None;
    let mut n = 0u64;
    while n < jobs {
        let mut batch = consumer
            .fetch()
            .max_messages(prefetch)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            started.get_or_insert_with(Instant::now);
            let _: serde_json::Value = serde_json::from_slice(&m.payload)?;
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            n += 1;
        }
    }
    let rate = jobs as f64
        / started
            .map_or(Duration::ZERO, |t| t.elapsed())
            .as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(rate)
}
