//! RPC and discovery on RabbitMQ.
//!
//! A request goes to the topic exchange with routing key
//! `<service>.<method>` (or, for one instance, to the default exchange with
//! the instance's queue as routing key), `reply_to` = direct reply-to,
//! `correlation_id` = request id, `expiration` = the deadline, and
//! `mandatory`, so a request nobody can receive comes back (within ~20 ms)
//! as -32601. An instance consumes its service's durable queue (shared with
//! the other instances: the broker balances) and its own exclusive queue,
//! acknowledges a request after its reply is sent (a request whose instance
//! dies is delivered again to another while its deadline lasts), and
//! answers `$discover` with its description.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use muster_core::registry::InstanceInfo;
use muster_core::transport::{BoxFuture, Dispatch, Registration, Served};
use muster_core::wire::{ContentType, Envelope, Header, Kind, jsonrpc};
use muster_core::{Error, RpcError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::link::{Link, amqp_error};
use crate::props::{read_header, with_header};
use crate::{Inner, events};

/// RabbitMQ's direct reply-to pseudo queue.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Routing key of discovery requests.
pub(crate) const DISCOVER: &str = "$discover";

enum Waiter {
    One(oneshot::Sender<Result<Envelope, RpcError>>),
    Many(mpsc::UnboundedSender<Envelope>),
}

type Pending = Mutex<HashMap<String, Waiter>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The calling side: one channel consuming direct reply-to, on which every
/// request of this transport is published.
pub(crate) struct Caller {
    link: Arc<Link>,
    channel: tokio::sync::Mutex<Option<Channel>>,
    pending: Arc<Pending>,
    /// Wakes the return watcher when a request is sent.
    sent: Arc<tokio::sync::Notify>,
    next: AtomicU64,
    prefix: String,
}

impl Caller {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            channel: tokio::sync::Mutex::new(None),
            pending: Arc::default(),
            sent: Arc::default(),
            next: AtomicU64::new(0),
            prefix: muster_core::id::short_id(),
        }
    }

    /// The channel requests go out on, opened (and `exchange` declared)
    /// on first use and after the connection broke. A request published
    /// to an exchange that does not exist yet (a client on a fresh broker)
    /// would close the channel instead of coming back as unroutable.
    async fn channel(&self, exchange: &str) -> Result<Channel, Error> {
        let mut slot = self.channel.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let (_, ch) = self.link.channel().await?;
        crate::events::declare_exchange(&ch, exchange).await?;
        let replies = ch
            .basic_consume(
                REPLY_TO.into(),
                format!("muster-replies-{}", self.prefix).as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| amqp_error("consume replies", &e))?;
        tokio::spawn(read_replies(replies, self.pending.clone()));
        tokio::spawn(watch_returns(
            ch.clone(),
            self.pending.clone(),
            self.sent.clone(),
            self.link.shutdown.clone(),
        ));
        *slot = Some(ch.clone());
        Ok(ch)
    }

    fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

async fn read_replies(mut replies: Consumer, pending: Arc<Pending>) {
    while let Some(d) = replies.next().await {
        let Ok(d) = d else { break };
        let Some(id) = d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned())
        else {
            continue;
        };
        let header = read_header(&d.properties).unwrap_or_else(|| {
            let mut h = Header::new(Kind::Reply);
            h.id.clone_from(&id);
            h
        });
        let env = Envelope::new(header, d.data);
        let mut pending = lock(&pending);
        match pending.get(&id) {
            Some(Waiter::Many(tx)) => {
                let _ = tx.send(env);
            }
            Some(Waiter::One(_)) => {
                if let Some(Waiter::One(tx)) = pending.remove(&id) {
                    let _ = tx.send(Ok(env));
                }
            }
            None => {}
        }
    }
}

/// Answers -32601 for requests the broker returned as unroutable
/// (`mandatory`): nothing is bound for their routing key. Without publisher
/// confirms (they would cost a quarter of the call rate), lapin keeps
/// returned messages until asked, so this asks every 20 ms while requests
/// are waiting, and sleeps while none are.
async fn watch_returns(
    ch: Channel,
    pending: Arc<Pending>,
    sent: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    while ch.status().connected() {
        let idle = lock(&pending).is_empty();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = sent.notified(), if idle => continue,
            () = tokio::time::sleep(Duration::from_millis(20)), if !idle => {}
        }
        let Ok(returned) = ch.wait_for_confirms().await else {
            break;
        };
        for m in returned {
            let Some(id) = m.delivery.properties.correlation_id().as_ref() else {
                continue;
            };
            if let Some(Waiter::One(tx)) = lock(&pending).remove(id.as_str()) {
                let _ = tx.send(Err(RpcError::method_not_found(format!(
                    "{} (nothing is bound to it on the exchange)",
                    m.delivery.routing_key.as_str()
                ))));
            }
        }
    }
}

