//! [`Client`]: calls, publishes and subscribes from outside a service (the
//! CLI, tests, other programs). A handler's [`Ctx`](crate::Ctx) uses one.
//! (One file past 600 lines: every verb of the client shares its options
//! and its transport; the cancel notice is in `client/cancel.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use tower::ServiceExt;

mod cancel;

use cancel::CancelOnDrop;

use crate::stats::StatsReport;
use crate::transport::{EventStream, SharedTransport, Subscribed};
use crate::wire::{ContentType, Envelope, Header, Kind, jsonrpc};
use crate::{Error, ErrorKind, RpcError};
use muster_core::registry::{InstanceInfo, builtin};

/// Default time a call waits for its reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of one call.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// How long to wait; the client's default when `None`.
    pub timeout: Option<Duration>,
    /// Send to this instance only.
    pub instance: Option<String>,
    /// Transaction to carry.
    pub transaction: Option<String>,
    /// W3C `traceparent` to carry: the call joins that trace, as a child
    /// of that span (`docs/tracing.md`). Without one, the callee starts a
    /// trace.
    pub traceparent: Option<String>,
    /// W3C `tracestate` to carry with it.
    pub tracestate: Option<String>,
    /// Gives up the call when this token is cancelled: the instance
    /// running it is told, stops its handler, and the call returns the
    /// timeout error. (Dropping the call's future does the same, without
    /// waiting for the notice to be sent.)
    pub cancel: Option<tokio_util::sync::CancellationToken>,
}

impl CallOptions {
    /// Gives the call up when `token` is cancelled ([`CallOptions::cancel`]).
    ///
    /// ```
    /// # async fn demo(client: muster::Client) {
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let stop = CancellationToken::new();
    /// let options = muster::CallOptions::default().cancel_on(stop.clone());
    /// let call = client.call_with::<_, u64>("report.build", &(), options);
    /// // Elsewhere, when the answer is no longer wanted: `stop.cancel()`.
    /// # let _ = call;
    /// # }
    /// ```
    #[must_use]
    pub fn cancel_on(mut self, token: tokio_util::sync::CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Targets one instance.
    #[must_use]
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Carries a transaction id.
    #[must_use]
    pub fn transaction(mut self, id: Option<String>) -> Self {
        self.transaction = id;
        self
    }

    /// Joins a trace: the W3C `traceparent` of the caller's span.
    #[must_use]
    pub fn traceparent(mut self, value: impl Into<String>) -> Self {
        self.traceparent = Some(value.into());
        self
    }
}

/// A handle for calling methods and using events on a bus. Cheap to clone.
///
/// On a real bus, [`Client::connect`] takes its URL (`zmq://127.0.0.1:7700`,
/// `amqp://...`, `redis://...`); here the in-memory bus of
/// [`testing`](crate::testing) stands in, so the example runs:
///
/// ```
/// use muster::prelude::*;
/// use muster::testing::TestBus;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = TestBus::new();
/// let _echo = bus.start(Service::new("echo").rpc("shout", |Args(text): Args<String>| async move {
///     text.to_uppercase()
/// }))
/// .await?;
/// let client: &Client = bus.client();
///
/// // A call: JSON in, JSON out, errors as `RpcError`.
/// let loud: String = client.call("echo.shout", &"hi").await?;
/// assert_eq!(loud, "HI");
/// let unknown = client.call::<_, String>("echo.whisper", &"hi").await.unwrap_err();
/// assert_eq!(unknown.code, muster::code::METHOD_NOT_FOUND);
///
/// // Events: subscribe with wildcards, then publish.
/// let mut events = client.subscribe(&["orders.*"]).await?;
/// client.publish("orders.created", &serde_json::json!({"id": 7})).await?;
/// let event = events.recv().await.expect("the event");
/// assert_eq!((event.topic.as_str(), &event.payload["id"]), ("orders.created", &serde_json::json!(7)));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    transport: SharedTransport,
    timeout: Duration,
    content_type: ContentType,
    next: Arc<AtomicU64>,
    /// Who calls, in each request's `caller` key: random for a program's
    /// client, the instance's id inside a service (so the host can say it
    /// is gone).
    caller: Arc<str>,
    /// The layers given to [`Client::layer`], first outermost, and the
    /// stack built from them; calls go straight to the transport without.
    layers: Vec<crate::layer::ClientLayerFn>,
    stack: Option<crate::layer::Calls>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .field("content_type", &self.content_type)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client over an existing transport.
    pub fn new(transport: SharedTransport) -> Self {
        Self {
            transport,
            timeout: DEFAULT_TIMEOUT,
            content_type: ContentType::Json,
            next: Arc::new(AtomicU64::new(1)),
            caller: muster_core::id::short_id().into(),
            layers: Vec::new(),
            stack: None,
        }
    }

