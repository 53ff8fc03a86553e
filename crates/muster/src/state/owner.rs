//! The owner's side of a state: the value, its sequence number and epoch,
//! publishing changes in order, answering snapshots, beating, persisting.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::store::Store;
use super::{Snapshot, StateHandle, StateKind, StateMessage};
use crate::client::Client;
use crate::transport::BoxFuture;
use crate::{Error, ErrorKind, RpcError};

/// How often the owner tells readers its sequence number when idle.
pub(crate) const BEAT: Duration = Duration::from_millis(500);

/// The value and its sequence number, under one short (non-async) lock.
struct Current<S> {
    value: Arc<S>,
    seq: u64,
}

/// An owned state.
pub(crate) struct Owner<S: StateKind> {
    name: String,
    topic: String,
    epoch: String,
    client: Client,
    /// Held across persisting and publishing, so changes go out in
    /// sequence order and a snapshot (taken under it) never shows a
    /// change that is not persisted yet.
    order: tokio::sync::Mutex<Option<Store>>,
    /// The value only this lock guards: handlers take an `Arc` of it
    /// without waiting on a publish, and a change clones the value only
    /// while a handler still holds an older one.
    current: std::sync::Mutex<Current<S>>,
    stop: CancellationToken,
}

impl<S: StateKind> Owner<S> {
    /// Starts owning `name`: loads it from `persist` when given (keeping
    /// its epoch and sequence), and beats until stopped.
    pub(crate) async fn start(
        service: &str,
        name: &str,
        persist: Option<String>,
        client: Client,
    ) -> Result<Arc<Self>, Error> {
        let io = |e: super::store::StoreError| {
            Error::with_source(ErrorKind::Io, format!("state {service}/{name}: {e}"), e)
        };
        let (epoch, seq, value, store) = match &persist {
            Some(target) => {
                let (mut store, loaded) =
                    Store::open::<S>(target, service, name).await.map_err(io)?;
                let (epoch, seq, value) = match loaded {
                    Some(l) => (l.epoch, l.seq, l.value),
                    None => (muster_core::id::transaction_id(), 0, S::default()),
                };
                store.reset(&epoch, seq, &value).await.map_err(io)?;
                tracing::info!(state = name, seq, store = %target, "state loaded");
                (epoch, seq, value, Some(store))
            }
            None => (muster_core::id::transaction_id(), 0, S::default(), None),
        };
        let owner = Arc::new(Self {
            name: name.to_owned(),
            topic: super::topic(service, name),
            epoch,
            client,
            order: tokio::sync::Mutex::new(store),
            current: std::sync::Mutex::new(Current {
                value: Arc::new(value),
                seq,
            }),
            stop: CancellationToken::new(),
        });
        let beating = Arc::downgrade(&owner);
        let stop = owner.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BEAT);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(owner) = beating.upgrade() else {
                    break;
                };
                owner.beat().await;
            }
        });
        Ok(owner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current<S>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn beat(&self) {
        let _order = self.order.lock().await;
        let seq = self.lock().seq;
        let msg: StateMessage<S::Change> = StateMessage {
            epoch: self.epoch.clone(),
            seq,
            change: None,
        };
        if let Err(e) = self.client.publish(&self.topic, &msg).await {
            tracing::debug!(state = %self.name, error = %e, "beat not sent");
        }
    }

    /// Applies `f` to the value; publishes the change it made (if any)
    /// with the next sequence number, which it returns. The change's
    /// event carries `traceparent`: the trace of the handler that made it.
    pub(crate) async fn update(
        &self,
        f: impl FnOnce(&mut S),
        traceparent: Option<String>,
    ) -> Result<u64, Error> {
        let mut store = self.order.lock().await;
        let (seq, change) = {
            let mut cur = self.lock();
            let value = Arc::make_mut(&mut cur.value);
            f(value);
            let Some(change) = value.take_change() else {
                return Ok(cur.seq);
            };
            cur.seq += 1;
            (cur.seq, change)
        };
        // Persisted before any snapshot can show it (snapshots wait for
        // `order`): a restarted owner never reuses a number it gave out.
        if let Some(store) = &mut *store {
            let value = self.lock().value.clone();
            store
                .append(&self.epoch, seq, &change, || (*value).clone())
                .await
                .map_err(|e| {
                    Error::with_source(ErrorKind::Io, format!("state {}: {e}", self.name), e)
                })?;
        }
        let msg = StateMessage {
            epoch: self.epoch.clone(),
            seq,
            change: Some(change),
        };
        // Published under `order`: readers see changes in sequence order.
        self.client
            .publish_in(&self.topic, &msg, None, traceparent)
            .await?;
        Ok(seq)
    }

    /// The value and its sequence number, without waiting.
    pub(crate) fn current(&self) -> super::State<S> {
        let cur = self.lock();
        super::State {
            value: cur.value.clone(),
            seq: cur.seq,
            stale: false,
        }
    }
}

/// The runtime's handle on an owned state.
pub(crate) struct OwnerHandle<S: StateKind>(pub(crate) Arc<Owner<S>>);

impl<S: StateKind> StateHandle for OwnerHandle<S> {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn snapshot(&self) -> Option<BoxFuture<'static, Result<Value, RpcError>>> {
        let owner = self.0.clone();
        Some(Box::pin(async move {
            // Under `order`: only persisted, published changes; serialized
            // after the lock is let go.
            let state = {
                let _order = owner.order.lock().await;
                owner.current()
            };
            serde_json::to_value(Snapshot {
                epoch: owner.epoch.clone(),
                seq: state.seq(),
                kind: S::KIND.to_owned(),
                value: state.value(),
            })
            .map_err(RpcError::internal)
        }))
    }

    fn as_any(&self) -> Arc<dyn Any + Send + Sync> {
        self.0.clone()
    }

    fn stop(&self) {
        self.0.stop.cancel();
    }
}
