//! `muster bench queue` on a broker leaves the broker as it found it: the
//! queue and dead-letter queue it made for its run are deleted when it
//! ends (each run used to leave two behind). Checked on NATS and Redis,
//! under a prefix of the test's own, by listing what is left under it.
//! RabbitMQ names a queue as the queue, with no prefix, and AMQP has no
//! way to list queues, so the same code is not checked there. Each
//! broker's URL comes from `MUSTER_TEST_NATS`, `MUSTER_TEST_REDIS`;
//! without it the test says SKIPPED.

use futures_util::StreamExt;
use muster_test::broker_url;

const MUSTER: &str = env!("CARGO_BIN_EXE_muster");

/// The broker's URL with a prefix of this test's own, and that prefix.
fn prefixed(var: &str, test: &str) -> Option<(String, String)> {
    let base = broker_url(var, test)?;
    let prefix = format!("bc{:x}", muster::id::random_u64() & 0xff_ffff);
    let sep = if base.contains('?') { '&' } else { '?' };
    Some((format!("{base}{sep}prefix={prefix}"), prefix))
}

/// A short `muster bench queue` run on `url`, which must succeed.
async fn bench_queue(url: &str) {
    let out = tokio::process::Command::new(MUSTER)
        .args(["bench", "queue", "--jobs", "400", "--bus", url])
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .expect("muster bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("queue p=100"),
        "muster bench queue on {url}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn bench_queue_on_nats_deletes_its_streams() {
    let Some((url, prefix)) = prefixed("MUSTER_TEST_NATS", "bench_cleanup::nats") else {
        return;
    };
    bench_queue(&url).await;
    let plain = url.split('?').next().unwrap_or(&url);
    let js = async_nats::jetstream::new(async_nats::connect(plain).await.unwrap());
    // A listing that fails must fail the test, not pass it empty.
    let names: Vec<String> = js
        .stream_names()
        .map(|n| n.expect("JetStream lists its streams"))
        .collect()
        .await;
    let left: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&format!("{prefix}_Q_")))
        .collect();
    assert!(left.is_empty(), "streams left behind: {left:?}");
}

#[tokio::test]
async fn bench_queue_on_redis_deletes_its_streams() {
    let Some((url, prefix)) = prefixed("MUSTER_TEST_REDIS", "bench_cleanup::redis") else {
        return;
    };
    bench_queue(&url).await;
    let plain = url.split('?').next().unwrap_or(&url);
    let client = redis::Client::open(plain).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:q:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "queues left behind: {left:?}");
}
