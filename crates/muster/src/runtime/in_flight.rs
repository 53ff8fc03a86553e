//! The requests an instance is running, by the key their caller gave them
//! (`Header::caller`), so that a cancel notice can stop one: the caller
//! dropped its call, or its process ended (`docs/tracing.md`,
//! "Cancellation").
//!
//! Notices travel as events: `muster.cancel.<service>` names one call
//! (`{"key": "<caller>/<n>"}`) and reaches every instance of the service,
//! since on a broker the caller does not know which one took its request;
//! `muster.gone` names a caller whose process ended (`{"caller": ID}`, from
//! the host) and stops every request it made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::oneshot;

use muster_core::transport::{SharedTransport, Subscribed};
use tokio_util::sync::CancellationToken;

use crate::transport::{BoxFuture, EventSink};
use crate::wire::Envelope;

/// Keys longer than this are not tracked: a request's key comes from the
/// network, and the book must stay small whatever it says.
const MAX_KEY: usize = 256;

#[derive(Default)]
pub(crate) struct InFlight {
    /// key -> (the request's number here, the sender that stops it).
    running: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    next: std::sync::atomic::AtomicU64,
}

/// One tracked request: resolves when a notice cancels it, and leaves the
/// book when dropped.
pub(crate) struct Tracked {
    book: Arc<InFlight>,
    key: String,
    n: u64,
    pub(crate) cancelled: oneshot::Receiver<()>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut running = self.book.lock();
        // A later request under the same key (a caller reusing it) owns
        // the entry now: leave it.
        if running.get(&self.key).is_some_and(|(n, _)| *n == self.n) {
            running.remove(&self.key);
        }
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, oneshot::Sender<()>)>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tracks the request under `key`; `None` for a key too long to keep.
    pub(crate) fn track(self: &Arc<Self>, key: &str) -> Option<Tracked> {
        if key.len() > MAX_KEY {
            return None;
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(key.to_owned(), (n, tx));
        Some(Tracked {
            book: self.clone(),
            key: key.to_owned(),
            n,
            cancelled: rx,
        })
    }

    /// Cancels the request under `key`, if it is running here.
    fn cancel(&self, key: &str) -> bool {
        match self.lock().remove(key) {
            Some((_, tx)) => tx.send(()).is_ok(),
            None => false,
        }
    }

    /// Cancels every request `caller` made; how many were running here.
    fn cancel_caller(&self, caller: &str) -> usize {
        let mut running = self.lock();
        let keys: Vec<String> = running
            .keys()
            .filter(|k| k.rsplit_once('/').is_some_and(|(c, _)| c == caller))
            .cloned()
            .collect();
        keys.iter()
            .filter_map(|k| running.remove(k))
            .map(|(_, tx)| tx.send(()).is_ok())
            .filter(|sent| *sent)
            .count()
    }
}

/// A cancel notice, as published on [`cancel_topic`] or [`GONE_TOPIC`].
#[derive(Deserialize)]
struct Notice {
    /// One call.
    #[serde(default)]
    key: Option<String>,
    /// Every call of a caller that is gone.
    #[serde(default)]
    caller: Option<String>,
}

/// Delivers cancel notices to an instance's book.
pub(crate) struct CancelSink(pub(crate) Arc<InFlight>);

impl EventSink for CancelSink {
    fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()> {
        match serde_json::from_slice::<Notice>(&event.body) {
            Ok(Notice { key: Some(key), .. }) => {
                if self.0.cancel(&key) {
                    tracing::debug!(%key, "request cancelled by its caller");
                }
            }
            Ok(Notice {
                caller: Some(caller),
                ..
            }) => {
                let n = self.0.cancel_caller(&caller);
                if n > 0 {
                    tracing::debug!(%caller, requests = n, "requests cancelled: their caller is gone");
                }
            }
            Ok(_) => tracing::debug!("a cancel notice naming nothing; ignored"),
            Err(e) => tracing::debug!(error = %e, "an unreadable cancel notice; ignored"),
        }
        Box::pin(std::future::ready(()))
    }
}

/// Subscribes `sink` to an instance's cancel notices. They are a courtesy
/// (a request's deadline still bounds it), so a bus that does not take
/// the subscription now does not fail the start: the instance starts
/// without them, says so, and keeps trying in the background, as it keeps
/// trying to register with a bus that is not up yet.
pub(crate) async fn hear_notices(
    transport: SharedTransport,
    topics: Vec<String>,
    sink: Arc<CancelSink>,
) -> Box<dyn Subscribed> {
    let error = match transport.subscribe(&topics, sink.clone()).await {
        Ok(s) => return s,
        Err(e) => e,
    };
    tracing::warn!(error = %error, "cancel notices not heard yet (calls given up run to their deadline); trying again in the background");
    let stop = CancellationToken::new();
    let task = tokio::spawn(retry_notices(transport, topics, sink, stop.clone()));
    Box::new(NoticesLater { stop, task })
}

async fn retry_notices(
    transport: SharedTransport,
    topics: Vec<String>,
    sink: Arc<CancelSink>,
    stop: CancellationToken,
) {
    let mut backoff = muster_core::retry::Backoff::between(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(10),
    );
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.failed()) => {}
        }
        let subscribing = transport.subscribe(&topics, sink.clone());
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            s = subscribing => s,
        };
        match subscribed {
            Ok(s) => {
                tracing::info!("cancel notices heard");
                stop.cancelled().await;
                s.cancel().await;
                return;
            }
            Err(e) if backoff.worth_logging() => {
                tracing::warn!(error = %e, failures = backoff.failures(), "cancel notices still not heard");
            }
            Err(_) => {}
        }
    }
}

/// The cancel-notice subscription that [`hear_notices`] keeps trying.
#[derive(Debug)]
struct NoticesLater {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Subscribed for NoticesLater {
    fn cancel(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.stop.cancel();
        Box::pin(async move {
            let _ = self.task.await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_stops_its_request_and_a_gone_caller_all_of_its_own() {
        let book = Arc::new(InFlight::default());
        let mut one = book.track("alice/1").unwrap();
        let mut two = book.track("alice/2").unwrap();
        let mut other = book.track("bob/1").unwrap();
        assert!(book.cancel("alice/1"));
        assert!(one.cancelled.try_recv().is_ok());
        assert!(!book.cancel("alice/1"), "already gone");
        assert_eq!(book.cancel_caller("alice"), 1);
        assert!(two.cancelled.try_recv().is_ok());
        assert!(other.cancelled.try_recv().is_err(), "bob's call runs on");
        drop(other);
        assert!(book.lock().is_empty(), "dropped requests leave the book");
    }

    #[test]
    fn a_reused_key_belongs_to_the_later_request() {
        let book = Arc::new(InFlight::default());
        let first = book.track("c/1").unwrap();
        let mut second = book.track("c/1").unwrap();
        drop(first);
        assert!(book.cancel("c/1"), "the later request is still tracked");
        assert!(second.cancelled.try_recv().is_ok());
        assert!(book.track(&"k".repeat(MAX_KEY + 1)).is_none());
    }
}
