//! The embedded bus device: registry plus event forwarder.

mod forwarder;
mod registry;
mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_core::Error;
use omq_tokio::{Socket, SocketType};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::addr::BusAddr;
use crate::socket::{self, zmq_error};

pub use registry::RegistryEvent;
pub use store::{BadFsyncPolicy, FsyncPolicy, QueueStore};

/// Registry changes kept for a slow [`Bus::watch`] receiver.
const REGISTRY_EVENT_BACKLOG: usize = 4096;

/// Largest instance record accepted by default, 256 KiB.
pub const DEFAULT_MAX_REGISTRATION_SIZE: usize = 256 * 1024;

/// Heartbeats a second a bus takes at most unless told otherwise
/// ([`BusOptions::heartbeats_per_sec`]).
pub const DEFAULT_HEARTBEATS_PER_SEC: u32 = 50;

/// Tuning of the bus device.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BusOptions {
    /// An instance silent for this long is dropped from the registry
    /// (longer when the bus has slowed its heartbeats, below).
    pub ttl: Duration,
    /// Heartbeats a second the bus takes at most: past this many
    /// instances it asks each to send one only every `instances /
    /// heartbeats_per_sec` seconds, and waits 3.3 of those before it
    /// drops a silent one (20 s and 66 s at 1,000 instances). Each
    /// heartbeat costs an embedded bus's host 200-350 µs of CPU on a
    /// small VM (`docs/benchmarks.md`, "Quiet heartbeats"), so 50 keep
    /// an idle host under 5% of a core at 1,000 instances, where 125 kept
    /// it near 7%. Detection stays as fast as before up to 50 instances;
    /// a supervised instance whose process ends leaves at once anyway.
    pub heartbeats_per_sec: u32,
    /// How often silent instances are looked for.
    pub sweep_every: Duration,
    /// Largest message accepted.
    pub max_message_size: usize,
    /// Event messages queued per subscriber; beyond, that subscriber's
    /// oldest is dropped (and counted by it). Nobody else waits for it.
    pub subscriber_hwm: u32,
    /// How much the work queues hold; more is refused ("queue full").
    pub queue_limits: muster_core::queue::QueueLimits,
    /// Where the jobs of the work queues are kept: in memory (the
    /// default of the library) or in a job log on disk (the default of the
    /// host and of `muster bus`, in their state directory).
    pub queue_store: QueueStore,
    /// Largest instance record `register` accepts (its methods' schemas
    /// included); a larger one is refused.
    pub max_registration_size: usize,
    /// Most instances registered at once; more are refused.
    pub max_instances: usize,
    /// The master secret that registry verbs must prove a credential of
    /// (`docs/security.md`). `None` is an open bus: every verb is taken
    /// from anyone (tests, and a bus nobody else can reach).
    pub secret: Option<muster_core::auth::MasterSecret>,
    /// The fleet's CURVE keys (`curve.rs`): the bus's three endpoints are
    /// CURVE servers, and admit only the fleet's and `authorized/` keys.
    pub curve: Option<crate::Curve>,
    /// Listen in the clear beyond loopback (`MUSTER_PLAIN_TCP=1`,
    /// `--plain-tcp`); without CURVE the bus otherwise refuses to.
    pub plain_tcp: bool,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3),
            heartbeats_per_sec: DEFAULT_HEARTBEATS_PER_SEC,
            sweep_every: Duration::from_millis(250),
            max_message_size: muster_core::wire::DEFAULT_MAX_MESSAGE_SIZE,
            subscriber_hwm: 1_000,
            queue_limits: muster_core::queue::QueueLimits::default(),
            queue_store: QueueStore::Memory,
            max_registration_size: DEFAULT_MAX_REGISTRATION_SIZE,
            max_instances: 10_000,
            secret: None,
            curve: None,
            plain_tcp: false,
        }
    }
}

impl BusOptions {
    /// The heartbeat interval a bus with these options asks of each
    /// sender among `instances`, so that they send no more than
    /// `heartbeats_per_sec` a second in all; `None` while they fit in one
    /// a second each (senders keep their own interval).
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = muster_zmq::BusOptions::default(); // 50 a second
    /// assert_eq!(options.heartbeat_interval(50), None);
    /// assert_eq!(options.heartbeat_interval(1000), Some(Duration::from_secs(20)));
    /// ```
    pub fn heartbeat_interval(&self, instances: usize) -> Option<Duration> {
        let budget = u64::from(self.heartbeats_per_sec.max(1));
        let instances = u64::try_from(instances).unwrap_or(u64::MAX);
        (instances > budget).then(|| Duration::from_millis(instances.saturating_mul(1000) / budget))
    }
}

