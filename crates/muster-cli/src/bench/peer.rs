//! The processes on the other side of each benchmark.

use std::io::{Read, Write};
use std::process::ExitCode;

use bytes::Bytes;
use muster::prelude::*;
use omq_tokio::{Message, Options, Proxy, Socket, SocketType};

#[derive(Debug, clap::Args)]
pub(crate) struct PeerCmd {
    /// raw-router | tcp-echo | muster-echo | muster-echo-auth | raw-proxy | raw-pub | muster-pub | state-reader | event-counter
    kind: String,
    /// Endpoint (raw peers) or bus URL (muster peers).
    #[arg(long)]
    at: String,
    /// Messages to publish.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Payload size.
    #[arg(long, default_value_t = 100)]
    size: usize,
}

pub(crate) fn run_peer(p: PeerCmd) -> ExitCode {
    if p.kind == "muster-echo" || p.kind == "muster-echo-auth" {
        let svc = if p.kind == "muster-echo" {
            Service::new("bench")
        } else {
            Service::new("bench-auth").require_auth()
        };
        let svc = svc.rpc("echo", |Args(s): Args<String>| async move { s });
        let argv = ["bench", "--bus", &p.at, "--log-level", "warn"].map(str::to_owned);
        return match svc.run_from(argv) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench peer: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if p.kind == "state-reader" || p.kind == "event-counter" {
        return run_service(counting_service(&p.kind), &p.at);
    }
    if p.kind == "tcp-echo" {
        return match tcp_echo(&p.at) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tcp-echo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Raw peers and the muster publisher are "a user's program": tokio's
    // default runtime, one worker per core, as `#[tokio::main]` gives.
    // (muster-echo above runs with `Service::run`'s own defaults.)
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match p.kind.as_str() {
            "raw-router" => raw_router(&p.at).await,
            "raw-muster-server" => raw_muster_server(&p.at).await,
            "raw-proxy" => raw_proxy(&p.at).await,
            "raw-pub" => raw_pub(&p.at, p.count, p.size).await,
            "muster-pub" => muster_pub(&p.at, p.count, p.size).await,
            "muster-sub" => muster_sub(&p.at, p.count).await,
            other => Err(anyhow::anyhow!("unknown peer {other}")),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench peer {}: {e:#}", p.kind);
            ExitCode::FAILURE
        }
    }
}

/// A reader of `benchstate/items` answering `seq`, or a subscriber to
/// `benchev.>` answering `count`: what the state benchmark measures.
fn counting_service(kind: &str) -> Service {
    use muster::state::{Delta, State};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    if kind == "state-reader" {
        return Service::new("benchreader")
            .state_in::<Delta<u64>>("benchstate/items")
            .rpc("seq", |s: State<Delta<u64>>| async move {
                Ok::<_, RpcError>(if s.is_stale() { 0 } else { s.seq() })
            });
    }
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    Service::new("benchcounter")
        .subscribe("benchev.>", move |_: Args<serde_json::Value>| {
            let c = seen.clone();
            async move {
                c.fetch_add(1, Ordering::Relaxed);
            }
        })
        .rpc("count", move || {
            let c = count.clone();
            async move { c.load(Ordering::Relaxed) }
        })
}

fn run_service(svc: Service, bus: &str) -> ExitCode {
    let argv = ["peer", "--bus", bus, "--log-level", "warn"].map(str::to_owned);
    match svc.run_from(argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tcp_echo(at: &str) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(at)?;
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 100];
    loop {
        if s.read_exact(&mut buf).is_err() {
            return Ok(());
        }
        s.write_all(&buf)?;
    }
}

async fn raw_router(at: &str) -> anyhow::Result<()> {
    let s = Socket::new(SocketType::Router, Options::default());
    s.bind(at).await?;
    loop {
        let m = s.recv().await?;
        s.send(m).await?;
    }
}

/// Answers muster requests with a canned reply, copying only the id: a
/// server that costs next to nothing, to measure a muster client alone.
async fn raw_muster_server(at: &str) -> anyhow::Result<()> {
    let s = Socket::new(SocketType::Router, Options::default());
    s.bind(at).await?;
    let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":"ok"}"#);
    loop {
        let m = s.recv().await?;
        let (Some(identity), Some(tag), Some(header)) =
            (m.part_bytes(0), m.part_bytes(1), m.part_bytes(2))
        else {
            continue;
        };
        let h: serde_json::Value = serde_json::from_slice(&header).unwrap_or_default();
        let reply = format!(r#"{{"id":{},"kind":"reply"}}"#, h["id"]);
        s.send(Message::multipart([
            identity,
            tag,
            Bytes::from(reply),
            body.clone(),
        ]))
        .await?;
    }
}

async fn raw_proxy(at: &str) -> anyhow::Result<()> {
    let (host, port) = at
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("bad endpoint"))?;
    let port: u16 = port.parse()?;
    let xsub = Socket::new(SocketType::XSub, Options::default());
    xsub.bind(format!("{host}:{port}").as_str()).await?;
    xsub.subscribe("").await?;
    let o = Options {
        xpub_nodrop: true,
        send_hwm: 10_000,
        ..Default::default()
    };
    let xpub = Socket::new(SocketType::XPub, o);
    xpub.bind(format!("{host}:{}", port + 1).as_str()).await?;
    Proxy::new(xsub, xpub).run().await?;
    Ok(())
}

async fn raw_pub(at: &str, count: u64, size: usize) -> anyhow::Result<()> {
    let o = Options {
        xpub_nodrop: true,
        ..Default::default()
    };
    let s = Socket::new(SocketType::Pub, o);
    s.connect(at).await?;
    s.wait_subscribed(1, std::time::Duration::from_secs(5))
        .await?;
    let topic = Bytes::from_static(b"bench.tick");
    let payload = Bytes::from(vec![b'x'; size]);
    for _ in 0..count {
        s.send(Message::multipart([topic.clone(), payload.clone()]))
            .await?;
    }
    s.close().await?;
    Ok(())
}

async fn muster_pub(bus: &str, count: u64, size: usize) -> anyhow::Result<()> {
    let client = muster::Client::connect(bus).await?;
    let payload = "x".repeat(size.saturating_sub(2));
    for _ in 0..count {
        client.publish("bench.tick", &payload).await?;
    }
    client.transport().close().await;
    Ok(())
}

/// Receives `count` events and prints the rate (for profiling one side).
async fn muster_sub(bus: &str, count: u64) -> anyhow::Result<()> {
    let client = muster::Client::connect(bus).await?;
    let mut sub = client.subscribe(&["bench.>"]).await?;
    eprintln!("subscribed");
    let mut first = None;
    let mut n = 0;
    while n < count {
        if sub.recv().await.is_none() {
            break;
        }
        first.get_or_insert_with(std::time::Instant::now);
        n += 1;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!("{n} events in {secs:.2} s: {:.0}/s", n as f64 / secs);
    Ok(())
}
