//! Run with a bus: `muster bus &` then `cargo run -p muster-example-echo`,
//! and call it: `muster call echo.shout '{"text":"hi","times":2}'`.

/// muster's allocator (mimalloc): a call allocates a few dozen small
/// buffers, cheaper to take and give back there (docs/benchmarks.md).
#[global_allocator]
static ALLOC: muster::Allocator = muster::Allocator;

fn main() -> muster::Result<()> {
    muster_example_echo::service().run()
}
