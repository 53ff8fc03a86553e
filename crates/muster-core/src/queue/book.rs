//! [`QueueBook`]: the work queues held in one process (the embedded bus,
//! the in-memory transport), bounded in jobs per queue and in bytes.
//!
//! Every job the book holds has a key. A book that journals
//! ([`QueueBook::journaling`]) records each change to its jobs as a
//! [`JobChange`] of those keys, which a durable store (the embedded bus's
//! job log) replays on disk; [`QueueBook::restore`] reads them back.

use std::collections::{HashMap, VecDeque};

use super::{Job, Outcome, QueueCommand, QueueReply, QueueStats, dead_queue};

/// Most jobs a [`QueueBook`] queue holds by default.
pub const DEFAULT_QUEUE_LIMIT: usize = 1_000_000;

/// Most bytes of jobs a [`QueueBook`] holds by default, all queues
/// together (bodies, ids and reasons): 256 MiB.
pub const DEFAULT_QUEUE_BYTES: usize = 256 << 20;

/// How much a [`QueueBook`] holds before `push` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueLimits {
    /// Jobs waiting in one queue.
    pub jobs_per_queue: usize,
    /// Bytes of every job held, in every queue (waiting, held by a
    /// consumer, dead).
    pub bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            jobs_per_queue: DEFAULT_QUEUE_LIMIT,
            bytes: DEFAULT_QUEUE_BYTES,
        }
    }
}

impl QueueLimits {
    /// Limits of `jobs_per_queue` jobs per queue and `bytes` in all.
    pub fn new(jobs_per_queue: usize, bytes: usize) -> Self {
        Self {
            jobs_per_queue: jobs_per_queue.max(1),
            bytes,
        }
    }
}

/// Why a [`QueueBook`] refused a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueFull {
    /// The queue holds its most jobs.
    #[error("queue {queue:?} is full ({limit} jobs waiting)")]
    Jobs {
        /// The queue.
        queue: String,
        /// Jobs per queue.
        limit: usize,
    },
    /// The book holds its most bytes.
    #[error(
        "queues are full: {held} bytes of jobs held, the limit is {limit} (job of {size} bytes refused)"
    )]
    Bytes {
        /// Bytes held now.
        held: usize,
        /// The size of the job refused.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// A change to the jobs of a [`QueueBook`], in the order it happened, for
/// a durable store to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum JobChange {
    /// `job` is (now) in `queue` under `key`.
    Put {
        /// The job's key in the book (unique, growing: the order of
        /// [`QueueBook::restore`]).
        key: u64,
        /// Its queue.
        queue: String,
        /// The job as it is now.
        job: Job,
    },
    /// The job of `key` is gone (acknowledged, purged, or moved under a
    /// new key).
    Delete {
        /// Its key.
        key: u64,
    },
}

/// A job in the book, with its key.
#[derive(Debug, Clone)]
struct Held {
    key: u64,
    job: Job,
}

#[derive(Debug, Default)]
struct Queue {
    ready: VecDeque<Held>,
    /// Bytes of the jobs in `ready` ([`job_bytes`]), for a capped queue's
    /// bound ([`QueueBook::push_capped`]).
    ready_bytes: usize,
    in_flight: HashMap<u64, (String, Held)>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.in_flight.is_empty()
    }

    fn push_back(&mut self, held: Held) {
        self.ready_bytes += job_bytes(&held.job);
        self.ready.push_back(held);
    }

    fn push_front(&mut self, held: Held) {
        self.ready_bytes += job_bytes(&held.job);
        self.ready.push_front(held);
    }

    fn pop_front(&mut self) -> Option<Held> {
        let held = self.ready.pop_front()?;
        self.ready_bytes -= job_bytes(&held.job);
        Some(held)
    }

    fn take_ready(&mut self) -> VecDeque<Held> {
        self.ready_bytes = 0;
        std::mem::take(&mut self.ready)
    }
}

