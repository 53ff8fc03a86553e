//! The control service `muster.host`: what `muster ctl` calls, and
//! [`Controller`], the client side.
//!
//! The token never travels (`docs/security.md`, "Control"). A caller first
//! asks `challenge` with a nonce of its own; the host answers with its
//! nonce and a proof that it knows the token, which the caller checks (an
//! impostor cannot make it). Each request then carries a MAC under the
//! token over both nonces, the method and the request; a nonce serves one
//! request within 30 s. A request without a good MAC is refused with
//! -32004 and logged.

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
use crate::supervisor::{Refusal, ReloadReport};
use std::collections::HashMap;
use std::time::Instant;

/// The params of every control method.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ControlRequest {
    /// The proof that the caller knows the host's token (made by
    /// [`Controller`]). Missing counts as wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ControlAuth>,
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

/// A control request's proof of the token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ControlAuth {
    /// The host's nonce, from `challenge`.
    pub host_nonce: String,
    /// The caller's nonce, given to `challenge`.
    pub client_nonce: String,
    /// HMAC-SHA256 under the token over `["muster-ctl call", host_nonce,
    /// client_nonce, method, [transaction, service, context, maps]]`.
    pub mac: String,
}

/// The params of `challenge`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ChallengeRequest {
    /// 16 to 64 random bytes of the caller's, as hex.
    pub client_nonce: String,
}

/// The answer to `challenge`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Challenge {
    /// The nonce the next request's MAC covers.
    pub host_nonce: String,
    /// HMAC-SHA256 under the token over `["muster-ctl host", client_nonce,
    /// host_nonce]`: the host knows the token.
    pub proof: String,
}

/// How long a host nonce serves.
const NONCE_LIFE: std::time::Duration = std::time::Duration::from_secs(30);
/// Host nonces outstanding at most (older ones are forgotten first).
const MAX_NONCES: usize = 1_000;

/// What the host's proof covers.
fn host_proof(client_nonce: &str, host_nonce: &str) -> [Vec<u8>; 3] {
    [
        b"muster-ctl host".to_vec(),
        client_nonce.as_bytes().to_vec(),
        host_nonce.as_bytes().to_vec(),
    ]
}

/// What a request's MAC covers.
fn covered(method: &str, host_nonce: &str, client_nonce: &str, r: &ControlRequest) -> Vec<Vec<u8>> {
    let fields = serde_json::json!([r.transaction, r.service, r.context, r.maps]).to_string();
    vec![
        b"muster-ctl call".to_vec(),
        host_nonce.as_bytes().to_vec(),
        client_nonce.as_bytes().to_vec(),
        method.as_bytes().to_vec(),
        fields.into_bytes(),
    ]
}

fn refs(parts: &[Vec<u8>]) -> Vec<&[u8]> {
    parts.iter().map(Vec::as_slice).collect()
}

/// Calls the host's control service: proves knowledge of the token
/// without sending it, and checks that the host knows it too.
#[derive(Debug, Clone)]
pub struct Controller {
    client: muster::Client,
    token: std::sync::Arc<str>,
    /// The `muster.host` instance every call goes to; `None`: whichever
    /// the bus picks (one host on the bus).
    instance: Option<String>,
}

/// A host on the bus: its name and its control instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRef {
    /// The host's name (`[host] name`).
    pub name: String,
    /// Its `muster.host` instance id, `muster.host-<name>`.
    pub instance: String,
}

impl Controller {
    /// A controller using `client`'s bus and the host's `token`.
    pub fn new(client: muster::Client, token: &str) -> Self {
        Self {
            client,
            token: token.into(),
            instance: None,
        }
    }

    /// The same controller, talking to `host` only.
    #[must_use]
    pub fn on(&self, host: &HostRef) -> Self {
        Self {
            instance: Some(host.instance.clone()),
            ..self.clone()
        }
    }

