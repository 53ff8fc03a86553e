//! NATS micro (the `$SRV` protocol, ADR-32), both ways.
//!
//! Every muster instance answers `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`
//! (all services, by name, by name and id) with the documents below, so
//! NATS's own tools list, inspect and call it: its methods are endpoints on
//! `<p>.rpc.<service>.<method>`, queue group `q`, their JSON Schemas in the
//! endpoint metadata, and the counts and latencies those of its `$stats`.
//!
//! The other way round, discovery gathers `$SRV.INFO` answers, so a service
//! written with any NATS micro library is listed beside muster's, and a
//! call that no muster instance takes is sent to the micro endpoint of that
//! name, with the params as its payload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use muster_core::registry::{InstanceInfo, MethodInfo};
use muster_core::wire::{ContentType, Envelope, Header, jsonrpc};
use muster_core::{Error, RpcError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::rpc::{SERVICE_ERROR, SERVICE_ERROR_CODE, Server};
use crate::{Inner, unavailable};

/// Service metadata key: the subject prefix of the muster namespace.
pub const META_PREFIX: &str = "muster.prefix";
/// Service metadata key: the whole muster registration, as JSON.
pub const META_INFO: &str = "muster.info";
/// Endpoint metadata key: JSON Schema of the params.
pub const META_PARAMS: &str = "muster.params_schema";
/// Endpoint metadata key: JSON Schema of the result.
pub const META_RESULT: &str = "muster.result_schema";

/// The answer to `$SRV.PING`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    /// `io.nats.micro.v1.ping_response`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Instance id.
    pub id: String,
    /// Service version.
    pub version: String,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
}

/// Other micro libraries write an empty map or list as `null` (Go's nil
/// map): read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One endpoint in `$SRV.INFO`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Endpoint name (the method).
    pub name: String,
    /// Subject it is served on.
    pub subject: String,
    /// Queue group of its subscription.
    #[serde(default, deserialize_with = "null_as_default")]
    pub queue_group: String,
    /// Free-form metadata (muster: the method's JSON Schemas).
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The answer to `$SRV.INFO`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    /// `io.nats.micro.v1.info_response`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Instance id.
    pub id: String,
    /// Service version.
    pub version: String,
    /// Description.
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    /// Free-form metadata (muster: the prefix and its registration).
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    /// The endpoints.
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint in `$SRV.STATS`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Endpoint name (the method).
    pub name: String,
    /// Subject it is served on.
    pub subject: String,
    /// Queue group of its subscription.
    #[serde(default)]
    pub queue_group: String,
    /// Requests handled.
    pub num_requests: u64,
    /// Of which answered with an error.
    pub num_errors: u64,
    /// The last error's message.
    #[serde(default)]
    pub last_error: String,
    /// Total handling time, nanoseconds.
    pub processing_time: u64,
    /// Mean handling time, nanoseconds.
    pub average_processing_time: u64,
}

/// The answer to `$SRV.STATS`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// `io.nats.micro.v1.stats_response`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Instance id.
    pub id: String,
    /// Service version.
    pub version: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When the instance started, RFC 3339.
    pub started: String,
    /// The endpoints with their counts.
    #[serde(default)]
    pub endpoints: Vec<EndpointStats>,
}

/// What an instance says of itself over `$SRV`.
struct Described {
    info: InstanceInfo,
    prefix: String,
    subjects: crate::Subjects,
}

