//! The registry's verbs, and who may use them (`docs/security.md`).
//!
//! `hello` and `list` are open. Every other verb, on a bus with a secret,
//! carries `auth: "<key id> <MAC>"` in its header: HMAC-SHA256 under the
//! key's secret over the connection's nonce (from `hello`), the message
//! id, the verb and the body. An instance id belongs to the credential
//! that registered it; reserved names (`muster.*`) to the master secret.

use std::time::{Duration, Instant};

use bytes::Bytes;
use muster_core::auth::KeyId;
use muster_core::durable::DurableGroup;
use muster_core::queue::{Outcome, is_valid_queue_name};
use muster_core::registry::{InstanceInfo, StatusUpdate};
use muster_core::wire::{Envelope, Header, Kind};
use serde::Serialize;

use super::{Entry, MAX_SESSIONS, Registry, RegistryEvent, Waiter, encode};
use crate::bus::BusOptions;
use crate::bus::store::{Accepted, JobLog};
use crate::control::{
    self, Ack, Claim, ClaimReply, Enqueue, Heartbeat, HeartbeatReply, Hello, List, QueueOp,
    QueueOpReply, Release, Settle, Take, TakeReply, Taken, Unregister, Verified, Verify,
};

/// What a request gets: a reply (none for a parked `take`), and why it was
/// refused, for the log.
pub(super) struct Answer {
    pub(super) reply: Option<Envelope>,
    pub(super) refused: Option<String>,
}

/// Why a request was refused: `nonce` (say `hello` again), `credential`
/// (none, or a wrong one), `forbidden` (a right credential, not its to do).
#[derive(Serialize)]
struct Refusal {
    error: String,
    unauthorized: &'static str,
}

type Events = tokio::sync::broadcast::Sender<RegistryEvent>;

pub(super) fn handle(
    reg: &mut Registry,
    options: &BusOptions,
    identity: &Bytes,
    env: Envelope,
    events: &Events,
) -> Answer {
    if env.header.kind != Kind::Control {
        return Answer {
            reply: None,
            refused: None,
        };
    }
    let verb = env.header.method.clone().unwrap_or_default();
    let reply = |body: Bytes| Some(Envelope::new(Header::reply_to(&env.header), body));
    let who = match verb.as_str() {
        control::HELLO => {
            return Answer {
                reply: reply(encode(&hello(reg, identity))),
                refused: None,
            };
        }
        control::LIST => {
            let req: List = serde_json::from_slice(&env.body).unwrap_or_default();
            return Answer {
                reply: reply(encode(&reg.list(&req))),
                refused: None,
            };
        }
        _ => match authenticate(reg, identity, &env, &verb) {
            Ok(who) => who,
            Err((kind, error)) => {
                let body = encode(&Refusal {
                    error: format!("unauthorized: {error}"),
                    unauthorized: kind,
                });
                return Answer {
                    reply: reply(body),
                    refused: Some(error),
                };
            }
        },
    };
    match verb_of(
        reg,
        options,
        identity,
        (*env.header).clone(),
        &verb,
        &env.body,
        who.as_ref(),
        events,
    ) {
        Done::Reply(body) => Answer {
            reply: reply(body),
            refused: None,
        },
        Done::Forbidden(why) => Answer {
            reply: reply(encode(&Refusal {
                error: format!("unauthorized: {why}"),
                unauthorized: "forbidden",
            })),
            refused: Some(why),
        },
        Done::Parked | Done::Quiet => Answer {
            reply: None,
            refused: None,
        },
    }
}

/// What a verb came to.
enum Done {
    Reply(Bytes),
    /// A valid credential asked for what is not its to do.
    Forbidden(String),
    /// A `take` waits for a job, or an `enqueue` for the disk.
    Parked,
    /// A quiet heartbeat with nothing to answer.
    Quiet,
}

