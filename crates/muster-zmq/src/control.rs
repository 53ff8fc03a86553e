//! The registry protocol between instances and the bus: control messages
//! on the registry ROUTER (see `docs/protocol.md`, "Registry").

use muster_core::queue::{Job, QueueCommand, QueueReply};
use muster_core::registry::InstanceInfo;
use serde::{Deserialize, Serialize};

/// Verb: add or replace an instance.
pub(crate) const REGISTER: &str = "register";
/// Verb: instances still alive.
pub(crate) const HEARTBEAT: &str = "heartbeat";
/// Verb: remove an instance.
pub(crate) const UNREGISTER: &str = "unregister";
/// Verb: the registry, unless unchanged since a version.
pub(crate) const LIST: &str = "list";
/// Verb: claim a key (one instance per scheduled fire time).
pub(crate) const CLAIM: &str = "claim";
/// Verb: an instance's progress report for the host (`ctx.update`).
pub(crate) const UPDATE: &str = "update";
/// Verb: a nonce for this connection, which credentials' MACs cover.
pub(crate) const HELLO: &str = "hello";
/// Verb: is a caller's proof for this instance good (`require_auth`)?
pub(crate) const VERIFY: &str = "verify";

/// What a caller of a `require_auth` instance shows, for the bus to check.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Verify {
    /// The caller's key id.
    pub(crate) key: String,
    /// The instance called (the asker's own).
    pub(crate) instance: String,
    /// The caller's MAC over `["muster-call", instance]`.
    pub(crate) mac: String,
}

/// The answer to `verify`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Verified {
    pub(crate) valid: bool,
}

/// The answer to `hello`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) nonce: String,
}

/// Verb: add a job to a work queue.
pub(crate) const ENQUEUE: &str = "enqueue";
/// Verb: take jobs (waiting up to `wait_ms` for the first).
pub(crate) const TAKE: &str = "take";
/// Verb: settle a taken job.
pub(crate) const SETTLE: &str = "settle";
/// Verb: give back every job a holder has not settled.
pub(crate) const RELEASE: &str = "release";
/// Verb: an operator command on a queue.
pub(crate) const QUEUE: &str = "queue";
/// Verb: declare a durable group (body: a `DurableGroup`); the bus keeps
/// its events in the queue `durable.<group>` from then on.
pub(crate) const DURABLE: &str = "durable";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Enqueue {
    pub(crate) queue: String,
    pub(crate) job: Job,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Take {
    pub(crate) queue: String,
    pub(crate) holder: String,
    pub(crate) max: usize,
    #[serde(default)]
    pub(crate) wait_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Taken {
    pub(crate) tag: u64,
    pub(crate) job: Job,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct TakeReply {
    #[serde(default)]
    pub(crate) jobs: Vec<Taken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// `ack`, `retry` or `dead` (with `reason`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Settle {
    pub(crate) queue: String,
    pub(crate) tag: u64,
    pub(crate) outcome: String,
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Release {
    pub(crate) holder: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct QueueOp {
    pub(crate) queue: String,
    pub(crate) command: QueueCommand,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct QueueOpReply {
    #[serde(default)]
    pub(crate) reply: Option<QueueReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub(crate) key: String,
    pub(crate) holder: String,
    pub(crate) ttl_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ClaimReply {
    pub(crate) granted: bool,
    /// Who holds the key.
    #[serde(default)]
    pub(crate) holder: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) instances: Vec<String>,
    /// Answer only when there is something to say: an unknown instance,
    /// or an interval other than `asked_ms`. Most heartbeats then cost
    /// the bus one message instead of two (`docs/protocol.md`). An older
    /// bus ignores this and answers every one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) quiet: bool,
    /// The interval the bus last asked this sender for (`every_ms` of an
    /// answer); absent: none, the sender keeps its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) asked_ms: Option<u64>,
}

/// The slowest heartbeat a bus may ask for: a bus that asks for more (one
/// of over 3,000 instances at the default rate of 50 a second) gets one
/// a minute. The bus also caps at this what a sender says it was asked.
pub(crate) const SLOWEST_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct HeartbeatReply {
    /// Instances the bus does not know (it restarted): register them again.
    #[serde(default)]
    pub(crate) unknown: Vec<String>,
    /// Milliseconds to wait, at least, before the next heartbeat: a bus
    /// with many instances slows them (`BusOptions::heartbeats_per_sec`).
    /// Absent: the sender's own interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) every_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Unregister {
    pub(crate) instance: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct List {
    /// `(epoch, version)` the caller already has.
    #[serde(default)]
    pub(crate) epoch: Option<String>,
    #[serde(default)]
    pub(crate) version: Option<u64>,
    /// The caller takes the changes since its version instead of the
    /// whole list (an older bus ignores this and sends the whole list).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) changes: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ListReply {
    /// Random id of this bus run; a new one means the bus restarted.
    pub(crate) epoch: String,
    /// Bumped on every change.
    pub(crate) version: u64,
    /// The whole registry; absent when unchanged since the caller's
    /// version, or when `changed` and `removed` say what changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) instances: Option<Vec<InstanceInfo>>,
    /// To a caller that asked for changes: the instances registered or
    /// registered again since its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) changed: Option<Vec<InstanceInfo>>,
    /// With `changed`: the ids of the instances gone since its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) removed: Option<Vec<String>>,
}

/// A generic acknowledgement or refusal.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Ack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}
