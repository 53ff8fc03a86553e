//! The instance side of RPC: a ROUTER on an ephemeral port, registered
//! with the bus and kept alive by heartbeats.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use muster_core::registry::InstanceInfo;
use muster_core::transport::{BoxFuture, Dispatch, Registration, Served};
use muster_core::wire::{ContentType, Envelope, Header, Kind, WireError, jsonrpc};
use muster_core::{Error, RpcError};

use crate::Addresses;
use omq_tokio::{Message, Socket, SocketType};
use tokio_util::sync::CancellationToken;

use super::outbox::{self, Outbox};
use super::{Inner, Mode};
use crate::control::{self, Ack, Heartbeat, HeartbeatReply, SLOWEST_HEARTBEAT, Unregister};
use crate::socket::{self, Framing, routed_message, salvage_header, zmq_error};

/// Instances this process serves, for heartbeats.
#[derive(Debug)]
pub(crate) struct ServedSet {
    instances: Mutex<HashMap<String, InstanceInfo>>,
    heartbeat_started: std::sync::Once,
}

impl Default for ServedSet {
    fn default() -> Self {
        Self {
            instances: Mutex::default(),
            heartbeat_started: std::sync::Once::new(),
        }
    }
}

impl ServedSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, InstanceInfo>> {
        self.instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) async fn serve(
    inner: Arc<Inner>,
    registration: Registration,
    dispatch: Arc<dyn Dispatch>,
) -> Result<Box<dyn Served>, Error> {
    let max = inner.options.max_message_size;
    // A short queue per caller, and `Full` instead of a silent drop when a
    // caller's is full: the outbox keeps those replies, bounded in bytes.
    let candidates = match &inner.mode {
        Mode::Direct(Addresses { bind: Some(b), .. }) => vec![b.clone()],
        _ => crate::listen::candidates(&inner.options.bind_host, inner.options.rpc_ports),
    };
    // Every candidate is on the same host.
    crate::curve::check_listen(
        "this instance's RPC endpoint",
        candidates.first().map_or("localhost", |b| bind_host_of(b)),
        inner.options.curve.as_ref(),
        inner.options.plain_tcp,
    )?;
    let mut router_options = socket::listening(max, inner.options.curve.as_ref())?;
    router_options.send_hwm = outbox::QUEUE_PER_CALLER;
    router_options.router_mandatory = true;
    let router = Socket::new(SocketType::Router, router_options);
    let bound = bind_first_free(&router, &candidates).await?;
    let mut info = registration.info;
    info.endpoint = crate::listen::advertised(&bound, inner.options.advertise_host.as_deref());
    info.one_frame = true;

    if let Some(control) = &inner.control {
        match control
            .call::<_, Ack>(control::REGISTER, &info, inner.options.control_timeout)
            .await
        {
            Ok(Ack { error: Some(e) }) => {
                return Err(Error::new(muster_core::ErrorKind::Protocol, e));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "bus not reachable; registering when it appears"),
        }
        inner
            .served
            .lock()
            .insert(info.instance.clone(), info.clone());
        start_heartbeats(&inner);
    }

    let gatekeeper = info.require_auth.then(|| {
        Arc::new(Gatekeeper {
            control: inner.control.clone(),
            instance: info.instance.clone(),
            timeout: inner.options.control_timeout,
            verified: Mutex::default(),
        })
    });
    let stop = CancellationToken::new();
    let (grace_tx, grace_rx) = tokio::sync::oneshot::channel();
    let serving = Serving {
        router,
        dispatch,
        gatekeeper,
        max_in_flight: registration.max_in_flight.max(1),
        max_message_size: max,
        reply_backlog: inner.options.reply_backlog,
    };
    let task = tokio::spawn(serve_loop(serving, stop.clone(), grace_rx));
    Ok(Box::new(ZmqServed {
        inner,
        instance: info.instance,
        endpoint: info.endpoint,
        stop,
        grace_tx: Mutex::new(Some(grace_tx)),
        task: Mutex::new(Some(task)),
    }))
}

