//! The control service `muster.host`: what `muster ctl` calls. Every
//! method takes the host's token in its params; a request without the
//! right one is refused with -32004 and logged.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use muster::{Args, RpcError, Service};
use muster_core::registry::HOST_SERVICE;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::monitor::SharedMonitor;
use crate::status::Status;
use crate::supervisor::ReloadReport;
use crate::token;

/// The params of every control method.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ControlRequest {
    /// The host's token (from its token file). Missing counts as wrong.
    #[serde(default)]
    pub token: String,
    /// The transaction addressed; omitted means the only running one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// One service of the transaction (stop, restart, logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The context to start (start; omitted when the manifest has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// `top`: the full list of memory maps of `service`'s instances.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maps: bool,
}

/// A request for the host's task.
#[derive(Debug)]
pub(crate) enum Command {
    Status {
        transaction: Option<String>,
        reply: Sender<Status>,
    },
    Start {
        context: Option<String>,
        transaction: Option<String>,
        reply: Sender<Done>,
    },
    Stop {
        transaction: Option<String>,
        service: Option<String>,
        reply: Sender<Done>,
    },
    Restart {
        transaction: Option<String>,
        service: Option<String>,
        reply: Sender<Done>,
    },
    Exit {
        transaction: Option<String>,
        reply: Sender<Done>,
    },
    Reload {
        reply: Sender<ReloadReport>,
    },
    Logs {
        transaction: Option<String>,
        service: String,
        reply: Sender<Vec<PathBuf>>,
    },
}

/// Application error code for a control request the host cannot do.
pub const REFUSED: i64 = 1;

#[derive(Clone)]
struct Gate {
    token: std::sync::Arc<str>,
    tx: mpsc::Sender<Command>,
}

/// `top`: the latest monitor samples (with full memory maps of one
/// service's instances on request).
fn top(monitor: &SharedMonitor, r: &ControlRequest) -> serde_json::Value {
    let latest = monitor
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .latest();
    let mut v = serde_json::to_value(&latest).unwrap_or_default();
    if let (true, Some(service), Some(txns)) = (r.maps, &r.service, v.as_array_mut()) {
        for t in txns {
            for i in t["instances"].as_array_mut().into_iter().flatten() {
                if i["service"] == service.as_str()
                    && let Some(pid) = i["process"]["pid"]
                        .as_u64()
                        .and_then(|p| u32::try_from(p).ok())
                {
                    i["maps"] =
                        serde_json::to_value(crate::procstat::maps(pid)).unwrap_or_default();
                }
            }
        }
    }
    v
}

impl Gate {
    fn check(&self, method: &str, req: &ControlRequest) -> Result<(), RpcError> {
        if token::matches(&self.token, &req.token) {
            Ok(())
        } else {
            tracing::warn!(method, "control request refused: wrong or missing token");
            Err(RpcError::unauthorized(
                "the host's token is required (muster ctl reads it from the token file)",
            ))
        }
    }
}

fn refused(e: String) -> RpcError {
    RpcError::new(REFUSED, e)
}

/// `{"transaction": ID}`: what start, stop, restart and exit answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Done {
    /// The transaction acted on.
    pub transaction: String,
}

type Reply<T> = Pin<Box<dyn Future<Output = Result<T, RpcError>> + Send>>;
type Sender<T> = oneshot::Sender<Result<T, String>>;

/// A handler for `method`: checks the token, asks the host's task with the
/// command `make` builds, and answers its result (a refusal is code 1).
fn handler<T: Send + 'static>(
    gate: &Gate,
    method: &'static str,
    make: fn(ControlRequest, Sender<T>) -> Result<Command, RpcError>,
) -> impl Fn(Args<ControlRequest>) -> Reply<T> + Clone + Send + Sync + 'static {
    let gate = gate.clone();
    move |Args(r): Args<ControlRequest>| {
        let gate = gate.clone();
        Box::pin(async move {
            gate.check(method, &r)?;
            let (tx, rx) = oneshot::channel();
            gate.tx
                .send(make(r, tx)?)
                .await
                .map_err(|_| RpcError::unavailable("the host is stopping"))?;
            rx.await
                .map_err(|_| RpcError::unavailable("the host is stopping"))?
                .map_err(refused)
        })
    }
}

/// Builds the control service, handing requests to the host's task.
pub(crate) fn service(token: String, tx: mpsc::Sender<Command>, monitor: SharedMonitor) -> Service {
    let gate = Gate {
        token: token.into(),
        tx,
    };
    let g = gate.clone();
    let top_handler = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        let monitor = monitor.clone();
        async move {
            g.check("top", &r)?;
            Ok::<_, RpcError>(top(&monitor, &r))
        }
    };
    let status = handler(&gate, "status", |r, reply| {
        Ok(Command::Status {
            transaction: r.transaction,
            reply,
        })
    });
    let start = handler(&gate, "start", |r, reply| {
        Ok(Command::Start {
            context: r.context,
            transaction: r.transaction,
            reply,
        })
    });
    let stop = handler(&gate, "stop", |r, reply| {
        Ok(Command::Stop {
            transaction: r.transaction,
            service: r.service,
            reply,
        })
    });
    let restart = handler(&gate, "restart", |r, reply| {
        Ok(Command::Restart {
            transaction: r.transaction,
            service: r.service,
            reply,
        })
    });
    let exit = handler(&gate, "exit", |r, reply| {
        Ok(Command::Exit {
            transaction: r.transaction,
            reply,
        })
    });
    let reload = handler(&gate, "reload", |_, reply| Ok(Command::Reload { reply }));
    let logs = handler(&gate, "logs", |r, reply| {
        let service = r
            .service
            .ok_or_else(|| RpcError::invalid_params("service", "name the service"))?;
        Ok(Command::Logs {
            transaction: r.transaction,
            service,
            reply,
        })
    });
    Service::new(HOST_SERVICE)
        .version(env!("CARGO_PKG_VERSION"))
        .rpc("status", status)
        .rpc("start", start)
        .rpc("stop", stop)
        .rpc("restart", restart)
        .rpc("exit", exit)
        .rpc("reload", reload)
        .rpc("logs", logs)
        .rpc("top", top_handler)
}
