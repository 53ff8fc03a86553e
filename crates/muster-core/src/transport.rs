//! The transport trait: how RPC, events and discovery map onto one kind of
//! bus. Every pattern goes through it so that every feature works on every
//! bus, and the service framework never names a transport.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::durable::DurableGroup;
use crate::error::{Error, RpcError};
use crate::queue::{ConsumeOptions, Job, JobSink, QueueCommand, QueueReply};
use crate::registry::{InstanceInfo, StatusUpdate};
use crate::wire::Envelope;

/// A boxed, sendable future: the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Answers requests for a served instance. The transport calls it for each
/// request and sends whatever reply it resolves to.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one request and produces its reply envelope; `None` for a
    /// JSON-RPC notification (a body without `id`), which gets no reply.
    fn dispatch(&self, request: Envelope) -> BoxFuture<'static, Option<Envelope>>;
}

/// Receives the events of a subscription, one at a time and in order.
pub trait EventSink: Send + Sync + 'static {
    /// Handles one event; the next is delivered after this resolves.
    fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()>;

    /// The transport learned that `count` events on `topic` will never
    /// arrive: they were dropped for this subscriber because it fell too
    /// far behind (each bus's policy is in `docs/guarantees.md`).
    fn missed(&self, topic: &str, count: u64) {
        let _ = (topic, count);
    }
}

/// The events of one subscription, as a stream its reader polls.
pub type EventStream = Pin<Box<dyn futures_core::Stream<Item = Envelope> + Send>>;

/// A subscription read as a stream ([`Transport::subscribe_stream`]).
pub struct StreamSubscription {
    /// The events, in order; the stream ends with the subscription.
    pub events: EventStream,
    /// Stops delivery.
    pub handle: Box<dyn Subscribed>,
}

impl Debug for StreamSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSubscription")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// The default of [`Transport::subscribe_stream`]: delivery into a bounded
/// channel, read as a stream.
struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<Envelope>,
    missed: Arc<AtomicU64>,
}

impl EventSink for ChannelSink {
    fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()> {
        // Room in the channel is the usual case: no clone, no allocation
        // (a boxed `Ready<()>` is zero-sized).
        match self.tx.try_send(event) {
            Err(tokio::sync::mpsc::error::TrySendError::Full(event)) => {
                let tx = self.tx.clone();
                Box::pin(async move {
                    let _ = tx.send(event).await;
                })
            }
            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                Box::pin(std::future::ready(()))
            }
        }
    }

    fn missed(&self, _topic: &str, count: u64) {
        self.missed.fetch_add(count, Ordering::Relaxed);
    }
}

/// A channel's receiving end as a stream.
struct ReceiverStream(tokio::sync::mpsc::Receiver<Envelope>);

impl futures_core::Stream for ReceiverStream {
    type Item = Envelope;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope>> {
        self.0.poll_recv(cx)
    }
}

/// What an instance registers, and how it wants to be served.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The discovery record.
    pub info: InstanceInfo,
    /// Requests handled at once; more wait in the transport (back-pressure).
    pub max_in_flight: usize,
}

/// A served instance. Stopping unregisters it, refuses new requests and
/// waits for the ones in flight.
pub trait Served: Send + Sync + Debug {
    /// Stops intake, then waits up to `grace` for in-flight requests.
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()>;
    /// Endpoint the instance listens on (for logs and discovery).
    fn endpoint(&self) -> String;
}

/// A live subscription; dropping it without [`Subscribed::cancel`] leaves
/// delivery running until the transport closes.
pub trait Subscribed: Send + Sync + Debug {
    /// Stops delivery; returns once no event is being delivered.
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// One kind of bus: the embedded ZeroMQ bus, RabbitMQ, Redis and the
/// in-memory one each implement it, and the framework (`muster`) works on
/// any of them. A new bus implements it and passes the conformance suite
/// (`docs/architecture.md`, "Where things go").
///
/// Services and clients use it through `muster`; used directly:
///
/// ```
/// use std::time::Duration;
/// use muster_core::transport::Transport;
/// use muster_core::wire::{Envelope, Header, Kind};
///
/// # async fn demo(bus: &dyn Transport) -> Result<(), Box<dyn std::error::Error>> {
/// // A JSON-RPC request for `echo.shout`, answered within 5 s.
/// let mut header = Header::new(Kind::Request);
/// header.service = Some("echo".into());
/// header.method = Some("shout".into());
/// let body = r#"{"jsonrpc":"2.0","id":1,"method":"shout","params":{"text":"hi"}}"#;
/// let reply = bus.request(Envelope::new(header, body), Duration::from_secs(5)).await?;
/// println!("{}", String::from_utf8_lossy(&reply.body));
/// # Ok(()) }
/// ```
///
/// # Cancel safety
/// Dropping a `request` future forgets the call: a late reply is discarded.
pub trait Transport: Send + Sync + Debug + 'static {
    /// Short name for logs: `zmq`, `memory`, `amqp`, `redis`.
    fn kind(&self) -> &'static str;

    /// Registers an instance and starts serving its requests.
    fn serve(
        &self,
        registration: Registration,
        dispatch: Arc<dyn Dispatch>,
    ) -> BoxFuture<'_, Result<Box<dyn Served>, Error>>;

