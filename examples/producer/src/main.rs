//! Run in main mode: `cargo run -p muster-example-producer -- -m --count 5`.

fn main() -> muster::Result<()> {
    muster_example_producer::service().run()
}
