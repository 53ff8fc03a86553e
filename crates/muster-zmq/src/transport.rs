//! The ZeroMQ transport: direct DEALER → ROUTER RPC, events through the
//! bus forwarder, discovery through the bus registry.

mod control_client;
mod events;
mod outbox;
mod queue_source;
mod rpc_client;
mod server;
mod view;

use std::sync::Arc;
use std::time::Duration;

use muster_core::durable::{DurableGroup, EventJobs};
use muster_core::queue::consumer;
use muster_core::queue::{ConsumeOptions, Job, JobSink, QueueCommand, QueueReply};
use muster_core::registry::{InstanceInfo, StatusUpdate};
use muster_core::transport::{
    BoxFuture, Dispatch, EventSink, Registration, Served, Subscribed, Transport,
};
use muster_core::wire::Envelope;
use muster_core::{Error, ErrorKind, RpcError};

use crate::addr::{Addresses, BusAddr};
use crate::control;
use control_client::ControlClient;

/// Tuning of the ZeroMQ transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ZmqOptions {
    /// Largest message sent or accepted; bigger requests get -32003.
    pub max_message_size: usize,
    /// Interface instances bind their RPC endpoint on.
    pub bind_host: String,
    /// The host callers are told to reach RPC endpoints at, when it is
    /// not `bind_host` (NAT, a container's published ports;
    /// `MUSTER_ADVERTISE_HOST`). The port stays the bound one.
    pub advertise_host: Option<String>,
    /// Ports RPC endpoints bind, the first free one taken
    /// (`MUSTER_RPC_PORTS`); `None`: any free port.
    pub rpc_ports: Option<crate::PortRange>,
    /// How often an instance tells the bus it is alive.
    pub heartbeat_every: Duration,
    /// How often a caller refreshes its copy of the registry.
    pub refresh_every: Duration,
    /// Wait for the bus on control calls (register, list).
    pub control_timeout: Duration,
    /// Bytes of replies an instance holds for one caller that does not
    /// take them as fast as they come; a reply beyond is answered with
    /// -32002 instead (`docs/guarantees.md`, "Limits").
    pub reply_backlog: usize,
    /// What this process proves itself with on the registry
    /// (`docs/security.md`); `None` works on an open bus only.
    pub credential: Option<muster_core::auth::Credential>,
    /// The fleet's CURVE keys (`curve.rs`): every socket of this process
    /// handshakes with them. `None`: plain TCP.
    pub curve: Option<crate::Curve>,
    /// Let an instance's RPC endpoint listen in the clear beyond loopback
    /// (`MUSTER_PLAIN_TCP=1`); refused otherwise.
    pub plain_tcp: bool,
}

impl Default for ZmqOptions {
    fn default() -> Self {
        Self {
            max_message_size: muster_core::wire::DEFAULT_MAX_MESSAGE_SIZE,
            bind_host: "127.0.0.1".to_owned(),
            advertise_host: None,
            rpc_ports: None,
            heartbeat_every: Duration::from_millis(1000),
            refresh_every: Duration::from_millis(500),
            control_timeout: Duration::from_secs(1),
            reply_backlog: 64 << 20,
            credential: None,
            curve: None,
            plain_tcp: false,
        }
    }
}

/// How this process finds its peers.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Through the embedded bus.
    Bus(BusAddr),
    /// Point to point, from an addresses file.
    Direct(Addresses),
}

/// Runs `job` every `period` until the transport shuts down or is dropped
/// (heartbeats, registry refreshes).
pub(crate) fn spawn_periodic<F, Fut>(inner: &Arc<Inner>, period: Duration, job: F)
where
    F: Fn(Arc<Inner>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(inner);
    let stop = inner.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(inner) = weak.upgrade() else { break };
            job(inner).await;
        }
    });
}

/// The ZeroMQ transport. Cheap to clone; all clones share sockets.
#[derive(Debug, Clone)]
pub struct ZmqTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) mode: Mode,
    pub(crate) options: ZmqOptions,
    pub(crate) control: Option<Arc<ControlClient>>,
    pub(crate) view: view::RegistryView,
    pub(crate) events: events::Events,
    pub(crate) served: server::ServedSet,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

impl ZmqTransport {
    /// Joins the bus at `addr`. Does not wait for the bus: calls made while
    /// it is unreachable fail with a clear error, and instances register as
    /// soon as it appears.
    ///
    /// # Errors
    /// When sockets cannot be created.
    pub async fn connect(addr: BusAddr, options: ZmqOptions) -> Result<Self, Error> {
        let control = ControlClient::connect(&addr, &options).await?;
        Ok(Self::build(Mode::Bus(addr), options, Some(control)).await)
    }

    /// Direct mode: no bus, peers from an addresses file.
    ///
    /// # Errors
    /// Never at present; kept fallible for symmetry with [`Self::connect`].
    pub async fn direct(addresses: Addresses, options: ZmqOptions) -> Result<Self, Error> {
        Ok(Self::build(Mode::Direct(addresses), options, None).await)
    }

    async fn build(mode: Mode, options: ZmqOptions, control: Option<Arc<ControlClient>>) -> Self {
        let shutdown = tokio_util::sync::CancellationToken::new();
        Self {
            inner: Arc::new(Inner {
                view: view::RegistryView::new(&mode, &options).await,
                events: events::Events::default(),
                served: server::ServedSet::default(),
                mode,
                options,
                control,
                shutdown,
            }),
        }
    }
}

