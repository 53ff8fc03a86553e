//! Run with a bus: `muster bus &` then `cargo run -p muster-example-echo`,
//! and call it: `muster call echo.shout '{"text":"hi","times":2}'`.

fn main() -> muster::Result<()> {
    muster_example_echo::service().run()
}