/// Binds the first of `candidates` that is free (a port range is tried
/// in order; another process may hold any of its ports).
async fn bind_first_free(router: &Socket, candidates: &[String]) -> Result<String, Error> {
    let mut last = None;
    for bind in candidates {
        match router.bind(bind.as_str()).await {
            Ok(bound) => return Ok(bound.to_string()),
            Err(e) => last = Some(zmq_error(&format!("bind RPC endpoint {bind}"), e)),
        }
    }
    Err(match (last, candidates) {
        (Some(e), [_]) => e,
        (e, _) => Error::new(
            muster_core::ErrorKind::Io,
            format!(
                "no free port for the RPC endpoint among {} ({} to {}); last: {}",
                candidates.len(),
                candidates.first().map_or("", String::as_str),
                candidates.last().map_or("", String::as_str),
                e.map(|e| e.to_string()).unwrap_or_default()
            ),
        ),
    })
}

/// The host of `tcp://HOST:PORT` (what is not TCP is local: ipc, inproc).
fn bind_host_of(endpoint: &str) -> &str {
    match endpoint.strip_prefix("tcp://") {
        Some(rest) => rest.rsplit_once(':').map_or(rest, |(h, _)| h),
        None => "localhost",
    }
}

#[derive(Debug)]
struct ZmqServed {
    inner: Arc<Inner>,
    instance: String,
    endpoint: String,
    stop: CancellationToken,
    grace_tx: Mutex<Option<tokio::sync::oneshot::Sender<Duration>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Served for ZmqServed {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Leave the registry first so callers stop choosing us.
            self.inner.served.lock().remove(&self.instance);
            if let Some(control) = &self.inner.control {
                let body = Unregister {
                    instance: self.instance.clone(),
                };
                let _ = control
                    .call::<_, Ack>(
                        control::UNREGISTER,
                        &body,
                        self.inner.options.control_timeout,
                    )
                    .await;
            }
            if let Some(tx) = take(&self.grace_tx) {
                let _ = tx.send(grace);
            }
            self.stop.cancel();
            if let Some(task) = take(&self.task) {
                let _ = task.await;
            }
        })
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

fn start_heartbeats(inner: &Arc<Inner>) {
    inner.served.heartbeat_started.call_once(|| {
        let weak = Arc::downgrade(inner);
        let stop = inner.shutdown.clone();
        let own = inner.options.heartbeat_every;
        tokio::spawn(async move {
            // The interval the bus last asked for; `None`: our own.
            let mut asked = None;
            loop {
                // Timed from when this one left, as a fixed-rate ticker
                // would: a heartbeat slow to be answered (a busy instance
                // or bus) does not push the next one later.
                let sent = tokio::time::Instant::now();
                let mut due = sent + jittered(next_heartbeat(own, asked));
                let Some(inner) = weak.upgrade() else { break };
                let answer = tokio::select! {
                    () = stop.cancelled() => break,
                    a = heartbeat_once(inner, asked, due) => a,
                };
                if let Some(a) = answer {
                    asked = a;
                    // Told a shorter interval (instances went, or a bus
                    // that restarted lists few yet): keep to it now.
                    due = due.min(sent + jittered(next_heartbeat(own, asked)));
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(due) => {}
                }
            }
        });
    });
}

/// The interval to the next heartbeat: ours, or the slower one the bus
/// asked for, up to [`SLOWEST_HEARTBEAT`]; never faster than ours, which
/// may itself be over a minute.
fn next_heartbeat(own: Duration, asked: Option<Duration>) -> Duration {
    asked.map_or(own, |asked| asked.min(SLOWEST_HEARTBEAT).max(own))
}

/// `every`, less up to a tenth at random: instances started together
/// spread their heartbeats out instead of reaching the bus at once, and
/// none comes later than asked.
fn jittered(every: Duration) -> Duration {
    let tenth = u64::try_from(every.as_micros() / 10).unwrap_or(u64::MAX);
    let less = muster_core::id::random_u64() % tenth.max(1);
    every.saturating_sub(Duration::from_micros(less))
}

