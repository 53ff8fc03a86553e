//! The NATS transport of muster (`--bus nats://HOST:PORT`).
//!
//! | pattern | on NATS |
//! |---|---|
//! | RPC | request/reply on `<p>.rpc.<service>.<method>`, which every instance of the service subscribes in the queue group `q` (balanced); `<p>.inst.<instance>.<method>` for one instance; the payload is the muster header and the JSON-RPC body framed as on Redis (`MUSTER/1\n<header>\n<body>`), no NATS headers |
//! | events | `<p>.ev.<topic>`; muster's patterns are NATS's (`*`, `>`) |
//! | durable groups | one JetStream stream `<P>_EVENTS` on `<p>.ev.>` (interest retention) shared by the groups of the prefix, a durable pull consumer per group |
//! | discovery | NATS micro: every instance answers `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS` (all, by name, by name and id); `instances()` gathers `$SRV.INFO` answers, so plain micro services are listed too |
//! | work queues | a JetStream stream per queue (work-queue retention, file storage) with one shared durable pull consumer; retries and dead letters (`<queue>.dead`) are new messages |
//! | claims | a JetStream key-value bucket `<p>-claims`, first writer wins |
//!
//! `<p>` is the subject prefix, `muster` unless the URL says `?prefix=...`.
//! The formats are in `docs/protocol.md`, "NATS".
//!
//! ```no_run
//! # async fn demo() -> Result<(), muster_core::Error> {
//! use muster_core::transport::Transport;
//! let bus = muster_nats::NatsTransport::connect("nats://127.0.0.1:4222").await?;
//! println!("{} instances", bus.instances().await?.len());
//! # Ok(()) }
//! ```

mod ack_subject;
mod claims;
mod durable;
mod events;
pub mod micro;
mod queue;
mod rpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster_core::durable::DurableGroup;
use muster_core::queue::{ConsumeOptions, Job, JobSink, QueueCommand, QueueReply};
use muster_core::registry::InstanceInfo;
use muster_core::transport::{
    BoxFuture, Dispatch, EventSink, Registration, Served, StreamSubscription, Subscribed, Transport,
};
use muster_core::wire::Envelope;
use muster_core::{Error, ErrorKind, RpcError};

/// Settings of the NATS transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// Prefix of every subject and bucket muster uses.
    pub prefix: String,
    /// Largest message sent or accepted.
    pub max_message_size: usize,
    /// Messages a subscription holds for a handler that is behind; past
    /// it, NATS drops them for that subscriber and counts a slow consumer
    /// (`docs/guarantees.md`, "NATS").
    pub subscription_capacity: usize,
    /// How long `instances()` waits for `$SRV.INFO` answers after the last
    /// one came in.
    pub discovery_quiet: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            prefix: "muster".into(),
            max_message_size: muster_core::wire::DEFAULT_MAX_MESSAGE_SIZE,
            subscription_capacity: 65_536,
            discovery_quiet: Duration::from_millis(150),
        }
    }
}

/// Subject names.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

// The per-message subjects are joined with `concat`, not `format!`:
// the formatting machinery was 5% of the events benchmark's time.
impl Subjects {
    pub(crate) fn rpc(&self, service: &str, method: &str) -> String {
        [&self.prefix, ".rpc.", &service_token(service), ".", method].concat()
    }
    pub(crate) fn rpc_all(&self, service: &str) -> String {
        format!("{}.rpc.{}.*", self.prefix, service_token(service))
    }
    pub(crate) fn instance(&self, instance: &str, method: &str) -> String {
        [
            &self.prefix,
            ".inst.",
            &service_token(instance),
            ".",
            method,
        ]
        .concat()
    }
    pub(crate) fn instance_all(&self, instance: &str) -> String {
        format!("{}.inst.{}.*", self.prefix, service_token(instance))
    }
    pub(crate) fn event(&self, topic: &str) -> String {
        [&self.prefix, ".ev.", topic].concat()
    }
    pub(crate) fn event_prefix(&self) -> String {
        format!("{}.ev.", self.prefix)
    }
    pub(crate) fn claims_bucket(&self) -> String {
        format!("{}-claims", self.prefix)
    }
}

/// A service name or instance id as one subject token (and a NATS micro
/// name): the host's own `muster.host` (the one name with a dot) and its
/// instance ids become `muster_2Ehost...`.
pub(crate) fn service_token(service: &str) -> std::borrow::Cow<'_, str> {
    if service.contains('.') {
        std::borrow::Cow::Owned(service.replace('.', "_2E"))
    } else {
        std::borrow::Cow::Borrowed(service)
    }
}

