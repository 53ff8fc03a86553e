//! Replicated state: a value owned by one service and kept in step on
//! readers.
//!
//! - [`Full<T>`]: the whole value is replaced on each change.
//! - [`Delta<V>`]: a keyed map; a change sets keys and deletes keys.
//!
//! The owner declares `.state_out::<S>(name)` and changes the value with
//! [`Ctx::update_state`](crate::Ctx::update_state) or
//! [`Ctx::set_state`](crate::Ctx::set_state): each change gets the owner's
//! next sequence number and is published on `muster.state.<service>.<name>`.
//! A reader declares `.state_in::<S>("service/name")`: it subscribes
//! first, then asks the owner for a snapshot (`$state`, with a timeout and
//! retries with backoff), applies buffered changes newer than the snapshot
//! in order, drops duplicates and stale ones, and on a gap or an owner
//! restart (a new epoch) asks again. The owner also sends a beat with its
//! sequence number twice a second, so a lost last change is noticed too.
//! Handlers read a consistent value with the [`State<S>`] extractor; it
//! never waits for the owner, and says when the value may be stale.
//!
//! ```
//! use muster::prelude::*;
//! use muster::state::{Delta, State};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Item { count: u32 }
//!
//! let owner = Service::new("stock")
//!     .state_out::<Delta<Item>>("items")
//!     .rpc("add", |ctx: Ctx, Args(name): Args<String>| async move {
//!         ctx.update_state::<Delta<Item>, _>(|s| {
//!             let count = s.get(&name).map_or(0, |i| i.count) + 1;
//!             s.insert(name, Item { count });
//!         })
//!         .await
//!     });
//! let reader = Service::new("shop")
//!     .state_in::<Delta<Item>>("stock/items")
//!     .rpc("count", |items: State<Delta<Item>>, Args(name): Args<String>| async move {
//!         // `items` is the value as of one sequence number; `items.is_stale()`
//!         // says whether the owner was heard from lately.
//!         items.get(&name).map_or(0, |i| i.count)
//!     });
//! ```

mod owner;
mod reader;
mod store;

pub use store::StoreError;

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub(crate) use owner::{Owner, OwnerHandle};
pub(crate) use reader::{Faults, Reader, ReaderHandle};

use crate::RpcError;
use crate::extract::{FromInvocation, Invocation};

/// The name of the built-in method that answers snapshots.
pub const SNAPSHOT_METHOD: &str = "$state";

/// The topic a state's changes are published on.
pub fn topic(service: &str, name: &str) -> String {
    format!("muster.state.{service}.{name}")
}

/// A kind of replicated value.
pub trait StateKind:
    Clone + Default + Serialize + DeserializeOwned + Send + Sync + fmt::Debug + 'static
{
    /// What one change carries.
    type Change: Clone + Serialize + DeserializeOwned + Send + Sync + fmt::Debug + 'static;
    /// `full` or `delta`, as in snapshots.
    const KIND: &'static str;
    /// Applies a change received from the owner.
    fn apply(&mut self, change: Self::Change);
    /// The change made by the owner's last `update_state` closure, if any.
    fn take_change(&mut self) -> Option<Self::Change>;
}

/// A value replaced whole on every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Full<T>(pub T);

impl<T> std::ops::Deref for Full<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Full<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Serialize for Full<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Full<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Full)
    }
}

impl<T> StateKind for Full<T>
where
    T: Clone + Default + Serialize + DeserializeOwned + Send + Sync + fmt::Debug + 'static,
{
    type Change = T;
    const KIND: &'static str = "full";

    fn apply(&mut self, change: T) {
        self.0 = change;
    }

    fn take_change(&mut self) -> Option<T> {
        Some(self.0.clone())
    }
}

/// One change of a [`Delta`] state: keys set and keys deleted (a key is in
/// at most one of the two).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "V: Serialize + DeserializeOwned")]
pub struct DeltaChange<V> {
    /// Keys set, with their new values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, V>,
    /// Keys deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub del: Vec<String>,
}

impl<V> Default for DeltaChange<V> {
    fn default() -> Self {
        Self {
            set: BTreeMap::new(),
            del: Vec::new(),
        }
    }
}

/// A keyed map replicated change by change.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta<V> {
    map: BTreeMap<String, V>,
    journal: Option<DeltaChange<V>>,
}

impl<V> Default for Delta<V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            journal: None,
        }
    }
}

impl<V> Delta<V> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// True when `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.map.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The whole map.
    pub fn as_map(&self) -> &BTreeMap<String, V> {
        &self.map
    }
}

