//! A scheduled service for muster's tests: every second (cron
//! `* * * * * *`) it publishes `ticker.tick {second, instance}`, where
//! `second` is the Unix second it fired for.

use muster::prelude::*;
use muster::schedule::{Clock, SystemClock};

fn main() -> muster::Result<()> {
    Service::new("ticker")
        .cron("* * * * * *", |ctx: Ctx| async move {
            let second = SystemClock.now().timestamp();
            let instance = ctx.instance().to_owned();
            ctx.publish(
                "ticker.tick",
                &serde_json::json!({"second": second, "instance": instance}),
            )
            .await
        })
        .run()
}
