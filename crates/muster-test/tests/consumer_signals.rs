//! Signals to consumer processes on every bus: SIGTERM stops intake,
//! finishes the running jobs, acknowledges them and exits 0.
//!
//! (Apart from `chaos.rs`, whose RabbitMQ test restarts the broker: test
//! binaries run one after another, tests within one at the same time.)

use std::process::Command;
use std::time::{Duration, Instant};

use muster::Client;
use muster_test::{Proc, broker_url};

const WORKER: &str = env!("CARGO_BIN_EXE_muster-test-worker");

/// SIGTERM to a consumer: it stops taking jobs, finishes the ones running,
/// acknowledges them and exits 0; nothing is left to deliver again.
async fn sigterm_finishes_running_jobs(url: &str) {
    let dir = std::env::temp_dir().join(format!(
        "muster-sigterm-{}-{:x}",
        std::process::id(),
        muster::id::random_u64() & 0xffff
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let queue = format!("term-{:x}", muster::id::random_u64() & 0xff_ffff);
    let client = Client::new(muster::bus::connect(url, None).await.expect("connect"));
    for n in 0..3 {
        client
            .enqueue(&queue, &serde_json::json!({ "n": n }))
            .await
            .unwrap();
    }
    let record = dir.join("w.log");
    let mut c = Command::new(WORKER);
    c.args(["--queue", &queue, "--record"]).arg(&record).args([
        "--delay-ms",
        "1500",
        "--bus",
        url,
        "--log-level",
        "error",
    ]);
    let mut w = Proc::spawn("muster-test-worker", c);
    // All three are taken (prefetch 20) and running: each takes 1.5 s.
    muster_test::eventually(
        Duration::from_secs(30),
        "the worker took all three jobs",
        || async {
            let s = muster_test::queue_stats(client.transport(), &queue).await;
            (s.ready == 0 && s.in_flight.is_none_or(|n| n == 3)).then_some(())
        },
    )
    .await;
    let t = Instant::now();
    let status = w.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "it waited for the running jobs"
    );
    let seen = muster_test::recorded_numbers(&dir);
    assert_eq!(seen.len(), 3, "the running jobs finished: {seen:?}");
    let s = muster_test::queue_stats(client.transport(), &queue).await;
    assert_eq!(
        (s.ready, s.in_flight.unwrap_or(0)),
        (0, 0),
        "all acknowledged, none given back: {s:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_jobs_zmq() {
    let url = muster_test::free_bus_url();
    let _bus = muster_test::start_bus(&url).await;
    sigterm_finishes_running_jobs(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_jobs_rabbitmq() {
    if let Some(url) = broker_url("MUSTER_TEST_AMQP", "consumer_signals::sigterm_rabbitmq") {
        sigterm_finishes_running_jobs(&url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_jobs_redis() {
    if let Some(url) = broker_url("MUSTER_TEST_REDIS", "consumer_signals::sigterm_redis") {
        sigterm_finishes_running_jobs(&url).await;
    }
}