/// Bytes a job costs its store: what it carries plus the bookkeeping.
fn job_bytes(job: &Job) -> usize {
    job.body.len()
        + job.id.len()
        + job.transaction.as_ref().map_or(0, String::len)
        + job.reason.as_ref().map_or(0, String::len)
        + job.traceparent.as_ref().map_or(0, String::len)
        + 96
}

/// In-process work queues: ready jobs, jobs held by consumers (by tag), and
/// dead-letter queues. Jobs held by a holder that goes away are put back at
/// the front with [`QueueBook::release`]. Bounded by [`QueueLimits`]; a
/// queue with nothing in it is forgotten.
#[derive(Debug)]
pub struct QueueBook {
    queues: HashMap<String, Queue>,
    next_tag: u64,
    next_key: u64,
    limits: QueueLimits,
    /// Bytes of every job held ([`job_bytes`]).
    bytes: usize,
    /// Changes not yet taken by [`QueueBook::take_changes`]; `None` when
    /// the book does not journal.
    journal: Option<Vec<JobChange>>,
}

impl Default for QueueBook {
    fn default() -> Self {
        Self::new(QueueLimits::default())
    }
}

impl QueueBook {
    /// Queues it keeps (empty ones are forgotten).
    #[cfg(test)]
    pub(super) fn queues_kept(&self) -> usize {
        self.queues.len()
    }

