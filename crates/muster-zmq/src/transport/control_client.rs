//! The caller side of the registry protocol.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use muster_core::wire::{Envelope, Header, Kind};
use muster_core::{Error, ErrorKind, id};
use omq_tokio::{Socket, SocketType};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::ZmqOptions;
use crate::addr::BusAddr;
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
}

impl Drop for ControlClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ControlClient {
    pub(crate) async fn connect(addr: &BusAddr, options: &ZmqOptions) -> Result<Arc<Self>, Error> {
        let socket = socket::socket(SocketType::Dealer, options.max_message_size);
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
        }))
    }

    /// Sends a control verb and waits for its answer.
    pub(crate) async fn call<T: Serialize, R: DeserializeOwned>(
        &self,
        verb: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<R, Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut header = Header::new(Kind::Control);
        header.id = format!("{}{n}", self.prefix);
        header.method = Some(verb.to_owned());
        let body = serde_json::to_vec(body)
            .map_err(|e| Error::new(ErrorKind::Codec, format!("encode {verb}: {e}")))?;
        let (tx, rx) = oneshot::channel();
        let key = header.id.clone();
        lock(&self.pending).insert(key.clone(), tx);
        let env = Envelope::new(header, Bytes::from(body));
        let sent = self.socket.send(envelope_message(&env)).await;
        let reply = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx).await,
            Err(e) => {
                lock(&self.pending).remove(&key);
                return Err(zmq_error("send to bus", e));
            }
        };
        lock(&self.pending).remove(&key);
        match reply {
            Ok(Ok(env)) => serde_json::from_slice(&env.body).map_err(|e| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("bad {verb} reply from bus: {e}"),
                )
            }),
            _ => Err(Error::new(
                ErrorKind::Unavailable,
                format!("no bus answered at {} within {timeout:?}", self.registry),
            )),
        }
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
