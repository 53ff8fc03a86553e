//! Work queues: the vocabulary every transport shares ([`Job`],
//! [`Outcome`], [`JobSink`], operator commands) and [`QueueBook`], the
//! in-process queue store behind the in-memory transport and the embedded
//! ZeroMQ bus.
//!
//! A job is a JSON body with an id, an attempt number and the transaction it
//! belongs to. A consumer answers each job with an [`Outcome`]: acknowledged,
//! retried after a delay (the job goes back with `attempt + 1`), or moved to
//! the dead-letter queue `<queue>.dead` with the reason.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::transport::BoxFuture;

mod book;
pub mod consumer;

pub use book::{
    DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_LIMIT, JobChange, QueueBook, QueueFull, QueueLimits,
};

/// Suffix of a queue's dead-letter queue.
pub const DEAD_SUFFIX: &str = ".dead";

/// The dead-letter queue of `queue`.
pub fn dead_queue(queue: &str) -> String {
    format!("{queue}{DEAD_SUFFIX}")
}

/// True for a usable queue name: 1-200 characters of letters, digits,
/// `_`, `-`, `.` and `:`.
pub fn is_valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id, kept across retries (duplicates share it).
    pub id: String,
    /// The job's body, JSON as sent.
    #[serde(with = "text_body")]
    pub body: Bytes,
    /// 1 for the first delivery, +1 for each retry.
    #[serde(default = "one")]
    pub attempt: u32,
    /// The transaction the job belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// Why the job is in a dead-letter queue, or why its last delivery
    /// ended without an outcome (`consumer died: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a kept event is dropped unread (ms since the Unix epoch): set
    /// on the jobs that carry a durable group's events
    /// ([`crate::durable::event_job`]), `None` for work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// The W3C `traceparent` of the handler that enqueued it: the job's
    /// handler runs in that trace, as its child (`docs/tracing.md`).
    /// Carried as text; a malformed one is ignored where it is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn one() -> u32 {
    1
}

impl Job {
    /// A first attempt at `body` with a fresh id.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            id: crate::id::short_id(),
            body: body.into(),
            attempt: 1,
            transaction: None,
            reason: None,
            expires_ms: None,
            traceparent: None,
        }
    }

    /// The same job, one attempt later.
    #[must_use]
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt.saturating_add(1),
            reason: None,
            ..self.clone()
        }
    }

    /// The same job, marked dead for `reason`.
    #[must_use]
    pub fn dead(&self, reason: &str) -> Self {
        Self {
            reason: Some(reason.to_owned()),
            ..self.clone()
        }
    }
}

/// Bodies travel as text inside JSON control messages; a body that is not
/// UTF-8 is carried lossily (it could not be a JSON job anyway, and goes to
/// the dead-letter queue on delivery).
mod text_body {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Ok(Bytes::from(String::deserialize(d)?))
    }
}

/// What a consumer made of a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: remove it.
    Ack,
    /// Failed in a way another attempt may cure: enqueue it again with
    /// `attempt + 1` after `after`.
    Retry {
        /// Delay before the next attempt.
        after: Duration,
        /// The failure, for logs.
        reason: String,
    },
    /// Can never succeed (or retries are exhausted): move it to
    /// `<queue>.dead` with the reason.
    Dead {
        /// Why.
        reason: String,
    },
}

/// Handles the jobs of a consumer. Up to `prefetch` calls run at once.
pub trait JobSink: Send + Sync + 'static {
    /// Processes one job and says what to do with it.
    fn handle(&self, job: Job) -> BoxFuture<'static, Outcome>;
}

/// How a consumer takes jobs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Jobs held (delivered, not yet settled) at once. Survives reconnects.
    pub prefetch: usize,
    /// Who consumes (the instance id); jobs held by a holder that dies are
    /// delivered again.
    pub holder: String,
    /// Redis: a job pending this long on a consumer is claimed by another.
    pub claim_after: Duration,
    /// How long a stopping consumer waits for the jobs it is running
    /// before it gives them back unfinished ([`consumer::STOP_GRACE`]).
    pub stop_grace: Duration,
}

impl ConsumeOptions {
    /// Options for `holder` with default prefetch (16) and claim time (30 s).
    pub fn new(holder: impl Into<String>) -> Self {
        Self {
            prefetch: 16,
            holder: holder.into(),
            claim_after: Duration::from_secs(30),
            stop_grace: consumer::STOP_GRACE,
        }
    }

    /// Sets the prefetch (at least 1).
    #[must_use]
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Sets the time after which another consumer claims a pending job.
    #[must_use]
    pub fn claim_after(mut self, d: Duration) -> Self {
        self.claim_after = d;
        self
    }

    /// Sets how long a stopping consumer waits for its running jobs.
    #[must_use]
    pub fn stop_grace(mut self, d: Duration) -> Self {
        self.stop_grace = d;
        self
    }
}

