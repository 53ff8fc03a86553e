//! `muster state get SERVICE/NAME`: a state's current value and sequence
//! number, from its owner.

use anyhow::{Context, bail};
use serde_json::Value;

use crate::BusArg;

#[derive(Debug, clap::Args)]
pub(crate) struct StateCmd {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    bus: BusArg,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print the value and sequence number of SERVICE/NAME.
    Get {
        /// The owning service and the state's name.
        source: String,
        /// Print the owner's whole snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl StateCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let Action::Get { source, json } = self.action;
        let Some((service, name)) = source.split_once('/') else {
            bail!("{source:?} is not SERVICE/NAME");
        };
        let client = self.bus.client().await?;
        let snap: Value = client
            .call(
                &format!("{service}.{}", muster::state::SNAPSHOT_METHOD),
                &serde_json::json!({ "name": name }),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot read {source}"))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&snap)?);
        } else {
            println!(
                "{source}: seq {} ({} state, epoch {})",
                snap["seq"],
                snap["kind"].as_str().unwrap_or("?"),
                snap["epoch"].as_str().unwrap_or("?")
            );
            println!("{}", serde_json::to_string_pretty(&snap["value"])?);
        }
        Ok(())
    }
}