/// True when `token` can stand as one subject token: no dots, wildcards
/// or white space, not empty.
pub(crate) fn is_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
}

pub(crate) struct Inner {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    options: NatsOptions,
    subjects: Subjects,
    /// The subjects of the topics lately published on.
    event_subjects: events::SubjectCache,
    /// Messages NATS dropped for this connection's slow subscriptions.
    slow_consumers: Arc<AtomicU64>,
    claims: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// Queues whose streams this transport has made or seen.
    queues: std::sync::Mutex<std::collections::HashSet<String>>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("prefix", &self.options.prefix)
            .finish_non_exhaustive()
    }
}

/// The NATS bus. Clones share the connection.
#[derive(Debug, Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

pub(crate) fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}

impl NatsTransport {
    /// Connects with default options; `?prefix=NAME` in the URL sets the
    /// subject prefix.
    ///
    /// # Errors
    /// A malformed URL, or NATS cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, NatsOptions::default()).await
    }

    /// Connects with `options` (a `?prefix=` in the URL wins).
    ///
    /// # Errors
    /// As [`NatsTransport::connect`].
    pub async fn connect_with(url: &str, mut options: NatsOptions) -> Result<Self, Error> {
        let (url, prefix, connect) = client_options(url)?;
        if let Some(p) = prefix {
            options.prefix = p;
        }
        if !options.prefix.split('.').all(is_token) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("bad NATS subject prefix {:?}", options.prefix),
            ));
        }
        let slow_consumers = Arc::new(AtomicU64::new(0));
        let counted = slow_consumers.clone();
        let client = connect
            .name(format!("muster {}", std::process::id()))
            .subscription_capacity(options.subscription_capacity)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let counted = counted.clone();
                async move {
                    match event {
                        async_nats::Event::SlowConsumer(sid) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                subscription = sid,
                                "NATS dropped messages for a slow subscriber"
                            );
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; reconnecting")
                        }
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        other => tracing::debug!(event = %other, "NATS"),
                    }
                }
            })
            .connect(url.as_str())
            .await
            .map_err(|e| unavailable(&format!("connect to NATS at {url}"), &e))?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let subjects = Subjects {
            prefix: options.prefix.clone(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                jetstream,
                options,
                subjects,
                event_subjects: events::SubjectCache::default(),
                slow_consumers,
                claims: tokio::sync::OnceCell::new(),
                queues: std::sync::Mutex::default(),
                shutdown: tokio_util::sync::CancellationToken::new(),
            }),
        })
    }

    /// Times NATS reported one of this connection's subscriptions as a
    /// slow consumer (it dropped messages for it).
    pub fn slow_consumers(&self) -> u64 {
        self.inner.slow_consumers.load(Ordering::Relaxed)
    }
}

/// The server URL and the `?prefix=` of a muster NATS URL.
pub fn split_prefix(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let prefix = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("prefix="))
        .map(str::to_owned);
    (base.to_owned(), prefix)
}

/// How to reach a NATS server, from a muster NATS URL:
/// `nats://[USER:PASS@]HOST:PORT` (or `tls://...`, TLS required) with
/// `?prefix=NAME`, and for TLS and credentials `tls_ca=FILE` (the CA that
/// signed the server's certificate, PEM), `tls_cert=FILE&tls_key=FILE`
/// (a client certificate) and `creds=FILE` (a NATS credentials file).
///
/// ```
/// let (server, prefix, _options) = muster_nats::client_options(
///     "tls://127.0.0.1:4443?prefix=prod&tls_ca=/etc/muster/ca.pem",
/// )
/// .expect("a valid URL");
/// assert_eq!(server, "tls://127.0.0.1:4443");
/// assert_eq!(prefix.as_deref(), Some("prod"));
/// ```
///
/// # Errors
/// `Config` for an unknown key, a client certificate without its key, or
/// a credentials file that cannot be read.
pub fn client_options(
    url: &str,
) -> Result<(String, Option<String>, async_nats::ConnectOptions), Error> {
    let (server, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut prefix, mut ca, mut cert, mut key, mut creds) = (None, None, None, None, None);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let slot = match k {
            "prefix" => &mut prefix,
            "tls_ca" => &mut ca,
            "tls_cert" => &mut cert,
            "tls_key" => &mut key,
            "creds" => &mut creds,
            other => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "unknown NATS URL parameter {other:?}: expected prefix, tls_ca, tls_cert, tls_key or creds"
                    ),
                ));
            }
        };
        *slot = Some(v.to_owned());
    }
    let config = |what: String| Error::new(ErrorKind::Config, what);
    let mut options = match creds {
        None => async_nats::ConnectOptions::new(),
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                config(format!("cannot read the NATS credentials file {path}: {e}"))
            })?;
            async_nats::ConnectOptions::with_credentials(&text).map_err(|e| {
                config(format!(
                    "the NATS credentials file {path} cannot be used: {e}"
                ))
            })?
        }
    };
    if let Some(ca) = ca {
        options = options.add_root_certificates(ca.into()).require_tls(true);
    }
    match (cert, key) {
        (Some(c), Some(k)) => options = options.add_client_certificate(c.into(), k.into()),
        (None, None) => {}
        _ => {
            return Err(config(
                "a NATS client certificate needs both tls_cert and tls_key".to_owned(),
            ));
        }
    }
    Ok((server.to_owned(), prefix, options))
}