/// Counts of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Waiting for a consumer.
    pub ready: u64,
    /// Delivered and not yet settled; `None` where the broker does not
    /// say (RabbitMQ without its management plugin).
    pub in_flight: Option<u64>,
    /// In `<queue>.dead`.
    pub dead: u64,
    /// Consumers attached now (where the transport knows).
    pub consumers: u64,
}

/// An operator command on a queue (`muster queue ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum QueueCommand {
    /// Counts.
    Stats,
    /// The first `count` jobs, without taking them.
    Peek {
        /// How many.
        count: usize,
    },
    /// Deletes the waiting jobs; returns how many.
    Purge,
    /// Moves every job of `<queue>.dead` back to `<queue>` (attempt 1).
    RequeueDead,
}

/// The answer to a [`QueueCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum QueueReply {
    /// For `Stats`.
    Stats(QueueStats),
    /// For `Peek`.
    Jobs(Vec<Job>),
    /// For `Purge` and `RequeueDead`: jobs affected.
    Count(u64),
}

/// The delay before attempt `attempt + 1`: 200 ms doubled per attempt, at
/// most 10 s.
pub fn retry_delay(attempt: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u32) -> Job {
        Job::new(n.to_string())
    }

    /// A capped queue (a durable group's) drops its oldest waiting jobs
    /// to stay within its count and bytes, and its expired ones first;
    /// what it drops reaches the journal, and held jobs are not touched.
    #[test]
    fn a_capped_queue_drops_its_oldest() {
        let mut book = QueueBook::journaling(QueueLimits::default());
        for n in 0..5 {
            let (_, dropped) = book.push_capped("g", job(n), 3, usize::MAX, 0).unwrap();
            assert_eq!(dropped, u64::from(n >= 3));
        }
        let bodies = |book: &mut QueueBook, q: &str| match book
            .command(q, &QueueCommand::Peek { count: 10 })
        {
            QueueReply::Jobs(j) => j
                .iter()
                .map(|j| String::from_utf8_lossy(&j.body).into_owned())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(bodies(&mut book, "g"), ["2", "3", "4"]);
        let deletes = book
            .take_changes()
            .iter()
            .filter(|c| matches!(c, JobChange::Delete { .. }))
            .count();
        assert_eq!(deletes, 2);
        // Held jobs are not the queue's to drop.
        let held = book.take("g", "h", 1);
        assert_eq!(held.len(), 1);
        // Bytes: one more job of this size does not fit beside two.
        let size = book.bytes() / 3;
        let (_, dropped) = book.push_capped("g", job(5), 10, size * 2, 0).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(bodies(&mut book, "g"), ["4", "5"]);
        // Expired ones go first, whatever the room.
        let mut old = job(6);
        old.expires_ms = Some(10);
        book.push_capped("e", old, 10, usize::MAX, 0).unwrap();
        let (_, dropped) = book.push_capped("e", job(7), 10, usize::MAX, 11).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(bodies(&mut book, "e"), ["7"]);
    }

    #[test]
    fn take_settle_and_dead_letter() {
        let mut book = QueueBook::default();
        for n in 0..3 {
            book.push("q", job(n)).unwrap();
        }
        let got = book.take("q", "a", 2);
        assert_eq!(got.len(), 2);
        assert!(book.settle("q", got[0].0, &Outcome::Ack));
        assert!(!book.settle("q", got[0].0, &Outcome::Ack), "settled twice");
        assert!(book.settle(
            "q",
            got[1].0,
            &Outcome::Dead {
                reason: "bad".into()
            }
        ));
        let QueueReply::Stats(s) = book.command("q", &QueueCommand::Stats) else {
            panic!()
        };
        assert_eq!((s.ready, s.in_flight, s.dead), (1, Some(0), 1));
        let QueueReply::Jobs(dead) = book.command("q.dead", &QueueCommand::Peek { count: 5 })
        else {
            panic!()
        };
        assert_eq!(dead[0].reason.as_deref(), Some("bad"));
        assert_eq!(
            book.command("q", &QueueCommand::RequeueDead),
            QueueReply::Count(1)
        );
        assert_eq!(book.take("q", "a", 10).len(), 2);
    }

    #[test]
    fn retry_counts_attempts_and_release_puts_back_in_order() {
        let mut book = QueueBook::default();
        book.push("q", job(1)).unwrap();
        book.push("q", job(2)).unwrap();
        let got = book.take("q", "inst-1", 1);
        book.settle(
            "q",
            got[0].0,
            &Outcome::Retry {
                after: Duration::ZERO,
                reason: "x".into(),
            },
        );
        let got = book.take("q", "inst-1", 2);
        assert_eq!(got[0].1.body, "2");
        assert_eq!((got[1].1.body.as_ref(), got[1].1.attempt), (&b"1"[..], 2));
        assert_eq!(book.release("ins"), 0, "a prefix must end at a dash");
        assert_eq!(book.release("inst-1"), 2);
        let again = book.take("q", "b", 2);
        assert_eq!(again[0].1.body, "2");
    }

    #[test]
    fn a_consumer_that_dies_costs_each_job_it_held_an_attempt() {
        let mut book = QueueBook::default();
        book.push("q", job(1)).unwrap();
        book.push("q", job(2)).unwrap();
        let _ = book.take("q", "w-1", 2);
        assert_eq!(book.release_dead("w-1", "signal 6 (SIGABRT)"), 2);
        let got = book.take("q", "w-2", 2);
        assert_eq!(got[0].1.body, "1", "given back at the front, in order");
        assert_eq!(got[0].1.attempt, 2);
        assert_eq!(
            got[0].1.reason.as_deref(),
            Some("consumer died: signal 6 (SIGABRT)")
        );
        // A graceful give-back is not an attempt.
        book.release("w-2");
        assert_eq!(book.take("q", "w-3", 1)[0].1.attempt, 2);
    }

    /// Replaying a journaling book's changes into a map (what a store
    /// does) and restoring from it gives the same queues, in order.
    #[test]
    fn the_journal_replays_to_the_same_queues() {
        let mut book = QueueBook::journaling(QueueLimits::default());
        for n in 1..=5 {
            book.push("q", job(n)).unwrap();
        }
        let got = book.take("q", "w", 3);
        book.settle("q", got[0].0, &Outcome::Ack);
        book.settle(
            "q",
            got[1].0,
            &Outcome::Retry {
                after: Duration::ZERO,
                reason: "again".into(),
            },
        );
        book.settle(
            "q",
            got[2].0,
            &Outcome::Dead {
                reason: "bad".into(),
            },
        );
        let _ = book.take("q", "x", 1); // job 4, held when the store stops
        let mut stored = std::collections::BTreeMap::new();
        for c in book.take_changes() {
            match c {
                JobChange::Put { key, queue, job } => {
                    stored.insert(key, (queue, job));
                }
                JobChange::Delete { key } => {
                    stored.remove(&key);
                }
            }
        }
        assert!(book.take_changes().is_empty(), "taken once");
        let mut back = QueueBook::default();
        for (key, (queue, job)) in stored {
            back.restore(key, &queue, job);
        }
        let q: Vec<(String, u32)> = back
            .take("q", "y", 10)
            .into_iter()
            .map(|(_, j)| (String::from_utf8_lossy(&j.body).into_owned(), j.attempt))
            .collect();
        let want = [("4", 1), ("5", 1), ("2", 2)].map(|(b, a)| (b.to_owned(), a));
        assert_eq!(q, want, "held job 4 is waiting again; the retry is last");
        let dead = back.take("q.dead", "y", 10);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1.reason.as_deref(), Some("bad"));
        // New keys do not reuse restored ones.
        let k = back.push("q", job(9)).unwrap();
        assert!(k > 5, "{k}");
    }

    #[test]
    fn a_job_the_store_refused_is_forgotten() {
        let mut book = QueueBook::default();
        let k = book.push("q", job(1)).unwrap();
        let before = book.bytes();
        assert!(before > 0);
        assert!(book.forget("q", k));
        assert_eq!(book.bytes(), 0);
        assert!(!book.forget("q", k));
        assert!(book.take("q", "w", 1).is_empty());
    }

    #[test]
    fn full_queue_refuses() {
        let mut book = QueueBook::new(QueueLimits::new(1, 1 << 20));
        book.push("q", job(1)).unwrap();
        let e = book.push("q", job(2)).unwrap_err();
        assert!(matches!(e, QueueFull::Jobs { limit: 1, .. }), "{e}");
    }

    #[test]
    fn bytes_are_bounded_and_given_back() {
        let mut book = QueueBook::new(QueueLimits::new(100, 3000));
        let big = || Job::new(vec![b'x'; 1000]);
        book.push("a", big()).unwrap();
        book.push("b", big()).unwrap();
        let e = book.push("a", big()).unwrap_err();
        assert!(matches!(e, QueueFull::Bytes { limit: 3000, .. }), "{e}");
        // Settled, purged and requeued jobs give their bytes back.
        let got = book.take("a", "h", 1);
        book.settle("a", got[0].0, &Outcome::Dead { reason: "r".into() });
        assert_eq!(
            book.command("a", &QueueCommand::RequeueDead),
            QueueReply::Count(1)
        );
        assert_eq!(
            book.command("a", &QueueCommand::Purge),
            QueueReply::Count(1)
        );
        assert_eq!(
            book.command("b", &QueueCommand::Purge),
            QueueReply::Count(1)
        );
        assert_eq!(book.bytes(), 0);
        assert_eq!(book.queues_kept(), 0, "empty queues are forgotten");
        book.push("a", big()).unwrap();
    }

    #[test]
    fn delays_grow_and_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(2), Duration::from_millis(400));
        assert_eq!(retry_delay(40), Duration::from_secs(10));
    }
}
