//! Run with a bus: `muster bus &` then `cargo run -p muster-example-worker`,
//! and give it work: `muster queue push work '{"action":"ok"}'`.

/// muster's allocator (mimalloc): a call allocates a few dozen small
/// buffers, cheaper to take and give back there (docs/benchmarks.md).
#[global_allocator]
static ALLOC: muster::Allocator = muster::Allocator;

fn main() -> muster::Result<()> {
    muster_example_worker::service().run()
}
