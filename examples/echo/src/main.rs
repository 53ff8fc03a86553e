//! Run with a bus: `muster bus &` then `cargo run -p muster-example-echo`,
//! and call it: `muster call echo.shout '{"text":"hi","times":2}'`.

/// mimalloc, not the system's allocator: a call allocates a few dozen
/// small buffers, and mimalloc's are cheaper to take and give back
/// (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> muster::Result<()> {
    muster_example_echo::service().run()
}
