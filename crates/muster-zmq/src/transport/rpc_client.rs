//! The caller side of RPC: one DEALER per instance, a table of pending
//! calls, least-outstanding balancing and deadlines.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_core::RpcError;
use muster_core::error::code;
use muster_core::wire::{Envelope, Kind};
use omq_tokio::{Socket, SocketType, TrySendError};
use tokio::sync::oneshot;

use super::{Inner, ZmqOptions};
use crate::socket::{self, Framing, envelope_message};

type Reply = Result<Envelope, RpcError>;
/// Keyed by this caller's own call numbers, which no peer picks: so
/// foldhash, cheaper per call than SipHash, whose defence against chosen
/// keys is not needed here.
type PendingMap = Mutex<foldhash::HashMap<u64, oneshot::Sender<Reply>>>;

/// A connection to one instance's RPC endpoint.
#[derive(Debug)]
pub(crate) struct Conn {
    endpoint: String,
    socket: Socket,
    shared: Arc<Shared>,
    outbox: tokio::sync::mpsc::Sender<omq_tokio::Message>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    pending: PendingMap,
    outstanding: AtomicUsize,
    next: AtomicU64,
    /// Replies over this size are refused (-32003), like requests.
    max_message_size: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Most requests written in one burst.
const BURST: usize = 256;

/// Sends requests queued while others were in flight, in bursts. Each
/// send wakes the socket's writer; sending one request at a time from many
/// tasks would cost a system call per request. The writer lets the other
/// callers run once (`yield_now`) before it drains the queue, so requests
/// from many tasks leave together.
async fn write_requests(
    socket: Socket,
    mut outbox: tokio::sync::mpsc::Receiver<omq_tokio::Message>,
) {
    let mut burst = Vec::with_capacity(BURST);
    while outbox.recv_many(&mut burst, BURST).await > 0 {
        if burst.len() < BURST {
            tokio::task::yield_now().await;
            while burst.len() < BURST {
                match outbox.try_recv() {
                    Ok(m) => burst.push(m),
                    Err(_) => break,
                }
            }
        }
        for m in burst.drain(..) {
            if let Err(e) = socket.send(m).await {
                tracing::debug!(error = %e, "request not sent; its caller will time out");
            }
        }
    }
}

fn lock(
    p: &PendingMap,
) -> std::sync::MutexGuard<'_, foldhash::HashMap<u64, oneshot::Sender<Reply>>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Conn {
    /// Connects (in the background; ZeroMQ queues until the link is up).
    pub(crate) async fn open(endpoint: &str, options: &ZmqOptions) -> Arc<Self> {
        let socket = Socket::new(
            SocketType::Dealer,
            socket::connecting(options.max_message_size, options.curve.as_ref()),
        );
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            outstanding: AtomicUsize::new(0),
            next: AtomicU64::new(1),
            max_message_size: options.max_message_size,
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
        let (outbox, rx) = tokio::sync::mpsc::channel(4 * BURST);
        let writer = tokio::spawn(write_requests(socket.clone_shared(), rx));
        Arc::new(Self {
            endpoint: endpoint.to_owned(),
            socket,
            shared,
            outbox,
            reader,
            writer,
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

    fn closed(&self) -> RpcError {
        RpcError::unavailable(format!("connection to {} closed", self.endpoint))
    }

    /// Sends one request, framed as the instance reads it, and waits for
    /// its reply until `deadline`. Takes the request by reference: a
    /// caller that may send it again elsewhere keeps it without a copy.
    async fn call(
        &self,
        req: &mut Envelope,
        framing: Framing,
        deadline: Instant,
        now: Instant,
    ) -> Reply {
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        req.header.id = n.to_string();
        let remaining = deadline.saturating_duration_since(now);
        req.header.deadline_ms = Some(remaining.as_millis().try_into().unwrap_or(u64::MAX));
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(n, tx);
        let mut guard = PendingGuard {
            shared: &self.shared,
            n,
            armed: true,
        };
        // Alone on the connection: send at once (lowest latency). With other
        // calls in flight, or a socket that takes no more for now: queue for
        // the burst writer (fewest system calls). `try_send`, not `send`:
        // the socket's send future is 1.4 KB, which every call's future
        // would carry and copy.
        let alone = self.shared.outstanding.fetch_add(1, Ordering::Relaxed) == 0;
        let message = envelope_message(req, framing);
        let queued = if alone {
            match self.socket.try_send(message) {
                Ok(()) => None,
                Err(TrySendError::Full(message)) => Some(message),
                Err(TrySendError::Error(e)) => {
                    return Err(RpcError::unavailable(format!(
                        "send to {}: {e}",
                        self.endpoint
                    )));
                }
                Err(TrySendError::Closed) => return Err(self.closed()),
            }
        } else {
            Some(message)
        };
        let exchange = async {
            if let Some(message) = queued {
                self.outbox.send(message).await.map_err(|_| self.closed())?;
            }
            rx.await.map_err(|_| self.closed())?
        };
        let outcome = tokio::time::timeout_at(deadline.into(), exchange).await;
        // Answered (or failed by the reader): the entry is already gone.
        guard.armed = outcome.is_err();
        outcome.unwrap_or_else(|_| Err(timeout_error(req, remaining)))
    }
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
    /// False once the reply (or a failure) took the entry out.
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.shared.pending).remove(&self.n);
        }
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
        let Ok(n) = env.header.id.parse::<u64>() else {
            tracing::debug!(id = %env.header.id, "reply with an id this caller did not send");
            return;
        };
        if let Some(tx) = lock(&self.pending).remove(&n) {
            let _ = tx.send(Ok(env));
        }
    }
}

