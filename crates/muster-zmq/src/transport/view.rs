//! The caller's copy of the registry, and the connections to instances.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use muster_core::registry::InstanceInfo;
use muster_core::{Error, ErrorKind, RpcError};

use super::rpc_client::Conn;
use super::{Inner, Mode, ZmqOptions};
use crate::control::{LIST, List, ListReply};

/// One instance and the connection to it.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) info: InstanceInfo,
    pub(crate) conn: Arc<Conn>,
    /// What requests to it carry when it requires callers' credentials.
    pub(crate) auth: Option<String>,
}

impl Route {
    /// How requests to this instance are framed: one frame when it says
    /// it reads them (`InstanceInfo::one_frame`), else three.
    pub(crate) fn framing(&self) -> crate::socket::Framing {
        if self.info.one_frame {
            crate::socket::Framing::One
        } else {
            crate::socket::Framing::Three
        }
    }
}

/// A caller's proof for `info`, when it asks for one and this process has
/// a credential: a MAC over the instance id, made once per route.
fn caller_proof(info: &InstanceInfo, options: &ZmqOptions) -> Option<String> {
    let c = options.credential.as_ref().filter(|_| info.require_auth)?;
    Some(format!(
        "{} {}",
        c.key_id(),
        c.mac(&[b"muster-call", info.instance.as_bytes()])
    ))
}

#[derive(Debug, Default)]
struct Snapshot {
    epoch: Option<String>,
    version: Option<u64>,
    /// foldhash, not SipHash: looked up on every call (docs/benchmarks.md,
    /// "The allocator"); its keys come from the registry, not a caller.
    by_service: foldhash::HashMap<String, Vec<Arc<Route>>>,
}

/// Registry copy plus a lock that makes refreshes one at a time.
#[derive(Debug)]
pub(crate) struct RegistryView {
    snapshot: RwLock<Arc<Snapshot>>,
    refreshing: tokio::sync::Mutex<()>,
    refresher_started: std::sync::Once,
    rotor: AtomicUsize,
    direct: bool,
}

