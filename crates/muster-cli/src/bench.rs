//! `muster bench` (filled in below).

#[derive(Debug, clap::Args)]
pub(crate) struct BenchCmd {}

#[derive(Debug, clap::Args)]
pub(crate) struct PeerCmd {}

impl BenchCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("not yet")
    }
}

pub(crate) fn run_peer(_p: PeerCmd) -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