#[allow(clippy::too_many_arguments)] // one call site, the request's parts
fn verb_of(
    reg: &mut Registry,
    options: &BusOptions,
    identity: &Bytes,
    header: Header,
    verb: &str,
    body: &[u8],
    who: Option<&KeyId>,
    events: &Events,
) -> Done {
    let not_yours = |what: &str| Done::Forbidden(format!("{what} is not this credential's"));
    let reply = |b: Bytes| Done::Reply(b);
    match verb {
        control::REGISTER => register(reg, options, body, who, events),
        control::HEARTBEAT => match serde_json::from_slice::<Heartbeat>(body) {
            Ok(hb) => match heartbeat(reg, options, hb, who) {
                Some(answer) => reply(encode(&answer)),
                None => Done::Quiet,
            },
            Err(e) => reply(error(format!("bad heartbeat: {e}"))),
        },
        control::UNREGISTER => match serde_json::from_slice::<Unregister>(body) {
            // Gone already: evicted when its process ended, or a goodbye
            // said again. The registry is open to read, so this tells
            // nobody anything new.
            Ok(u) if !reg.entries.contains_key(&u.instance) => reply(encode(&Ack::default())),
            Ok(u) if !reg.owns(who, &u.instance) => {
                not_yours(&format!("instance {:?}", u.instance))
            }
            Ok(u) => {
                unregister(reg, &u.instance, events);
                reply(encode(&Ack::default()))
            }
            Err(e) => reply(error(format!("bad unregister: {e}"))),
        },
        control::UPDATE => match serde_json::from_slice::<StatusUpdate>(body) {
            Ok(u) if !reg.entries.contains_key(&u.instance) => {
                reply(error(format!("unknown instance {:?}", u.instance)))
            }
            Ok(u) if !reg.owns(who, &u.instance) => {
                not_yours(&format!("instance {:?}", u.instance))
            }
            Ok(u) => {
                let _ = events.send(RegistryEvent::Updated(u));
                reply(encode(&Ack::default()))
            }
            Err(e) => reply(error(format!("bad update: {e}"))),
        },
        control::CLAIM => match serde_json::from_slice::<Claim>(body) {
            Ok(c) => match may_claim(reg, who, &c) {
                Ok(()) => reply(encode(&claim(reg, c))),
                Err(why) => Done::Forbidden(why.to_string()),
            },
            Err(e) => reply(error(format!("bad claim: {e}"))),
        },
        control::ENQUEUE | control::TAKE | control::QUEUE
            if !queue_named(body).is_none_or(|q| is_valid_queue_name(&q)) =>
        {
            reply(error(format!(
                "invalid queue name {:?}",
                queue_named(body).unwrap_or_default()
            )))
        }
        control::DURABLE => match serde_json::from_slice::<DurableGroup>(body) {
            Ok(g) => match reg.declare(g) {
                Ok(()) => reply(encode(&Ack::default())),
                Err(e) => reply(error(e.to_string())),
            },
            Err(e) => reply(error(format!("bad durable group: {e}"))),
        },
        control::ENQUEUE => match serde_json::from_slice::<Enqueue>(body) {
            Ok(_) if reg.log.as_ref().is_some_and(JobLog::is_behind) => reply(error(
                "the job log is behind the producers; try again shortly".to_owned(),
            )),
            Ok(q) => match reg.queues.push(&q.queue, q.job) {
                Ok(key) => {
                    reg.serve_waiters(Instant::now());
                    if reg.log.is_none() {
                        return reply(encode(&Ack::default()));
                    }
                    // Answered once the job is on disk (`Registry::committed`).
                    reg.accepted.push(Accepted {
                        identity: identity.clone(),
                        header,
                        queue: q.queue,
                        key,
                    });
                    Done::Parked
                }
                Err(e) => reply(error(e.to_string())),
            },
            Err(e) => reply(error(format!("bad enqueue: {e}"))),
        },
        control::TAKE => match serde_json::from_slice::<Take>(body) {
            Ok(t) if !reg.holds_for(who, &t.holder) => not_yours(&format!("holder {:?}", t.holder)),
            Ok(t) => take(reg, identity, header, t).map_or(Done::Parked, reply),
            Err(e) => reply(encode(&TakeReply {
                jobs: Vec::new(),
                error: Some(format!("bad take: {e}")),
            })),
        },
        control::SETTLE => match serde_json::from_slice::<Settle>(body) {
            Ok(s) => match reg.queues.holder_of(&s.queue, s.tag) {
                Some(h) if !reg.holds_for(who, h) => {
                    not_yours(&format!("job {} of {:?}", s.tag, s.queue))
                }
                _ => reply(settle(reg, s)),
            },
            Err(e) => reply(error(format!("bad settle: {e}"))),
        },
        control::RELEASE => match serde_json::from_slice::<Release>(body) {
            Ok(r) if !reg.holds_for(who, &r.holder) => not_yours(&format!("holder {:?}", r.holder)),
            Ok(r) => {
                reg.release_instance(&r.holder, None);
                reg.serve_waiters(Instant::now());
                reply(encode(&Ack::default()))
            }
            Err(e) => reply(error(format!("bad release: {e}"))),
        },
        control::VERIFY => match serde_json::from_slice::<Verify>(body) {
            // Only an instance checks the callers of its own methods.
            Ok(v) if !reg.owns(who, &v.instance) => {
                not_yours(&format!("instance {:?}", v.instance))
            }
            Ok(v) => {
                let valid = match (&reg.secret, KeyId::parse(&v.key)) {
                    (Some(secret), Ok(key)) => secret
                        .secret_of(&key)
                        .verify(&[b"muster-call", v.instance.as_bytes()], &v.mac),
                    // An open bus has no credentials to check: everyone is
                    // let in.
                    (None, _) => true,
                    (Some(_), Err(_)) => false,
                };
                reply(encode(&Verified { valid }))
            }
            Err(e) => reply(error(format!("bad verify: {e}"))),
        },
        control::QUEUE => match serde_json::from_slice::<QueueOp>(body) {
            Ok(op) => {
                let r = reg.queues.command(&op.queue, &op.command);
                reg.serve_waiters(Instant::now());
                reply(encode(&QueueOpReply {
                    reply: Some(r),
                    error: None,
                }))
            }
            Err(e) => reply(encode(&QueueOpReply {
                reply: None,
                error: Some(format!("bad queue command: {e}")),
            })),
        },
        other => reply(error(format!("unknown control verb {other:?}"))),
    }
}

