//! The RabbitMQ transport of muster (`--bus amqp://USER:PASS@HOST:PORT/VHOST`).
//!
//! | pattern | on RabbitMQ |
//! |---|---|
//! | RPC | topic exchange (`muster`, or `?exchange=NAME`); a durable queue `<exchange>.rpc.<service>` bound to `<service>.*`; routing key `<service>.<method>`; JSON-RPC 2.0 body; reply to `reply_to` (direct reply-to) through the default exchange with `correlation_id` echoed |
//! | events | the same exchange, routing key = topic; a bounded exclusive queue per subscriber |
//! | durable groups | a durable queue `<exchange>.durable.<group>` bound with the group's patterns, limited by its retention; manual acks |
//! | work queues | a durable queue named as the queue, persistent messages, publisher confirms, manual acks; `<queue>.dead` for dead letters |
//! | registry | every instance also listens on the routing key `$discover` and answers with its description |
//!
//! A job published by any AMQP client as a plain JSON body to the default
//! exchange with routing key = queue name is consumed; a JSON-RPC request
//! published by any client with a `reply_to` is answered. The formats are in
//! `docs/protocol.md`, "RabbitMQ".
//!
//! ```no_run
//! # async fn demo() -> Result<(), muster_core::Error> {
//! use muster_core::transport::Transport;
//! let bus = muster_amqp::AmqpTransport::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
//! println!("{} instances", bus.instances().await?.len());
//! # Ok(()) }
//! ```

mod durable;
mod events;
mod link;
mod props;
mod queue;
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

use link::{Link, Publisher};

/// The exchange used unless the URL says `?exchange=NAME`.
pub const DEFAULT_EXCHANGE: &str = "muster";

/// Settings of the AMQP transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// The topic exchange for RPC, events and discovery.
    pub exchange: String,
    /// Largest message sent or accepted.
    pub max_message_size: usize,
    /// How long an enqueue or publish waits for the broker to come back.
    pub publish_wait: Duration,
    /// How long `instances()` collects answers to a discovery request.
    pub discovery_wait: Duration,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            exchange: DEFAULT_EXCHANGE.into(),
            max_message_size: muster_core::wire::DEFAULT_MAX_MESSAGE_SIZE,
            publish_wait: Duration::from_secs(10),
            discovery_wait: Duration::from_millis(300),
        }
    }
}

pub(crate) struct Inner {
    link: Arc<Link>,
    options: AmqpOptions,
    /// Confirmed publishes (jobs).
    confirmed: Publisher,
    /// Fire-and-forget publishes (events).
    fast: Publisher,
    rpc: rpc::Caller,
    declared: queue::Declared,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("exchange", &self.options.exchange)
            .finish_non_exhaustive()
    }
}

/// The RabbitMQ bus. Clones share the connection.
#[derive(Debug, Clone)]
pub struct AmqpTransport {
    inner: Arc<Inner>,
}

impl AmqpTransport {
    /// Connects with default options; `?exchange=NAME` in the URL sets the
    /// exchange.
    ///
    /// # Errors
    /// RabbitMQ cannot be reached or refuses the credentials.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, AmqpOptions::default()).await
    }

    /// Connects with `options` (an `?exchange=` in the URL wins).
    ///
    /// # Errors
    /// As [`AmqpTransport::connect`].
    pub async fn connect_with(url: &str, mut options: AmqpOptions) -> Result<Self, Error> {
        let (url, params) = split_params(url);
        if let Some(x) = params.exchange {
            options.exchange = x;
        }
        let mut tls = lapin::tcp::OwnedTLSConfig::default();
        if let Some(ca) = params.tls_ca {
            tls.cert_chain = Some(std::fs::read_to_string(&ca).map_err(|e| {
                Error::with_source(
                    ErrorKind::Config,
                    format!("tls_ca {ca}: cannot read the CA certificate: {e}"),
                    e,
                )
            })?);
        }
        if options.exchange.is_empty() || options.exchange.len() > 200 {
            return Err(Error::new(
                ErrorKind::Config,
                "the exchange name must be 1-200 characters",
            ));
        }
        let link = Link::open(&url, tls).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                confirmed: Publisher::new(link.clone(), true),
                fast: Publisher::new(link.clone(), false),
                rpc: rpc::Caller::new(link.clone()),
                declared: queue::Declared::default(),
                link,
                options,
            }),
        })
    }
}

/// What muster reads from a URL's query, which lapin does not take.
#[derive(Debug, Default, PartialEq)]
struct Params {
    /// `exchange=NAME`.
    exchange: Option<String>,
    /// `tls_ca=FILE`: the CA (PEM) an `amqps://` server's certificate
    /// must chain to, instead of the machine's trusted roots.
    tls_ca: Option<String>,
}

/// The URL without muster's own query parameters, and those parameters.
fn split_params(url: &str) -> (String, Params) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), Params::default());
    };
    let mut params = Params::default();
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            if let Some(x) = kv.strip_prefix("exchange=") {
                params.exchange = Some(x.to_owned());
            } else if let Some(f) = kv.strip_prefix("tls_ca=") {
                params.tls_ca = Some(f.to_owned());
            } else {
                return true;
            }
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

impl Transport for AmqpTransport {
    fn kind(&self) -> &'static str {
        "amqp"
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
        Box::pin(rpc::discover(&self.inner))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.link.close())
    }

    fn claim(&self, key: &str, holder: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, Error>> {
        let key = key.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move { queue::claim(&self.inner, &key, &holder, ttl).await })
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

#[cfg(test)]
mod tests {
    #[test]
    fn muster_params_come_out_of_the_url() {
        let (url, p) = super::split_params("amqps://h/%2f?exchange=t1&heartbeat=10&tls_ca=/c.pem");
        assert_eq!(url, "amqps://h/%2f?heartbeat=10");
        assert_eq!(p.exchange.as_deref(), Some("t1"));
        assert_eq!(p.tls_ca.as_deref(), Some("/c.pem"));
        assert_eq!(
            super::split_params("amqp://h"),
            ("amqp://h".to_owned(), super::Params::default())
        );
    }
}