    /// The hosts serving on the bus, by name.
    ///
    /// # Errors
    /// The bus does not answer.
    pub async fn hosts(&self) -> Result<Vec<HostRef>, muster::Error> {
        let prefix = format!("{HOST_SERVICE}-");
        let mut hosts: Vec<HostRef> = self
            .client
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.service == HOST_SERVICE)
            .map(|i| HostRef {
                name: i
                    .instance
                    .strip_prefix(&prefix)
                    .unwrap_or(&i.instance)
                    .to_owned(),
                instance: i.instance,
            })
            .collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        hosts.dedup();
        Ok(hosts)
    }

    /// A call of `muster.host.<method>`, to this controller's host.
    async fn host_call<A, R>(&self, method: &str, args: &A) -> Result<R, RpcError>
    where
        A: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        let target = format!("{HOST_SERVICE}.{method}");
        let mut options = muster::CallOptions::default();
        if let Some(i) = &self.instance {
            options = options.instance(i.clone());
        }
        self.client.call_with(&target, args, options).await
    }

    /// Calls `muster.host.<method>` with `request`.
    ///
    /// # Errors
    /// The host's answer (-32004 for a wrong token), -32601 when no host
    /// serves this bus, and -32004 when the one that answers cannot prove
    /// it knows the token (not the real host).
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        mut request: ControlRequest,
    ) -> Result<T, RpcError> {
        let client_nonce = muster_core::auth::random_hex(16).map_err(RpcError::internal)?;
        // The challenge and the call go to the same host: the proof is
        // that host's.
        let challenge: Challenge = self
            .host_call(
                "challenge",
                &ChallengeRequest {
                    client_nonce: client_nonce.clone(),
                },
            )
            .await?;
        let proof = host_proof(&client_nonce, &challenge.host_nonce);
        if !muster_core::auth::verify_with(self.token.as_bytes(), &refs(&proof), &challenge.proof) {
            return Err(RpcError::unauthorized(
                "the muster.host that answered does not know the token: it is not this host (or the token is not its)",
            ));
        }
        let mac = muster_core::auth::mac_with(
            self.token.as_bytes(),
            &refs(&covered(
                method,
                &challenge.host_nonce,
                &client_nonce,
                &request,
            )),
        );
        request.auth = Some(ControlAuth {
            host_nonce: challenge.host_nonce,
            client_nonce,
            mac,
        });
        self.host_call(method, &request).await
    }
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
    /// Host nonces handed out: nonce -> (the caller's nonce, when).
    nonces: std::sync::Arc<std::sync::Mutex<HashMap<String, (String, Instant)>>>,
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
    fn nonces(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A host nonce for `client_nonce`, with the proof the host knows the
    /// token.
    fn challenge(&self, client_nonce: &str) -> Result<Challenge, RpcError> {
        if !(32..=128).contains(&client_nonce.len())
            || !client_nonce.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(RpcError::invalid_params(
                "client_nonce",
                "16 to 64 random bytes, as hex",
            ));
        }
        let host_nonce = muster_core::auth::random_hex(16).map_err(RpcError::internal)?;
        let now = Instant::now();
        let mut nonces = self.nonces();
        nonces.retain(|_, (_, at)| now.duration_since(*at) < NONCE_LIFE);
        if nonces.len() >= MAX_NONCES {
            let oldest = nonces
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                nonces.remove(&k);
            }
        }
        nonces.insert(host_nonce.clone(), (client_nonce.to_owned(), now));
        drop(nonces);
        let proof = muster_core::auth::mac_with(
            self.token.as_bytes(),
            &refs(&host_proof(client_nonce, &host_nonce)),
        );
        Ok(Challenge { host_nonce, proof })
    }

    fn check(&self, method: &str, req: &ControlRequest) -> Result<(), RpcError> {
        let valid = req.auth.as_ref().is_some_and(|a| {
            let issued = self.nonces().remove(&a.host_nonce);
            issued.is_some_and(|(client_nonce, at)| {
                at.elapsed() < NONCE_LIFE
                    && client_nonce == a.client_nonce
                    && muster_core::auth::verify_with(
                        self.token.as_bytes(),
                        &refs(&covered(method, &a.host_nonce, &a.client_nonce, req)),
                        &a.mac,
                    )
            })
        });
        if valid {
            Ok(())
        } else {
            tracing::warn!(method, "control request refused: no proof of the token");
            Err(RpcError::unauthorized(
                "the host's token is required (muster ctl proves it from the token file)",
            ))
        }
    }
}

fn refused(e: Refusal) -> RpcError {
    RpcError::new(REFUSED, e.to_string())
}

/// `{"transaction": ID}`: what start, stop, restart and exit answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Done {
    /// The transaction acted on.
    pub transaction: String,
}

type Reply<T> = Pin<Box<dyn Future<Output = Result<T, RpcError>> + Send>>;
type Sender<T> = oneshot::Sender<Result<T, Refusal>>;

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
        nonces: std::sync::Arc::default(),
    };
    let c = gate.clone();
    let challenge = move |Args(r): Args<ChallengeRequest>| {
        let c = c.clone();
        async move { c.challenge(&r.client_nonce) }
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
        .rpc("challenge", challenge)
        .rpc("status", status)
        .rpc("start", start)
        .rpc("stop", stop)
        .rpc("restart", restart)
        .rpc("exit", exit)
        .rpc("reload", reload)
        .rpc("logs", logs)
        .rpc("top", top_handler)
}
