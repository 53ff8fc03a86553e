//! `muster bus`.

use anyhow::Context;
use muster_zmq::{Bus, BusAddr, BusOptions, QueueStore};

#[derive(Debug, clap::Args)]
pub(crate) struct BusCmd {
    /// Where to listen: registry on PORT, events on PORT+1 (in) and PORT+2 (out)
    /// [default: $MUSTER_BUS, else zmq://127.0.0.1:7700].
    #[arg(long, value_name = "URL")]
    listen: Option<String>,
    /// Drop an instance after this long without a heartbeat.
    #[arg(long, default_value = "3s", value_parser = muster_core::duration::parse)]
    ttl: std::time::Duration,
    /// Heartbeats a second the bus takes at most: with more instances it
    /// asks each for slower ones, and waits 3.3 of those before it drops
    /// a silent instance (docs/protocol.md).
    #[arg(long, value_name = "N", default_value_t = muster_zmq::DEFAULT_HEARTBEATS_PER_SEC, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeats_per_sec: u32,
    /// Bytes of jobs the work queues hold in all; more are refused
    /// ("queues are full"). 256MB by default.
    #[arg(long, value_name = "BYTES", default_value_t = muster_core::queue::DEFAULT_QUEUE_BYTES)]
    queue_max_bytes: usize,
    /// Where jobs are kept: `disk` (the job log `queues.redb` in the state
    /// directory, written before `enqueue` returns; jobs outlive a crash of
    /// the bus) or `memory` (faster, lost with the bus).
    #[arg(long, value_name = "WHERE", default_value = "disk", value_parser = ["disk", "memory"])]
    queue_store: String,
    /// When the job log is flushed: `always` (as soon as the previous
    /// flush ends) or a group-commit interval such as `5ms`.
    #[arg(long, value_name = "POLICY", default_value = "always")]
    queue_fsync: muster_zmq::FsyncPolicy,
    /// Event messages queued for each subscriber; beyond, that
    /// subscriber's oldest are dropped (and counted by it).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    subscriber_queue: u32,
    /// Where the bus keeps its master secret (`bus.secret`, made on first
    /// start, mode 0600; services started from the same directory find
    /// it there, docs/security.md) and its job log (`queues.redb`).
    #[arg(long, value_name = "DIR", default_value = ".muster")]
    state_dir: std::path::PathBuf,
    /// Take every registry verb from anyone, without credentials (a bus
    /// nobody else can reach; tests).
    #[arg(long)]
    open: bool,
    /// The fleet's CURVE keys directory (`muster keys init`): the bus
    /// admits only the fleet's and authorized/ keys [default: $MUSTER_CURVE].
    #[arg(long, value_name = "DIR")]
    curve: Option<std::path::PathBuf>,
    /// Listen in the clear beyond loopback (on a network you trust);
    /// without --curve the bus otherwise refuses to [also MUSTER_PLAIN_TCP=1].
    #[arg(long)]
    plain_tcp: bool,
    /// Log level.
    #[arg(long, default_value = "info")]
    log_level: String,
}

impl BusCmd {
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let _ = muster::logging::init(&muster::logging::LogOptions {
            level: &self.log_level,
            file: None,
            rotate: muster::logging::Rotate::Never,
            keep: 1,
            json: false,
        });
        // A connection per instance and more: as a host does.
        muster_host::fdlimit::raise();
        let url = self
            .listen
            .or_else(|| std::env::var("MUSTER_BUS").ok())
            .unwrap_or_else(|| muster::bus::DEFAULT_BUS.to_owned());
        let addr: BusAddr = url.parse()?;
        let mut options = BusOptions::default();
        options.ttl = self.ttl;
        options.heartbeats_per_sec = self.heartbeats_per_sec;
        options.queue_limits.bytes = self.queue_max_bytes;
        options.subscriber_hwm = self.subscriber_queue.max(1);
        if self.queue_store == "disk" {
            options.queue_store = QueueStore::Disk {
                path: self.state_dir.join("queues.redb"),
                fsync: self.queue_fsync,
            };
        }
        if !self.open {
            let secret = muster_core::auth::MasterSecret::load_or_create(&self.state_dir)
                .with_context(|| {
                    format!("cannot use the bus secret in {}", self.state_dir.display())
                })?;
            options.secret = Some(secret);
        }
        options.curve = match &self.curve {
            Some(dir) => Some(muster_zmq::Curve::load(dir)?),
            None => muster_zmq::Curve::from_environment()?,
        };
        options.plain_tcp = self.plain_tcp || muster_zmq::curve::plain_tcp_from_environment();
        let curve = options.curve.clone();
        let bus = Bus::start(addr.clone(), options)
            .await
            .with_context(|| format!("cannot start the bus at {addr}"))?;
        println!(
            "muster bus listening at {addr} (registry {}, events in {}, out {})",
            addr.registry(),
            addr.events_in(),
            addr.events_out()
        );
        if self.queue_store == "disk" {
            println!(
                "jobs: {} (fsync {})",
                self.state_dir.join("queues.redb").display(),
                self.queue_fsync
            );
        } else {
            println!("jobs: in memory (lost when the bus stops)");
        }
        match &curve {
            Some(c) => println!(
                "CURVE: fleet key {} ({}); unknown keys are refused",
                c.fleet_key(),
                c.dir().display()
            ),
            None => println!("no CURVE: plain TCP"),
        }
        if self.open {
            println!("open: registry verbs are taken from anyone, without credentials");
        } else {
            println!(
                "credentials: {} (services started from this directory find it)",
                self.state_dir
                    .join(muster_core::auth::SECRET_FILE)
                    .display()
            );
        }
        wait_for_signal().await;
        bus.stop().await;
        Ok(())
    }
}

pub(crate) async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
