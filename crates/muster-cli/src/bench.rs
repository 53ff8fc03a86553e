//! `muster bench`: each scenario runs muster and a raw ZeroMQ baseline of
//! the same topology, in separate processes, in the same run, and prints
//! both rates and their ratio (this machine is noisy: only same-run
//! ratios mean anything).

mod auth;
mod broker;
mod fleet;
mod gateway;
mod host;
mod latency;
mod nats;
mod peer;
mod pubsub;
mod queue_store;
mod rpc;
mod state;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

pub(crate) use peer::{PeerCmd, run_peer};

/// Benchmark scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// One synchronous caller, 100-byte payloads; also a plain TCP floor.
    Rpc,
    /// Many calls in flight from one process.
    RpcPipelined,
    /// Latency at 25/50/75% of muster's maximum call rate, open loop
    /// (sent on a fixed schedule), beside raw DEALER-ROUTER at the same
    /// rates: p50, p99, p99.9 and max.
    Latency,
    /// 100-byte events, publisher → bus → subscriber, three processes.
    Pubsub,
    /// Resident memory of an idle echo instance.
    IdleRss,
    /// Host: kill -9 of an instance to its replacement being ready.
    HostRestart,
    /// Host: start N instances to ready; then, with them idle, its CPU and
    /// memory, the registry's size, `ctl status`, `/api/top` and dashboard
    /// answer times, and kill -9 to ready of one instance at a time.
    HostStart,
    /// Replicated state: changes/s to 3 readers; a 100,000-key snapshot.
    State,
    /// A muster instance fed by a raw DEALER: the server side alone.
    RpcServer,
    /// muster callers against a do-nothing server: the client side alone.
    RpcClient,
    /// Work-queue jobs/s with acks at prefetch 1 and 100 on `--bus`
    /// (amqp://, redis:// or nats://) against a plain lapin, redis or
    /// async-nats loop; on the embedded bus (no `--bus`, or zmq://), the
    /// job log under each fsync policy against jobs kept in memory.
    Queue,
    /// RPC calls/s over RabbitMQ or NATS (`--bus amqp://...`,
    /// `nats://...`) against plain lapin or async-nats.
    BrokerRpc,
    /// Events/s over NATS or Redis (`--bus nats://...`, `redis://...`) against the plain client.
    BrokerEvents,
    /// Registry verbs, calls and new callers on a bus with a secret
    /// against an open bus; `require_auth` against without.
    Auth,
    /// The HTTP gateway under `wrk` against a plain axum handler making
    /// the same call with a muster client (needs wrk on PATH).
    Gateway,
    /// Three hosts joined to one bus, idle, at each of `--fleet-sizes`
    /// instances: bus bytes/s and the CPU of the bus, hosts and instances.
    Fleet,
    /// All of the above but auth, fleet, gateway and the broker scenarios
    /// (they need a broker or wrk).
    All,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BenchCmd {
    /// What to measure.
    #[arg(value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// How long each measurement runs.
    #[arg(long, default_value = "3s", value_parser = muster_core::duration::parse)]
    duration: Duration,
    /// Calls in flight for rpc-pipelined.
    #[arg(long, default_value_t = 100)]
    in_flight: usize,
    /// Events published in the pubsub scenario.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Kills measured by host-restart and host-start.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Instances started by host-start.
    #[arg(long, default_value_t = 100)]
    instances: u32,
    /// How long host-start watches the idle host.
    #[arg(long, default_value = "10s", value_parser = muster_core::duration::parse)]
    idle_for: Duration,
    /// Jobs per measurement of the queue scenario (a quarter at prefetch 1).
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Instances in all at each measurement of the fleet scenario.
    #[arg(long, value_delimiter = ',', default_value = "99,300,999")]
    fleet_sizes: Vec<u32>,
    /// Loads of the latency scenario, in percent of muster's measured
    /// maximum rate.
    #[arg(long, value_delimiter = ',', default_value = "25,50,75")]
    loads: Vec<f64>,
    /// Broker for queue and broker-rpc [default: $MUSTER_BUS].
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
}

impl BenchCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        crate::init_client_logging();
        println!(
            "muster bench on {} cores; payload {} bytes; {:?} per measurement",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            self.size,
            self.duration
        );
        let all = self.scenario == Scenario::All;
        if all || self.scenario == Scenario::Rpc {
            rpc::sync(&self).await?;
        }
        if all || self.scenario == Scenario::RpcPipelined {
            rpc::pipelined(&self).await?;
        }
        if all || self.scenario == Scenario::Pubsub {
            pubsub::run(&self).await?;
        }
        if self.scenario == Scenario::Latency {
            latency::run(&self).await?;
        }
        if self.scenario == Scenario::Auth {
            auth::run(&self).await?;
        }
        if self.scenario == Scenario::RpcClient {
            rpc::client_only(&self).await?;
        }
        if self.scenario == Scenario::RpcServer {
            rpc::server_only(&self).await?;
        }
        if all || self.scenario == Scenario::IdleRss {
            rpc::idle_rss().await?;
        }
        if all || self.scenario == Scenario::HostRestart {
            host::restart(self.rounds).await?;
        }
        if all || self.scenario == Scenario::State {
            state::run(100_000).await?;
        }
        if self.scenario == Scenario::Gateway {
            gateway::run(self.duration, 3).await?;
        }
        if self.scenario == Scenario::Fleet {
            fleet::run(&self.fleet_sizes, self.idle_for).await?;
        }
        if all || self.scenario == Scenario::HostStart {
            host::start_many(self.instances, self.idle_for, self.rounds).await?;
        }
        let bus = self
            .bus
            .clone()
            .or_else(|| std::env::var("MUSTER_BUS").ok());
        if self.scenario == Scenario::Queue
            && bus.as_deref().is_none_or(|b| b.starts_with("zmq://"))
        {
            return queue_store::run(&self).await;
        }
        if matches!(
            self.scenario,
            Scenario::Queue | Scenario::BrokerRpc | Scenario::BrokerEvents
        ) {
            let url = self
                .bus
                .clone()
                .or_else(|| std::env::var("MUSTER_BUS").ok())
                .context("this scenario needs --bus amqp://..., redis://... or nats://...")?;
            match self.scenario {
                Scenario::Queue => broker::queue(&self, &url).await?,
                Scenario::BrokerRpc => broker::broker_rpc(&self, &url).await?,
                _ => broker::broker_events(&self, &url).await?,
            }
        }
        Ok(())
    }
}

/// Prints one comparison line.
fn report(scenario: &str, unit: &str, muster: f64, baseline_name: &str, baseline: f64) {
    println!(
        "{scenario:<14} muster {:>12} {unit}/s   {baseline_name} {:>12} {unit}/s   ratio {:.2}",
        fmt_rate(muster),
        fmt_rate(baseline),
        if baseline > 0.0 {
            muster / baseline
        } else {
            0.0
        }
    );
}

fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// This executable, for peer processes.
fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the muster executable")
}

/// Starts `muster __bench-peer ARGS`.
fn spawn_peer(args: &[&str]) -> anyhow::Result<Child> {
    Command::new(exe()?)
        .arg("__bench-peer")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a benchmark peer")
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a connection of its own:
/// the answer's status code and its whole text (head and body).
async fn http_once(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .context("no HTTP answer within 10 s")??;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer}"))?;
    Ok((status, answer))
}

/// A free base port with two more after it.
fn free_ports() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        drop(l);
        if p < 65_000 && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return Ok(p);
        }
    }
    anyhow::bail!("no free ports")
}