    /// Wraps every call this client makes in a `tower` layer (timeout,
    /// concurrency limit, load shed, retry, or
    /// [`RetryIdempotent`](crate::layer::RetryIdempotent)); layers added
    /// first are outermost. A layer sees the call as an
    /// [`OutgoingCall`](crate::layer::OutgoingCall) and its outcome as the
    /// JSON result or an [`RpcError`] (the bus's or the method's). A shed
    /// call fails with -32002, a layer's timeout with -32000.
    ///
    /// ```
    /// use muster::prelude::*;
    /// use muster::testing::TestBus;
    /// use tower::ServiceBuilder;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = TestBus::new();
    /// let _echo = bus.start(Service::new("echo").rpc("shout", |Args(t): Args<String>| async move {
    ///     t.to_uppercase()
    /// }))
    /// .await?;
    /// let client = bus.client().clone().layer(
    ///     ServiceBuilder::new()
    ///         .load_shed()
    ///         .concurrency_limit(64)
    ///         .into_inner(),
    /// );
    /// assert_eq!(client.call::<_, String>("echo.shout", &"hi").await?, "HI");
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<crate::layer::Calls> + Send + Sync + 'static,
        L::Service: tower::Service<crate::layer::OutgoingCall, Response = Box<RawValue>>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<crate::layer::OutgoingCall>>::Error:
            Into<crate::service::BoxError>,
        <L::Service as tower::Service<crate::layer::OutgoingCall>>::Future: Send + 'static,
    {
        self.layers.push(crate::layer::erase_client(layer));
        self.stack = Some(crate::layer::client_stack(
            self.transport.clone(),
            &self.layers,
        ));
        self
    }

