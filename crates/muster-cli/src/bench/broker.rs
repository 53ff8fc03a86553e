//! Brokers: work-queue jobs per second with acks, and RPC over RabbitMQ,
//! each beside a plain client loop (lapin or redis, no muster) against the
//! same broker in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use muster::prelude::*;

use super::{BenchCmd, report};

pub(super) fn unique(base: &str) -> String {
    format!("{base}-{:x}", muster::id::random_u64() & 0xff_ffff)
}

/// The URL without muster's own query keys, for plain clients.
pub(super) fn plain_url(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// Enqueues `jobs` copies of `body` with 64 in flight, as a busy producer.
pub(super) async fn enqueue_all(
    client: &Client,
    queue: &str,
    body: &serde_json::Value,
    jobs: u64,
) -> Result<(), muster::Error> {
    futures_util::stream::iter(0..jobs)
        .map(|_| client.enqueue(queue, body))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map(|_| ())
}

pub(super) fn job_body(size: usize) -> serde_json::Value {
    serde_json::json!({ "pad": "x".repeat(size.saturating_sub(12)) })
}

/// Jobs/s with acks at prefetch 1 and 100, muster against a plain loop.
pub(super) async fn queue(cmd: &BenchCmd, url: &str) -> anyhow::Result<()> {
    let kind = url.split("://").next().unwrap_or("");
    for prefetch in [1usize, 100] {
        let jobs = if prefetch == 1 {
            cmd.jobs / 4
        } else {
            cmd.jobs
        };
        let muster = muster_jobs(url, prefetch, jobs, cmd.size).await?;
        let (name, baseline) = match kind {
            "amqp" => ("lapin", lapin_jobs(url, prefetch, jobs, cmd.size).await?),
            "redis" | "rediss" => ("redis", redis_jobs(url, prefetch, jobs, cmd.size).await?),
            "nats" => (
                "async-nats",
                super::nats::plain_jobs(url, prefetch, jobs, cmd.size).await?,
            ),
            other => anyhow::bail!(
                "the queue scenario needs --bus amqp://..., redis://... or nats://..., not {other}://"
            ),
        };
        report(
            &format!("queue p={prefetch}"),
            "jobs",
            muster,
            name,
            baseline,
        );
    }
    Ok(())
}

async fn muster_jobs(url: &str, prefetch: usize, jobs: u64, size: usize) -> anyhow::Result<f64> {
    let transport = muster::bus::connect(url, None).await?;
    let client = Client::new(transport.clone());
    let queue = unique("bench-jobs");
    enqueue_all(&client, &queue, &job_body(size), jobs).await?;
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    // Timed from the first job handled, as the plain loops are timed from
    // the first job received: connecting and starting are not the rate.
    let first = Arc::new(std::sync::OnceLock::new());
    let first_seen = first.clone();
    let consumer_bus = muster::bus::connect(url, None).await?;
    let waiting = Instant::now();
    let h = Service::new("benchjobs")
        .consume(&queue, move |Args(_): Args<serde_json::Value>| {
            let counter = counter.clone();
            first_seen.get_or_init(Instant::now);
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, RpcError>(())
            }
        })
        .prefetch(prefetch)
        .start(consumer_bus)
        .await?;
    while done.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
        anyhow::ensure!(
            waiting.elapsed() < Duration::from_secs(300),
            "muster consumer stalled"
        );
    }
    let elapsed = first.get().map_or(waiting, |t| *t).elapsed();
    h.stop().await;
    transport.close().await;
    if let Err(e) = remove_queue(url, &queue).await {
        eprintln!("cannot remove the bench's queue {queue}: {e:#}");
    }
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// Deletes what muster made on the broker for `queue` and its dead letters,
/// with the broker's plain client, by the names `docs/protocol.md` gives
/// them: muster has no command that deletes a queue, and a bench should
/// leave the broker as it found it.
async fn remove_queue(url: &str, queue: &str) -> anyhow::Result<()> {
    let dead = muster::queue::dead_queue(queue);
    let prefix = url
        .split_once('?')
        .and_then(|(_, query)| query.split('&').find_map(|kv| kv.strip_prefix("prefix=")))
        .unwrap_or("muster");
    match url.split("://").next().unwrap_or_default() {
        "amqp" | "amqps" => {
            let conn =
                Connection::connect(&plain_url(url), ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            for q in [queue, dead.as_str()] {
                ch.queue_delete(q.into(), QueueDeleteOptions::default())
                    .await?;
            }
            let _ = conn.close(0, "bench done".into()).await;
        }
        "redis" | "rediss" => {
            let client = redis::Client::open(plain_url(url).as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("DEL")
                .arg(format!("{prefix}:q:{queue}"))
                .arg(format!("{prefix}:q:{dead}"))
                .query_async::<()>(&mut conn)
                .await?;
        }
        "nats" | "tls" => {
            let js = async_nats::jetstream::new(async_nats::connect(plain_url(url)).await?);
            for q in [queue, dead.as_str()] {
                // Made on first use: a queue that never had a dead letter
                // may have no stream.
                if let Ok(name) = js.stream_by_subject(format!("{prefix}.q.{q}")).await {
                    js.delete_stream(&name).await?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

async fn lapin_jobs(url: &str, prefetch: usize, jobs: u64, size: usize) -> anyhow::Result<f64> {
    let conn = Connection::connect(&plain_url(url), ConnectionProperties::default()).await?;
    let queue = unique("bench-plain-jobs");
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = serde_json::to_vec(&job_body(size))?;
    for _ in 0..jobs {
        // Confirms are awaited together after the loop.
        let _confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
    }
    ch.wait_for_confirms().await?;
    let consumer_ch = conn.create_channel().await?;
    consumer_ch
        .basic_qos(
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let mut started = None;
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut n = 0;
    while n < jobs {
        let d = consumer.next().await.context("consumer ended")??;
        started.get_or_insert_with(Instant::now);
        let _: serde_json::Value = serde_json::from_slice(&d.data)?;
        d.ack(BasicAckOptions::default()).await?;
        n += 1;
    }
    let elapsed = started.map_or(Duration::ZERO, |t| t.elapsed());
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(0, "bench done".into()).await;
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

async fn redis_jobs(url: &str, prefetch: usize, jobs: u64, size: usize) -> anyhow::Result<f64> {
    let client = redis::Client::open(plain_url(url).as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = unique("bench-plain-jobs");
    let body = serde_json::to_string(&job_body(size))?;
    let mut left = jobs;
    while left > 0 {
        let batch = left.min(1000);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("body")
                .arg(&body)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        left -= batch;
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .query_async(&mut conn)
        .await?;
    let mut started = None;
    let mut n = 0u64;
    while n < jobs {
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(prefetch)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        let mut ids: Vec<String> = Vec::new();
        for entry in read.keys.iter().flat_map(|k| &k.ids) {
            // Each job's body decoded, as the other plain loops and
            // muster's handler (`Args<serde_json::Value>`) do.
            let body = match entry.map.get("body") {
                Some(redis::Value::BulkString(b)) => b.as_slice(),
                _ => &[],
            };
            let _: serde_json::Value = serde_json::from_slice(body)?;
            ids.push(entry.id.clone());
        }
        // The best plain loop acknowledges a whole read in one command.
        if !ids.is_empty() {
            started.get_or_insert_with(Instant::now);
            let _: u64 = redis::cmd("XACK")
                .arg(&key)
                .arg("g")
                .arg(&ids)
                .query_async(&mut conn)
                .await?;
        }
        n += ids.len() as u64;
    }
    let elapsed = started.map_or(Duration::ZERO, |t| t.elapsed());
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// RPC calls/s over RabbitMQ or NATS, one caller and `in_flight` callers,
/// against a plain request/reply loop: lapin with direct reply-to, or
/// async-nats request/reply on a queue subscription.
pub(super) async fn broker_rpc(cmd: &BenchCmd, url: &str) -> anyhow::Result<()> {
    let kind = url.split("://").next().unwrap_or("");
    anyhow::ensure!(
        kind == "amqp" || kind == "nats",
        "broker-rpc needs --bus amqp://... or nats://..."
    );
    let payload = "x".repeat(cmd.size);
    let server = Service::new("benchrpc")
        .rpc("echo", |Args(s): Args<String>| async move {
            Ok::<_, RpcError>(s)
        })
        .max_in_flight(256)
        .start(muster::bus::connect(url, None).await?)
        .await?;
    let client = Client::new(muster::bus::connect(url, None).await?);
    let _: String = client.call("benchrpc.echo", &payload).await?;
    if kind == "nats" {
        let (subject, task) = super::nats::plain_rpc_server(url).await?;
        for lanes in [1usize, cmd.in_flight] {
            let m = muster_calls(&client, &payload, lanes, cmd.duration).await?;
            let p = super::nats::plain_calls(url, &subject, &payload, lanes, cmd.duration).await?;
            report(&format!("nats rpc x{lanes}"), "calls", m, "async-nats", p);
        }
        task.abort();
    } else {
        let plain = plain_rpc_server(url).await?;
        for lanes in [1usize, cmd.in_flight] {
            let m = muster_calls(&client, &payload, lanes, cmd.duration).await?;
            let p = plain_calls(url, &plain.queue, &payload, lanes, cmd.duration).await?;
            report(&format!("amqp rpc x{lanes}"), "calls", m, "lapin", p);
        }
        plain.task.abort();
    }
    server.stop().await;
    Ok(())
}

/// Events/s from a publisher to a subscriber over a broker (NATS or
/// Redis), muster against the broker's plain client, with how many
/// arrived.
pub(super) async fn broker_events(cmd: &BenchCmd, url: &str) -> anyhow::Result<()> {
    let events = cmd.events.min(1_000_000);
    let (kind, name) = match url.split("://").next().unwrap_or("") {
        "nats" => ("nats", "async-nats"),
        "redis" | "rediss" => ("redis", "redis"),
        other => {
            anyhow::bail!("broker-events needs --bus nats://... or redis://..., not {other}://")
        }
    };
    let m = muster_events(url, events, cmd.size).await?;
    let p = match kind {
        "nats" => super::nats::plain_events(url, events, cmd.size).await?,
        _ => redis_events(url, events, cmd.size).await?,
    };
    report(&format!("{kind} events"), "events", m.0, name, p.0);
    println!(
        "               received: muster {} of {events}, {name} {} of {events}",
        m.1, p.1
    );
    Ok(())
}

/// Events/s of plain Redis pub/sub: `PUBLISH` one at a time (each
/// answered, as muster's publish is), a `SUBSCRIBE`d connection counting.
async fn redis_events(url: &str, events: u64, size: usize) -> anyhow::Result<(f64, u64)> {
    let client = redis::Client::open(plain_url(url).as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let channel = unique("bench.plain.ev");
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let value = job_body(size);
    let window = Arc::new(super::nats::Window::default());
    let counted = window.clone();
    let reader = tokio::spawn(async move {
        let decoded = pubsub.into_on_message().map(|m| {
            let _: serde_json::Value =
                serde_json::from_slice(m.get_payload_bytes()).unwrap_or_default();
        });
        counted.count(events, decoded).await
    });
    let started = Instant::now();
    for sent in 0..events {
        window.room_for(sent).await;
        let body = serde_json::to_vec(&value)?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(body)
            .query_async(&mut conn)
            .await?;
    }
    let last = reader.await?;
    let n = window.got.load(Ordering::Relaxed);
    Ok((n as f64 / last.duration_since(started).as_secs_f64(), n))
}

async fn muster_events(url: &str, events: u64, size: usize) -> anyhow::Result<(f64, u64)> {
    let publisher = Client::new(muster::bus::connect(url, None).await?);
    let subscriber = Client::new(muster::bus::connect(url, None).await?);
    let topic = unique("bench.ev");
    let sub = subscriber.subscribe(&[topic.as_str()]).await?;
    let body = job_body(size);
    let window = Arc::new(super::nats::Window::default());
    let counted = window.clone();
    // The subscription is a stream itself, as the plain loop's subscriber
    // is (`stream::unfold` around `recv` moved it in and out of a future
    // on every event).
    let reader = tokio::spawn(async move { counted.count(events, sub).await });
    let started = Instant::now();
    for sent in 0..events {
        window.room_for(sent).await;
        publisher.publish(&topic, &body).await?;
    }
    let last = reader.await?;
    let n = window.got.load(Ordering::Relaxed);
    Ok((n as f64 / last.duration_since(started).as_secs_f64(), n))
}

async fn muster_calls(
    client: &Client,
    payload: &str,
    lanes: usize,
    d: Duration,
) -> anyhow::Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..lanes)
        .map(|_| {
            let (client, payload, count) = (client.clone(), payload.to_owned(), count.clone());
            tokio::spawn(async move {
                while started.elapsed() < d {
                    let r: Result<String, _> = client.call("benchrpc.echo", &payload).await;
                    if r.is_ok() {
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

struct PlainServer {
    queue: String,
    task: tokio::task::JoinHandle<()>,
}

/// A plain lapin RPC server: consume, reply to `reply_to` with the
/// correlation id, ack.
async fn plain_rpc_server(url: &str) -> anyhow::Result<PlainServer> {
    let conn = Connection::connect(&plain_url(url), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let queue = unique("bench-plain-rpc");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "plain-server".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let task = tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(d)) = consumer.next().await {
            let (Some(to), Some(corr)) = (
                d.properties.reply_to().clone(),
                d.properties.correlation_id().clone(),
            ) else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            let body = serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "result": reply["params"], "id": reply["id"]}))
                .unwrap_or_default();
            let _ = ch
                .basic_publish(
                    "".into(),
                    to,
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_correlation_id(corr),
                )
                .await;
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
    Ok(PlainServer { queue, task })
}

async fn plain_calls(
    url: &str,
    queue: &str,
    payload: &str,
    lanes: usize,
    d: Duration,
) -> anyhow::Result<f64> {
    let conn =
        Arc::new(Connection::connect(&plain_url(url), ConnectionProperties::default()).await?);
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let ch: Channel = conn.create_channel().await?;
        let mut replies = ch
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                format!("lane-{lane}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let (queue, count, payload) = (queue.to_owned(), count.clone(), payload.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < d {
                n += 1;
                let corr = n.to_string();
                // Encoded per call and the reply decoded, as muster's
                // client does and as a real caller must.
                let body = serde_json::to_vec(&serde_json::json!(
                    {"jsonrpc": "2.0", "method": "echo", "params": [&payload], "id": n}
                ))
                .unwrap_or_default();
                let sent = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default()
                            .with_reply_to("amq.rabbitmq.reply-to".into())
                            .with_correlation_id(corr.as_str().into()),
                    )
                    .await;
                if sent.is_err() {
                    break;
                }
                match replies.next().await {
                    Some(Ok(reply)) => {
                        let _: serde_json::Value =
                            serde_json::from_slice(&reply.data).unwrap_or_default();
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(0, "bench done".into()).await;
    Ok(rate)
}
