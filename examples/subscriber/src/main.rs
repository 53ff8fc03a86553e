//! Run with a bus: `cargo run -p muster-example-subscriber`.

/// muster's allocator (mimalloc): a call allocates a few dozen small
/// buffers, cheaper to take and give back there (docs/benchmarks.md).
#[global_allocator]
static ALLOC: muster::Allocator = muster::Allocator;

fn main() -> muster::Result<()> {
    muster_example_subscriber::service().run()
}