impl Transport for ZmqTransport {
    fn kind(&self) -> &'static str {
        "zmq"
    }

    fn serve(
        &self,
        registration: Registration,
        dispatch: Arc<dyn Dispatch>,
    ) -> BoxFuture<'_, Result<Box<dyn Served>, Error>> {
        Box::pin(server::serve(self.inner.clone(), registration, dispatch))
    }

    fn request(
        &self,
        request: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Envelope, RpcError>> {
        Box::pin(rpc_client::request(&self.inner, request, timeout))
    }

    fn publish(&self, event: Envelope) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(events::publish(&self.inner, event))
    }

    fn subscribe(
        &self,
        patterns: &[String],
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let patterns = patterns.to_vec();
        Box::pin(events::subscribe(self.inner.clone(), patterns, sink))
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, Error>> {
        Box::pin(async move {
            self.inner.view.refresh(&self.inner).await?;
            Ok(self.inner.view.all())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.shutdown.cancel();
            // Undelivered events are reported (logged) by `close` itself.
            let _undelivered = self.inner.events.close().await;
        })
    }

    fn report(&self, update: StatusUpdate) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            // Direct mode has no bus and so no host to tell.
            let Some(control) = &self.inner.control else {
                return Ok(());
            };
            // The registry acknowledges the report; a lost message or a
            // bus restarting is retried, so an update is never dropped
            // silently.
            let mut last = None;
            for _ in 0..3 {
                match control
                    .call::<_, control::Ack>(
                        control::UPDATE,
                        &update,
                        self.inner.options.control_timeout,
                    )
                    .await
                {
                    Ok(control::Ack { error: None }) => return Ok(()),
                    Ok(control::Ack { error: Some(e) }) => {
                        return Err(Error::new(ErrorKind::Protocol, e));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| Error::new(ErrorKind::Unavailable, "no bus")))
        })
    }

    fn claim(&self, key: &str, holder: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, Error>> {
        let claim = crate::control::Claim {
            key: key.to_owned(),
            holder: holder.to_owned(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        Box::pin(async move {
            // Direct mode has no bus: nobody to compete with.
            let Some(control) = &self.inner.control else {
                return Ok(true);
            };
            let reply: crate::control::ClaimReply = control
                .call(
                    crate::control::CLAIM,
                    &claim,
                    self.inner.options.control_timeout,
                )
                .await?;
            Ok(reply.granted)
        })
    }

    fn enqueue(&self, queue: &str, job: Job) -> BoxFuture<'_, Result<(), Error>> {
        const ENQUEUE_TIMEOUT_FACTOR: u32 = 5;
        let req = control::Enqueue {
            queue: queue.to_owned(),
            job,
        };
        Box::pin(async move {
            // A bus with a job log answers once the job is on disk, which
            // under a burst of producers takes longer than a registry verb.
            let reply: control::Ack = self
                .bus_control()?
                .call(
                    control::ENQUEUE,
                    &req,
                    self.inner.options.control_timeout * ENQUEUE_TIMEOUT_FACTOR,
                )
                .await?;
            match reply.error {
                None => Ok(()),
                Some(e) => Err(Error::new(ErrorKind::Unavailable, e)),
            }
        })
    }

    fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
        sink: Arc<dyn JobSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let queue = queue.to_owned();
        Box::pin(async move {
            let source = Arc::new(queue_source::ZmqSource {
                control: self.bus_control()?.clone(),
                queue,
                holder: format!("{}-{}", options.holder, muster_core::id::short_id()),
                timeout: self.inner.options.control_timeout,
            });
            Ok(Box::new(consumer::spawn(source, sink, &options)) as Box<dyn Subscribed>)
        })
    }

    fn subscribe_durable(
        &self,
        group: &DurableGroup,
        options: ConsumeOptions,
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let group = group.clone();
        Box::pin(async move {
            group.check()?;
            // Declared before the member takes from the queue: from the
            // bus's answer on, every matching event is kept.
            let reply: control::Ack = self
                .bus_control()?
                .call(control::DURABLE, &group, self.inner.options.control_timeout)
                .await?;
            if let Some(e) = reply.error {
                return Err(Error::new(ErrorKind::Config, e));
            }
            self.consume(&group.queue(), options, Arc::new(EventJobs::new(sink)))
                .await
        })
    }

    fn queue_command(
        &self,
        queue: &str,
        command: QueueCommand,
    ) -> BoxFuture<'_, Result<QueueReply, Error>> {
        let req = control::QueueOp {
            queue: queue.to_owned(),
            command,
        };
        Box::pin(async move {
            let reply: control::QueueOpReply = self
                .bus_control()?
                .call(control::QUEUE, &req, self.inner.options.control_timeout)
                .await?;
            match (reply.reply, reply.error) {
                (Some(r), None) => Ok(r),
                (_, e) => Err(Error::new(
                    ErrorKind::Protocol,
                    e.unwrap_or_else(|| "empty reply to a queue command".into()),
                )),
            }
        })
    }
}

impl ZmqTransport {
    /// The registry client; direct mode has no bus to hold queues.
    fn bus_control(&self) -> Result<&Arc<ControlClient>, Error> {
        self.inner.control.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "work queues live on the bus; direct mode (an addresses file) has none",
            )
        })
    }
}
