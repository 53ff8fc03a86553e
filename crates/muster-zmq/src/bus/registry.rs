//! The registry: instances join with their endpoint and methods and stay
//! while they heartbeat. The verbs themselves, and who may use them, are
//! in `verbs`.

mod changes;
mod verbs;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster_core::auth::{KeyId, MasterSecret};
use muster_core::durable::{DurableGroup, Keeper};
use muster_core::queue::{Job, QueueCommand, QueueReply};
use muster_core::registry::{InstanceInfo, StatusUpdate};
use muster_core::wire::decode_events;
use muster_core::wire::{Envelope, Header};
use omq_tokio::Socket;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BusOptions;
use super::forwarder::Tap;
use super::store::{Accepted, Committed, JobLog, QueueStore};
use crate::control::{Take, TakeReply, Taken};
use crate::socket::{Framing, frames, log_dropped, routed_message};
use muster_core::queue::QueueBook;

#[derive(Debug, Default, Clone)]
pub(super) struct SharedStats(Arc<Counters>);

#[derive(Debug, Default)]
pub(super) struct Counters {
    instances: AtomicU64,
    expired: AtomicU64,
    bad_messages: AtomicU64,
    durable_dropped: AtomicU64,
    heartbeats: AtomicU64,
    heartbeats_answered: AtomicU64,
    listings_whole: AtomicU64,
    listings_of_changes: AtomicU64,
}

impl SharedStats {
    /// Fills in the registry's counters.
    pub(super) fn fill(&self, stats: &mut super::BusStats) {
        stats.instances = self.0.instances.load(Ordering::Relaxed);
        stats.expired = self.0.expired.load(Ordering::Relaxed);
        stats.bad_messages = self.0.bad_messages.load(Ordering::Relaxed);
        stats.durable_dropped = self.0.durable_dropped.load(Ordering::Relaxed);
        stats.heartbeats = self.0.heartbeats.load(Ordering::Relaxed);
        stats.heartbeats_answered = self.0.heartbeats_answered.load(Ordering::Relaxed);
        stats.listings_whole = self.0.listings_whole.load(Ordering::Relaxed);
        stats.listings_of_changes = self.0.listings_of_changes.load(Ordering::Relaxed);
    }
}

struct Entry {
    info: InstanceInfo,
    last_seen: Instant,
    /// Silence after which it is dropped: the bus's ttl, or 3.3 of the
    /// slower heartbeat intervals it was last asked for.
    ttl: Duration,
    /// The interval the bus asked of its sender at its last heartbeat
    /// (`None`: the sender's own), which an older sender keeps until its
    /// next one.
    asked: Option<Duration>,
    /// The credential that registered it (`None` on an open bus).
    owner: Option<KeyId>,
}

/// Registry connections that said `hello`, by routing identity, with the
/// nonce their MACs cover. Bounded: past the limit the oldest half is
/// forgotten (those callers say hello again when told).
const MAX_SESSIONS: usize = 10_000;

struct Registry {
    /// Verifies credentials; `None` on an open bus.
    secret: Option<MasterSecret>,
    sessions: HashMap<Bytes, (String, Instant)>,
    epoch: String,
    /// The version of `entries`, and what each change touched.
    changes: changes::Changes,
    /// The registry's counters (`BusStats`).
    stats: SharedStats,
    entries: HashMap<String, Entry>,
    /// Claimed keys: key -> (holder, until).
    claims: HashMap<String, (String, Instant)>,
    /// Work queues held by the bus.
    queues: QueueBook,
    /// Where the changes to `queues` are written, when they are kept on
    /// disk.
    log: Option<JobLog>,
    /// Enqueues of this turn, answered once their jobs are on disk.
    accepted: Vec<Accepted>,
    /// `take`s waiting for a job.
    waiters: Vec<Waiter>,
    /// Consumers: holder -> last take or settle.
    holders: HashMap<String, Instant>,
    /// Replies made outside the request that caused them (to waiters).
    outbox: Vec<(Bytes, Envelope)>,
    /// Durable groups: their events wait in `queues`.
    durable: Keeper,
    /// Tells the forwarder which topics the groups keep.
    tap: Arc<Tap>,
}

/// The patterns of every group, for the forwarder's tap.
fn tap_patterns(groups: &Keeper) -> Vec<muster_core::topic::Pattern> {
    groups
        .groups()
        .flat_map(|g| g.check().unwrap_or_default())
        .collect()
}

