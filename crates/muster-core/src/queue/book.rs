//! [`QueueBook`]: the work queues held in one process (the embedded bus,
//! the in-memory transport), bounded in jobs per queue and in bytes.

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

#[derive(Debug, Default)]
struct Queue {
    ready: VecDeque<Job>,
    in_flight: HashMap<u64, (String, Job)>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.in_flight.is_empty()
    }
}

/// Bytes a job costs its store: what it carries plus the bookkeeping.
fn job_bytes(job: &Job) -> usize {
    job.body.len()
        + job.id.len()
        + job.transaction.as_ref().map_or(0, String::len)
        + job.reason.as_ref().map_or(0, String::len)
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
    limits: QueueLimits,
    /// Bytes of every job held ([`job_bytes`]).
    bytes: usize,
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
            next_tag: 0,
            limits,
            bytes: 0,
        }
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
    pub fn push(&mut self, queue: &str, job: Job) -> Result<(), QueueFull> {
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
        q.ready.push_back(job);
        Ok(())
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
            let Some(job) = q.ready.pop_front() else {
                break;
            };
            self.next_tag += 1;
            q.in_flight
                .insert(self.next_tag, (holder.to_owned(), job.clone()));
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
        let Some((_, job)) = self
            .queues
            .get_mut(queue)
            .and_then(|q| q.in_flight.remove(&tag))
        else {
            return false;
        };
        self.bytes -= job_bytes(&job);
        // A retry or a dead letter is never refused for space: the job was
        // counted when it came in.
        let next = match outcome {
            Outcome::Ack => None,
            Outcome::Retry { .. } => Some((queue.to_owned(), job.next_attempt())),
            Outcome::Dead { reason } => Some((dead_queue(queue), job.dead(reason))),
        };
        if let Some((to, job)) = next {
            self.bytes += job_bytes(&job);
            self.queues.entry(to).or_default().ready.push_back(job);
        }
        self.forget_if_empty(queue);
        true
    }

    /// Puts every job held by holders whose id is `holder` (or starts with
    /// `holder-`) back at the front of its queue. Returns how many.
    pub fn release(&mut self, holder: &str) -> usize {
        let mut n = 0;
        for q in self.queues.values_mut() {
            let mut back: Vec<(u64, Job)> = Vec::new();
            q.in_flight.retain(|tag, (h, job)| {
                let gone = h
                    .strip_prefix(holder)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'));
                if gone {
                    back.push((*tag, job.clone()));
                }
                !gone
            });
            back.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
            n += back.len();
            for (_, job) in back {
                q.ready.push_front(job);
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
                    .map(|q| q.ready.iter().take(*count).cloned().collect())
                    .unwrap_or_default(),
            ),
            QueueCommand::Purge => {
                let purged = self
                    .queues
                    .get_mut(queue)
                    .map(|q| std::mem::take(&mut q.ready))
                    .unwrap_or_default();
                self.bytes -= purged.iter().map(job_bytes).sum::<usize>();
                self.forget_if_empty(queue);
                QueueReply::Count(purged.len() as u64)
            }
            QueueCommand::RequeueDead => {
                let dead_name = dead_queue(queue);
                let dead: Vec<Job> = self
                    .queues
                    .get_mut(&dead_name)
                    .map(|q| std::mem::take(&mut q.ready).into())
                    .unwrap_or_default();
                self.forget_if_empty(&dead_name);
                let n = dead.len() as u64;
                for job in dead {
                    self.bytes -= job_bytes(&job);
                    let job = Job {
                        attempt: 1,
                        reason: None,
                        ..job
                    };
                    self.bytes += job_bytes(&job);
                    self.queues
                        .entry(queue.to_owned())
                        .or_default()
                        .ready
                        .push_back(job);
                }
                QueueReply::Count(n)
            }
        }
    }
}
