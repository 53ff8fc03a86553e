//! The caller side of the registry protocol.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use muster_core::auth::Credential;
use muster_core::wire::{Envelope, Header, Kind};
use muster_core::{Error, ErrorKind, id};
use omq_tokio::{Socket, SocketType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::ZmqOptions;
use crate::addr::BusAddr;
use crate::control;
use crate::socket::{self, envelope_message, frames, zmq_error};

type Pending = Mutex<HashMap<String, oneshot::Sender<Envelope>>>;

/// One DEALER to the bus registry, shared by the whole process.
#[derive(Debug)]
pub(crate) struct ControlClient {
    socket: Socket,
    pending: Arc<Pending>,
    next: AtomicU64,
    prefix: String,
    registry: String,
    reader: tokio::task::JoinHandle<()>,
    /// What this process proves itself with (`docs/security.md`).
    credential: Option<Credential>,
    /// The nonce of this connection's session (from `hello`).
    session: tokio::sync::Mutex<Option<String>>,
}

/// Verbs anyone may use: no credential is shown for them.
fn is_open(verb: &str) -> bool {
    verb == control::HELLO || verb == control::LIST
}

/// The part of a refusal that says why (see the bus's `verbs`).
#[derive(Deserialize)]
struct Refused {
    #[serde(default)]
    unauthorized: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

impl Drop for ControlClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ControlClient {
    pub(crate) async fn connect(addr: &BusAddr, options: &ZmqOptions) -> Result<Arc<Self>, Error> {
        let socket = Socket::new(
            SocketType::Dealer,
            socket::connecting(options.max_message_size, options.curve.as_ref()),
        );
        socket
            .connect(addr.registry().as_str())
            .await
            .map_err(|e| zmq_error(&format!("connect to bus {}", addr.registry()), e))?;
        let pending: Arc<Pending> = Arc::default();
        let reader = tokio::spawn(read_replies(socket.clone_shared(), pending.clone()));
        Ok(Arc::new(Self {
            socket,
            pending,
            next: AtomicU64::new(0),
            prefix: format!("c{}-", id::short_id()),
            registry: addr.registry(),
            reader,
            credential: options.credential.clone(),
            session: tokio::sync::Mutex::new(None),
        }))
    }

    /// Sends a control verb and waits for its answer. On a bus with
    /// credentials, the verb carries this process's proof; a bus that
    /// forgot the session (it restarted) is greeted again, once.
    pub(crate) async fn call<T: Serialize, R: DeserializeOwned>(
        &self,
        verb: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<R, Error> {
        let body = serde_json::to_vec(body)
            .map_err(|e| Error::new(ErrorKind::Codec, format!("encode {verb}: {e}")))?;
        let sign = self.credential.as_ref().filter(|_| !is_open(verb));
        for attempt in 0..2 {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let mut header = Header::new(Kind::Control);
            header.id = format!("{}{n}", self.prefix);
            header.method = Some(verb.to_owned());
            if let Some(c) = sign {
                let nonce = self.session(timeout).await?;
                let parts: [&[u8]; 5] = [
                    b"muster-registry",
                    nonce.as_bytes(),
                    header.id.as_bytes(),
                    verb.as_bytes(),
                    &body,
                ];
                header.auth = Some(format!("{} {}", c.key_id(), c.mac(&parts)));
            }
            let env = self.exchange(header, body.clone(), verb, timeout).await?;
            if let Ok(r) = serde_json::from_slice::<Refused>(&env.body)
                && let Some(kind) = r.unauthorized
            {
                if kind == "nonce" && attempt == 0 {
                    *self.session.lock().await = None;
                    continue;
                }
                return Err(Error::new(
                    ErrorKind::Unauthorized,
                    r.error
                        .unwrap_or_else(|| format!("{verb} refused by the bus")),
                ));
            }
            return serde_json::from_slice(&env.body).map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("bad {verb} reply from bus: {e}"),
                )
            });
        }
        Err(Error::new(
            ErrorKind::Unauthorized,
            format!("{verb}: the bus keeps forgetting this connection's session"),
        ))
    }

    /// This connection's nonce, from `hello` when there is none yet.
    async fn session(&self, timeout: Duration) -> Result<String, Error> {
        let mut session = self.session.lock().await;
        if let Some(n) = &*session {
            return Ok(n.clone());
        }
        let hello: control::Hello = Box::pin(self.call(control::HELLO, &(), timeout)).await?;
        *session = Some(hello.nonce.clone());
        Ok(hello.nonce)
    }

    /// One request and its reply envelope.
    async fn exchange(
        &self,
        header: Header,
        body: Vec<u8>,
        verb: &str,
        timeout: Duration,
    ) -> Result<Envelope, Error> {
        let _ = verb;
        let (tx, rx) = oneshot::channel();
        let key = header.id.clone();
        lock(&self.pending).insert(key.clone(), tx);
        // Out of the table however this ends, a caller that gave up (a
        // heartbeat awaiting news, cut short by a shutdown) included.
        let _waiting = Waiting {
            pending: &self.pending,
            key,
        };
        let env = Envelope::new(header, Bytes::from(body));
        // The send is inside the deadline too: with the bus away and the
        // socket's queue full, it would wait for the bus for ever.
        let reply = tokio::time::timeout(timeout, async {
            self.socket
                .send(envelope_message(&env, socket::Framing::Three))
                .await?;
            Ok::<_, omq_tokio::Error>(rx.await)
        })
        .await;
        match reply {
            Ok(Ok(Ok(env))) => Ok(env),
            Ok(Err(e)) => Err(zmq_error("send to bus", e)),
            _ => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "no bus answered at {} within {timeout:?} (is it running? a bus with CURVE answers only the keys it admits: MUSTER_CURVE)",
                    self.registry
                ),
            )),
        }
    }
}

/// A request's place in the table of those awaiting an answer.
struct Waiting<'a> {
    pending: &'a Pending,
    key: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.key);
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Envelope>>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn read_replies(socket: Socket, pending: Arc<Pending>) {
    while let Ok(msg) = socket.recv().await {
        match Envelope::from_frames(&frames(&msg)) {
            Ok(env) => {
                if let Some(tx) = lock(&pending).remove(&env.header.id) {
                    let _ = tx.send(env);
                }
            }
            Err(e) => crate::socket::log_dropped("bus reply", &e),
        }
    }
}
