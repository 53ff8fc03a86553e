//! `muster keys`: the CURVE keys of a fleet on the embedded bus
//! (`docs/fleet.md`).

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub(crate) struct KeysCmd {
    #[command(subcommand)]
    action: KeysAction,
}

#[derive(Debug, clap::Subcommand)]
enum KeysAction {
    /// Make a fleet's keys: DIR/fleet.key (secret, for the hosts),
    /// DIR/fleet.pub and DIR/authorized/. Copy DIR to every host and give
    /// it as `[host] curve` (or MUSTER_CURVE).
    Init {
        /// The keys directory to make.
        dir: PathBuf,
    },
    /// Make a client's own keys (DIR/client.key, DIR/client.pub, with the
    /// fleet's fleet.pub), and admit it: its public key goes to
    /// FLEET/authorized/NAME.pub (copy that file to the other hosts).
    Client {
        /// The client's keys directory to make (give it as MUSTER_CURVE).
        dir: PathBuf,
        /// The fleet's keys directory (from `muster keys init`).
        #[arg(long, value_name = "DIR")]
        fleet: PathBuf,
        /// The client's name: the file authorized/NAME.pub.
        #[arg(long)]
        name: String,
    },
    /// Print the public keys of a keys directory.
    Show {
        /// A keys directory.
        dir: PathBuf,
    },
}

impl KeysCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self.action {
            KeysAction::Init { dir } => {
                let public = muster_zmq::curve::write_fleet(&dir).with_context(|| {
                    format!("cannot make the fleet's keys in {}", dir.display())
                })?;
                println!("fleet key {public}");
                println!(
                    "{}: give this directory to every host of the fleet as [host] curve (fleet.key is secret)",
                    dir.display()
                );
            }
            KeysAction::Client { dir, fleet, name } => {
                anyhow::ensure!(
                    muster_core::registry::is_valid_name(&name),
                    "{name:?} is not a name: letters, digits, _ and -, starting with a letter"
                );
                let public = muster_zmq::curve::write_client(&dir, &fleet, &name)
                    .with_context(|| format!("cannot make a client's keys in {}", dir.display()))?;
                println!("client key {public}");
                println!(
                    "admitted as {}: copy it to the authorized/ of every other host; run clients with MUSTER_CURVE={}",
                    fleet
                        .join(muster_zmq::curve::AUTHORIZED)
                        .join(format!("{name}.pub"))
                        .display(),
                    dir.display()
                );
            }
            KeysAction::Show { dir } => {
                let curve = muster_zmq::Curve::load(&dir)
                    .with_context(|| format!("cannot read the keys in {}", dir.display()))?;
                println!("fleet  {}", curve.fleet_key());
                println!("client {}", curve.client_key());
                println!("serves {}", curve.can_serve());
            }
        }
        Ok(())
    }
}
