//! A running instance: the dispatcher the transport calls, the event
//! handler, and the [`ServiceHandle`] that stops it.

mod dispatch;
mod handler_run;
mod in_flight;
pub(crate) mod scheduler;
mod span_export;

use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_core::durable::{DurableGroup, Retention};
use muster_core::id;
use muster_core::registry::{InstanceInfo, MethodInfo};
use muster_core::transport::{Registration, Served, SharedTransport, Subscribed};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::config::Sources;
use crate::ctx::{Ctx, CtxShared};
use crate::service::{BoxError, Service, ShutdownFn};
use crate::{Error, ErrorKind};

/// How to start an instance.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StartOptions {
    /// Configuration sources; defaults plus `MUSTER_*` environment if `None`.
    pub config: Option<Sources>,
    /// Instance id; `MUSTER_INSTANCE` or a random one if `None`.
    pub instance: Option<String>,
    /// Transaction; `MUSTER_TRANSACTION` if `None`.
    pub transaction: Option<String>,
    /// Run the `main` function (main mode).
    pub run_main: bool,
}

impl StartOptions {
    /// Runs `main` after start-up.
    #[must_use]
    pub fn main_mode(mut self, on: bool) -> Self {
        self.run_main = on;
        self
    }

    /// Uses these config sources.
    #[must_use]
    pub fn config(mut self, sources: Sources) -> Self {
        self.config = Some(sources);
        self
    }

    /// Sets the instance id.
    #[must_use]
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }
}

/// A service running in the background of this process.
///
/// ```no_run
/// # async fn demo(transport: muster::transport::SharedTransport) -> Result<(), Box<dyn std::error::Error>> {
/// use muster::prelude::*;
/// let handle = Service::new("hello")
///     .rpc("hi", || async { "hello".to_string() })
///     .start(transport)
///     .await?;
/// handle.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ServiceHandle {
    name: String,
    instance: String,
    endpoint: String,
    served: Option<Box<dyn Served>>,
    subscribed: Option<Box<dyn Subscribed>>,
    consumers: Vec<Box<dyn Subscribed>>,
    ctx: Ctx,
    shutdown: CancellationToken,
    main: Option<tokio::task::JoinHandle<Result<(), BoxError>>>,
    jobs: Vec<tokio::task::JoinHandle<()>>,
    state_subs: Vec<Box<dyn crate::transport::Subscribed>>,
    on_shutdown: Option<ShutdownHook>,
    grace: Duration,
}

struct ShutdownHook(ShutdownFn);

impl std::fmt::Debug for ShutdownHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownHook")
    }
}

impl Service {
    /// Starts the service on `transport` in the background, with config
    /// from defaults and the environment.
    ///
    /// # Errors
    /// Bad config, a failing `init`, or a transport failure.
    pub async fn start(self, transport: SharedTransport) -> Result<ServiceHandle, Error> {
        self.start_with(transport, StartOptions::default()).await
    }

