//! What a manifest describes, checked: the host's settings, contexts,
//! services, their triggers, schedules and limits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster::schedule::{Misfire, Schedule};
use serde::{Deserialize, Serialize};
/// Where the HTTP endpoint listens unless `[host] http` says otherwise.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7780";

/// The host's own settings: the `[host]` table (first manifest only).
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// The host's name among the hosts of one bus (`[host] name`); `None`:
    /// the machine's hostname.
    pub name: Option<String>,
    /// Bus URL: the embedded bus the host runs (`zmq://127.0.0.1:7700`),
    /// or the broker it joins.
    pub bus: String,
    /// On a `zmq://` bus: run it (`true`, the default), or join the one
    /// another host of the fleet runs there (`own_bus = false`).
    pub own_bus: bool,
    /// Interface the control endpoint and the instances' RPC endpoints bind
    /// on the embedded bus (`bind`, formerly `control_bind`; `127.0.0.1`):
    /// in a fleet, the address other machines reach this one at.
    pub bind: String,
    /// The host other machines reach those endpoints at, when it is not
    /// `bind` (`advertise`: NAT, a container's published ports).
    pub advertise: Option<String>,
    /// The ports those endpoints bind, the first free one taken
    /// (`rpc_ports = "7710-7739"`; default any free port).
    pub rpc_ports: Option<muster_zmq::PortRange>,
    /// The fleet's CURVE keys directory (`curve`, `muster keys`), for the
    /// embedded bus across machines.
    pub curve: Option<PathBuf>,
    /// Plain TCP beyond loopback on the embedded bus, said explicitly
    /// (`plain_tcp = true`); refused otherwise.
    pub plain_tcp: bool,
    /// Where the token, the transaction record and the logs live.
    pub state_dir: PathBuf,
    /// Where the HTTP endpoint listens (`None`: off).
    pub http: Option<String>,
    /// How often instances are sampled.
    pub monitor_every: Duration,
    /// `POST /call/...` without the token.
    pub gateway_open: bool,
    /// Bytes of jobs the embedded bus's work queues hold in all
    /// (`queue_max_bytes`, default 256 MiB); more are refused.
    pub queue_max_bytes: u64,
    /// Jobs kept in the bus's memory only (`queue_store = "memory"`),
    /// lost with the host; by default (`"disk"`) they are written to the
    /// job log `queues.redb` in `state_dir` before `enqueue` returns.
    pub queue_in_memory: bool,
    /// When the job log is flushed (`queue_fsync`: `"always"`, the
    /// default, or a group-commit interval such as `"5ms"`).
    pub queue_fsync: muster_zmq::FsyncPolicy,
    /// Heartbeats a second the embedded bus takes at most
    /// (`heartbeats_per_sec`, default 50): past that many instances it asks
    /// each for slower ones, so a hung one is noticed later.
    pub heartbeats_per_sec: u32,
    /// `Host` header names the HTTP endpoint answers besides the loopback
    /// ones (`http_hosts`).
    pub http_hosts: Vec<String>,
    /// Status, top, events and metrics over HTTP without the token
    /// (`http_public_read`).
    pub http_public_read: bool,
    /// Each instance's log file is rotated past this many bytes
    /// (`log_max_size`, default 10 MB; `"0"`: never).
    pub log_max_bytes: Option<u64>,
    /// Rotated log files kept per instance besides the current one
    /// (`log_keep`, default 5).
    pub log_keep: usize,
}

/// Bytes past which an instance's log file is rotated unless `[host]
/// log_max_size` says otherwise.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// Rotated log files kept per instance unless `[host] log_keep` says
/// otherwise.
pub const DEFAULT_LOG_KEEP: usize = 5;

/// Bytes of jobs the embedded bus holds unless `[host] queue_max_bytes`
/// says otherwise.
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 256 << 20;

/// How a context reacts when one of its instances dies (OTP strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the instance that died.
    #[default]
    OneForOne,
    /// Restart every service of the transaction.
    OneForAll,
    /// Restart the service that died and those declared after it.
    RestForOne,
}

/// When an instance that ended is started again (OTP meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Always.
    #[default]
    Permanent,
    /// Only when it failed (non-zero exit, signal, missed heartbeats).
    Transient,
    /// Never.
    Temporary,
}

/// When a spawned instance counts as started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// When it registers on the bus (muster services).
    #[default]
    Registered,
    /// As soon as the process is running (programs that never register).
    Spawned,
}

/// What a trigger does. Deserializes from the manifest's inline table
/// (`{ start = ["walk"] }`) for files that describe triggers without spans
/// (`muster new --from services.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    /// Services to start (a dead one is brought up again).
    #[serde(default)]
    pub start: Vec<String>,
    /// Services to stop.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Services to restart.
    #[serde(default)]
    pub restart: Vec<String>,
    /// End the whole transaction.
    #[serde(default)]
    pub exit: bool,
}

