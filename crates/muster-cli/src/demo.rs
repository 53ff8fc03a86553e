//! `muster demo`: a host running the demo context (the seeds'
//! StateMachineSample chained by triggers, plus two echo instances),
//! answering calls and printing lifecycle events.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use muster::Client;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoCmd {
    /// Where the bus listens.
    #[arg(long, default_value = "zmq://127.0.0.1:7700")]
    bus: String,
    /// Run one cycle of the state machine, then stop, instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// State directory: token, transaction record, logs.
    #[arg(long, default_value = ".muster")]
    state_dir: PathBuf,
    /// HTTP endpoint (dashboard, metrics, gateway): IP:PORT or "off".
    #[arg(long, default_value = muster_host::manifest::DEFAULT_HTTP)]
    http: String,
    #[command(flatten)]
    network: crate::up::NetworkArgs,
}

/// Runs one example service in this process (the `__service` command).
pub(crate) fn run_example(name: &str, args: Vec<String>) -> ExitCode {
    let service = match name {
        "echo" => muster_example_echo::service(),
        "producer" => muster_example_producer::service(),
        "subscriber" => muster_example_subscriber::service(),
        "worker" => muster_example_worker::service(),
        other => match muster_example_statemachine::service(other) {
            Some(s) => s,
            None => {
                eprintln!(
                    "muster: no example service {other:?} (echo, producer, subscriber, worker, stand, walk, drink_coffee, run)"
                );
                return ExitCode::from(2);
            }
        },
    };
    let argv = std::iter::once(format!("muster-{name}")).chain(args);
    match service.run_from(argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The demo manifest (also runnable as `muster up crates/muster-cli/demo/muster.toml`).
const DEMO_MANIFEST: &str = include_str!("../demo/muster.toml");

impl DemoCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let state_dir = self.state_dir.clone();
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let manifest = state_dir.join("demo.toml");
        std::fs::write(&manifest, DEMO_MANIFEST)
            .with_context(|| format!("cannot write {}", manifest.display()))?;
        let options = crate::up::host_options(
            vec![manifest.clone()],
            Some(self.bus.clone()),
            Some(state_dir.clone()),
            Some(self.http.clone()),
            self.network.clone(),
        )?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let host = tokio::spawn(muster_host::run(options, Some(ready_tx), async {
            let _ = stop_rx.await;
        }));
        let Ok(info) = ready_rx.await else {
            return match host.await {
                Ok(Err(e)) => Err(anyhow::anyhow!("{e}")),
                _ => Err(anyhow::anyhow!("the host did not start")),
            };
        };
        println!("demo manifest: {}", manifest.display());
        crate::up::print_banner(&info);
        let shown = self.show(&info).await;
        // On Ctrl-C the host stops by itself; otherwise tell it to.
        let _ = stop_tx.send(());
        let r = host.await.context("the host task failed")?;
        println!("stopped");
        r?;
        shown
    }

    /// Shows the demo: calls echo across its two instances, prints the
    /// status, then the lifecycle events (with `--once`, one full cycle).
    async fn show(&self, info: &muster_host::HostInfo) -> anyhow::Result<()> {
        let client = Client::connect(&info.bus).await?;
        let mut events = client.subscribe(&["muster.control.>"]).await?;
        wait_for(&client, &[("echo", 2)]).await?;
        let args = serde_json::json!({"text": "hi", "times": 2});
        let mut last = None;
        for _ in 0..10 {
            last = Some(
                client
                    .call::<_, serde_json::Value>("echo.shout", &args)
                    .await?,
            );
        }
        println!(
            "call echo.shout {args} x10 -> {}",
            last.map(|v| v.to_string()).unwrap_or_default()
        );
        for report in client.stats(Some("echo")).await?.into_iter().flatten() {
            let n = report.methods.get("shout").map_or(0, |m| m.num_requests);
            println!("  served by {}: {n} calls", report.instance);
        }
        println!("try, in another terminal:");
        println!("  muster ctl status");
        println!("  muster call echo.shout '{{\"text\":\"hi\",\"times\":2}}'");
        println!("  muster sub 'muster.>'        muster ctl logs echo");
        if !self.once {
            println!("Ctrl-C stops the demo (the host stops every service in reverse order).");
        }
        println!("lifecycle events (stand -> walk -> drink_coffee -> run -> stand ...):");
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                () = crate::bus::wait_for_signal(), if !self.once => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(30)) => bail!("no lifecycle event for 30 s"),
            };
            let Some(ev) = ev else { return Ok(()) };
            let p = &ev.payload;
            let text = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            let status = p.get("status").map(|s| format!(" {s}")).unwrap_or_default();
            println!(
                "  {:<13} {:<8} {}{}",
                text("service"),
                text("event"),
                text("instance"),
                status
            );
            if self.once && text("service") == "run" && text("event") == "exited" {
                return Ok(());
            }
        }
    }
}

/// Waits (up to 15 s) until each service has the given number of instances.
pub(crate) async fn wait_for(client: &Client, want: &[(&str, usize)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let have = client.instances().await.unwrap_or_default();
        let ready = want
            .iter()
            .all(|(s, n)| have.iter().filter(|i| i.service == *s).count() >= *n);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("services did not register within 15 s: {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
