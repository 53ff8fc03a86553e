//! A main-mode producer: publishes `clock.tick` events `{n}` every
//! `interval_ms` (config, default 1000) until `count` (default: forever)
//! or shutdown, and asks `echo.shout` for each tenth tick.

use muster::prelude::*;

/// Producer configuration.
#[derive(Debug, Deserialize, Serialize)]
pub struct ProducerConfig {
    /// Milliseconds between ticks.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Stop after this many ticks (0: never).
    #[serde(default)]
    pub count: u64,
}

fn default_interval() -> u64 {
    1000
}

/// A tick event.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Tick {
    /// Sequence number from 1.
    pub n: u64,
}

async fn produce(ctx: Ctx) -> Result<(), muster::Error> {
    let cfg = ctx
        .config::<ProducerConfig>()
        .ok_or_else(|| muster::Error::new(muster::ErrorKind::Config, "producer config missing"))?;
    let mut n = 0;
    let mut every = tokio_interval(cfg.interval_ms);
    loop {
        tokio::select! {
            () = ctx.shutdown() => break,
            _ = every.tick() => {}
        }
        n += 1;
        ctx.publish("clock.tick", &Tick { n }).await?;
        if n % 10 == 0 {
            let r: Result<serde_json::Value, _> = ctx
                .request(
                    "echo.shout",
                    &serde_json::json!({"text": "tick", "times": 2}),
                )
                .await;
            tracing::info!(n, reply = ?r, "asked echo");
        }
        if cfg.count != 0 && n >= cfg.count {
            break;
        }
    }
    tracing::info!(ticks = n, "producer done");
    Ok(())
}

fn tokio_interval(ms: u64) -> tokio::time::Interval {
    tokio::time::interval(Duration::from_millis(ms.max(1)))
}

/// The service, for `main` and for tests.
pub fn service() -> Service {
    Service::new("producer")
        .version(env!("CARGO_PKG_VERSION"))
        .config::<ProducerConfig>()
        .main(produce)
}
