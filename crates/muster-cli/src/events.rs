//! `muster pub` and `muster sub`.

use anyhow::Context;
use serde_json::Value;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct PubCmd {
    /// Topic, e.g. clock.tick
    topic: String,
    /// Payload as JSON (a bare word is sent as a string).
    payload: String,
    #[command(flatten)]
    bus: BusArg,
}

impl PubCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let payload: Value = serde_json::from_str(&self.payload)
            .unwrap_or_else(|_| Value::String(self.payload.clone()));
        let client = self.bus.client().await?;
        client
            .publish(&self.topic, &payload)
            .await
            .with_context(|| format!("cannot publish on {}", self.topic))?;
        client.transport().close().await;
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubCmd {
    /// Topic patterns: `a.b`, `a.*.c`, `a.>`
    #[arg(required = true)]
    patterns: Vec<String>,
    /// Exit after this many events.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Join the durable group NAME: events published while no member of
    /// it runs are kept by the bus and delivered when one comes back.
    #[arg(long, value_name = "NAME")]
    durable: Option<String>,
    /// With --durable: most events the group keeps while nobody reads.
    #[arg(long, requires = "durable", value_name = "N")]
    max_events: Option<u64>,
    /// With --durable: most bytes of events the group keeps.
    #[arg(long, requires = "durable", value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// With --durable: oldest event the group keeps (`90s`, `1h`, `168h`).
    #[arg(long, requires = "durable", value_name = "AGE", value_parser = muster_core::duration::parse)]
    max_age: Option<std::time::Duration>,
    #[command(flatten)]
    bus: BusArg,
}

impl SubCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        use std::io::Write;
        crate::init_client_logging();
        let client = self.bus.client().await?;
        let patterns: Vec<&str> = self.patterns.iter().map(String::as_str).collect();
        let mut sub = match &self.durable {
            None => client.subscribe(&patterns).await?,
            Some(group) => {
                let mut retention = muster::Retention::default();
                if let Some(n) = self.max_events {
                    retention = retention.max_events(n);
                }
                if let Some(n) = self.max_bytes {
                    retention = retention.max_bytes(n);
                }
                if let Some(age) = self.max_age {
                    retention = retention.max_age(age);
                }
                client
                    .subscribe_durable(group, &patterns, retention)
                    .await?
            }
        };
        match &self.durable {
            None => eprintln!("subscribed to {}", self.patterns.join(" ")),
            Some(g) => eprintln!(
                "subscribed to {} as a member of the durable group {g}",
                self.patterns.join(" ")
            ),
        }
        let mut seen = 0u64;
        let mut told = (0u64, std::time::Instant::now());
        loop {
            let event = tokio::select! {
                e = sub.recv() => match e { Some(e) => e, None => break },
                () = crate::bus::wait_for_signal() => break,
            };
            let line = serde_json::json!({
                "topic": event.topic,
                "transaction": event.header.transaction,
                "payload": event.payload,
            });
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            seen += 1;
            let missed = sub.missed();
            if missed > told.0 && told.1.elapsed() >= std::time::Duration::from_secs(1) {
                // Said as it happens (once a second at most), and in total
                // at the end.
                eprintln!(
                    "muster sub: {missed} events missed so far (the bus dropped them while this subscriber was behind)"
                );
                told = (missed, std::time::Instant::now());
            }
            if self.count.is_some_and(|n| seen >= n) {
                break;
            }
        }
        let missed = sub.missed();
        sub.cancel().await;
        if missed > 0 {
            eprintln!("muster sub: {seen} events received, {missed} missed");
        }
        Ok(())
    }
}
