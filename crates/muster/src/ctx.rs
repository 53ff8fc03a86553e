//! [`Ctx`]: what a handler uses to reach the rest of the system.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::client::{CallOptions, Client};
use crate::{Error, ErrorKind, RpcError};
use muster_core::registry::StatusUpdate;

/// Topic on which buses without a registry carry `Ctx::update` reports.
pub use muster_core::registry::UPDATE_TOPIC;

pub(crate) struct CtxShared {
    pub(crate) client: Client,
    pub(crate) service: String,
    pub(crate) instance: String,
    pub(crate) transaction: Option<String>,
    pub(crate) config: Option<Arc<dyn Any + Send + Sync>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) states: crate::state::States,
}

/// The context of a handler: call other services, publish events, report
/// progress, and read the ids of the current request.
///
/// Requests made from a handler carry its transaction and never wait past
/// its own deadline.
///
/// ```
/// use muster::prelude::*;
/// use muster::testing::TestBus;
///
/// // A handler that calls another service and publishes what it did.
/// async fn quadruple(ctx: Ctx, Args(x): Args<i64>) -> Result<i64, RpcError> {
///     let doubled: i64 = ctx.request("math.double", &x).await?;
///     let again: i64 = ctx.request("math.double", &doubled).await?;
///     ctx.publish("math.quadrupled", &again).await?;
///     Ok(again)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = TestBus::new();
/// let math = Service::new("math")
///     .rpc("double", |Args(x): Args<i64>| async move { x * 2 })
///     .rpc("quadruple", quadruple);
/// bus.start(math).await.unwrap();
/// let mut events = bus.client().subscribe(&["math.>"]).await.unwrap();
/// let r: i64 = bus.client().call("math.quadruple", &5).await.unwrap();
/// assert_eq!(r, 20);
/// assert_eq!(events.recv().await.unwrap().payload, serde_json::json!(20));
/// # }
/// ```
#[derive(Clone)]
pub struct Ctx {
    shared: Arc<CtxShared>,
    scope: CallScope,
}

#[derive(Clone, Default, Debug)]
pub(crate) struct CallScope {
    pub(crate) request_id: Option<String>,
    pub(crate) transaction: Option<String>,
    pub(crate) deadline: Option<Instant>,
    /// The handler's span: its trace, and its own span id, which the
    /// calls it makes carry as their parent.
    pub(crate) trace: Option<crate::wire::TraceContext>,
    /// The caller's span, when the request named one.
    pub(crate) trace_parent: Option<u64>,
    /// The request's `tracestate`, passed on to the calls it makes.
    pub(crate) tracestate: Option<String>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("service", &self.shared.service)
            .field("instance", &self.shared.instance)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub(crate) fn new(shared: Arc<CtxShared>) -> Self {
        Self {
            shared,
            scope: CallScope::default(),
        }
    }

    pub(crate) fn scoped(&self, scope: CallScope) -> Self {
        Self {
            shared: self.shared.clone(),
            scope,
        }
    }

    /// Calls `service.method` with the default timeout (5 s), capped by the
    /// current request's deadline.
    ///
    /// # Errors
    /// The callee's error reply, or a bus failure coded as an [`RpcError`].
    pub async fn request<A, R>(&self, target: &str, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request_with(target, args, CallOptions::default())
            .await
    }