/// One quiet heartbeat for every instance this process serves, `asked`
/// being the interval the bus last asked for. The bus answers only when
/// it has something to say, so the answer is awaited until the next
/// heartbeat is `due`: `None` when none came (nothing changed, or no bus),
/// else the interval it asks for now, if it asks. An older bus answers
/// every heartbeat at once.
async fn heartbeat_once(
    inner: Arc<Inner>,
    asked: Option<Duration>,
    due: tokio::time::Instant,
) -> Option<Option<Duration>> {
    let control = inner.control.clone()?;
    let ids: Vec<String> = inner.served.lock().keys().cloned().collect();
    if ids.is_empty() {
        return None;
    }
    let timeout = inner.options.control_timeout;
    // Not held while the answer is awaited: a transport dropped without a
    // shutdown is freed at once, but for its registry connection, which
    // this call keeps until its next heartbeat is due at the latest.
    let weak = Arc::downgrade(&inner);
    drop(inner);
    let beat = Heartbeat {
        instances: ids,
        quiet: true,
        asked_ms: asked.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let wait = due.saturating_duration_since(tokio::time::Instant::now());
    let reply: HeartbeatReply = control.call(control::HEARTBEAT, &beat, wait).await.ok()?;
    for id in reply.unknown {
        let info = weak
            .upgrade()
            .and_then(|inner| inner.served.lock().get(&id).cloned());
        if let Some(info) = info {
            tracing::info!(instance = %id, "bus does not know this instance (it restarted?); registering again");
            let _ = control
                .call::<_, Ack>(control::REGISTER, &info, timeout)
                .await;
        }
    }
    Some(reply.every_ms.map(Duration::from_millis))
}

/// A request being handled, tagged with the caller's routing identity.
struct InFlight {
    identity: Bytes,
    /// How the request came, and so how its reply goes.
    framing: Framing,
    /// The reply's header (the request's id and content type), to answer
    /// it should the handler never finish: not the whole request header,
    /// whose strings would be copied on every call.
    reply_header: Header,
    reply: BoxFuture<'static, Option<Envelope>>,
}

impl std::future::Future for InFlight {
    type Output = (Bytes, Framing, Option<Envelope>);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.reply
            .as_mut()
            .poll(cx)
            .map(|reply| (std::mem::take(&mut self.identity), self.framing, reply))
    }
}

/// Checks the callers of a `require_auth` instance: the first request of
/// each connection shows a credential, which the bus verifies; the
/// connection is then known (a connection is one caller's).
#[derive(Debug)]
struct Gatekeeper {
    control: Option<Arc<super::control_client::ControlClient>>,
    instance: String,
    timeout: Duration,
    verified: Mutex<std::collections::HashSet<Bytes>>,
}

/// Connections remembered as verified, at most (then forgotten, and each
/// shows its credential again).
const VERIFIED_CONNECTIONS: usize = 10_000;

