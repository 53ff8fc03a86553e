//! Measures the framework's own cost per call on the in-memory transport
//! (no sockets): `cargo run --release -p muster --example percall`.
//!
//! `percall [CALLS] [--logs]`: with `--logs`, an info-level `tracing`
//! subscriber is installed (writing nowhere), as in a service that logs
//! at info: each request's `rpc` span (method, request and trace ids) is
//! then recorded, which is what tracing costs a call that exports nothing.

use std::time::Instant;

use muster::prelude::*;
use muster::testing::TestBus;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u32 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(300_000);
    if args.iter().any(|a| a == "--logs") {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(std::io::sink)
            .init();
    }
    let bus = TestBus::new();
    bus.start(Service::new("bench").rpc("echo", |Args(s): Args<String>| async move { s }))
        .await
        .expect("start");
    let payload = "x".repeat(98);
    let start = Instant::now();
    for _ in 0..n {
        let _: String = bus
            .client()
            .call("bench.echo", &payload)
            .await
            .expect("call");
    }
    let el = start.elapsed();
    println!(
        "{n} calls in {el:?}: {:.0} calls/s, {:.2} µs/call",
        f64::from(n) / el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / f64::from(n)
    );
}
