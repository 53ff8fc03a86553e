//! The reader's side of a state: subscribe first, then snapshot; apply
//! changes in sequence order; on a gap, a duplicate, a stale change or a
//! new epoch do the right thing; never block a handler.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use muster_core::retry::Backoff;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::owner::BEAT;
use super::{SNAPSHOT_METHOD, Snapshot, State, StateHandle, StateKind, StateMessage};
use crate::client::{CallOptions, Client};
use crate::transport::{BoxFuture, EventSink, Subscribed};
use crate::wire::Envelope;
use crate::{Error, RpcError};

/// Changes kept while waiting for a snapshot; beyond this the oldest go
/// (the snapshot will cover them).
const MAX_BUFFER: usize = 200_000;

/// Not hearing from the owner for this long makes the value stale.
const STALE_AFTER: Duration = Duration::from_millis(BEAT.as_millis() as u64 * 3);

/// A fault-injecting link for tests (`MUSTER_STATE_FAULTS=drop=0.1,dup=0.05`):
/// incoming change messages are dropped or delivered twice at random.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    drop: f64,
    dup: f64,
}

impl Faults {
    pub(crate) fn from_env() -> Self {
        let mut f = Self::default();
        if let Ok(spec) = std::env::var("MUSTER_STATE_FAULTS") {
            for part in spec.split(',') {
                match part.split_once('=') {
                    Some(("drop", v)) => f.drop = v.parse().unwrap_or(0.0),
                    Some(("dup", v)) => f.dup = v.parse().unwrap_or(0.0),
                    _ => {}
                }
            }
            tracing::warn!(
                drop = f.drop,
                dup = f.dup,
                "state link faults injected (MUSTER_STATE_FAULTS)"
            );
        }
        f
    }

    fn chance(p: f64) -> bool {
        p > 0.0 && (muster_core::id::random_u64() % 1_000_000) as f64 / 1_000_000.0 < p
    }

    /// How many times to deliver a message: 0, 1 or 2.
    fn copies(self) -> usize {
        if Self::chance(self.drop) {
            0
        } else if Self::chance(self.dup) {
            2
        } else {
            1
        }
    }
}

struct Inner<S: StateKind> {
    value: Arc<S>,
    seq: u64,
    epoch: Option<String>,
    /// A snapshot was applied and no gap seen since.
    synced: bool,
    /// Changes waiting for a snapshot: seq -> (epoch, change).
    buffer: BTreeMap<u64, (String, S::Change)>,
    last_heard: Option<Instant>,
}

/// A replicated state.
pub(crate) struct Reader<S: StateKind> {
    owner: String,
    name: String,
    client: Client,
    inner: Mutex<Inner<S>>,
    want_snapshot: Notify,
    stop: CancellationToken,
    faults: Faults,
}

