//! The host's HTTP endpoint (127.0.0.1 by default): the dashboard at `/`,
//! Prometheus text at `/metrics`, JSON under `/api/`, and the gateway:
//! `POST /call/SERVICE.METHOD` calls a method over the bus, and
//! `/openapi.json` describes every registered method from its schemas.
//! Everything the dashboard loads comes from here.

mod fleet;
mod gateway;
mod metrics;
mod scrape;

use gateway::{body_refused, call, openapi, rpc_error};
use scrape::metrics;

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
    /// The host's name: a `host` label on every metric.
    pub(crate) host: Arc<str>,
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

/// Binds `addr` and serves the endpoint in the background until `stop`;
/// returns the address bound (a port of 0 gets a free one).
pub(crate) async fn spawn(
    addr: &str,
    state: AppState,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?.to_string();
    let app = router(state);
    tokio::spawn(async move {
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

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
    // Who asked, for the log of a refusal (absent when served without
    // connection info, as in the router's own tests).
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let mut response = match host {
        Some(h) if !allowed_host(&h, &s.http_hosts) => {
            tracing::warn!(host = %h, peer, "HTTP request refused: Host is not a name of this host");
            error(
                StatusCode::FORBIDDEN,
                code::UNAUTHORIZED,
                format!("Host {h:?} is not served here (add it to [host] http_hosts)"),
            )
        }
        _ => next.run(request).await,
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        tracing::warn!(peer, %method, path, "HTTP request refused: wrong or missing token");
    }
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

/// 401; logged with the caller's address by `guard_and_headers`.
fn refuse() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        code::UNAUTHORIZED,
        "the host's token is required (Authorization: Bearer TOKEN)",
    )
}

/// `?host=NAME`: one host of the fleet only.
#[derive(serde::Deserialize)]
struct TopQuery {
    host: Option<String>,
}

/// This host's monitor, and every other host's of the bus (their `top`),
/// each transaction with its `host`.
async fn api_top(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<TopQuery>,
) -> Response {
    if let Some(r) = may_read(&s, &headers) {
        return r;
    }
    let latest = s
        .monitor
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .latest();
    let mut all = fleet::tagged(&s.host, serde_json::to_value(latest).unwrap_or_default());
    if q.host.as_deref().is_none_or(|h| h != &*s.host) {
        all.extend(fleet::other_tops(&s).await);
    }
    if let Some(h) = &q.host {
        all.retain(|t| t["host"] == h.as_str());
    }
    Json(Value::Array(all)).into_response()
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
    /// Another host of the fleet, by name: the action is forwarded to it.
    #[serde(default)]
    host: Option<String>,
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
            host: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return rpc_error(&RpcError::invalid_params("", e)),
        }
    };
    if let Some(host) = b.host.as_deref().filter(|h| *h != &*s.host) {
        if action != "restart" && action != "stop" {
            return error(
                StatusCode::NOT_FOUND,
                code::METHOD_NOT_FOUND,
                "actions: restart, stop",
            );
        }
        let request = crate::control::ControlRequest {
            transaction: b.transaction,
            service: b.service,
            ..crate::control::ControlRequest::default()
        };
        return match fleet::forward(&s, host, &action, request).await {
            Some(Ok(done)) => Json(done).into_response(),
            Some(Err(e)) => rpc_error(&e),
            None => error(
                StatusCode::NOT_FOUND,
                code::METHOD_NOT_FOUND,
                format!("no host {host:?} on this bus"),
            ),
        };
    }
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
