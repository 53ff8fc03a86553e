//! Pub/sub: a publisher process, a forwarder process, a subscriber here.

use std::time::{Duration, Instant};

use muster::Client;
use omq_tokio::{Options, Socket, SocketType};

use super::{BenchCmd, free_ports, report, spawn_peer};

/// Counts arrivals until `expected` or 2 s of silence; rate between the
/// first and the last event.
struct Counter {
    first: Option<Instant>,
    last: Instant,
    n: u64,
}

impl Counter {
    fn new() -> Self {
        Self {
            first: None,
            last: Instant::now(),
            n: 0,
        }
    }

    fn hit(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
        self.n += 1;
    }

    fn rate(&self) -> f64 {
        match self.first {
            Some(f) if self.n > 1 => {
                (self.n - 1) as f64 / self.last.duration_since(f).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

pub(super) async fn run(cmd: &BenchCmd) -> anyhow::Result<()> {
    let count = cmd.events;
    let size = cmd.size.to_string();
    let count_s = count.to_string();

    // Raw: PUB → XSUB/XPUB proxy → SUB, with no-drop back-pressure.
    let port = free_ports()?;
    let mut proxy = spawn_peer(&["raw-proxy", "--at", &format!("tcp://127.0.0.1:{port}")])?;
    let sub = Socket::new(SocketType::Sub, Options::default());
    sub.connect(format!("tcp://127.0.0.1:{}", port + 1).as_str())
        .await?;
    sub.subscribe("bench.").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut publisher = spawn_peer(&[
        "raw-pub",
        "--at",
        &format!("tcp://127.0.0.1:{port}"),
        "--count",
        &count_s,
        "--size",
        &size,
    ])?;
    let mut raw = Counter::new();
    while raw.n < count {
        match tokio::time::timeout(Duration::from_secs(2), sub.recv()).await {
            Ok(Ok(_)) => raw.hit(),
            _ => break,
        }
    }
    publisher.wait().await.ok();
    proxy.kill().await.ok();

    // muster: publisher process → `muster bus` process → Client::subscribe here.
    let port = free_ports()?;
    let url = format!("zmq://127.0.0.1:{port}");
    let mut bus = tokio::process::Command::new(super::exe()?)
        .args(["bus", "--listen", &url, "--log-level", "warn"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let client = Client::connect(&url).await?;
    let mut subscription = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.subscribe(&["bench.>"]).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    let mut publisher = spawn_peer(&[
        "muster-pub",
        "--at",
        &url,
        "--count",
        &count_s,
        "--size",
        &size,
    ])?;
    let mut got = Counter::new();
    while got.n < count {
        match tokio::time::timeout(Duration::from_secs(2), subscription.recv()).await {
            Ok(Some(_)) => got.hit(),
            _ => break,
        }
    }
    publisher.wait().await.ok();
    bus.kill().await.ok();

    report(
        "pubsub",
        "events",
        got.rate(),
        "raw PUB-XSUB/XPUB-SUB",
        raw.rate(),
    );
    println!(
        "{:<14} delivered: muster {}/{count}, raw {}/{count}",
        "", got.n, raw.n
    );
    Ok(())
}