impl<S: StateKind> Reader<S> {
    /// Subscribes to `owner`'s state `name` (the subscription is active
    /// when this returns), then fetches a snapshot in the background.
    pub(crate) async fn start(
        owner: &str,
        name: &str,
        client: Client,
        faults: Faults,
    ) -> Result<(Arc<Self>, Box<dyn Subscribed>), Error> {
        let reader = Arc::new(Self {
            owner: owner.to_owned(),
            name: name.to_owned(),
            client: client.clone(),
            inner: Mutex::new(Inner {
                value: Arc::new(S::default()),
                seq: 0,
                epoch: None,
                synced: false,
                buffer: BTreeMap::new(),
                last_heard: None,
            }),
            want_snapshot: Notify::new(),
            stop: CancellationToken::new(),
            faults,
        });
        let sub = client
            .transport()
            .subscribe(
                &[super::topic(owner, name)],
                Arc::new(Sink(Arc::downgrade(&reader))),
            )
            .await?;
        reader.want_snapshot.notify_one();
        tokio::spawn(snapshots(Arc::downgrade(&reader), reader.stop.clone()));
        Ok((reader, sub))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value now.
    pub(crate) fn read(&self) -> State<S> {
        let inner = self.lock();
        let heard = inner.last_heard.is_some_and(|t| t.elapsed() < STALE_AFTER);
        State {
            value: inner.value.clone(),
            seq: inner.seq,
            stale: !(inner.synced && heard),
        }
    }

    fn on_message(&self, msg: StateMessage<S::Change>) {
        let mut inner = self.lock();
        inner.last_heard = Some(Instant::now());
        let same_epoch = inner.epoch.as_deref() == Some(msg.epoch.as_str());
        if inner.synced && !same_epoch {
            tracing::info!(state = %self.name, owner = %self.owner, "owner restarted (new epoch): asking for a snapshot");
            inner.synced = false;
            inner.buffer.clear();
        }
        if !inner.synced {
            if let Some(change) = msg.change {
                inner.buffer.insert(msg.seq, (msg.epoch, change));
                while inner.buffer.len() > MAX_BUFFER {
                    inner.buffer.pop_first();
                }
            }
            drop(inner);
            self.want_snapshot.notify_one();
            return;
        }
        if msg.seq <= inner.seq {
            return; // a duplicate, or older than what we have
        }
        match msg.change {
            Some(change) if msg.seq == inner.seq + 1 => {
                Arc::make_mut(&mut inner.value).apply(change);
                inner.seq = msg.seq;
            }
            change => {
                // A gap: a change (or, in a beat, the sequence) ran ahead.
                tracing::debug!(state = %self.name, have = inner.seq, got = msg.seq, "gap: asking for a snapshot");
                inner.synced = false;
                if let Some(change) = change {
                    inner.buffer.insert(msg.seq, (msg.epoch, change));
                }
                drop(inner);
                self.want_snapshot.notify_one();
            }
        }
    }

    /// Applies a snapshot and the buffered changes after it. Returns false
    /// when another snapshot is needed (the buffer has a hole).
    fn on_snapshot(&self, snap: Snapshot<S>) -> bool {
        let mut inner = self.lock();
        let Snapshot {
            epoch, seq, value, ..
        } = snap;
        if inner.synced && inner.epoch.as_deref() == Some(epoch.as_str()) && inner.seq >= seq {
            return true; // already past it
        }
        let mut value = value;
        let mut at = seq;
        let buffered = std::mem::take(&mut inner.buffer);
        let mut hole = false;
        for (s, (e, change)) in buffered {
            if e != epoch || s <= at {
                continue;
            }
            if s != at + 1 {
                hole = true;
                break;
            }
            value.apply(change);
            at = s;
        }
        inner.value = Arc::new(value);
        inner.seq = at;
        inner.epoch = Some(epoch);
        inner.synced = !hole;
        inner.last_heard = Some(Instant::now());
        !hole
    }
}

/// Fetches snapshots when asked, one at a time, retrying with backoff.
async fn snapshots<S: StateKind>(reader: std::sync::Weak<Reader<S>>, stop: CancellationToken) {
    loop {
        {
            let Some(r) = reader.upgrade() else { return };
            tokio::select! {
                () = r.want_snapshot.notified() => {}
                () = stop.cancelled() => return,
            }
        }
        let mut backoff = Backoff::between(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let Some(r) = reader.upgrade() else { return };
            let target = format!("{}.{SNAPSHOT_METHOD}", r.owner);
            let args = serde_json::json!({ "name": r.name });
            let options = CallOptions::default().timeout(Duration::from_secs(1));
            let got: Result<Snapshot<S>, RpcError> =
                r.client.call_with(&target, &args, options).await;
            match got {
                Ok(snap) => {
                    if r.on_snapshot(snap) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(state = %r.name, owner = %r.owner, error = %e, "snapshot failed; retrying");
                    drop(r);
                    let wait = backoff.failed();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

struct Sink<S: StateKind>(std::sync::Weak<Reader<S>>);

impl<S: StateKind> EventSink for Sink<S> {
    fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()> {
        if let Some(r) = self.0.upgrade() {
            // A change made in a traced handler is applied in its trace:
            // the reader's log lines name it.
            let _in_trace = event
                .header
                .traceparent
                .as_deref()
                .and_then(crate::wire::TraceContext::parse)
                .map(|t| {
                    tracing::debug_span!("state", name = %r.name, trace_id = %t.trace_id_text())
                        .entered()
                });
            match serde_json::from_slice::<StateMessage<S::Change>>(&event.body) {
                Ok(msg) => match r.faults.copies() {
                    0 => {}
                    1 => r.on_message(msg),
                    _ => {
                        r.on_message(msg.clone());
                        r.on_message(msg);
                    }
                },
                Err(e) => {
                    tracing::warn!(state = %r.name, owner = %r.owner, error = %e, "undecodable state message dropped");
                    r.want_snapshot.notify_one();
                }
            }
        }
        Box::pin(async {})
    }
}

/// The runtime's handle on a replicated state.
pub(crate) struct ReaderHandle<S: StateKind>(pub(crate) Arc<Reader<S>>);

impl<S: StateKind> StateHandle for ReaderHandle<S> {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn snapshot(&self) -> Option<BoxFuture<'static, Result<Value, RpcError>>> {
        None
    }

    fn as_any(&self) -> Arc<dyn Any + Send + Sync> {
        self.0.clone()
    }

    fn stop(&self) {
        self.0.stop.cancel();
    }
}
