//! Running a message's work where it was read, when it is quick.
//!
//! A reader that spawns a task per message pays for the spawn, and its
//! replies or acks leave one write at a time as each task ends. Most
//! handlers answer without waiting on anything, so a reader first polls the
//! work once in place and spawns only what is still pending. A handler that
//! burns CPU would then hold the reader (and keep the other cores idle), so
//! after a poll that took longer than [`Inline::QUICK`] the reader spawns
//! the next [`Inline::SPAWNED_AFTER_SLOW`] messages before it tries again.
//! Measured on NATS (`docs/benchmarks.md`): RPC with 100 calls in flight
//! went from 0.53 to 0.66 of a plain async-nats loop.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A reader's choice between polling in place and spawning.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut inline = muster_core::inline::Inline::default();
/// // Quick work finishes in place; nothing comes back to spawn.
/// assert!(inline.poll_once(Box::pin(async { 1 + 1; })).is_none());
/// // Work that waits comes back, to be spawned.
/// let pending = inline.poll_once(Box::pin(tokio::time::sleep(std::time::Duration::from_millis(1))));
/// tokio::spawn(pending.unwrap()).await.unwrap();
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Inline {
    /// Messages still to spawn without trying in place.
    spawn_next: u32,
}

impl Inline {
    /// A poll longer than this is CPU work, not a quick answer.
    pub const QUICK: Duration = Duration::from_micros(200);
    /// Messages spawned after a slow poll before trying in place again.
    pub const SPAWNED_AFTER_SLOW: u32 = 64;

    /// Polls `work` once in place (with a waker that does nothing: the
    /// task it is spawned in polls it again) unless a recent poll was
    /// slow. `None` when it finished; the future otherwise, to spawn.
    pub fn poll_once<F>(&mut self, mut work: Pin<Box<F>>) -> Option<Pin<Box<F>>>
    where
        F: Future<Output = ()> + ?Sized,
    {
        if self.spawn_next > 0 {
            self.spawn_next -= 1;
            return Some(work);
        }
        let started = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        let polled = work.as_mut().poll(&mut cx);
        if started.elapsed() > Self::QUICK {
            self.spawn_next = Self::SPAWNED_AFTER_SLOW;
        }
        match polled {
            Poll::Ready(()) => None,
            Poll::Pending => Some(work),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_poll_sends_the_next_messages_to_tasks() {
        let mut inline = Inline::default();
        assert!(inline.poll_once(Box::pin(async {})).is_none());
        let slow = inline.poll_once(Box::pin(async {
            std::thread::sleep(Duration::from_millis(2));
        }));
        assert!(slow.is_none(), "it finished, slowly");
        for _ in 0..Inline::SPAWNED_AFTER_SLOW {
            assert!(inline.poll_once(Box::pin(async {})).is_some());
        }
        assert!(inline.poll_once(Box::pin(async {})).is_none());
    }
}