impl Gatekeeper {
    fn knows(&self, identity: &Bytes) -> bool {
        self.lock().contains(identity)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Bytes>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the bus whether the request's credential is good for this
    /// instance, and remembers the connection when it is.
    async fn admit(&self, identity: Bytes, header: &Header) -> Result<(), RpcError> {
        let refuse = |why: &str| {
            tracing::warn!(instance = %self.instance, reason = why, "request refused: this service requires callers' credentials");
            RpcError::unauthorized(format!(
                "{} requires a bus credential of its callers ({why}; docs/security.md)",
                self.instance
            ))
        };
        let Some((key, mac)) = header.auth.as_deref().and_then(|a| a.split_once(' ')) else {
            return Err(refuse("none shown"));
        };
        let Some(control) = &self.control else {
            return Err(refuse("no bus to check it with"));
        };
        let verify = control::Verify {
            key: key.to_owned(),
            instance: self.instance.clone(),
            mac: mac.to_owned(),
        };
        let answer: control::Verified = control
            .call(control::VERIFY, &verify, self.timeout)
            .await
            .map_err(|e| {
                RpcError::unavailable(format!("cannot check the caller's credential: {e}"))
            })?;
        if !answer.valid {
            return Err(refuse("a wrong one"));
        }
        let mut known = self.lock();
        if known.len() >= VERIFIED_CONNECTIONS {
            known.clear();
        }
        known.insert(identity);
        Ok(())
    }
}

/// What an instance's serving loop works with.
struct Serving {
    router: Socket,
    dispatch: Arc<dyn Dispatch>,
    gatekeeper: Option<Arc<Gatekeeper>>,
    max_in_flight: usize,
    max_message_size: usize,
    reply_backlog: usize,
}

async fn serve_loop(
    serving: Serving,
    stop: CancellationToken,
    mut grace_rx: tokio::sync::oneshot::Receiver<Duration>,
) {
    let Serving {
        router,
        dispatch,
        gatekeeper,
        max_in_flight,
        max_message_size,
        reply_backlog,
    } = serving;
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut draining_until: Option<tokio::time::Instant> = None;
    // A reply over the size limit is not sent: its caller gets -32003.
    let bounded = |identity: Bytes, reply: &Envelope, framing: Framing| {
        let size = reply.body.len();
        if size <= max_message_size {
            return routed_message(identity, reply, framing);
        }
        tracing::warn!(
            size,
            limit = max_message_size,
            "reply over the size limit; answered with -32003"
        );
        routed_message(
            identity,
            &error_answer(&reply.header, &RpcError::too_large(size, max_message_size)),
            framing,
        )
    };
    let take =
        |msg: omq_tokio::Message, in_flight: &mut FuturesUnordered<InFlight>, draining: bool| {
            let identity = msg.part_bytes(0)?;
            // Answered as it was asked: an older caller reads three frames only.
            let framing = Framing::of(&msg, 1);
            match accept(&msg, max_message_size, draining) {
                Accepted::Request(env) => {
                    let reply_header = Header::reply_to(&env.header);
                    let reply = match &gatekeeper {
                        Some(gk) if !gk.knows(&identity) => {
                            let (gk, dispatch, identity) =
                                (gk.clone(), dispatch.clone(), identity.clone());
                            Box::pin(async move {
                                match gk.admit(identity, &env.header).await {
                                    Ok(()) => dispatch.dispatch(env).await,
                                    Err(e) => match error_reply(&env.header, e) {
                                        Accepted::Refuse(r) => Some(r),
                                        _ => None,
                                    },
                                }
                            })
                        }
                        _ => dispatch.dispatch(env),
                    };
                    in_flight.push(InFlight {
                        identity,
                        framing,
                        reply_header,
                        reply,
                    });
                    None
                }
                Accepted::Refuse(reply) => {
                    Some((identity.clone(), routed_message(identity, &reply, framing)))
                }
                Accepted::Drop => None,
            }
        };
    let mut outbox = Outbox::new(router.clone_shared(), reply_backlog);
    // Made once, not on every turn of the loop: each one made and dropped
    // registers and removes a waiter on the token.
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let drain_deadline = async {
            match draining_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some((identity, framing, reply)) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(reply) = reply {
                    let msg = bounded(identity.clone(), &reply, framing);
                    outbox.send(identity.clone(), msg, || overloaded(identity, &reply.header, framing));
                }
                tokio::task::consume_budget().await;
            }
            () = &mut stopped, if draining_until.is_none() => {
                let grace = grace_rx.try_recv().unwrap_or(Duration::from_secs(10));
                draining_until = Some(tokio::time::Instant::now() + grace);
            }
            () = drain_deadline => {
                tracing::warn!(abandoned = in_flight.len(), "shutdown grace ran out with requests in flight");
                // Their callers hear it now rather than at their deadline.
                for f in std::mem::take(&mut in_flight) {
                    let error = RpcError::unavailable("the instance stopped before the request finished");
                    let reply = error_answer(&f.reply_header, &error);
                    outbox.send(f.identity.clone(), routed_message(f.identity, &reply, f.framing), || None);
                }
                break;
            }
            msg = router.recv(), if in_flight.len() < max_in_flight => {
                let Ok(msg) = msg else { break };
                let draining = draining_until.is_some();
                if let Some((identity, refusal)) = take(msg, &mut in_flight, draining) {
                    outbox.send(identity, refusal, || None);
                }
                // Take what else has arrived without waiting, so that the
                // replies below leave in one burst (one write, not one each).
                while in_flight.len() < max_in_flight {
                    let Ok(msg) = router.try_recv() else { break };
                    if let Some((identity, refusal)) = take(msg, &mut in_flight, draining) {
                        outbox.send(identity, refusal, || None);
                    }
                }
            }
        }
        // Send every reply that is ready now before waiting again.
        while let Some(Some((identity, framing, reply))) = in_flight.next().now_or_never() {
            if let Some(reply) = reply {
                let msg = bounded(identity.clone(), &reply, framing);
                outbox.send(identity.clone(), msg, || {
                    overloaded(identity, &reply.header, framing)
                });
            }
            // Replies are made (encoded) here: let the heartbeats and the
            // other tasks of this process run between them.
            tokio::task::consume_budget().await;
        }
        if draining_until.is_some() && in_flight.is_empty() {
            break;
        }
    }
    // Every request that reached us is answered: those still queued in the
    // socket are refused (-32002), so their callers try another instance
    // at once instead of waiting for their deadline.
    let mut refused = 0usize;
    while refused < DRAIN_REFUSALS {
        let Ok(msg) = router.try_recv() else { break };
        if let Some((identity, refusal)) = take(msg, &mut in_flight, true) {
            outbox.send(identity, refusal, || None);
        }
        refused += 1;
    }
    // Replies still waiting (large ones, slow readers) get time to leave
    // before the socket goes: the default linger would cut them short.
    let until = tokio::time::Instant::now() + CLOSE_LINGER;
    while !outbox.is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(outbox);
    let _ = router.close_with_linger(Some(CLOSE_LINGER)).await;
}

