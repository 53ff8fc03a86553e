//! `muster ls` and `muster stats`.

use std::collections::BTreeMap;

use muster::registry::InstanceInfo;
use serde_json::Value;

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
            return Ok(());
        }
        println!(
            "{:<20} {:<9} {:>4}  METHODS / EVENTS / QUEUES",
            "SERVICE", "VERSION", "INST"
        );
        for (service, list) in by_service {
            let first = list[0];
            let mut entries: Vec<String> = first
                .methods
                .iter()
                .map(|m| format!("{}({})", m.name, params_brief(m.params.as_ref())))
                .collect();
            entries.extend(first.subscriptions.iter().map(|s| format!("<{s}")));
            entries.extend(first.queues.iter().map(|q| format!("[{q}]")));
            println!(
                "{:<20} {:<9} {:>4}  {}",
                service,
                first.version,
                list.len(),
                fit(&entries.join(" "), 80)
            );
        }
        println!("(muster info SERVICE for instances, methods and schemas)");
        Ok(())
    }
}

/// Cuts `s` to `width` characters, marking the cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text, times?` from a params schema: the fields, `?` for optional ones.
fn params_brief(schema: Option<&Value>) -> String {
    let Some(schema) = schema else {
        return String::new();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match schema.get("properties").and_then(Value::as_object) {
        Some(props) => props
            .keys()
            .map(|k| {
                if required.contains(&k.as_str()) {
                    k.clone()
                } else {
                    format!("{k}?")
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        None => type_of(schema),
    }
}

/// A short name for a schema's type.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_owned();
    }
    let title = schema.get("title").and_then(Value::as_str);
    match schema.get("type") {
        Some(Value::String(t)) if t == "object" => title.unwrap_or("object").to_owned(),
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("|"),
        _ => title.unwrap_or("any").to_owned(),
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct InfoCmd {
    /// The service.
    service: String,
    #[command(flatten)]
    bus: BusArg,
}

impl InfoCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let client = self.bus.client().await?;
        let instances: Vec<InstanceInfo> = client
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.service == self.service)
            .collect();
        let Some(first) = instances.first() else {
            anyhow::bail!(
                "no service {:?} is registered (muster ls lists them)",
                self.service
            );
        };
        println!("{} {}", first.service, first.version);
        println!("instances:");
        for i in &instances {
            println!(
                "  {:<24} pid {:<7} {}{}",
                i.instance,
                i.pid,
                i.endpoint,
                i.transaction
                    .as_deref()
                    .map_or(String::new(), |t| format!("  transaction {t}"))
            );
        }
        if !first.methods.is_empty() {
            println!("methods:");
        }
        for m in &first.methods {
            println!(
                "  {}.{}({}) -> {}{}",
                first.service,
                m.name,
                params_brief(m.params.as_ref()),
                m.result.as_ref().map_or_else(|| "-".to_owned(), type_of),
                if m.idempotent { "  (idempotent)" } else { "" }
            );
            for (what, schema) in [("params", &m.params), ("result", &m.result)] {
                if let Some(schema) = schema {
                    let pretty = serde_json::to_string_pretty(schema)?;
                    println!("    {what}:");
                    for line in pretty.lines() {
                        println!("      {line}");
                    }
                }
            }
        }
        for s in &first.subscriptions {
            println!("subscribes: {s}");
        }
        for q in &first.queues {
            println!("consumes: {q}");
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
