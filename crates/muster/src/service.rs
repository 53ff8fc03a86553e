//! [`Service`]: the builder a service binary starts from.
//!
//! One file past 600 lines on purpose: it is the builder's whole surface,
//! one short method per thing a service can declare (methods, events,
//! queues, schedules, state, hooks), each documented with an example; a
//! reader looks here for "what can a service do".

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Sources};
use crate::ctx::Ctx;
use crate::handler::{ErasedHandler, Handler, Schemas, erase};
use crate::transport::BoxFuture;
use muster_core::registry::{is_valid_name, is_valid_service_name};

use crate::runtime::scheduler::Job;
use crate::schedule::{Clock, Misfire, Schedule, SystemClock};
use crate::state::{Faults, Owner, OwnerHandle, Reader, ReaderHandle, StateHandle, StateKind};
use muster_core::durable::Retention;
use muster_core::topic::Pattern;

/// The error type of `main` and `init` functions.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type HookFn = Arc<dyn Fn(Ctx) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
pub(crate) type ShutdownFn = Arc<dyn Fn(Ctx) -> BoxFuture<'static, ()> + Send + Sync>;
pub(crate) type ConfigLoader = Arc<
    dyn Fn(&Sources) -> Result<(Arc<dyn Any + Send + Sync>, serde_json::Value), ConfigError>
        + Send
        + Sync,
>;

pub(crate) struct Method {
    pub(crate) name: String,
    pub(crate) handler: Arc<dyn ErasedHandler>,
    pub(crate) schemas: Schemas,
    pub(crate) idempotent: bool,
}

/// A work queue the service consumes.
pub(crate) struct Consumer {
    pub(crate) queue: String,
    pub(crate) handler: Arc<dyn ErasedHandler>,
    pub(crate) prefetch: usize,
    pub(crate) max_attempts: u32,
    pub(crate) claim_after: Duration,
}

pub(crate) struct Subscription {
    pub(crate) pattern: String,
    pub(crate) handler: Arc<dyn ErasedHandler>,
    /// The durable group and what it keeps; `None` for a plain
    /// subscription.
    pub(crate) durable: Option<(String, Retention)>,
}

/// A service: its name, methods, subscriptions and hooks.
///
/// A service's own binary ends in `fn main() -> muster::Result<()> {
/// echo().run() }`, which reads its flags and environment (`--bus`,
/// `MUSTER_BUS`...) and serves until a signal. Here the in-memory bus of
/// [`testing`](crate::testing) stands in, so the example runs:
///
/// ```
/// use muster::prelude::*;
/// use muster::testing::TestBus;
///
/// #[derive(Deserialize, JsonSchema)]
/// struct Shout { text: String, times: Option<u32> }
///
/// #[derive(Debug, Serialize, Deserialize, JsonSchema)]
/// struct Echoed { text: String }
///
/// async fn shout(ctx: Ctx, Args(a): Args<Shout>) -> Result<Echoed, RpcError> {
///     ctx.publish("echo.shouted", &a.text).await?;
///     Ok(Echoed { text: a.text.repeat(a.times.unwrap_or(1) as usize) })
/// }
///
/// fn echo() -> Service {
///     Service::new("echo").rpc("shout", shout)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = TestBus::new();
/// let _running = bus.start(echo()).await?; // runs until dropped
/// let r: Echoed = bus
///     .client()
///     .call("echo.shout", &serde_json::json!({"text": "hi", "times": 2}))
///     .await?;
/// assert_eq!(r.text, "hihi");
/// // A wrong type is the caller's error, named before the handler runs.
/// let bad = bus.client().call::<_, Echoed>("echo.shout", &serde_json::json!({"text": 1})).await;
/// assert_eq!(bad.unwrap_err().code, muster::code::INVALID_PARAMS);
/// # Ok(()) }
/// ```
#[must_use]
pub struct Service {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) methods: Vec<Method>,
    pub(crate) subscriptions: Vec<Subscription>,
    pub(crate) consumers: Vec<Consumer>,
    pub(crate) main: Option<HookFn>,
    pub(crate) init: Option<HookFn>,
    pub(crate) on_shutdown: Option<ShutdownFn>,
    pub(crate) config: Option<ConfigLoader>,
    pub(crate) max_in_flight: usize,
    pub(crate) require_auth: bool,
    pub(crate) shutdown_grace: Duration,
    pub(crate) jobs: Vec<Arc<Job>>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) states: Vec<StateDecl>,
    /// Middleware around the RPC methods, outermost first (`layer.rs`).
    pub(crate) layers: Vec<crate::layer::LayerFn>,
}

