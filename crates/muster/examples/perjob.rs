//! Counts what a queue job costs the consuming process on a real broker:
//! `perjob URL SIDE JOBS [PREFETCH]`, run under callgrind by
//! `scripts/callgrind-perjob.sh`.
//!
//! - `SIDE = enqueue`: enqueue `JOBS` jobs (100-byte JSON bodies) with a
//!   muster `Client`, then stop.
//! - `SIDE = consume`: the same, then a `Service::consume` handler at
//!   `PREFETCH` (100 by default) works them all, as `muster bench queue`'s
//!   muster side does.
//!
//! - `SIDE = plain`: the same jobs, then worked by the plain loop of
//!   `muster bench queue`. On Redis, with the `redis` crate: `XREADGROUP
//!   COUNT PREFETCH`, each body decoded, one `XACK` per read. On NATS, with
//!   `async-nats` on muster's own JetStream consumer (a work-queue stream
//!   takes one): fetches of PREFETCH, each body decoded and acked.
//!
//! The difference between a consuming run and `enqueue`, at two job
//! counts, is the consumer's cost per job in this process (the broker's own
//! work is not counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster::prelude::*;

#[global_allocator]
static GLOBAL: muster::Allocator = muster::Allocator;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, side, jobs, rest @ ..] = args.as_slice() else {
        eprintln!("usage: perjob URL enqueue|consume JOBS [PREFETCH]");
        std::process::exit(2);
    };
    let jobs: u64 = jobs.parse().expect("JOBS is a number");
    let prefetch: usize = rest.first().map_or(100, |p| p.parse().expect("PREFETCH"));
    let transport = muster::bus::connect(url, None).await.expect("connect");
    let client = Client::new(transport.clone());
    // One name for every run, emptied before and after, so that runs
    // leave nothing behind on the broker but one empty queue.
    let queue = "perjob";
    purge(&transport, queue).await;
    let body = serde_json::json!({ "data": "x".repeat(88) });
    for _ in 0..jobs {
        client.enqueue(queue, &body).await.expect("enqueue");
    }
    if side == "consume" {
        let done = Arc::new(AtomicU64::new(0));
        let counter = done.clone();
        let started = Instant::now();
        let service = Service::new("perjob")
            .consume(queue, move |Args(_): Args<serde_json::Value>| {
                counter.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, RpcError>(()) }
            })
            .prefetch(prefetch)
            .start(muster::bus::connect(url, None).await.expect("connect"))
            .await
            .expect("start");
        while done.load(Ordering::Relaxed) < jobs {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(started.elapsed() < Duration::from_secs(600), "stalled");
        }
        service.stop().await;
    }
    if side == "plain" {
        if url.starts_with("nats") {
            plain_nats(url, &format!("muster_Q_{queue}"), jobs, prefetch).await;
        } else {
            plain_redis(url, &format!("muster:q:{queue}"), jobs, prefetch).await;
        }
    }
    purge(&transport, queue).await;
    transport.close().await;
}

async fn purge(transport: &muster::transport::SharedTransport, queue: &str) {
    if let Err(e) = transport
        .queue_command(queue, muster::queue::QueueCommand::Purge)
        .await
    {
        eprintln!("cannot purge {queue}: {e}");
    }
}

/// `muster bench queue`'s plain Redis loop, on the stream muster's
/// `enqueue` wrote (the same entries).
async fn plain_redis(url: &str, key: &str, jobs: u64, prefetch: usize) {
    let client = redis::Client::open(url).expect("redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: Result<(), _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("plain")
        .arg("0")
        .query_async(&mut conn)
        .await;
    let mut n = 0;
    while n < jobs {
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("plain")
            .arg("c")
            .arg("COUNT")
            .arg(prefetch)
            .arg("STREAMS")
            .arg(key)
            .arg(">")
            .query_async(&mut conn)
            .await
            .expect("XREADGROUP");
        let mut ids = Vec::new();
        for entry in read.keys.iter().flat_map(|k| &k.ids) {
            let body = match entry.map.get("body") {
                Some(redis::Value::BulkString(b)) => b.as_slice(),
                _ => &[],
            };
            let _: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
            ids.push(entry.id.clone());
        }
        if !ids.is_empty() {
            let _: u64 = redis::cmd("XACK")
                .arg(key)
                .arg("plain")
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .expect("XACK");
        }
        n += ids.len() as u64;
    }
    let _: Result<(), _> = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(key)
        .arg("plain")
        .query_async(&mut conn)
        .await;
}

/// `muster bench queue`'s plain NATS loop, on the stream muster's
/// `enqueue` wrote, through its durable consumer `muster`.
async fn plain_nats(url: &str, stream: &str, jobs: u64, prefetch: usize) {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect"));
    let stream = js.get_stream(stream).await.expect("the queue's stream");
    let consumer = stream
        .get_or_create_consumer(
            "muster",
            pull::Config {
                durable_name: Some("muster".into()),
                ack_policy: AckPolicy::Explicit,
                ..pull::Config::default()
            },
        )
        .await
        .expect("consumer");
    let mut n = 0;
    while n < jobs {
        let mut batch = consumer
            .fetch()
            .max_messages(prefetch)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let _: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON body");
            m.ack().await.expect("ack");
            n += 1;
        }
    }
}
