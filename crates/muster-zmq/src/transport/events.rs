//! Events: publishers send to the bus inlet (XSUB), subscribers read from
//! its outlet (XPUB). In direct mode a publisher binds and subscribers
//! connect to it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_core::topic::Pattern;
use muster_core::transport::{BoxFuture, EventSink, Subscribed};
use muster_core::wire::{self, Envelope, Header, Kind};
use muster_core::{Error, ErrorKind, id};
use omq_tokio::{Message, Socket, SocketType};
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Inner, Mode};
use crate::socket::{self, frames, zmq_error};

/// Events queued per process before `publish` waits (back-pressure).
const PUBLISH_QUEUE: usize = 8192;
/// Most events packed into one message.
const BATCH_EVENTS: usize = 128;
/// Most payload bytes packed into one message.
const BATCH_BYTES: usize = 64 * 1024;

/// The process's publisher, made on first publish: a queue drained by
/// one task that owns the PUB socket.
#[derive(Debug, Default)]
pub(crate) struct Events {
    publisher: OnceCell<Publisher>,
}

#[derive(Debug)]
struct Publisher {
    tx: mpsc::Sender<Envelope>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Events {
    pub(crate) async fn close(&self) {
        if let Some(p) = self.publisher.get() {
            // A close marker after the queued events: the task sends what
            // is before it, then closes the socket (bounded by its linger).
            let task = p
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                // Bounded: a bus that stopped taking events must not hang
                // the shutdown.
                let flush = async {
                    let _ =
                        p.tx.send(Envelope::new(Header::new(Kind::Control), ""))
                            .await;
                    let _ = task.await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
            }
        }
    }
}

async fn publisher(inner: &Inner) -> Result<&Publisher, Error> {
    inner
        .events
        .publisher
        .get_or_try_init(|| async {
            let mut opts = socket::options(inner.options.max_message_size);
            // Wait instead of dropping when the bus is slow: back-pressure.
            opts.xpub_nodrop = true;
            let s = Socket::new(SocketType::Pub, opts);
            match &inner.mode {
                Mode::Bus(addr) => {
                    s.connect(addr.events_in().as_str())
                        .await
                        .map_err(|e| zmq_error("connect event inlet", e))?;
                    // The bus subscribes to everything; until that arrives a
                    // PUB would drop what it is given.
                    s.wait_subscribed(1, inner.options.control_timeout * 3)
                        .await
                        .map_err(|_| {
                            Error::new(
                                ErrorKind::Unavailable,
                                format!("no bus takes events at {}", addr.events_in()),
                            )
                        })?;
                }
                Mode::Direct(a) => {
                    let bind = a.events.bind.as_deref().ok_or_else(|| {
                        Error::new(
                            ErrorKind::Config,
                            "direct mode: the addresses file has no events.bind to publish on",
                        )
                    })?;
                    s.bind(bind)
                        .await
                        .map_err(|e| zmq_error(&format!("bind events {bind}"), e))?;
                }
            }
            let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
            let task = tokio::spawn(send_batches(s, rx));
            Ok(Publisher {
                tx,
                task: Mutex::new(Some(task)),
            })
        })
        .await
}

/// Sends queued events, packing consecutive events of one topic into one
/// message (sharing one header where they can). Batching only takes what
/// is already queued: a lone event goes out at once. A `Control` envelope
/// is the close marker.
async fn send_batches(socket: Socket, mut rx: mpsc::Receiver<Envelope>) {
    let mut queued: Vec<Envelope> = Vec::with_capacity(BATCH_EVENTS);
    'outer: loop {
        if rx.recv_many(&mut queued, BATCH_EVENTS).await == 0 {
            break;
        }
        let mut start = 0;
        while start < queued.len() {
            if queued[start].header.kind == Kind::Control {
                break 'outer;
            }
            let topic = queued[start].header.topic.as_deref().unwrap_or("");
            let mut end = start + 1;
            let mut bytes = queued[start].body.len();
            while end < queued.len()
                && bytes < BATCH_BYTES
                && queued[end].header.kind != Kind::Control
                && queued[end].header.topic.as_deref() == Some(topic)
            {
                bytes += queued[end].body.len();
                end += 1;
            }
            let frames = wire::encode_events(topic, &queued[start..end]);
            if let Err(e) = socket.send(Message::multipart(frames)).await {
                tracing::warn!(error = %e, "event publisher stopped");
                break 'outer;
            }
            start = end;
        }
        queued.clear();
    }
    let _ = socket.close().await;
}