impl Described {
    fn version(&self) -> String {
        if self.info.version.is_empty() {
            "0.0.0".into()
        } else {
            self.info.version.clone()
        }
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (META_PREFIX.to_owned(), self.prefix.clone()),
            (
                META_INFO.to_owned(),
                serde_json::to_string(&self.info).unwrap_or_default(),
            ),
        ])
    }

    fn ping(&self) -> Ping {
        Ping {
            kind: "io.nats.micro.v1.ping_response".into(),
            name: crate::service_token(&self.info.service).into_owned(),
            id: crate::service_token(&self.info.instance).into_owned(),
            version: self.version(),
            metadata: BTreeMap::from([(META_PREFIX.to_owned(), self.prefix.clone())]),
        }
    }

    fn endpoint(&self, m: &MethodInfo) -> EndpointInfo {
        let mut meta = BTreeMap::new();
        for (key, schema) in [(META_PARAMS, &m.params), (META_RESULT, &m.result)] {
            if let Some(s) = schema {
                meta.insert(key.to_owned(), s.to_string());
            }
        }
        EndpointInfo {
            name: m.name.clone(),
            subject: self.subjects.rpc(&self.info.service, &m.name),
            queue_group: "q".into(),
            metadata: Some(meta),
        }
    }

    fn info(&self) -> Info {
        Info {
            kind: "io.nats.micro.v1.info_response".into(),
            name: crate::service_token(&self.info.service).into_owned(),
            id: crate::service_token(&self.info.instance).into_owned(),
            version: self.version(),
            description: String::new(),
            metadata: self.metadata(),
            endpoints: self.info.methods.iter().map(|m| self.endpoint(m)).collect(),
        }
    }

    /// Stats from the instance's own `$stats` report.
    fn stats(&self, report: &Value) -> Stats {
        let uptime = report["uptime_secs"].as_i64().unwrap_or(0);
        let started = chrono::Utc::now() - chrono::Duration::seconds(uptime);
        let endpoints = self
            .info
            .methods
            .iter()
            .map(|m| {
                let r = &report["methods"][&m.name];
                let n = r["num_requests"].as_u64().unwrap_or(0);
                let avg_ns = r["average_processing_time_us"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_mul(1000);
                EndpointStats {
                    name: m.name.clone(),
                    subject: self.subjects.rpc(&self.info.service, &m.name),
                    queue_group: "q".into(),
                    num_requests: n,
                    num_errors: r["num_errors"].as_u64().unwrap_or(0),
                    last_error: r["last_error"].as_str().unwrap_or("").to_owned(),
                    processing_time: avg_ns.saturating_mul(n),
                    average_processing_time: avg_ns,
                }
            })
            .collect();
        Stats {
            kind: "io.nats.micro.v1.stats_response".into(),
            name: crate::service_token(&self.info.service).into_owned(),
            id: crate::service_token(&self.info.instance).into_owned(),
            version: self.version(),
            metadata: BTreeMap::from([(META_PREFIX.to_owned(), self.prefix.clone())]),
            started: started.to_rfc3339(),
            endpoints,
        }
    }
}

/// Subscribes the `$SRV` subjects of one instance: every verb for all
/// services, for its name, and for its name and id.
pub(crate) async fn serve(
    server: Server,
    info: InstanceInfo,
    stop: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let inner = server.inner.clone();
    let described = Arc::new(Described {
        prefix: inner.options.prefix.clone(),
        subjects: inner.subjects.clone(),
        info,
    });
    let name = crate::service_token(&described.info.service).into_owned();
    let id = crate::service_token(&described.info.instance).into_owned();
    let mut tasks = Vec::new();
    for subject in [
        "$SRV.*".to_owned(),
        format!("$SRV.*.{name}"),
        format!("$SRV.*.{name}.{id}"),
    ] {
        let sub = inner
            .client
            .subscribe(subject)
            .await
            .map_err(|e| unavailable("subscribe on NATS", &e))?;
        tasks.push(tokio::spawn(answer_all(
            server.clone(),
            described.clone(),
            sub,
            stop.clone(),
        )));
    }
    Ok(tasks)
}

async fn answer_all(
    server: Server,
    described: Arc<Described>,
    mut sub: Subscriber,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        answer(&server, &described, msg).await;
    }
    let _ = sub.unsubscribe().await;
}

async fn answer(server: &Server, described: &Described, msg: Message) {
    let Some(to) = msg.reply else { return };
    let verb = msg.subject.split('.').nth(1).unwrap_or_default();
    let body = match verb {
        "PING" => serde_json::to_vec(&described.ping()),
        "INFO" => serde_json::to_vec(&described.info()),
        "STATS" => {
            let report = crate::rpc::call_own(server, "$stats", Value::Object(Default::default()))
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .unwrap_or(Value::Null);
            serde_json::to_vec(&described.stats(&report))
        }
        _ => return,
    };
    let Ok(body) = body else { return };
    if let Err(e) = server.inner.client.publish(to, body.into()).await {
        tracing::debug!(error = %e, "cannot answer a $SRV request");
    }
}

