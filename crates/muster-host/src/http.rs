//! The host's HTTP endpoint (127.0.0.1 by default): the dashboard at `/`,
//! Prometheus text at `/metrics`, JSON under `/api/`, and the gateway:
//! `POST /call/SERVICE.METHOD` calls a method over the bus, and
//! `/openapi.json` describes every registered method from its schemas.
//! Everything the dashboard loads comes from here.

mod metrics;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use muster::{CallOptions, Client, RpcError, code};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::control::Command;
use crate::monitor::{SharedMonitor, total_cpu, total_rss};
use crate::supervisor::{Refusal, RefusalKind};
use crate::token;

/// Lifecycle events kept for the dashboard.
pub(crate) const RECENT_EVENTS: usize = 200;

/// Recent lifecycle events (newest last).
pub(crate) type Recent = Arc<Mutex<VecDeque<Value>>>;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) monitor: SharedMonitor,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) client: Client,
    pub(crate) token: Arc<str>,
    pub(crate) gateway_open: bool,
    pub(crate) recent: Recent,
    pub(crate) bus: Arc<dyn Fn() -> muster_zmq::bus::BusStats + Send + Sync>,
    /// Largest request body (the bus's message size limit).
    pub(crate) max_body: usize,
    /// `Host` names answered besides the loopback ones.
    pub(crate) http_hosts: Arc<[String]>,
    /// Status, top, events and metrics without the token.
    pub(crate) public_read: bool,
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves until the listener is dropped with its task.
pub(crate) fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/metrics", get(metrics))
        .route("/api/top", get(api_top))
        .route("/api/status", get(api_status))
        .route("/api/events", get(api_events))
        .route("/api/ctl/{action}", post(api_ctl))
        .route("/call/{target}", post(call))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                code::METHOD_NOT_FOUND,
                "no such endpoint",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard_and_headers,
        ))
        .with_state(state)
}

/// Refuses a `Host` that is not a loopback name or one of `[host]
/// http_hosts` (a page whose DNS name was rebound to 127.0.0.1 sends its
/// own name), and puts the security headers on every answer.
async fn guard_and_headers(
    State(s): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_name);
    let mut response = match host {
        Some(h) if !allowed_host(&h, &s.http_hosts) => {
            tracing::warn!(host = %h, "HTTP request refused: Host is not a name of this host");
            error(
                StatusCode::FORBIDDEN,
                code::UNAUTHORIZED,
                format!("Host {h:?} is not served here (add it to [host] http_hosts)"),
            )
        }
        _ => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    response
}

/// On every answer: no framing, no sniffing, no referrer, and a page that
/// runs only its own script.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// The name of a `Host` header, without its port.
fn host_name(h: &str) -> String {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_ascii_lowercase();
    }
    h.rsplit_once(':')
        .map_or(h, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                h
            }
        })
        .to_ascii_lowercase()
}

fn allowed_host(name: &str, extra: &[String]) -> bool {
    matches!(name, "localhost" | "127.0.0.1" | "::1")
        || name.ends_with(".localhost")
        || extra.iter().any(|e| e.eq_ignore_ascii_case(name))
}

/// The refusal of a read-only view, unless the token is given or
/// `[host] http_public_read` opens them.
fn may_read(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    (!s.public_read && !authorized(s, headers)).then(refuse)
}

/// Every error this endpoint answers: `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: i64, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.to_string()}})),
    )
        .into_response()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token::matches(&state.token, given)
}

fn refuse() -> Response {
    tracing::warn!("HTTP request refused: wrong or missing token");
    error(
        StatusCode::UNAUTHORIZED,
        code::UNAUTHORIZED,
        "the host's token is required (Authorization: Bearer TOKEN)",
    )
}

async fn api_top(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = may_read(&s, &headers) {
        return r;
    }
    let latest = s
        .monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latest();
    Json(serde_json::to_value(latest).unwrap_or_default()).into_response()
}

async fn ask<T>(
    s: &AppState,
    make: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            code::UNAVAILABLE,
            "the host is stopping",
        )
    };
    s.commands.send(make(tx)).await.map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())?.map_err(|e| {
        let status = match e.kind() {
            RefusalKind::NotFound => StatusCode::NOT_FOUND,
            RefusalKind::Invalid => StatusCode::BAD_REQUEST,
            RefusalKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::CONFLICT,
        };
        error(status, 1, e)
    })
}