pub(crate) async fn publish(inner: &Inner, event: Envelope) -> Result<(), Error> {
    muster_core::transport::check_event(&event, inner.options.max_message_size)?;
    let p = publisher(inner).await?;
    p.tx.send(event)
        .await
        .map_err(|_| Error::new(ErrorKind::Closed, "the event publisher is closed"))
}

pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    patterns: Vec<String>,
    sink: Arc<dyn EventSink>,
) -> Result<Box<dyn Subscribed>, Error> {
    let patterns = patterns
        .iter()
        .map(|p| Pattern::parse(p).map_err(|e| Error::new(ErrorKind::Config, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let sub = socket::socket(SocketType::Sub, inner.options.max_message_size);
    match &inner.mode {
        Mode::Bus(addr) => sub
            .connect(addr.events_out().as_str())
            .await
            .map_err(|e| zmq_error("connect event outlet", e))?,
        Mode::Direct(a) => {
            for ep in &a.events.connect {
                sub.connect(ep.as_str())
                    .await
                    .map_err(|e| zmq_error(&format!("connect events {ep}"), e))?;
            }
        }
    }
    for p in &patterns {
        sub.subscribe(p.literal_prefix())
            .await
            .map_err(|e| zmq_error("subscribe", e))?;
    }
    let mut early = Vec::new();
    if matches!(inner.mode, Mode::Bus(_)) {
        early = confirm_subscribed(&inner, &sub, &patterns).await?;
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(deliver(sub, patterns, sink, early, stop.clone()));
    Ok(Box::new(ZmqSubscribed {
        stop,
        task: Mutex::new(Some(task)),
    }))
}

/// Proves the subscription reached the bus: publish probes on a private
/// topic until one comes back. Every event published after `subscribe`
/// returns is then delivered (no slow-joiner loss). Real events that
/// arrive meanwhile are kept and delivered first.
async fn confirm_subscribed(
    inner: &Inner,
    sub: &Socket,
    patterns: &[Pattern],
) -> Result<Vec<Envelope>, Error> {
    let probe = format!("_muster.probe.{}", id::short_id());
    sub.subscribe(probe.clone())
        .await
        .map_err(|e| zmq_error("subscribe", e))?;
    let deadline = Instant::now() + inner.options.control_timeout * 3;
    let mut early = Vec::new();
    'outer: loop {
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "subscription not confirmed by the bus (is `muster bus` running?)",
            ));
        }
        publish(
            inner,
            Envelope::new(Header::new(Kind::Event).with_topic(probe.clone()), "null"),
        )
        .await?;
        let wait_until = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Ok(Ok(msg)) = tokio::time::timeout_at(wait_until, sub.recv()).await {
            let Ok(events) = wire::decode_events(&frames(&msg)) else {
                continue;
            };
            for e in events {
                let topic = e.header.topic.as_deref().unwrap_or("");
                if topic == probe {
                    break 'outer;
                }
                if patterns.iter().any(|p| p.matches(topic)) {
                    early.push(e);
                }
            }
        }
    }
    let _ = sub.unsubscribe(probe).await;
    Ok(early)
}

async fn deliver(
    sub: Socket,
    patterns: Vec<Pattern>,
    sink: Arc<dyn EventSink>,
    early: Vec<Envelope>,
    stop: CancellationToken,
) {
    for e in early {
        sink.deliver(e).await;
    }
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            m = sub.recv() => match m { Ok(m) => m, Err(_) => break },
        };
        match wire::decode_events(&frames(&msg)) {
            Ok(events) => {
                for e in events {
                    let topic = e.header.topic.as_deref().unwrap_or("");
                    if patterns.iter().any(|p| p.matches(topic)) {
                        sink.deliver(e).await;
                    }
                }
            }
            Err(e) => crate::socket::log_dropped("event", &e),
        }
    }
    let _ = sub.close().await;
}

#[derive(Debug)]
struct ZmqSubscribed {
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Subscribed for ZmqSubscribed {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.cancel();
            let task = self
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(t) = task {
                let _ = t.await;
            }
        })
    }
}
