//! The answer to `muster ctl status`.

use serde::{Deserialize, Serialize};

/// Every transaction the host knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Status {
    /// The host's name (`[host] name`, else the machine's hostname).
    #[serde(default)]
    pub host: String,
    /// Transactions, by id.
    pub transactions: Vec<TransactionStatus>,
    /// The other hosts of the bus this host has seen, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet: Vec<PeerStatus>,
}

/// Another host of the bus, as this host last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// `up`, or `lost` (its control service left the registry).
    pub state: String,
    /// Seconds since it was last seen to change.
    pub since_secs: f64,
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
    /// Its schedule, for a service started on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleStatus>,
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

/// The schedule of a run-to-completion service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduleStatus {
    /// The schedule as shown (with its zone).
    pub schedule: String,
    /// The expression as written.
    pub expr: String,
    /// The next fire time (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Stopped on request: no run starts until it is started again.
    pub paused: bool,
    /// Runs that ended.
    pub runs: u64,
    /// Runs that exited 0.
    pub succeeded: u64,
    /// Runs that failed (or were stopped).
    pub failed: u64,
    /// Fire times that did not run (a run was going, or the host was
    /// down, and the misfire policy let them go).
    pub skipped: u64,
    /// Fire times that another host of the fleet ran (it claimed them
    /// first).
    #[serde(default)]
    pub elsewhere: u64,
    /// The most recent runs, oldest first.
    pub recent: Vec<RunStatus>,
}

/// One run of a scheduled service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunStatus {
    /// The fire time it ran for.
    pub fire: String,
    /// When it started.
    pub started: String,
    /// How it ended (`exit code 0`, `exit code 3`, `killed by signal 9`),
    /// while running absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}