async fn api_status(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = may_read(&s, &headers) {
        return r;
    }
    match ask(&s, |reply| Command::Status {
        transaction: None,
        reply,
    })
    .await
    {
        Ok(st) => Json(st).into_response(),
        Err(r) => r,
    }
}

async fn api_events(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = may_read(&s, &headers) {
        return r;
    }
    let recent = s.recent.lock().unwrap_or_else(PoisonError::into_inner);
    Json(Value::Array(recent.iter().cloned().collect())).into_response()
}

#[derive(serde::Deserialize)]
struct CtlBody {
    #[serde(default)]
    transaction: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

/// Restart or stop from the dashboard (token required). The token is
/// checked before anything else is read; the body is JSON whatever its
/// `Content-Type` says, and may be empty.
async fn api_ctl(
    State(s): State<AppState>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    if !authorized(&s, &headers) {
        return refuse();
    }
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_refused(&r),
    };
    let b = if body.iter().all(u8::is_ascii_whitespace) {
        CtlBody {
            transaction: None,
            service: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return rpc_error(&RpcError::invalid_params("", e)),
        }
    };
    let r = match action.as_str() {
        "restart" => {
            ask(&s, |reply| Command::Restart {
                transaction: b.transaction,
                service: b.service,
                reply,
            })
            .await
        }
        "stop" => {
            ask(&s, |reply| Command::Stop {
                transaction: b.transaction,
                service: b.service,
                reply,
            })
            .await
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                code::METHOD_NOT_FOUND,
                "actions: restart, stop",
            );
        }
    };
    match r {
        Ok(done) => Json(done).into_response(),
        Err(r) => r,
    }
}

/// The HTTP status that fits a JSON-RPC error.
pub(crate) fn http_status(code: i64) -> StatusCode {
    match code {
        code::PARSE_ERROR | code::INVALID_REQUEST | code::INVALID_PARAMS => StatusCode::BAD_REQUEST,
        code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        code::INTERNAL_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
        code::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
        code::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
        code::OVERLOADED => StatusCode::TOO_MANY_REQUESTS,
        code::TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        code::UNAUTHORIZED => StatusCode::UNAUTHORIZED,
        // An application's own error: the request was understood, the
        // method said no.
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// A body axum could not read (over the size limit, a broken stream).
fn body_refused(r: &BytesRejection) -> Response {
    let status = r.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        code::TOO_LARGE
    } else {
        code::INVALID_REQUEST
    };
    error(status, code, r.body_text())
}

/// A JSON-RPC error as an HTTP answer.
fn rpc_error(e: &RpcError) -> Response {
    (http_status(e.code), Json(json!({ "error": e }))).into_response()
}

/// Longest deadline `X-Muster-Timeout-Ms` may ask for: an hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The call's deadline from `X-Muster-Timeout-Ms` (default 5 s).
fn call_timeout(headers: &HeaderMap) -> Result<Duration, RpcError> {
    let Some(v) = headers.get("x-muster-timeout-ms") else {
        return Ok(muster::DEFAULT_TIMEOUT);
    };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| {
            RpcError::invalid_request(format!(
                "X-Muster-Timeout-Ms must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}"
            ))
        })
}

/// `POST /call/SERVICE.METHOD` with a JSON body (the params).
async fn call(
    State(s): State<AppState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    if !s.gateway_open && !authorized(&s, &headers) {
        return refuse();
    }
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_refused(&r),
    };
    let params: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return rpc_error(&RpcError::parse_error(e)),
        }
    };
    let timeout = match call_timeout(&headers) {
        Ok(t) => t,
        Err(e) => return rpc_error(&e),
    };
    match s
        .client
        .call_with::<_, Value>(&target, &params, CallOptions::default().timeout(timeout))
        .await
    {
        Ok(v) => Json(json!({ "result": v })).into_response(),
        Err(e) => rpc_error(&e),
    }
}

