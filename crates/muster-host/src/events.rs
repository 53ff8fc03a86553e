//! What the host publishes: one [`InstanceEvent`] per lifecycle change of
//! an instance on `muster.control.<transaction>`, one [`ContextEvent`] per
//! change of a transaction on `muster.context`, and one [`FleetEvent`] on
//! `muster.fleet` when another host of its bus joins or is lost.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Topic of context changes.
pub const CONTEXT_TOPIC: &str = "muster.context";

/// Topic of the changes of the other hosts of a fleet.
pub const FLEET_TOPIC: &str = "muster.fleet";

/// Another host of the bus joined (`up`) or was lost (`lost`: its control
/// service left the registry: the host died, or was cut off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEvent {
    /// The host that saw it.
    pub by: String,
    /// The host that joined or was lost.
    pub host: String,
    /// `up` or `lost`.
    pub state: String,
}

/// Topic of the instance events of `transaction`.
pub fn control_topic(transaction: &str) -> String {
    format!("muster.control.{transaction}")
}

/// A lifecycle event of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// The instance registered on the bus (or, with `ready = "spawned"`, runs).
    Started,
    /// The service called `ctx.update(...)`.
    Updated,
    /// Non-zero exit, killed by a signal, missed heartbeats or a failed start.
    Failed,
    /// Stopped on request.
    Stopped,
    /// Exit code 0 on its own.
    Exited,
}

/// One instance event, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceEvent {
    /// The transaction.
    pub transaction: String,
    /// Its context.
    pub context: String,
    /// The service.
    pub service: String,
    /// The instance id (`MUSTER_INSTANCE`).
    pub instance: String,
    /// Slot number within the service, 0-based.
    pub slot: u32,
    /// What happened.
    pub event: Lifecycle,
    /// Process id, when there is (or was) a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Restarts of this slot so far.
    pub restarts: u32,
    /// Why (failures and stops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal, when the process was killed by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The status the service reported (`updated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// A change of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextChange {
    /// The transaction started.
    Started,
    /// Its services are being stopped.
    Stopping,
    /// All its services stopped; it can be started again.
    Stopped,
    /// It went over its restart budget (or was failed otherwise) and stopped.
    Failed,
    /// It ended (`exit`) and is forgotten.
    Exited,
    /// The manifest was reloaded and its services changed.
    Reloaded,
}

/// One context event, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextEvent {
    /// The transaction.
    pub transaction: String,
    /// Its context.
    pub context: String,
    /// What happened.
    pub event: ContextChange,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
