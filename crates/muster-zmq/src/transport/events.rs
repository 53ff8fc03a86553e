//! Events: publishers send to the bus inlet (XSUB), subscribers read from
//! its outlet (XPUB). In direct mode a publisher binds and subscribers
//! connect to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Topics a publisher numbers, or (publisher, topic) pairs a subscriber
/// follows, before the table starts afresh (a fresh entry counts no gap).
const NUMBERED_TOPICS: usize = 10_000;
/// How long `close` waits for queued events to reach the bus.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

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
    /// Events published and not yet handed to the socket.
    pending: Arc<AtomicU64>,
}

impl Events {
    /// Sends what is queued, then closes the socket. Returns how many
    /// events could not be delivered within [`CLOSE_FLUSH`] (0 when all
    /// were); they are reported in the log too.
    pub(crate) async fn close(&self) -> u64 {
        let Some(p) = self.publisher.get() else {
            return 0;
        };
        // A close marker after the queued events: the task sends what is
        // before it, then closes the socket (bounded by its linger).
        let task = p
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut task) = task else {
            return 0;
        };
        // Bounded: a bus that stopped taking events must not hang the
        // shutdown.
        let flush = async {
            let _ =
                p.tx.send(Envelope::new(Header::new(Kind::Control), ""))
                    .await;
            let _ = (&mut task).await;
        };
        if tokio::time::timeout(CLOSE_FLUSH, flush).await.is_err() {
            task.abort();
        }
        let lost = p.pending.load(Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                events = lost,
                "events not delivered: the bus did not take them within {CLOSE_FLUSH:?} of closing"
            );
        }
        lost
    }
}

async fn publisher(inner: &Inner) -> Result<&Publisher, Error> {
    inner
        .events
        .publisher
        .get_or_try_init(|| async {
            let max = inner.options.max_message_size;
            let curve = inner.options.curve.as_ref();
            let mut opts = match &inner.mode {
                Mode::Bus(_) => socket::connecting(max, curve),
                Mode::Direct(_) => socket::listening(max, curve)?,
            };
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
            let pending = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(send_batches(s, rx, pending.clone()));
            Ok(Publisher {
                tx,
                task: Mutex::new(Some(task)),
                pending,
            })
        })
        .await
}

/// Sends queued events, packing consecutive events of one topic into one
/// message (sharing one header where they can). Batching only takes what
/// is already queued: a lone event goes out at once. A `Control` envelope
/// is the close marker. Every event is numbered per topic (`publisher`,
/// `seq`), so a subscriber can count what the bus dropped for it.
async fn send_batches(socket: Socket, mut rx: mpsc::Receiver<Envelope>, pending: Arc<AtomicU64>) {
    let publisher = id::short_id();
    let mut numbers: HashMap<String, u64> = HashMap::new();
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
            if numbers.len() >= NUMBERED_TOPICS && !numbers.contains_key(topic) {
                numbers.clear();
            }
            let next = numbers.entry(topic.to_owned()).or_insert(0);
            let first = *next;
            *next += (end - start) as u64;
            let frames = wire::encode_events(topic, &queued[start..end], Some((&publisher, first)));
            if let Err(e) = socket.send(Message::multipart(frames)).await {
                tracing::warn!(error = %e, "event publisher stopped");
                break 'outer;
            }
            pending.fetch_sub((end - start) as u64, Ordering::Relaxed);
            start = end;
        }
        queued.clear();
    }
    let _ = socket.close().await;
}

pub(crate) async fn publish(inner: &Inner, event: Envelope) -> Result<(), Error> {
    muster_core::transport::check_event(&event, inner.options.max_message_size)?;
    let p = publisher(inner).await?;
    p.pending.fetch_add(1, Ordering::Relaxed);
    p.tx.send(event).await.map_err(|_| {
        p.pending.fetch_sub(1, Ordering::Relaxed);
        Error::new(ErrorKind::Closed, "the event publisher is closed")
    })
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
    let sub = Socket::new(
        SocketType::Sub,
        socket::connecting(inner.options.max_message_size, inner.options.curve.as_ref()),
    );
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
    let mut gaps = GapCounter::default();
    for e in early {
        gaps.check(&e, sink.as_ref());
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
                        gaps.check(&e, sink.as_ref());
                        sink.deliver(e).await;
                    }
                }
            }
            Err(e) => crate::socket::log_dropped("event", &e),
        }
    }
    let _ = sub.close().await;
}

/// Follows each publisher's numbers per topic and reports the events that
/// never came (the bus dropped them for this subscriber) to the sink.
#[derive(Debug, Default)]
struct GapCounter {
    /// (publisher, topic) -> the number expected next.
    next: HashMap<(String, String), u64>,
}

impl GapCounter {
    fn check(&mut self, event: &Envelope, sink: &dyn EventSink) {
        let (Some(publisher), Some(seq), Some(topic)) = (
            event.header.publisher.as_deref(),
            event.header.seq,
            event.header.topic.as_deref(),
        ) else {
            return;
        };
        if self.next.len() >= NUMBERED_TOPICS {
            self.next.clear();
        }
        // The first event of a run: the rest of the run follows it whole.
        let run = u64::from(event.header.count.unwrap_or(1));
        let key = (publisher.to_owned(), topic.to_owned());
        let expected = self.next.insert(key, seq.wrapping_add(run));
        // A number below the expected one is a publisher that started its
        // table afresh: no gap.
        if let Some(expected) = expected
            && seq > expected
        {
            let missed = seq - expected;
            tracing::debug!(topic, missed, "events dropped for this slow subscriber");
            sink.missed(topic, missed);
        }
    }
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
