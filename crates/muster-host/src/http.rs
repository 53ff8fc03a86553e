//! The host's HTTP endpoint (127.0.0.1 by default): the dashboard at `/`,
//! Prometheus text at `/metrics`, JSON under `/api/`, and the gateway:
//! `POST /call/SERVICE.METHOD` calls a method over the bus, and
//! `/openapi.json` describes every registered method from its schemas.
//! Everything the dashboard loads comes from here.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use muster::{CallOptions, Client, RpcError, code};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::control::Command;
use crate::monitor::{SharedMonitor, total_cpu, total_rss};
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
        .with_state(state)
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
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"code": code::UNAUTHORIZED, "message": "the host's token is required (Authorization: Bearer TOKEN)"}})),
    )
        .into_response()
}

async fn api_top(State(s): State<AppState>) -> Json<Value> {
    let latest = s
        .monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latest();
    Json(serde_json::to_value(latest).unwrap_or_default())
}

async fn ask<T>(
    s: &AppState,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || (StatusCode::SERVICE_UNAVAILABLE, "the host is stopping").into_response();
    s.commands.send(make(tx)).await.map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())?.map_err(|e| {
        (
            StatusCode::CONFLICT,
            Json(json!({"error": {"code": 1, "message": e}})),
        )
            .into_response()
    })
}

