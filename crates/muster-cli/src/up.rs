//! `muster up`: the host.

use std::path::PathBuf;

use anyhow::Context;
use muster_host::{HostInfo, HostOptions};

#[derive(Debug, clap::Args)]
pub(crate) struct UpCmd {
    /// Manifest files, one context each [default: muster.toml].
    files: Vec<PathBuf>,
    /// Bus URL [default: the manifest's `[host] bus`, else zmq://127.0.0.1:7700].
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// State directory: token, transaction record, logs [default: the
    /// manifest's `[host] state_dir`, else .muster beside the manifest].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// HTTP endpoint (dashboard, metrics, gateway): IP:PORT or "off"
    /// [default: the manifest's `[host] http`, else 127.0.0.1:7780].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// The host's name among the hosts of one bus [default: the
    /// manifest's `[host] name`, else the machine's hostname].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Log level or filter directives for the host [default: $MUSTER_LOG_LEVEL, else info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(flatten)]
    network: NetworkArgs,
}

/// Where the host's and its instances' RPC endpoints listen on the
/// embedded bus, and where callers are told to reach them: what a
/// container or a machine behind NAT needs (`docs/deploy.md`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct NetworkArgs {
    /// Interface the control endpoint and the instances' RPC endpoints
    /// bind [default: the manifest's `[host] bind`, else 127.0.0.1].
    #[arg(long, value_name = "IP")]
    bind: Option<String>,
    /// Host callers are told to reach those endpoints at, when it is not
    /// the bound one (a container's published ports, NAT) [default: the
    /// manifest's `[host] advertise`, else the bound address].
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// Ports those endpoints bind, the first free one taken (publish them
    /// all) [default: the manifest's `[host] rpc_ports`, else any].
    #[arg(long, value_name = "FIRST-LAST")]
    rpc_ports: Option<muster_zmq::PortRange>,
    /// Listen in the clear beyond loopback without CURVE (inside a
    /// container whose ports are published on the machine's loopback).
    #[arg(long)]
    plain_tcp: bool,
}

impl UpCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let level = self
            .log_level
            .clone()
            .or_else(|| std::env::var("MUSTER_LOG_LEVEL").ok())
            .unwrap_or_else(|| "info".into());
        crate::init_logging(&level);
        let files = if self.files.is_empty() {
            vec![PathBuf::from("muster.toml")]
        } else {
            self.files
        };
        let mut options = host_options(files, self.bus, self.state_dir, self.http, self.network)?;
        options.name = self.name;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let printer = tokio::spawn(async move {
            if let Ok(info) = rx.await {
                print_banner(&info);
            }
        });
        let r = muster_host::run(options, Some(tx), std::future::pending()).await;
        let _ = printer.await;
        r.map_err(Into::into)
    }
}

/// Host options with this executable as the launcher and `${MUSTER_EXE}`.
pub(crate) fn host_options(
    files: Vec<PathBuf>,
    bus: Option<String>,
    state_dir: Option<PathBuf>,
    http: Option<String>,
    network: NetworkArgs,
) -> anyhow::Result<HostOptions> {
    let exe = std::env::current_exe().context("cannot find the muster executable")?;
    Ok(HostOptions {
        files,
        launcher: Some(exe.clone()),
        substitutions: muster_host::manifest::Substitutions {
            muster_exe: Some(exe),
        },
        bus,
        state_dir,
        http,
        name: None,
        bind: network.bind,
        advertise: network.advertise,
        rpc_ports: network.rpc_ports,
        plain_tcp: network.plain_tcp,
    })
}

/// Where the host is and how to talk to it.
pub(crate) fn print_banner(info: &HostInfo) {
    println!("muster host running");
    println!("  bus:        {}", info.bus);
    println!("  control:    {} (service muster.host)", info.control);
    println!("  token file: {}", info.token_file.display());
    println!("  logs:       {}", info.log_dir.display());
    if let Some(http) = &info.http {
        // The link hands the token to the browser (the page keeps it and
        // drops it from the address bar); it is shown only here, to the
        // host's own user.
        let token = muster_host::token::read(&info.token_file)
            .map(|t| format!("#token={t}"))
            .unwrap_or_default();
        println!("  dashboard:  http://{http}/{token}");
        println!(
            "              (metrics /metrics, gateway POST /call/SERVICE.METHOD; Authorization: Bearer TOKEN)"
        );
    }
    for t in &info.transactions {
        println!("  started transaction {t}");
    }
}
