//! Run with a bus: `cargo run -p muster-example-subscriber`.

fn main() -> muster::Result<()> {
    muster_example_subscriber::service().run()
}
