//! Measures the framework's own cost per call on the in-memory transport
//! (no sockets): `cargo run --release -p muster --example percall`.

use std::time::Instant;

use muster::prelude::*;
use muster::testing::TestBus;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bus = TestBus::new();
    bus.start(Service::new("bench").rpc("echo", |Args(s): Args<String>| async move { s }))
        .await
        .expect("start");
    let payload = "x".repeat(98);
    let n = 300_000;
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
        n as f64 / el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / n as f64
    );
}