    /// Connects to a bus by URL (`zmq://HOST:PORT`).
    ///
    /// # Errors
    /// A bad URL or sockets that cannot be made.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Ok(Self::new(crate::bus::connect(url, None).await?))
    }

    /// The transport underneath.
    pub fn transport(&self) -> &SharedTransport {
        &self.transport
    }

    /// Sets the default timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends bodies as MessagePack instead of JSON.
    #[must_use]
    pub fn with_content_type(mut self, ct: ContentType) -> Self {
        self.content_type = ct;
        self
    }

    /// Calls `service.method` and decodes the result.
    ///
    /// # Errors
    /// The method's error reply, or a bus failure coded as an [`RpcError`].
    pub async fn call<A, R>(&self, target: &str, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.call_with(target, args, CallOptions::default()).await
    }

    /// [`Client::call`] with options.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_with<A, R>(
        &self,
        target: &str,
        args: &A,
        options: CallOptions,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let decoded = match &self.stack {
            Some(stack) => {
                let raw = self.through_layers(stack, target, args, options).await?;
                serde_json::from_str(raw.get())
                    .map_err(|e| RpcError::parse_error(format!("result: {e}")))
            }
            None => {
                let (ct, reply) = self.exchange(target, args, options).await?;
                jsonrpc::decode_reply_as(ct, &reply.body)
            }
        };
        decoded.map_err(|mut e| {
            if e.code == crate::code::PARSE_ERROR {
                e.message = format!("{target}: {}", e.message);
            }
            e
        })
    }

    /// Calls and returns the raw JSON result.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_raw<A: Serialize + ?Sized>(
        &self,
        target: &str,
        args: &A,
        options: CallOptions,
    ) -> Result<Box<RawValue>, RpcError> {
        if let Some(stack) = &self.stack {
            return self.through_layers(stack, target, args, options).await;
        }
        let (ct, reply) = self.exchange(target, args, options).await?;
        jsonrpc::decode_reply(ct, &reply.body)?
    }

    /// Sends a call through the client's layers.
    async fn through_layers<A: Serialize + ?Sized>(
        &self,
        stack: &crate::layer::Calls,
        target: &str,
        args: &A,
        options: CallOptions,
    ) -> Result<Box<RawValue>, RpcError> {
        let cancel = options.cancel.clone();
        let (request, timeout, n) = self.request(target, args, options)?;
        let guard = CancelOnDrop::new(self, target, n);
        let call = crate::layer::OutgoingCall {
            target: target.to_owned(),
            request,
            timeout,
            transport: self.transport.clone(),
        };
        let answer = stack.clone().oneshot(call);
        guard
            .until_cancelled(cancel, async {
                answer.await.map_err(crate::layer::refusal)
            })
            .await
    }

    /// The `caller` key of this client's call number `n`: `<caller>/<n>`.
    /// Built by hand: `format!` costs a call about 850 instructions more
    /// (callgrind, `examples/percall.rs`).
    fn call_key(&self, n: u64) -> String {
        let mut digits = itoa::Buffer::new();
        let n = digits.format(n);
        let mut key = String::with_capacity(self.caller.len() + 1 + n.len());
        key.push_str(&self.caller);
        key.push('/');
        key.push_str(n);
        key
    }

    /// This client, calling as `caller` (an instance's id).
    pub(crate) fn calling_as(mut self, caller: &str) -> Self {
        self.caller = caller.into();
        self
    }

    /// The request envelope of a call, how long to wait for its reply,
    /// and the call's number.
    fn request<A: Serialize + ?Sized>(
        &self,
        target: &str,
        args: &A,
        options: CallOptions,
    ) -> Result<(Envelope, Duration, u64), RpcError> {
        let (service, method) = split_target(target)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let body = jsonrpc::encode_request(self.content_type, id, method, args)?;
        let mut header = Header::request(String::new(), service, method);
        header.content_type = self.content_type.header_value();
        header.transaction = options.transaction;
        header.instance = options.instance;
        header.traceparent = options.traceparent;
        header.tracestate = options.tracestate;
        header.caller = Some(self.call_key(id));
        let timeout = options.timeout.unwrap_or(self.timeout);
        Ok((Envelope::new(header, body), timeout, id))
    }

    /// Sends a request and returns the reply envelope and its content type.
    async fn exchange<A: Serialize + ?Sized>(
        &self,
        target: &str,
        args: &A,
        options: CallOptions,
    ) -> Result<(ContentType, Envelope), RpcError> {
        let cancel = options.cancel.clone();
        let (request, timeout, n) = self.request(target, args, options)?;
        let guard = CancelOnDrop::new(self, target, n);
        let reply = guard
            .until_cancelled(cancel, self.transport.request(request, timeout))
            .await?;
        let ct = ContentType::from_header(reply.header.content_type.as_deref())
            .map_err(RpcError::parse_error)?;
        Ok((ct, reply))
    }

    /// Publishes an event.
    ///
    /// # Errors
    /// A bad topic, an unencodable value, or no bus.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), Error> {
        self.publish_in(topic, value, None, None).await
    }

    /// Adds a job to the work queue `queue`; returns once the bus holds it.
    ///
    /// # Errors
    /// A bad queue name, an unencodable value, a full queue or no bus.
    pub async fn enqueue<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        job: &T,
    ) -> Result<String, Error> {
        self.enqueue_in(queue, job, None, None, None).await
    }

    /// [`Client::enqueue`] under a job id of the caller's choosing. An
    /// enqueue that failed while the broker was away may still have been
    /// taken (the broker had it, its confirmation was lost): retry it with
    /// the same id, and consumers that must act once can skip an id they
    /// have seen (`docs/guarantees.md`, "Work queues").
    ///
    /// # Errors
    /// As [`Client::enqueue`].
    pub async fn enqueue_with_id<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        id: &str,
        job: &T,
    ) -> Result<(), Error> {
        self.enqueue_in(queue, job, None, Some(id.to_owned()), None)
            .await
            .map(drop)
    }

    pub(crate) async fn enqueue_in<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        job: &T,
        transaction: Option<String>,
        id: Option<String>,
        traceparent: Option<String>,
    ) -> Result<String, Error> {
        if !muster_core::queue::is_valid_queue_name(queue) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("invalid queue name {queue:?}: use letters, digits, _, -, . and :"),
            ));
        }
        let body = serde_json::to_vec(job)
            .map_err(|e| Error::new(ErrorKind::Codec, format!("cannot encode job: {e}")))?;
        let mut job = muster_core::queue::Job::new(body);
        job.transaction = transaction;
        job.traceparent = traceparent;
        if let Some(id) = id {
            job.id = id;
        }
        let id = job.id.clone();
        self.transport.enqueue(queue, job).await?;
        Ok(id)
    }

    pub(crate) async fn publish_in<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
        transaction: Option<String>,
        traceparent: Option<String>,
    ) -> Result<(), Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::new(ErrorKind::Codec, format!("cannot encode event: {e}")))?;
        // Filled in place: the builder's moves of the whole header were
        // 300 instructions an event (callgrind, `examples/perevent.rs`).
        let mut header = Header::new(Kind::Event);
        header.topic = Some(topic.to_owned());
        header.transaction = transaction;
        header.traceparent = traceparent;
        self.transport.publish(Envelope::new(header, body)).await
    }

    /// Subscribes to topic patterns; events arrive in order on the
    /// returned [`Subscription`]. The subscription is active when this
    /// returns: later events are not lost.
    ///
    /// # Errors
    /// A bad pattern, or no bus.
    pub async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription, Error> {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        let missed = Arc::new(AtomicU64::new(0));
        let sub = self
            .transport
            .subscribe_stream(&patterns, missed.clone())
            .await?;
        Ok(Subscription {
            events: sub.events,
            handle: Some(sub.handle),
            missed,
        })
    }

    /// Joins the durable group `group` on `patterns` (see
    /// [`crate::Service::durable`]): events published while no member of
    /// the group runs are kept within `retention` and arrive here when it
    /// subscribes again, in publish order per publisher. An event is
    /// acknowledged when [`Subscription::recv`] returns it: one not read
    /// when the subscription ends stays with the bus for the next member.
    ///
    /// # Errors
    /// An invalid group or pattern, no bus, or a bus that keeps no
    /// durable subscriptions.
    pub async fn subscribe_durable(
        &self,
        group: &str,
        patterns: &[&str],
        retention: crate::Retention,
    ) -> Result<Subscription, Error> {
        let group = muster_core::durable::DurableGroup::new(
            group,
            patterns.iter().map(|p| (*p).to_owned()).collect(),
            retention,
        )?;
        let missed = Arc::new(AtomicU64::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let sink = Arc::new(HandOver {
            tx,
            missed: missed.clone(),
        });
        let holder = format!("client-{}", muster_core::id::short_id());
        // At its end the subscription gives back at once the event that
        // waits for its reader.
        let options =
            muster_core::queue::ConsumeOptions::new(holder).stop_grace(std::time::Duration::ZERO);
        let handle = self
            .transport
            .subscribe_durable(&group, options, sink)
            .await?;
        let events = futures_util::stream::unfold(rx, |mut rx| async move {
            let (event, taken) = rx.recv().await?;
            let _ = taken.send(());
            Some((event, rx))
        });
        Ok(Subscription {
            events: Box::pin(events),
            handle: Some(handle),
            missed,
        })
    }

    /// Every instance registered on the bus.
    ///
    /// # Errors
    /// When the bus does not answer.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, Error> {
        self.transport.instances().await
    }

    /// `$stats` of every instance (of one service, or all).
    ///
    /// # Errors
    /// When the bus does not answer; an instance that does not answer is
    /// reported in its place with its error.
    pub async fn stats(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<Result<StatsReport, (InstanceInfo, RpcError)>>, Error> {
        let instances = self.instances().await?;
        let mut out = Vec::new();
        for i in instances {
            if service.is_some_and(|s| s != i.service) {
                continue;
            }
            let target = format!("{}.{}", i.service, builtin::STATS);
            let r = self
                .call_with::<_, StatsReport>(
                    &target,
                    &Value::Object(Default::default()),
                    CallOptions::default().instance(i.instance.clone()),
                )
                .await;
            out.push(r.map_err(|e| (i, e)));
        }
        Ok(out)
    }
}