/// Counters of a bus, for `muster bus` logs, `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusStats {
    /// Instances registered now.
    pub instances: u64,
    /// Instances dropped for missing heartbeats.
    pub expired: u64,
    /// Registry messages that could not be decoded.
    pub bad_messages: u64,
    /// Event messages forwarded from publishers to subscribers.
    pub events_forwarded: u64,
    /// Messages on the event outlet that were not subscriptions (skipped).
    pub bad_subscriptions: u64,
    /// Times the forwarder started again after a socket error.
    pub forwarder_restarts: u64,
    /// Events of durable groups dropped to keep within their retention.
    pub durable_dropped: u64,
    /// Heartbeats received (one a process, for all the instances it
    /// serves; slowed past `BusOptions::heartbeats_per_sec`).
    pub heartbeats: u64,
    /// Heartbeats answered: all of an older sender's; of a quiet one's,
    /// those that told it of an unknown instance or a new interval.
    pub heartbeats_answered: u64,
    /// Registry listings sent whole: to a caller's first refresh, after a
    /// bus restart, or to a caller too far behind.
    pub listings_whole: u64,
    /// Registry listings sent as the changes since the caller's version.
    pub listings_of_changes: u64,
}

/// Reads a bus's counters from anywhere.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    registry: registry::SharedStats,
    forwarder: Arc<forwarder::ForwarderCounters>,
}

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> BusStats {
        let f = &self.forwarder;
        let mut stats = BusStats {
            events_forwarded: f.forwarded.load(Ordering::Relaxed),
            bad_subscriptions: f.bad_subscriptions.load(Ordering::Relaxed),
            forwarder_restarts: f.restarts.load(Ordering::Relaxed),
            ..BusStats::default()
        };
        self.registry.fill(&mut stats);
        stats
    }
}

/// A running bus device. [`Bus::stop`] stops it and waits for its tasks;
/// dropping it stops it without waiting (a bus left running past its
/// owner kept a runtime from shutting down: its forwarder was still
/// polled while the test that owned it ended).
#[derive(Debug)]
pub struct Bus {
    addr: BusAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    stats: StatsHandle,
    events: tokio::sync::broadcast::Sender<RegistryEvent>,
    evictions: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

impl Bus {
    /// Binds the registry and the event endpoints and starts serving.
    ///
    /// # Errors
    /// When an endpoint cannot be bound (for example, the port is in use),
    /// or the job log cannot be opened (another bus has it, or its
    /// directory is not writable).
    pub async fn start(addr: BusAddr, options: BusOptions) -> Result<Self, Error> {
        let shutdown = CancellationToken::new();
        crate::curve::check_listen(
            "the bus",
            &addr.host,
            options.curve.as_ref(),
            options.plain_tcp,
        )?;
        let curve = options.curve.as_ref();
        let max = options.max_message_size;
        let queues = registry::Queues::open(&options).await?;

        let router = Socket::new(SocketType::Router, socket::listening(max, curve)?);
        router
            .bind(addr.registry().as_str())
            .await
            .map_err(|e| zmq_error(&format!("bind registry {}", addr.registry()), e))?;

        let xsub = Socket::new(SocketType::XSub, socket::listening(max, curve)?);
        xsub.bind(addr.events_in().as_str())
            .await
            .map_err(|e| zmq_error(&format!("bind event inlet {}", addr.events_in()), e))?;
        // Take every event from every publisher: filtering happens at the
        // outlet, so a subscription is complete once the outlet has it.
        xsub.subscribe("")
            .await
            .map_err(|e| zmq_error("subscribe event inlet", e))?;

        // Each subscriber has its own queue of `subscriber_hwm` messages;
        // a full one loses its oldest (RabbitMQ's drop-head), so one
        // stopped subscriber never holds up the others or the publishers.
        let mut out_opts = socket::listening(max, curve)?;
        out_opts.xpub_nodrop = false;
        out_opts.on_mute = omq_tokio::OnMute::DropOldest;
        out_opts.send_hwm = options.subscriber_hwm;
        let xpub = Socket::new(SocketType::XPub, out_opts);
        xpub.bind(addr.events_out().as_str())
            .await
            .map_err(|e| zmq_error(&format!("bind event outlet {}", addr.events_out()), e))?;

        let stats = StatsHandle {
            registry: registry::SharedStats::default(),
            forwarder: Arc::default(),
        };
        let (events, _) = tokio::sync::broadcast::channel(REGISTRY_EVENT_BACKLOG);
        let (evictions, evictions_rx) = tokio::sync::mpsc::unbounded_channel();
        let (to_registry, kept) = tokio::sync::mpsc::channel(forwarder::TAP_BACKLOG);
        let tap = Arc::new(forwarder::Tap::new(to_registry));
        tap.set(queues.tap_patterns());
        let tasks = vec![
            tokio::spawn(registry::run(
                router,
                queues,
                registry::Durable {
                    tap: tap.clone(),
                    kept,
                },
                options.clone(),
                shutdown.clone(),
                stats.registry.clone(),
                events.clone(),
                evictions_rx,
            )),
            tokio::spawn(forwarder::run(
                xsub,
                xpub,
                tap,
                stats.forwarder.clone(),
                shutdown.clone(),
            )),
        ];
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

    /// The bus's counters now.
    pub fn stats(&self) -> BusStats {
        self.stats.snapshot()
    }

    /// A handle that reads the counters, for another task.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
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
    /// stop picking a dead instance at once. The jobs its consumers held
    /// go back to their queues, each delivery counted as an attempt, with
    /// `cause` (how the process ended) as the job's reason.
    pub fn evict(&self, instance: &str, cause: &str) {
        let _ = self.evictions.send((instance.to_owned(), cause.to_owned()));
    }

    /// Stops serving and closes the endpoints.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
