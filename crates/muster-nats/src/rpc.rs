//! RPC on NATS request/reply. Every instance subscribes
//! `<p>.rpc.<service>.*` in the queue group `q`, so NATS gives each request
//! to one of them, and `<p>.inst.<instance>.*` for calls to it alone. A
//! request from muster and its reply are one payload each, the muster
//! header and the JSON-RPC body as on Redis (`MUSTER/1\n<header>\n<body>`,
//! [`Envelope::to_blob`]), with no NATS headers: a message with headers
//! costs async-nats and nats-server so much more that it cut the calls a
//! second by a fifth (measured in `docs/benchmarks.md`, "NATS, third
//! round"). A request whose payload does not start so comes from a plain
//! NATS micro client: its payload is the params, and the reply is the
//! bare result, or the micro error headers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use muster_core::transport::{BoxFuture, Dispatch, Registration, Served};
use muster_core::wire::{ContentType, Envelope, Header, Kind, jsonrpc};
use muster_core::{Error, ErrorKind, RpcError};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{Inner, is_token, micro, service_token, unavailable};

/// The micro specification's error headers.
pub(crate) const SERVICE_ERROR: &str = "Nats-Service-Error";
pub(crate) const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// `text` as a NATS header value. async-nats writes a value as it is
/// given, and a line break in it would end the header there and have the
/// server read the rest as commands of this connection: line breaks
/// become spaces.
pub(crate) fn header_text(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The micro specification's error headers for a reply to a plain client.
fn micro_error(message: &str, code: i64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(SERVICE_ERROR, header_text(message));
    h.insert(SERVICE_ERROR_CODE, code.to_string());
    h
}

/// Sends a request and waits for its reply.
pub(crate) async fn request(
    inner: &Arc<Inner>,
    mut request: Envelope,
    timeout: Duration,
) -> Result<Envelope, RpcError> {
    let service = request.header.service.clone().unwrap_or_default();
    let method = request.header.method.clone().unwrap_or_default();
    if !is_token(&service_token(&service)) || !is_token(&method) {
        return Err(RpcError::method_not_found(format!("{service}.{method}")));
    }
    if request.header.id.is_empty() {
        request.header.id = muster_core::id::short_id();
    }
    request.header.deadline_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let subject = match &request.header.instance {
        Some(id) if is_token(&service_token(id)) => inner.subjects.instance(id, &method),
        Some(id) => {
            return Err(RpcError::unavailable(format!(
                "no instance {id:?} of {service}"
            )));
        }
        None => inner.subjects.rpc(&service, &method),
    };
    // Taken without a copy (async-nats copies a `String` subject).
    let subject = async_nats::Subject::from(subject);
    let blob = request.to_blob();
    if blob.len() > inner.options.max_message_size {
        return Err(RpcError::too_large(
            blob.len(),
            inner.options.max_message_size,
        ));
    }
    let sent = inner
        .client
        .send_request(
            subject,
            async_nats::Request::new()
                .payload(blob.into())
                .timeout(Some(timeout)),
        )
        .await;
    match sent {
        Ok(reply) => reply_envelope(reply),
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                if request.header.instance.is_some() {
                    return Err(RpcError::unavailable(format!(
                        "instance {} of {service} is not on the bus",
                        request.header.instance.as_deref().unwrap_or_default()
                    )));
                }
                // Not a muster service: perhaps a plain NATS micro one.
                micro::call(inner, &request, timeout).await
            }
            async_nats::RequestErrorKind::TimedOut => Err(RpcError::timeout(format!(
                "no reply from {service}.{method} within {timeout:?}"
            ))),
            async_nats::RequestErrorKind::Other => {
                Err(RpcError::unavailable(format!("NATS request failed: {e}")))
            }
        },
    }
}

fn reply_envelope(reply: Message) -> Result<Envelope, RpcError> {
    if Envelope::looks_like_blob(&reply.payload) {
        return Envelope::from_blob_bytes(&reply.payload)
            .map_err(|e| RpcError::parse_error(format!("reply: {e}")));
    }
    // An instance that could not read the request answers as a micro
    // service would: the error is in the headers.
    if let Some(error) = micro::error_of(&reply) {
        return Err(error);
    }
    Err(RpcError::parse_error(
        "a reply without the muster header came back to a muster request",
    ))
}

/// A served instance: its subscriptions' tasks and the requests in flight.
#[derive(Debug)]
pub(crate) struct NatsServed {
    endpoint: String,
    stop: CancellationToken,
    slots: Arc<Semaphore>,
    max_in_flight: u32,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Served for NatsServed {
    fn stop(mut self: Box<Self>, grace: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // The readers end and drop their subscriptions: NATS stops
            // sending, and `$SRV` no longer lists the instance.
            self.stop.cancel();
            for t in &mut self.tasks {
                let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
            }
            // Every slot back = every request taken answered.
            let _ = tokio::time::timeout(grace, self.slots.acquire_many(self.max_in_flight)).await;
            for t in &self.tasks {
                t.abort();
            }
        })
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
}

/// What a served instance needs to answer a request.
#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) inner: Arc<Inner>,
    pub(crate) service: String,
    pub(crate) dispatch: Arc<dyn Dispatch>,
    pub(crate) slots: Arc<Semaphore>,
}

