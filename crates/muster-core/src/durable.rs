//! Durable event subscriptions: a named group whose events the bus keeps
//! while every member is down, within a [`Retention`], and delivers when a
//! member comes back: at least once, in publish order per publisher.
//!
//! Each bus keeps them its own way (`docs/guarantees.md`): the embedded
//! bus and the in-memory one in a work queue named [`DurableGroup::queue`]
//! that the bus fills as events pass, RabbitMQ in a durable queue bound to
//! the event exchange, Redis in a stream with a consumer group, NATS in a
//! JetStream consumer. Plain subscriptions do not pay for any of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::{Job, JobSink, Outcome, QueueBook};
use crate::topic::Pattern;
use crate::transport::{BoxFuture, EventSink};
use crate::wire::Envelope;
use crate::{Error, ErrorKind};

/// How much a durable group keeps for its members while they are away.
/// Past a bound the oldest events are dropped first, and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Retention {
    /// Most events kept.
    pub max_events: u64,
    /// Most bytes of events kept (bodies and headers).
    pub max_bytes: u64,
    /// Oldest event kept.
    #[serde(rename = "max_age_ms", with = "millis")]
    pub max_age: Duration,
}

impl Default for Retention {
    /// 1,000,000 events, 256 MiB, 7 days: a weekend's outage of a busy
    /// subscriber fits, a forgotten group does not fill the disk.
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Retention {
    /// Keeps at most `n` events (at least 1).
    #[must_use]
    pub fn max_events(mut self, n: u64) -> Self {
        self.max_events = n.max(1);
        self
    }

    /// Keeps at most `n` bytes of events.
    #[must_use]
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n.max(1);
        self
    }

    /// Drops events older than `age`.
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age.max(Duration::from_millis(1));
        self
    }
}

/// A durable subscription group: its name, the topics it keeps and how
/// much. Members of one group share its events (each event goes to one
/// member).
///
/// ```
/// use std::time::Duration;
/// use muster_core::durable::{DurableGroup, Retention};
///
/// let group = DurableGroup::new(
///     "billing",
///     vec!["orders.>".to_owned()],
///     Retention::default().max_age(Duration::from_secs(3600)),
/// )
/// .expect("a valid group");
/// assert_eq!(group.queue(), "durable.billing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DurableGroup {
    /// The group's name: letters, digits, `_` and `-`.
    pub name: String,
    /// The topics it keeps (`*` one token, `>` the rest).
    pub patterns: Vec<String>,
    /// How much it keeps.
    pub retention: Retention,
}

impl DurableGroup {
    /// A group named `name` keeping events on `patterns`.
    ///
    /// # Errors
    /// `Config` for an invalid name, no pattern or an invalid pattern.
    pub fn new(name: &str, patterns: Vec<String>, retention: Retention) -> Result<Self, Error> {
        let group = Self {
            name: name.to_owned(),
            patterns,
            retention,
        };
        group.check()?;
        Ok(group)
    }

    /// Checks a group that came off the network.
    ///
    /// # Errors
    /// `Config` for an invalid name, no pattern or an invalid pattern.
    pub fn check(&self) -> Result<Vec<Pattern>, Error> {
        if !is_valid_group_name(&self.name) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "invalid durable group {:?}: use 1 to 100 letters, digits, _ and -",
                    self.name
                ),
            ));
        }
        if self.patterns.is_empty() || self.patterns.len() > 64 {
            return Err(Error::new(
                ErrorKind::Config,
                format!("durable group {:?} needs 1 to 64 topic patterns", self.name),
            ));
        }
        self.patterns
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| Error::new(ErrorKind::Config, e.to_string())))
            .collect()
    }

    /// The work queue that holds the group's events on buses that keep
    /// them in one (the embedded bus): `durable.<name>`, which
    /// `muster queue stats|peek|purge` read like any queue.
    pub fn queue(&self) -> String {
        format!("durable.{}", self.name)
    }
}

/// A duration as whole milliseconds on the wire.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// True for a valid group name: 1 to 100 ASCII letters, digits, `_`, `-`
/// (a name every bus takes as part of a queue, stream or consumer name).
pub fn is_valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