/// Splits `service.method` at the last dot (method names have no dots;
/// the reserved host service `muster.host` has one).
pub(crate) fn split_target(target: &str) -> Result<(&str, &str), RpcError> {
    match target.rsplit_once('.') {
        Some((s, m)) if !s.is_empty() && !m.is_empty() => Ok((s, m)),
        _ => Err(RpcError::invalid_request(format!(
            "{target:?} is not SERVICE.METHOD"
        ))),
    }
}

/// An event as a subscriber sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The topic it was published on.
    pub topic: String,
    /// The wire header.
    pub header: Header,
    /// The payload, decoded as JSON.
    pub payload: Value,
}

/// A live subscription: events in publication order.
pub struct Subscription {
    events: EventStream,
    handle: Option<Box<dyn Subscribed>>,
    missed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("handle", &self.handle)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

/// The events of a subscription as a [`Stream`](futures_util::Stream), the
/// same ones [`Subscription::recv`] returns: for stream combinators, and
/// a reader that polls it gets them with no future made per event.
///
/// ```
/// use futures_util::StreamExt;
/// use muster::testing::TestBus;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = TestBus::new();
/// let events = bus.client().subscribe(&["tick"]).await?;
/// for n in 1..=3 {
///     bus.client().publish("tick", &n).await?;
/// }
/// let ticks: Vec<i64> = events
///     .take(3)
///     .map(|e| e.payload.as_i64().unwrap_or(0))
///     .collect()
///     .await;
/// assert_eq!(ticks, [1, 2, 3]);
/// # Ok(()) }
/// ```
impl futures_util::Stream for Subscription {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.events.as_mut().poll_next(cx).map(|e| e.map(event_of))
    }
}

