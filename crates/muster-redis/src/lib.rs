//! The Redis transport of muster (`--bus redis://HOST:PORT`).
//!
//! | pattern | on Redis |
//! |---|---|
//! | RPC | a list per service (`<p>:rpc:<service>`) that instances pop with `BRPOP`; a list per instance for targeted calls; replies on a list per caller |
//! | events | `PUBLISH <p>:ev:<topic>`, `PSUBSCRIBE` on the pattern's literal prefix |
//! | work queues | a stream per queue (`<p>:q:<queue>`) with the consumer group `muster`; `XAUTOCLAIM` takes over a dead consumer's jobs |
//! | registry | a sorted set of instances by expiry, each described in `<p>:instance:<id>` |
//! | claims | `SET <p>:claim:<key> holder NX PX ttl` |
//!
//! `<p>` is the key prefix, `muster` unless the URL says `?prefix=...`.
//! The formats are in `docs/protocol.md`, "Redis".
//!
//! ```no_run
//! # async fn demo() -> Result<(), muster_core::Error> {
//! use muster_core::transport::Transport;
//! let bus = muster_redis::RedisTransport::connect("redis://127.0.0.1:6379").await?;
//! println!("{} instances", bus.instances().await?.len());
//! # Ok(()) }
//! ```

mod durable;
mod events;
mod queue;
mod registry;
mod rpc;

use std::sync::Arc;
use std::time::Duration;

use muster_core::durable::DurableGroup;
use muster_core::queue::{ConsumeOptions, Job, JobSink, QueueCommand, QueueReply};
use muster_core::registry::InstanceInfo;
use muster_core::transport::{
    BoxFuture, Dispatch, EventSink, Registration, Served, Subscribed, Transport,
};
use muster_core::wire::Envelope;
use muster_core::{Error, ErrorKind, RpcError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Settings of the Redis transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key and channel.
    pub prefix: String,
    /// Largest message sent or accepted.
    pub max_message_size: usize,
    /// An instance that has not refreshed its entry for this long is gone.
    pub ttl: Duration,
    /// How long an enqueue waits for Redis to come back before failing.
    pub publish_wait: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "muster".into(),
            max_message_size: muster_core::wire::DEFAULT_MAX_MESSAGE_SIZE,
            ttl: Duration::from_secs(3),
            publish_wait: Duration::from_secs(10),
        }
    }
}

/// Key names.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn rpc(&self, service: &str) -> String {
        format!("{}:rpc:{service}", self.prefix)
    }
    pub(crate) fn rpc_instance(&self, service: &str, instance: &str) -> String {
        format!("{}:rpc:{service}:{instance}", self.prefix)
    }
    pub(crate) fn reply(&self, client: &str) -> String {
        format!("{}:reply:{client}", self.prefix)
    }
    pub(crate) fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }
    pub(crate) fn instance(&self, id: &str) -> String {
        format!("{}:instance:{id}", self.prefix)
    }
    pub(crate) fn event(&self, topic: &str) -> String {
        format!("{}:ev:{topic}", self.prefix)
    }
    pub(crate) fn event_prefix(&self) -> String {
        format!("{}:ev:", self.prefix)
    }
    pub(crate) fn queue(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }
    pub(crate) fn durable_groups(&self) -> String {
        format!("{}:durable", self.prefix)
    }
    pub(crate) fn claim(&self, key: &str) -> String {
        format!("{}:claim:{key}", self.prefix)
    }
}

pub(crate) struct Inner {
    client: redis::Client,
    /// Shared connection for commands that do not block.
    conn: ConnectionManager,
    options: RedisOptions,
    keys: Keys,
    rpc: rpc::Caller,
    view: registry::View,
    shutdown: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("prefix", &self.options.prefix)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// A connection of its own, for a loop that blocks (`BRPOP`,
    /// `XREADGROUP BLOCK`): blocking commands would stall a shared one.
    pub(crate) async fn dedicated(&self) -> Result<ConnectionManager, Error> {
        manager(&self.client, Duration::from_secs(10)).await
    }
}

/// The Redis bus. Clones share connections.
#[derive(Debug, Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

async fn manager(client: &redis::Client, response: Duration) -> Result<ConnectionManager, Error> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| unavailable("connect to Redis", &e))
}

