//! Run with a bus: `muster bus &` then `cargo run -p muster-example-worker`,
//! and give it work: `muster queue push work '{"action":"ok"}'`.

/// mimalloc, not the system's allocator: a call allocates a few dozen
/// small buffers, and mimalloc's are cheaper to take and give back
/// (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> muster::Result<()> {
    muster_example_worker::service().run()
}