/// The `queue` field of a queue verb's body, if it has one.
fn queue_named(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        queue: String,
    }
    serde_json::from_slice::<Named>(body).ok().map(|n| n.queue)
}

pub(super) fn error(why: String) -> Bytes {
    encode(&Ack { error: Some(why) })
}

/// A fresh nonce for this connection.
fn hello(reg: &mut Registry, identity: &Bytes) -> Hello {
    let nonce = muster_core::auth::random_hex(16).unwrap_or_else(|_| super::random_epoch());
    if reg.sessions.len() >= MAX_SESSIONS {
        let mut by_age: Vec<(Bytes, Instant)> = reg
            .sessions
            .iter()
            .map(|(k, (_, t))| (k.clone(), *t))
            .collect();
        by_age.sort_by_key(|(_, t)| *t);
        for (k, _) in by_age.into_iter().take(MAX_SESSIONS / 2) {
            reg.sessions.remove(&k);
        }
    }
    reg.sessions
        .insert(identity.clone(), (nonce.clone(), Instant::now()));
    Hello { nonce }
}

/// The key a request was made with: `None` on an open bus.
fn authenticate(
    reg: &Registry,
    identity: &Bytes,
    env: &Envelope,
    verb: &str,
) -> Result<Option<KeyId>, (&'static str, String)> {
    let Some(secret) = &reg.secret else {
        return Ok(None);
    };
    let Some((key, mac)) = env.header.auth.as_deref().and_then(|a| a.split_once(' ')) else {
        return Err((
            "credential",
            format!("{verb} needs a bus credential (MUSTER_CREDENTIAL; see docs/security.md)"),
        ));
    };
    let key = KeyId::parse(key).map_err(|e| ("credential", e.to_string()))?;
    let Some((nonce, _)) = reg.sessions.get(identity) else {
        return Err(("nonce", "no session: say hello first".to_owned()));
    };
    let parts: [&[u8]; 5] = [
        b"muster-registry",
        nonce.as_bytes(),
        env.header.id.as_bytes(),
        verb.as_bytes(),
        &env.body,
    ];
    if secret.secret_of(&key).verify(&parts, mac) {
        Ok(Some(key))
    } else {
        Err(("credential", format!("wrong credential for {key}")))
    }
}

