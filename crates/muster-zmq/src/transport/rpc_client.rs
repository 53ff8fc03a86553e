//! The caller side of RPC: one DEALER per instance, a table of pending
//! calls, least-outstanding balancing and deadlines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_core::error::code;
use muster_core::wire::{Envelope, Kind};
use muster_core::{RpcError, id};
use omq_tokio::{Socket, SocketType};
use tokio::sync::oneshot;

use super::{Inner, ZmqOptions};
use crate::socket::{self, envelope_message, frames};

type Reply = Result<Envelope, RpcError>;
type PendingMap = Mutex<HashMap<u64, oneshot::Sender<Reply>>>;

/// A connection to one instance's RPC endpoint.
#[derive(Debug)]
pub(crate) struct Conn {
    endpoint: String,
    socket: Socket,
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    pending: PendingMap,
    outstanding: AtomicUsize,
    next: AtomicU64,
    prefix: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock(p: &PendingMap) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Conn {
    /// Connects (in the background; ZeroMQ queues until the link is up).
    pub(crate) async fn open(endpoint: &str, options: &ZmqOptions) -> Arc<Self> {
        let socket = socket::socket(SocketType::Dealer, options.max_message_size);
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            outstanding: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            prefix: format!("{}-", id::short_id()),
        });
        if let Err(e) = socket.connect(endpoint).await {
            // An unusable endpoint: calls to it fail at once rather than hang.
            tracing::warn!(endpoint, error = %e, "cannot connect to instance");
        }
        let reader = tokio::spawn(read_replies(
            socket.clone_shared(),
            shared.clone(),
            endpoint.to_owned(),
        ));
        Arc::new(Self {
            endpoint: endpoint.to_owned(),
            socket,
            shared,
            reader,
        })
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Relaxed)
    }

    pub(crate) fn fail_if_unconnected(self: &Arc<Self>, why: &str) {
        if self.outstanding() == 0 {
            return;
        }
        let conn = self.clone();
        let why = why.to_owned();
        tokio::spawn(async move {
            let connected = conn.socket.connections().await.is_ok_and(|c| !c.is_empty());
            if !connected {
                conn.shared.fail_all(&why);
            }
        });
    }

    /// Sends one request and waits for its reply until `deadline`.
    async fn call(&self, mut req: Envelope, deadline: Instant) -> Reply {
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        req.header.id = format!("{}{n}", self.shared.prefix);
        let remaining = deadline.saturating_duration_since(Instant::now());
        req.header.deadline_ms = Some(remaining.as_millis().try_into().unwrap_or(u64::MAX));
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(n, tx);
        let _guard = PendingGuard {
            shared: &self.shared,
            n,
        };
        self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        let send = self.socket.send(envelope_message(&req));
        match tokio::time::timeout(remaining, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(RpcError::unavailable(format!(
                    "send to {}: {e}",
                    self.endpoint
                )));
            }
            Err(_) => return Err(timeout_error(&req, remaining)),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(RpcError::unavailable(format!(
                "connection to {} closed",
                self.endpoint
            ))),
            Err(_) => Err(timeout_error(&req, deadline_total(&req))),
        }
    }
}

fn deadline_total(req: &Envelope) -> Duration {
    Duration::from_millis(req.header.deadline_ms.unwrap_or(0))
}

fn timeout_error(req: &Envelope, waited: Duration) -> RpcError {
    RpcError::timeout(format!(
        "no reply from {} within {waited:?}",
        req.header.target()
    ))
}

/// Removes the pending entry however the call ends (cancel safety).
struct PendingGuard<'a> {
    shared: &'a Shared,
    n: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.n);
        self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn fail_all(&self, why: &str) {
        let drained: Vec<_> = lock(&self.pending).drain().collect();
        for (_, tx) in drained {
            let _ = tx.send(Err(RpcError::unavailable(why)));
        }
    }

    fn complete(&self, env: Envelope) {
        let Some(n) = env
            .header
            .id
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| s.parse::<u64>().ok())
        else {
            tracing::debug!(id = %env.header.id, "reply with an id this caller did not send");
            return;
        };
        if let Some(tx) = lock(&self.pending).remove(&n) {
            let _ = tx.send(Ok(env));
        }
    }
}

async fn read_replies(socket: Socket, shared: Arc<Shared>, endpoint: String) {
    let mut seen = socket.connections_generation();
    let mut was_up = false;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Ok(msg) = msg else { break };
                match Envelope::from_frames(&frames(&msg)) {
                    Ok(env) if env.header.kind == Kind::Reply => shared.complete(env),
                    Ok(_) => tracing::debug!("non-reply message on a caller socket dropped"),
                    Err(e) => crate::socket::log_dropped("reply", &e),
                }
            }
            changed = socket.connections_changed(seen) => {
                let Ok(generation) = changed else { break };
                seen = generation;
                let up = socket.connections().await.map(|c| !c.is_empty()).unwrap_or(false);
                if was_up && !up {
                    // The instance went away: its calls will never be answered.
                    shared.fail_all(&format!("connection to {endpoint} lost mid-request"));
                }
                was_up = up;
            }
        }
    }
    shared.fail_all(&format!("connection to {endpoint} closed"));
}

/// Sends a request to the best instance, retrying once on another instance
/// when the first one dies and the method is idempotent.
pub(crate) async fn request(
    inner: &Arc<Inner>,
    req: Envelope,
    timeout: Duration,
) -> Result<Envelope, RpcError> {
    let deadline = Instant::now() + timeout;
    let service = req
        .header
        .service
        .clone()
        .ok_or_else(|| RpcError::invalid_request("request without a service"))?;
    let method = req
        .header
        .method
        .clone()
        .ok_or_else(|| RpcError::invalid_request("request without a method"))?;
    let instance = req.header.instance.clone();
    let route = inner
        .view
        .pick(inner, &service, &method, instance.as_deref(), None)
        .await?;
    match route.conn.call(req.clone(), deadline).await {
        Err(e) if e.code == code::UNAVAILABLE && instance.is_none() => {
            let idempotent = route.info.method(&method).is_some_and(|m| m.idempotent);
            if !idempotent {
                return Err(e);
            }
            let retry = inner
                .view
                .pick(inner, &service, &method, None, Some(&route.info.instance))
                .await
                .map_err(|_| e)?;
            retry.conn.call(req, deadline).await
        }
        other => other,
    }
}