/// One `POST /call/SERVICE.METHOD` of the OpenAPI document: the params'
/// schema (with the limits the method's types declare) as a required
/// body, every status the gateway answers, and the size limit.
fn operation(
    service: &str,
    m: &muster::registry::MethodInfo,
    open: bool,
    max_body: usize,
) -> Value {
    let error = json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": {}}}}});
    let answer = |what: &str| json!({"description": what, "content": {"application/json": {"schema": error.clone()}}});
    let mut responses = json!({
        "200": {"description": "the result", "content": {"application/json": {"schema":
            {"type": "object", "required": ["result"], "properties": {"result": m.result.clone().unwrap_or(json!({}))}}}}},
        "400": answer("bad params (-32602, with data.path naming the field), a body that is not JSON, or a bad X-Muster-Timeout-Ms"),
        "404": answer("no such service or method (-32601)"),
        "413": answer("the body or the reply is over the size limit (-32003)"),
        "422": answer("the method's own error (its code)"),
        "429": answer("the instance is shutting down (-32002); try again"),
        "500": answer("the handler failed (-32603)"),
        "503": answer("no instance could answer (-32001)"),
        "504": answer("no reply within the deadline (-32000)"),
    });
    if !open {
        responses["401"] = answer("missing or wrong token (-32004)");
    }
    json!({"post": {
        "operationId": format!("{service}.{}", m.name),
        "tags": [service],
        "parameters": [{"name": "X-Muster-Timeout-Ms", "in": "header", "required": false,
            "description": "the call's deadline in milliseconds (default 5000)",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS}}],
        "requestBody": {
            "required": true,
            "description": format!("the params, as JSON (at most {max_body} bytes)"),
            "content": {"application/json": {"schema": m.params.clone().unwrap_or(json!({}))}}},
        "responses": responses,
    }})
}