/// Most requests refused one by one when a stopping instance closes.
const DRAIN_REFUSALS: usize = 100_000;
/// How long a stopping instance waits for its last replies to be sent.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

enum Accepted {
    Request(Envelope),
    Refuse(Envelope),
    Drop,
}

/// Decides what to do with an incoming message: serve it, answer it with an
/// error the caller can match, or drop it when it cannot be answered.
fn accept(msg: &omq_tokio::Message, max_message_size: usize, draining: bool) -> Accepted {
    let size = msg.byte_len();
    if size > max_message_size {
        return refuse(msg, RpcError::too_large(size, max_message_size));
    }
    match crate::socket::envelope_at(msg, 1) {
        Ok(env) if env.header.kind != Kind::Request => error_reply(
            &env.header,
            RpcError::invalid_request("expected kind \"request\""),
        ),
        Ok(env) if draining => error_reply(
            &env.header,
            RpcError::overloaded("instance is shutting down; try another"),
        ),
        Ok(env) => Accepted::Request(env),
        Err(e @ WireError::Version(_)) => refuse(msg, RpcError::invalid_request(e)),
        Err(e) => {
            crate::socket::log_dropped("request", &e);
            refuse(msg, RpcError::invalid_request(e))
        }
    }
}

/// Answers a request that cannot be served. A muster message whose header
/// cannot be read at all is answered too, without an id (the caller sees
/// why); anything else is not muster and is dropped.
fn refuse(msg: &Message, error: RpcError) -> Accepted {
    match salvage_header(msg, 1) {
        Some(h) => error_reply(&h, error),
        None if socket::has_tag(msg, 1) => error_reply(&Header::new(Kind::Request), error),
        None => Accepted::Drop,
    }
}

fn error_reply(request: &Header, error: RpcError) -> Accepted {
    Accepted::Refuse(error_answer(&Header::reply_to(request), &error))
}

/// An error reply under `reply` (a reply header: its id and content type).
fn error_answer(reply: &Header, error: &RpcError) -> Envelope {
    let mut header = reply.clone();
    let ct = ContentType::from_header(reply.content_type.as_deref()).unwrap_or_default();
    if ct == ContentType::Json {
        header.content_type = None;
    }
    Envelope::new(header, jsonrpc::encode_error(ct, &None, error))
}

/// What a caller over its reply budget gets instead of its reply.
fn overloaded(identity: Bytes, reply: &Header, framing: Framing) -> Option<Message> {
    let error = RpcError::overloaded(
        "the reply was dropped: this caller has too many bytes of replies not yet read (read faster, or have fewer requests in flight)",
    );
    Some(routed_message(
        identity,
        &error_answer(reply, &error),
        framing,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_follow_the_bus_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(next_heartbeat(s(1), None), s(1));
        assert_eq!(next_heartbeat(s(1), Some(s(8))), s(8));
        // Never faster than our own, never slower than a minute.
        assert_eq!(next_heartbeat(s(1), Some(Duration::ZERO)), s(1));
        assert_eq!(next_heartbeat(s(1), Some(s(3600))), SLOWEST_HEARTBEAT);
        // An own interval over the cap stands (`clamp` would panic here).
        assert_eq!(next_heartbeat(s(90), Some(s(8))), s(90));
    }

    #[test]
    fn jitter_takes_off_at_most_a_tenth() {
        let every = Duration::from_secs(8);
        for _ in 0..1000 {
            let j = jittered(every);
            assert!(j <= every && j > every * 9 / 10, "{j:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
