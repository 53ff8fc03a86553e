//! The `worker` service: a consumer of the queue `work` whose jobs say
//! what to do with them, to show how muster handles each outcome.
//!
//! | job | what happens |
//! |---|---|
//! | `{"action":"ok"}` | done: acknowledged |
//! | `{"action":"fail"}` | a transient error: retried with backoff, dead-lettered after 3 attempts |
//! | `{"action":"reject"}` | a permanent error: dead-lettered at once |
//! | `{"action":"abort"}` | the process aborts (a poison job): each crash counts as an attempt, and after 3 the job is set aside in `work.dead` with the reason `consumer died: killed by signal 6 (SIGABRT)` |
//!
//! `"sleep_ms"` makes a job take that long first. Jobs are taken one at a
//! time (`prefetch(1)`): a consumer that dies costs every job it holds an
//! attempt, so a poison job never costs another job one.

use muster::prelude::*;

/// The queue the worker consumes.
pub const QUEUE: &str = "work";

/// Attempts of a job before it is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 3;

/// What a job asks for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Succeed.
    Ok,
    /// Fail in a way a retry may cure.
    Fail,
    /// Fail in a way no retry cures.
    Reject,
    /// Abort the process.
    Abort,
}

/// A job of the queue `work`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct Work {
    /// What to do.
    pub action: Action,
    /// Milliseconds to work first (at most a minute).
    #[serde(default)]
    #[schemars(range(max = 60_000))]
    pub sleep_ms: u64,
}

async fn work(Args(w): Args<Work>) -> Result<(), RpcError> {
    tokio::time::sleep(std::time::Duration::from_millis(w.sleep_ms.min(60_000))).await;
    match w.action {
        Action::Ok => {
            tracing::info!("job done");
            Ok(())
        }
        Action::Fail => Err(RpcError::internal("asked to fail; a retry may do better")),
        Action::Reject => Err(RpcError::permanent("asked to fail for good")),
        Action::Abort => {
            tracing::error!("asked to abort: the process dies holding the job");
            std::process::abort()
        }
    }
}

/// How long a job may stay on a consumer that stopped answering before
/// another takes it (Redis and NATS; the others notice a dead consumer by
/// its connection): `WORKER_CLAIM_AFTER` (`2s`, `500ms`), else 30 s.
fn claim_after() -> Duration {
    std::env::var("WORKER_CLAIM_AFTER")
        .ok()
        .and_then(|v| muster::duration::parse(&v).ok())
        .unwrap_or(Duration::from_secs(30))
}

/// The service, for `main` and for `muster __service worker`.
pub fn service() -> Service {
    Service::new("worker")
        .version(env!("CARGO_PKG_VERSION"))
        .consume(QUEUE, work)
        .prefetch(1)
        .max_attempts(MAX_ATTEMPTS)
        .claim_after(claim_after())
}