/// The durable groups of a bus that keeps their events in its own work
/// queues (the embedded bus, the in-memory one): it hands every event it
/// passes on to [`Keeper::keep`], which adds it to the queue of each group
/// whose patterns match, within the group's retention.
#[derive(Debug, Default)]
pub struct Keeper {
    groups: Vec<Kept>,
}

#[derive(Debug)]
struct Kept {
    group: DurableGroup,
    patterns: Vec<Pattern>,
    queue: String,
}

/// Most durable groups a [`Keeper`] holds: declarations come from the
/// network, and each costs every event a look at its patterns.
pub const MAX_GROUPS: usize = 1_000;

impl Keeper {
    /// Adds `group`, or replaces the group of that name (the latest
    /// declaration's patterns and retention win). Returns true when
    /// something changed.
    ///
    /// # Errors
    /// `Config` for an invalid group; `Unavailable` past [`MAX_GROUPS`].
    pub fn declare(&mut self, group: DurableGroup) -> Result<bool, Error> {
        let patterns = group.check()?;
        if let Some(k) = self.groups.iter_mut().find(|k| k.group.name == group.name) {
            if k.group == group {
                return Ok(false);
            }
            k.group = group;
            k.patterns = patterns;
            return Ok(true);
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "durable group {:?} refused: the bus keeps {MAX_GROUPS} groups already",
                    group.name
                ),
            ));
        }
        let queue = group.queue();
        self.groups.push(Kept {
            group,
            patterns,
            queue,
        });
        Ok(true)
    }

    /// True when no group is declared: nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The groups, in order of declaration.
    pub fn groups(&self) -> impl Iterator<Item = &DurableGroup> {
        self.groups.iter().map(|k| &k.group)
    }

    /// True when some group keeps events on `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.groups
            .iter()
            .any(|k| k.patterns.iter().any(|p| p.matches(topic)))
    }

    /// Adds `event` to the queue of every group that keeps its topic.
    /// Returns how many kept events were dropped to make room (or that
    /// did not fit at all).
    pub fn keep(&self, book: &mut QueueBook, event: &Envelope) -> u64 {
        let topic = event.header.topic.as_deref().unwrap_or("");
        let now = now_ms();
        let mut dropped = 0;
        for k in &self.groups {
            if !k.patterns.iter().any(|p| p.matches(topic)) {
                continue;
            }
            let r = &k.group.retention;
            let max = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            match book.push_capped(
                &k.queue,
                event_job(event, r),
                max(r.max_events),
                max(r.max_bytes),
                now,
            ) {
                Ok((_, n)) => dropped += n,
                Err(_) => dropped += 1,
            }
        }
        dropped
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The job that carries `event` in a group's queue: the event as a blob
/// ([`Envelope::to_blob`]), dropped unread once `retention.max_age` has
/// passed.
pub fn event_job(event: &Envelope, retention: &Retention) -> Job {
    let mut job = Job::new(event.to_blob());
    job.transaction.clone_from(&event.header.transaction);
    job.expires_ms = Some(
        now_ms().saturating_add(u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX)),
    );
    job
}

/// Hands the jobs of a group's queue to an [`EventSink`] one at a time in
/// queue order, whatever the consumer's prefetch: each delivery waits for
/// the one before it. An event past its age is skipped and counted as
/// missed; one that cannot be read goes to the dead-letter queue.
pub struct EventJobs {
    sink: Arc<dyn EventSink>,
    /// Resolves when the delivery before the next one is done.
    last: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl EventJobs {
    /// Delivers to `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self {
            sink,
            last: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for EventJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventJobs").finish_non_exhaustive()
    }
}

/// Deliveries of one kept event whose member died holding it, past which
/// it is set aside in the group's dead-letter queue: an event that kills
/// its subscriber must not take the group down in a loop.
pub const MAX_EVENT_ATTEMPTS: u32 = 5;

impl JobSink for EventJobs {
    fn handle(&self, job: Job) -> BoxFuture<'static, Outcome> {
        let (done, next) = tokio::sync::oneshot::channel();
        let before = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(next);
        let sink = self.sink.clone();
        Box::pin(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            let outcome = deliver_job(&*sink, job).await;
            let _ = done.send(());
            outcome
        })
    }
}