/// Most `$SRV` answers one discovery takes.
const MAX_ANSWERS: usize = 100_000;

/// Sends `verb` (`PING`, `INFO`, `STATS`) to `subject_tail` (empty for
/// every service, `NAME` or `NAME.ID`) and gathers the answers until none
/// has come for `quiet` (at most two seconds in all).
async fn gather(inner: &Inner, verb: &str, subject_tail: &str) -> Result<Vec<Message>, Error> {
    let inbox = inner.client.new_inbox();
    let mut sub = inner
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable("discover on NATS", &e))?;
    let subject = if subject_tail.is_empty() {
        format!("$SRV.{verb}")
    } else {
        format!("$SRV.{verb}.{subject_tail}")
    };
    inner
        .client
        .publish_with_reply(subject, inbox, Bytes::new())
        .await
        .map_err(|e| unavailable("discover on NATS", &e))?;
    inner
        .client
        .flush()
        .await
        .map_err(|e| unavailable("discover on NATS", &e))?;
    let end = Instant::now() + Duration::from_secs(2);
    // The first answers take a round trip; after that, a pause means done.
    let mut wait = inner.options.discovery_quiet.max(Duration::from_millis(50)) * 2;
    let mut got = Vec::new();
    // Bounded whatever answers: a flood of them costs no more than this.
    while got.len() < MAX_ANSWERS {
        let left = end.saturating_duration_since(Instant::now()).min(wait);
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(m)) => {
                got.push(m);
                wait = inner.options.discovery_quiet;
            }
            _ => break,
        }
    }
    if got.len() == MAX_ANSWERS {
        tracing::warn!("discovery stopped at {MAX_ANSWERS} answers");
    }
    let _ = sub.unsubscribe().await;
    Ok(got)
}

/// Every instance on the bus: muster's of this prefix, and plain NATS
/// micro services.
pub(crate) async fn discover(inner: &Inner) -> Result<Vec<InstanceInfo>, Error> {
    let answers = gather(inner, "INFO", "").await?;
    let mut out: Vec<InstanceInfo> = answers
        .iter()
        .filter_map(|m| serde_json::from_slice::<Info>(&m.payload).ok())
        .filter_map(|info| instance_of(&info, &inner.options.prefix))
        .collect();
    out.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    out.dedup_by(|a, b| a.instance == b.instance && a.service == b.service);
    Ok(out)
}

/// The muster view of one `$SRV.INFO` answer: `None` for a muster
/// instance of another prefix.
fn instance_of(info: &Info, prefix: &str) -> Option<InstanceInfo> {
    match (info.metadata.get(META_PREFIX), info.metadata.get(META_INFO)) {
        (Some(p), _) if p != prefix => None,
        (Some(_), Some(json)) => serde_json::from_str(json).ok(),
        _ => {
            let methods: Vec<Value> = info
                .endpoints
                .iter()
                .map(|e| serde_json::json!({ "name": e.name }))
                .collect();
            serde_json::from_value(serde_json::json!({
                "service": info.name,
                "instance": info.id,
                "version": info.version,
                "endpoint": "nats micro",
                "methods": methods,
                "subscriptions": [],
                "queues": [],
                "pid": 0,
            }))
            .ok()
        }
    }
}