    /// [`Ctx::request`] with options.
    ///
    /// # Errors
    /// As [`Ctx::request`].
    pub async fn request_with<A, R>(
        &self,
        target: &str,
        args: &A,
        mut options: CallOptions,
    ) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let mut timeout = options.timeout.unwrap_or(crate::client::DEFAULT_TIMEOUT);
        if let Some(d) = self.scope.deadline {
            timeout = timeout.min(d.saturating_duration_since(Instant::now()));
        }
        options.timeout = Some(timeout.max(Duration::from_millis(1)));
        if options.transaction.is_none() {
            options.transaction = self.transaction().map(str::to_owned);
        }
        if options.traceparent.is_none()
            && let Some(trace) = &self.scope.trace
        {
            options.traceparent = Some(trace.to_traceparent());
            options.tracestate.clone_from(&self.scope.tracestate);
        }
        self.shared.client.call_with(target, args, options).await
    }

    /// Publishes an event, tagged with the current transaction and, in a
    /// traced request, its trace context (the event's handlers run as
    /// children of this handler's span).
    ///
    /// # Errors
    /// A bad topic, an unencodable value, or no bus.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), Error> {
        self.within_budget(
            "publish",
            self.shared.client.publish_in(
                topic,
                value,
                self.transaction().map(str::to_owned),
                self.scope.trace.map(|t| t.to_traceparent()),
            ),
        )
        .await
    }

    /// `op` bounded by the current request's remaining time: a publish or
    /// an enqueue inside a handler waits for the bus no longer than its
    /// caller waits for the handler.
    async fn within_budget<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match self.remaining() {
            Some(left) => tokio::time::timeout(left, op).await.unwrap_or_else(|_| {
                Err(Error::new(
                    crate::ErrorKind::Timeout,
                    format!("{what}: the request's deadline passed"),
                ))
            }),
            None => op.await,
        }
    }

    /// Adds a job to the work queue `queue`, tagged with the current
    /// transaction and, in a traced request, its trace context (the job's
    /// handler runs as a child of this handler's span); returns the job's
    /// id once the bus holds it. See
    /// [`Service::consume`](crate::Service::consume).
    ///
    /// # Errors
    /// A bad queue name, an unencodable value, a full queue or no bus.
    pub async fn enqueue<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        job: &T,
    ) -> Result<String, Error> {
        self.within_budget(
            "enqueue",
            self.shared.client.enqueue_in(
                queue,
                job,
                self.transaction().map(str::to_owned),
                None,
                self.scope.trace.map(|t| t.to_traceparent()),
            ),
        )
        .await
    }

    /// Reports progress to the host (an `updated` lifecycle event that can
    /// fire `on_update` triggers). On the embedded bus it returns once the
    /// host's registry has it.
    ///
    /// # Errors
    /// The bus did not take it (no bus), or `status` cannot be encoded.
    pub async fn update<T: Serialize + ?Sized>(&self, status: &T) -> Result<(), Error> {
        let status = serde_json::to_value(status)
            .map_err(|e| Error::new(ErrorKind::Codec, format!("cannot encode status: {e}")))?;
        self.shared
            .client
            .transport()
            .report(StatusUpdate {
                service: self.shared.service.clone(),
                instance: self.shared.instance.clone(),
                transaction: self.transaction().map(str::to_owned),
                status,
            })
            .await
    }

    /// Changes the owned state of kind `S`: `f` edits the value, the change
    /// it made is published with the next sequence number, which is
    /// returned. Changes are applied and published one at a time, in order.
    ///
    /// # Errors
    /// The service does not own a state of kind `S`; the change cannot be
    /// persisted or published.
    pub async fn update_state<S, F>(&self, f: F) -> Result<u64, Error>
    where
        S: crate::state::StateKind,
        F: FnOnce(&mut S),
    {
        let owner = self.owner::<S>()?;
        owner
            .update(f, self.scope.trace.map(|t| t.to_traceparent()))
            .await
    }

    /// Replaces the value of the owned [`Full<T>`](crate::state::Full) state.
    ///
    /// # Errors
    /// As [`Ctx::update_state`].
    pub async fn set_state<T>(&self, value: T) -> Result<u64, Error>
    where
        crate::state::Full<T>: crate::state::StateKind,
    {
        self.update_state::<crate::state::Full<T>, _>(|s| s.0 = value)
            .await
    }

    /// The state of kind `S` (owned or replicated) as of now; `None` when
    /// the service declares no such state. Never waits.
    pub fn state<S: crate::state::StateKind>(&self) -> Option<crate::state::State<S>> {
        let any = self.shared.states.get::<S>()?;
        if let Ok(owner) = any.clone().downcast::<crate::state::Owner<S>>() {
            return Some(owner.current());
        }
        any.downcast::<crate::state::Reader<S>>()
            .ok()
            .map(|r| r.read())
    }

    fn owner<S: crate::state::StateKind>(&self) -> Result<Arc<crate::state::Owner<S>>, Error> {
        self.shared
            .states
            .get::<S>()
            .and_then(|a| a.downcast::<crate::state::Owner<S>>().ok())
            .ok_or_else(|| {
                Error::new(
                    crate::ErrorKind::Config,
                    format!(
                        "service {} owns no state of type {} (declare it with state_out)",
                        self.shared.service,
                        std::any::type_name::<S>()
                    ),
                )
            })
    }

    pub(crate) fn states(&self) -> &crate::state::States {
        &self.shared.states
    }

    /// The transaction of the current request, else of this instance.
    pub fn transaction(&self) -> Option<&str> {
        self.scope
            .transaction
            .as_deref()
            .or(self.shared.transaction.as_deref())
    }

    /// The id of the request being handled.
    pub fn request_id(&self) -> Option<&str> {
        self.scope.request_id.as_deref()
    }

    /// The current request's span: its trace id (shared by every call of
    /// the request's tree) and its own span id, which the calls this
    /// handler makes carry as their parent. `None` outside a request.
    pub fn trace(&self) -> Option<crate::wire::TraceContext> {
        self.scope.trace
    }

    /// The span id of the caller that sent the current request, when it
    /// sent a `traceparent`; `None` when this request started the trace.
    pub fn trace_parent(&self) -> Option<u64> {
        self.scope.trace_parent
    }

    /// When the caller stops waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.scope.deadline
    }

    /// Time left before the current request's deadline (zero once it has
    /// passed); `None` outside a request or when the caller set none.
    /// Calls made through this `Ctx` are given at most this much.
    pub fn remaining(&self) -> Option<Duration> {
        self.scope
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// This service's name.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The client underneath, for calls outside the request's scope.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// True once the service was asked to stop.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Resolves when the service is asked to stop; main loops select on it.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancelled().await;
    }

    /// The service's typed config, as declared with
    /// [`Service::config`](crate::Service::config); `None` for another type.
    pub fn config<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.shared
            .config
            .clone()
            .and_then(|c| c.downcast::<T>().ok())
    }
}
