//! Run in main mode: `cargo run -p muster-example-producer -- -m --count 5`.

/// mimalloc, not the system's allocator: a call allocates a few dozen
/// small buffers, and mimalloc's are cheaper to take and give back
/// (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> muster::Result<()> {
    muster_example_producer::service().run()
}
