//! Run in main mode: `cargo run -p muster-example-producer -- -m --count 5`.

/// muster's allocator (mimalloc): a call allocates a few dozen small
/// buffers, cheaper to take and give back there (docs/benchmarks.md).
#[global_allocator]
static ALLOC: muster::Allocator = muster::Allocator;

fn main() -> muster::Result<()> {
    muster_example_producer::service().run()
}