/// Reads back the groups kept in [`GROUPS_QUEUE`].
fn read_groups(book: &mut QueueBook) -> Keeper {
    let mut groups = Keeper::default();
    let QueueReply::Jobs(jobs) =
        book.command(GROUPS_QUEUE, &QueueCommand::Peek { count: usize::MAX })
    else {
        return groups;
    };
    for job in jobs {
        let declared = serde_json::from_slice::<DurableGroup>(&job.body)
            .map_err(|e| e.to_string())
            .and_then(|g| groups.declare(g).map_err(|e| e.to_string()));
        if let Err(e) = declared {
            tracing::error!(error = %e, "a kept durable group cannot be read; skipped");
        }
    }
    let n = groups.groups().count();
    if n > 0 {
        tracing::info!(groups = n, "durable groups read back");
    }
    groups
}

/// The queue in which the bus keeps the definitions of its durable groups
/// (one job each), so that a bus started again keeps their events before
/// any member is back. Not a valid queue name: no client reaches it.
const GROUPS_QUEUE: &str = "~durable-groups";

/// The registry's side of the durable groups: the forwarder's tap and the
/// messages it copies.
pub(super) struct Durable {
    pub(super) tap: Arc<Tap>,
    pub(super) kept: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
}

/// A `take` parked until a job comes or its wait ends.
struct Waiter {
    identity: Bytes,
    header: Header,
    take: Take,
    until: Instant,
}

/// A consumer that is not a registered instance is given up after this
/// long without a take or settle (instances are given up with their entry).
const HOLDER_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl Registry {
    /// Answers parked takes of queues that have jobs, and expired ones.
    fn serve_waiters(&mut self, now: Instant) {
        let mut parked = std::mem::take(&mut self.waiters);
        parked.retain(|w| {
            let jobs = self.queues.take(&w.take.queue, &w.take.holder, w.take.max);
            if jobs.is_empty() && w.until > now {
                return true;
            }
            let reply = TakeReply {
                jobs: jobs
                    .into_iter()
                    .map(|(tag, job)| Taken { tag, job })
                    .collect(),
                error: None,
            };
            self.outbox.push((
                w.identity.clone(),
                Envelope::new(Header::reply_to(&w.header), encode(&reply)),
            ));
            false
        });
        self.waiters = parked;
    }

    /// Gives back the jobs of consumers that belong to `instance`, and
    /// forgets their parked takes (nobody reads those answers any more).
    /// `died` says how, when the instance did not give them back itself:
    /// each of its deliveries then counts as an attempt.
    fn release_instance(&mut self, instance: &str, died: Option<&str>) {
        let belongs = |h: &str| {
            h.strip_prefix(instance)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        };
        self.waiters.retain(|w| !belongs(&w.take.holder));
        let n = match died {
            Some(cause) => self.queues.release_dead(instance, cause),
            None => self.queues.release(instance),
        };
        if n > 0 {
            tracing::info!(
                instance,
                jobs = n,
                cause = died.unwrap_or("released"),
                "jobs of a departed consumer given back"
            );
        }
        self.holders.retain(|h, _| !belongs(h));
    }

    /// Gives back the jobs of unregistered consumers silent for too long.
    fn release_silent_holders(&mut self, now: Instant) {
        let silent: Vec<String> = self
            .holders
            .iter()
            .filter(|(h, seen)| {
                now.duration_since(**seen) > HOLDER_TTL
                    && !self.entries.keys().any(|id| {
                        h.strip_prefix(id.as_str())
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
                    })
            })
            .map(|(h, _)| h.clone())
            .collect();
        for h in silent {
            self.release_instance(&h, Some("silent for 30 s (no take or settle)"));
        }
    }

    /// Hands this turn's changes to the job log. Should its writer be
    /// gone, the enqueues are answered with the failure at once.
    fn write_changes(&mut self) {
        let Some(log) = &self.log else { return };
        let changes = self.queues.take_changes();
        let accepted = std::mem::take(&mut self.accepted);
        if changes.is_empty() && accepted.is_empty() {
            return;
        }
        if let Err(accepted) = log.send(changes, accepted) {
            self.committed(Committed {
                accepted,
                error: Some("the job log writer stopped".to_owned()),
            });
        }
    }

    /// Answers the enqueues of a batch the job log wrote, or failed to:
    /// their jobs are then taken out of the queues again (unless a
    /// consumer has one already) and the producers told why.
    fn committed(&mut self, c: Committed) {
        for a in c.accepted {
            let body = match &c.error {
                None => encode(&crate::control::Ack::default()),
                Some(e) => {
                    self.queues.forget(&a.queue, a.key);
                    verbs::error(format!("job not kept: {e}"))
                }
            };
            self.outbox
                .push((a.identity, Envelope::new(Header::reply_to(&a.header), body)));
        }
    }

    /// Declares a durable group (or changes it), keeping its definition
    /// with the jobs.
    fn declare(&mut self, group: DurableGroup) -> Result<(), muster_core::Error> {
        if !self.durable.declare(group.clone())? {
            return Ok(());
        }
        tracing::info!(group = %group.name, patterns = ?group.patterns, "durable group declared");
        self.retap();
        self.queues.command(GROUPS_QUEUE, &QueueCommand::Purge);
        let defs: Vec<Vec<u8>> = self
            .durable
            .groups()
            .map(|g| serde_json::to_vec(g).unwrap_or_default())
            .collect();
        for def in defs {
            if let Err(e) = self.queues.push(GROUPS_QUEUE, Job::new(def)) {
                tracing::error!(error = %e, "durable group definitions not kept");
            }
        }
        Ok(())
    }

    fn retap(&self) {
        self.tap.set(tap_patterns(&self.durable));
    }

    /// Adds the events of a message the forwarder copied to the queues of
    /// the groups that keep them.
    fn keep(&mut self, frames: &[Bytes]) {
        let events = match decode_events(frames) {
            Ok(e) => e,
            // The subscribers drop it too (it is not an event batch).
            Err(e) => return log_dropped("event kept for a durable group", &e),
        };
        let mut dropped = 0;
        // A job log behind the publishers would grow without bound: the
        // events are dropped (and counted) until it catches up.
        if self.log.as_ref().is_some_and(JobLog::is_behind) {
            self.stats
                .0
                .durable_dropped
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            return;
        }
        for e in &events {
            dropped += self.durable.keep(&mut self.queues, e);
        }
        if dropped > 0 {
            self.stats
                .0
                .durable_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            tracing::debug!(dropped, "kept events dropped for their group's retention");
        }
        self.serve_waiters(Instant::now());
    }

    /// A new version of the registry, in which the entries of `instances`
    /// were added, replaced or removed.
    fn changed(&mut self, instances: impl IntoIterator<Item = String>) {
        self.changes.record(instances);
    }
}

