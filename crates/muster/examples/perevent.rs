//! Counts what an event costs on a real broker: `perevent URL SIDE EVENTS`,
//! run under callgrind by `scripts/callgrind-perevent.sh`.
//!
//! One publisher and one subscriber, each on its own connection, in this
//! one process, the topology of `muster bench broker-events`: `EVENTS`
//! events of 100-byte JSON bodies, each encoded as it is published and
//! decoded as it arrives, the publisher held to [`AHEAD`] events ahead of
//! the subscriber so that none is dropped.
//!
//! - `SIDE = muster`: `Client::publish` and a `Client::subscribe`
//!   subscription.
//! - `SIDE = plain`: the plain loop of the same bench. On NATS, `async-nats`
//!   `publish` and `subscribe`; on Redis, the `redis` crate's `PUBLISH`
//!   (each answered) and a `SUBSCRIBE`d connection.
//!
//! The difference between two runs at two event counts is what one event
//! costs this process, publish and delivery together (the broker's own work
//! is not counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use muster::prelude::*;

#[global_allocator]
static GLOBAL: muster::Allocator = muster::Allocator;

/// Events the publisher may be ahead of the subscriber.
const AHEAD: u64 = 1_000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, side, events] = args.as_slice() else {
        eprintln!("usage: perevent URL muster|plain EVENTS");
        std::process::exit(2);
    };
    let events: u64 = events.parse().expect("EVENTS is a number");
    let window = std::sync::Arc::new(Window::default());
    let body = serde_json::json!({ "data": "x".repeat(88) });
    match (side.as_str(), url.starts_with("nats")) {
        ("muster", _) => muster_events(url, events, &body, window).await,
        ("plain", true) => plain_nats(url, events, &body, window).await,
        ("plain", false) => plain_redis(url, events, &body, window).await,
        (other, _) => panic!("perevent URL muster|plain EVENTS, not {other}"),
    }
}

#[derive(Default)]
struct Window {
    got: AtomicU64,
    more: tokio::sync::Notify,
}

impl Window {
    /// Counts `arrivals` until `events` have come.
    async fn count(&self, events: u64, arrivals: impl futures_util::Stream) {
        let mut arrivals = std::pin::pin!(arrivals);
        while self.got.load(Ordering::Relaxed) < events {
            let next = tokio::time::timeout(Duration::from_secs(60), arrivals.next());
            assert!(matches!(next.await, Ok(Some(_))), "events stopped coming");
            let n = self.got.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(AHEAD / 10) {
                self.more.notify_one();
            }
        }
    }

    async fn room_for(&self, sent: u64) {
        while sent >= self.got.load(Ordering::Relaxed) + AHEAD {
            self.more.notified().await;
        }
    }
}

async fn muster_events(
    url: &str,
    events: u64,
    body: &serde_json::Value,
    window: std::sync::Arc<Window>,
) {
    let publisher = Client::new(muster::bus::connect(url, None).await.expect("connect"));
    let subscriber = Client::new(muster::bus::connect(url, None).await.expect("connect"));
    let sub = subscriber
        .subscribe(&["perevent"])
        .await
        .expect("subscribe");
    let counted = window.clone();
    // A subscription's events come with their bodies decoded as JSON, as
    // the plain loops decode theirs.
    let reader = tokio::spawn(async move { counted.count(events, sub).await });
    for sent in 0..events {
        window.room_for(sent).await;
        publisher.publish("perevent", body).await.expect("publish");
    }
    reader.await.expect("reader");
}

async fn plain_nats(
    url: &str,
    events: u64,
    body: &serde_json::Value,
    window: std::sync::Arc<Window>,
) {
    let publisher = async_nats::connect(url).await.expect("connect");
    let subscriber = async_nats::ConnectOptions::new()
        .subscription_capacity(65_536)
        .connect(url)
        .await
        .expect("connect");
    let sub = subscriber.subscribe("perevent").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let counted = window.clone();
    let reader = tokio::spawn(async move {
        let decoded = sub.map(|m| {
            let _: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON body");
        });
        counted.count(events, decoded).await;
    });
    for sent in 0..events {
        window.room_for(sent).await;
        let bytes = serde_json::to_vec(body).expect("encode");
        publisher
            .publish("perevent", bytes.into())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    reader.await.expect("reader");
}

async fn plain_redis(
    url: &str,
    events: u64,
    body: &serde_json::Value,
    window: std::sync::Arc<Window>,
) {
    let client = redis::Client::open(url).expect("redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut pubsub = client.get_async_pubsub().await.expect("connect");
    pubsub.subscribe("perevent").await.expect("subscribe");
    let counted = window.clone();
    let reader = tokio::spawn(async move {
        let decoded = pubsub.into_on_message().map(|m| {
            let _: serde_json::Value =
                serde_json::from_slice(m.get_payload_bytes()).expect("JSON body");
        });
        counted.count(events, decoded).await;
    });
    for sent in 0..events {
        window.room_for(sent).await;
        let bytes = serde_json::to_vec(body).expect("encode");
        let _: i64 = redis::cmd("PUBLISH")
            .arg("perevent")
            .arg(bytes)
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
    }
    reader.await.expect("reader");
}