/// What a subscriber sees of an event envelope.
fn event_of(env: Envelope) -> Event {
    let payload = serde_json::from_slice(&env.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&env.body).into_owned()));
    Event {
        topic: env.header.topic.clone().unwrap_or_default(),
        header: *env.header,
        payload,
    }
}

/// Hands a durable subscription's events to its reader one at a time: a
/// delivery ends (and the bus is told the event is done) once the reader
/// took it.
struct HandOver {
    tx: tokio::sync::mpsc::Sender<(Envelope, tokio::sync::oneshot::Sender<()>)>,
    missed: Arc<AtomicU64>,
}

impl muster_core::transport::EventSink for HandOver {
    fn deliver(&self, event: Envelope) -> muster_core::transport::BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (taken, read) = tokio::sync::oneshot::channel();
            let handed = tx.send((event, taken)).await.is_ok();
            if !handed || read.await.is_err() {
                // The reader is gone: this delivery never ends, so the
                // event is not acknowledged; the subscription's end gives
                // it back to the bus.
                std::future::pending::<()>().await;
            }
        })
    }

    fn missed(&self, _topic: &str, count: u64) {
        self.missed.fetch_add(count, Ordering::Relaxed);
    }
}

impl Subscription {
    /// Events this subscription missed so far: the bus dropped them because
    /// it fell too far behind (`docs/guarantees.md`, "slow subscriber").
    /// Counted where the bus numbers events (the embedded bus).
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// The next event; `None` once the subscription ended. An event whose
    /// payload is not JSON is delivered with the payload as a string.
    pub async fn recv(&mut self) -> Option<Event> {
        self.next().await
    }

    /// Stops the subscription.
    pub async fn cancel(mut self) {
        if let Some(h) = self.handle.take() {
            h.cancel().await;
        }
    }
}