/// A change in the registry, as the bus's own process sees it (the host
/// uses these for readiness and missed heartbeats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// An instance registered (or registered again after a bus restart).
    Registered(InstanceInfo),
    /// An instance said goodbye.
    Unregistered {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
    },
    /// An instance missed its heartbeats for the bus's ttl and was dropped.
    Expired {
        /// Service name.
        service: String,
        /// Instance id.
        instance: String,
    },
    /// A registered instance reported progress (`ctx.update`).
    Updated(StatusUpdate),
}

/// The bus's work queues, read back from their job log when they have
/// one.
pub(super) struct Queues {
    book: QueueBook,
    log: Option<JobLog>,
    committed: Option<tokio::sync::mpsc::UnboundedReceiver<Committed>>,
    /// The durable groups read back with the jobs.
    groups: Keeper,
}

impl Queues {
    /// The topics the groups read back keep: set on the forwarder's tap
    /// before it forwards anything.
    pub(super) fn tap_patterns(&self) -> Vec<muster_core::topic::Pattern> {
        tap_patterns(&self.groups)
    }

    pub(super) async fn open(options: &BusOptions) -> Result<Self, muster_core::Error> {
        match &options.queue_store {
            QueueStore::Memory => Ok(Self {
                book: QueueBook::new(options.queue_limits),
                log: None,
                committed: None,
                groups: Keeper::default(),
            }),
            QueueStore::Disk { path, fsync } => {
                let mut book = QueueBook::journaling(options.queue_limits);
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let log = JobLog::open(path, *fsync, &mut book, tx).await?;
                let groups = read_groups(&mut book);
                Ok(Self {
                    book,
                    log: Some(log),
                    committed: Some(rx),
                    groups,
                })
            }
        }
    }
}

