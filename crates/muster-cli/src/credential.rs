//! `muster credential`: a credential of the bus for a program run by hand.

use std::path::PathBuf;

use anyhow::Context;
use muster_core::auth::{KeyId, MasterSecret};

#[derive(Debug, clap::Args)]
pub(crate) struct CredentialCmd {
    /// The program's name: the credential is `user:NAME`.
    name: String,
    /// The state directory of the host or `muster bus` (its `bus.secret`).
    #[arg(long, value_name = "DIR", default_value = ".muster")]
    state_dir: PathBuf,
}

impl CredentialCmd {
    /// Prints `user:NAME <hex secret>`, the value of `MUSTER_CREDENTIAL`.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let path = self.state_dir.join(muster_core::auth::SECRET_FILE);
        anyhow::ensure!(
            path.exists(),
            "no bus secret at {} (run this where the host or `muster bus` keeps its state, or give --state-dir)",
            path.display()
        );
        let master = MasterSecret::load_or_create(&self.state_dir)
            .with_context(|| format!("cannot read {}", path.display()))?;
        println!(
            "{}",
            master.credential(KeyId::User(self.name)).to_env_value()
        );
        Ok(())
    }
}