async fn api_status(State(s): State<AppState>) -> Response {
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

async fn api_events(State(s): State<AppState>) -> Json<Value> {
    let recent = s.recent.lock().unwrap_or_else(PoisonError::into_inner);
    Json(Value::Array(recent.iter().cloned().collect()))
}

#[derive(serde::Deserialize)]
struct CtlBody {
    #[serde(default)]
    transaction: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

/// Restart or stop from the dashboard (token required).
async fn api_ctl(
    State(s): State<AppState>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Option<Json<CtlBody>>,
) -> Response {
    if !authorized(&s, &headers) {
        return refuse();
    }
    let Json(b) = body.unwrap_or(Json(CtlBody {
        transaction: None,
        service: None,
    }));
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
        _ => return (StatusCode::NOT_FOUND, "actions: restart, stop").into_response(),
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

/// `POST /call/SERVICE.METHOD` with a JSON body (the params).
async fn call(
    State(s): State<AppState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !s.gateway_open && !authorized(&s, &headers) {
        return refuse();
    }
    let params: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let err = RpcError::parse_error(e);
                return (http_status(err.code), Json(json!({ "error": err }))).into_response();
            }
        }
    };
    let timeout = headers
        .get("x-muster-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(muster::DEFAULT_TIMEOUT, Duration::from_millis);
    match s
        .client
        .call_with::<_, Value>(&target, &params, CallOptions::default().timeout(timeout))
        .await
    {
        Ok(v) => Json(json!({ "result": v })).into_response(),
        Err(e) => (http_status(e.code), Json(json!({ "error": e }))).into_response(),
    }
}

/// OpenAPI 3.1 from the registry: one `POST /call/SERVICE.METHOD` per method.
async fn openapi(State(s): State<AppState>) -> Response {
    let instances = match s.client.instances().await {
        Ok(i) => i,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
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
            let error = json!({"type": "object", "properties": {"error": {"type": "object",
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}, "data": {}}}}});
            paths.insert(
                path,
                json!({"post": {
                    "operationId": format!("{}.{}", i.service, m.name),
                    "tags": [i.service],
                    "requestBody": {"content": {"application/json": {"schema": m.params.clone().unwrap_or(json!({}))}}},
                    "responses": {
                        "200": {"description": "the result", "content": {"application/json": {"schema":
                            {"type": "object", "properties": {"result": m.result.clone().unwrap_or(json!({}))}}}}},
                        "400": {"description": "bad params (-32602, with data.path) or body", "content": {"application/json": {"schema": error.clone()}}},
                        "404": {"description": "no such method", "content": {"application/json": {"schema": error.clone()}}},
                        "422": {"description": "the method's own error", "content": {"application/json": {"schema": error.clone()}}},
                        "503": {"description": "no instance could answer", "content": {"application/json": {"schema": error.clone()}}},
                        "504": {"description": "timeout", "content": {"application/json": {"schema": error}}}
                    }
                }}),
            );
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

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format.
async fn metrics(State(s): State<AppState>) -> Response {
    let latest = s
        .monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latest();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
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
    family(
        "muster_instance_cpu_percent",
        "gauge",
        "CPU % of one core, the instance and its children",
        all.iter()
            .filter_map(|(t, i)| Some((inst(t, i), total_cpu(i.process.as_ref()?))))
            .collect(),
    );
    family(
        "muster_instance_resident_bytes",
        "gauge",
        "Resident memory of the instance and its children",
        all.iter()
            .filter_map(|(t, i)| Some((inst(t, i), total_rss(i.process.as_ref()?) as f64)))
            .collect(),
    );
    family(
        "muster_instance_virtual_bytes",
        "gauge",
        "Virtual memory of the instance process",
        all.iter()
            .filter_map(|(t, i)| Some((inst(t, i), i.process.as_ref()?.vms as f64)))
            .collect(),
    );
    family(
        "muster_instance_threads",
        "gauge",
        "Threads of the instance process",
        all.iter()
            .filter_map(|(t, i)| Some((inst(t, i), i.process.as_ref()?.threads as f64)))
            .collect(),
    );
    family(
        "muster_instance_open_files",
        "gauge",
        "Open file descriptors of the instance process",
        all.iter()
            .filter_map(|(t, i)| Some((inst(t, i), i.process.as_ref()?.open_files as f64)))
            .collect(),
    );
    family(
        "muster_instance_restarts_total",
        "counter",
        "Restarts of the instance's slot",
        all.iter()
            .map(|(t, i)| (inst(t, i), f64::from(i.status.restarts)))
            .collect(),
    );
    family(
        "muster_instance_up",
        "gauge",
        "1 while the instance is running (ready)",
        all.iter()
            .map(|(t, i)| {
                (
                    format!(r#"{},state="{}""#, inst(t, i), label(&i.status.state)),
                    f64::from(u8::from(i.status.state == "running")),
                )
            })
            .collect(),
    );
    let methods: Vec<(String, &muster::stats::MethodReport)> = all
        .iter()
        .flat_map(|(t, i)| {
            i.methods
                .iter()
                .map(move |(m, r)| (format!(r#"{},method="{}""#, inst(t, i), label(m)), r))
        })
        .collect();
    family(
        "muster_method_requests_total",
        "counter",
        "Requests (or events, or job runs) handled",
        methods
            .iter()
            .map(|(l, r)| (l.clone(), r.num_requests as f64))
            .collect(),
    );
    family(
        "muster_method_errors_total",
        "counter",
        "Requests that ended in an error reply",
        methods
            .iter()
            .map(|(l, r)| (l.clone(), r.num_errors as f64))
            .collect(),
    );
    family(
        "muster_method_in_flight",
        "gauge",
        "Requests being handled now",
        methods
            .iter()
            .map(|(l, r)| (l.clone(), r.in_flight as f64))
            .collect(),
    );
    family(
        "muster_method_latency_seconds",
        "summary",
        "Handler time quantiles",
        methods
            .iter()
            .flat_map(|(l, r)| {
                [
                    (format!(r#"{l},quantile="0.5""#), r.p50_us as f64 / 1e6),
                    (format!(r#"{l},quantile="0.99""#), r.p99_us as f64 / 1e6),
                ]
            })
            .collect(),
    );
    let bus = (s.bus)();
    family(
        "muster_bus_instances",
        "gauge",
        "Instances registered on the bus",
        vec![(String::new(), bus.instances as f64)],
    );
    family(
        "muster_bus_expired_total",
        "counter",
        "Instances dropped for missed heartbeats",
        vec![(String::new(), bus.expired as f64)],
    );
    family(
        "muster_bus_bad_messages_total",
        "counter",
        "Malformed messages the registry dropped",
        vec![(String::new(), bus.bad_messages as f64)],
    );
    let mut resp = out.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
