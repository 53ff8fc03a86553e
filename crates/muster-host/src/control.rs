//! The control service `muster.host`: what `muster ctl` calls. Every
//! method takes the host's token in its params; a request without the
//! right one is refused with -32004 and logged.

use std::path::PathBuf;

use muster::{Args, RpcError, Service};
use muster_core::registry::HOST_SERVICE;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

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
}

/// A request for the host's task.
#[derive(Debug)]
pub(crate) enum Command {
    Status {
        transaction: Option<String>,
        reply: oneshot::Sender<Status>,
    },
    Start {
        context: Option<String>,
        transaction: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Stop {
        transaction: Option<String>,
        service: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Restart {
        transaction: Option<String>,
        service: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Exit {
        transaction: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Reload {
        reply: oneshot::Sender<Result<ReloadReport, String>>,
    },
    Logs {
        transaction: Option<String>,
        service: String,
        reply: oneshot::Sender<Result<Vec<PathBuf>, String>>,
    },
}

/// Application error code for a control request the host cannot do.
pub const REFUSED: i64 = 1;

#[derive(Clone)]
struct Gate {
    token: std::sync::Arc<str>,
    tx: mpsc::Sender<Command>,
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

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| RpcError::unavailable("the host is stopping"))?;
        rx.await
            .map_err(|_| RpcError::unavailable("the host is stopping"))
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

/// Builds the control service, handing requests to the host's task.
pub(crate) fn service(token: String, tx: mpsc::Sender<Command>) -> Service {
    let gate = Gate {
        token: token.into(),
        tx,
    };
    let g = gate.clone();
    let status = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        async move {
            g.check("status", &r)?;
            g.ask(|reply| Command::Status {
                transaction: r.transaction,
                reply,
            })
            .await
        }
    };
    let g = gate.clone();
    let start = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        async move {
            g.check("start", &r)?;
            let t = g
                .ask(|reply| Command::Start {
                    context: r.context,
                    transaction: r.transaction,
                    reply,
                })
                .await?
                .map_err(refused)?;
            Ok::<_, RpcError>(Done { transaction: t })
        }
    };
    let g = gate.clone();
    let stop = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        async move {
            g.check("stop", &r)?;
            let t = g
                .ask(|reply| Command::Stop {
                    transaction: r.transaction,
                    service: r.service,
                    reply,
                })
                .await?
                .map_err(refused)?;
            Ok::<_, RpcError>(Done { transaction: t })
        }
    };
    let g = gate.clone();
    let restart = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        async move {
            g.check("restart", &r)?;
            let t = g
                .ask(|reply| Command::Restart {
                    transaction: r.transaction,
                    service: r.service,
                    reply,
                })
                .await?
                .map_err(refused)?;
            Ok::<_, RpcError>(Done { transaction: t })
        }
    };
    let g = gate.clone();
    let exit = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        async move {
            g.check("exit", &r)?;
            let t = g
                .ask(|reply| Command::Exit {
                    transaction: r.transaction,
                    reply,
                })
                .await?
                .map_err(refused)?;
            Ok::<_, RpcError>(Done { transaction: t })
        }
    };
    let g = gate.clone();
    let reload = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        async move {
            g.check("reload", &r)?;
            g.ask(|reply| Command::Reload { reply })
                .await?
                .map_err(refused)
        }
    };
    let g = gate;
    let logs = move |Args(r): Args<ControlRequest>| {
        let g = g.clone();
        async move {
            g.check("logs", &r)?;
            let service = r
                .service
                .ok_or_else(|| RpcError::invalid_params("service", "name the service"))?;
            g.ask(|reply| Command::Logs {
                transaction: r.transaction,
                service,
                reply,
            })
            .await?
            .map_err(refused)
        }
    };
    Service::new(HOST_SERVICE)
        .version(env!("CARGO_PKG_VERSION"))
        .rpc("status", status)
        .rpc("start", start)
        .rpc("stop", stop)
        .rpc("restart", restart)
        .rpc("exit", exit)
        .rpc("reload", reload)
        .rpc("logs", logs)
}
