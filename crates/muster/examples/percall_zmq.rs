//! One synchronous call at a time over the embedded ZeroMQ bus, caller,
//! instance and bus in this one process, beside raw DEALER-ROUTER round
//! trips of the same payload: what `scripts/callgrind-percall.sh` counts
//! the instructions of, so that the whole call path (sockets, header,
//! body, dispatch) is measured against the raw wire in a figure that does
//! not move with the machine's noise.
//!
//! `percall_zmq muster|raw CALLS [IN_FLIGHT]`: the script runs each side
//! twice with two call counts and divides the difference, so set-up and
//! warm-up cancel out. With `IN_FLIGHT` over 1, muster runs that many
//! tasks each calling in a loop, and raw keeps that many requests in
//! flight from one DEALER: the topology of `muster bench rpc-pipelined`,
//! whose CPU per call is issue 22's measure. `raw3` is raw with muster's
//! three frames (a tag, a 150-byte header, the body) instead of one: what
//! the framing alone costs the sockets.

use std::time::Duration;

use bytes::Bytes;
use muster::prelude::*;
use omq_tokio::{Message, Options, Socket, SocketType};

/// The allocator muster's own binaries use (docs/benchmarks.md, "The
/// allocator"), so the count is theirs.
#[global_allocator]
static ALLOC: muster::Allocator = muster::Allocator;

/// Calls made before the counted ones (connections, caches, registry).
const WARM_UP: u32 = 200;
/// The payload, as `muster bench` sends it: 100 bytes of JSON string.
const PAYLOAD: usize = 98;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let side = args.first().map_or("muster", String::as_str);
    let calls: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let in_flight: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    match side {
        "muster" => muster_calls(calls, in_flight).await,
        "raw" => raw_calls(calls, in_flight, false).await,
        "raw3" => raw_calls(calls, in_flight, true).await,
        other => panic!("percall_zmq muster|raw|raw3 CALLS [IN_FLIGHT], not {other}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn muster_calls(calls: u32, in_flight: u32) {
    let url = format!("zmq://127.0.0.1:{}", free_port());
    let bus = muster_zmq::Bus::start(url.parse().expect("bus url"), Default::default())
        .await
        .expect("bus");
    let transport = muster::bus::connect(&url, None).await.expect("transport");
    let service = Service::new("bench")
        .rpc("echo", |Args(s): Args<String>| async move { s })
        .start(transport)
        .await
        .expect("service");
    let client = Client::connect(&url).await.expect("client");
    let payload = "x".repeat(PAYLOAD);
    // Until the registry lists the instance.
    while client
        .call::<_, String>("bench.echo", &payload)
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..WARM_UP {
        let _: String = client.call("bench.echo", &payload).await.expect("call");
    }
    let callers: Vec<_> = (0..in_flight)
        .map(|i| {
            let (client, payload) = (client.clone(), payload.clone());
            // The calls shared out, the first callers taking the remainder.
            let mine = calls / in_flight + u32::from(i < calls % in_flight);
            tokio::spawn(async move {
                for _ in 0..mine {
                    let _: String = client.call("bench.echo", &payload).await.expect("call");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller");
    }
    service.stop().await;
    bus.stop().await;
}

async fn raw_calls(calls: u32, in_flight: u32, three: bool) {
    let at = format!("tcp://127.0.0.1:{}", free_port());
    let router = Socket::new(SocketType::Router, Options::default());
    router.bind(at.as_str()).await.expect("bind");
    let echo = tokio::spawn(async move {
        while let Ok(m) = router.recv().await {
            if router.send(m).await.is_err() {
                break;
            }
        }
    });
    let dealer = Socket::new(SocketType::Dealer, Options::default());
    dealer.connect(at.as_str()).await.expect("connect");
    dealer
        .wait_connected(1, Duration::from_secs(10))
        .await
        .expect("connected");
    let body = Bytes::from(vec![b'x'; PAYLOAD + 2]);
    let header = Bytes::from(vec![b'h'; 150]);
    let msg = || {
        if three {
            Message::multipart([
                Bytes::from_static(b"MUSTER/1"),
                header.clone(),
                body.clone(),
            ])
        } else {
            Message::single(body.clone())
        }
    };
    let total = WARM_UP + calls;
    let mut sent = 0;
    for _ in 0..total.min(in_flight) {
        dealer.send(msg()).await.expect("send");
        sent += 1;
    }
    for _ in 0..total {
        dealer.recv().await.expect("recv");
        if sent < total {
            dealer.send(msg()).await.expect("send");
            sent += 1;
        }
    }
    echo.abort();
}
