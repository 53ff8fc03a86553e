//! `muster ls` and `muster stats`.

use std::collections::BTreeMap;

use muster::registry::InstanceInfo;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct LsCmd {
    /// Only this service.
    service: Option<String>,
    /// Print the full registry as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bus: BusArg,
}

impl LsCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let client = self.bus.client().await?;
        let mut instances = client.instances().await?;
        instances.retain(|i| self.service.as_deref().is_none_or(|s| s == i.service));
        if self.json {
            println!("{}", serde_json::to_string_pretty(&instances)?);
            return Ok(());
        }
        let mut by_service: BTreeMap<&str, Vec<&InstanceInfo>> = BTreeMap::new();
        for i in &instances {
            by_service.entry(&i.service).or_default().push(i);
        }
        if by_service.is_empty() {
            println!("no services registered");
        }
        for (service, list) in by_service {
            let first = list[0];
            println!(
                "{service} {} ({} instance{})",
                first.version,
                list.len(),
                if list.len() == 1 { "" } else { "s" }
            );
            for i in &list {
                println!("  instance {} pid {} at {}", i.instance, i.pid, i.endpoint);
            }
            for m in &first.methods {
                let params = m.params.as_ref().map_or("-".to_owned(), |s| s.to_string());
                let result = m.result.as_ref().map_or("-".to_owned(), |s| s.to_string());
                println!(
                    "  method {service}.{}{}",
                    m.name,
                    if m.idempotent { " (idempotent)" } else { "" }
                );
                println!("    params: {params}");
                println!("    result: {result}");
            }
            for s in &first.subscriptions {
                println!("  subscribes {s}");
            }
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatsCmd {
    /// Only this service.
    service: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bus: BusArg,
}

impl StatsCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let client = self.bus.client().await?;
        let all = client.stats(self.service.as_deref()).await?;
        if self.json {
            let v: Vec<serde_json::Value> = all
                .iter()
                .map(|r| match r {
                    Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                    Err((i, e)) => serde_json::json!({"service": i.service, "instance": i.instance, "error": e}),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!(
            "{:<28} {:>10} {:>8} {:>8} {:>10} {:>10}  last error",
            "instance / method", "requests", "errors", "inflight", "p50", "p99"
        );
        for r in all {
            match r {
                Ok(s) => {
                    println!("{} (up {}s)", s.instance, s.uptime_secs);
                    for (name, m) in &s.methods {
                        println!(
                            "  {:<26} {:>10} {:>8} {:>8} {:>8}µs {:>8}µs  {}",
                            name,
                            m.num_requests,
                            m.num_errors,
                            m.in_flight,
                            m.p50_us,
                            m.p99_us,
                            m.last_error.as_deref().unwrap_or("")
                        );
                    }
                }
                Err((i, e)) => println!("{} did not answer: {e}", i.instance),
            }
        }
        Ok(())
    }
}