    /// Starts the service with options.
    ///
    /// # Errors
    /// Bad config, a failing `init`, or a transport failure.
    pub async fn start_with(
        self,
        transport: SharedTransport,
        options: StartOptions,
    ) -> Result<ServiceHandle, Error> {
        if options.run_main && self.main.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{}: main mode asked, but the service has no main function",
                    self.name
                ),
            ));
        }
        let sources = options
            .config
            .unwrap_or_else(|| Sources::default().from_process_env());
        let (config, config_shown) = match &self.config {
            Some(load) => {
                let (c, shown) =
                    load(&sources).map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
                (Some(c), shown)
            }
            None => (None, serde_json::Value::Null),
        };
        let instance = options
            .instance
            .or_else(|| std::env::var("MUSTER_INSTANCE").ok())
            .unwrap_or_else(|| format!("{}-{}", self.name, id::short_id()));
        let transaction = options
            .transaction
            .or_else(|| std::env::var("MUSTER_TRANSACTION").ok());
        let shutdown = CancellationToken::new();
        // Its calls name this instance as their caller: when its process
        // ends, the host's notice stops what they still run.
        let client = Client::new(transport.clone()).calling_as(&instance);
        // States first: an owner answers snapshots from its first request,
        // a reader's subscription is active before it asks for one.
        let (states, state_subs) = self.start_states(&client).await?;
        let ctx = Ctx::new(Arc::new(CtxShared {
            client,
            service: self.name.clone(),
            instance: instance.clone(),
            transaction: transaction.clone(),
            config,
            shutdown: shutdown.clone(),
            states,
        }));

        if let Some(init) = &self.init {
            init(ctx.clone()).await.map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("{}: init failed: {e}", self.name),
                )
            })?;
        }

        let info = self.instance_info(&instance, transaction);
        let dispatch = Arc::new(dispatch::ServiceDispatch::new(
            &self,
            ctx.clone(),
            info.clone(),
            config_shown,
            Instant::now(),
        ));
        let (served, subscribed, consumers) =
            self.attach(&transport, info, &dispatch, &instance).await?;
        let endpoint = served.endpoint();
        let jobs = dispatch
            .job_stats()
            .into_iter()
            .zip(self.jobs.iter().cloned())
            .map(|((name, stats), job)| {
                tokio::spawn(
                    scheduler::Runner {
                        name,
                        ctx: ctx.clone(),
                        transport: transport.clone(),
                        clock: self.clock.clone(),
                        stats,
                        shutdown: shutdown.clone(),
                    }
                    .drive(job),
                )
            })
            .collect();
        tracing::info!(service = %self.name, instance = %instance, endpoint = %endpoint, transport = transport.kind(), "service started");
        let main = match (&self.main, options.run_main) {
            (Some(main), true) => Some(tokio::spawn(main(ctx.clone()))),
            _ => None,
        };
        Ok(ServiceHandle {
            name: self.name,
            instance,
            endpoint,
            served: Some(served),
            subscribed,
            consumers,
            ctx,
            shutdown,
            main,
            jobs,
            state_subs,
            on_shutdown: self.on_shutdown.map(ShutdownHook),
            grace: self.shutdown_grace,
        })
    }

    /// Starts the declared states, in order; on a failure stops the ones
    /// already started.
    async fn start_states(
        &self,
        client: &Client,
    ) -> Result<(crate::state::States, Vec<Box<dyn Subscribed>>), Error> {
        let mut states = crate::state::States::default();
        let mut subs = Vec::new();
        for decl in &self.states {
            let started = (decl.start)(crate::service::StateStart {
                service: self.name.clone(),
                client: client.clone(),
                persist: decl.persist.clone(),
            })
            .await;
            match started {
                Ok((handle, sub)) => {
                    states.handles.push((decl.type_id, handle));
                    subs.extend(sub);
                }
                Err(e) => {
                    for (_, h) in &states.handles {
                        h.stop();
                    }
                    for sub in subs {
                        sub.cancel().await;
                    }
                    return Err(Error::new(
                        e.kind(),
                        format!("{}: state {}: {e}", self.name, decl.label),
                    ));
                }
            }
        }
        Ok((states, subs))
    }

    /// What the registry is told about this instance.
    fn instance_info(&self, instance: &str, transaction: Option<String>) -> InstanceInfo {
        InstanceInfo {
            service: self.name.clone(),
            instance: instance.to_owned(),
            version: self.version.clone(),
            endpoint: String::new(),
            methods: self
                .methods
                .iter()
                .map(|m| MethodInfo {
                    name: m.name.clone(),
                    params: m.schemas.params.clone(),
                    result: m.schemas.result.clone(),
                    idempotent: m.idempotent,
                })
                .collect(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|s| s.pattern.clone())
                .collect(),
            queues: self.consumers.iter().map(|c| c.queue.clone()).collect(),
            pid: std::process::id(),
            transaction,
            require_auth: self.require_auth,
            // The transport says whether it reads one-frame requests.
            one_frame: false,
        }
    }

    /// Puts the instance on the bus: serves its methods, subscribes to its
    /// topics, consumes its queues. On a failure undoes what was done, so
    /// a service that cannot start leaves nothing registered.
    async fn attach(
        &self,
        transport: &SharedTransport,
        info: InstanceInfo,
        dispatch: &Arc<dispatch::ServiceDispatch>,
        instance: &str,
    ) -> Result<Attached, Error> {
        let served = transport
            .serve(
                Registration {
                    info,
                    max_in_flight: self.max_in_flight,
                },
                dispatch.clone(),
            )
            .await?;
        let patterns: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|s| s.durable.is_none())
            .map(|s| s.pattern.clone())
            .collect();
        let subscribed = if patterns.is_empty() {
            None
        } else {
            match transport.subscribe(&patterns, dispatch.clone()).await {
                Ok(s) => Some(s),
                Err(e) => {
                    served.stop(Duration::ZERO).await;
                    return Err(e);
                }
            }
        };
        // Durable groups join like consumers: each is one more thing to
        // cancel at stop.
        let mut consumers = Vec::new();
        let groups = match self.durable_groups() {
            Ok(g) => g,
            Err(e) => {
                undo(served, subscribed, consumers).await;
                return Err(e);
            }
        };
        for group in groups {
            let sink = Arc::new(dispatch::GroupSink {
                dispatch: dispatch.clone(),
                group: group.name.clone(),
            });
            let options = muster_core::queue::ConsumeOptions::new(instance.to_owned());
            match transport.subscribe_durable(&group, options, sink).await {
                Ok(s) => consumers.push(s),
                Err(e) => {
                    undo(served, subscribed, consumers).await;
                    return Err(e);
                }
            }
        }
        // Cancel notices: the callers' (`runtime/in_flight.rs`); heard
        // before the consumers below take their first jobs, unless the bus
        // does not confirm the subscription now (then it is retried in the
        // background, and the start goes on). Those of ended callers only
        // while requests run here.
        let notices = vec![muster_core::registry::cancel_topic(&self.name)];
        let sink = Arc::new(in_flight::CancelSink(dispatch.in_flight.clone()));
        consumers.push(in_flight::hear_notices(transport.clone(), notices, sink.clone()).await);
        consumers.push(in_flight::hear_gone_while_busy(transport.clone(), sink));
        for (c, sink) in self.consumers.iter().zip(dispatch.queue_sinks(self)) {
            let options = muster_core::queue::ConsumeOptions::new(instance.to_owned())
                .prefetch(c.prefetch)
                .claim_after(c.claim_after);
            match transport.consume(&c.queue, options, sink).await {
                Ok(s) => consumers.push(s),
                Err(e) => {
                    undo(served, subscribed, consumers).await;
                    return Err(e);
                }
            }
        }
        Ok((served, subscribed, consumers))
    }

    /// The durable groups of the subscriptions, in order of first use:
    /// a group's patterns together, its retention the last one set.
    fn durable_groups(&self) -> Result<Vec<DurableGroup>, Error> {
        let mut groups: Vec<(&str, Vec<String>, Retention)> = Vec::new();
        for s in &self.subscriptions {
            let Some((name, retention)) = &s.durable else {
                continue;
            };
            match groups.iter_mut().find(|g| g.0 == name) {
                Some(g) => {
                    g.1.push(s.pattern.clone());
                    g.2 = *retention;
                }
                None => groups.push((name, vec![s.pattern.clone()], *retention)),
            }
        }
        groups
            .into_iter()
            .map(|(name, patterns, retention)| DurableGroup::new(name, patterns, retention))
            .collect()
    }
}