/// Calls the micro endpoint `method` of the plain NATS service named in
/// `request` (no muster instance serves it): the params go as the
/// payload, and the answer comes back as a JSON-RPC reply.
pub(crate) async fn call(
    inner: &Inner,
    request: &Envelope,
    timeout: Duration,
) -> Result<Envelope, RpcError> {
    let service = request.header.service.clone().unwrap_or_default();
    let method = request.header.method.clone().unwrap_or_default();
    let target = format!("{service}.{method}");
    // The first instance to answer names the endpoint's subject; nobody
    // answering means nobody serves it, which the caller learns at once.
    let info = inner
        .client
        .send_request(
            format!("$SRV.INFO.{service}"),
            async_nats::Request::new().timeout(Some(timeout.min(Duration::from_secs(2)))),
        )
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => RpcError::method_not_found(&target),
            _ => RpcError::unavailable(format!("no answer to $SRV.INFO.{service}: {e}")),
        })?;
    let subject = serde_json::from_slice::<Info>(&info.payload)
        .ok()
        .and_then(|i| i.endpoints.into_iter().find(|e| e.name == method))
        .map(|e| e.subject)
        .ok_or_else(|| RpcError::method_not_found(&target))?;
    let ct = ContentType::from_header(request.header.content_type.as_deref()).unwrap_or_default();
    if ct != ContentType::Json {
        return Err(RpcError::invalid_request(
            "a plain NATS micro service takes JSON only",
        ));
    }
    let body = jsonrpc::decode_request(ct, &request.body)?;
    let params = body
        .params
        .as_ref()
        .map_or_else(|| "null".to_owned(), |p| p.get().to_owned());
    let reply = inner
        .client
        .send_request(
            subject,
            async_nats::Request::new()
                .payload(params.into())
                .timeout(Some(timeout)),
        )
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::TimedOut => {
                RpcError::timeout(format!("no reply from {target} within {timeout:?}"))
            }
            async_nats::RequestErrorKind::NoResponders => RpcError::method_not_found(&target),
            async_nats::RequestErrorKind::Other => RpcError::unavailable(e.to_string()),
        })?;
    let header = Header::reply_to(&request.header);
    let out = match error_of(&reply) {
        Some(error) => jsonrpc::encode_error(ct, &body.id, &error),
        None => {
            let result: Value = serde_json::from_slice(&reply.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&reply.payload).into_owned())
            });
            jsonrpc::encode_result(ct, &body.id, &result)?
        }
    };
    Ok(Envelope::new(header, out))
}

/// The error a micro reply carries in its headers (`Nats-Service-Error`
/// and its code; a code that is not a number reads as an internal error).
pub(crate) fn error_of(reply: &async_nats::Message) -> Option<RpcError> {
    let headers = reply.headers.as_ref()?;
    let message = headers.get(SERVICE_ERROR)?.as_str();
    let code = headers
        .get(SERVICE_ERROR_CODE)
        .and_then(|c| c.as_str().parse::<i64>().ok())
        .unwrap_or(muster_core::error::code::INTERNAL_ERROR);
    Some(RpcError::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_maps_and_lists_read_as_empty() {
        let go = r#"{"type":"io.nats.micro.v1.info_response","name":"g","id":"1","version":"1.0.0","description":null,"metadata":null,"endpoints":[{"name":"e","subject":"g.e","queue_group":"q","metadata":null}]}"#;
        let info: Info = serde_json::from_str(go).unwrap();
        assert!(info.metadata.is_empty() && info.description.is_empty());
        assert_eq!(info.endpoints[0].subject, "g.e");
        let none: Info = serde_json::from_str(
            r#"{"type":"t","name":"g","id":"1","version":"1","endpoints":null}"#,
        )
        .unwrap();
        assert!(none.endpoints.is_empty());
    }

    #[test]
    fn instances_of_another_prefix_are_not_listed_and_plain_ones_are() {
        let mut info = Info {
            kind: "io.nats.micro.v1.info_response".into(),
            name: "calc".into(),
            id: "abc".into(),
            version: "1.0.0".into(),
            description: String::new(),
            metadata: BTreeMap::new(),
            endpoints: vec![EndpointInfo {
                name: "add".into(),
                subject: "calc.add".into(),
                queue_group: "q".into(),
                metadata: None,
            }],
        };
        let plain = instance_of(&info, "muster").expect("a plain micro service is listed");
        assert_eq!(
            (plain.service.as_str(), plain.instance.as_str()),
            ("calc", "abc")
        );
        assert_eq!(plain.methods[0].name, "add");
        info.metadata.insert(META_PREFIX.into(), "other".into());
        assert!(instance_of(&info, "muster").is_none());
    }
}