impl Actions {
    /// True when the trigger does nothing.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.restart.is_empty() && !self.exit
    }

    /// Every service it names.
    pub fn targets(&self) -> impl Iterator<Item = &String> {
        self.start.iter().chain(&self.stop).chain(&self.restart)
    }
}

/// The four triggers of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triggers {
    /// After an instance registered.
    pub on_start: Actions,
    /// After an instance called `ctx.update`.
    pub on_update: Actions,
    /// After an instance failed.
    pub on_fail: Actions,
    /// After an instance exited with code 0 on its own.
    pub on_exit: Actions,
}

impl Triggers {
    /// `(manifest key, actions)` of each trigger, in lifecycle order.
    pub fn all(&self) -> [(&'static str, &Actions); 4] {
        [
            ("on_start", &self.on_start),
            ("on_update", &self.on_update),
            ("on_fail", &self.on_fail),
            ("on_exit", &self.on_exit),
        ]
    }

    /// The trigger whose manifest key is `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Actions> {
        match name {
            "on_start" => Some(&mut self.on_start),
            "on_update" => Some(&mut self.on_update),
            "on_fail" => Some(&mut self.on_fail),
            "on_exit" => Some(&mut self.on_exit),
            _ => None,
        }
    }
}

/// Restart delays: `backoff`, doubled per failure in a row up to
/// `backoff_max`, with up to 20% jitter; back to `backoff` after an
/// instance ran `backoff_reset` without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// A run this long resets the delay.
    pub reset_after: Duration,
}

/// One `[[service]]` of a context.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// Service name (also its name on the bus).
    pub name: String,
    /// Program to run.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the manifest's directory).
    pub cwd: PathBuf,
    /// Processes to run.
    pub instances: u32,
    /// When an ended instance is started again.
    pub restart: RestartPolicy,
    /// Services that must be ready before this one starts.
    pub after: Vec<String>,
    /// Started with its context (else only by a trigger or `ctl`).
    pub autostart: bool,
    /// SIGTERM, then SIGKILL after this long.
    pub stop_timeout: Duration,
    /// When a spawned instance counts as started.
    pub ready: Readiness,
    /// A start that is not ready within this long has failed.
    pub ready_timeout: Duration,
    /// Restart delays.
    pub backoff: Backoff,
    /// Triggers.
    pub triggers: Triggers,
    /// Started on a schedule, run to completion (never restarted).
    pub schedule: Option<Scheduled>,
    /// Resource limits, checked at each monitor sample.
    pub limits: Limits,
}

/// A service the host starts on a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// `every 30s`, `at 19:42` or a cron expression.
    pub expr: String,
    /// Zone for cron and `at` times.
    pub tz: String,
    /// Fire times missed while a run was going or the host was down.
    pub misfire: Misfire,
}

impl Scheduled {
    /// The schedule (checked when the manifest was read; a spec built by
    /// hand with a bad expression never fires).
    pub fn schedule(&self) -> Schedule {
        Schedule::parse(&self.expr)
            .and_then(|s| s.in_zone(&self.tz))
            .unwrap_or_else(|e| {
                tracing::error!(expr = %self.expr, error = %e, "bad schedule: it never fires");
                Schedule::cron("0 0 0 30 2 *")
                    .unwrap_or_else(|_| unreachable!("a valid expression"))
            })
    }
}

/// One context: a set of services started together under a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSpec {
    /// Context name.
    pub name: String,
    /// The manifest it came from.
    pub file: PathBuf,
    /// Restart strategy.
    pub strategy: Strategy,
    /// More restarts than this within `within` fail the transaction.
    pub max_restarts: u32,
    /// The restart budget's window.
    pub within: Duration,
    /// Start one transaction when the host starts.
    pub boot: bool,
    /// Services, in manifest order.
    pub services: Vec<Arc<ServiceSpec>>,
}

impl ContextSpec {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceSpec>> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Everything the host runs: its settings and its contexts.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest files, in the order given.
    pub files: Vec<PathBuf>,
    /// The host's settings.
    pub host: HostSpec,
    /// The contexts, one per file.
    pub contexts: Vec<Arc<ContextSpec>>,
}

/// Resource limits of a service (manifest `max_rss`, `max_cpu`,
/// `cpu_window`), checked by the host's monitor at each sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Resident memory, bytes, of the instance and its children.
    pub max_rss: Option<u64>,
    /// CPU % of one core, averaged over `cpu_window`.
    pub max_cpu: Option<f64>,
    /// The CPU average's window.
    pub cpu_window: Duration,
}
