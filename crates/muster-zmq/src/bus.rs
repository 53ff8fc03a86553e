//! The embedded bus device: registry plus event forwarder.

mod registry;

use std::time::Duration;

use muster_core::Error;
use omq_tokio::{Proxy, SocketType};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::addr::BusAddr;
use crate::socket::{self, zmq_error};

pub use registry::{RegistryEvent, RegistryStats};

/// Registry changes kept for a slow [`Bus::watch`] receiver.
const REGISTRY_EVENT_BACKLOG: usize = 4096;

/// Tuning of the bus device.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BusOptions {
    /// An instance silent for this long is dropped from the registry.
    pub ttl: Duration,
    /// How often silent instances are looked for.
    pub sweep_every: Duration,
    /// Largest message accepted.
    pub max_message_size: usize,
    /// Messages queued per subscriber before the forwarder waits
    /// (back-pressure: the bus never drops events for a slow subscriber).
    pub subscriber_hwm: u32,
    /// Most jobs waiting in one work queue; more are refused ("queue full").
    pub queue_limit: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3),
            sweep_every: Duration::from_millis(250),
            max_message_size: muster_core::wire::DEFAULT_MAX_MESSAGE_SIZE,
            subscriber_hwm: 1_000,
            queue_limit: muster_core::queue::DEFAULT_QUEUE_LIMIT,
        }
    }
}

/// Reads a bus's registry counters from anywhere.
#[derive(Debug, Clone)]
pub struct StatsHandle(registry::SharedStats);

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> RegistryStats {
        self.0.snapshot()
    }
}

/// A running bus device. Dropping it does not stop it; call [`Bus::stop`].
#[derive(Debug)]
pub struct Bus {
    addr: BusAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    stats: registry::SharedStats,
    events: tokio::sync::broadcast::Sender<RegistryEvent>,
    evictions: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Bus {
    /// Binds the registry and the event endpoints and starts serving.
    ///
    /// # Errors
    /// When an endpoint cannot be bound (for example, the port is in use).
    pub async fn start(addr: BusAddr, options: BusOptions) -> Result<Self, Error> {
        let shutdown = CancellationToken::new();

        let router = socket::socket(SocketType::Router, options.max_message_size);
        router
            .bind(addr.registry().as_str())
            .await
            .map_err(|e| zmq_error(&format!("bind registry {}", addr.registry()), e))?;

        let xsub = socket::socket(SocketType::XSub, options.max_message_size);
        xsub.bind(addr.events_in().as_str())
            .await
            .map_err(|e| zmq_error(&format!("bind event inlet {}", addr.events_in()), e))?;
        // Take every event from every publisher: filtering happens at the
        // outlet, so a subscription is complete once the outlet has it.
        xsub.subscribe("")
            .await
            .map_err(|e| zmq_error("subscribe event inlet", e))?;

        let mut out_opts = socket::options(options.max_message_size);
        out_opts.xpub_nodrop = true;
        out_opts.send_hwm = options.subscriber_hwm;
        let xpub = omq_tokio::Socket::new(SocketType::XPub, out_opts);
        xpub.bind(addr.events_out().as_str())
            .await
            .map_err(|e| zmq_error(&format!("bind event outlet {}", addr.events_out()), e))?;

        let stats = registry::SharedStats::default();
        let (events, _) = tokio::sync::broadcast::channel(REGISTRY_EVENT_BACKLOG);
        let (evictions, evictions_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(registry::run(
            router,
            options.clone(),
            shutdown.clone(),
            stats.clone(),
            events.clone(),
            evictions_rx,
        )));
        let proxy_stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                r = Proxy::new(xsub, xpub).run() => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "event forwarder stopped");
                    }
                }
                () = proxy_stop.cancelled() => {}
            }
        }));
        tracing::info!(
            registry = %addr.registry(),
            events_in = %addr.events_in(),
            events_out = %addr.events_out(),
            "bus listening"
        );
        Ok(Self {
            addr,
            shutdown,
            tasks,
            stats,
            events,
            evictions,
        })
    }

    /// Where the bus listens.
    pub fn addr(&self) -> &BusAddr {
        &self.addr
    }

    /// Registry counters.
    pub fn stats(&self) -> RegistryStats {
        self.stats.snapshot()
    }

    /// A handle that reads the registry counters, for another task.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.stats.clone())
    }

    /// Registry changes from now on (registrations, goodbyes, expiries).
    /// A receiver that falls more than 4,096 changes behind gets
    /// `Lagged` and should list the registry again.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// Drops `instance` (and the `<instance>-<service>` ids of a group
    /// process) from the registry now, rather than after the heartbeat
    /// ttl: the host calls this when it sees the process end, so callers
    /// stop picking a dead instance at once.
    pub fn evict(&self, instance: &str) {
        let _ = self.evictions.send(instance.to_owned());
    }

    /// Stops serving and closes the endpoints.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
