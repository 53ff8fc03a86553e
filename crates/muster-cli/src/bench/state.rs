//! Replicated state: changes per second delivered to three reader
//! processes, against the same number of plain events to three subscriber
//! processes in the same run; and the snapshot of a 100,000-key state.

use std::time::{Duration, Instant};

use anyhow::bail;
use muster::state::Delta;
use muster::{CallOptions, Client, Service};
use muster_zmq::{Bus, BusAddr, BusOptions};
use serde_json::{Value, json};

use super::{free_ports, report, spawn_peer};

const READERS: usize = 3;

/// Polls `service.method` on each instance until all answer `want`.
async fn wait_all(client: &Client, service: &str, method: &str, want: u64) -> anyhow::Result<()> {
    wait_n(client, service, method, want, READERS).await
}

/// Polls `service.method` on each instance until `n` instances answer `want`.
async fn wait_n(
    client: &Client,
    service: &str,
    method: &str,
    want: u64,
    n: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let instances: Vec<String> = client
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.service == service)
            .map(|i| i.instance)
            .collect();
        let mut done = instances.len() >= n;
        for i in &instances {
            let got: u64 = client
                .call_with(
                    &format!("{service}.{method}"),
                    &json!({}),
                    CallOptions::default().instance(i.clone()),
                )
                .await
                .unwrap_or(0);
            done &= got >= want;
        }
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{service} did not reach {want}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) async fn run(changes: u64) -> anyhow::Result<()> {
    let port = free_ports()?;
    let url = format!("zmq://127.0.0.1:{port}");
    let bus = Bus::start(url.parse::<BusAddr>()?, BusOptions::default()).await?;
    let client = Client::connect(&url).await?;

    // Baseline: the same messages as plain events to three subscribers.
    let mut peers = Vec::new();
    for _ in 0..READERS {
        peers.push(spawn_peer(&["event-counter", "--at", &url])?);
    }
    wait_all(&client, "benchcounter", "count", 0).await?;
    let t0 = Instant::now();
    for i in 0..changes {
        let msg =
            json!({"epoch": "E", "seq": i + 1, "change": {"set": {format!("k{}", i % 1000): i}}});
        client.publish("benchev.items", &msg).await?;
    }
    wait_all(&client, "benchcounter", "count", changes).await?;
    let events_rate = changes as f64 / t0.elapsed().as_secs_f64();
    for mut p in peers.drain(..) {
        let _ = p.kill().await;
    }

    // State: an owner here, three reader processes.
    let owner = Service::new("benchstate")
        .state_out::<Delta<u64>>("items")
        .start(client.transport().clone())
        .await?;
    for _ in 0..READERS {
        peers.push(spawn_peer(&["state-reader", "--at", &url])?);
    }
    // Readers answer 0 until they hold a snapshot.
    owner
        .ctx()
        .update_state::<Delta<u64>, _>(|s| s.insert("start", 0))
        .await?;
    wait_all(&client, "benchreader", "seq", 1).await?;
    let t0 = Instant::now();
    for i in 0..changes {
        owner
            .ctx()
            .update_state::<Delta<u64>, _>(|s| s.insert(format!("k{}", i % 1000), i))
            .await?;
    }
    wait_all(&client, "benchreader", "seq", changes + 1).await?;
    let state_rate = changes as f64 / t0.elapsed().as_secs_f64();
    report(
        "state-changes",
        "changes",
        state_rate,
        "events x3",
        events_rate,
    );

    // Snapshot of a 100,000-key state.
    owner
        .ctx()
        .update_state::<Delta<u64>, _>(|s| {
            for i in 0..100_000u64 {
                s.insert(format!("key-{i:06}"), i);
            }
        })
        .await?;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let snap: Value = client
            .call_with(
                "benchstate.$state",
                &json!({"name": "items"}),
                CallOptions::default().timeout(Duration::from_secs(30)),
            )
            .await?;
        times.push(t.elapsed());
        bytes = serde_json::to_vec(&snap)?.len();
    }
    times.sort();
    // A reader joining now: spawn to holding the snapshot.
    let want = changes + 2;
    let t = Instant::now();
    peers.push(spawn_peer(&["state-reader", "--at", &url])?);
    wait_n(&client, "benchreader", "seq", want, READERS + 1).await?;
    let join = t.elapsed();
    println!(
        "{:<14} 100,000-key snapshot ({} KB): $state call p50 {:.1} ms; a new reader process holds it {:.0} ms after spawn",
        "state-snapshot",
        bytes / 1024,
        times[times.len() / 2].as_secs_f64() * 1e3,
        join.as_secs_f64() * 1e3
    );
    for mut p in peers {
        let _ = p.kill().await;
    }
    owner.stop().await;
    client.transport().close().await;
    bus.stop().await;
    Ok(())
}
