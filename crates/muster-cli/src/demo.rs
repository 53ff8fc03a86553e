//! `muster demo`: the embedded bus plus the example services, each in its
//! own process, answering a call.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use muster::Client;
use muster_zmq::{Bus, BusAddr, BusOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub(crate) struct DemoCmd {
    /// Where the bus listens.
    #[arg(long, default_value = "zmq://127.0.0.1:7700")]
    bus: String,
    /// Make the call, print it and exit instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
}

/// Runs one example service in this process (the `__service` command).
pub(crate) fn run_example(name: &str, args: Vec<String>) -> ExitCode {
    let service = match name {
        "echo" => muster_example_echo::service(),
        "producer" => muster_example_producer::service(),
        "subscriber" => muster_example_subscriber::service(),
        other => {
            eprintln!("muster: no example service {other:?} (echo, producer, subscriber)");
            return ExitCode::from(2);
        }
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

struct Children(Vec<(String, Child)>);

impl Children {
    fn spawn(&mut self, bus: &str, name: &str, extra: &[&str], log: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the muster executable")?;
        let child = Command::new(exe)
            .arg("__service")
            .arg(name)
            .args(["--bus", bus, "--log-level", log])
            .args(extra)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.0.push((name.to_owned(), child));
        Ok(())
    }

    /// SIGTERM, then SIGKILL after a grace.
    async fn stop(mut self) {
        for (_, c) in &self.0 {
            if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        for (name, c) in &mut self.0 {
            match tokio::time::timeout(Duration::from_secs(5), c.wait()).await {
                Ok(Ok(status)) => println!("  {name} exited: {status}"),
                _ => {
                    let _ = c.kill().await;
                    println!("  {name} killed after 5 s");
                }
            }
        }
        self.0.clear();
    }
}

impl DemoCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        let addr: BusAddr = self.bus.parse()?;
        let bus = Bus::start(addr.clone(), BusOptions::default())
            .await
            .with_context(|| format!("cannot start the bus at {addr} (is another bus running? try --bus zmq://127.0.0.1:PORT)"))?;
        println!(
            "bus: {addr}  (registry {}, events in {}, out {})",
            addr.registry(),
            addr.events_in(),
            addr.events_out()
        );

        let url = addr.to_string();
        let mut children = Children(Vec::new());
        let started = async {
            children.spawn(&url, "echo", &[], "warn")?;
            children.spawn(&url, "echo", &[], "warn")?;
            children.spawn(&url, "subscriber", &[], "info")?;
            let client = Client::connect(&url).await?;
            wait_for(&client, &[("echo", 2), ("subscriber", 1)]).await?;
            children.spawn(&url, "producer", &["-m", "--interval_ms", "1000"], "warn")?;
            anyhow::Ok(client)
        }
        .await;
        let client = match started {
            Ok(c) => c,
            Err(e) => {
                children.stop().await;
                bus.stop().await;
                return Err(e);
            }
        };

        let args = serde_json::json!({"text": "hi", "times": 2});
        let reply: Result<serde_json::Value, _> = client.call("echo.shout", &args).await;
        println!(
            "call echo.shout {args} -> {}",
            match &reply {
                Ok(v) => v.to_string(),
                Err(e) => format!("error {e}"),
            }
        );
        println!("running: 2 x echo, subscriber, producer (main mode, a clock.tick a second)");
        for i in client.instances().await.unwrap_or_default() {
            println!(
                "  {:<11} {:<20} pid {:<7} {}",
                i.service, i.instance, i.pid, i.endpoint
            );
        }
        if !self.once {
            println!("try, in another terminal:");
            println!("  muster call echo.shout '{{\"text\":\"hi\",\"times\":2}}'");
            println!("  muster ls        muster stats        muster sub 'clock.>'");
            println!("Ctrl-C stops the demo.");
            crate::bus::wait_for_signal().await;
        }
        println!("stopping");
        client.transport().close().await;
        children.stop().await;
        bus.stop().await;
        if reply.is_err() {
            bail!("the demo call failed");
        }
        Ok(())
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