impl RegistryView {
    pub(crate) async fn new(mode: &Mode, options: &ZmqOptions) -> Self {
        let mut snapshot = Snapshot::default();
        if let Mode::Direct(addresses) = mode {
            for (service, endpoints) in &addresses.services {
                let mut routes = Vec::new();
                for ep in endpoints {
                    let info = InstanceInfo {
                        queues: Vec::new(),
                        service: service.clone(),
                        instance: ep.clone(),
                        version: String::new(),
                        endpoint: ep.clone(),
                        methods: Vec::new(),
                        subscriptions: Vec::new(),
                        pid: 0,
                        transaction: None,
                        require_auth: false,
                        one_frame: false,
                    };
                    routes.push(Arc::new(Route {
                        auth: caller_proof(&info, options),
                        info,
                        conn: Conn::open(ep, options).await,
                    }));
                }
                snapshot.by_service.insert(service.clone(), routes);
            }
        }
        Self {
            snapshot: RwLock::new(Arc::new(snapshot)),
            refreshing: tokio::sync::Mutex::new(()),
            refresher_started: std::sync::Once::new(),
            rotor: AtomicUsize::new(0),
            direct: matches!(mode, Mode::Direct(_)),
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Every instance known, by service and instance.
    pub(crate) fn all(&self) -> Vec<InstanceInfo> {
        let mut all: Vec<InstanceInfo> = self
            .current()
            .by_service
            .values()
            .flatten()
            .map(|r| r.info.clone())
            .collect();
        all.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
        all
    }

    /// Chooses the instance for a call: the named one, or the one with
    /// the fewest outstanding requests among those serving `method`.
    /// `exclude` skips an instance that just failed.
    pub(crate) async fn pick(
        &self,
        inner: &Arc<Inner>,
        service: &str,
        method: &str,
        instance: Option<&str>,
        exclude: Option<&str>,
    ) -> Result<Arc<Route>, RpcError> {
        self.ensure_refresher(inner);
        let mut snap = self.current();
        if !snap.by_service.contains_key(service) && !self.direct {
            // Maybe it just started: ask the bus before saying "unknown".
            // Boxed: a refresh's future is kilobytes, and every call's
            // future would otherwise carry (and copy) room for it.
            Box::pin(self.refresh(inner))
                .await
                .map_err(RpcError::from)?;
            snap = self.current();
        }
        let routes = snap.by_service.get(service).ok_or_else(|| {
            RpcError::method_not_found(format!(
                "{service}.{method} (no service {service:?} is registered)"
            ))
        })?;
        let builtin = method.starts_with('$');
        let serves = |r: &&Arc<Route>| {
            instance.is_none_or(|id| r.info.instance == id)
                && exclude.is_none_or(|id| r.info.instance != id)
                && (self.direct || builtin || r.info.has_method(method))
        };
        // Fewest outstanding requests wins; ties rotate.
        let start = self.rotor.fetch_add(1, Ordering::Relaxed);
        let n = routes.len();
        let best = (0..n)
            .map(|i| &routes[(start + i) % n.max(1)])
            .filter(serves)
            .min_by_key(|r| r.conn.outstanding());
        if let Some(best) = best {
            return Ok(best.clone());
        }
        if let Some(id) = instance {
            return Err(RpcError::unavailable(format!(
                "instance {id} of {service} is not registered"
            )));
        }
        if routes.iter().any(|r| r.info.has_method(method)) {
            return Err(RpcError::unavailable(format!(
                "no other instance of {service} to retry on"
            )));
        }
        Err(RpcError::method_not_found(format!("{service}.{method}")))
    }

    fn ensure_refresher(&self, inner: &Arc<Inner>) {
        if self.direct {
            return;
        }
        self.refresher_started.call_once(|| {
            super::spawn_periodic(inner, inner.options.refresh_every, |inner| async move {
                if let Err(e) = inner.view.refresh(&inner).await {
                    tracing::debug!(error = %e, "registry refresh failed; keeping the last view");
                }
            });
        });
    }

    /// Fetches the registry if it changed (what changed since this copy's
    /// version, where the bus can say), reusing live connections and the
    /// routes of instances that did not change.
    pub(crate) async fn refresh(&self, inner: &Arc<Inner>) -> Result<(), Error> {
        let Some(control) = &inner.control else {
            return Ok(());
        };
        let _one = self.refreshing.lock().await;
        let old = self.current();
        let req = List {
            epoch: old.epoch.clone(),
            version: old.version,
            changes: true,
        };
        let reply: ListReply = control
            .call(LIST, &req, inner.options.control_timeout)
            .await?;
        let mut conns: HashMap<&str, Arc<Conn>> = old
            .by_service
            .values()
            .flatten()
            .map(|r| (r.info.endpoint.as_str(), r.conn.clone()))
            .collect();
        // The routes kept as they were, and the instances to make routes for.
        let (mut kept, fresh): (Vec<Arc<Route>>, Vec<InstanceInfo>) =
            match (reply.instances, reply.changed) {
                (Some(all), _) => (Vec::new(), all),
                // Only ever an answer to this copy's own (epoch, version).
                (None, Some(changed))
                    if reply.epoch.as_str() == old.epoch.as_deref().unwrap_or("") =>
                {
                    let removed = reply.removed.unwrap_or_default();
                    let touched: HashSet<&str> = removed
                        .iter()
                        .map(String::as_str)
                        .chain(changed.iter().map(|i| i.instance.as_str()))
                        .collect();
                    let kept = old
                        .by_service
                        .values()
                        .flatten()
                        .filter(|r| !touched.contains(r.info.instance.as_str()))
                        .cloned()
                        .collect();
                    (kept, changed)
                }
                (None, Some(_)) => {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "the bus sent changes to a registry copy of another run",
                    ));
                }
                (None, None) => return Ok(()),
            };
        for info in fresh {
            let conn = match conns.get(info.endpoint.as_str()) {
                Some(c) => c.clone(),
                None => Conn::open(&info.endpoint, &inner.options).await,
            };
            kept.push(Arc::new(Route {
                auth: caller_proof(&info, &inner.options),
                info,
                conn,
            }));
        }
        for r in &kept {
            conns.remove(r.info.endpoint.as_str());
        }
        for (endpoint, gone) in conns {
            // Calls in flight keep their connection (a draining instance
            // still answers them); only calls to a peer that is not even
            // connected are failed now rather than at their deadline.
            gone.fail_if_unconnected(&format!("instance at {endpoint} left the registry"));
        }
        let mut by_service: foldhash::HashMap<String, Vec<Arc<Route>>> =
            foldhash::HashMap::default();
        for route in kept {
            by_service
                .entry(route.info.service.clone())
                .or_default()
                .push(route);
        }
        for routes in by_service.values_mut() {
            routes.sort_by(|a, b| a.info.instance.cmp(&b.info.instance));
        }
        *self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Snapshot {
            epoch: Some(reply.epoch),
            version: Some(reply.version),
            by_service,
        });
        Ok(())
    }
}