    /// Sends a request (header `service`, `method`, optionally `instance`)
    /// and waits up to `timeout` for its reply. Failures of the bus are
    /// coded [`RpcError`]s (timeout, unavailable, method not found).
    fn request(
        &self,
        request: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Envelope, RpcError>>;

    /// Publishes an event (header `topic`).
    fn publish(&self, event: Envelope) -> BoxFuture<'_, Result<(), Error>>;

    /// Delivers events matching any of `patterns` to `sink`.
    fn subscribe(
        &self,
        patterns: &[String],
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>>;

    /// [`Transport::subscribe`] for a reader that polls the events itself
    /// (`Client::subscribe`); `missed` counts the events the bus dropped
    /// for it. The default delivers into a channel of 1,024 events read as
    /// a stream. A transport whose client library queues each
    /// subscription's messages already (NATS) hands out that queue instead
    /// and saves a task and a channel hop per event.
    fn subscribe_stream(
        &self,
        patterns: &[String],
        missed: Arc<AtomicU64>,
    ) -> BoxFuture<'_, Result<StreamSubscription, Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let sink = Arc::new(ChannelSink { tx, missed });
        let patterns = patterns.to_vec();
        Box::pin(async move {
            let handle = self.subscribe(&patterns, sink).await?;
            Ok(StreamSubscription {
                events: Box::pin(ReceiverStream(rx)),
                handle,
            })
        })
    }

    /// Joins the durable group `group` as one of its members: the bus
    /// keeps the group's events while no member is there (within its
    /// retention) and delivers them to `sink` one at a time, in publish
    /// order per publisher, acknowledging each once `deliver` resolves
    /// (at least once). `options.holder` names the member, as a
    /// consumer's holder does; the prefetch bounds the events on their
    /// way to it.
    ///
    /// # Errors
    /// `Config` for an invalid group, or a bus that keeps none.
    fn subscribe_durable(
        &self,
        group: &DurableGroup,
        options: ConsumeOptions,
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let _ = (group, options, sink);
        Box::pin(async move {
            Err(Error::new(
                crate::ErrorKind::Config,
                format!(
                    "the {} transport keeps no durable subscriptions in this mode",
                    self.kind()
                ),
            ))
        })
    }

    /// Every registered instance, with methods and schemas.
    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, Error>>;

    /// Flushes pending sends and closes sockets.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// Reports an instance's progress to the host that supervises it. The
    /// default publishes it on [`crate::registry::UPDATE_TOPIC`]; the
    /// embedded bus sends it to its registry, which acknowledges it, so an
    /// update is never lost to a busy event fabric.
    ///
    /// # Errors
    /// The bus did not take it.
    fn report(&self, update: StatusUpdate) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&update).map_err(|e| {
                Error::new(
                    crate::ErrorKind::Codec,
                    format!("cannot encode update: {e}"),
                )
            })?;
            let header = crate::wire::Header::new(crate::wire::Kind::Event)
                .with_topic(crate::registry::UPDATE_TOPIC)
                .with_transaction(update.transaction);
            self.publish(Envelope::new(header, body)).await
        })
    }

    /// Claims `key` for `holder`: the first claim of a key wins and is
    /// kept for `ttl`; a later claim by the same holder is granted again,
    /// by anyone else refused. This is how a scheduled job runs on one
    /// instance per fire time. The default, for buses with nobody to
    /// compete with (direct mode), grants every claim.
    fn claim(&self, key: &str, holder: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, Error>> {
        let _ = (key, holder, ttl);
        Box::pin(async { Ok(true) })
    }

    /// Adds `job` to the work queue `queue`. Returns once the bus holds it
    /// (on RabbitMQ: confirmed by the broker).
    ///
    /// # Errors
    /// The bus cannot take it (down past the publish wait, queue full).
    fn enqueue(&self, queue: &str, job: Job) -> BoxFuture<'_, Result<(), Error>> {
        let _ = (queue, job);
        Box::pin(async move { Err(no_queues(self.kind())) })
    }

    /// Delivers the jobs of `queue` to `sink`, up to `options.prefetch` at
    /// once, and settles each as the sink says. Cancel the returned handle
    /// to stop; jobs not yet settled go back to the queue.
    fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
        sink: Arc<dyn JobSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let _ = (queue, options, sink);
        Box::pin(async move { Err(no_queues(self.kind())) })
    }

    /// Runs an operator command (stats, peek, purge, requeue-dead).
    fn queue_command(
        &self,
        queue: &str,
        command: QueueCommand,
    ) -> BoxFuture<'_, Result<QueueReply, Error>> {
        let _ = (queue, command);
        Box::pin(async move { Err(no_queues(self.kind())) })
    }
}

fn no_queues(kind: &str) -> Error {
    Error::new(
        crate::ErrorKind::Config,
        format!("the {kind} transport has no work queues in this mode"),
    )
}

/// Checks an event before a transport publishes it: a concrete topic
/// (no wildcards) and a body within `max_message_size`. Returns the topic.
///
/// # Errors
/// `Config` for a bad topic, `TooLarge` for a body over the limit.
pub fn check_event(event: &Envelope, max_message_size: usize) -> Result<&str, Error> {
    let topic = event.header.topic.as_deref().unwrap_or("");
    if !crate::topic::is_valid_topic(topic) {
        return Err(Error::new(
            crate::ErrorKind::Config,
            format!(
                "cannot publish on {topic:?}: a topic is dot-separated tokens without wildcards"
            ),
        ));
    }
    if event.body.len() > max_message_size {
        return Err(Error::new(
            crate::ErrorKind::TooLarge,
            format!(
                "event of {} bytes is over the limit of {max_message_size}",
                event.body.len()
            ),
        ));
    }
    Ok(topic)
}

/// A shared transport handle.
pub type SharedTransport = Arc<dyn Transport>;