fn take_reply(shared: &Shared, msg: &omq_tokio::Message) {
    let size = msg.byte_len();
    if size > shared.max_message_size {
        // The caller learns why, not a timeout.
        if let Some(n) =
            crate::socket::salvage_header(msg, 0).and_then(|h| h.id.parse::<u64>().ok())
            && let Some(tx) = lock(&shared.pending).remove(&n)
        {
            let _ = tx.send(Err(RpcError::too_large(size, shared.max_message_size)));
        }
        return;
    }
    match crate::socket::envelope_at(msg, 0) {
        Ok(env) if env.header.kind == Kind::Reply => shared.complete(env),
        Ok(_) => tracing::debug!("non-reply message on a caller socket dropped"),
        Err(e) => crate::socket::log_dropped("reply", &e),
    }
}

async fn read_replies(socket: Socket, shared: Arc<Shared>, endpoint: String) {
    let mut was_up = false;
    // Made once and again only when it fires, not on every reply: making
    // it registers a waiter and dropping it takes it out again, about 650
    // instructions a call (callgrind, `percall_zmq`).
    let mut changes = std::pin::pin!(socket.connections_changed(socket.connections_generation()));
    loop {
        tokio::select! {
            // Replies first: a peer that answers and then exits must have
            // its answers taken before its departure fails the rest.
            biased;
            msg = socket.recv() => {
                let Ok(msg) = msg else { break };
                take_reply(&shared, &msg);
                // Complete every reply already here in one go: the woken
                // callers then send their next requests as one burst.
                for _ in 0..BURST {
                    let Ok(msg) = socket.try_recv() else { break };
                    take_reply(&shared, &msg);
                }
            }
            changed = &mut changes => {
                let Ok(generation) = changed else { break };
                changes.set(socket.connections_changed(generation));
                let up = socket.connections().await.map(|c| !c.is_empty()).unwrap_or(false);
                if was_up && !up {
                    while let Ok(msg) = socket.try_recv() {
                        take_reply(&shared, &msg);
                    }
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
    mut req: Envelope,
    timeout: Duration,
) -> Result<Envelope, RpcError> {
    let now = Instant::now();
    let deadline = now + timeout;
    let (Some(service), Some(method)) =
        (req.header.service.as_deref(), req.header.method.as_deref())
    else {
        return Err(RpcError::invalid_request(
            "request without a service and method",
        ));
    };
    let instance = req.header.instance.as_deref();
    let route = inner
        .view
        .pick(inner, service, method, instance, None)
        .await?;
    let idempotent = instance.is_none() && route.info.method(method).is_some_and(|m| m.idempotent);
    req.header.auth.clone_from(&route.auth);
    // The request stays here, to send again if this instance dies
    // mid-request and the method is idempotent.
    match route
        .conn
        .call(&mut req, route.framing(), deadline, now)
        .await
    {
        Err(e) if idempotent && e.code == code::UNAVAILABLE => {
            let service = req.header.service.as_deref().unwrap_or_default();
            let method = req.header.method.as_deref().unwrap_or_default();
            let retry = inner
                .view
                .pick(inner, service, method, None, Some(&route.info.instance))
                .await
                .map_err(|_| e)?;
            req.header.auth.clone_from(&retry.auth);
            retry
                .conn
                .call(&mut req, retry.framing(), deadline, Instant::now())
                .await
        }
        other => other,
    }
}
