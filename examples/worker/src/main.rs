//! Run with a bus: `muster bus &` then `cargo run -p muster-example-worker`,
//! and give it work: `muster queue push work '{"action":"ok"}'`.

fn main() -> muster::Result<()> {
    muster_example_worker::service().run()
}