/// The next batch the job log answered; never, without a log.
async fn next_committed(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Committed>>,
) -> Option<Committed> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)] // one call site: the bus's parts
pub(super) async fn run(
    router: Socket,
    queues: Queues,
    durable: Durable,
    options: BusOptions,
    shutdown: CancellationToken,
    stats: SharedStats,
    events: tokio::sync::broadcast::Sender<RegistryEvent>,
    mut evictions: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let Queues {
        book,
        log,
        mut committed,
        groups,
    } = queues;
    let mut reg = Registry {
        secret: options.secret.clone(),
        sessions: HashMap::new(),
        epoch: random_epoch(),
        changes: changes::Changes::default(),
        stats: stats.clone(),
        entries: HashMap::new(),
        claims: HashMap::new(),
        queues: book,
        log,
        accepted: Vec::new(),
        waiters: Vec::new(),
        holders: HashMap::new(),
        outbox: Vec::new(),
        durable: groups,
        tap: durable.tap,
    };
    let mut kept = durable.kept;
    let mut sweep = tokio::time::interval(options.sweep_every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                let now = Instant::now();
                reg.claims.retain(|_, (_, until)| *until > now);
                let before = reg.entries.len();
                let mut gone = Vec::new();
                reg.entries.retain(|id, e| {
                    let alive = now.duration_since(e.last_seen) < e.ttl;
                    if !alive {
                        gone.push(id.clone());
                        tracing::info!(service = %e.info.service, instance = %id, "instance expired (no heartbeat)");
                        let _ = events.send(RegistryEvent::Expired {
                            service: e.info.service.clone(),
                            instance: id.clone(),
                        });
                    }
                    alive
                });
                let expired = before - reg.entries.len();
                if expired > 0 {
                    stats.0.expired.fetch_add(expired as u64, Ordering::Relaxed);
                    reg.changed(gone.iter().cloned());
                }
                for id in gone {
                    reg.release_instance(&id, Some("no heartbeat (instance expired)"));
                }
                reg.release_silent_holders(now);
                reg.serve_waiters(now);
            }
            Some(c) = next_committed(&mut committed) => reg.committed(c),
            Some(frames) = kept.recv() => reg.keep(&frames),
            Some((id, cause)) = evictions.recv() => {
                let mut evicted = Vec::new();
                reg.entries.retain(|key, e| {
                    let gone = key
                        .strip_prefix(id.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'));
                    if gone {
                        tracing::info!(service = %e.info.service, instance = %key, "instance evicted (its process ended)");
                        let _ = events.send(RegistryEvent::Unregistered {
                            service: e.info.service.clone(),
                            instance: key.clone(),
                        });
                        evicted.push(key.clone());
                    }
                    !gone
                });
                if !evicted.is_empty() {
                    reg.changed(evicted);
                }
                reg.release_instance(&id, Some(&cause));
                reg.serve_waiters(Instant::now());
            }
            msg = router.recv() => {
                let Ok(msg) = msg else { break };
                let parts = frames(&msg);
                let Some((identity, rest)) = parts.split_first() else { continue };
                match Envelope::from_frames(rest) {
                    Ok(env) => {
                        let verb = env.header.method.clone().unwrap_or_default();
                        let answer = verbs::handle(&mut reg, &options, identity, env, &events);
                        if verb == crate::control::HEARTBEAT {
                            stats.0.heartbeats.fetch_add(1, Ordering::Relaxed);
                            if answer.reply.is_some() {
                                stats.0.heartbeats_answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if let Some(why) = &answer.refused {
                            let peer = peer_address(&router, identity).await;
                            tracing::warn!(verb, peer, reason = %why, "registry request refused");
                        }
                        if let Some(reply) = answer.reply {
                            let _ = router.send(routed_message(identity.clone(), &reply, Framing::Three)).await;
                        }
                    }
                    Err(e) => {
                        stats.0.bad_messages.fetch_add(1, Ordering::Relaxed);
                        log_dropped("registry message", &e);
                    }
                }
            }
        }
        reg.write_changes();
        for (identity, reply) in std::mem::take(&mut reg.outbox) {
            let _ = router
                .send(routed_message(identity, &reply, Framing::Three))
                .await;
        }
        stats
            .0
            .instances
            .store(reg.entries.len() as u64, Ordering::Relaxed);
    }
    if let Some(log) = reg.log.take() {
        log.close().await;
    }
}

pub(super) fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The address of the peer behind a routing identity, for the log.
async fn peer_address(router: &Socket, identity: &Bytes) -> String {
    router
        .connections()
        .await
        .ok()
        .and_then(|c| {
            c.into_iter()
                .find(|c| c.identity == *identity)
                .and_then(|c| c.peer_info?.peer_address)
        })
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

fn random_epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{:x}", nanos, std::process::id())
}
