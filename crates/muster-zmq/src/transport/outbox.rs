//! Replies on their way to callers, bounded per caller in bytes.
//!
//! The instance's ROUTER keeps a short queue per caller (a count of
//! messages, [`QUEUE_PER_CALLER`]). When a caller's queue is full (it reads
//! slower than the instance answers, or not at all), its further replies
//! wait here, in order, up to its byte budget (`ZmqOptions::
//! reply_backlog`, 64 MiB by default); the loop offers them again as the
//! queue drains. A reply that does not fit the budget is answered with a
//! small -32002 error instead (the caller learns it must read faster or
//! pipeline less), and past [`ERRORS_PER_CALLER`] such answers a caller
//! that reads nothing gets nothing more. So every request is answered
//! while its caller reads, one caller costs the instance a bounded number
//! of bytes, and no caller holds up another.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use omq_tokio::{Message, Socket, TrySendError};

/// Replies queued in the socket per caller (its send high-water mark).
pub(crate) const QUEUE_PER_CALLER: u32 = 16;

/// Error answers that may wait per caller beyond its byte budget.
pub(crate) const ERRORS_PER_CALLER: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Outbox {
    waiting: HashMap<Bytes, Waiting>,
    budget: usize,
    /// Replies answered with -32002 because their caller was over budget.
    replaced: u64,
}

#[derive(Debug, Default)]
struct Waiting {
    replies: VecDeque<Message>,
    bytes: usize,
    errors: usize,
}

impl Outbox {
    /// An outbox with `budget` bytes of waiting replies per caller.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            waiting: HashMap::new(),
            budget,
            replaced: 0,
        }
    }

    /// True when no reply is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Sends `reply` to `identity` now, or keeps it until there is room;
    /// `overloaded` makes the small error answer that replaces it if it
    /// does not fit the caller's budget.
    pub(crate) fn send(
        &mut self,
        router: &Socket,
        identity: Bytes,
        reply: Message,
        overloaded: impl FnOnce() -> Option<Message>,
    ) {
        if !self.waiting.contains_key(&identity) {
            match router.try_send(reply) {
                Ok(()) => return,
                Err(TrySendError::Full(reply)) => {
                    let w = self.waiting.entry(identity).or_default();
                    Self::keep(w, reply, overloaded, self.budget, &mut self.replaced);
                }
                // The caller is gone (or the socket closed): nobody to answer.
                Err(e) => tracing::debug!(error = ?e, "reply not sent; its caller is gone"),
            }
            return;
        }
        // Behind replies that are waiting already: keep the order.
        if let Some(w) = self.waiting.get_mut(&identity) {
            Self::keep(w, reply, overloaded, self.budget, &mut self.replaced);
        }
    }

    fn keep(
        w: &mut Waiting,
        reply: Message,
        overloaded: impl FnOnce() -> Option<Message>,
        budget: usize,
        replaced: &mut u64,
    ) {
        let size = reply.byte_len();
        if w.bytes + size <= budget {
            w.bytes += size;
            w.replies.push_back(reply);
            return;
        }
        drop(reply);
        *replaced += 1;
        if replaced.is_power_of_two() {
            tracing::warn!(
                replaced = *replaced,
                budget,
                "a caller is not taking its replies; replies over its budget are answered with -32002"
            );
        }
        if w.errors < ERRORS_PER_CALLER
            && let Some(error) = overloaded()
        {
            w.errors += 1;
            w.bytes += error.byte_len();
            w.replies.push_back(error);
        }
    }

    /// Offers the waiting replies again, oldest first per caller.
    pub(crate) fn flush(&mut self, router: &Socket) {
        self.waiting.retain(|_, w| {
            while let Some(reply) = w.replies.pop_front() {
                let size = reply.byte_len();
                match router.try_send(reply) {
                    Ok(()) => w.bytes = w.bytes.saturating_sub(size),
                    Err(TrySendError::Full(reply)) => {
                        w.replies.push_front(reply);
                        return true;
                    }
                    // The caller is gone: its replies go with it.
                    Err(_) => return false,
                }
            }
            false
        });
    }
}