    /// Queues within `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            queues: HashMap::new(),
            // Tags start at random: a consumer that settles a tag of a bus
            // that has since restarted must not settle another job.
            next_tag: crate::id::random_u64() >> 16,
            next_key: 0,
            limits,
            bytes: 0,
            journal: None,
        }
    }

    /// A book that records every change to its jobs for
    /// [`QueueBook::take_changes`].
    pub fn journaling(limits: QueueLimits) -> Self {
        Self {
            journal: Some(Vec::new()),
            ..Self::new(limits)
        }
    }

    /// The changes recorded since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<JobChange> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&mut self, change: JobChange) {
        if let Some(j) = &mut self.journal {
            j.push(change);
        }
    }

    /// Records that `job` is in `queue` under `key`; the copy is made only
    /// when the book journals (an in-memory book's hot path copies nothing).
    fn record_put(&mut self, key: u64, queue: &str, job: &Job) {
        if let Some(j) = &mut self.journal {
            j.push(JobChange::Put {
                key,
                queue: queue.to_owned(),
                job: job.clone(),
            });
        }
    }

    /// Puts `job` at the back of `queue` under a new key (so that a store
    /// reads it back in the same place), counting its bytes.
    fn push_back_new(&mut self, queue: &str, job: Job) {
        self.bytes += job_bytes(&job);
        let key = self.new_key();
        self.record_put(key, queue, &job);
        self.queues
            .entry(queue.to_owned())
            .or_default()
            .push_back(Held { key, job });
    }

    fn new_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// Adds a job read back from a durable store, at the back of `queue`
    /// under its old `key`; call in key order. Not journaled, and not
    /// refused for space (it was accepted once).
    pub fn restore(&mut self, key: u64, queue: &str, job: Job) {
        self.next_key = self.next_key.max(key);
        self.bytes += job_bytes(&job);
        self.queues
            .entry(queue.to_owned())
            .or_default()
            .push_back(Held { key, job });
    }

    /// Removes the waiting job of `key` from `queue` (a store could not
    /// keep it, so its producer was told it failed). False when it was
    /// taken already.
    pub fn forget(&mut self, queue: &str, key: u64) -> bool {
        let Some(q) = self.queues.get_mut(queue) else {
            return false;
        };
        let Some(at) = q.ready.iter().position(|h| h.key == key) else {
            return false;
        };
        if let Some(h) = q.ready.remove(at) {
            q.ready_bytes -= job_bytes(&h.job);
            self.bytes -= job_bytes(&h.job);
        }
        self.forget_if_empty(queue);
        true
    }

    /// Bytes of jobs held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a job at the back.
    ///
    /// # Errors
    /// The queue holds its most jobs, or the book its most bytes (the job
    /// is not taken).
    pub fn push(&mut self, queue: &str, job: Job) -> Result<u64, QueueFull> {
        let size = job_bytes(&job);
        if self.bytes + size > self.limits.bytes {
            return Err(QueueFull::Bytes {
                held: self.bytes,
                size,
                limit: self.limits.bytes,
            });
        }
        let q = self.queues.entry(queue.to_owned()).or_default();
        if q.ready.len() >= self.limits.jobs_per_queue {
            return Err(QueueFull::Jobs {
                queue: queue.to_owned(),
                limit: self.limits.jobs_per_queue,
            });
        }
        self.bytes += size;
        self.next_key += 1;
        let key = self.next_key;
        if let Some(j) = &mut self.journal {
            j.push(JobChange::Put {
                key,
                queue: queue.to_owned(),
                job: job.clone(),
            });
        }
        q.push_back(Held { key, job });
        Ok(key)
    }

    /// Adds a job at the back of a capped queue (a durable group's):
    /// first drops the oldest waiting jobs that are past their
    /// `expires_ms`, then as many as it takes to keep the queue within
    /// `max_jobs` and `max_bytes` waiting. Returns the job's key and how
    /// many were dropped.
    ///
    /// # Errors
    /// The book holds its most bytes even so (the job is not taken).
    pub fn push_capped(
        &mut self,
        queue: &str,
        job: Job,
        max_jobs: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<(u64, u64), QueueFull> {
        let size = job_bytes(&job);
        let mut dropped = Vec::new();
        if let Some(q) = self.queues.get_mut(queue) {
            while let Some(front) = q.ready.front() {
                let expired = front.job.expires_ms.is_some_and(|t| t < now_ms);
                let over = q.ready.len() >= max_jobs.max(1) || q.ready_bytes + size > max_bytes;
                if !expired && !over {
                    break;
                }
                if let Some(h) = q.pop_front() {
                    dropped.push(h);
                }
            }
        }
        let n = dropped.len() as u64;
        for h in dropped {
            self.bytes -= job_bytes(&h.job);
            self.record(JobChange::Delete { key: h.key });
        }
        let key = self.push(queue, job)?;
        Ok((key, n))
    }

    /// Forgets `queue` when nothing is in it.
    fn forget_if_empty(&mut self, queue: &str) {
        if self.queues.get(queue).is_some_and(Queue::is_empty) {
            self.queues.remove(queue);
        }
    }

    /// Takes up to `max` jobs for `holder`, each with its settling tag.
    pub fn take(&mut self, queue: &str, holder: &str, max: usize) -> Vec<(u64, Job)> {
        let Some(q) = self.queues.get_mut(queue) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < max {
            let Some(held) = q.pop_front() else {
                break;
            };
            self.next_tag += 1;
            let job = held.job.clone();
            q.in_flight.insert(self.next_tag, (holder.to_owned(), held));
            out.push((self.next_tag, job));
        }
        out
    }

    /// Who holds the job of `tag` in `queue`, if anyone.
    pub fn holder_of(&self, queue: &str, tag: u64) -> Option<&str> {
        self.queues
            .get(queue)
            .and_then(|q| q.in_flight.get(&tag))
            .map(|(h, _)| h.as_str())
    }

    /// True when `queue` has jobs waiting.
    pub fn has_ready(&self, queue: &str) -> bool {
        self.queues.get(queue).is_some_and(|q| !q.ready.is_empty())
    }

    /// Settles a held job. Returns false for an unknown tag (settled
    /// already, or released when its holder went away).
    pub fn settle(&mut self, queue: &str, tag: u64, outcome: &Outcome) -> bool {
        let Some((_, Held { key, job })) = self
            .queues
            .get_mut(queue)
            .and_then(|q| q.in_flight.remove(&tag))
        else {
            return false;
        };
        self.bytes -= job_bytes(&job);
        self.record(JobChange::Delete { key });
        // A retry or a dead letter is never refused for space: the job was
        // counted when it came in. It goes to the back under a new key, so
        // that a store reads it back in the same place.
        let next = match outcome {
            Outcome::Ack => None,
            Outcome::Retry { .. } => Some((queue.to_owned(), job.next_attempt())),
            Outcome::Dead { reason } => Some((dead_queue(queue), job.dead(reason))),
        };
        if let Some((to, job)) = next {
            self.push_back_new(&to, job);
        }
        self.forget_if_empty(queue);
        true
    }

    /// Puts every job held by holders whose id is `holder` (or starts with
    /// `holder-`) back at the front of its queue: they gave them back. The
    /// attempt does not change. Returns how many.
    pub fn release(&mut self, holder: &str) -> usize {
        self.give_back(holder, None)
    }

    /// [`QueueBook::release`] for a holder that died holding its jobs:
    /// each delivery counts as an attempt (`attempt + 1`), and the job's
    /// `reason` says what happened (`consumer died: <cause>`), so that a
    /// job that kills every consumer is set aside after its attempts
    /// rather than delivered for ever.
    pub fn release_dead(&mut self, holder: &str, cause: &str) -> usize {
        self.give_back(holder, Some(cause))
    }

    fn give_back(&mut self, holder: &str, died: Option<&str>) -> usize {
        let mut n = 0;
        for (name, q) in &mut self.queues {
            let mut back: Vec<(u64, Held)> = Vec::new();
            q.in_flight.retain(|tag, (h, held)| {
                let gone = h
                    .strip_prefix(holder)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'));
                if gone {
                    back.push((*tag, held.clone()));
                }
                !gone
            });
            back.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
            n += back.len();
            for (_, mut held) in back {
                if let Some(cause) = died {
                    let reason = format!("consumer died: {cause}");
                    self.bytes -= job_bytes(&held.job);
                    held.job = Job {
                        reason: Some(reason),
                        ..held.job.next_attempt()
                    };
                    self.bytes += job_bytes(&held.job);
                    if let Some(j) = &mut self.journal {
                        j.push(JobChange::Put {
                            key: held.key,
                            queue: name.clone(),
                            job: held.job.clone(),
                        });
                    }
                }
                q.push_front(held);
            }
        }
        n
    }

    /// Runs an operator command.
    pub fn command(&mut self, queue: &str, command: &QueueCommand) -> QueueReply {
        match command {
            QueueCommand::Stats => {
                let (ready, in_flight) = self
                    .queues
                    .get(queue)
                    .map(|q| (q.ready.len() as u64, q.in_flight.len() as u64))
                    .unwrap_or_default();
                let dead = self
                    .queues
                    .get(&dead_queue(queue))
                    .map(|q| q.ready.len() as u64)
                    .unwrap_or_default();
                QueueReply::Stats(QueueStats {
                    queue: queue.to_owned(),
                    ready,
                    in_flight: Some(in_flight),
                    dead,
                    consumers: 0,
                })
            }
            QueueCommand::Peek { count } => QueueReply::Jobs(
                self.queues
                    .get(queue)
                    .map(|q| q.ready.iter().take(*count).map(|h| h.job.clone()).collect())
                    .unwrap_or_default(),
            ),
            QueueCommand::Purge => {
                let purged = self
                    .queues
                    .get_mut(queue)
                    .map(Queue::take_ready)
                    .unwrap_or_default();
                for h in &purged {
                    self.bytes -= job_bytes(&h.job);
                    self.record(JobChange::Delete { key: h.key });
                }
                self.forget_if_empty(queue);
                QueueReply::Count(purged.len() as u64)
            }
            QueueCommand::RequeueDead => {
                let dead_name = dead_queue(queue);
                let dead: Vec<Held> = self
                    .queues
                    .get_mut(&dead_name)
                    .map(|q| q.take_ready().into())
                    .unwrap_or_default();
                self.forget_if_empty(&dead_name);
                let n = dead.len() as u64;
                for Held { key, job } in dead {
                    self.bytes -= job_bytes(&job);
                    self.record(JobChange::Delete { key });
                    let job = Job {
                        attempt: 1,
                        reason: None,
                        ..job
                    };
                    self.push_back_new(queue, job);
                }
                QueueReply::Count(n)
            }
        }
    }
}
