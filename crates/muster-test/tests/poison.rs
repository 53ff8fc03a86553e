//! A poison job on each bus: a consumer process that aborts on one job,
//! restarted whenever it dies (as a host would). Each crash counts as an
//! attempt, so after `max_attempts` (3) crashes the job is in the
//! dead-letter queue with a reason that names the crash, unrun, and every
//! other job of the queue is processed. (The same under `muster up`, with
//! the host's restart policy and the exit signal in the reason, is
//! `crates/muster-cli/tests/poison.rs`.)
//!
//! On the embedded bus a dead consumer's jobs come back when its instance
//! misses its heartbeats; on Redis when another consumer claims them after
//! `claim_after` (the worker's is 2 s); on NATS after the ack wait (the
//! same 2 s); on RabbitMQ at once, when the dead consumer's connection
//! closes.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::process::Command;

use muster::Client;
use muster::queue::{QueueCommand, QueueReply};
use muster_test::{broker_url, eventually};

const WORKER: &str = env!("CARGO_BIN_EXE_muster-test-worker");
const POISON: u32 = 50;

/// Runs the worker and starts it again whenever it ends, as a host would,
/// until aborted (its worker is then killed); counts the aborts.
async fn supervise(url: String, queue: String, record: PathBuf, aborts: Arc<AtomicU32>) {
    loop {
        let mut child = Command::new(WORKER)
            .args(["--queue", &queue, "--record"])
            .arg(&record)
            .args(["--prefetch", "1", "--max-attempts", "3"])
            .args(["--abort-on", &POISON.to_string()])
            .args(["--bus", &url, "--log-level", "error"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the worker starts");
        let status = child.wait().await.expect("the worker is reaped");
        // Only the poison job aborts it; a worker that could not start
        // (a broker busy loading, on a loaded machine) is started again
        // without counting.
        if status.signal() == Some(6) {
            aborts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn poison(label: &str, url: &str) {
    let dir = std::env::temp_dir().join(format!(
        "muster-poison-{label}-{}-{:x}",
        std::process::id(),
        muster::id::random_u64() & 0xffff
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join("done.log");
    let queue = format!("poison-{:x}", muster::id::random_u64() & 0xff_ffff);
    let client = Client::new(muster::bus::connect(url, None).await.expect("connect"));
    // Multiples of 10: none is one the worker fails on purpose
    // (`n % 1000 == 7`); 50 aborts it.
    let good: BTreeSet<u32> = (0..20).map(|k| k * 10).filter(|n| *n != POISON).collect();
    for k in 0..20u32 {
        client
            .enqueue(&queue, &serde_json::json!({ "n": k * 10 }))
            .await
            .unwrap();
    }
    let aborts = Arc::new(AtomicU32::new(0));
    let supervisor = tokio::spawn(supervise(
        url.to_owned(),
        queue.clone(),
        record.clone(),
        aborts.clone(),
    ));
    let dead = eventually(
        Duration::from_secs(120),
        &format!("poison {label}: every good job done, the poison job dead"),
        || async {
            let seen: BTreeSet<u32> = muster_test::recorded_numbers(&dir).into_keys().collect();
            if !seen.is_superset(&good) {
                return None;
            }
            match client
                .transport()
                .queue_command(&format!("{queue}.dead"), QueueCommand::Peek { count: 10 })
                .await
            {
                Ok(QueueReply::Jobs(dead)) if !dead.is_empty() => Some(dead),
                _ => None,
            }
        },
    )
    .await;
    supervisor.abort();
    let _ = supervisor.await; // its worker, dropped, is killed
    let crashes = aborts.load(Ordering::Relaxed);
    assert_eq!(dead.len(), 1, "only the poison job is dead: {dead:?}");
    let job = &dead[0];
    assert_eq!(job.body.as_ref(), format!(r#"{{"n":{POISON}}}"#).as_bytes());
    let reason = job.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("consumer died") && reason.contains("gave up after 3 attempts"),
        "poison {label}: {reason}"
    );
    assert_eq!(crashes, 3, "poison {label}: one crash per attempt, no more");
    let _ = client
        .transport()
        .queue_command(&format!("{queue}.dead"), QueueCommand::Purge)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_sets_a_poison_job_aside() {
    let url = muster_test::free_bus_url();
    let _bus = muster_test::start_bus(&url).await;
    poison("zmq", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sets_a_poison_job_aside() {
    let Some(url) = broker_url("MUSTER_TEST_REDIS", "poison::redis") else {
        return;
    };
    poison("redis", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_sets_a_poison_job_aside() {
    let Some(url) = broker_url("MUSTER_TEST_AMQP", "poison::rabbitmq") else {
        return;
    };
    poison("rabbitmq", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sets_a_poison_job_aside() {
    let Some(url) = broker_url("MUSTER_TEST_NATS", "poison::nats") else {
        return;
    };
    poison("nats", &url).await;
}