/// Takes off the bus what [`Service::attach`] put there before it failed.
async fn undo(
    served: Box<dyn Served>,
    subscribed: Option<Box<dyn Subscribed>>,
    consumers: Vec<Box<dyn Subscribed>>,
) {
    for s in consumers {
        s.cancel().await;
    }
    if let Some(s) = subscribed {
        s.cancel().await;
    }
    served.stop(Duration::ZERO).await;
}

/// What [`Service::attach`] put on the bus: the served methods, the event
/// subscription, the queue consumers.
type Attached = (
    Box<dyn Served>,
    Option<Box<dyn Subscribed>>,
    Vec<Box<dyn Subscribed>>,
);

impl ServiceHandle {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Where the instance takes requests.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A context for calls made on this instance's behalf.
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// True when the service runs a main function.
    pub fn has_main(&self) -> bool {
        self.main.is_some()
    }

    /// Resolves when `main` returns; never, when there is none.
    ///
    /// # Errors
    /// The error `main` returned, or its panic.
    pub async fn main_finished(&mut self) -> Result<(), BoxError> {
        match &mut self.main {
            Some(task) => {
                let r = match task.await {
                    Ok(r) => r,
                    Err(e) => Err(format!("main panicked: {e}").into()),
                };
                self.main = None;
                r
            }
            None => std::future::pending().await,
        }
    }

    /// Graceful stop: leave the registry, refuse new requests, wait for
    /// in-flight ones (up to the shutdown grace), stop subscriptions and
    /// `main`, then run the shutdown hook.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            served.stop(self.grace).await;
        }
        if let Some(sub) = self.subscribed.take() {
            sub.cancel().await;
        }
        // Stop taking jobs; running ones finish, unsettled ones go back.
        for consumer in std::mem::take(&mut self.consumers) {
            consumer.cancel().await;
        }
        for sub in std::mem::take(&mut self.state_subs) {
            sub.cancel().await;
        }
        for (_, h) in &self.ctx.states().handles {
            h.stop();
        }
        for job in std::mem::take(&mut self.jobs) {
            // A run in progress finishes (within the grace); no new ones start.
            if tokio::time::timeout(self.grace, job).await.is_err() {
                tracing::warn!(service = %self.name, "a scheduled job did not finish within the shutdown grace");
            }
        }
        if let Some(main) = self.main.take() {
            // main sees ctx.shutdown(); give it the grace to return.
            if tokio::time::timeout(self.grace, main).await.is_err() {
                tracing::warn!(service = %self.name, "main did not return within the shutdown grace");
            }
        }
        if let Some(hook) = self.on_shutdown.take() {
            (hook.0)(self.ctx.clone()).await;
        }
        tracing::info!(service = %self.name, instance = %self.instance, "service stopped");
    }
}