impl<V: Clone> Delta<V> {
    /// Sets `key` (owner, inside `update_state`).
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        let j = self.journal.get_or_insert_with(DeltaChange::default);
        j.del.retain(|k| *k != key);
        j.set.insert(key.clone(), value.clone());
        self.map.insert(key, value);
    }

    /// Deletes `key` (owner, inside `update_state`); returns its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let old = self.map.remove(key)?;
        let j = self.journal.get_or_insert_with(DeltaChange::default);
        j.set.remove(key);
        j.del.push(key.to_owned());
        Some(old)
    }

    /// Deletes every key (owner, inside `update_state`).
    pub fn clear(&mut self) {
        let keys: Vec<String> = self.map.keys().cloned().collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

impl<V: Serialize> Serialize for Delta<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Delta<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            map: BTreeMap::deserialize(d)?,
            journal: None,
        })
    }
}

impl<V> StateKind for Delta<V>
where
    V: Clone + Serialize + DeserializeOwned + Send + Sync + fmt::Debug + 'static,
{
    type Change = DeltaChange<V>;
    const KIND: &'static str = "delta";

    fn apply(&mut self, change: DeltaChange<V>) {
        for k in &change.del {
            self.map.remove(k);
        }
        self.map.extend(change.set);
    }

    fn take_change(&mut self) -> Option<DeltaChange<V>> {
        self.journal.take()
    }
}

/// What the owner publishes: a change, or (without `change`) a beat that
/// only tells the current sequence number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "C: Serialize", deserialize = "C: DeserializeOwned"))]
pub struct StateMessage<C> {
    /// The owner's run (a new one after a restart without persistence).
    pub epoch: String,
    /// The sequence number of this change (of the last change, in a beat).
    pub seq: u64,
    /// The change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<C>,
}

/// The answer to `$state`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: DeserializeOwned"))]
pub struct Snapshot<S> {
    /// The owner's run.
    pub epoch: String,
    /// The sequence number the value includes.
    pub seq: u64,
    /// `full` or `delta`.
    pub kind: String,
    /// The value.
    pub value: S,
}

/// A consistent read of a state, owned or replicated: the value as of one
/// sequence number. Cheap to take; it never waits for the owner.
#[derive(Debug, Clone)]
pub struct State<S> {
    value: Arc<S>,
    seq: u64,
    stale: bool,
}

impl<S> State<S> {
    /// The value.
    pub fn value(&self) -> &S {
        &self.value
    }

    /// The sequence number of the last change it includes.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// True on a reader that has not heard from the owner lately (or has no
    /// snapshot yet): the value may be behind.
    pub fn is_stale(&self) -> bool {
        self.stale
    }
}

impl<S> std::ops::Deref for State<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.value
    }
}

impl<S: StateKind> FromInvocation for State<S> {
    fn from_invocation(inv: &Invocation) -> Result<Self, RpcError> {
        inv.ctx.state::<S>().ok_or_else(|| {
            RpcError::internal(format!(
                "handler asks for State<{}> but the service declares no such state",
                std::any::type_name::<S>()
            ))
        })
    }
}

/// What the runtime keeps of each state of an instance.
pub(crate) trait StateHandle: Send + Sync {
    /// The state's name on the owner.
    fn name(&self) -> &str;
    /// `Some` for owned states: the snapshot answer.
    fn snapshot(&self) -> Option<crate::transport::BoxFuture<'static, Result<Value, RpcError>>>;
    /// The typed handle, for `downcast`.
    fn as_any(&self) -> Arc<dyn Any + Send + Sync>;
    /// Stops background work (beats, snapshot requests).
    fn stop(&self);
}

/// The states of one instance, by type and by name.
#[derive(Default)]
pub(crate) struct States {
    pub(crate) handles: Vec<(TypeId, Arc<dyn StateHandle>)>,
}

impl States {
    pub(crate) fn get<S: StateKind>(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.handles
            .iter()
            .find(|(t, _)| *t == TypeId::of::<S>())
            .map(|(_, h)| h.as_any())
    }

    pub(crate) fn owned(&self, name: &str) -> Option<Arc<dyn StateHandle>> {
        self.handles
            .iter()
            .map(|(_, h)| h)
            .find(|h| h.name() == name && h.snapshot().is_some())
            .cloned()
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.handles.iter().map(|(_, h)| h.name()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_journal_and_apply_agree() {
        let mut owner: Delta<u32> = Delta::default();
        let mut reader: Delta<u32> = Delta::default();
        owner.insert("a", 1);
        owner.insert("b", 2);
        owner.remove("a");
        owner.insert("a", 3);
        owner.remove("b");
        let change = owner.take_change().unwrap();
        assert_eq!(change.set, BTreeMap::from([("a".to_owned(), 3)]));
        assert_eq!(change.del, ["b"]);
        reader.apply(change);
        assert_eq!(reader, owner);
        assert!(owner.take_change().is_none());
        let json = serde_json::to_string(&owner).unwrap();
        assert_eq!(json, r#"{"a":3}"#);
    }
}