/// OpenAPI 3.1 from the registry: one `POST /call/SERVICE.METHOD` per method.
async fn openapi(State(s): State<AppState>) -> Response {
    let instances = match s.client.instances().await {
        Ok(i) => i,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, e),
    };
    let mut paths = serde_json::Map::new();
    for i in &instances {
        if i.service == muster::registry::HOST_SERVICE {
            continue;
        }
        for m in &i.methods {
            let path = format!("/call/{}.{}", i.service, m.name);
            if paths.contains_key(&path) {
                continue;
            }
            paths.insert(path, operation(&i.service, m, s.gateway_open, s.max_body));
        }
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "muster gateway", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    });
    if !s.gateway_open {
        doc["components"] =
            json!({"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}});
        doc["security"] = json!([{"token": []}]);
    }
    Json(doc).into_response()
}

/// `/metrics`: Prometheus text, or OpenMetrics when asked (`Accept`).
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = may_read(&s, &headers) {
        return r;
    }
    let format =
        metrics::Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let latest = s
        .monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latest();
    let body = metrics::render(&families(&latest, &(s.bus)()), format);
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

/// The host's metric families from the latest samples and the bus counters.
fn families(
    latest: &[crate::monitor::MonitorSample],
    bus: &muster_zmq::bus::BusStats,
) -> Vec<metrics::Family> {
    use metrics::{Family, Kind, Sample, label};
    let inst = |t: &crate::monitor::MonitorSample, i: &crate::monitor::InstanceSample| {
        format!(
            r#"transaction="{}",context="{}",service="{}",instance="{}""#,
            label(&t.transaction),
            label(&t.context),
            label(&i.service),
            label(&i.status.instance)
        )
    };
    let all: Vec<_> = latest
        .iter()
        .flat_map(|t| t.instances.iter().map(move |i| (t, i)))
        .collect();
    let per_process = |f: &dyn Fn(&crate::monitor::InstanceSample) -> Option<f64>| {
        all.iter()
            .filter_map(|(t, i)| Some(Sample::new(inst(t, i), f(i)?)))
            .collect()
    };
    let methods: Vec<(String, &muster::stats::MethodReport)> = all
        .iter()
        .flat_map(|(t, i)| {
            i.methods
                .iter()
                .map(move |(m, r)| (format!(r#"{},method="{}""#, inst(t, i), label(m)), r))
        })
        .collect();
    let per_method = |f: &dyn Fn(&muster::stats::MethodReport) -> f64| {
        methods
            .iter()
            .map(|(l, r)| Sample::new(l.clone(), f(r)))
            .collect()
    };
    let bus_value = |v: u64| vec![Sample::new(String::new(), v as f64)];
    vec![
        Family {
            name: "muster_instance_cpu_percent",
            kind: Kind::Gauge,
            help: "CPU % of one core, the instance and its children",
            samples: per_process(&|i| Some(total_cpu(i.process.as_ref()?))),
        },
        Family {
            name: "muster_instance_resident_bytes",
            kind: Kind::Gauge,
            help: "Resident memory of the instance and its children",
            samples: per_process(&|i| Some(total_rss(i.process.as_ref()?) as f64)),
        },
        Family {
            name: "muster_instance_virtual_bytes",
            kind: Kind::Gauge,
            help: "Virtual memory of the instance process",
            samples: per_process(&|i| Some(i.process.as_ref()?.vms as f64)),
        },
        Family {
            name: "muster_instance_threads",
            kind: Kind::Gauge,
            help: "Threads of the instance process",
            samples: per_process(&|i| Some(i.process.as_ref()?.threads as f64)),
        },
        Family {
            name: "muster_instance_open_files",
            kind: Kind::Gauge,
            help: "Open file descriptors of the instance process",
            samples: per_process(&|i| Some(i.process.as_ref()?.open_files as f64)),
        },
        Family {
            name: "muster_instance_restarts",
            kind: Kind::Counter,
            help: "Restarts of the instance's slot",
            samples: per_process(&|i| Some(f64::from(i.status.restarts))),
        },
        Family {
            name: "muster_instance_up",
            kind: Kind::Gauge,
            help: "1 while the instance is running (ready)",
            samples: all
                .iter()
                .map(|(t, i)| {
                    Sample::new(
                        format!(r#"{},state="{}""#, inst(t, i), label(&i.status.state)),
                        f64::from(u8::from(i.status.state == "running")),
                    )
                })
                .collect(),
        },
        Family {
            name: "muster_method_requests",
            kind: Kind::Counter,
            help: "Requests (or events, or job runs) handled",
            samples: per_method(&|r| r.num_requests as f64),
        },
        Family {
            name: "muster_method_errors",
            kind: Kind::Counter,
            help: "Requests that ended in an error reply",
            samples: per_method(&|r| r.num_errors as f64),
        },
        Family {
            name: "muster_method_in_flight",
            kind: Kind::Gauge,
            help: "Requests being handled now",
            samples: per_method(&|r| r.in_flight as f64),
        },
        Family {
            name: "muster_method_latency_seconds",
            kind: Kind::Summary,
            help: "Handler time quantiles",
            samples: methods
                .iter()
                .flat_map(|(l, r)| {
                    let sample = |suffix, labels, value| Sample {
                        suffix,
                        labels,
                        value,
                    };
                    [
                        sample("", format!(r#"{l},quantile="0.5""#), r.p50_us as f64 / 1e6),
                        sample("", format!(r#"{l},quantile="0.99""#), r.p99_us as f64 / 1e6),
                        sample(
                            "_sum",
                            l.clone(),
                            (r.average_processing_time_us as f64 * r.num_requests as f64) / 1e6,
                        ),
                        sample("_count", l.clone(), r.num_requests as f64),
                    ]
                })
                .collect(),
        },
        Family {
            name: "muster_bus_instances",
            kind: Kind::Gauge,
            help: "Instances registered on the bus",
            samples: bus_value(bus.instances),
        },
        Family {
            name: "muster_bus_expired",
            kind: Kind::Counter,
            help: "Instances dropped for missed heartbeats",
            samples: bus_value(bus.expired),
        },
        Family {
            name: "muster_bus_bad_messages",
            kind: Kind::Counter,
            help: "Malformed messages the registry dropped",
            samples: bus_value(bus.bad_messages),
        },
        Family {
            name: "muster_bus_events_forwarded",
            kind: Kind::Counter,
            help: "Event messages the bus forwarded from publishers",
            samples: bus_value(bus.events_forwarded),
        },
        Family {
            name: "muster_bus_bad_subscriptions",
            kind: Kind::Counter,
            help: "Messages on the event outlet that were not subscriptions",
            samples: bus_value(bus.bad_subscriptions),
        },
    ]
}