pub(crate) fn unavailable(what: &str, e: &redis::RedisError) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}

impl RedisTransport {
    /// Connects with default options; `?prefix=NAME` in the URL sets the
    /// key prefix.
    ///
    /// # Errors
    /// A malformed URL, or Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects with `options` (a `?prefix=` in the URL wins).
    ///
    /// # Errors
    /// As [`RedisTransport::connect`].
    pub async fn connect_with(url: &str, mut options: RedisOptions) -> Result<Self, Error> {
        let (url, params) = split_params(url);
        if let Some(p) = params.prefix.clone() {
            options.prefix = p;
        }
        let client = params.client(&url)?;
        let conn = manager(&client, Duration::from_secs(5)).await?;
        let keys = Keys {
            prefix: options.prefix.clone(),
        };
        let rpc = rpc::Caller::new(&keys);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                options,
                keys,
                rpc,
                view: registry::View::default(),
                shutdown: tokio_util::sync::CancellationToken::new(),
            }),
        })
    }
}

/// muster's own parameters of a Redis URL: `prefix=NAME`, and for TLS
/// (`rediss://`) `tls_ca=FILE` (the CA that signed the server's
/// certificate, PEM) and `tls_cert=FILE&tls_key=FILE` (a client
/// certificate). The others are Redis's.
#[derive(Debug, Default, PartialEq)]
struct Params {
    prefix: Option<String>,
    tls_ca: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

impl Params {
    /// The Redis client for `url` (muster's parameters taken out).
    fn client(&self, url: &str) -> Result<redis::Client, Error> {
        let bad = |e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Config, format!("bad Redis URL {url:?}: {e}"))
        };
        if self.tls_ca.is_none() && self.tls_cert.is_none() && self.tls_key.is_none() {
            return redis::Client::open(url).map_err(|e| bad(&e));
        }
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot read {path} for Redis TLS: {e}"),
                )
            })
        };
        let client_tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read(c)?,
                client_key: read(k)?,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "a Redis client certificate needs both tls_cert and tls_key",
                ));
            }
        };
        let root_cert = self.tls_ca.as_deref().map(read).transpose()?;
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| bad(&e))
    }
}

fn split_params(url: &str) -> (String, Params) {
    let mut params = Params::default();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), params);
    };
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let slot = match k {
                "prefix" => &mut params.prefix,
                "tls_ca" => &mut params.tls_ca,
                "tls_cert" => &mut params.tls_cert,
                "tls_key" => &mut params.tls_key,
                _ => return true,
            };
            *slot = Some(v.to_owned());
            false
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, params)
}

impl Transport for RedisTransport {
    fn kind(&self) -> &'static str {
        "redis"
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

    fn instances(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, Error>> {
        Box::pin(registry::list(&self.inner))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.shutdown.cancel();
        Box::pin(async {})
    }

    fn claim(&self, key: &str, holder: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, Error>> {
        let key = self.inner.keys.claim(key);
        let holder = holder.to_owned();
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&holder)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("claim", &e))?;
            if set.is_some() {
                return Ok(true);
            }
            let current: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("claim", &e))?;
            Ok(current.as_deref() == Some(holder.as_str()))
        })
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
    fn musters_parameters_come_out_of_the_url() {
        let prefix = |url: &str| {
            let (u, p) = split_params(url);
            (u, p.prefix)
        };
        assert_eq!(
            prefix("redis://h:1/0?prefix=t1"),
            ("redis://h:1/0".to_owned(), Some("t1".to_owned()))
        );
        assert_eq!(
            prefix("redis://h:1?a=b&prefix=x"),
            ("redis://h:1?a=b".to_owned(), Some("x".to_owned()))
        );
        assert_eq!(prefix("redis://h"), ("redis://h".to_owned(), None));
        let (url, p) = split_params("rediss://h:6380/2?tls_ca=/ca.pem&prefix=p");
        assert_eq!(url, "rediss://h:6380/2");
        assert_eq!(p.tls_ca.as_deref(), Some("/ca.pem"));
        let half = Params {
            tls_cert: Some("/c.pem".into()),
            ..Params::default()
        };
        assert!(
            half.client("rediss://h:1").is_err(),
            "a certificate needs its key"
        );
    }
}
