//! The event forwarder: every message from the inlet (XSUB) goes out of
//! the outlet (XPUB) to each subscriber whose prefix matches, through that
//! subscriber's own bounded queue. A full queue drops that subscriber's
//! oldest message: the loss is its own (it counts it from the publishers'
//! numbers, `docs/guarantees.md`), and neither the publishers nor the
//! other subscribers wait for it.
//!
//! Messages on a topic a durable group keeps are copied to the registry
//! first ([`Tap`]), which adds them to the group's queue: publishers wait
//! for that copy (back-pressure), never for a subscriber.
//!
//! Subscribers only ever send subscriptions. Anything else they send is
//! counted and skipped; nothing a peer sends ends the forwarder, and the
//! loop starts again should a socket report an error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use muster_core::retry::Backoff;
use muster_core::topic::Pattern;
use omq_tokio::{Message, Socket};
use tokio_util::sync::CancellationToken;

/// Messages forwarded in one turn before yielding to the other direction
/// and to other tasks (a publisher that never pauses must not starve the
/// subscriptions or the registry).
const BURST: usize = 256;

/// Counters of the forwarder.
#[derive(Debug, Default)]
pub(super) struct ForwarderCounters {
    /// Event messages taken from the inlet and handed to the outlet.
    pub(super) forwarded: AtomicU64,
    /// Messages on the outlet that were not a subscription.
    pub(super) bad_subscriptions: AtomicU64,
    /// Times the loop started again after a socket error.
    pub(super) restarts: AtomicU64,
}

/// The topics the durable groups keep, set by the registry, and where
/// the forwarder sends the messages on them.
#[derive(Debug)]
pub(super) struct Tap {
    patterns: RwLock<Vec<Pattern>>,
    /// False while no group is declared: the forwarder looks no further.
    any: AtomicBool,
    to_registry: tokio::sync::mpsc::Sender<Vec<Bytes>>,
}

/// Messages on their way from the forwarder to the registry's durable
/// groups; past this the forwarder (and so the publishers) waits.
pub(super) const TAP_BACKLOG: usize = 1024;

impl Tap {
    /// A tap sending to `to_registry`, keeping nothing yet.
    pub(super) fn new(to_registry: tokio::sync::mpsc::Sender<Vec<Bytes>>) -> Self {
        Self {
            patterns: RwLock::new(Vec::new()),
            any: AtomicBool::new(false),
            to_registry,
        }
    }

    /// The patterns of every durable group, from now on.
    pub(super) fn set(&self, patterns: Vec<Pattern>) {
        let any = !patterns.is_empty();
        *self
            .patterns
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = patterns;
        self.any.store(any, Ordering::Release);
    }

    /// True when a group keeps the topic of this message (its first frame).
    fn wants(&self, msg: &Message) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let Some(topic) = msg.part_bytes(0) else {
            return false;
        };
        let Ok(topic) = std::str::from_utf8(&topic) else {
            return false;
        };
        self.patterns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|p| p.matches(topic))
    }

    /// Copies `msg` to the registry when a group keeps its topic.
    async fn copy(&self, msg: &Message) {
        if self.wants(msg) {
            // A registry gone is a bus stopping: nothing to keep it for.
            let _ = self.to_registry.send(crate::socket::frames(msg)).await;
        }
    }
}

/// Runs until `shutdown`, restarting the loop after an error.
pub(super) async fn run(
    inlet: Socket,
    outlet: Socket,
    tap: Arc<Tap>,
    counters: Arc<ForwarderCounters>,
    shutdown: CancellationToken,
) {
    // Failures in a row without a second of good work between them: past
    // a few, the sockets are not coming back.
    let mut backoff = Backoff::new();
    loop {
        let started = std::time::Instant::now();
        let wait = tokio::select! {
            () = shutdown.cancelled() => return,
            r = forward(&inlet, &outlet, &tap, &counters) => {
                let e = match r {
                    // A closed socket is the end (the bus or the runtime
                    // is going away), not a fault to recover from.
                    Ok(()) | Err(omq_tokio::Error::Closed) => return,
                    Err(e) => e,
                };
                counters.restarts.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() > Duration::from_secs(1) {
                    backoff.succeeded();
                }
                let wait = backoff.failed();
                if backoff.failures() > 10 {
                    tracing::error!(error = %e, "event forwarder failed ten times in a row; it stops");
                    return;
                }
                tracing::error!(error = %e, "event forwarder failed; starting it again");
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One run of the loop: returns `Ok` when a socket is closed, `Err` on
/// any other socket error.
async fn forward(
    inlet: &Socket,
    outlet: &Socket,
    tap: &Tap,
    counters: &ForwarderCounters,
) -> Result<(), omq_tokio::Error> {
    loop {
        tokio::select! {
            msg = inlet.recv() => {
                let mut msg = Some(msg?);
                let mut n = 0u64;
                while let Some(m) = msg.take() {
                    tap.copy(&m).await;
                    deliver(outlet, m).await?;
                    n += 1;
                    if n < BURST as u64 {
                        msg = inlet.try_recv().ok();
                    }
                }
                counters.forwarded.fetch_add(n, Ordering::Relaxed);
            }
            msg = outlet.recv() => {
                let msg = msg?;
                if !is_subscription(&msg) {
                    counters.bad_subscriptions.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(frames = msg.len(), "skipped a message on the event outlet that is not a subscription");
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Hands one message to the outlet. The outlet's own lanes (shared by
/// the subscribers) are waited for, so nothing is lost there for everyone;
/// past them each subscriber's queue drops its oldest on its own.
async fn deliver(outlet: &Socket, mut msg: Message) -> Result<(), omq_tokio::Error> {
    loop {
        match outlet.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(omq_tokio::TrySendError::Full(back)) => {
                msg = back;
                outlet.wait_send_ready().await;
            }
            Err(omq_tokio::TrySendError::Closed) => return Err(omq_tokio::Error::Closed),
            Err(omq_tokio::TrySendError::Error(e)) => return Err(e),
        }
    }
}

/// A subscription message: one frame, `0x01` (subscribe) or `0x00`
/// (unsubscribe) and the prefix. The outlet keeps its own table of them;
/// the inlet takes everything, so they go no further.
fn is_subscription(msg: &Message) -> bool {
    msg.len() == 1
        && msg
            .part_bytes(0)
            .and_then(|p| p.first().copied())
            .is_some_and(|b| b <= 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use omq_tokio::{Options, SocketType};

    /// A socket that closes under the forwarder (the bus or the runtime
    /// going away) ends it; it must not restart in a loop (it once spun
    /// at full CPU through a runtime's shutdown).
    #[tokio::test]
    async fn closed_sockets_end_the_forwarder() {
        let inlet = Socket::new(SocketType::XSub, Options::default());
        inlet.bind("tcp://127.0.0.1:0").await.unwrap();
        let outlet = Socket::new(SocketType::XPub, Options::default());
        outlet.bind("tcp://127.0.0.1:0").await.unwrap();
        let closer = inlet.clone_shared();
        let counters = Arc::new(ForwarderCounters::default());
        let (to_registry, _) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(run(
            inlet,
            outlet,
            Arc::new(Tap::new(to_registry)),
            counters.clone(),
            CancellationToken::new(),
        ));
        closer.close().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the forwarder ends when its socket closes")
            .unwrap();
        assert_eq!(counters.restarts.load(Ordering::Relaxed), 0);
    }
}