/// Starts one declared state when the instance starts.
pub(crate) type StateStarter = Arc<
    dyn Fn(
            StateStart,
        ) -> BoxFuture<
            'static,
            Result<
                (
                    Arc<dyn StateHandle>,
                    Option<Box<dyn crate::transport::Subscribed>>,
                ),
                crate::Error,
            >,
        > + Send
        + Sync,
>;

/// What a state needs to start.
pub(crate) struct StateStart {
    pub(crate) service: String,
    pub(crate) client: crate::Client,
    pub(crate) persist: Option<String>,
}

/// A `state_out` or `state_in` of the service.
pub(crate) struct StateDecl {
    pub(crate) type_id: std::any::TypeId,
    pub(crate) label: String,
    pub(crate) owned: bool,
    pub(crate) persist: Option<String>,
    pub(crate) start: StateStarter,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "methods",
                &self.methods.iter().map(|m| &m.name).collect::<Vec<_>>(),
            )
            .field(
                "subscriptions",
                &self
                    .subscriptions
                    .iter()
                    .map(|s| &s.pattern)
                    .collect::<Vec<_>>(),
            )
            .field("main", &self.main.is_some())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service named `name` (letters, digits, `_`, `-`; no dots).
    ///
    /// # Panics
    /// On an invalid name: a programming error, reported at the call site.
    #[track_caller]
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            is_valid_service_name(&name),
            "invalid service name {name:?}: use letters, digits, `_` and `-`, starting with a letter"
        );
        Self {
            name,
            version: String::from("0.0.0"),
            methods: Vec::new(),
            subscriptions: Vec::new(),
            consumers: Vec::new(),
            main: None,
            init: None,
            on_shutdown: None,
            config: None,
            max_in_flight: 1024,
            require_auth: false,
            shutdown_grace: Duration::from_secs(10),
            jobs: Vec::new(),
            clock: Arc::new(SystemClock),
            states: Vec::new(),
            layers: Vec::new(),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the version reported by discovery (e.g. `env!("CARGO_PKG_VERSION")`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds the RPC method `service.name`.
    ///
    /// # Panics
    /// On an invalid or duplicate method name.
    #[track_caller]
    pub fn rpc<H: Handler<T>, T: 'static>(mut self, name: &str, handler: H) -> Self {
        assert!(
            is_valid_name(name),
            "invalid method name {name:?}: use letters, digits, `_` and `-`, starting with a letter"
        );
        assert!(
            !self.methods.iter().any(|m| m.name == name),
            "method {name:?} is already defined on service {:?}",
            self.name
        );
        let (handler, schemas) = erase(handler);
        self.methods.push(Method {
            name: name.to_owned(),
            handler,
            schemas,
            idempotent: false,
        });
        self
    }

    /// Marks the method added last as idempotent: if its instance dies
    /// mid-request, the caller retries it once on another instance.
    ///
    /// # Panics
    /// When no method was added yet.
    #[track_caller]
    pub fn idempotent(mut self) -> Self {
        let m = self
            .methods
            .last_mut()
            .expect("idempotent() follows an rpc(...)");
        m.idempotent = true;
        self
    }

    /// Runs `job` on `schedule`. See [`crate::schedule`] for what fires
    /// when; [`Service::every`], [`Service::cron`] and [`Service::at`] are
    /// the usual shorthands. With several instances of the service, each
    /// fire time runs on one of them (claimed on the bus).
    pub fn schedule<F, Fut, E>(mut self, schedule: Schedule, job: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.jobs.push(Arc::new(Job {
            schedule,
            misfire: Misfire::default(),
            at_startup: false,
            run: hook(job),
        }));
        self
    }

    /// Runs `job` every `period`, at the multiples of `period` since the
    /// Unix epoch.
    ///
    /// ```
    /// use std::time::Duration;
    /// use muster::prelude::*;
    /// let s = Service::new("reports").every(Duration::from_secs(60), |ctx: Ctx| async move {
    ///     ctx.publish("reports.tick", &1).await
    /// });
    /// ```
    ///
    /// # Panics
    /// A zero period.
    #[track_caller]
    pub fn every<F, Fut, E>(self, period: Duration, job: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let s = Schedule::every(period).unwrap_or_else(|e| panic!("every: {e}"));
        self.schedule(s, job)
    }

    /// Runs `job` on a cron expression (5, 6 or 7 fields; UTC unless
    /// followed by [`Service::tz`]).
    ///
    /// # Panics
    /// An invalid expression (build a [`Schedule`] and use
    /// [`Service::schedule`] for expressions that come from config).
    #[track_caller]
    pub fn cron<F, Fut, E>(self, expr: &str, job: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let s = Schedule::cron(expr).unwrap_or_else(|e| panic!("cron: {e}"));
        self.schedule(s, job)
    }

    /// Runs `job` daily at `HH:MM[:SS]` (UTC unless followed by
    /// [`Service::tz`]).
    ///
    /// # Panics
    /// Not a time of day.
    #[track_caller]
    pub fn at<F, Fut, E>(self, time: &str, job: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let s = Schedule::at(time).unwrap_or_else(|e| panic!("at: {e}"));
        self.schedule(s, job)
    }

    /// Reads the last scheduled job's cron or `at` time in the IANA zone
    /// `zone` (`Europe/Berlin`).
    ///
    /// # Panics
    /// No job yet, or an unknown zone.
    #[track_caller]
    pub fn tz(mut self, zone: &str) -> Self {
        let job = self.last_job("tz");
        job.schedule = job
            .schedule
            .clone()
            .in_zone(zone)
            .unwrap_or_else(|e| panic!("tz: {e}"));
        self
    }

    /// What the last scheduled job does about fire times it missed
    /// (default [`Misfire::RunOnce`]).
    ///
    /// # Panics
    /// No job yet.
    #[track_caller]
    pub fn misfire(mut self, policy: Misfire) -> Self {
        self.last_job("misfire").misfire = policy;
        self
    }

    /// Also runs the last scheduled job once when the instance starts
    /// (on every instance: a start-up run is not claimed).
    ///
    /// # Panics
    /// No job yet.
    #[track_caller]
    pub fn run_at_startup(mut self) -> Self {
        self.last_job("run_at_startup").at_startup = true;
        self
    }

    /// The clock schedules read (tests pass a
    /// [`VirtualClock`](crate::schedule::VirtualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    #[track_caller]
    fn last_job(&mut self, what: &str) -> &mut Job {
        let job = self
            .jobs
            .last_mut()
            .unwrap_or_else(|| panic!("{what}() follows every(), cron(), at() or schedule()"));
        Arc::get_mut(job).expect("jobs are not shared before the service starts")
    }

    /// Owns the state `name` of kind `S` ([`Full`](crate::state::Full) or
    /// [`Delta`](crate::state::Delta)); handlers change it with
    /// [`Ctx::update_state`] and read it with the
    /// [`State<S>`](crate::state::State) extractor. See [`crate::state`].
    ///
    /// # Panics
    /// An invalid name, or a second state of the same type (wrap one in a
    /// newtype).
    #[track_caller]
    pub fn state_out<S: StateKind>(mut self, name: &str) -> Self {
        assert!(is_valid_name(name), "invalid state name {name:?}");
        self.check_state_type::<S>();
        let state_name = name.to_owned();
        self.states.push(StateDecl {
            type_id: std::any::TypeId::of::<S>(),
            label: name.to_owned(),
            owned: true,
            persist: None,
            start: Arc::new(move |st: StateStart| {
                let name = state_name.clone();
                Box::pin(async move {
                    let owner =
                        Owner::<S>::start(&st.service, &name, st.persist, st.client).await?;
                    Ok((Arc::new(OwnerHandle(owner)) as Arc<dyn StateHandle>, None))
                })
            }),
        });
        self
    }

    /// Keeps the last owned state in `target`: a file path, a
    /// `redis://...` URL or a `postgres://...` URL. A restarted owner
    /// resumes its value and its sequence numbers instead of starting
    /// empty; each change is written before it is published.
    ///
    /// # Panics
    /// When the last state declared is not owned.
    #[track_caller]
    pub fn persist(mut self, target: impl Into<String>) -> Self {
        let decl = self
            .states
            .last_mut()
            .filter(|d| d.owned)
            .expect("persist() follows a state_out(...)");
        decl.persist = Some(target.into());
        self
    }

    /// Replicates the state `source` (`"service/name"`) owned by another
    /// service; handlers read it with the [`State<S>`](crate::state::State)
    /// extractor. The instance starts without waiting for the owner.
    ///
    /// # Panics
    /// A source that is not `service/name`, or a second state of the same type.
    #[track_caller]
    pub fn state_in<S: StateKind>(mut self, source: &str) -> Self {
        let Some((owner, name)) = source
            .split_once('/')
            .filter(|(o, n)| is_valid_service_name(o) && is_valid_name(n))
        else {
            panic!("state_in({source:?}): expected \"service/name\"");
        };
        self.check_state_type::<S>();
        let (owner, name) = (owner.to_owned(), name.to_owned());
        self.states.push(StateDecl {
            type_id: std::any::TypeId::of::<S>(),
            label: source.to_owned(),
            owned: false,
            persist: None,
            start: Arc::new(move |st: StateStart| {
                let (owner, name) = (owner.clone(), name.clone());
                Box::pin(async move {
                    let (reader, sub) =
                        Reader::<S>::start(&owner, &name, st.client, Faults::from_env()).await?;
                    Ok((
                        Arc::new(ReaderHandle(reader)) as Arc<dyn StateHandle>,
                        Some(sub),
                    ))
                })
            }),
        });
        self
    }

    #[track_caller]
    fn check_state_type<S: StateKind>(&self) {
        assert!(
            !self
                .states
                .iter()
                .any(|d| d.type_id == std::any::TypeId::of::<S>()),
            "service {:?} already has a state of type {}; wrap one in a newtype",
            self.name,
            std::any::type_name::<S>()
        );
    }

    /// Handles events whose topic matches `pattern` (`*` one token, `>` the rest).
    ///
    /// # Panics
    /// On an invalid pattern.
    #[track_caller]
    pub fn subscribe<H: Handler<T>, T: 'static>(mut self, pattern: &str, handler: H) -> Self {
        if let Err(e) = Pattern::parse(pattern) {
            panic!("{e}");
        }
        let (handler, _) = erase(handler);
        self.subscriptions.push(Subscription {
            pattern: pattern.to_owned(),
            handler,
            durable: None,
        });
        self
    }

    /// Makes the last [`Service::subscribe`] durable, as a member of the
    /// group `group`: events on its topic published while no member of
    /// the group runs are kept by the bus (within
    /// [`Service::retention`]) and delivered when one comes back, at least
    /// once, in publish order per publisher. Members of a group share its
    /// events; subscriptions of one service with the same group share one
    /// backlog. A plain subscription misses what is published while it is
    /// down, and costs nothing on the bus.
    ///
    /// ```
    /// use muster::prelude::*;
    /// use muster::testing::TestBus;
    /// use tokio::sync::mpsc::UnboundedSender;
    ///
    /// #[derive(Deserialize, JsonSchema)]
    /// struct Paid { order: u64 }
    ///
    /// fn billing(paid: UnboundedSender<u64>) -> Service {
    ///     Service::new("billing")
    ///         .subscribe("orders.paid", move |Args(e): Args<Paid>| {
    ///             let paid = paid.clone();
    ///             async move {
    ///                 let _ = paid.send(e.order);
    ///                 Ok::<_, RpcError>(())
    ///             }
    ///         })
    ///         .durable("billing")
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = TestBus::new();
    /// let (tx, mut paid) = tokio::sync::mpsc::unbounded_channel();
    /// bus.start(billing(tx.clone())).await?.stop().await;
    /// // Published while no member of "billing" runs: kept.
    /// bus.client().publish("orders.paid", &serde_json::json!({"order": 7})).await?;
    /// let _again = bus.start(billing(tx)).await?;
    /// assert_eq!(paid.recv().await, Some(7));
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When no `subscribe` comes before it, or on an invalid group name
    /// (letters, digits, `_` and `-`).
    #[track_caller]
    pub fn durable(mut self, group: &str) -> Self {
        assert!(
            muster_core::durable::is_valid_group_name(group),
            "invalid durable group {group:?}: use 1 to 100 letters, digits, _ and -"
        );
        let s = self
            .subscriptions
            .last_mut()
            .expect("durable() applies to the subscribe() before it");
        s.durable = Some((group.to_owned(), Retention::default()));
        self
    }

    /// What the bus keeps for the durable group of the last
    /// [`Service::durable`] subscription while no member runs: most
    /// events, bytes and age, the oldest dropped first past a bound.
    /// Default [`Retention::default`] (1,000,000 events, 256 MiB, 7 days).
    ///
    /// # Panics
    /// When the subscription before it is not durable.
    #[track_caller]
    pub fn retention(mut self, retention: Retention) -> Self {
        let s = self
            .subscriptions
            .last_mut()
            .and_then(|s| s.durable.as_mut())
            .expect("retention() applies to a durable() subscription before it");
        s.1 = retention;
        self
    }

    /// Works jobs from the queue `queue` (see [`Ctx::enqueue`]): the handler
    /// takes the job as `Args<T>` like a method takes its params.
    ///
    /// `Ok` acknowledges the job. An error retries it with backoff (200 ms
    /// doubling, at most 10 s) up to [`Service::max_attempts`] (default 5);
    /// then, or at once for [`RpcError::permanent`](crate::RpcError::permanent)
    /// and for a body that does not decode into `T`, the job moves to the
    /// dead-letter queue `<queue>.dead` with the reason. Up to
    /// [`Service::prefetch`] jobs (default 16) run at once.
    ///
    /// ```
    /// use muster::prelude::*;
    /// use muster::testing::TestBus;
    ///
    /// #[derive(Deserialize, JsonSchema)]
    /// struct Resize { image: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (done, mut resized) = tokio::sync::mpsc::unbounded_channel();
    /// let thumbs = Service::new("thumbs")
    ///     .consume("images", move |Args(job): Args<Resize>| {
    ///         let done = done.clone();
    ///         async move {
    ///             if job.image.is_empty() {
    ///                 return Err(RpcError::permanent("no image"));
    ///             }
    ///             let _ = done.send(job.image);
    ///             Ok(())
    ///         }
    ///     })
    ///     .prefetch(4);
    /// let bus = TestBus::new();
    /// let _running = bus.start(thumbs).await?; // runs until dropped
    /// // Jobs wait in the queue for a consumer; each is taken once.
    /// bus.client().enqueue("images", &serde_json::json!({"image": "cat.png"})).await?;
    /// assert_eq!(resized.recv().await.as_deref(), Some("cat.png"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// On an invalid queue name.
    #[track_caller]
    pub fn consume<H: Handler<T>, T: 'static>(mut self, queue: &str, handler: H) -> Self {
        assert!(
            muster_core::queue::is_valid_queue_name(queue),
            "invalid queue name {queue:?}: use letters, digits, _, -, . and :"
        );
        let (handler, _) = erase(handler);
        self.consumers.push(Consumer {
            queue: queue.to_owned(),
            handler,
            prefetch: 16,
            max_attempts: 5,
            claim_after: Duration::from_secs(30),
        });
        self
    }

    /// Jobs of the last [`Service::consume`] run at once (at least 1).
    ///
    /// # Panics
    /// When no `consume` comes before it.
    #[track_caller]
    pub fn prefetch(mut self, n: usize) -> Self {
        let c = self
            .consumers
            .last_mut()
            .expect("prefetch() applies to the consume() before it");
        c.prefetch = n.max(1);
        self
    }

    /// Attempts of a job of the last [`Service::consume`] before it is
    /// dead-lettered (at least 1).
    ///
    /// # Panics
    /// When no `consume` comes before it.
    #[track_caller]
    pub fn max_attempts(mut self, n: u32) -> Self {
        let c = self
            .consumers
            .last_mut()
            .expect("max_attempts() applies to the consume() before it");
        c.max_attempts = n.max(1);
        self
    }

    /// On Redis, how long a job of the last [`Service::consume`] may stay
    /// unacknowledged on a consumer before another takes it over (the
    /// consumer is presumed dead). Default 30 s; keep it above the longest
    /// job. Other buses notice a dead consumer by its connection.
    ///
    /// # Panics
    /// When no `consume` comes before it.
    #[track_caller]
    pub fn claim_after(mut self, d: Duration) -> Self {
        let c = self
            .consumers
            .last_mut()
            .expect("claim_after() applies to the consume() before it");
        c.claim_after = d;
        self
    }

    /// Main mode: with `-m/--main`, runs `f` after start-up and exits when it
    /// returns (exit 0 on `Ok`, 1 on `Err`), serving handlers meanwhile.
    pub fn main<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.main = Some(hook(f));
        self
    }

    /// Runs `f` before serving; an error stops start-up (exit 1).
    pub fn init<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.init = Some(hook(f));
        self
    }

    /// Runs `f` on shutdown, after in-flight requests finished.
    pub fn on_shutdown<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_shutdown = Some(Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// Declares the typed configuration, read at start-up from the config
    /// file, `MUSTER_*` environment and `--key value` arguments, and handed
    /// to handlers as [`Config<T>`](crate::Config). Fields wrapped in
    /// [`Secret`](crate::Secret) are redacted in logs and discovery.
    pub fn config<T>(mut self) -> Self
    where
        T: DeserializeOwned + Serialize + Send + Sync + 'static,
    {
        self.config = Some(Arc::new(|sources: &Sources| {
            let value: T = sources.load()?;
            let shown = serde_json::to_value(&value).unwrap_or_default();
            Ok((Arc::new(value) as Arc<dyn Any + Send + Sync>, shown))
        }));
        self
    }

    /// Requests handled at once per instance (default 1024); more wait.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Wraps every RPC method of the service in a `tower` layer: the
    /// ecosystem's concurrency limit, rate limit, load shedding and
    /// timeout, or a layer of your own that reads the request's header
    /// and params ([`Invocation`](crate::extract::Invocation)). The first
    /// layer given is the outermost. Each instance builds its own stack,
    /// shared by all the methods of that instance. A request a layer
    /// sheds is answered -32002 (overloaded), a layer's timeout -32000,
    /// an [`RpcError`](crate::RpcError) a layer returns as it is (`crate::layer`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), muster::BoxError> {
    /// use muster::prelude::*;
    /// use tower::ServiceBuilder;
    ///
    /// let bus = muster::testing::TestBus::new();
    /// let _svc = Service::new("limited")
    ///     .rpc("ping", || async { Ok::<_, RpcError>("pong") })
    ///     // At most 8 calls at once; more are shed rather than queued.
    ///     .layer(ServiceBuilder::new().load_shed().concurrency_limit(8).into_inner())
    ///     .start(bus.transport())
    ///     .await?;
    /// let pong: String = bus.client().call("limited.ping", &()).await?;
    /// assert_eq!(pong, "pong");
    /// # Ok(()) }
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<crate::layer::Methods> + Send + Sync + 'static,
        L::Service: tower::Service<crate::extract::Invocation, Response = Box<serde_json::value::RawValue>>
            + Send
            + 'static,
        <L::Service as tower::Service<crate::extract::Invocation>>::Error: Into<BoxError>,
        <L::Service as tower::Service<crate::extract::Invocation>>::Future: Send + 'static,
    {
        self.layers.push(crate::layer::erase(layer));
        self
    }

    /// Only callers with a bus credential may call this service's methods
    /// (on the embedded bus; `docs/security.md`). Calls are open to every
    /// local process otherwise. A muster caller shows its credential by
    /// itself; others are refused with -32004.
    pub fn require_auth(mut self) -> Self {
        self.require_auth = true;
        self
    }

    /// How long shutdown waits for in-flight requests (default 10 s).
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// Parses the standard service command line, connects to the bus and
    /// serves until SIGINT or SIGTERM (or until `main` returns in main mode).
    ///
    /// A missing or mistyped config key exits with code 2 and one line
    /// naming it.
    ///
    /// # Errors
    /// A fatal error: no bus transport, a failing `init` or `main`.
    pub fn run(self) -> crate::Result<()> {
        crate::cli::run(vec![self], std::env::args().collect())
    }

    /// [`Service::run`] with an explicit command line (`argv[0]` first).
    ///
    /// # Errors
    /// As [`Service::run`].
    pub fn run_from(self, argv: impl IntoIterator<Item = String>) -> crate::Result<()> {
        crate::cli::run(vec![self], argv.into_iter().collect())
    }
}

fn hook<F, Fut, E>(f: F) -> HookFn
where
    F: Fn(Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    Arc::new(move |ctx| {
        let fut = f(ctx);
        Box::pin(async move { fut.await.map_err(Into::into) })
    })
}
