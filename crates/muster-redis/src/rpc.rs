//! RPC on Redis lists. A request is pushed on `<p>:rpc:<service>` (or the
//! instance's own list when the header names one) as
//! `expires_ms \n reply_key \n envelope-blob`; a free instance pops it with
//! `BRPOP`, so load goes to whoever has room. The reply is pushed on the
//! caller's `reply_key`, which expires a minute after its last reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_core::retry::Backoff;
use muster_core::transport::{BoxFuture, Dispatch, Registration, Served};
use muster_core::wire::{Envelope, Header, Kind, jsonrpc};
use muster_core::{Error, RpcError};
use tokio::sync::{OnceCell, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{Inner, Keys, now_ms, registry, unavailable};

type Pending = Mutex<HashMap<String, oneshot::Sender<Envelope>>>;

/// The calling side: one reply list per transport and the calls waiting on it.
#[derive(Debug)]
pub(crate) struct Caller {
    reply_key: String,
    pending: Arc<Pending>,
    reader: OnceCell<()>,
    next: std::sync::atomic::AtomicU64,
}

impl Caller {
    pub(crate) fn new(keys: &Keys) -> Self {
        Self {
            reply_key: keys.reply(&muster_core::id::short_id()),
            pending: Arc::default(),
            reader: OnceCell::new(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Envelope>>> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the reply reader on first use.
async fn ensure_reader(inner: &Arc<Inner>) -> Result<(), Error> {
    inner
        .rpc
        .reader
        .get_or_try_init(|| async {
            let conn = inner.dedicated().await?;
            tokio::spawn(read_replies(
                conn,
                inner.rpc.reply_key.clone(),
                inner.rpc.pending.clone(),
                inner.shutdown.clone(),
                inner.options.max_message_size,
            ));
            Ok::<(), Error>(())
        })
        .await
        .map(|_| ())
}

async fn read_replies(
    mut conn: redis::aio::ConnectionManager,
    key: String,
    pending: Arc<Pending>,
    shutdown: CancellationToken,
    max: usize,
) {
    let mut backoff = Backoff::new();
    while !shutdown.is_cancelled() {
        let popped: Result<Option<(String, Vec<u8>)>, _> = redis::cmd("BRPOP")
            .arg(&key)
            .arg(1.0)
            .query_async(&mut conn)
            .await;
        match popped {
            Ok(Some((_, blob))) => {
                backoff.succeeded();
                if blob.len() > max {
                    tracing::warn!(size = blob.len(), "reply over the size limit; dropped");
                    continue;
                }
                match Envelope::from_blob(&blob) {
                    Ok(env) => {
                        if let Some(tx) = lock(&pending).remove(&env.header.id) {
                            let _ = tx.send(env);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable reply; dropped"),
                }
            }
            Ok(None) => backoff.succeeded(),
            Err(e) => {
                let wait = backoff.failed();
                if backoff.worth_logging() {
                    tracing::warn!(error = %e, failures = backoff.failures(), "reading replies from Redis failed; retrying");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Sends a request and waits for its reply.
pub(crate) async fn request(
    inner: &Arc<Inner>,
    mut request: Envelope,
    timeout: Duration,
) -> Result<Envelope, RpcError> {
    let service = request.header.service.clone().unwrap_or_default();
    let method = request.header.method.clone().unwrap_or_default();
    let instance = request.header.instance.as_deref();
    let routes = registry::routes(inner).await?;
    if muster_core::registry::candidates(&routes, |i| i, &service, &method, instance).is_err() {
        // The copy may predate the instance's registration: "no such
        // service" is only answered from the registry as it is now.
        let routes = registry::list(inner).await?;
        muster_core::registry::candidates(&routes, |i| i, &service, &method, instance)?;
    }
    ensure_reader(inner).await?;
    if request.header.id.is_empty() {
        let n = inner
            .rpc
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request.header.id = format!("{}-{n}", inner.rpc.reply_key);
    }
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    request.header.deadline_ms = Some(timeout_ms);
    let list = match &request.header.instance {
        Some(id) => inner.keys.rpc_instance(&service, id),
        None => inner.keys.rpc(&service),
    };
    let mut item = format!(
        "{}\n{}\n",
        now_ms().saturating_add(timeout_ms),
        inner.rpc.reply_key
    )
    .into_bytes();
    item.extend_from_slice(&request.to_blob());
    if item.len() > inner.options.max_message_size {
        return Err(RpcError::too_large(
            item.len(),
            inner.options.max_message_size,
        ));
    }
    let id = request.header.id.clone();
    let (tx, rx) = oneshot::channel();
    lock(&inner.rpc.pending).insert(id.clone(), tx);
    let mut conn = inner.conn.clone();
    let pushed = redis::pipe()
        .cmd("LPUSH")
        .arg(&list)
        .arg(item)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&list)
        .arg(timeout_ms.saturating_add(60_000))
        .ignore()
        .query_async::<()>(&mut conn)
        .await;
    if let Err(e) = pushed {
        lock(&inner.rpc.pending).remove(&id);
        return Err(unavailable("send request", &e).into());
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(reply)) => Ok(reply),
        _ => {
            lock(&inner.rpc.pending).remove(&id);
            Err(RpcError::timeout(format!(
                "no reply from {service}.{method} within {timeout:?}"
            )))
        }
    }
}

/// A served instance: a heartbeat task and a pop loop.
#[derive(Debug)]
pub(crate) struct RedisServed {
    inner: Arc<Inner>,
    instance: String,
    stop: CancellationToken,
    slots: Arc<Semaphore>,
    max_in_flight: u32,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Served for RedisServed {
    fn stop(self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.stop.cancel();
            if let Err(e) = registry::remove(&self.inner, &self.instance).await {
                tracing::warn!(error = %e, "cannot unregister; the entry expires by itself");
            }
            // Every slot back = every popped request answered.
            let _ = tokio::time::timeout(grace, self.slots.acquire_many(self.max_in_flight)).await;
            for t in &self.tasks {
                t.abort();
            }
        })
    }

    fn endpoint(&self) -> String {
        format!("redis:{}", self.inner.keys.rpc(""))
    }
}

pub(crate) async fn serve(
    inner: Arc<Inner>,
    registration: Registration,
    dispatch: Arc<dyn Dispatch>,
) -> Result<RedisServed, Error> {
    let mut info = registration.info;
    info.endpoint = inner.keys.rpc_instance(&info.service, &info.instance);
    let info_json = serde_json::to_string(&info)
        .map_err(|e| Error::new(muster_core::ErrorKind::Codec, e.to_string()))?;
    registry::refresh(&inner, &info_json, &info.instance).await?;
    let stop = CancellationToken::new();
    let max_in_flight = u32::try_from(registration.max_in_flight.clamp(1, 100_000)).unwrap_or(1);
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let beat = {
        let inner = inner.clone();
        let stop = stop.clone();
        let id = info.instance.clone();
        tokio::spawn(async move {
            let every = inner.options.ttl / 3;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = inner.shutdown.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = registry::refresh(&inner, &info_json, &id).await {
                    tracing::warn!(error = %e, "heartbeat to Redis failed");
                }
            }
        })
    };
    let conn = inner.dedicated().await?;
    let lists = vec![
        inner.keys.rpc_instance(&info.service, &info.instance),
        inner.keys.rpc(&info.service),
    ];
    let pop = tokio::spawn(pop_loop(
        inner.clone(),
        conn,
        lists,
        dispatch,
        slots.clone(),
        stop.clone(),
    ));
    Ok(RedisServed {
        inner,
        instance: info.instance,
        stop,
        slots,
        max_in_flight,
        tasks: vec![beat, pop],
    })
}

async fn pop_loop(
    inner: Arc<Inner>,
    mut conn: redis::aio::ConnectionManager,
    lists: Vec<String>,
    dispatch: Arc<dyn Dispatch>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        if stop.is_cancelled() {
            break;
        }
        // Short blocks so a stop is noticed; whatever is popped is answered.
        let popped: Result<Option<(String, Vec<u8>)>, _> = redis::cmd("BRPOP")
            .arg(&lists)
            .arg(0.5)
            .query_async(&mut conn)
            .await;
        let item = match popped {
            Ok(Some((_, item))) => {
                backoff.succeeded();
                item
            }
            Ok(None) => {
                backoff.succeeded();
                continue;
            }
            Err(e) => {
                let wait = backoff.failed();
                if backoff.worth_logging() {
                    tracing::warn!(error = %e, failures = backoff.failures(), "taking requests from Redis failed; retrying");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let Some((reply_key, request)) = accept(&item, inner.options.max_message_size) else {
            continue;
        };
        let dispatch = dispatch.clone();
        let mut conn = inner.conn.clone();
        tokio::spawn(async move {
            let reply = match request {
                Ok(env) => dispatch.dispatch(env).await,
                Err(refusal) => Some(refusal),
            };
            // A notification gets no reply.
            let Some(reply) = reply else {
                drop(permit);
                return;
            };
            let sent = redis::pipe()
                .cmd("LPUSH")
                .arg(&reply_key)
                .arg(reply.to_blob())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&reply_key)
                .arg(60_000)
                .ignore()
                .query_async::<()>(&mut conn)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot send a reply; the caller will time out");
            }
            drop(permit);
        });
    }
}

/// Reads a popped item: `Some((reply_key, Ok(request)))` to serve,
/// `Some((reply_key, Err(error reply)))` to refuse, `None` to drop
/// (expired, or no way to answer).
fn accept(item: &[u8], max: usize) -> Option<(String, Result<Envelope, Envelope>)> {
    let mut parts = item.splitn(3, |b| *b == b'\n');
    let expires = parts.next()?;
    let reply_key = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let blob = parts.next()?;
    let expires: u64 = std::str::from_utf8(expires).ok()?.parse().ok()?;
    if expires < now_ms() {
        tracing::debug!("request expired in the queue; dropped");
        return None;
    }
    if item.len() > max {
        let header = salvage(blob)?;
        return Some((
            reply_key,
            Err(jsonrpc::error_envelope(
                &header,
                &RpcError::too_large(item.len(), max),
            )),
        ));
    }
    match Envelope::from_blob(blob) {
        Ok(env) if env.header.kind == Kind::Request => Some((reply_key, Ok(env))),
        Ok(env) => Some((
            reply_key,
            Err(jsonrpc::error_envelope(
                &env.header,
                &RpcError::invalid_request("expected kind \"request\""),
            )),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable request");
            let header = salvage(blob)?;
            Some((
                reply_key,
                Err(jsonrpc::error_envelope(
                    &header,
                    &RpcError::invalid_request(e),
                )),
            ))
        }
    }
}

fn salvage(blob: &[u8]) -> Option<Header> {
    let header = blob.splitn(3, |b| *b == b'\n').nth(1)?;
    muster_core::wire::decode_header(header)
        .ok()
        .filter(|h| !h.id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_never_panics_and_refuses_clearly() {
        for item in [
            &b""[..],
            b"x",
            b"1\n",
            b"99999999999999\nk\n",
            b"abc\nk\nMUSTER/1\n{}\n",
        ] {
            let _ = accept(item, 1024);
        }
        let req = Envelope::new(Header::request("r1", "s", "m"), "{}");
        let mut item = format!("{}\nreply\n", now_ms() + 10_000).into_bytes();
        item.extend_from_slice(&req.to_blob());
        let (key, got) = accept(&item, 1 << 20).unwrap();
        assert_eq!(key, "reply");
        assert_eq!(got.unwrap(), req);
        let (_, refused) = accept(&item, 10).unwrap();
        assert!(refused.is_err(), "over the limit is answered with an error");
        let mut old = b"1\nreply\n".to_vec();
        old.extend_from_slice(&req.to_blob());
        assert!(
            accept(&old, 1 << 20).is_none(),
            "expired requests are dropped"
        );
    }
}
