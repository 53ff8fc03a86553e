//! `services.toml`: several services and their context in one file, the
//! equivalent of context_task_queue's `MetaServiceConf` (documented in
//! docs/manifest.md, "Generating services").

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ScaffoldError;
use crate::spec::{Actions, ContextSpec, ServiceSpec, Triggers};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    context: ContextSection,
    #[serde(default, rename = "service")]
    services: Vec<ServiceSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextSection {
    name: String,
    strategy: Option<String>,
    max_restarts: Option<u32>,
    within_secs: Option<u32>,
    bus: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: String,
    description: Option<String>,
    #[serde(default)]
    rpc: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    consume: Vec<String>,
    every: Option<String>,
    #[serde(default)]
    task: bool,
    instances: Option<u32>,
    restart: Option<String>,
    autostart: Option<bool>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    on_start: Option<Actions>,
    on_update: Option<Actions>,
    on_fail: Option<Actions>,
    on_exit: Option<Actions>,
}

/// Reads a `services.toml`.
///
/// # Errors
/// TOML errors with their line and column, unknown keys, invalid names,
/// triggers naming services the file does not have.
pub fn parse(text: &str, path: &str) -> Result<ContextSpec, ScaffoldError> {
    let file: File = toml::from_str(text).map_err(|e| ScaffoldError::Input {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if file.services.is_empty() {
        return Err(ScaffoldError::Input {
            path: path.to_owned(),
            message: "no [[service]]: the file describes no service".into(),
        });
    }
    let mut services = Vec::new();
    for s in file.services {
        let mut spec = ServiceSpec::new(&s.name)?;
        if let Some(d) = s.description {
            spec.description = d;
        }
        spec.rpc = s.rpc;
        spec.subscribe = s.subscribe;
        spec.consume = s.consume;
        spec.every = s.every;
        spec.task = s.task;
        spec.instances = s.instances.unwrap_or(1);
        spec.restart = s.restart;
        spec.autostart = s.autostart.unwrap_or(true);
        spec.after = s.after;
        spec.env = s.env;
        spec.triggers = Triggers {
            on_start: s.on_start.unwrap_or_default(),
            on_update: s.on_update.unwrap_or_default(),
            on_fail: s.on_fail.unwrap_or_default(),
            on_exit: s.on_exit.unwrap_or_default(),
        };
        services.push(spec.with_default_entry_point());
    }
    let ctx = ContextSpec {
        name: file.context.name,
        strategy: file.context.strategy,
        max_restarts: file.context.max_restarts,
        within_secs: file.context.within_secs,
        bus: file.context.bus,
        services,
        notes: Vec::new(),
    };
    ctx.validate(path)?;
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[context]
name = "morning"

[[service]]
name = "stand"
task = true
on_exit = { start = ["walk"] }

[[service]]
name = "walk"
task = true
autostart = false
on_exit = { exit = true }
"#;

    #[test]
    fn reads_services_and_triggers() {
        let ctx = parse(SAMPLE, "services.toml").unwrap();
        assert_eq!(ctx.services.len(), 2);
        assert_eq!(ctx.services[0].triggers.on_exit.start, vec!["walk"]);
        assert!(ctx.services[1].triggers.on_exit.exit);
        assert!(!ctx.services[1].autostart);
    }

    #[test]
    fn refuses_clearly() {
        let unknown = SAMPLE.replace("start = [\"walk\"]", "start = [\"fly\"]");
        let e = parse(&unknown, "s.toml").unwrap_err().to_string();
        assert!(e.contains("\"fly\""), "{e}");
        let typo = SAMPLE.replace(
            "task = true\non_exit = { start",
            "tsak = true\non_exit = { start",
        );
        let e = parse(&typo, "s.toml").unwrap_err().to_string();
        assert!(e.contains("tsak"), "{e}");
        assert!(parse("[context]\nname = \"x\"\n", "s.toml").is_err());
    }
}