/// True for the names only the host may register.
fn reserved(service: &str) -> bool {
    service.starts_with("muster.") || service == muster_core::registry::HOST_SERVICE
}

fn register(
    reg: &mut Registry,
    options: &BusOptions,
    body: &[u8],
    who: Option<&KeyId>,
    events: &Events,
) -> Done {
    if body.len() > options.max_registration_size {
        return Done::Reply(error(format!(
            "registration of {} bytes is over the limit of {}",
            body.len(),
            options.max_registration_size
        )));
    }
    let info = match serde_json::from_slice::<InstanceInfo>(body) {
        Ok(info) => info,
        Err(e) => return Done::Reply(error(format!("bad registration: {e}"))),
    };
    if let Some(key) = who {
        if reserved(&info.service) && *key != KeyId::Bus {
            return Done::Forbidden(format!("{:?} is reserved to the host", info.service));
        }
        let foreign = reg
            .entries
            .get(&info.instance)
            .is_some_and(|e| e.owner.as_ref() != Some(key) && *key != KeyId::Bus);
        if foreign || !key.may_be(&info.instance) {
            return Done::Forbidden(format!(
                "instance {:?} is not this credential's",
                info.instance
            ));
        }
    }
    if reg.entries.len() >= options.max_instances && !reg.entries.contains_key(&info.instance) {
        return Done::Reply(error(format!(
            "the registry is full ({} instances)",
            options.max_instances
        )));
    }
    tracing::info!(service = %info.service, instance = %info.instance, endpoint = %info.endpoint, "instance registered");
    let _ = events.send(RegistryEvent::Registered(info.clone()));
    let id = info.instance.clone();
    reg.entries.insert(
        id.clone(),
        Entry {
            info,
            last_seen: Instant::now(),
            ttl: allowed_silence(options, heartbeat_interval(options, reg.entries.len() + 1)),
            asked: None,
            owner: who.cloned(),
        },
    );
    reg.changed([id]);
    Done::Reply(encode(&Ack::default()))
}

