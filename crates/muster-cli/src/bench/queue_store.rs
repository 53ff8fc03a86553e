//! The embedded bus's work queues with each job store side by side: jobs
//! kept in memory (the baseline, measured in the same run) and in the job
//! log under each fsync policy. A round is a producer enqueueing with 64
//! in flight while a consumer acknowledges them, timed from the first
//! enqueue to the last ack: the job log's cost is in the enqueue (the
//! answer waits for the disk) as much as in the ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster::prelude::*;
use muster_zmq::{Bus, BusAddr, BusOptions, FsyncPolicy, QueueStore};

use super::broker::{enqueue_all, job_body, unique};
use super::{BenchCmd, free_ports, report};

/// Prints jobs/s of each store at prefetch 1 and 100, with the ratio to
/// the in-memory store.
pub(super) async fn run(cmd: &BenchCmd) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stores: Vec<(String, QueueStore)> = [
        ("disk always", FsyncPolicy::Always),
        ("disk 2ms", FsyncPolicy::Every(Duration::from_millis(2))),
        ("disk 10ms", FsyncPolicy::Every(Duration::from_millis(10))),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, fsync))| {
        let path = dir.path().join(format!("queues-{i}.redb"));
        (name.to_owned(), QueueStore::Disk { path, fsync })
    })
    .collect();
    for prefetch in [1usize, 100] {
        let jobs = if prefetch == 1 {
            cmd.jobs / 4
        } else {
            cmd.jobs
        };
        let memory = round(QueueStore::Memory, prefetch, jobs, cmd.size).await?;
        for (name, store) in &stores {
            let disk = round(store.clone(), prefetch, jobs, cmd.size).await?;
            report(
                &format!("queue p={prefetch} {name}"),
                "jobs",
                disk,
                "memory",
                memory,
            );
        }
    }
    Ok(())
}

/// One bus with `store`, `jobs` enqueued and consumed at once: jobs/s.
async fn round(store: QueueStore, prefetch: usize, jobs: u64, size: usize) -> anyhow::Result<f64> {
    let url = format!("zmq://127.0.0.1:{}", free_ports()?);
    let mut options = BusOptions::default();
    options.queue_store = store;
    let bus = Bus::start(url.parse::<BusAddr>()?, options).await?;
    let client = Client::connect(&url).await?;
    let queue = unique("bench-store");
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let h = Service::new("benchstore")
        .consume(&queue, move |Args(_): Args<serde_json::Value>| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, RpcError>(()) }
        })
        .prefetch(prefetch)
        .max_attempts(1)
        .start(muster::bus::connect(&url, None).await?)
        .await?;
    let started = Instant::now();
    enqueue_all(&client, &queue, &job_body(size), jobs).await?;
    while done.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(1)).await;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "consumer stalled"
        );
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    h.stop().await;
    bus.stop().await;
    Ok(rate)
}
