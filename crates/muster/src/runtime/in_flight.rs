//! The requests an instance is running, by the key their caller gave them
//! (`Header::caller`), so that a cancel notice can stop one: the caller
//! dropped its call, or its process ended (`docs/tracing.md`,
//! "Cancellation").
//!
//! Notices travel as events: `muster.cancel.<service>` names one call
//! (`{"key": "<caller>/<n>"}`) and reaches every instance of the service,
//! since on a broker the caller does not know which one took its request;
//! `muster.gone` names a caller whose process ended (`{"caller": ID}`, from
//! the host) and stops every request it made. Every instance hears the
//! first kind from its start; the second only while it runs requests
//! (and [`GONE_LINGER`] after), because the host publishes one for every
//! instance that ends: heard by all, one crash on a host of a thousand
//! would wake the other 999 (`docs/benchmarks.md`, issue 22).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::oneshot;

use muster_core::transport::{SharedTransport, Subscribed};
use tokio_util::sync::CancellationToken;

use crate::transport::{BoxFuture, EventSink};
use crate::wire::Envelope;

/// Keys longer than this are not tracked: a request's key comes from the
/// network, and the book must stay small whatever it says.
const MAX_KEY: usize = 256;

/// How long an instance keeps hearing `muster.gone` after its last
/// request: long enough that a service taking slow calls now and then
/// does not subscribe for each.
const GONE_LINGER: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct InFlight {
    /// key -> (the request's number here, the sender that stops it).
    running: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    /// Requests tracked so far (the next one's number).
    next: AtomicU64,
    /// Woken when a request enters an empty book, for [`keep_gone`].
    busy: tokio::sync::Notify,
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
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let was_empty = {
            let mut running = self.lock();
            let was_empty = running.is_empty();
            running.insert(key.to_owned(), (n, tx));
            was_empty
        };
        if was_empty {
            self.busy.notify_one();
        }
        Some(Tracked {
            book: self.clone(),
            key: key.to_owned(),
            n,
            cancelled: rx,
        })
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Requests tracked so far, to tell a quiet book from a busy one.
    fn tracked(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
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
    Box::new(NoticeTask { stop, task })
}

/// Hears `muster.gone` while the instance runs requests, in a task of its
/// own: the subscription is made when a request enters an empty book and
/// dropped once the book has stayed empty for [`GONE_LINGER`]. A caller that ends
/// before the subscription reaches the bus is not heard, and its request
/// runs to its deadline, as with any lost notice (`docs/tracing.md`).
pub(crate) fn hear_gone_while_busy(
    transport: SharedTransport,
    sink: Arc<CancelSink>,
) -> Box<dyn Subscribed> {
    let stop = CancellationToken::new();
    let task = tokio::spawn(keep_gone(transport, sink, stop.clone()));
    Box::new(NoticeTask { stop, task })
}

async fn keep_gone(transport: SharedTransport, sink: Arc<CancelSink>, stop: CancellationToken) {
    let book = sink.0.clone();
    let topics = vec![muster_core::registry::GONE_TOPIC.to_owned()];
    let mut backoff =
        muster_core::retry::Backoff::between(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        // A wake-up for a request that has ended already is no reason.
        while book.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = book.busy.notified() => {}
            }
        }
        let subscribing = transport.subscribe(&topics, sink.clone());
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            s = subscribing => s,
        };
        let subscribed = match subscribed {
            Ok(s) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                let wait = backoff.failed();
                if backoff.worth_logging() {
                    tracing::warn!(error = %e, failures = backoff.failures(), "notices of ended callers not heard (their calls run to their deadline); trying again");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        let mut seen = book.tracked();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    subscribed.cancel().await;
                    return;
                }
                () = tokio::time::sleep(GONE_LINGER) => {}
            }
            let now = book.tracked();
            if now == seen && book.is_empty() {
                break;
            }
            seen = now;
        }
        subscribed.cancel().await;
    }
}

async fn retry_notices(
    transport: SharedTransport,
    topics: Vec<String>,
    sink: Arc<CancelSink>,
    stop: CancellationToken,
) {
    let mut backoff =
        muster_core::retry::Backoff::between(Duration::from_secs(1), Duration::from_secs(10));
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

/// A notice subscription kept by a task: the one [`hear_notices`] keeps
/// trying, or the one [`hear_gone_while_busy`] makes and drops.
#[derive(Debug)]
struct NoticeTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Subscribed for NoticeTask {
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

    #[tokio::test(start_paused = true)]
    async fn an_instance_hears_of_ended_callers_only_while_it_runs_requests() {
        use crate::memory::MemoryTransport;
        use crate::prelude::*;
        use muster_core::registry::GONE_TOPIC;

        let memory = MemoryTransport::new();
        let bus = crate::testing::TestBus::on(memory.clone());
        let back = Service::new("back").rpc("sleep", |Args(ms): Args<u64>| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        });
        let _back = bus.start(back).await.unwrap();
        // Idle: an instance's crash elsewhere does not wake this one.
        assert_eq!(memory.subscribers(GONE_TOPIC), 0);
        assert_eq!(memory.subscribers("muster.cancel.back"), 1);

        let alice = bus.client().clone().calling_as("alice");
        let started = tokio::time::Instant::now();
        let call = tokio::spawn(async move {
            alice
                .call_with::<_, serde_json::Value>(
                    "back.sleep",
                    &60_000,
                    crate::CallOptions::default().timeout(Duration::from_secs(120)),
                )
                .await
        });
        while memory.subscribers(GONE_TOPIC) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never subscribed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // alice's process ends: its request stops here, long before 60 s.
        bus.client()
            .publish(GONE_TOPIC, &serde_json::json!({"caller": "alice"}))
            .await
            .unwrap();
        let answer = call.await.unwrap();
        assert!(answer.is_err(), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(30));

        // Quiet again: the subscription goes after the linger.
        tokio::time::sleep(GONE_LINGER * 3).await;
        assert_eq!(memory.subscribers(GONE_TOPIC), 0);
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
