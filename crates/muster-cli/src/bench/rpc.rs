//! RPC scenarios: one synchronous caller, and many calls in flight.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster::{CallOptions, Client};
use muster_zmq::{Bus, BusAddr, BusOptions};
use omq_tokio::{Message, Options, Socket, SocketType};

use super::{BenchCmd, free_ports, report, spawn_peer};

pub(super) async fn muster_server() -> anyhow::Result<(Bus, tokio::process::Child, Client)> {
    let port = free_ports()?;
    let url = format!("zmq://127.0.0.1:{port}");
    let addr: BusAddr = url.parse()?;
    let bus = Bus::start(addr, BusOptions::default()).await?;
    let child = spawn_peer(&["muster-echo", "--at", &url])?;
    let client = Client::connect(&url).await?;
    crate::demo::wait_for(&client, &[("bench", 1)]).await?;
    Ok((bus, child, client))
}

pub(super) async fn raw_dealer() -> anyhow::Result<(tokio::process::Child, Socket)> {
    let port = free_ports()?;
    let ep = format!("tcp://127.0.0.1:{port}");
    let child = spawn_peer(&["raw-router", "--at", &ep])?;
    let s = Socket::new(SocketType::Dealer, Options::default());
    s.connect(ep.as_str()).await?;
    s.wait_connected(1, Duration::from_secs(10)).await?;
    Ok((child, s))
}

/// One caller, one call at a time.
pub(super) async fn sync(cmd: &BenchCmd) -> anyhow::Result<()> {
    let payload = "x".repeat(cmd.size.saturating_sub(2));

    // Raw DEALER → ROUTER round trips.
    let (mut child, s) = raw_dealer().await?;
    let body = Bytes::from(vec![b'x'; cmd.size]);
    let raw = timed(cmd.duration, || async {
        s.send(Message::single(body.clone())).await?;
        s.recv().await?;
        Ok(())
    })
    .await?;
    child.kill().await.ok();

    // Plain TCP ping-pong: the floor of this machine.
    let port = free_ports()?;
    let at = format!("127.0.0.1:{port}");
    let mut tcp_child = spawn_peer(&["tcp-echo", "--at", &at])?;
    let duration = cmd.duration;
    let size = cmd.size;
    let tcp = tokio::task::spawn_blocking(move || tcp_pingpong(&at, size, duration)).await??;
    tcp_child.kill().await.ok();

    // muster: Client::call to an instance in another process.
    let (bus, mut child, client) = muster_server().await?;
    let muster = timed(cmd.duration, || async {
        let _: String = client.call("bench.echo", &payload).await?;
        Ok(())
    })
    .await?;
    child.kill().await.ok();
    bus.stop().await;

    report("rpc", "calls", muster, "raw DEALER-ROUTER", raw);
    println!(
        "{:<14} tcp ping-pong floor {:>12} round trips/s   muster/tcp {:.2}",
        "",
        super::fmt_rate(tcp),
        muster / tcp
    );
    Ok(())
}

