//! [`Service`]: the builder a service binary starts from.

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

pub(crate) struct Subscription {
    pub(crate) pattern: String,
    pub(crate) handler: Arc<dyn ErasedHandler>,
}

/// A service: its name, methods, subscriptions and hooks.
///
/// ```no_run
/// use muster::prelude::*;
///
/// #[derive(Deserialize, JsonSchema)]
/// struct Shout { text: String, times: Option<u32> }
///
/// #[derive(Serialize, JsonSchema)]
/// struct Echoed { text: String }
///
/// async fn shout(ctx: Ctx, Args(a): Args<Shout>) -> Result<Echoed, RpcError> {
///     ctx.publish("echo.shouted", &a.text).await?;
///     Ok(Echoed { text: a.text.repeat(a.times.unwrap_or(1) as usize) })
/// }
///
/// fn main() -> muster::Result<()> {
///     Service::new("echo").rpc("shout", shout).run()
/// }
/// ```
#[must_use]
pub struct Service {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) methods: Vec<Method>,
    pub(crate) subscriptions: Vec<Subscription>,
    pub(crate) main: Option<HookFn>,
    pub(crate) init: Option<HookFn>,
    pub(crate) on_shutdown: Option<ShutdownFn>,
    pub(crate) config: Option<ConfigLoader>,
    pub(crate) max_in_flight: usize,
    pub(crate) shutdown_grace: Duration,
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
            main: None,
            init: None,
            on_shutdown: None,
            config: None,
            max_in_flight: 1024,
            shutdown_grace: Duration::from_secs(10),
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
        });
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