impl Transport for NatsTransport {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn serve(
        &self,
        registration: Registration,
        dispatch: Arc<dyn Dispatch>,
    ) -> BoxFuture<'_, Result<Box<dyn Served>, Error>> {
        Box::pin(async move {
            rpc::serve(self.inner.clone(), registration, dispatch)
                .await
                .map(|s| Box::new(s) as Box<dyn Served>)
        })
    }

    fn request(
        &self,
        request: Envelope,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Envelope, RpcError>> {
        Box::pin(rpc::request(&self.inner, request, timeout))
    }

    fn publish(&self, event: Envelope) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(events::publish(&self.inner, event))
    }

    fn subscribe_durable(
        &self,
        group: &DurableGroup,
        options: ConsumeOptions,
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let group = group.clone();
        Box::pin(async move {
            durable::subscribe(self.inner.clone(), &group, options, sink)
                .await
                .map(|s| Box::new(s) as Box<dyn Subscribed>)
        })
    }

    fn subscribe(
        &self,
        patterns: &[String],
        sink: Arc<dyn EventSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let patterns = patterns.to_vec();
        Box::pin(async move {
            events::subscribe(self.inner.clone(), &patterns, sink)
                .await
                .map(|s| Box::new(s) as Box<dyn Subscribed>)
        })
    }

    fn subscribe_stream(
        &self,
        patterns: &[String],
        // async-nats counts slow consumers for the whole connection only
        // (`NatsTransport::slow_consumers`).
        _missed: Arc<AtomicU64>,
    ) -> BoxFuture<'_, Result<StreamSubscription, Error>> {
        let patterns = patterns.to_vec();
        Box::pin(async move { events::subscribe_stream(self.inner.clone(), &patterns).await })
    }

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, Error>> {
        Box::pin(micro::discover(&self.inner))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.shutdown.cancel();
        Box::pin(async move {
            let _ = self.inner.client.flush().await;
        })
    }

    fn claim(&self, key: &str, holder: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, Error>> {
        let key = key.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move { claims::claim(&self.inner, &key, &holder, ttl).await })
    }

    fn enqueue(&self, queue: &str, job: Job) -> BoxFuture<'_, Result<(), Error>> {
        let queue = queue.to_owned();
        Box::pin(async move { queue::enqueue(&self.inner, &queue, &job).await })
    }

    fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
        sink: Arc<dyn JobSink>,
    ) -> BoxFuture<'_, Result<Box<dyn Subscribed>, Error>> {
        let queue = queue.to_owned();
        Box::pin(async move {
            queue::consume(self.inner.clone(), &queue, options, sink)
                .await
                .map(|c| Box::new(c) as Box<dyn Subscribed>)
        })
    }

    fn queue_command(
        &self,
        queue: &str,
        command: QueueCommand,
    ) -> BoxFuture<'_, Result<QueueReply, Error>> {
        let queue = queue.to_owned();
        Box::pin(async move { queue::command(&self.inner, &queue, command).await })
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_comes_out_of_the_url() {
        assert_eq!(
            split_prefix("nats://h:1?prefix=t1"),
            ("nats://h:1".to_owned(), Some("t1".to_owned()))
        );
        assert_eq!(split_prefix("nats://h"), ("nats://h".to_owned(), None));
    }

    #[test]
    fn tokens_refuse_what_would_change_the_subject() {
        assert!(is_token("echo-1"));
        for bad in ["", "a.b", "a*", ">", "a b"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