fn tcp_pingpong(at: &str, size: usize, duration: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match std::net::TcpStream::connect(at) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    s.set_nodelay(true)?;
    let out = vec![b'x'; size.min(100)];
    let mut back = vec![0u8; out.len()];
    // The echo peer reads exactly 100 bytes at a time.
    let out = if out.len() == 100 {
        out
    } else {
        vec![b'x'; 100]
    };
    back.resize(100, 0);
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Runs `op` in a loop for `duration` after a short warm-up; ops per second.
async fn timed<F, Fut>(duration: Duration, mut op: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        op().await?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        op().await?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Many calls in flight from one process.
pub(super) async fn pipelined(cmd: &BenchCmd) -> anyhow::Result<()> {
    let in_flight = cmd.in_flight.max(1);

    // Raw: one DEALER, `in_flight` messages outstanding, one task.
    let (mut child, s) = raw_dealer().await?;
    let body = Bytes::from(vec![b'x'; cmd.size]);
    for _ in 0..in_flight {
        s.send(Message::single(body.clone())).await?;
    }
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        s.recv().await?;
        s.send(Message::single(body.clone())).await?;
    }
    let cpu = CpuMeter::start(child.id());
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < cmd.duration {
        s.recv().await?;
        s.send(Message::single(body.clone())).await?;
        n += 1;
    }
    let raw = n as f64 / start.elapsed().as_secs_f64();
    let raw_cpu = cpu.per_thousand(n);
    child.kill().await.ok();

    // muster: `in_flight` tasks, each calling in a loop.
    let (bus, mut child, client) = muster_server().await?;
    let payload = Arc::new("x".repeat(cmd.size.saturating_sub(2)));
    let (muster, muster_cpu) =
        pipelined_loop(&client, in_flight, &payload, cmd.duration, child.id()).await?;
    child.kill().await.ok();
    bus.stop().await;
    report(
        &format!("rpc x{in_flight}"),
        "calls",
        muster,
        "raw DEALER-ROUTER",
        raw,
    );
    let total = |(caller, server): (f64, f64)| caller + server;
    println!(
        "{:<14} CPU per 1,000 calls (ms, caller + instance): muster {:.1} + {:.1}   raw {:.1} + {:.1}   ratio {:.2}",
        "",
        muster_cpu.0,
        muster_cpu.1,
        raw_cpu.0,
        raw_cpu.1,
        total(muster_cpu) / total(raw_cpu).max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// User and system CPU of this process (the caller) and of one other (the
/// instance) over a measured window, from `/proc`. Ticks are 10 ms: a
/// window of a few seconds at full load reads to within a few percent.
pub(super) struct CpuMeter {
    server: Option<u32>,
    at_start: (u64, u64),
}

impl CpuMeter {
    pub(super) fn start(server: Option<u32>) -> Self {
        Self {
            server,
            at_start: Self::ticks(server),
        }
    }

    fn ticks(server: Option<u32>) -> (u64, u64) {
        let of = |pid: u32| {
            procfs::process::Process::new(i32::try_from(pid).unwrap_or(0))
                .and_then(|p| p.stat())
                .map_or(0, |s| s.utime + s.stime)
        };
        (of(std::process::id()), server.map_or(0, of))
    }

    /// Milliseconds of CPU per 1,000 of the `calls` made since the start:
    /// (caller, instance).
    pub(super) fn per_thousand(&self, calls: u64) -> (f64, f64) {
        let now = Self::ticks(self.server);
        let ms_per_tick = 1000.0 / procfs::ticks_per_second() as f64;
        let per = |ticks: u64| ticks as f64 * ms_per_tick * 1000.0 / calls.max(1) as f64;
        (
            per(now.0.saturating_sub(self.at_start.0)),
            per(now.1.saturating_sub(self.at_start.1)),
        )
    }
}

/// `client`'s calls per second to `bench.echo` with `in_flight` calls
/// always outstanding, each from a task of its own, for `duration` after
/// a short warm-up.
pub(super) async fn muster_pipelined(
    client: &Client,
    in_flight: usize,
    payload: &Arc<String>,
    duration: Duration,
) -> anyhow::Result<f64> {
    Ok(pipelined_loop(client, in_flight, payload, duration, None)
        .await?
        .0)
}

/// The loop of [`muster_pipelined`]: calls per second, and the CPU per
/// 1,000 calls of this process and of the instance `server` over the
/// measured window.
async fn pipelined_loop(
    client: &Client,
    in_flight: usize,
    payload: &Arc<String>,
    duration: Duration,
    server: Option<u32>,
) -> anyhow::Result<(f64, (f64, f64))> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (client, payload, count, stop, measuring) = (
            client.clone(),
            payload.clone(),
            count.clone(),
            stop.clone(),
            measuring.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r: Result<String, _> = client
                    .call_with("bench.echo", payload.as_str(), CallOptions::default())
                    .await;
                if r.is_err() {
                    return r.map(|_| ());
                }
                if measuring.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = CpuMeter::start(server);
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let calls = count.load(Ordering::Relaxed);
    let rate = calls as f64 / start.elapsed().as_secs_f64();
    let cpu = cpu.per_thousand(calls);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok((rate, cpu))
}

/// RSS of an idle echo instance after it settled.
pub(super) async fn idle_rss() -> anyhow::Result<()> {
    let port = free_ports()?;
    let url = format!("zmq://127.0.0.1:{port}");
    let addr: BusAddr = url.parse()?;
    let bus = Bus::start(addr, BusOptions::default()).await?;
    // The example's own binary when it was built (cargo build --release
    // --workspace), else this one running the same service.
    let exe = super::exe()?;
    let example = exe.with_file_name("muster-example-echo");
    let (mut command, what) = if example.exists() {
        (
            tokio::process::Command::new(&example),
            "muster-example-echo",
        )
    } else {
        let mut c = tokio::process::Command::new(&exe);
        c.args(["__service", "echo"]);
        (c, "muster __service echo")
    };
    let mut child = command
        .args(["--bus", &url, "--log-level", "warn"])
        .kill_on_drop(true)
        .spawn()?;
    let client = Client::connect(&url).await?;
    crate::demo::wait_for(&client, &[("echo", 1)]).await?;
    let _: serde_json::Value = client
        .call("echo.shout", &serde_json::json!({"text": "warm"}))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map_or("?".to_owned(), |l| l[name.len()..].trim().to_owned())
    };
    println!(
        "{:<14} idle echo instance ({what}) RSS {} (anonymous {}, file-backed {}), {} threads",
        "idle-rss",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("Threads:")
    );
    child.kill().await.ok();
    bus.stop().await;
    Ok(())
}

/// Server capacity alone: a raw DEALER keeps `in_flight` pre-encoded muster
/// requests outstanding against a muster instance.
pub(super) async fn server_only(cmd: &BenchCmd) -> anyhow::Result<()> {
    let (bus, mut child, client) = muster_server().await?;
    let endpoint = client
        .instances()
        .await?
        .into_iter()
        .find(|i| i.service == "bench")
        .map(|i| i.endpoint)
        .ok_or_else(|| anyhow::anyhow!("bench service vanished"))?;
    let s = Socket::new(SocketType::Dealer, Options::default());
    s.connect(endpoint.as_str()).await?;
    s.wait_connected(1, Duration::from_secs(5)).await?;
    let payload = "x".repeat(cmd.size.saturating_sub(2));
    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "echo", "params": payload
    }))?);
    let header =
        Bytes::from_static(br#"{"id":"1","kind":"request","service":"bench","method":"echo"}"#);
    let tag = Bytes::from_static(b"MUSTER/1");
    let msg = || Message::multipart([tag.clone(), header.clone(), body.clone()]);
    for _ in 0..cmd.in_flight.max(1) {
        s.send(msg()).await?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < cmd.duration {
        s.recv().await?;
        s.send(msg()).await?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "{:<14} muster instance fed by a raw DEALER, {} in flight: {:>12} calls/s",
        "rpc-server",
        cmd.in_flight,
        super::fmt_rate(rate)
    );
    child.kill().await.ok();
    bus.stop().await;
    Ok(())
}

/// Client cost alone: muster callers against a server that does nothing.
pub(super) async fn client_only(cmd: &BenchCmd) -> anyhow::Result<()> {
    let port = free_ports()?;
    let ep = format!("tcp://127.0.0.1:{port}");
    let mut child = spawn_peer(&["raw-muster-server", "--at", &ep])?;
    let dir = std::env::temp_dir().join(format!("muster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("addresses.json");
    std::fs::write(&file, format!(r#"{{"services": {{"bench": ["{ep}"]}}}}"#))?;
    let client = Client::new(muster::bus::connect("zmq://unused:1", Some(&file)).await?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..cmd.in_flight.max(1) {
        let (client, count, stop) = (client.clone(), count.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _: String = client.call("bench.echo", "x").await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(cmd.duration).await;
    let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    println!(
        "{:<14} muster callers against a do-nothing server, {} in flight: {:>12} calls/s",
        "rpc-client",
        cmd.in_flight,
        super::fmt_rate(rate)
    );
    child.kill().await.ok();
    Ok(())
}
