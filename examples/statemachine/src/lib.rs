//! The seeds' StateMachineSample as four small main-mode services: `stand`,
//! `walk`, `drink_coffee` and `run`. Each reports its state with
//! `ctx.update` (an `updated` event the host can trigger on), does its
//! step for `step_ms` (config, default 1000) and exits 0 (an `exited`
//! event). The demo manifest (`crates/muster-cli/demo/muster.toml`) chains them
//! with triggers into a loop: stand → walk → drink_coffee → run → stand.

use std::time::Duration;

use muster::prelude::*;

/// The four steps.
pub const STEPS: [&str; 4] = ["stand", "walk", "drink_coffee", "run"];

/// Step configuration.
#[derive(Debug, Deserialize, Serialize)]
pub struct StepConfig {
    /// How long the step takes, in milliseconds.
    #[serde(default = "default_step")]
    pub step_ms: u64,
}

fn default_step() -> u64 {
    1000
}

/// The state a step reports.
fn state_of(step: &str) -> &'static str {
    match step {
        "stand" => "standing",
        "walk" => "walking",
        "drink_coffee" => "drinking coffee",
        _ => "running",
    }
}

/// The service for `step` (one of [`STEPS`]), or `None`.
///
/// ```
/// let s = muster_example_statemachine::service("walk").unwrap();
/// assert_eq!(s.name(), "walk");
/// ```
pub fn service(step: &str) -> Option<Service> {
    let name = *STEPS.iter().find(|s| **s == step)?;
    Some(
        Service::new(name)
            .version(env!("CARGO_PKG_VERSION"))
            .config::<StepConfig>()
            .main(move |ctx: Ctx| async move {
                let step_ms = ctx.config::<StepConfig>().map_or(1000, |c| c.step_ms);
                let state = state_of(name);
                ctx.update(&serde_json::json!({ "state": state })).await?;
                tracing::info!(state, "step started");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(step_ms)) => {}
                    () = ctx.shutdown() => {}
                }
                tracing::info!(state, "step done");
                Ok::<(), muster::Error>(())
            }),
    )
}