async fn deliver_job(sink: &dyn EventSink, job: Job) -> Outcome {
    let event = match Envelope::from_blob_bytes(&job.body) {
        Ok(e) => e,
        Err(e) => {
            return Outcome::Dead {
                reason: format!("not an event: {e}"),
            };
        }
    };
    if job.attempt > MAX_EVENT_ATTEMPTS {
        return Outcome::Dead {
            reason: format!(
                "{}; set aside after {} deliveries",
                job.reason.as_deref().unwrap_or("delivered too often"),
                job.attempt - 1
            ),
        };
    }
    if job.expires_ms.is_some_and(|t| t < now_ms()) {
        sink.missed(event.header.topic.as_deref().unwrap_or(""), 1);
        return Outcome::Ack;
    }
    sink.deliver(event).await;
    Outcome::Ack
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Header, Kind};

    #[test]
    fn group_names_and_patterns_are_checked() {
        let ok = |name: &str, p: &[&str]| {
            DurableGroup::new(
                name,
                p.iter().map(|s| (*s).to_owned()).collect(),
                Retention::default(),
            )
            .is_ok()
        };
        assert!(ok("billing-2_a", &["a.>"]));
        assert!(!ok("", &["a"]));
        assert!(!ok("a.b", &["a"]));
        assert!(!ok("a b", &["a"]));
        assert!(!ok(&"x".repeat(101), &["a"]));
        assert!(!ok("g", &[]));
        assert!(!ok("g", &["a..b"]));
    }

    struct Collect(tokio::sync::mpsc::UnboundedSender<String>);

    impl EventSink for Collect {
        fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()> {
            let tx = self.0.clone();
            Box::pin(async move {
                // Later events finish first unless they wait their turn.
                let n: u64 = std::str::from_utf8(&event.body).unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(20 - n * 5)).await;
                let _ = tx.send(String::from_utf8_lossy(&event.body).into_owned());
            })
        }
    }

    #[test]
    fn a_keeper_holds_a_bounded_number_of_groups() {
        let mut k = Keeper::default();
        let g = |n: usize| {
            DurableGroup::new(&format!("g{n}"), vec!["a".into()], Retention::default()).unwrap()
        };
        for n in 0..MAX_GROUPS {
            assert!(k.declare(g(n)).unwrap());
        }
        assert!(
            !k.declare(g(0)).unwrap(),
            "the same declaration again changes nothing"
        );
        let refused = k.declare(g(MAX_GROUPS)).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn events_are_delivered_in_queue_order_whatever_the_prefetch() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let jobs = EventJobs::new(Arc::new(Collect(tx)));
        let header = Header::new(Kind::Event).with_topic("a.b");
        let futures: Vec<_> = (0..4)
            .map(|n| {
                let e = Envelope::new(header.clone(), n.to_string());
                jobs.handle(event_job(&e, &Retention::default()))
            })
            .collect();
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).rev().collect();
        for h in handles {
            assert_eq!(h.await.unwrap(), Outcome::Ack);
        }
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, ["0", "1", "2", "3"]);
    }

    #[tokio::test]
    async fn an_expired_event_is_counted_missed_not_delivered() {
        struct Missed(Arc<std::sync::atomic::AtomicU64>);
        impl EventSink for Missed {
            fn deliver(&self, _: Envelope) -> BoxFuture<'static, ()> {
                panic!("an expired event was delivered");
            }
            fn missed(&self, _: &str, n: u64) {
                self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let jobs = EventJobs::new(Arc::new(Missed(count.clone())));
        let e = Envelope::new(Header::new(Kind::Event).with_topic("a"), "1");
        let mut job = event_job(&e, &Retention::default());
        job.expires_ms = Some(now_ms() - 1);
        assert_eq!(jobs.handle(job).await, Outcome::Ack);
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
        let bad = Job::new("not a blob");
        assert!(matches!(jobs.handle(bad).await, Outcome::Dead { .. }));
    }
}
