//! The registry: instances join with their endpoint and methods and stay
//! while they heartbeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use muster_core::registry::InstanceInfo;
use muster_core::wire::{Envelope, Header, Kind};
use omq_tokio::Socket;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::BusOptions;
use crate::control::{
    self, Ack, Claim, ClaimReply, Heartbeat, HeartbeatReply, List, ListReply, Unregister,
};
use crate::socket::{frames, log_dropped, routed_message};

/// Counters of the registry, for `muster bus` logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Instances registered now.
    pub instances: u64,
    /// Instances dropped for missing heartbeats.
    pub expired: u64,
    /// Messages that could not be decoded.
    pub bad_messages: u64,
}

#[derive(Debug, Default, Clone)]
pub(super) struct SharedStats(Arc<Counters>);

#[derive(Debug, Default)]
pub(super) struct Counters {
    instances: AtomicU64,
    expired: AtomicU64,
    bad_messages: AtomicU64,
}

impl SharedStats {
    pub(super) fn snapshot(&self) -> RegistryStats {
        RegistryStats {
            instances: self.0.instances.load(Ordering::Relaxed),
            expired: self.0.expired.load(Ordering::Relaxed),
            bad_messages: self.0.bad_messages.load(Ordering::Relaxed),
        }
    }
}

struct Entry {
    info: InstanceInfo,
    last_seen: Instant,
}

struct Registry {
    epoch: String,
    version: u64,
    entries: HashMap<String, Entry>,
    /// Claimed keys: key -> (holder, until).
    claims: HashMap<String, (String, Instant)>,
}

impl Registry {
    fn changed(&mut self) {
        self.version += 1;
    }

    fn list(&self, req: &List) -> ListReply {
        let unchanged =
            req.epoch.as_deref() == Some(self.epoch.as_str()) && req.version == Some(self.version);
        ListReply {
            epoch: self.epoch.clone(),
            version: self.version,
            instances: (!unchanged).then(|| {
                let mut v: Vec<InstanceInfo> =
                    self.entries.values().map(|e| e.info.clone()).collect();
                v.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
                v
            }),
        }
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
}

pub(super) async fn run(
    router: Socket,
    options: BusOptions,
    shutdown: CancellationToken,
    stats: SharedStats,
    events: tokio::sync::broadcast::Sender<RegistryEvent>,
    mut evictions: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut reg = Registry {
        epoch: random_epoch(),
        version: 0,
        entries: HashMap::new(),
        claims: HashMap::new(),
    };
    let mut sweep = tokio::time::interval(options.sweep_every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                let now = Instant::now();
                reg.claims.retain(|_, (_, until)| *until > now);
                let before = reg.entries.len();
                reg.entries.retain(|id, e| {
                    let alive = now.duration_since(e.last_seen) < options.ttl;
                    if !alive {
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
                    reg.changed();
                }
            }
            Some(id) = evictions.recv() => {
                let before = reg.entries.len();
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
                    }
                    !gone
                });
                if reg.entries.len() != before {
                    reg.changed();
                }
            }
            msg = router.recv() => {
                let Ok(msg) = msg else { break };
                let parts = frames(&msg);
                let Some((identity, rest)) = parts.split_first() else { continue };
                match Envelope::from_frames(rest) {
                    Ok(env) => {
                        if let Some(reply) = handle(&mut reg, env, &events) {
                            let _ = router.send(routed_message(identity.clone(), &reply)).await;
                        }
                    }
                    Err(e) => {
                        stats.0.bad_messages.fetch_add(1, Ordering::Relaxed);
                        log_dropped("registry message", &e);
                    }
                }
            }
        }
        stats
            .0
            .instances
            .store(reg.entries.len() as u64, Ordering::Relaxed);
    }
}

fn handle(
    reg: &mut Registry,
    env: Envelope,
    events: &tokio::sync::broadcast::Sender<RegistryEvent>,
) -> Option<Envelope> {
    if env.header.kind != Kind::Control {
        return None;
    }
    let verb = env.header.method.as_deref().unwrap_or("");
    let body = match verb {
        control::REGISTER => match serde_json::from_slice::<InstanceInfo>(&env.body) {
            Ok(info) => {
                tracing::info!(service = %info.service, instance = %info.instance, endpoint = %info.endpoint, "instance registered");
                let _ = events.send(RegistryEvent::Registered(info.clone()));
                reg.entries.insert(
                    info.instance.clone(),
                    Entry {
                        info,
                        last_seen: Instant::now(),
                    },
                );
                reg.changed();
                encode(&Ack::default())
            }
            Err(e) => encode(&Ack {
                error: Some(format!("bad registration: {e}")),
            }),
        },
        control::HEARTBEAT => {
            let hb: Heartbeat = serde_json::from_slice(&env.body).ok()?;
            let now = Instant::now();
            let mut unknown = Vec::new();
            for id in hb.instances {
                match reg.entries.get_mut(&id) {
                    Some(e) => e.last_seen = now,
                    None => unknown.push(id),
                }
            }
            encode(&HeartbeatReply { unknown })
        }
        control::UNREGISTER => {
            let u: Unregister = serde_json::from_slice(&env.body).ok()?;
            if let Some(e) = reg.entries.remove(&u.instance) {
                tracing::info!(service = %e.info.service, instance = %u.instance, "instance left");
                let _ = events.send(RegistryEvent::Unregistered {
                    service: e.info.service,
                    instance: u.instance,
                });
                reg.changed();
            }
            encode(&Ack::default())
        }
        control::CLAIM => match serde_json::from_slice::<Claim>(&env.body) {
            Ok(c) => {
                let now = Instant::now();
                let reply = match reg.claims.get(&c.key) {
                    Some((holder, until)) if *until > now => ClaimReply {
                        granted: *holder == c.holder,
                        holder: holder.clone(),
                    },
                    _ => {
                        let ttl = std::time::Duration::from_millis(c.ttl_ms.min(86_400_000));
                        reg.claims.insert(c.key, (c.holder.clone(), now + ttl));
                        ClaimReply {
                            granted: true,
                            holder: c.holder,
                        }
                    }
                };
                encode(&reply)
            }
            Err(e) => encode(&Ack {
                error: Some(format!("bad claim: {e}")),
            }),
        },
        control::LIST => {
            let req: List = serde_json::from_slice(&env.body).unwrap_or_default();
            encode(&reg.list(&req))
        }
        other => encode(&Ack {
            error: Some(format!("unknown control verb {other:?}")),
        }),
    };
    Some(Envelope::new(Header::reply_to(&env.header), body))
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn random_epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{:x}", nanos, std::process::id())
}