pub(crate) async fn serve(
    inner: Arc<Inner>,
    registration: Registration,
    dispatch: Arc<dyn Dispatch>,
) -> Result<NatsServed, Error> {
    let mut info = registration.info;
    let tokens = [
        ("service", service_token(&info.service).into_owned()),
        ("instance", service_token(&info.instance).into_owned()),
    ];
    for (what, name) in &tokens {
        if !is_token(name) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{what} name {name:?} cannot be a NATS subject token (no dots, wildcards or spaces)"
                ),
            ));
        }
    }
    info.endpoint = format!("nats:{}", inner.subjects.instance_all(&info.instance));
    let max_in_flight = u32::try_from(registration.max_in_flight.clamp(1, 100_000)).unwrap_or(1);
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let subscribe = |r: Result<Subscriber, async_nats::SubscribeError>| {
        r.map_err(|e| unavailable("subscribe on NATS", &e))
    };
    let balanced = subscribe(
        inner
            .client
            .queue_subscribe(inner.subjects.rpc_all(&info.service), "q".into())
            .await,
    )?;
    let own = subscribe(
        inner
            .client
            .subscribe(inner.subjects.instance_all(&info.instance))
            .await,
    )?;
    let server = Server {
        inner: inner.clone(),
        service: info.service.clone(),
        dispatch,
        slots: slots.clone(),
    };
    let stop = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(read(server.clone(), balanced, stop.clone())),
        tokio::spawn(read(server.clone(), own, stop.clone())),
    ];
    tasks.extend(micro::serve(server, info.clone(), stop.clone()).await?);
    inner
        .client
        .flush()
        .await
        .map_err(|e| unavailable("subscribe on NATS", &e))?;
    Ok(NatsServed {
        endpoint: info.endpoint,
        stop,
        slots,
        max_in_flight,
        tasks,
    })
}

/// Takes requests from one subscription, each when a slot is free, until
/// the instance stops.
async fn read(server: Server, mut sub: Subscriber, stop: CancellationToken) {
    let mut inline = muster_core::inline::Inline::default();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = server.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let server = server.clone();
        let answering = Box::pin(async move {
            answer(&server, msg).await;
            drop(permit);
        });
        // Answered here when quick: the replies of one read leave in one
        // write, and there is no task to spawn.
        if let Some(pending) = inline.poll_once(answering) {
            tokio::spawn(pending);
        }
    }
    let _ = sub.unsubscribe().await;
}

async fn answer(server: &Server, msg: Message) {
    let inner = &server.inner;
    let max = inner.options.max_message_size;
    if !Envelope::looks_like_blob(&msg.payload) {
        let method = msg
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        return answer_plain(server, &method, msg).await;
    }
    let reply = if msg.payload.len() > max {
        Err(RpcError::too_large(msg.payload.len(), max))
    } else {
        Envelope::from_blob_bytes(&msg.payload).map_err(|e| {
            tracing::warn!(error = %e, "request with an unreadable muster header");
            RpcError::invalid_request(format!("unreadable muster header: {e}"))
        })
    };
    let reply = match reply {
        Ok(request) if request.header.kind != Kind::Request => Some(jsonrpc::error_envelope(
            &request.header,
            &RpcError::invalid_request("expected kind \"request\""),
        )),
        Ok(request) => server.dispatch.dispatch(request).await,
        Err(e) => {
            if let Some(to) = msg.reply {
                let h = micro_error(&e.message, e.code);
                let _ = inner.client.publish_with_headers(to, h, Bytes::new()).await;
            }
            return;
        }
    };
    if let (Some(reply), Some(to)) = (reply, msg.reply) {
        let sent = inner.client.publish(to, reply.to_blob().into()).await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot send a reply; the caller will time out");
        }
    }
}

/// A request from a plain NATS client: the payload is the params (JSON,
/// or nothing), the reply the bare result or the micro error headers.
pub(crate) async fn answer_plain(server: &Server, method: &str, msg: Message) {
    let Some(to) = msg.reply.clone() else { return };
    let inner = &server.inner;
    let outcome = match plain_params(&msg.payload, inner.options.max_message_size) {
        Ok(params) => call_own(server, method, params).await,
        Err(e) => Err(e),
    };
    let sent = match outcome {
        Ok(result) => inner.client.publish(to, result).await,
        Err(e) => {
            let h = micro_error(&e.message, e.code);
            let body = serde_json::to_vec(&e).unwrap_or_default();
            inner.client.publish_with_headers(to, h, body.into()).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot send a reply; the caller will time out");
    }
}

fn plain_params(payload: &[u8], max: usize) -> Result<Value, RpcError> {
    if payload.len() > max {
        return Err(RpcError::too_large(payload.len(), max));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(payload)
        .map_err(|e| RpcError::parse_error(format!("the request is not JSON: {e}")))
}

/// Calls one of this instance's own methods through its dispatcher, as a
/// muster request would: the bare JSON result, or the error.
pub(crate) async fn call_own(
    server: &Server,
    method: &str,
    params: Value,
) -> Result<Bytes, RpcError> {
    let header = Header::request(muster_core::id::short_id(), &server.service, method);
    let body = jsonrpc::encode_request(ContentType::Json, 1, method, &params)?;
    let reply = server
        .dispatch
        .dispatch(Envelope::new(header, body))
        .await
        .ok_or_else(|| RpcError::internal("no reply"))?;
    let result = jsonrpc::decode_reply(ContentType::Json, &reply.body)??;
    Ok(Bytes::copy_from_slice(result.get().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_params_are_json_or_nothing() {
        assert_eq!(plain_params(b"", 10).unwrap(), Value::Null);
        assert_eq!(plain_params(b" {\"a\":1}", 100).unwrap()["a"], 1);
        assert_eq!(plain_params(b"nope", 100).unwrap_err().code, -32700);
        assert_eq!(plain_params(b"[1,2,3]", 3).unwrap_err().code, -32003);
    }
}
