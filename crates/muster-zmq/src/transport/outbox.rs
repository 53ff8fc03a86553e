//! Replies on their way to callers, bounded per caller in bytes.
//!
//! The instance's ROUTER keeps a short queue per caller (a count of
//! messages, [`QUEUE_PER_CALLER`]). While a caller's queue has room, a
//! reply goes straight into it. When it is full (the caller reads slower
//! than the instance answers, or not at all), that caller gets a writer
//! task of its own, which waits for room in that caller's queue only, and
//! its further replies line up behind it, in order, up to its byte budget
//! (`ZmqOptions::reply_backlog`, 64 MiB by default). A reply that does
//! not fit the budget is answered with a small -32002 error instead (the
//! caller learns it must read faster or pipeline less), and past
//! [`ERRORS_PER_CALLER`] such answers a caller that reads nothing gets
//! nothing more. So every request is answered while its caller reads, one
//! caller costs the instance a bounded number of bytes, and no caller
//! holds up another or the serving loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use omq_tokio::{Message, Socket, TrySendError};
use tokio::sync::mpsc;

/// Replies queued in the socket per caller (its send high-water mark).
pub(crate) const QUEUE_PER_CALLER: u32 = 16;

/// Error answers that may wait per caller beyond its byte budget.
pub(crate) const ERRORS_PER_CALLER: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Outbox {
    router: Socket,
    /// Looked up on every reply: foldhash (randomly seeded), not SipHash.
    backlogs: foldhash::HashMap<Bytes, Backlog>,
    budget: usize,
    /// Replies answered with -32002 because their caller was over budget.
    replaced: u64,
}

/// The replies of one caller waiting for room, and their writer.
#[derive(Debug)]
struct Backlog {
    tx: mpsc::UnboundedSender<Message>,
    /// Bytes handed to the writer and not yet taken by the socket.
    bytes: Arc<AtomicUsize>,
    errors: usize,
    writer: tokio::task::JoinHandle<()>,
}

impl Outbox {
    /// An outbox on `router` with `budget` bytes of waiting replies per
    /// caller.
    pub(crate) fn new(router: Socket, budget: usize) -> Self {
        Self {
            router,
            backlogs: foldhash::HashMap::default(),
            budget,
            replaced: 0,
        }
    }

    /// True when no reply is waiting.
    pub(crate) fn is_empty(&mut self) -> bool {
        self.forget_drained();
        self.backlogs.is_empty()
    }

    /// Sends `reply` to `identity` now, or lines it up behind the replies
    /// that wait for room; `overloaded` makes the small error answer that
    /// replaces it if it does not fit the caller's budget.
    pub(crate) fn send(
        &mut self,
        identity: Bytes,
        reply: Message,
        overloaded: impl FnOnce() -> Option<Message>,
    ) {
        if let Some(b) = self.backlogs.get_mut(&identity)
            && !b.writer.is_finished()
        {
            Self::line_up(b, reply, overloaded, self.budget, &mut self.replaced);
            return;
        }
        self.backlogs.remove(&identity);
        match self.router.try_send(reply) {
            Ok(()) => {}
            Err(TrySendError::Full(reply)) => {
                let b = self
                    .backlogs
                    .entry(identity)
                    .or_insert_with(|| Backlog::start(&self.router));
                Self::line_up(b, reply, overloaded, self.budget, &mut self.replaced);
            }
            // The caller is gone (or the socket closed): nobody to answer.
            Err(e) => tracing::debug!(error = ?e, "reply not sent; its caller is gone"),
        }
    }
}

impl Backlog {
    /// A writer for one caller.
    fn start(router: &Socket) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let bytes = Arc::new(AtomicUsize::new(0));
        let router = router.clone_shared();
        let left = bytes.clone();
        // Waits for room in this caller's queue only: the others, and the
        // serving loop, go on meanwhile.
        let writer = tokio::spawn(async move {
            let gone = |rx: &mut mpsc::UnboundedReceiver<Message>| {
                // The caller is gone: so are its replies.
                while let Ok(reply) = rx.try_recv() {
                    left.fetch_sub(reply.byte_len(), Ordering::AcqRel);
                }
            };
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                // What is queued goes without waiting while there is room;
                // only a full queue is waited for.
                while let Some(reply) = next.take() {
                    let size = reply.byte_len();
                    let sent = match router.try_send(reply) {
                        Ok(()) => Ok(()),
                        Err(TrySendError::Full(reply)) => router.send(reply).await,
                        Err(_) => Err(omq_tokio::Error::Closed),
                    };
                    left.fetch_sub(size, Ordering::AcqRel);
                    if sent.is_err() {
                        gone(&mut rx);
                        return;
                    }
                    next = rx.try_recv().ok();
                }
            }
        });
        Self {
            tx,
            bytes,
            errors: 0,
            writer,
        }
    }
}

impl Outbox {
    fn line_up(
        b: &mut Backlog,
        reply: Message,
        overloaded: impl FnOnce() -> Option<Message>,
        budget: usize,
        replaced: &mut u64,
    ) {
        let size = reply.byte_len();
        let waiting = b.bytes.load(Ordering::Acquire);
        let reply = if waiting + size <= budget {
            reply
        } else {
            drop(reply);
            *replaced += 1;
            if replaced.is_power_of_two() {
                tracing::warn!(
                    replaced = *replaced,
                    budget,
                    "a caller is not taking its replies; replies over its budget are answered with -32002"
                );
            }
            if b.errors >= ERRORS_PER_CALLER {
                return;
            }
            let Some(error) = overloaded() else {
                return;
            };
            b.errors += 1;
            error
        };
        b.bytes.fetch_add(reply.byte_len(), Ordering::AcqRel);
        if let Err(mpsc::error::SendError(lost)) = b.tx.send(reply) {
            b.bytes.fetch_sub(lost.byte_len(), Ordering::AcqRel);
        }
    }

    /// Lets go of the writers whose callers took everything: that
    /// caller's next reply goes straight to the socket again, behind the
    /// ones its writer sent (they are in the socket already).
    fn forget_drained(&mut self) {
        self.backlogs
            .retain(|_, b| !b.writer.is_finished() && b.bytes.load(Ordering::Acquire) > 0);
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        for b in self.backlogs.values() {
            b.writer.abort();
        }
    }
}
