//! Layers on the calling side (`Client::layer`): the same `tower` layers
//! (timeout, concurrency limit, load shed, retry) around every call a
//! client makes, and muster's retry of methods the caller declares
//! idempotent.
//!
//! A layer sees the call as an [`OutgoingCall`] (the request envelope,
//! clonable, so `tower::retry` can send it again) and its outcome as the
//! method's JSON result or an error: both the bus's failures and the
//! method's error replies are [`RpcError`]s inside the [`BoxError`], so a
//! retry policy or a circuit breaker sees every failure the same way.
//!
//! Layers must be `Clone`, as the client is (each call drives its own
//! copy of the stack, sharing what the layers share, such as a
//! concurrency limit's permits). A layer that is not (`RateLimit`) goes
//! behind `tower::buffer::BufferLayer`.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tower::util::BoxCloneSyncService;
use tower::{Service as TowerService, ServiceExt};

use crate::RpcError;
use crate::service::BoxError;
use crate::transport::SharedTransport;
use crate::wire::{ContentType, Envelope, jsonrpc};

/// One call as a client layer sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutgoingCall {
    /// `SERVICE.METHOD`.
    pub target: String,
    /// The request: its header (service, method, instance, transaction)
    /// and encoded params.
    pub request: Envelope,
    /// How long the bus waits for the reply, each time it is sent.
    pub timeout: Duration,
    /// The bus, to ask its registry about the method.
    pub(crate) transport: SharedTransport,
}

impl OutgoingCall {
    /// True when the called method's service declares it idempotent
    /// (`Service::idempotent`, in the registry); false when it does not,
    /// or the registry cannot be asked. Asks the bus: for a layer's
    /// decisions after a failure, not on every call.
    pub async fn declared_idempotent(&self) -> bool {
        let (Some(service), Some(method)) =
            (&self.request.header.service, &self.request.header.method)
        else {
            return false;
        };
        self.transport.instances().await.is_ok_and(|all| {
            all.iter()
                .filter(|i| &i.service == service)
                .any(|i| i.method(method).is_some_and(|m| m.idempotent))
        })
    }
}

/// What a client layer wraps: every call of the client as one `tower`
/// service, answering with the method's result.
pub type Calls = BoxCloneSyncService<OutgoingCall, Box<RawValue>, BoxError>;

/// A client layer, type-erased (the client rebuilds its stack from them).
pub(crate) type ClientLayerFn = Arc<dyn Fn(Calls) -> Calls + Send + Sync>;

/// Erases `layer` into a [`ClientLayerFn`].
pub(crate) fn erase<L>(layer: L) -> ClientLayerFn
where
    L: tower::Layer<Calls> + Send + Sync + 'static,
    L::Service:
        TowerService<OutgoingCall, Response = Box<RawValue>> + Clone + Send + Sync + 'static,
    <L::Service as TowerService<OutgoingCall>>::Error: Into<BoxError>,
    <L::Service as TowerService<OutgoingCall>>::Future: Send + 'static,
{
    Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner).map_err(Into::into)))
}

/// `layers` around the transport, the first given outermost.
pub(crate) fn stack(transport: SharedTransport, layers: &[ClientLayerFn]) -> Calls {
    let mut svc = BoxCloneSyncService::new(Wire(transport));
    for layer in layers.iter().rev() {
        svc = layer(svc);
    }
    svc
}

/// The innermost service: sends the request on the bus and decodes the
/// reply into the result or the method's error.
#[derive(Clone)]
struct Wire(SharedTransport);

impl TowerService<OutgoingCall> for Wire {
    type Response = Box<RawValue>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Box<RawValue>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: OutgoingCall) -> Self::Future {
        let transport = self.0.clone();
        Box::pin(async move {
            let reply = transport.request(call.request, call.timeout).await?;
            let ct = ContentType::from_header(reply.header.content_type.as_deref())
                .map_err(RpcError::parse_error)?;
            Ok(jsonrpc::decode_reply(ct, &reply.body)??)
        })
    }
}

/// Sends a call again when it failed in a way another attempt may cure
/// (timeout, unavailable, overloaded: [`RpcError::is_retryable`]), for
/// idempotent methods only: a call that timed out may have run, and only
/// an idempotent method may run twice. A method is idempotent when its
/// service declares it so (`Service::idempotent`, read from the registry
/// after a failure) or when the caller names it here.
///
/// ```
/// use std::time::Duration;
/// use muster::layer::RetryIdempotent;
/// use muster::testing::TestBus;
///
/// let bus = TestBus::new();
/// let client = bus.client().clone().layer(
///     RetryIdempotent::new(["orders.get", "stock.*"])
///         .attempts(3)
///         .backoff(Duration::from_millis(50)),
/// );
/// # drop(client);
/// ```
#[derive(Debug, Clone)]
pub struct RetryIdempotent {
    methods: Arc<HashSet<String>>,
    attempts: u32,
    backoff: Duration,
}

impl RetryIdempotent {
    /// Retries the methods their services declare idempotent. Three
    /// attempts in all, 100 ms apart, then twice that each time, by
    /// default.
    pub fn declared() -> Self {
        Self::new(std::iter::empty::<String>())
    }

    /// Retries these methods as well: `SERVICE.METHOD`, or `SERVICE.*`
    /// for all of a service's.
    pub fn new<I, S>(methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            methods: Arc::new(methods.into_iter().map(Into::into).collect()),
            attempts: 3,
            backoff: Duration::from_millis(100),
        }
    }

    /// Attempts in all, the first included (at least 1).
    #[must_use]
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// The wait before the second attempt; it doubles after each.
    #[must_use]
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }

    fn covers(&self, target: &str) -> bool {
        self.methods.contains(target)
            || target
                .rsplit_once('.')
                .is_some_and(|(s, _)| self.methods.contains(&format!("{s}.*")))
    }
}

impl<S> tower::Layer<S> for RetryIdempotent {
    type Service = Retrying<S>;

    fn layer(&self, inner: S) -> Retrying<S> {
        Retrying {
            inner,
            policy: self.clone(),
        }
    }
}

/// The service [`RetryIdempotent`] makes.
#[derive(Debug, Clone)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryIdempotent,
}

impl<S> TowerService<OutgoingCall> for Retrying<S>
where
    S: TowerService<OutgoingCall, Response = Box<RawValue>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Box<RawValue>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Box<RawValue>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: OutgoingCall) -> Self::Future {
        // The copy that was made ready takes the first attempt; later ones
        // wait for readiness again.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        Box::pin(async move {
            if policy.attempts == 1 {
                return inner.call(call).await;
            }
            let mut wait = policy.backoff;
            let mut attempt = 1;
            let mut outcome = inner.call(call.clone()).await;
            // Whether the method may run twice is asked once, after the
            // first failure that another attempt may cure.
            let idempotent = if outcome.as_ref().is_err_and(retryable) {
                policy.covers(&call.target) || call.declared_idempotent().await
            } else {
                false
            };
            while idempotent && attempt < policy.attempts && outcome.as_ref().is_err_and(retryable)
            {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
                attempt += 1;
                tracing::debug!(target = %call.target, attempt, "retrying an idempotent call");
                outcome = inner.ready().await?.call(call.clone()).await;
            }
            outcome
        })
    }
}

fn retryable(e: &BoxError) -> bool {
    e.downcast_ref::<RpcError>()
        .is_some_and(RpcError::is_retryable)
}