/// Refreshes the instances this credential owns; reports the ones the bus
/// does not know (register them again). Others' are left alone. Past
/// [`BusOptions::heartbeats_per_sec`] instances the reply asks for slower
/// heartbeats, and the entries refreshed wait 3.3 of those intervals.
/// A quiet heartbeat is answered only when it must be (`None` else): an
/// instance is unknown, or the sender's interval is out of step.
///
/// The silence allowed also covers the interval the sender holds: told a
/// shorter one now (many instances just went), it may still send its next
/// heartbeat by the longer one.
fn heartbeat(
    reg: &mut Registry,
    options: &BusOptions,
    hb: Heartbeat,
    who: Option<&KeyId>,
) -> Option<HeartbeatReply> {
    let now = Instant::now();
    let every = heartbeat_interval(options, reg.entries.len());
    let mut unknown = Vec::new();
    for id in &hb.instances {
        let owned = reg.owns(who, id);
        match reg.entries.get_mut(id) {
            Some(e) if owned => {
                e.last_seen = now;
                e.ttl = silence_after(options, every, hb.asked_ms, e.asked);
                e.asked = every;
            }
            Some(_) => {}
            None => unknown.push(id.clone()),
        }
    }
    let answer = HeartbeatReply {
        unknown,
        every_ms: every.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    must_answer(&hb, &answer).then_some(answer)
}

/// Whether `answer` goes back: always to a sender that is not quiet; to a
/// quiet one when an instance is unknown or its interval is out of step.
fn must_answer(hb: &Heartbeat, answer: &HeartbeatReply) -> bool {
    let in_step = match (hb.asked_ms, answer.every_ms) {
        (None, None) => true,
        (Some(asked), Some(wanted)) => asked.abs_diff(wanted) <= wanted / u64::from(QUIET_SLACK),
        _ => false,
    };
    !hb.quiet || !answer.unknown.is_empty() || !in_step
}

/// A quiet sender is told a new interval only when the one it keeps is
/// off by more than a tenth: instances coming and going move the interval
/// a little all the time, and telling each move would answer every
/// heartbeat again.
const QUIET_SLACK: u32 = 10;

/// The silence allowed an instance after a heartbeat that was asked for
/// one `every` so often: also the interval its sender holds until its next
/// one, which a quiet sender says (`asked_ms`) and an older one was told
/// last time (`told`). A sender's word is capped at
/// [`control::SLOWEST_HEARTBEAT`]: it must not make the silence overflow.
fn silence_after(
    options: &BusOptions,
    every: Option<Duration>,
    asked_ms: Option<u64>,
    told: Option<Duration>,
) -> Duration {
    let says = asked_ms.map(|ms| Duration::from_millis(ms).min(control::SLOWEST_HEARTBEAT));
    // `None` (the sender's own interval, a second) is the shortest.
    allowed_silence(options, every.max(says).max(told))
}

/// How long an instance that sends a heartbeat `every` so often (`None`:
/// its own interval, a second) may be silent before it is dropped: the
/// bus's ttl, or three of those intervals (of a quiet sender's, up to a
/// tenth slower than asked).
fn allowed_silence(options: &BusOptions, every: Option<Duration>) -> Duration {
    // Three intervals of a sender up to a tenth (`QUIET_SLACK`) slower: 3.3.
    every.map_or(options.ttl, |every| {
        options.ttl.max(every * 3 * (QUIET_SLACK + 1) / QUIET_SLACK)
    })
}

/// The interval the bus asks of each heartbeat sender so that `instances`
/// send no more than `heartbeats_per_sec` a second in all; `None` while
/// they fit in one a second each (senders keep their own interval).
fn heartbeat_interval(options: &BusOptions, instances: usize) -> Option<Duration> {
    options.heartbeat_interval(instances)
}

fn unregister(reg: &mut Registry, instance: &str, events: &Events) {
    if let Some(e) = reg.entries.remove(instance) {
        // A graceful goodbye: its consumers finish their jobs and release
        // the rest themselves (or fall silent and are given up).
        tracing::info!(service = %e.info.service, instance, "instance left");
        let _ = events.send(RegistryEvent::Unregistered {
            service: e.info.service,
            instance: instance.to_owned(),
        });
        reg.changed([instance.to_owned()]);
    }
}

/// Why a claim was refused (it goes back to the claimant as text).
#[derive(Debug, thiserror::Error)]
enum ClaimRefusal {
    #[error("holder {0:?} is not a registered instance")]
    Unregistered(String),
    #[error("holder {0:?} is not this credential's")]
    NotYours(String),
    #[error("{holder} may claim only keys of its service ({prefix}...)")]
    OtherService { holder: String, prefix: String },
}

/// A claim is made as a registered instance of this credential, on a key of
/// that instance's service (`<service>/...`), so nobody can squat another
/// service's fire times.
fn may_claim(reg: &Registry, who: Option<&KeyId>, c: &Claim) -> Result<(), ClaimRefusal> {
    let Some(key) = who else {
        return Ok(());
    };
    if *key == KeyId::Bus {
        return Ok(());
    }
    let Some(entry) = reg.entries.get(&c.holder) else {
        return Err(ClaimRefusal::Unregistered(c.holder.clone()));
    };
    if entry.owner.as_ref() != Some(key) {
        return Err(ClaimRefusal::NotYours(c.holder.clone()));
    }
    let prefix = format!("{}/", entry.info.service);
    if !c.key.starts_with(&prefix) {
        return Err(ClaimRefusal::OtherService {
            holder: c.holder.clone(),
            prefix,
        });
    }
    Ok(())
}

fn claim(reg: &mut Registry, c: Claim) -> ClaimReply {
    let now = Instant::now();
    match reg.claims.get(&c.key) {
        Some((holder, until)) if *until > now => ClaimReply {
            granted: *holder == c.holder,
            holder: holder.clone(),
        },
        _ => {
            let ttl = Duration::from_millis(c.ttl_ms.min(86_400_000));
            reg.claims.insert(c.key, (c.holder.clone(), now + ttl));
            ClaimReply {
                granted: true,
                holder: c.holder,
            }
        }
    }
}

/// Jobs for `take`, or `None` when it is parked until one comes.
fn take(reg: &mut Registry, identity: &Bytes, header: Header, take: Take) -> Option<Bytes> {
    let now = Instant::now();
    reg.holders.insert(take.holder.clone(), now);
    let jobs = reg.queues.take(&take.queue, &take.holder, take.max);
    if jobs.is_empty() && take.wait_ms > 0 && take.max > 0 {
        let wait = Duration::from_millis(take.wait_ms.min(10_000));
        reg.waiters.push(Waiter {
            identity: identity.clone(),
            header,
            take,
            until: now + wait,
        });
        return None;
    }
    Some(encode(&TakeReply {
        jobs: jobs
            .into_iter()
            .map(|(tag, job)| Taken { tag, job })
            .collect(),
        error: None,
    }))
}

fn settle(reg: &mut Registry, s: Settle) -> Bytes {
    let outcome = match s.outcome.as_str() {
        "ack" => Outcome::Ack,
        "retry" => Outcome::Retry {
            after: Duration::ZERO,
            reason: s.reason.unwrap_or_default(),
        },
        "dead" => Outcome::Dead {
            reason: s.reason.unwrap_or_default(),
        },
        other => return error(format!("unknown outcome {other:?}")),
    };
    // An unknown tag was settled already or given back (its holder looked
    // dead): nothing to do either way.
    reg.queues.settle(&s.queue, s.tag, &outcome);
    reg.serve_waiters(Instant::now());
    encode(&Ack::default())
}

impl Registry {
    /// True when `who` may act for registered instance `id` (on an open
    /// bus, anyone).
    fn owns(&self, who: Option<&KeyId>, id: &str) -> bool {
        match who {
            None | Some(KeyId::Bus) => true,
            Some(key) => self
                .entries
                .get(id)
                .is_some_and(|e| e.owner.as_ref() == Some(key)),
        }
    }

    /// True when `who` may hold jobs as `holder` (`<instance>-<random>`):
    /// the instance must be this credential's.
    fn holds_for(&self, who: Option<&KeyId>, holder: &str) -> bool {
        match who {
            None | Some(KeyId::Bus) => true,
            Some(key @ KeyId::Instance(_)) => key.may_be(holder),
            Some(key) => self.entries.iter().any(|(id, e)| {
                e.owner.as_ref() == Some(key)
                    && holder
                        .strip_prefix(id.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_slow_down_past_the_rate_and_silence_allowed_grows_with_them() {
        let mut options = BusOptions::default(); // ttl 3 s
        // The default: 50 a second, so 1,000 send one every 20 s.
        assert_eq!(
            heartbeat_interval(&options, 1000),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            allowed_silence(&options, heartbeat_interval(&options, 1000)),
            Duration::from_secs(66)
        );
        options.heartbeats_per_sec = 125;
        assert_eq!(heartbeat_interval(&options, 0), None);
        assert_eq!(heartbeat_interval(&options, 125), None);
        assert_eq!(
            allowed_silence(&options, heartbeat_interval(&options, 125)),
            Duration::from_secs(3)
        );
        assert_eq!(
            heartbeat_interval(&options, 1000),
            Some(Duration::from_secs(8))
        );
        assert_eq!(
            allowed_silence(&options, heartbeat_interval(&options, 1000)),
            Duration::from_millis(26_400)
        );
        // Just past the rate: the ttl still covers three intervals.
        assert_eq!(
            heartbeat_interval(&options, 126),
            Some(Duration::from_millis(1008))
        );
        assert_eq!(
            allowed_silence(&options, heartbeat_interval(&options, 126)),
            Duration::from_micros(3_326_400)
        );
    }

    #[test]
    fn silence_allowed_covers_the_interval_the_sender_still_holds() {
        let options = BusOptions::default(); // ttl 3 s
        let s = Duration::from_secs;
        // Steady: asked for 20 s, holds 20 s.
        assert_eq!(
            silence_after(&options, Some(s(20)), Some(20_000), Some(s(20))),
            s(66)
        );
        // 1,000 instances just went: asked for its own second from now
        // on, it may still wait the 20 s it holds.
        assert_eq!(
            silence_after(&options, None, Some(20_000), Some(s(20))),
            s(66)
        );
        // An older sender says nothing: what it was told last counts.
        assert_eq!(silence_after(&options, None, None, Some(s(20))), s(66));
        // Once both have caught up: the bus's ttl.
        assert_eq!(silence_after(&options, None, None, None), s(3));
        // A sender's word is capped at a minute's interval, not trusted to
        // overflow.
        assert_eq!(silence_after(&options, None, Some(u64::MAX), None), s(198));
    }

    #[test]
    fn a_quiet_heartbeat_is_answered_only_with_news() {
        let quiet = |asked_ms| Heartbeat {
            instances: vec!["a".into()],
            quiet: true,
            asked_ms,
        };
        let answer = |unknown: &[&str], every_ms| HeartbeatReply {
            unknown: unknown.iter().map(|s| (*s).to_owned()).collect(),
            every_ms,
        };
        // Nothing to say: the sender's interval is the bus's.
        assert!(!must_answer(&quiet(None), &answer(&[], None)));
        assert!(!must_answer(&quiet(Some(8000)), &answer(&[], Some(8000))));
        // Within a tenth: instances came and went, not worth a message.
        assert!(!must_answer(&quiet(Some(8000)), &answer(&[], Some(8800))));
        assert!(!must_answer(&quiet(Some(8000)), &answer(&[], Some(7280))));
        // News: a slower or faster interval, or back to the sender's own.
        assert!(must_answer(&quiet(Some(8000)), &answer(&[], Some(8900))));
        assert!(must_answer(&quiet(Some(8000)), &answer(&[], Some(7200))));
        assert!(must_answer(&quiet(None), &answer(&[], Some(1008))));
        assert!(must_answer(&quiet(Some(1008)), &answer(&[], None)));
        // An instance the bus does not know (it restarted).
        assert!(must_answer(&quiet(None), &answer(&["a"], None)));
        // A sender that is not quiet (an older one) is always answered.
        let old: Heartbeat = serde_json::from_str(r#"{"instances": ["a"]}"#).unwrap();
        assert!(must_answer(&old, &answer(&[], None)));
    }
}
