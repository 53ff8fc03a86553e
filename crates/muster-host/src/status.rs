//! The answer to `muster ctl status`.

use serde::{Deserialize, Serialize};

/// Every transaction the host knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Status {
    /// Transactions, by id.
    pub transactions: Vec<TransactionStatus>,
}

/// One transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TransactionStatus {
    /// Its id.
    pub transaction: String,
    /// Its context.
    pub context: String,
    /// `running`, `stopping`, `stopped` or `failed`.
    pub state: String,
    /// Why it failed or stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Restarts counted against the budget in the current window.
    pub recent_restarts: usize,
    /// Its services, in manifest order.
    pub services: Vec<ServiceStatus>,
}

/// One service of a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Whether the host keeps it running.
    pub wanted: bool,
    /// Its instances.
    pub instances: Vec<InstanceStatus>,
}

/// One instance slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstanceStatus {
    /// Slot number, 0-based.
    pub slot: u32,
    /// Current (or last) instance id.
    pub instance: String,
    /// Process id while it has a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `idle`, `waiting`, `starting`, `running`, `stopping`, `backoff`,
    /// `exited`, `failed` or `stopped`.
    pub state: String,
    /// Restarts so far.
    pub restarts: u32,
    /// Seconds since it became ready, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_secs: Option<f64>,
    /// How the last process ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}