fn service_queue(exchange: &str, service: &str) -> String {
    format!("{exchange}.rpc.{service}")
}

fn instance_queue(exchange: &str, service: &str, instance: &str) -> String {
    format!("{exchange}.rpc.{service}.{instance}")
}

pub(crate) async fn request(
    inner: &Arc<Inner>,
    mut request: Envelope,
    timeout: Duration,
) -> Result<Envelope, RpcError> {
    let service = request.header.service.clone().unwrap_or_default();
    let method = request.header.method.clone().unwrap_or_default();
    if request.header.id.is_empty() {
        request.header.id = inner.rpc.next_id();
    }
    let timeout_ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    request.header.deadline_ms = Some(timeout_ms);
    if request.body.len() > inner.options.max_message_size {
        return Err(RpcError::too_large(
            request.body.len(),
            inner.options.max_message_size,
        ));
    }
    let (exchange, routing_key) = match &request.header.instance {
        Some(id) => (
            String::new(),
            instance_queue(&inner.options.exchange, &service, id),
        ),
        None => (
            inner.options.exchange.clone(),
            format!("{service}.{method}"),
        ),
    };
    let id = request.header.id.clone();
    let mut props = BasicProperties::default()
        .with_reply_to(REPLY_TO.into())
        .with_correlation_id(id.as_str().into())
        .with_expiration(timeout_ms.to_string().as_str().into())
        .with_content_type(content_type(&request.header).into());
    props = with_header(props, &request.header);
    let (tx, rx) = oneshot::channel();
    lock(&inner.rpc.pending).insert(id.clone(), Waiter::One(tx));
    inner.rpc.sent.notify_one();
    let published = async {
        let ch = inner.rpc.channel(&inner.options.exchange).await?;
        let sent = ch
            .basic_publish(
                exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &request.body,
                props,
            )
            .await;
        if sent.is_err() {
            *inner.rpc.channel.lock().await = None;
        }
        sent.map(drop).map_err(|e| amqp_error("send request", &e))
    }
    .await;
    if let Err(e) = published {
        lock(&inner.rpc.pending).remove(&id);
        return Err(e.into());
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(reply)) => reply,
        _ => {
            lock(&inner.rpc.pending).remove(&id);
            Err(RpcError::timeout(format!(
                "no reply from {service}.{method} within {timeout:?}"
            )))
        }
    }
}

fn content_type(header: &Header) -> &'static str {
    ContentType::from_header(header.content_type.as_deref())
        .unwrap_or_default()
        .as_str()
}

/// Asks every instance for its description and collects the answers for
/// `discovery_wait`.
pub(crate) async fn discover(inner: &Arc<Inner>) -> Result<Vec<InstanceInfo>, Error> {
    let ch = inner.rpc.channel(&inner.options.exchange).await?;
    let id = format!("discover-{}", inner.rpc.next_id());
    let (tx, mut rx) = mpsc::unbounded_channel();
    lock(&inner.rpc.pending).insert(id.clone(), Waiter::Many(tx));
    let props = BasicProperties::default()
        .with_reply_to(REPLY_TO.into())
        .with_correlation_id(id.as_str().into())
        .with_expiration("5000".into());
    events::declare_exchange(&ch, &inner.options.exchange).await?;
    let sent = ch
        .basic_publish(
            inner.options.exchange.as_str().into(),
            DISCOVER.into(),
            BasicPublishOptions::default(),
            b"{}",
            props,
        )
        .await;
    if let Err(e) = sent {
        lock(&inner.rpc.pending).remove(&id);
        *inner.rpc.channel.lock().await = None;
        return Err(amqp_error("send discovery request", &e));
    }
    let mut found: HashMap<String, InstanceInfo> = HashMap::new();
    let deadline = tokio::time::Instant::now() + inner.options.discovery_wait;
    while let Ok(Some(env)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        match serde_json::from_slice::<InstanceInfo>(&env.body) {
            Ok(info) => {
                found.insert(info.instance.clone(), info);
            }
            Err(e) => tracing::debug!(error = %e, "unreadable discovery answer"),
        }
    }
    lock(&inner.rpc.pending).remove(&id);
    let mut all: Vec<InstanceInfo> = found.into_values().collect();
    all.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(all)
}

mod serve;

pub(crate) use serve::serve;
