//! The registry as a host on a broker sees it. The embedded bus tells the
//! host of each registration as it happens ([`muster_zmq::Bus::watch`]);
//! RabbitMQ, Redis and NATS have no such feed, so this task lists the
//! instances on the bus every [`POLL_EVERY`] and turns the differences
//! into the same [`RegistryEvent`]s: an instance that appears is
//! registered (ready), one missing from [`MISSES`] lists in a row has
//! expired (its heartbeats stopped). Progress reports (`ctx.update`)
//! arrive as events on [`UPDATE_TOPIC`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use muster::transport::{BoxFuture, EventSink, SharedTransport, Subscribed};
use muster::wire::Envelope;
use muster_core::registry::{StatusUpdate, UPDATE_TOPIC};
use muster_zmq::RegistryEvent;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How often the instances are listed: a registration is seen within this.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(250);

/// Lists in a row an instance must be missing from before it counts as
/// expired: one list that came back short (a slow answer to a discovery
/// broadcast) must not cost a healthy instance its life.
pub(crate) const MISSES: u32 = 4;

/// Registry changes kept for a slow receiver (as the embedded bus keeps).
const BACKLOG: usize = 4096;

/// A running watch; dropping it stops it.
pub(crate) struct Watch {
    stop: CancellationToken,
    updates: Option<Box<dyn Subscribed>>,
    events: broadcast::Sender<RegistryEvent>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Watch {
    /// Starts watching the registry of `transport`.
    ///
    /// # Errors
    /// The bus does not take the subscription to progress reports.
    pub(crate) async fn start(transport: SharedTransport) -> Result<Self, muster::Error> {
        let (events, _) = broadcast::channel(BACKLOG);
        let updates = transport
            .subscribe(
                &[UPDATE_TOPIC.to_owned()],
                Arc::new(Updates(events.clone())),
            )
            .await?;
        let stop = CancellationToken::new();
        tokio::spawn(poll(transport, events.clone(), stop.clone()));
        Ok(Self {
            stop,
            updates: Some(updates),
            events,
        })
    }

    /// Registry changes from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// Stops listing and the subscription.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(u) = self.updates.take() {
            u.cancel().await;
        }
    }
}

/// Progress reports published by instances, as registry events.
struct Updates(broadcast::Sender<RegistryEvent>);

impl EventSink for Updates {
    fn deliver(&self, event: Envelope) -> BoxFuture<'static, ()> {
        match serde_json::from_slice::<StatusUpdate>(&event.body) {
            Ok(u) => {
                let _ = self.0.send(RegistryEvent::Updated(u));
            }
            Err(e) => tracing::debug!(error = %e, "a progress report that cannot be read; skipped"),
        }
        Box::pin(std::future::ready(()))
    }
}

/// Lists the instances until `stop`, sending what changed.
async fn poll(
    transport: SharedTransport,
    events: broadcast::Sender<RegistryEvent>,
    stop: CancellationToken,
) {
    let mut known = Known::default();
    let mut every = tokio::time::interval(POLL_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let listed = tokio::select! {
            () = stop.cancelled() => return,
            l = transport.instances() => l,
        };
        match listed {
            Ok(instances) => {
                for e in known.update(instances) {
                    let _ = events.send(e);
                }
            }
            // Nobody expires while the bus cannot be asked.
            Err(e) => tracing::warn!(error = %e, "cannot list the instances on the bus"),
        }
    }
}

/// The instances seen, with how many lists in a row missed each.
#[derive(Default)]
struct Known(HashMap<String, (String, u32)>);

impl Known {
    /// Takes one list; returns the registrations and expiries it makes.
    fn update(&mut self, listed: Vec<muster_core::registry::InstanceInfo>) -> Vec<RegistryEvent> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for info in listed {
            seen.insert(info.instance.clone());
            match self.0.get_mut(&info.instance) {
                Some((_, misses)) => *misses = 0,
                None => {
                    self.0
                        .insert(info.instance.clone(), (info.service.clone(), 0));
                    out.push(RegistryEvent::Registered(info));
                }
            }
        }
        self.0.retain(|instance, (service, misses)| {
            if seen.contains(instance) {
                return true;
            }
            *misses += 1;
            if *misses < MISSES {
                return true;
            }
            out.push(RegistryEvent::Expired {
                service: service.clone(),
                instance: instance.clone(),
            });
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::registry::InstanceInfo;

    fn info(instance: &str) -> InstanceInfo {
        serde_json::from_value(serde_json::json!({
            "service": "echo",
            "instance": instance,
            "version": "1",
            "endpoint": "",
            "methods": [],
        }))
        .unwrap()
    }

    #[test]
    fn an_instance_is_registered_once_and_expires_after_its_misses() {
        let mut k = Known::default();
        let e = k.update(vec![info("a")]);
        assert!(matches!(&e[..], [RegistryEvent::Registered(i)] if i.instance == "a"));
        assert!(
            k.update(vec![info("a")]).is_empty(),
            "seen again: nothing new"
        );
        for _ in 1..MISSES {
            assert!(k.update(vec![]).is_empty(), "a short list is not an expiry");
        }
        let e = k.update(vec![]);
        assert!(
            matches!(&e[..], [RegistryEvent::Expired { instance, .. }] if instance == "a"),
            "{e:?}"
        );
        // Back after a miss or two: counted from zero again.
        k.update(vec![info("b")]);
        k.update(vec![]);
        k.update(vec![info("b")]);
        for _ in 1..MISSES {
            assert!(k.update(vec![]).is_empty());
        }
    }
}
